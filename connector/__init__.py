"""The ml-connector library: clients, mapping, sync operations, storage and vault.

Knows nothing of Celery or Flask; workers/ and webhook_receiver/ drive it.
"""
