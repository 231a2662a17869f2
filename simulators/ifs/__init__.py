"""IFS Cloud simulator: Keycloak-style OAuth2, OData v4 projections, ETags, state actions."""

from simulators.ifs.app import create_app, serve
from simulators.ifs.settings import IfsSimSettings
from simulators.ifs.state import IfsSim

__all__ = ["IfsSim", "IfsSimSettings", "create_app", "serve"]
