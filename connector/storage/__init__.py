"""Persistence: every table's reads and writes, one upsert helper, the migrations."""
