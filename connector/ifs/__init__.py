"""The IFS Cloud side: OData query building, OAuth2 tokens, records and the projection client."""

from connector.ifs.client import IfsClient
from connector.ifs.odata import EnumLiteral, Field, Query
from connector.ifs.records import IfsRecord, parse_etag

__all__ = ["EnumLiteral", "Field", "IfsClient", "IfsRecord", "Query", "parse_etag"]
