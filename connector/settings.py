"""Process settings from CONNECTOR_* environment variables, with embedded defaults."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_VAR_DIR = Path("var")


class Settings(BaseSettings):
    """Everything a process needs that is not per tenant.

    The defaults are an embedded setup (SQLite under ./var, in-process broker and limiter)
    so that `make demo` needs nothing running. Production sets the URLs.
    """

    model_config = SettingsConfigDict(env_prefix="CONNECTOR_", extra="ignore")

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_VAR_DIR / 'connector.db'}",
        description="SQLAlchemy URL of the audit/id-map/vault database.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for shared rate limits and record locks; unset = in-process.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL; unset = the Redis URL, or in-memory when that is unset.",
    )
    queue: str = Field(
        default="ml-connector", description="Celery queue the workers consume and tasks go to."
    )
    encryption_keys: str = Field(
        default="",
        description="Comma-separated Fernet keys, newest first (MultiFernet).",
    )
    tenants_file: Path = Field(
        default=Path("tenants.yaml"), description="Path of the tenants YAML file."
    )
    log_level: str = Field(default="INFO")
    log_format: str = Field(default="json", description="json or text")
    worker_metrics_port: int | None = Field(
        default=None, description="Port of a worker's /metrics endpoint; unset = none."
    )
    metrics_dir: Path | None = Field(
        default=None,
        description=(
            "Prometheus multiprocess directory (PROMETHEUS_MULTIPROC_DIR wins); connector.metrics "
            "reads it when imported."
        ),
    )

    console_users: str = Field(
        default="",
        description=(
            "Operator console users, comma-separated `name:<werkzeug password hash>` "
            "(make one with `ml-connector console hash-password`)."
        ),
    )
    console_trusted_header: str | None = Field(
        default=None,
        description=(
            "Header naming the signed-in user, set by an authenticating proxy in front of the "
            "console (e.g. X-Forwarded-User); unset = not trusted."
        ),
    )
    console_secret_key: str | None = Field(
        default=None,
        description="Signs the console session cookies; unset = derived from the encryption keys.",
    )

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url or "memory://localhost/"

    @property
    def key_list(self) -> list[str]:
        return [key.strip() for key in self.encryption_keys.split(",") if key.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
