"""Time of each console page with 100,000 audit rows in Postgres (prints figures, asserts none).

    PYTHONPATH=$PWD python -m bench.console [--rows 100000] [--postgres postgresql+psycopg2://postgres@127.0.0.1:5432/postgres]

Makes a throw-away database, migrates it, fills it with runs of five tenants (plan rows,
record attempts with 1% failures, replays, webhook events), then asks every page through the
real Flask app (in-process WSGI, signed in by the trusted header) and prints the median of
several requests. The rows are written in bulk straight through the models (a benchmark's
fixture), not through the audit writer one by one: so are the run entries and totals that
the writer keeps with them (connector.storage.run_records).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import yaml
from sqlalchemy import insert

from connector.runtime import Runtime
from connector.settings import Settings
from connector.storage.migrate import upgrade
from connector.storage.models import AuditRecord, IdMapEntry, RunRecord, RunTotals, WebhookEvent
from connector.storage.run_records import COUNTERS
from console.app import create_app

TENANTS = 5
RUN_SIZE = 2_000  # records per run and entity
HEADER = "X-Forwarded-User"


_AUDIT_DEFAULTS: dict[str, object] = {
    "error": None,
    "request_summary": None,
    "response_summary": None,
    "replay_task": None,
    "replay_args": None,
    "duration_ms": None,
}


def _audit_row(**values: object) -> dict[str, object]:
    # executemany needs the same keys in every row.
    return {**_AUDIT_DEFAULTS, **values}


def _entry(row: dict[str, object], queued: int | None = None) -> dict[str, object]:
    """The run entry the audit writer keeps for `row` (its audit id filled in on insert)."""
    return {
        "run_id": row["correlation_id"],
        "entity": row["entity"],
        "record_key": row["record_key"],
        "tenant": row["tenant"],
        "status": row["status"],
        "queued": queued,
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
    }


def _insert(
    connection: sa.Connection, batch: list[dict[str, object]], entries: list[dict[str, object]]
) -> None:
    if not batch:
        return
    ids = connection.execute(
        insert(AuditRecord).returning(AuditRecord.id, sort_by_parameter_order=True), batch
    ).scalars()
    for entry, audit_id in zip(entries, ids, strict=True):
        entry["audit_id"] = audit_id
    connection.execute(insert(RunRecord), entries)
    batch.clear()
    entries.clear()


def _fill(database_url: str, rows: int) -> dict[str, str]:
    """Insert about `rows` audit rows; a failed key per tenant to open its record page."""
    engine = sa.create_engine(database_url)
    start = datetime.now(UTC) - timedelta(days=3)
    failed_key: dict[str, str] = {}
    batch: list[dict[str, object]] = []
    entries: list[dict[str, object]] = []
    totals: dict[str, dict[str, object]] = {}
    counts: dict[str, Counter[str]] = {}
    written = 0
    run_number = 0
    with engine.begin() as connection:
        while written < rows:
            run_number += 1
            tenant = f"bench{run_number % TENANTS}"
            run_id = uuid.uuid4().hex
            moment = start + timedelta(minutes=15 * run_number)
            run: Counter[str] = Counter()
            totals[run_id] = {
                "run_id": run_id,
                "tenant": tenant,
                "planned_at": moment,
                "started_at": moment,
                "finished_at": moment + timedelta(seconds=1),
                **dict.fromkeys(COUNTERS, 0),
            }
            counts[run_id] = run
            for entity in ("customer", "order"):
                batch.append(
                    _audit_row(
                        tenant=tenant,
                        direction="ifs_to_pipedrive",
                        entity=entity,
                        record_key="*",
                        operation="plan",
                        status="succeeded",
                        attempt=1,
                        response_summary={"read": RUN_SIZE, "queued": RUN_SIZE, "unchanged": 0},
                        correlation_id=run_id,
                        started_at=moment,
                        finished_at=moment,
                    )
                )
                entries.append(_entry(batch[-1], queued=RUN_SIZE))
                run.update(plans=1, entities_planned=1, planned=RUN_SIZE)
                for number in range(RUN_SIZE):
                    key = f"{entity[0].upper()}{number:07d}"
                    failed = number % 100 == 7
                    batch.append(
                        _audit_row(
                            tenant=tenant,
                            direction="ifs_to_pipedrive",
                            entity=entity,
                            record_key=key,
                            operation="update",
                            status="failed" if failed else "succeeded",
                            attempt=1,
                            error="pipedrive HTTP 400: Currency must be a 3-letter code"
                            if failed
                            else None,
                            request_summary={"changes": ["title"]},
                            replay_task="ml_connector.sync_order",
                            replay_args={"tenant": tenant, "key": key},
                            correlation_id=run_id,
                            started_at=moment,
                            finished_at=moment + timedelta(seconds=1),
                            duration_ms=40,
                        )
                    )
                    entries.append(_entry(batch[-1]))
                    run["records_failed" if failed else "done"] += 1
                    if failed:
                        failed_key.setdefault(tenant, key)
                written += RUN_SIZE + 1
                if len(batch) >= 5_000:
                    _insert(connection, batch, entries)
        _insert(connection, batch, entries)
        connection.execute(
            insert(RunTotals), [{**totals[run_id], **counts[run_id]} for run_id in totals]
        )
        events = [
            dict(
                tenant=f"bench{number % TENANTS}",
                event_id=uuid.uuid4().hex,
                entity="deal",
                entity_id=number,
                action="change",
                payload={"meta": {"attempt": 1}},
                status="applied",
                received_at=start + timedelta(seconds=number),
            )
            for number in range(5_000)
        ]
        connection.execute(insert(WebhookEvent), events)
        connection.execute(
            insert(IdMapEntry),
            [
                dict(tenant=tenant, entity="order", ifs_key=key, pipedrive_id=7)
                for tenant, key in failed_key.items()
            ],
        )
    engine.dispose()
    return failed_key


def _tenants_file(folder: Path) -> Path:
    body = {
        f"bench{number}": {
            "ifs": {"base_url": "http://127.0.0.1:1", "namespace": "x", "client_id": "y"},
            "pipedrive": {"api_domain": "https://bench.pipedrive.com"},
        }
        for number in range(TENANTS)
    }
    path = folder / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": body}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument(
        "--postgres", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--repeat", type=int, default=7)
    options = parser.parse_args()

    name = f"mlc_bench_console_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(options.postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = options.postgres.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        began = time.perf_counter()
        failed_key = _fill(url, options.rows)
        # As autovacuum leaves a database in use: statistics and the visibility map.
        with sa.create_engine(url, isolation_level="AUTOCOMMIT").connect() as connection:
            connection.execute(sa.text("VACUUM ANALYZE"))
            count = connection.execute(sa.text("SELECT count(*) FROM audit_log")).scalar()
        print(f"filled {count:,} audit rows in {time.perf_counter() - began:.1f} s")
        with tempfile.TemporaryDirectory() as folder:
            settings = Settings(
                database_url=url,
                tenants_file=_tenants_file(Path(folder)),
                console_trusted_header=HEADER,
            )
            runtime = Runtime(settings)
            app = create_app(runtime, enqueue=lambda name, kwargs: None)
            client = app.test_client()
            tenant, key = next(iter(failed_key.items()))
            pages = {
                "tenants": "/tenants",
                "runs": "/runs",
                "failures (all tenants)": "/failures",
                f"failures ({tenant})": f"/failures?tenant={tenant}",
                "record": f"/records/{tenant}/order/{key}",
                "webhook events": "/webhooks",
                f"webhook events ({tenant})": f"/webhooks?tenant={tenant}",
                "confirm tenant replay": f"/replay?scope=tenant&tenant={tenant}",
            }
            print(f"{'page':<28} {'median ms':>10} {'max ms':>8}")
            for label, path in pages.items():
                timings = []
                for _ in range(options.repeat):
                    started = time.perf_counter()
                    answer = client.get(path, headers={HEADER: "bench"})
                    timings.append((time.perf_counter() - started) * 1000)
                    assert answer.status_code == 200, (path, answer.status_code)
                print(f"{label:<28} {statistics.median(timings):>10.1f} {max(timings):>8.1f}")
            runtime.close()
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
