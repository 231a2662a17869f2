"""Webhook receiver req/s ÷ a trivial Flask endpoint's, same gunicorn settings, one run.

    PYTHONPATH=$PWD python -m bench.receiver [--seconds 8] [--rounds 2] [--connections 8]
                                             [--profile] [--json]

Both apps run under gunicorn at once with the same settings (2 sync workers),
and wrk (Debian: `apt-get install wrk`) drives them in turns, `--rounds` times each, with
`--connections` keep-alive connections: every request is a new, authenticated Pipedrive v2
deal change (a fresh meta.id), so the receiver authenticates, validates, stores, commits and
enqueues each one to a real Celery queue on Redis (no worker consumes it). Prints each app's
req/s and p99 latency, the ratio, and whether anything was lost: every 2xx answer must have a
stored event and a message in the queue, and the CPU per request of each app's gunicorn
workers (from /proc: less sensitive to a busy machine than the rates). `--profile` also runs
the receiver in-process under cProfile (Flask test client, same database and broker) and
prints where its time goes.
"""

from __future__ import annotations

import base64
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis
import requests
from sqlalchemy import func, select

from bench.flask_baseline import app as baseline_app
from bench.harness import REDIS_URL, bench_database, benchmark_parser
from connector.storage.models import WebhookEvent
from sandbox.simulators import fast_pipedrive_settings
from sandbox.stack import Stack, start_stack
from sandbox.workers import BIN
from simulators.ifs.settings import IfsSimSettings

USER, PASSWORD = "pipedrive", "bench-Basic-password-0123456789"
TARGET_RATIO, TARGET_P99_MS = 0.3, 50.0
GUNICORN = ["--workers", "2", "--worker-class", "sync", "--no-control-socket"]

# One request per call: a v2 deal change with a new event id (thread number + counter).
WRK_SCRIPT = """
local counter = 0
thread_number = 0  -- set per thread by setup(), so not local
local threads = {}
function setup(thread)
  thread:set("thread_number", #threads + 1)
  table.insert(threads, thread)
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "%(authorization)s"
local template = '%(template)s'
function request()
  counter = counter + 1
  local event_id = string.format("%(run)s-%%d-%%d", thread_number, counter)
  local body = string.gsub(template, "EVENT_ID", event_id)
  body = string.gsub(body, "DEAL_ID", tostring(1000 + counter %% 500))
  return wrk.format(nil, nil, nil, body)
end
"""


@dataclass
class Round:
    app: str
    requests: int
    seconds: float
    non_2xx: int
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_s: float | None = None  # CPU of the app's gunicorn workers during the round

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms(self) -> float | None:
        """CPU per request of the app's own processes: waits for a core do not count, so
        it varies less with the machine's load than the rates do."""
        return None if self.cpu_s is None else self.cpu_s / self.requests * 1000.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def payload_template() -> str:
    """A real-shaped delivery (as the Pipedrive simulator sends v2) with placeholders."""
    payload = {
        "data": {
            "id": "DEAL_ID",
            "stage_id": 3,
            "status": "open",
            "title": "Order 1000",
            "value": 1200.5,
            "currency": "EUR",
            "pipeline_id": 1,
            "custom_fields": {"a" * 40: "C1000", "b" * 40: {"value": 10, "currency": "EUR"}},
        },
        "previous": {"stage_id": 2},
        "meta": {
            "action": "change",
            "entity": "deal",
            "entity_id": "DEAL_ID",
            "id": "EVENT_ID",
            "timestamp": "2026-12-01T10:00:00.000Z",
            "change_source": "app",
            "user_id": "17",
            "company_id": "7001",
            "webhook_id": "1",
            "webhook_owner_id": "1",
            "correlation_id": "EVENT_ID",
            "is_bulk_edit": False,
            "type": "general",
            "permitted_user_ids": ["17"],
            "host": "bench.pipedrive.com",
            "version": "2.0",
            "attempt": 1,
        },
    }
    text = json.dumps(payload, separators=(",", ":"))
    # Ids are numbers in data, strings of digits in meta.
    return text.replace('"id":"DEAL_ID"', '"id":DEAL_ID')


def _wrk_script(folder: Path, run: str) -> Path:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    template = payload_template()
    script = folder / "deliveries.lua"
    script.write_text(
        WRK_SCRIPT % {"authorization": f"Basic {token}", "template": template, "run": run}
    )
    return script


def _gunicorn(
    app: str, port: int, env: dict[str, str], log: Path, code: Path | None = None
) -> subprocess.Popen[bytes]:
    argv = [str(BIN / "gunicorn"), *GUNICORN, "--bind", f"127.0.0.1:{port}", app]
    if code is not None:  # another checkout's receiver, e.g. the main branch's, for comparison
        argv[1:1] = ["--chdir", str(code)]
        env = {**env, "PYTHONPATH": str(code)}
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_ready(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"gunicorn for {url} exited ({process.returncode}):\n{tail}")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:]
    raise SystemExit(f"gunicorn for {url} did not answer within {timeout:.0f} s:\n{tail}")


def workers_cpu_s(master: subprocess.Popen[bytes]) -> float | None:
    """User + system CPU seconds used so far by a gunicorn master's worker processes (Linux
    /proc; None elsewhere)."""
    try:
        children = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text().split()
        total = 0
        for child in children:
            # The fields after the command name: utime and stime are the 12th and 13th.
            fields = Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


def _duration_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def run_wrk(app: str, url: str, script: Path, seconds: int, connections: int) -> Round:
    threads = min(2, connections)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    done = subprocess.run(
        [*argv, "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 60
    )
    out = done.stdout
    if done.returncode != 0:
        raise SystemExit(f"wrk failed: {done.stderr or out}")
    total = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    assert total is not None, out
    seconds_run = _duration_ms(total.group(2) + total.group(3)) / 1000.0
    percentile = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.MULTILINE))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return Round(
        app=app,
        requests=int(total.group(1)),
        seconds=seconds_run,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
        p50_ms=_duration_ms(percentile["50"]),
        p99_ms=_duration_ms(percentile["99"]),
    )


def _stored_events(stack: Stack) -> tuple[int, int]:
    """(stored events, of them enqueued) of the bench tenant."""
    with stack.runtime.database.session() as session:
        rows = session.execute(
            select(WebhookEvent.status, func.count())
            .where(WebhookEvent.tenant == stack.tenant)
            .group_by(WebhookEvent.status)
        ).all()
    counts = {str(status): int(count) for status, count in rows}
    return sum(counts.values()), counts.get("enqueued", 0)


def profile_receiver(stack: Stack, requests_count: int = 2000) -> str:
    """The receiver in-process under cProfile: where one delivery's time goes."""
    from webhook_receiver.app import create_app

    # The receiver's own enqueue, as deployed: a real publish to the stack's broker.
    app = create_app(stack.runtime)
    client = app.test_client()
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    template = payload_template()
    url = f"/webhooks/pipedrive/{stack.tenant}"
    bodies = [
        template.replace("EVENT_ID", f"profile-{uuid.uuid4().hex}").replace("DEAL_ID", str(n))
        for n in range(1, requests_count + 1)
    ]
    half = len(bodies) // 2
    client.post(url, data=bodies[0], headers=headers)  # warm: secrets cached, pool open
    baseline = baseline_app.test_client()
    baseline.post(url, data=bodies[0], headers=headers)
    cpu, wall = time.process_time(), time.perf_counter()
    for body in bodies[1:half]:
        baseline.post(url, data=body, headers=headers)
    flask_cpu, flask_wall = time.process_time() - cpu, time.perf_counter() - wall
    cpu, wall = time.process_time(), time.perf_counter()
    for body in bodies[1:half]:
        client.post(url, data=body, headers=headers)
    receiver_cpu, receiver_wall = time.process_time() - cpu, time.perf_counter() - wall
    count = half - 1
    profiler = cProfile.Profile()
    profiler.enable()
    for body in bodies[half:]:
        client.post(url, data=body, headers=headers)
    profiler.disable()
    stream = io.StringIO()
    stream.write(
        f"in-process, {count} deliveries each, published to Redis: receiver "
        f"{receiver_cpu / count * 1000:.2f} ms CPU and {receiver_wall / count * 1000:.2f} ms "
        f"wall per delivery; trivial Flask {flask_cpu / count * 1000:.2f} ms CPU and "
        f"{flask_wall / count * 1000:.2f} ms wall\n"
    )
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(20)
    return stream.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("bench.receiver", __doc__)
    parser.add_argument("--seconds", type=int, default=8, help="length of each wrk round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per app, alternating")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--profile", action="store_true", help="also profile the receiver")
    parser.add_argument(
        "--synchronous-commit",
        choices=("on", "off"),
        default="on",
        help="Postgres synchronous_commit of the receiver's sessions (PGOPTIONS); 'off' shows "
        "what the commit's WAL flush costs (an acknowledged event could then be lost if "
        "Postgres crashes within about 0.6 s; the connector does not ship it)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--compare-with",
        type=Path,
        metavar="CHECKOUT",
        help="also measure the receiver of another checkout (e.g. the main branch's), same run",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench.receiver needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 2

    tenant = f"b{uuid.uuid4().hex[:10]}"
    queue = f"mlc-bench-{tenant}"
    with bench_database() as url, tempfile.TemporaryDirectory(prefix="mlc-bench-") as tmp:
        folder = Path(tmp)
        stack = start_stack(
            database_url=url,
            redis_url=REDIS_URL,
            folder=folder,
            tenant=tenant,
            queue=queue,
            ifs=IfsSimSettings(),
            pipedrive=fast_pipedrive_settings(),
            tenant_overrides={"webhook": {"auth": "basic"}},
        )
        processes: list[subprocess.Popen[bytes]] = []
        try:
            stack.runtime.vault.set(tenant, "webhook", "basic_user", USER)
            stack.runtime.vault.set(tenant, "webhook", "basic_password", PASSWORD)
            metrics_dir = folder / "prometheus"
            metrics_dir.mkdir()
            env = {
                **stack.env,
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
                "XDG_RUNTIME_DIR": str(folder),
            }
            ports = {"flask": free_port(), "receiver": free_port()}
            if args.compare_with is not None:
                ports["other"] = free_port()
            processes.append(
                _gunicorn("bench.flask_baseline:app", ports["flask"], env, folder / "flask.log")
            )
            receiver_env = {**env}
            if args.synchronous_commit == "off":
                receiver_env["PGOPTIONS"] = "-c synchronous_commit=off"
            processes.append(
                _gunicorn(
                    "webhook_receiver.wsgi:app",
                    ports["receiver"],
                    receiver_env,
                    folder / "receiver.log",
                )
            )
            if args.compare_with is not None:
                processes.append(
                    _gunicorn(
                        "webhook_receiver.wsgi:app",
                        ports["other"],
                        receiver_env,
                        folder / "other.log",
                        code=args.compare_with.resolve(),
                    )
                )
            logs = [folder / f"{name}.log" for name in ports]
            for process, port, log in zip(processes, ports.values(), logs, strict=True):
                _wait_ready(f"http://127.0.0.1:{port}/healthz", process, log)
            masters = dict(zip(ports, processes, strict=True))
            rounds: list[Round] = []
            for _ in range(args.rounds):
                for name in ports:
                    # New event ids in every round: a repeated one would be a duplicate.
                    script = _wrk_script(folder, uuid.uuid4().hex[:8])
                    target = f"http://127.0.0.1:{ports[name]}/webhooks/pipedrive/{tenant}"
                    cpu_before = workers_cpu_s(masters[name])
                    done = run_wrk(name, target, script, args.seconds, args.connections)
                    cpu_after = workers_cpu_s(masters[name])
                    if cpu_before is not None and cpu_after is not None:
                        done.cpu_s = cpu_after - cpu_before
                    rounds.append(done)
            stored, enqueued = _stored_events(stack)
            # Stage pushes are interactive work: routed to the interactive queue.
            queued = int(redis.Redis.from_url(REDIS_URL).llen(stack.interactive_queue))
            profile = profile_receiver(stack) if args.profile else None
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
            stack.close()

    def of(name: str) -> list[Round]:
        return [r for r in rounds if r.app == name]

    def cpu_ms(name: str) -> float | None:
        measured = [r.cpu_ms for r in of(name) if r.cpu_ms is not None]
        return round(statistics.median(measured), 3) if measured else None

    flask_rate = statistics.median(r.per_s for r in of("flask"))
    receiver_rate = statistics.median(r.per_s for r in of("receiver"))
    receiver_p99 = max(r.p99_ms for r in of("receiver"))
    accepted = sum(r.requests - r.non_2xx for r in rounds if r.app != "flask")
    figures = {
        "flask_req_s": round(flask_rate, 1),
        "receiver_req_s": round(receiver_rate, 1),
        "ratio": round(receiver_rate / flask_rate, 3),
        "flask_p99_ms": round(max(r.p99_ms for r in of("flask")), 1),
        "receiver_p50_ms": round(statistics.median(r.p50_ms for r in of("receiver")), 1),
        "receiver_p99_ms": round(receiver_p99, 1),
        "flask_cpu_ms_per_request": cpu_ms("flask"),
        "receiver_cpu_ms_per_request": cpu_ms("receiver"),
        "connections": args.connections,
        "synchronous_commit": args.synchronous_commit,
        "receiver_accepted": accepted,
        "receiver_non_2xx": sum(r.non_2xx for r in of("receiver")),
        "socket_errors": sum(r.errors for r in rounds),
        "stored_events": stored,
        "stored_enqueued": enqueued,
        "queued_messages": queued,
        "rounds": [r.__dict__ for r in rounds],
    }
    if args.compare_with is not None:
        other_rate = statistics.median(r.per_s for r in of("other"))
        figures["other_checkout"] = str(args.compare_with)
        figures["other_req_s"] = round(other_rate, 1)
        figures["other_ratio"] = round(other_rate / flask_rate, 3)
        figures["other_p99_ms"] = round(max(r.p99_ms for r in of("other")), 1)
        figures["other_cpu_ms_per_request"] = cpu_ms("other")
    problems = []
    # wrk stops with requests in flight, which the receiver may still store: at least, not equal.
    if stored < accepted:
        problems.append(f"{accepted - stored} accepted deliveries are not stored")
    if queued < enqueued or enqueued < stored:
        problems.append(f"stored {stored}, enqueued {enqueued}, messages in the queue {queued}")
    if args.json:
        print(json.dumps({**figures, "problems": problems}, indent=2))
    else:
        for r in rounds:
            cpu = f"  cpu {r.cpu_ms:5.2f} ms/req" if r.cpu_ms is not None else ""
            print(
                f"{r.app:9} {r.per_s:8.1f} req/s  p50 {r.p50_ms:6.1f} ms  p99 {r.p99_ms:6.1f} ms"
                f"{cpu}  ({r.requests} requests, {r.non_2xx} non-2xx, {r.errors} socket errors)"
            )
        print(
            f"receiver / flask: {figures['ratio']:.3f} (target >= {TARGET_RATIO}); receiver p99 "
            f"{receiver_p99:.1f} ms at {args.connections} connections (target < {TARGET_P99_MS} ms)"
        )
        if args.compare_with is not None:
            print(
                f"receiver of {args.compare_with} / flask: {figures['other_ratio']:.3f}, "
                f"p99 {figures['other_p99_ms']:.1f} ms"
            )
        print(
            "CPU per request of the gunicorn workers (median of the rounds): "
            + ", ".join(
                f"{name} {cpu_ms(name)} ms" for name in ("flask", "receiver", "other") if of(name)
            )
        )
        print(
            f"nothing lost: {accepted} accepted, {stored} stored, {enqueued} enqueued, "
            f"{queued} messages in the queue"
        )
        if profile:
            print(profile)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    os.environ.setdefault("CONNECTOR_LOG_LEVEL", "WARNING")
    raise SystemExit(main())
