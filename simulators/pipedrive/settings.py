"""Settings of one simulated Pipedrive company (plan limits, credentials, webhook timing)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PipedriveSimSettings:
    """Everything that differs between simulated companies; defaults model an Essential plan.

    Tests and benchmarks raise the limits or shrink the delays; nothing else reads the
    environment.
    """

    api_tokens: tuple[str, ...] = ("sim-pipedrive-token",)
    client_id: str = "sim-client"
    client_secret: str = "sim-secret"
    access_token_ttl_s: int = 3600
    # Burst limits count requests per token in a rolling 2-second window (Pipedrive's plans:
    # API token 20/40/80/100/120, OAuth 80..480, search 10 for both).
    burst_window_s: float = 2.0
    api_token_burst: int = 20
    oauth_burst: int = 80
    search_burst: int = 10
    # Daily token budget of the company: 30,000 x plan multiplier (Essential 1) x seats (1).
    daily_budget: int = 30_000
    # A token that collects this many 429s within block_window_s is answered with a 403 HTML
    # block page for block_seconds.
    block_after_429s: int = 20
    block_window_s: float = 60.0
    block_seconds: float = 60.0
    webhook_retry_delays_s: tuple[float, ...] = (3.0, 30.0, 150.0)
    webhook_delay_scale: float = 1.0
    webhook_timeout_s: float = 10.0
    webhook_workers: int = 4
    ban_after_failures: int = 10
    ban_seconds: float = 1800.0
    # Seconds after its creation before a record is found by /organizations/search and
    # /deals/search (Pipedrive's search index lags behind writes); 0 = at once.
    search_lag_s: float = 0.0
    # GET /v1/webhooks answers http_auth_user and http_auth_password as null, as the official
    # example shows; deliveries still carry the registered credentials.
    hide_webhook_credentials: bool = False
    integration_user_id: int = 1
    app_user_id: int = 2
    company_id: int = 7_001
    company_domain: str = "sim-company"
    # The base URL the simulator is served at; known only once the port is, so it may be
    # assigned after start-up. Returned as `api_domain` by the OAuth token endpoint.
    api_domain: str = "http://127.0.0.1"
