"""The operator console: a small server-rendered web app over the connector's storage."""
