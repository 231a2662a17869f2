"""The WSGI entry point for gunicorn: `gunicorn webhook_receiver.wsgi:app`."""

from __future__ import annotations

import logging

from connector.errors import ConfigError
from connector.logs import configure_logging
from connector.settings import get_settings
from webhook_receiver.app import create_app, watch_configuration

_settings = get_settings()
configure_logging(_settings.log_level, _settings.log_format)
try:
    # gunicorn runs several receiver processes next to workers: no embedded defaults.
    _settings.require_shared_setup("receiver")
except ConfigError as error:
    logging.getLogger(__name__).critical("%s", error)
    # 3 is gunicorn's "worker failed to boot": the master stops instead of respawning.
    raise SystemExit(3) from error
app = create_app()
# gunicorn imports this module in each worker process (the deployment runs it without
# --preload), so the checking thread runs in the process that serves the requests.
watch_configuration(app)
