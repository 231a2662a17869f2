"""`ml-connector console` serves the console with gunicorn; `console hash-password` makes the
hashes its CONNECTOR_CONSOLE_USERS setting holds."""

from __future__ import annotations

import os
import re

import pytest
import requests
from werkzeug.security import check_password_hash

from sandbox.workers import BIN
from simulators.serving import free_port
from tests.fixtures.processes import ProcessTree, wait_for_http


def test_hash_password_prints_a_hash_of_the_password_typed_twice(run):
    result = run("console", "hash-password", input="s3cret pass\ns3cret pass\n")

    assert result.exit_code == 0, result.output
    hashed = result.output.strip().splitlines()[-1]
    assert check_password_hash(hashed, "s3cret pass")
    assert "s3cret pass" not in result.output  # the prompt hides what is typed


def test_hash_password_refuses_two_different_passwords(run):
    result = run("console", "hash-password", input="one\ntwo\n")

    assert result.exit_code == 1  # click asks again, then gives up at the end of input
    assert "do not match" in result.output
    assert "$" not in result.output.splitlines()[-1]  # no hash printed


def test_console_without_a_way_to_sign_in_is_a_clean_error(migrated):
    migrated.env["CONNECTOR_CONSOLE_USERS"] = ""
    migrated.env["CONNECTOR_CONSOLE_TRUSTED_HEADER"] = ""

    result = migrated("console", "--port", str(free_port()))

    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "Traceback" not in result.output
    assert "CONNECTOR_CONSOLE_USERS" in result.output


@pytest.mark.integration
def test_console_serves_the_pages_on_its_port_to_a_user_with_a_made_hash(migrated, tmp_path):
    hashed = migrated("console", "hash-password", input="pw-1234\npw-1234\n").output.split()[-1]
    port = free_port()
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("CONNECTOR_")},
        **{key: value for key, value in migrated.env.items() if value is not None},
        "CONNECTOR_CONSOLE_USERS": f"ops:{hashed}",
    }
    argv = [str(BIN / "ml-connector"), "console", "--port", str(port), "--workers", "1"]
    with ProcessTree(argv, env, tmp_path / "console.log") as console:
        url = f"http://127.0.0.1:{port}"
        assert wait_for_http(f"{url}/healthz", timeout=60), console.log()

        assert requests.get(f"{url}/tenants", timeout=10).status_code == 401
        browser = requests.Session()
        form = browser.get(f"{url}/sign-in", timeout=10).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token, form
        signed_in = browser.post(
            f"{url}/sign-in",
            data={"username": "ops", "password": "pw-1234", "csrf_token": token.group(1)},
            timeout=10,
        )
        assert signed_in.status_code == 200 and 'id="tenants"' in signed_in.text
        # The tenants file of the example, as the command was given it.
        assert 'data-tenant="' in signed_in.text, signed_in.text
    # Left the block: the tree is gone, and so is the port.
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=2)


def test_console_help_says_where_it_belongs(run):
    result = run("console", "--help")

    assert result.exit_code == 0
    assert "--port" in result.output and "never on the internet" in result.output
    assert "hash-password" in result.output
