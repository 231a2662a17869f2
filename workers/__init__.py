"""Celery workers: the app, task wrappers around connector operations, and the beat schedule."""
