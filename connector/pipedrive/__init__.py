"""Pipedrive: REST client, authentication, operation token costs, account provisioning."""

from connector.pipedrive.client import PipedriveClient

__all__ = ["PipedriveClient"]
