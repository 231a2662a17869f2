"""IFS → Pipedrive: entity specs, their mapping, and one generic engine that plans and upserts."""

from connector.sync.specs import ENTITIES, JOB_FOR_ENTITY

__all__ = ["ENTITIES", "JOB_FOR_ENTITY"]
