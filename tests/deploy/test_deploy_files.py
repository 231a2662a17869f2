"""Every deployment file names commands, modules, ports and settings that exist in the code."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from connector.settings import Settings
from connector.tenants import parse_tenants

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
PROCFILE = DEPLOY / "Procfile"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
IMAGE_ENTRYPOINT = "ml-connector-entrypoint"

CELERY_APP = "workers.app:celery_app"
WSGI_APP = "webhook_receiver.wsgi:app"
CONSOLE_WSGI_APP = "console.wsgi:app"
QUEUE = "ml-connector"
INTERACTIVE_QUEUE = "ml-connector-interactive"
RECEIVER_PORT = 8000
FLOWER_PORT = 5555
CONSOLE_PORT = 8090
APP_IMAGE_SERVICES = (
    "migrate",
    "receiver",
    "worker",
    "worker-interactive",
    "beat",
    "flower",
    "console",
)


# --- reading the files ------------------------------------------------------------------


@dataclass
class Invocation:
    """One command line a deployment file runs, and where it comes from."""

    where: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.argv)}"


def _compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def _k8s_documents() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                document["__file__"] = path.name
                documents.append(document)
    return documents


def _k8s(kind: str) -> list[dict[str, Any]]:
    return [d for d in _k8s_documents() if d.get("kind") == kind]


def _k8s_one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _k8s(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for document in _k8s_documents():
        if document.get("kind") in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            name = f"{document['__file__']} {document['kind']} {document['metadata']['name']}"
            specs.append((name, document["spec"]["template"]["spec"]))
    return specs


def _procfile() -> dict[str, str]:
    from honcho.environ import parse_procfile

    return dict(parse_procfile(PROCFILE.read_text()).processes)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _dockerfile_exec_form(keyword: str) -> list[str]:
    values = [rest for kw, rest in _dockerfile_instructions() if kw == keyword]
    assert values, f"Dockerfile has no {keyword}"
    parsed = yaml.safe_load(values[-1])  # the JSON exec form is also YAML
    assert isinstance(parsed, list), f"{keyword} must use the exec (JSON array) form"
    return [str(part) for part in parsed]


def _shell_words(command: str) -> list[str]:
    return shlex.split(command.replace("$$", "$"))


def _invocations() -> list[Invocation]:
    found: list[Invocation] = []
    for name, service in _compose()["services"].items():
        if "build" not in service:  # postgres, redis: images of their own
            continue
        command = service.get("command")
        if command is not None:
            argv = _shell_words(command) if isinstance(command, str) else [str(c) for c in command]
            found.append(Invocation(f"compose {name}", argv))
        test = (service.get("healthcheck") or {}).get("test")
        if test and test[0] == "CMD":
            found.append(Invocation(f"compose {name} healthcheck", [str(t) for t in test[1:]]))
        elif test and test[0] == "CMD-SHELL":
            found.append(Invocation(f"compose {name} healthcheck", _shell_words(test[1])))
    for where, spec in _pod_specs():
        for container in spec["containers"]:
            argv = [*container.get("command", []), *container.get("args", [])]
            found.append(Invocation(f"{where} {container['name']}", argv))
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                exec_probe = (container.get(probe) or {}).get("exec")
                if exec_probe:
                    found.append(Invocation(f"{where} {probe}", list(exec_probe["command"])))
    found.append(Invocation("Dockerfile CMD", _dockerfile_exec_form("CMD")))
    for name, command in _procfile().items():
        found.append(Invocation(f"Procfile {name}", shlex.split(command)))
    return found


def _program(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command proper: without VAR=value prefixes, entry-point wrappers and `sh -c`."""
    env: dict[str, str] = {}
    argv = list(argv)
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
        name, _, value = argv.pop(0).partition("=")
        env[name] = value
    while argv and argv[0] in (IMAGE_ENTRYPOINT, "deploy/entrypoint.sh"):
        argv.pop(0)
    if argv[:2] == ["sh", "-c"]:
        inner, inner_env = _program(shlex.split(argv[2]))
        return inner, {**env, **inner_env}
    return argv, env


def _programs(program: str) -> list[Invocation]:
    found = []
    for invocation in _invocations():
        argv, env = _program(invocation.argv)
        if argv and argv[0] == program:
            found.append(Invocation(invocation.where, argv, env))
    return found


@pytest.fixture
def receiver_wsgi_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """The receiver's WSGI app as gunicorn imports it, with a deployment's settings (it
    refuses the embedded defaults at import); imported afresh, and its configuration-check
    thread stopped after the test, or it would check a tenants file nobody wrote for the
    rest of the session."""
    from connector.settings import get_settings
    from webhook_receiver.app import EXTENSION

    monkeypatch.setenv("CONNECTOR_DATABASE_URL", f"sqlite:///{tmp_path / 'c.db'}")
    monkeypatch.setenv("CONNECTOR_BROKER_URL", "redis://127.0.0.1:6379/0")
    module = WSGI_APP.partition(":")[0]
    sys.modules.pop(module, None)
    get_settings.cache_clear()
    try:
        app = _resolve(WSGI_APP)
    finally:
        get_settings.cache_clear()
    yield app
    app.extensions[EXTENSION].runtime.close()
    sys.modules.pop(module, None)


def _resolve(spec: str) -> Any:
    """`package.module:attribute` → the object, the way celery -A and gunicorn resolve it."""
    module_name, _, attribute = spec.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split(".") if attribute else []:
        target = getattr(target, part)
    return target


def _option_value(argv: list[str], *names: str) -> str | None:
    for index, word in enumerate(argv):
        for name in names:
            if word == name and index + 1 < len(argv):
                return argv[index + 1]
            if name.startswith("--") and word.startswith(name + "="):
                return word.split("=", 1)[1]
    return None


def _ids(invocations: list[Invocation]) -> list[str]:
    return [invocation.where for invocation in invocations]


# --- commands ---------------------------------------------------------------------------


def _console_scripts() -> set[str]:
    return {entry.name for entry in entry_points(group="console_scripts")}


@pytest.mark.parametrize("invocation", _invocations(), ids=_ids(_invocations()))
def test_every_command_is_an_installed_program(invocation: Invocation) -> None:
    argv, _ = _program(invocation.argv)
    assert argv, f"{invocation} runs nothing"
    allowed = _console_scripts() | {"python", "sh", "pg_isready", "redis-cli"}
    assert argv[0] in allowed, f"{invocation}: {argv[0]!r} is not an installed console script"


def test_the_cli_console_script_is_declared() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["ml-connector"] == "cli.main:main"


def _celery_command(name: str) -> click.Command:
    from celery.bin.celery import celery as celery_cli

    if name in celery_cli.commands:
        return celery_cli.commands[name]
    plugins = {entry.name: entry for entry in entry_points(group="celery.commands")}
    assert name in plugins, f"celery has no sub-command {name!r}"
    command = plugins[name].load()
    assert isinstance(command, click.Command)
    return command


def _assert_known_options(command: click.Command, words: list[str], where: str) -> None:
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    if command.name == "flower":
        # Flower hands its arguments to tornado.options, defined in flower.options.
        from flower.options import options as flower_options

        known = {f"--{name}" for name in flower_options}
        known |= {f"--{name.replace('_', '-')}" for name in flower_options}
    for word in words:
        if word.startswith("-") and word != "-":
            assert word.split("=", 1)[0] in known, f"{where}: {command.name} has no option {word}"


def _split_celery(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """celery [global options] <sub-command> [options]: global words, sub-command, rest."""
    from celery.bin.celery import celery as celery_cli

    takes_value = {
        opt
        for param in celery_cli.params
        if isinstance(param, click.Option) and not param.is_flag
        for opt in param.opts
    }
    index = 1
    while index < len(argv) and argv[index].startswith("-"):
        index += 1 if "=" in argv[index] or argv[index] not in takes_value else 2
    assert index < len(argv), f"{shlex.join(argv)}: no celery sub-command"
    return argv[1:index], argv[index], argv[index + 1 :]


@pytest.mark.parametrize("invocation", _programs("celery"), ids=_ids(_programs("celery")))
def test_celery_commands_load_the_app_and_use_real_options(invocation: Invocation) -> None:
    from celery import Celery
    from celery.bin.celery import celery as celery_cli

    global_words, sub_command, rest = _split_celery(invocation.argv)
    assert _option_value(global_words, "-A", "--app") == CELERY_APP, str(invocation)
    _assert_known_options(celery_cli, global_words, str(invocation))
    command = _celery_command(sub_command)
    words = rest
    if isinstance(command, click.Group) and rest:
        command = command.commands.get(rest[0], command)
        words = rest[1:]
    _assert_known_options(command, words, str(invocation))
    assert isinstance(_resolve(CELERY_APP), Celery)


def _app_queues() -> set[str]:
    app = _resolve(CELERY_APP)
    queues = {app.conf.task_default_queue}
    queues |= {queue.name for queue in app.conf.task_queues or ()}
    return queues


def _consumed_queue(worker: Invocation) -> str:
    queue = _option_value(worker.argv, "-Q", "--queues") or ""
    # compose and the Procfile let CONNECTOR_(INTERACTIVE_)QUEUE choose; the default must be
    # the app's.
    default = re.fullmatch(r"\$\{CONNECTOR_(?:INTERACTIVE_)?QUEUE:-([^}]*)\}", queue)
    return default.group(1) if default else queue


def test_workers_consume_the_queues_the_app_sends_to() -> None:
    workers = [i for i in _programs("celery") if "worker" in i.argv]
    assert len(workers) >= 7, "compose, k8s: two each; Procfile: two bulk, one interactive"
    for worker in workers:
        assert _consumed_queue(worker) in (QUEUE, INTERACTIVE_QUEUE), str(worker)
    assert QUEUE in _app_queues()
    app = _resolve(CELERY_APP)
    assert app.conf.mlc_interactive_queue == INTERACTIVE_QUEUE


def test_every_deployment_runs_consumers_of_both_queues() -> None:
    # Interactive work has consumers of its own wherever workers are shipped: a backfill on
    # the bulk queue cannot delay a stage push.
    workers = [i for i in _programs("celery") if "worker" in i.argv]
    for kind in ("compose", "worker.yaml", "Procfile"):
        consumed = {_consumed_queue(w) for w in workers if w.where.startswith(kind)}
        assert consumed == {QUEUE, INTERACTIVE_QUEUE}, kind
    interactive = _k8s_one("Deployment", "ml-connector-worker-interactive")
    assert not [
        h
        for h in _k8s("HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == "ml-connector-worker-interactive"
    ], "sized by hand: CPU says nothing about waiting stage pushes"
    assert interactive["spec"]["replicas"] >= 1


def test_the_app_routes_interactive_jobs_to_their_queue() -> None:
    from connector import jobs

    app = _resolve(CELERY_APP)

    def queue_of(job: str, kwargs: dict[str, Any]) -> str:
        route = app.amqp.router.route({}, job, (), kwargs)
        return str(route["queue"].name)

    assert queue_of(jobs.PUSH_STAGE, {"tenant": "a", "webhook_event_id": 1}) == INTERACTIVE_QUEUE
    assert queue_of(jobs.REPLAY, {"audit_id": 1}) == INTERACTIVE_QUEUE
    assert queue_of(jobs.SYNC_ORDER, {"tenant": "a", "key": "1", "replay_of": 7}) == (
        INTERACTIVE_QUEUE
    )
    assert queue_of(jobs.SYNC_ORDER, {"tenant": "a", "key": "1", "work_item": 3}) == QUEUE
    assert queue_of(jobs.PLAN_SYNC, {"tenant": "a"}) == QUEUE


def _is_console(invocation: Invocation) -> bool:
    return "console" in invocation.where


@pytest.mark.parametrize("invocation", _programs("gunicorn"), ids=_ids(_programs("gunicorn")))
def test_gunicorn_serves_the_wsgi_app_on_its_port(
    invocation: Invocation, request: pytest.FixtureRequest
) -> None:
    from gunicorn.config import Config

    parsed = Config().parser().parse_args(invocation.argv[1:])
    bind = parsed.bind[0]
    if _is_console(invocation):
        assert parsed.args == [CONSOLE_WSGI_APP], str(invocation)
        if invocation.where.startswith("Procfile"):
            # Inside the machine only, never on every interface.
            assert bind == f"127.0.0.1:${{MLC_CONSOLE_PORT:-{CONSOLE_PORT}}}", str(invocation)
        else:
            assert bind == f"0.0.0.0:{CONSOLE_PORT}", str(invocation)
        return
    assert parsed.args == [WSGI_APP], str(invocation)
    assert callable(request.getfixturevalue("receiver_wsgi_app"))
    if invocation.where.startswith("Procfile"):
        assert bind.endswith(":${PORT:-8000}"), "honcho assigns the receiver's port"
    else:
        assert bind == f"0.0.0.0:{RECEIVER_PORT}", str(invocation)


def test_every_gunicorn_app_is_served_in_compose_k8s_and_the_procfile() -> None:
    served = {
        (invocation.where.split(" ")[0], _is_console(invocation))
        for invocation in _programs("gunicorn")
    }
    for where in ("compose", "console.yaml", "receiver.yaml", "Procfile"):
        assert any(w == where for w, _ in served), where
    assert {console for _, console in served} == {True, False}
    assert [i.where for i in _programs("gunicorn") if _is_console(i)] == [
        "compose console",
        "console.yaml Deployment ml-connector-console console",
        "Procfile console",
    ]


def test_console_wsgi_app_resolves_to_the_factory(monkeypatch, tmp_path: Path) -> None:
    from werkzeug.security import generate_password_hash

    from connector.settings import get_settings

    monkeypatch.setenv("CONNECTOR_CONSOLE_USERS", f"ops:{generate_password_hash('x')}")
    monkeypatch.setenv("CONNECTOR_DATABASE_URL", f"sqlite:///{tmp_path / 'c.db'}")
    get_settings.cache_clear()
    try:
        import console.wsgi

        importlib.reload(console.wsgi)
        app = console.wsgi.app
        for path in ("/healthz", "/tenants", "/runs", "/failures", "/webhooks", "/replays"):
            app.url_map.bind("localhost").match(path, method="GET")
        app.url_map.bind("localhost").match("/replay", method="POST")
    finally:
        get_settings.cache_clear()


def test_flower_never_starts_without_basic_auth() -> None:
    flowers = [i for i in _programs("celery") if "flower" in i.argv]
    assert {i.where.split(" ")[0] for i in flowers} == {"compose", "flower.yaml"}
    for flower in flowers:
        value = _option_value(flower.argv, "--basic-auth") or ""
        assert "FLOWER_BASIC_AUTH" in value, f"{flower}: no --basic-auth from FLOWER_BASIC_AUTH"
    secret = _k8s_one("Secret", "ml-connector-secrets")
    assert "FLOWER_BASIC_AUTH" in secret["stringData"]
    readme = (REPO_ROOT / "README.md").read_text()
    shown = [line for line in readme.splitlines() if "flower" in line and "celery" in line]
    assert shown, "the README's Flower command"
    for line in shown:
        assert "--basic-auth" in line, line


def _cli_leaf(argv: list[str]) -> tuple[click.Command, list[str]]:
    from cli.main import cli

    command: click.Command = cli
    words = argv[1:]
    ctx = click.Context(cli, info_name="ml-connector")
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        sub = command.get_command(ctx, words[0])
        assert sub is not None, f"ml-connector has no command {shlex.join(argv[: -len(words) + 1])}"
        command, words = sub, words[1:]
    return command, words


@pytest.mark.parametrize(
    "invocation", _programs("ml-connector"), ids=_ids(_programs("ml-connector"))
)
def test_ml_connector_commands_exist_with_their_options(invocation: Invocation) -> None:
    command, words = _cli_leaf(invocation.argv)
    assert not isinstance(command, click.Group), f"{invocation} stops at a group"
    command.make_context(command.name or "", list(words))


def test_migrations_run_db_upgrade_everywhere() -> None:
    migrate = [i for i in _programs("ml-connector") if i.argv[1:3] == ["db", "upgrade"]]
    wheres = {i.where.split(" ")[0] for i in migrate}
    assert {"compose", "migrate-job.yaml"} <= wheres


def test_health_check_calls_the_receiver_health_endpoint() -> None:
    checks = _programs("python")
    assert checks, "the receiver's compose healthcheck"
    for check in checks:
        code = check.argv[check.argv.index("-c") + 1]
        port = CONSOLE_PORT if _is_console(check) else RECEIVER_PORT
        assert f"http://127.0.0.1:{port}/healthz" in code, str(check)


# --- the receiver's routes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("POST", "/webhooks/pipedrive/acme"),
    ],
)
def test_paths_the_deployment_relies_on_are_routes_of_the_receiver(
    method: str, path: str, receiver_wsgi_app: Any
) -> None:
    app = receiver_wsgi_app
    url_map = getattr(app, "url_map", None)
    assert url_map is not None, f"{WSGI_APP} is expected to be the Flask app"
    url_map.bind("localhost").match(path, method=method)  # raises NotFound / MethodNotAllowed


def test_k8s_probe_paths_are_the_receiver_health_endpoints() -> None:
    receiver = _k8s_one("Deployment", "ml-connector-receiver")
    container = receiver["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    annotations = receiver["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == str(RECEIVER_PORT)


# --- settings ---------------------------------------------------------------------------


def _deploy_texts() -> dict[str, str]:
    return {
        str(path.relative_to(REPO_ROOT)): path.read_text()
        for path in sorted(DEPLOY.rglob("*"))
        if path.is_file()
    }


def test_every_connector_variable_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    named = {
        (where, variable)
        for where, text in _deploy_texts().items()
        for variable in re.findall(r"\bCONNECTOR_[A-Z0-9_]+", text)
    }
    assert named, "the deployment files configure nothing?"
    unknown = sorted(
        (where, variable)
        for where, variable in named
        if variable.removeprefix("CONNECTOR_").lower() not in fields
    )
    assert not unknown, f"not fields of connector.settings.Settings: {unknown}"


def _required_settings() -> set[str]:
    return {
        "CONNECTOR_DATABASE_URL",
        "CONNECTOR_REDIS_URL",
        "CONNECTOR_BROKER_URL",
        "CONNECTOR_ENCRYPTION_KEYS",
        "CONNECTOR_TENANTS_FILE",
    }


def test_compose_gives_every_app_service_the_production_settings() -> None:
    services = _compose()["services"]
    for name in APP_IMAGE_SERVICES:
        environment = services[name]["environment"]
        missing = _required_settings() - set(environment)
        assert not missing, f"compose {name} lacks {sorted(missing)}"
        assert environment["PROMETHEUS_MULTIPROC_DIR"]


def test_k8s_pods_get_the_production_settings_from_secret_and_configmap() -> None:
    secret = _k8s_one("Secret", "ml-connector-secrets")
    env = _k8s_one("ConfigMap", "ml-connector-env")
    provided = set(secret["stringData"]) | set(env["data"])
    assert _required_settings() | {"PROMETHEUS_MULTIPROC_DIR"} <= provided
    for where, spec in _pod_specs():
        for container in spec["containers"]:
            refs = {
                ("Secret" if "secretRef" in source else "ConfigMap"): (
                    source.get("secretRef") or source.get("configMapRef")
                )["name"]
                for source in container.get("envFrom", [])
            }
            assert refs == {"Secret": "ml-connector-secrets", "ConfigMap": "ml-connector-env"}, (
                where
            )


def test_secret_template_holds_placeholders_not_secrets() -> None:
    from cryptography.fernet import Fernet

    secret = _k8s_one("Secret", "ml-connector-secrets")
    for key, value in secret["stringData"].items():
        assert "CHANGE-ME" in value, f"{key} must be a placeholder in the committed template"
    with pytest.raises(ValueError):
        Fernet(secret["stringData"]["CONNECTOR_ENCRYPTION_KEYS"])


# --- ports ------------------------------------------------------------------------------


def test_ports_agree_between_commands_containers_and_services() -> None:
    services = _compose()["services"]
    assert f"{RECEIVER_PORT}:{RECEIVER_PORT}" in services["receiver"]["ports"]
    assert any(p.endswith(f":{FLOWER_PORT}:{FLOWER_PORT}") for p in services["flower"]["ports"])
    for flower in _programs("celery"):
        if "flower" in flower.argv:
            assert _option_value(flower.argv, "--port") == str(FLOWER_PORT), str(flower)

    assert f"127.0.0.1:{CONSOLE_PORT}:{CONSOLE_PORT}" in services["console"]["ports"]
    for deployment, port in (
        ("ml-connector-receiver", RECEIVER_PORT),
        ("ml-connector-flower", FLOWER_PORT),
        ("ml-connector-console", CONSOLE_PORT),
    ):
        spec = _k8s_one("Deployment", deployment)["spec"]["template"]["spec"]
        ports = {p["name"]: p["containerPort"] for p in spec["containers"][0]["ports"]}
        assert ports == {"http": port}
        service = _k8s_one("Service", deployment)
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert "8000" in " ".join(_dockerfile_instructions_values("EXPOSE"))


def _dockerfile_instructions_values(keyword: str) -> list[str]:
    return [rest for kw, rest in _dockerfile_instructions() if kw == keyword]


def test_simulator_commands_use_their_published_ports() -> None:
    services = _compose()["services"]
    for name in ("ifs-sim", "pipedrive-sim"):
        port = _option_value(services[name]["command"], "--port")
        assert f"127.0.0.1:{port}:{port}" in services[name]["ports"]
        assert services[name]["profiles"] == ["simulators"]


# --- compose topology -------------------------------------------------------------------


def test_compose_runs_migrations_once_before_the_app() -> None:
    services = _compose()["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("receiver", "worker", "worker-interactive", "beat", "flower", "console"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name


def test_compose_workers_can_scale() -> None:
    worker = _compose()["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker.get("deploy", {}).get("replicas", 1) == 1


def test_compose_runs_exactly_one_beat() -> None:
    services = _compose()["services"]
    beats = [name for name, s in services.items() if "beat" in (s.get("command") or [])]
    assert beats == ["beat"]
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_compose_app_services_share_one_image_and_the_tenants_file() -> None:
    services = _compose()["services"]
    images = {services[name]["image"] for name in APP_IMAGE_SERVICES}
    assert len(images) == 1
    for name in APP_IMAGE_SERVICES:
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        target = services[name]["environment"]["CONNECTOR_TENANTS_FILE"]
        mounts = [_volume_target(volume) for volume in services[name]["volumes"]]
        assert target in mounts, f"compose {name} does not mount {target}"
        assert services[name]["volumes"][0].endswith(":ro")


def _volume_target(volume: str) -> str:
    """The container path of a short-syntax volume (`source:target[:mode]`)."""
    parts = volume.rsplit(":", 2)
    return parts[1] if parts[-1] in ("ro", "rw") else volume.rsplit(":", 1)[1]


# --- k8s topology -----------------------------------------------------------------------


def test_k8s_has_every_part() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in _k8s_documents()}
    expected = {
        ("Deployment", "ml-connector-receiver"),
        ("Service", "ml-connector-receiver"),
        ("Deployment", "ml-connector-worker"),
        ("Deployment", "ml-connector-worker-interactive"),
        ("HorizontalPodAutoscaler", "ml-connector-worker"),
        ("Deployment", "ml-connector-beat"),
        ("Deployment", "ml-connector-flower"),
        ("Service", "ml-connector-flower"),
        ("Deployment", "ml-connector-console"),
        ("Service", "ml-connector-console"),
        ("Job", "ml-connector-migrate"),
        ("Secret", "ml-connector-secrets"),
        ("ConfigMap", "ml-connector-env"),
        ("ConfigMap", "ml-connector-tenants"),
    }
    assert expected <= kinds, sorted(expected - kinds)
    assert not [name for kind, name in kinds if kind == "Ingress"], "no Ingress by default"


def test_k8s_beat_is_a_singleton() -> None:
    beat = _k8s_one("Deployment", "ml-connector-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    assert not any(
        h["spec"]["scaleTargetRef"]["name"] == "ml-connector-beat"
        for h in _k8s("HorizontalPodAutoscaler")
    )


def test_k8s_hpa_scales_the_worker_deployment() -> None:
    hpa = _k8s_one("HorizontalPodAutoscaler", "ml-connector-worker")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "ml-connector-worker")
    assert hpa["spec"]["minReplicas"] >= 1
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_k8s_worker_liveness_pings_its_own_node() -> None:
    worker = _k8s_one("Deployment", "ml-connector-worker")
    probe = worker["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]
    argv, _ = _program(probe["command"])
    assert argv[argv.index("inspect") + 1] == "ping"
    assert _option_value(argv, "-d", "--destination") == "celery@$HOSTNAME"


def test_k8s_selectors_match_their_pods() -> None:
    deployments = _k8s("Deployment")
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]
    for service in _k8s("Service"):
        selector = service["spec"]["selector"]
        matched = [
            d
            for d in deployments
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, f"Service {service['metadata']['name']} selects {len(matched)}"


def test_k8s_volumes_and_tenants_path_line_up() -> None:
    configmaps = {c["metadata"]["name"] for c in _k8s("ConfigMap")}
    tenants_file = Path(_k8s_one("ConfigMap", "ml-connector-env")["data"]["CONNECTOR_TENANTS_FILE"])
    for where, spec in _pod_specs():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        for container in spec["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert set(mounts.values()) <= set(volumes), where
            tenants_volume = volumes[mounts[str(tenants_file.parent)]]
            assert tenants_volume["configMap"]["name"] == "ml-connector-tenants", where
            # A read-only root needs a writable /tmp for the metrics files and beat's schedule.
            if container["securityContext"].get("readOnlyRootFilesystem"):
                assert "emptyDir" in volumes[mounts["/tmp"]], where


def test_k8s_tenants_configmap_is_a_valid_tenants_file() -> None:
    tenants_file = Path(_k8s_one("ConfigMap", "ml-connector-env")["data"]["CONNECTOR_TENANTS_FILE"])
    data = _k8s_one("ConfigMap", "ml-connector-tenants")["data"]
    assert set(data) == {tenants_file.name}
    tenants = parse_tenants(yaml.safe_load(data[tenants_file.name]), source="configmap")
    assert tenants


def test_k8s_containers_run_the_image_entrypoint() -> None:
    # `command:` would replace the image ENTRYPOINT that empties the metrics directory.
    for where, spec in _pod_specs():
        for container in spec["containers"]:
            assert "command" not in container, where
            assert container["image"] == "ml-connector", where
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert [image["name"] for image in kustomization["images"]] == ["ml-connector"]


def test_kustomize_renders_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d]
    assert kinds.count("Deployment") == 6
    assert "Ingress" not in kinds


# --- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_builds_one_slim_non_root_image_without_dev_dependencies() -> None:
    instructions = _dockerfile_instructions()
    bases = [rest.split()[0] for kw, rest in instructions if kw == "FROM"]
    assert bases and all(base == "python:3.11-slim" for base in bases)
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert "pip wheel" in runs and "[dev]" not in runs and "-e " not in runs
    assert _dockerfile_exec_form("ENTRYPOINT") == [IMAGE_ENTRYPOINT]


def test_dockerfile_copies_files_that_exist() -> None:
    for keyword, rest in _dockerfile_instructions():
        if keyword != "COPY" or "--from=" in rest:
            continue
        sources = [word for word in rest.split() if not word.startswith("--")][:-1]
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_dockerfile_tenants_path_matches_the_mounts() -> None:
    env = " ".join(rest for kw, rest in _dockerfile_instructions() if kw == "ENV")
    assert "CONNECTOR_TENANTS_FILE=/etc/ml-connector/tenants.yaml" in env
    assert "PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus" in env


def test_dockerfile_copies_every_package_setuptools_installs() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {
        rest.split()[0]
        for kw, rest in _dockerfile_instructions()
        if kw == "COPY" and "--" not in rest.split()[0]
    }
    assert packages <= copied, sorted(packages - copied)


# --- Procfile and entry point -----------------------------------------------------------


def test_procfile_runs_receiver_named_workers_beat_and_the_console() -> None:
    processes = _procfile()
    assert set(processes) == {"receiver", "worker1", "worker2", "interactive", "beat", "console"}
    names = []
    for name in ("worker1", "worker2", "interactive"):
        argv, env = _program(shlex.split(processes[name]))
        names.append(_option_value(argv, "-n", "--hostname"))
        assert env["PROMETHEUS_MULTIPROC_DIR"].endswith(name)
    assert names == ["worker1@%h", "worker2@%h", "interactive@%h"]
    metrics_dirs = {
        _program(shlex.split(cmd))[1]["PROMETHEUS_MULTIPROC_DIR"] for cmd in processes.values()
    }
    assert len(metrics_dirs) == len(processes), "each process tree needs its own metrics dir"


def test_entrypoint_empties_the_metrics_dir_then_runs_the_command(tmp_path: Path) -> None:
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_123.db").write_bytes(b"stale")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["CONNECTOR_METRICS_DIR"] = str(metrics_dir)
    shown = subprocess.run(
        [
            str(ENTRYPOINT),
            "sh",
            "-c",
            'echo "$PROMETHEUS_MULTIPROC_DIR"; ls -A "$1"',
            "_",
            str(metrics_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert shown.stdout.splitlines() == [str(metrics_dir)]

    env.pop("CONNECTOR_METRICS_DIR")
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "new" / "dir")
    subprocess.run([str(ENTRYPOINT), "true"], env=env, check=True, timeout=30)
    assert (tmp_path / "new" / "dir").is_dir()
