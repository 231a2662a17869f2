"""Pipedrive webhooks: authenticating deliveries, parsing payloads, registering the subscription."""
