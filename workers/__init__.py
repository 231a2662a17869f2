"""Celery workers: the app, the task base class (retries, metrics), thin tasks, beat schedule."""
