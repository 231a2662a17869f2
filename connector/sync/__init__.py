"""IFS → Pipedrive: plan a run and upsert customers and orders through one generic engine."""
