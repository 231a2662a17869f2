"""The credentials vault: encryption at rest, rotation, and refusing bad keys or data."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from connector.errors import MissingCredentialError, VaultError
from connector.storage.database import Database
from connector.storage.migrate import upgrade
from connector.storage.models import Credential
from connector.storage.vault import NO_KEY, Vault, required_credentials
from connector.tenants import parse_tenants
from tests.connector.storage.databases import fresh_postgres

OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()
SECRET = "pd-token-7Hq2-never-in-the-db"


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def migrated_url(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('vault') / 'connector.db'}"
        upgrade(url)
        yield url
    else:
        with fresh_postgres(request.getfixturevalue("postgres_url")) as url:
            upgrade(url)
            yield url


@pytest.fixture
def database(migrated_url):
    database = Database(migrated_url)
    with database.session() as session:
        session.execute(sa.delete(Credential))
    yield database
    database.dispose()


def _ciphertext(database, tenant, system, name) -> bytes:
    with database.session() as session:
        return bytes(
            session.scalars(
                sa.select(Credential.ciphertext).where(
                    Credential.tenant == tenant,
                    Credential.system == system,
                    Credential.name == name,
                )
            ).one()
        )


def _set_ciphertext(database, tenant, system, name, ciphertext: bytes) -> None:
    with database.session() as session:
        session.execute(
            sa.update(Credential)
            .where(
                Credential.tenant == tenant, Credential.system == system, Credential.name == name
            )
            .values(ciphertext=ciphertext)
        )


def test_a_stored_secret_reads_back_and_can_be_replaced_and_deleted(database):
    vault = Vault(database, [OLD_KEY])
    vault.set("acme", "pipedrive", "api_token", SECRET)
    assert vault.get("acme", "pipedrive", "api_token") == SECRET
    vault.set("acme", "pipedrive", "api_token", "second-value")
    assert vault.get("acme", "pipedrive", "api_token") == "second-value"
    assert [row[:3] for row in vault.names()] == [("acme", "pipedrive", "api_token")]
    assert vault.delete("acme", "pipedrive", "api_token") is True
    assert vault.delete("acme", "pipedrive", "api_token") is False
    assert vault.get_optional("acme", "pipedrive", "api_token") is None


def _tables_containing(engine, needle: str) -> set[str]:
    """Every table with a column value (text, JSON or bytes) that contains `needle`."""
    found: set[str] = set()
    for table in sa.inspect(engine).get_table_names():
        with engine.connect() as connection:
            for row in connection.execute(sa.text(f'SELECT * FROM "{table}"')):
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        hit = needle.encode() in bytes(value)
                    else:
                        hit = needle in str(value)
                    if hit:
                        found.add(table)
    return found


def test_the_database_holds_no_plaintext_secret(database):
    vault = Vault(database, [OLD_KEY])
    vault.set("acme", "pipedrive", "api_token", SECRET)
    vault.set("acme", "webhook", "basic_password", SECRET + "-pw")
    assert len(vault.names()) == 2
    # The scan itself works: a value stored in the clear elsewhere is found.
    with database.session() as session:
        session.execute(
            sa.text(
                "INSERT INTO tenant_state (tenant, key, value, updated_at) "
                "VALUES ('acme', 'probe', '{\"clear\": \"visible-probe\"}', '2024-01-01')"
            )
        )
    try:
        assert _tables_containing(database.engine, "visible-probe") == {"tenant_state"}
        assert _tables_containing(database.engine, SECRET) == set()
    finally:
        with database.session() as session:
            session.execute(sa.text("DELETE FROM tenant_state WHERE key = 'probe'"))


def test_names_never_include_values_and_filter_by_tenant(database):
    vault = Vault(database, [OLD_KEY])
    vault.set("globex", "ifs", "client_secret", SECRET)
    vault.set("acme", "webhook", "hmac_secret", SECRET)
    vault.set("acme", "ifs", "client_secret", SECRET)
    listed = vault.names()
    assert [row[:3] for row in listed] == [
        ("acme", "ifs", "client_secret"),
        ("acme", "webhook", "hmac_secret"),
        ("globex", "ifs", "client_secret"),
    ]
    assert all(SECRET not in str(row) for row in listed)
    assert [row[:3] for row in vault.names("globex")] == [("globex", "ifs", "client_secret")]


def test_missing_credential_names_the_command_that_stores_it(database):
    with pytest.raises(MissingCredentialError) as caught:
        Vault(database, [OLD_KEY]).get("acme", "ifs", "client_secret")
    assert "`ml-connector credentials set acme ifs client_secret`" in str(caught.value)


def test_unknown_system_is_refused_listing_the_allowed_ones(database):
    with pytest.raises(
        VaultError,
        match="unknown credential system 'salesforce': expected one of ifs, pipedrive, webhook",
    ):
        Vault(database, [OLD_KEY]).set("acme", "salesforce", "token", SECRET)


def test_no_key_configured_says_how_to_make_one(database):
    vault = Vault(database, [])
    with pytest.raises(VaultError) as caught:
        vault.set("acme", "ifs", "client_secret", SECRET)
    assert str(caught.value) == NO_KEY
    assert "set CONNECTOR_ENCRYPTION_KEYS" in NO_KEY and "ml-connector keys generate" in NO_KEY
    assert vault.names() == []  # listing names needs no key


def test_a_malformed_key_is_named_by_position_never_by_value(database):
    bad = "not-a-fernet-key-but-secret-looking"
    with pytest.raises(VaultError) as caught:
        Vault(database, [NEW_KEY, bad]).set("acme", "ifs", "client_secret", SECRET)
    assert "key 2 of 2 is not a Fernet key" in str(caught.value)
    assert bad not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_the_wrong_key_cannot_decrypt(database):
    Vault(database, [OLD_KEY]).set("acme", "ifs", "client_secret", SECRET)
    with pytest.raises(
        VaultError,
        match="cannot decrypt ifs credential 'client_secret' of tenant "
        "'acme': wrong CONNECTOR_ENCRYPTION_KEYS or tampered data",
    ):
        Vault(database, [NEW_KEY]).get("acme", "ifs", "client_secret")


def test_tampered_ciphertext_is_refused_and_rotation_then_changes_nothing(database):
    vault = Vault(database, [OLD_KEY])
    vault.set("acme", "ifs", "client_secret", SECRET)
    vault.set("acme", "pipedrive", "api_token", SECRET)
    good = _ciphertext(database, "acme", "ifs", "client_secret")
    tampered = bytearray(_ciphertext(database, "acme", "pipedrive", "api_token"))
    tampered[len(tampered) // 2] ^= 0x01
    _set_ciphertext(database, "acme", "pipedrive", "api_token", bytes(tampered))

    with pytest.raises(VaultError, match="wrong CONNECTOR_ENCRYPTION_KEYS or tampered data"):
        vault.get("acme", "pipedrive", "api_token")
    with pytest.raises(VaultError, match="nothing was rotated"):
        Vault(database, [NEW_KEY, OLD_KEY]).rotate()
    assert _ciphertext(database, "acme", "ifs", "client_secret") == good
    assert _ciphertext(database, "acme", "pipedrive", "api_token") == bytes(tampered)


def test_a_ciphertext_moved_to_another_row_is_refused(database):
    vault = Vault(database, [OLD_KEY])
    vault.set("acme", "pipedrive", "api_token", SECRET)
    vault.set("globex", "pipedrive", "api_token", "globex-token")
    _set_ciphertext(
        database,
        "globex",
        "pipedrive",
        "api_token",
        _ciphertext(database, "acme", "pipedrive", "api_token"),
    )
    with pytest.raises(VaultError, match="tampered data"):
        vault.get("globex", "pipedrive", "api_token")


def test_rotation_moves_every_secret_to_the_newest_key(database):
    Vault(database, [OLD_KEY]).set("acme", "ifs", "client_secret", SECRET)
    Vault(database, [OLD_KEY]).set("globex", "webhook", "hmac_secret", "hmac-value")
    before = {row[:3]: row[3] for row in Vault(database, [OLD_KEY]).names()}

    both = Vault(database, [NEW_KEY, OLD_KEY])
    assert both.get("acme", "ifs", "client_secret") == SECRET  # old data readable mid-rotation
    both.set("acme", "pipedrive", "api_token", "written-with-new")
    assert both.rotate() == 3

    new_only = Vault(database, [NEW_KEY])
    assert new_only.get("acme", "ifs", "client_secret") == SECRET
    assert new_only.get("globex", "webhook", "hmac_secret") == "hmac-value"
    assert new_only.get("acme", "pipedrive", "api_token") == "written-with-new"
    with pytest.raises(VaultError, match="wrong CONNECTOR_ENCRYPTION_KEYS"):
        Vault(database, [OLD_KEY]).get("acme", "ifs", "client_secret")
    after = {row[:3]: row[3] for row in new_only.names()}
    for key, updated_at in before.items():
        assert after[key] == updated_at  # rotating does not count as changing the secret


def test_required_credentials_follow_the_tenant_auth_choices():
    tenants = parse_tenants(
        {
            "tenants": {
                "plain": {
                    "ifs": {"base_url": "https://i.example", "namespace": "n"},
                    "pipedrive": {"api_domain": "https://p.example"},
                },
                "oauth": {
                    "ifs": {"base_url": "https://i.example", "namespace": "n"},
                    "pipedrive": {
                        "api_domain": "https://p.example",
                        "auth": "oauth2",
                        "oauth_client_id": "cid",
                    },
                    "webhook": {"auth": "hmac"},
                },
            }
        }
    )
    assert required_credentials(tenants["plain"]) == [
        ("ifs", "client_secret"),
        ("pipedrive", "api_token"),
        ("webhook", "basic_user"),
        ("webhook", "basic_password"),
    ]
    assert required_credentials(tenants["oauth"]) == [
        ("ifs", "client_secret"),
        ("pipedrive", "oauth_client_secret"),
        ("pipedrive", "oauth_refresh_token"),
        ("webhook", "hmac_secret"),
    ]


def test_a_validly_encrypted_foreign_value_is_refused(database):
    vault = Vault(database, [OLD_KEY])
    vault.set("acme", "ifs", "client_secret", SECRET)
    foreign = Fernet(OLD_KEY.encode()).encrypt(b"raw secret, not sealed by the vault")
    _set_ciphertext(database, "acme", "ifs", "client_secret", foreign)
    with pytest.raises(VaultError, match="tampered data \\(not a vault envelope\\)"):
        vault.get("acme", "ifs", "client_secret")
