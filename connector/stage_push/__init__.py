"""Pipedrive → IFS: deal stage changes become ETag-guarded changes of sales orders."""
