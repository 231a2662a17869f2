"""Process settings from CONNECTOR_* environment variables, with embedded defaults."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from connector.errors import ConfigError

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
        default="ml-connector",
        description="Celery queue of bulk work (plans and the records they release).",
    )
    interactive_queue: str | None = Field(
        default=None,
        description=(
            "Celery queue of interactive work (stage pushes, replays of single records) with "
            "its own consumers; unset = the bulk queue's name with `-interactive`."
        ),
    )
    dispatch_in_flight: int = Field(
        default=200,
        gt=0,
        description=(
            "Records of all tenants released to the bulk queue and not finished, at most; "
            "about 4 x the bulk workers' total concurrency keeps them busy without a long queue."
        ),
    )
    dispatch_batch: int = Field(
        default=10,
        gt=0,
        description=(
            "Released records of one tenant sent in one message, at most (1 = one message "
            "per record); each still has its own lock, audit row, retries and work item end."
        ),
    )
    task_events: bool = Field(
        default=True,
        description=(
            "Celery task events (what Flower shows: received, started, succeeded, failed, "
            "and sent by the sender); off = none, for deployments without Flower."
        ),
    )
    absent_tenant_backlog_days: float = Field(
        default=7.0,
        gt=0,
        description=(
            "Stored records of a tenant missing from the tenants file are kept this long (a "
            "typo in its id brings them back when fixed), listed by `status`, then dropped by "
            "the dispatcher with one audit row saying how many (a later sync plans them again)."
        ),
    )
    dispatch_stale_after_s: float = Field(
        default=90.0,
        gt=0,
        description=(
            "A record released this long ago and not finished lost its message (a killed "
            "worker, a broker restarted without its queue): the dispatcher releases it again. "
            "Longer than any record's task runs (a record lock waits up to 30 s, HTTP retries "
            "some more); a duplicate run is harmless, a lost record is not."
        ),
    )
    broker_visibility_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description=(
            "Redis broker only: a message a worker took and did not acknowledge within this "
            "time (its worker died) is delivered again. Longer than any task runs; task "
            "countdowns stay below half of it (workers/base.py)."
        ),
    )
    sweep_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="How often beat runs the sweeper of webhook events left unfinished.",
    )
    sweep_grace_s: float = Field(
        default=300.0,
        gt=0,
        description=(
            "A webhook event still received/enqueued this long after it arrived (or after "
            "the sweeper last queued it) is queued again."
        ),
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
    beat_metrics_port: int | None = Field(
        default=None, description="Port of beat's /metrics endpoint; unset = none."
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
    def effective_interactive_queue(self) -> str:
        return self.interactive_queue or f"{self.queue}-interactive"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url or "memory://localhost/"

    def shared_setup_problems(self) -> list[str]:
        """Why these settings cannot serve a role that runs beside other processes (a gunicorn
        receiver, celery workers, beat): each names the setting to set. The embedded defaults
        are private to one process (memory:// broker) or one working directory (SQLite)."""
        problems = []
        if self.effective_broker_url.startswith("memory://"):
            problems.append(
                "no broker: CONNECTOR_BROKER_URL (or CONNECTOR_REDIS_URL) is unset, and an "
                "in-process memory:// queue reaches no other process; set "
                "CONNECTOR_BROKER_URL=redis://host:6379/0"
            )
        if "database_url" not in self.model_fields_set:
            problems.append(
                "no database: CONNECTOR_DATABASE_URL is unset, and the default SQLite file "
                f"{DEFAULT_VAR_DIR / 'connector.db'} is private to this working directory; set "
                "CONNECTOR_DATABASE_URL=postgresql+psycopg2://user:password@host/name (an "
                "explicit sqlite:/// URL is accepted for a single host)"
            )
        return problems

    def require_shared_setup(self, role: str) -> None:
        """Raise ConfigError, naming the settings, unless `role` can run beside others."""
        problems = self.shared_setup_problems()
        if problems:
            raise ConfigError(f"{role} not started: " + "; ".join(problems))

    @property
    def key_list(self) -> list[str]:
        return [key.strip() for key in self.encryption_keys.split(",") if key.strip()]


AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def is_amqp(broker_url: str) -> bool:
    """A RabbitMQ broker URL (the other production broker is Redis)."""
    return broker_url.startswith(AMQP_SCHEMES)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
