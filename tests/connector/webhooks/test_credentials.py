"""The receiver's secrets cache: one vault read per tenant while fresh, again on a change."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from connector.errors import VaultError
from connector.storage.database import Database
from connector.storage.migrate import upgrade
from connector.storage.vault import Vault, credential_versions
from connector.webhooks.credentials import WebhookCredentialCache, WebhookSecrets

KEY = Fernet.generate_key().decode()


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def vault(tmp_path):
    url = f"sqlite:///{tmp_path / 'connector.db'}"
    upgrade(url)
    database = Database(url)
    vault = Vault(database, [KEY])
    vault.set("acme", "webhook", "basic_user", "pipedrive")
    vault.set("acme", "webhook", "basic_password", "first")
    yield vault
    database.dispose()


def test_secrets_are_read_once_while_fresh_and_again_after_the_ttl(vault):
    clock = Clock()
    cache = WebhookCredentialCache(vault, ttl_s=30.0, clock=clock)

    first = [cache.get("acme") for _ in range(5)]
    clock.now += 31.0
    later = cache.get("acme")

    assert first[0] == WebhookSecrets("pipedrive", "first", None)
    assert cache.reads == 2 and later == first[0]


def test_a_changed_credential_is_read_at_once_when_its_version_moves(vault):
    versions = credential_versions(vault.database)
    cache = WebhookCredentialCache(vault, version_of=lambda tenant: versions.get(tenant))
    assert cache.get("acme").basic_password == "first"

    vault.set("acme", "webhook", "basic_password", "second")
    assert cache.get("acme").basic_password == "first"  # the stamp has not been re-read yet
    versions = credential_versions(vault.database)

    assert cache.get("acme").basic_password == "second"
    vault.delete("acme", "webhook", "basic_password")
    versions = credential_versions(vault.database)
    assert cache.get("acme").basic_password is None
    assert cache.reads == 3


def test_a_key_this_process_lacks_is_an_error_and_not_remembered(vault):
    cache = WebhookCredentialCache(Vault(vault.database, [Fernet.generate_key().decode()]))

    for _ in range(2):
        with pytest.raises(VaultError):
            cache.get("acme")
    assert cache.reads == 0


def test_the_stand_in_for_unknown_tenants_is_random_per_process(vault):
    one, other = WebhookCredentialCache(vault).dummy, WebhookCredentialCache(vault).dummy

    assert one.basic_password and one.hmac_secret and one.basic_user
    assert one != other
