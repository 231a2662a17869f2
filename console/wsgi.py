"""The WSGI entry point for gunicorn: `gunicorn console.wsgi:app`."""

from __future__ import annotations

from connector.logs import configure_logging
from connector.settings import get_settings
from console.app import create_app

_settings = get_settings()
configure_logging(_settings.log_level, _settings.log_format)
app = create_app()
