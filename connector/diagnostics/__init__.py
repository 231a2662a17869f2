"""Diagnostics: live probes of the remote systems with fixes, and stored status."""
