"""Pipedrive webhooks: authenticating deliveries and parsing their payloads (Flask-free)."""
