"""Persistence: tables, engine/session handling and Alembic migrations."""
