"""Faithful local stand-ins for IFS Cloud and Pipedrive, served over real HTTP."""
