"""`ml-connector credentials …`: values only from stdin or a hidden prompt, never shown."""

from __future__ import annotations

import os
import pty
import select
import sys
from pathlib import Path

from cli.commands.credentials import credentials_set
from connector.storage.database import Database
from connector.storage.vault import Vault


def _vault(run) -> Vault:
    return Vault(
        Database(run.env["CONNECTOR_DATABASE_URL"]), [run.env["CONNECTOR_ENCRYPTION_KEYS"]]
    )


def test_set_reads_the_value_from_stdin_and_stores_it_encrypted(migrated):
    result = migrated("credentials", "set", "acme", "pipedrive", "api_token", input="tok-123\n")
    assert result.exit_code == 0, result.output
    assert "stored pipedrive credential 'api_token' for tenant 'acme'" in result.output
    assert "tok-123" not in result.output
    assert _vault(migrated).get("acme", "pipedrive", "api_token") == "tok-123"


def test_the_value_cannot_be_given_on_the_command_line(migrated):
    assert [param.name for param in credentials_set.params] == ["tenant", "system", "name"]
    result = migrated("credentials", "set", "acme", "ifs", "client_secret", "the-secret")
    assert result.exit_code == 2
    assert "unexpected extra argument" in result.output.lower()
    result = migrated("credentials", "set", "acme", "ifs", "client_secret", "--value", "x")
    assert result.exit_code == 2
    assert _vault(migrated).names() == []


def test_empty_input_stores_nothing(migrated):
    result = migrated("credentials", "set", "acme", "ifs", "client_secret", input="\n")
    assert result.exit_code == 1
    assert "empty value: nothing stored" in result.output
    assert _vault(migrated).names() == []


def test_unknown_tenant_and_system_are_refused(migrated):
    result = migrated("credentials", "set", "initech", "ifs", "client_secret", input="x")
    assert result.exit_code == 1
    assert "unknown tenant 'initech'" in result.output and "acme, globex-nordic" in result.output
    result = migrated("credentials", "set", "acme", "salesforce", "token", input="x")
    assert result.exit_code == 2
    assert "'salesforce' is not one of 'ifs', 'pipedrive', 'webhook'" in result.output


def test_an_unread_name_is_stored_with_a_warning(migrated):
    result = migrated("credentials", "set", "acme", "pipedrive", "api_tokn", input="x")
    assert result.exit_code == 0
    assert "warning: the connector does not read pipedrive credential 'api_tokn'" in result.output


def test_missing_key_fails_before_reading_the_value(migrated):
    migrated.env["CONNECTOR_ENCRYPTION_KEYS"] = None
    result = migrated("credentials", "set", "acme", "ifs", "client_secret", input="s3cret")
    assert result.exit_code == 1
    assert "no encryption key: set CONNECTOR_ENCRYPTION_KEYS" in result.output


def test_list_shows_names_and_times_but_never_values(migrated):
    migrated("credentials", "set", "acme", "ifs", "client_secret", input="value-one")
    migrated("credentials", "set", "globex-nordic", "webhook", "hmac_secret", input="value-two")
    result = migrated("credentials", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["TENANT", "SYSTEM", "NAME", "UPDATED", "(UTC)"]
    assert lines[1].split()[:3] == ["acme", "ifs", "client_secret"]
    assert lines[2].split()[:3] == ["globex-nordic", "webhook", "hmac_secret"]
    assert "value-" not in result.output
    only = migrated("credentials", "list", "--tenant", "acme")
    assert "globex-nordic" not in only.output and "client_secret" in only.output


def test_delete_removes_one_credential(migrated):
    migrated("credentials", "set", "acme", "ifs", "client_secret", input="v")
    refused = migrated("credentials", "delete", "acme", "ifs", "client_secret", input="n\n")
    assert refused.exit_code == 1
    assert len(_vault(migrated).names()) == 1
    result = migrated("credentials", "delete", "acme", "ifs", "client_secret", "--yes")
    assert result.exit_code == 0
    assert _vault(migrated).names() == []
    again = migrated("credentials", "delete", "acme", "ifs", "client_secret", "--yes")
    assert again.exit_code == 1
    assert "has no ifs credential 'client_secret'; nothing deleted" in again.output


def test_commands_on_an_unmigrated_database_say_to_run_db_upgrade(run):
    for args in (
        ["credentials", "list"],
        ["credentials", "set", "acme", "ifs", "client_secret"],
        ["keys", "rotate"],
    ):
        result = run(*args, input="x")
        assert result.exit_code == 1, args
        assert "database not migrated: run `ml-connector db upgrade`" in result.output
        assert "Traceback" not in result.output


def _read_until(fd: int, marker: bytes, seen: bytearray) -> None:
    while marker not in seen:
        ready, _, _ = select.select([fd], [], [], 30)
        assert ready, f"no {marker!r} in {bytes(seen)!r}"
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the child closed the terminal
            chunk = b""
        assert chunk, f"ended before {marker!r}: {bytes(seen)!r}"
        seen.extend(chunk)


def test_on_a_terminal_the_value_is_asked_twice_without_echo(migrated):
    command = Path(sys.executable).with_name("ml-connector")
    env = {**os.environ, **{k: v for k, v in migrated.env.items() if v is not None}}
    env.pop("CONNECTOR_REDIS_URL", None)
    pid, fd = pty.fork()
    if pid == 0:  # the child: a real terminal on stdin, as an operator would have
        os.execve(
            str(command), [str(command), "credentials", "set", "acme", "ifs", "client_secret"], env
        )
    seen = bytearray()
    try:
        _read_until(fd, b"ifs client_secret: ", seen)
        os.write(fd, b"typed-secret\n")
        _read_until(fd, b"Repeat for confirmation: ", seen)
        os.write(fd, b"typed-secret\n")
        _read_until(fd, b"stored ifs credential", seen)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, bytes(seen)
    assert b"typed-secret" not in seen  # hidden input is not echoed
    assert _vault(migrated).get("acme", "ifs", "client_secret") == "typed-secret"
