"""Diagnostics: live probes with fixes, stored status, limiter headroom and queue depth."""
