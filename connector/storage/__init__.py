"""Persistence: every table's reads and writes (audit, id map, events, vault, state), migrations."""
