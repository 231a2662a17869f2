"""The Flask webhook receiver: authenticates Pipedrive webhooks, persists them, enqueues work."""

from webhook_receiver.app import Enqueue, create_app

__all__ = ["Enqueue", "create_app"]
