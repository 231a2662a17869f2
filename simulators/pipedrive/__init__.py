"""Pipedrive simulator: a local stand-in for the Pipedrive REST API (v1, v2) and webhooks."""
