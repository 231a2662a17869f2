"""The ml-connector library: sync, stage push, storage, diagnostics, the two remotes' clients.

Knows nothing of Celery or Flask; workers/ and webhook_receiver/ drive it.
"""
