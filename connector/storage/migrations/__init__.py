"""Alembic migrations of the connector database; run them with `ml-connector db upgrade`."""
