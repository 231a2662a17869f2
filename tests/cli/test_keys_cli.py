"""`ml-connector keys generate|rotate`: new keys, and moving every secret to the newest."""

from __future__ import annotations

from cryptography.fernet import Fernet

from connector.storage.database import Database
from connector.storage.vault import Vault


def test_generate_prints_a_usable_fernet_key(run):
    first = run("keys", "generate")
    second = run("keys", "generate")
    assert first.exit_code == 0
    key = first.output.strip()
    assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"x")) == b"x"
    assert key != second.output.strip()


def test_rotate_lets_the_old_key_be_removed(migrated):
    old = migrated.env["CONNECTOR_ENCRYPTION_KEYS"]
    migrated("credentials", "set", "acme", "ifs", "client_secret", input="ifs-secret")
    migrated("credentials", "set", "acme", "pipedrive", "api_token", input="pd-token")
    new = Fernet.generate_key().decode()

    migrated.env["CONNECTOR_ENCRYPTION_KEYS"] = f"{new},{old}"
    result = migrated("keys", "rotate")
    assert result.exit_code == 0, result.output
    assert "re-encrypted 2 credential(s)" in result.output

    database = Database(migrated.env["CONNECTOR_DATABASE_URL"])
    assert Vault(database, [new]).get("acme", "ifs", "client_secret") == "ifs-secret"
    assert Vault(database, [new]).get("acme", "pipedrive", "api_token") == "pd-token"


def test_rotate_with_a_malformed_key_names_its_position(migrated):
    migrated.env["CONNECTOR_ENCRYPTION_KEYS"] = "oops," + migrated.env["CONNECTOR_ENCRYPTION_KEYS"]
    result = migrated("keys", "rotate")
    assert result.exit_code == 1
    assert "key 1 of 2 is not a Fernet key" in result.output
    assert "oops" not in result.output
