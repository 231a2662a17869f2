"""`ml-connector tenant list|show|validate` and how a bad tenants file is reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

BAD = """\
tenants:
  acme:
    ifs: {namespace: acme}
    pipedrive: {api_domain: "https://acme.pipedrive.example"}
    schedule: "every hour"
"""


def test_list_shows_each_tenant(run):
    result = run("tenant", "list")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].split() == [
        "acme",
        "*/15",
        "*",
        "*",
        "*",
        "*",
        "https://acme.ifs.cloud",
        "->",
        "https://acme.pipedrive.com",
    ]
    assert "globex-nordic" in result.output


def test_a_bad_tenants_file_is_reported_without_traceback(run, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    for args in (
        ["--tenants", str(bad), "tenant", "list"],
        ["--tenants", str(bad), "tenant", "show", "acme"],
    ):
        result = run(*args)
        assert result.exit_code == 1
        assert "tenant 'acme': key 'ifs.base_url': required key is missing" in result.output
        assert "tenant 'acme': key 'schedule': expected a 5-field cron string" in result.output
        assert "Traceback" not in result.output


def test_the_installed_command_reports_a_bad_file_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    command = Path(sys.executable).with_name("ml-connector")
    completed = subprocess.run(
        [str(command), "--tenants", str(bad), "tenant", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 1
    assert "tenant 'acme': key 'ifs.base_url': required key is missing" in completed.stderr
    assert "Traceback" not in completed.stderr + completed.stdout


def test_validate_prints_every_problem(run, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = run("tenant", "validate", str(bad))
    assert result.exit_code == 1
    assert result.output.count("tenant 'acme'") == 2
    good = run("tenant", "validate")
    assert good.exit_code == 0
    assert "2 tenant(s) valid: acme, globex-nordic" in good.output


def test_validate_json_lists_the_problems_or_the_valid_tenants(run, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = run("tenant", "validate", "--json", str(bad))
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False and report["tenants"] == {}
    assert len(report["problems"]) == 2
    assert all(p.startswith("tenant 'acme': key ") for p in report["problems"])
    missing = run("tenant", "validate", "--json", str(tmp_path / "absent.yaml"))
    assert missing.exit_code == 1 and "does not exist" in json.loads(missing.output)["problems"][0]

    good = run("tenant", "validate", "--json")
    assert good.exit_code == 0
    report = json.loads(good.output)
    assert (report["ok"], report["problems"]) == (True, [])
    assert report["tenants"] == {
        "acme": {"tenant": "acme", "ok": True},
        "globex-nordic": {"tenant": "globex-nordic", "ok": True},
    }


def test_show_prints_effective_config_with_defaults_and_credential_names(migrated):
    migrated("credentials", "set", "globex-nordic", "ifs", "client_secret", input="never-shown")
    result = migrated("tenant", "show", "globex-nordic")
    assert result.exit_code == 0, result.output
    assert "never-shown" not in result.output
    stdout = result.stdout
    document = yaml.safe_load(stdout)
    config = document["globex-nordic"]
    assert config["ifs"]["client_id"] == "ml-connector-nordic"
    assert config["ifs"]["page_size"] == 200  # a default, not in the file
    assert config["customer_mapping"]["customer_id"] == "CustomerId"
    assert document["credentials"]["stored"][0].startswith("ifs/client_secret (updated ")
    assert document["credentials"]["missing"] == [
        "pipedrive/oauth_client_secret",
        "pipedrive/oauth_refresh_token",
        "webhook/hmac_secret",
    ]
    assert "missing credentials" in result.stderr


def test_show_unknown_tenant_lists_known_ones(migrated):
    result = migrated("tenant", "show", "initech")
    assert result.exit_code == 1
    assert "unknown tenant 'initech' (tenants file defines: acme, globex-nordic)" in result.output


def test_validate_refuses_a_cron_celery_beat_cannot_run_and_accepts_sunday_as_7(run, tmp_path):
    from connector.tenants import read_tenants
    from workers.schedule import build_beat_schedule

    document = yaml.safe_load(run.tenants.read_text())
    document["tenants"]["acme"]["schedule"] = "0 0 31 2 *"  # 31 February never comes
    document["tenants"]["globex-nordic"]["schedule"] = "0 3 * * 7"
    checked = tmp_path / "crons.yaml"
    checked.write_text(yaml.safe_dump(document))

    result = run("tenant", "validate", str(checked))

    assert result.exit_code == 1
    assert "tenant 'acme': key 'schedule'" in result.output and "never occurs" in result.output
    assert "globex-nordic" not in result.output
    # What validate accepts, Celery's crontab accepts too: beat schedules it.
    reading = read_tenants(checked)
    problems: dict[str, str] = {}
    schedule = build_beat_schedule(reading.tenants.values(), problems)
    assert problems == {} and "globex-nordic:sync" in schedule
