"""The vault: AES-GCM round trip, file modes, key handling, tamper detection, live re-read."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from gateway.secret import Secret
from gateway.vault import (
    Vault,
    VaultCorrupt,
    VaultEntryTampered,
    VaultError,
    VaultKeyInsecure,
    VaultKeyInvalid,
    VaultKeyMismatch,
    VaultKeyMissing,
    create_key_file,
    mailbox_key,
    otp_key,
)

PASSWORD = "pec-Mailbox-Pa55word!"


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def vault_path(tmp_path):
    return tmp_path / "vault.json"


def test_round_trip_and_names(vault_path, key):
    v = Vault(vault_path, key)
    assert v.get(mailbox_key("legale")) is None
    v.set(mailbox_key("legale"), Secret(PASSWORD))
    v.set(otp_key("alice"), Secret("JBSWY3DPEHPK3PXP"))
    again = Vault(vault_path, key)
    assert again.get("mailbox/legale").reveal() == PASSWORD
    assert again.get("otp/alice").reveal() == "JBSWY3DPEHPK3PXP"
    assert again.names() == ["mailbox/legale", "otp/alice"]
    assert again.delete("otp/alice") is True
    assert again.delete("otp/alice") is False
    assert Vault(vault_path, key).names() == ["mailbox/legale"]


def test_file_is_0600_and_holds_no_clear_value(vault_path, key):
    Vault(vault_path, key).set(mailbox_key("legale"), Secret(PASSWORD))
    assert stat.S_IMODE(os.stat(vault_path).st_mode) == 0o600
    raw = vault_path.read_bytes()
    assert PASSWORD.encode() not in raw
    assert b"mailbox/legale" in raw  # names are not secret
    assert not [p for p in vault_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_naming_helpers_reject_empty_names():
    assert mailbox_key("acquisti") == "mailbox/acquisti"
    assert otp_key("bruno") == "otp/bruno"
    with pytest.raises(ValueError):
        mailbox_key("")
    with pytest.raises(ValueError):
        otp_key("a\nb")


def test_key_file_created_0600_and_refuses_overwrite(tmp_path, vault_path):
    key_file = tmp_path / "vault.key"
    create_key_file(key_file)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    with pytest.raises(VaultError, match="already exists"):
        create_key_file(key_file)
    Vault.open(vault_path, key_file=key_file).set("mailbox/x", Secret("v"))
    assert Vault.open(vault_path, key_file=key_file).get("mailbox/x").reveal() == "v"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_key_file_readable_by_others_is_refused(tmp_path, vault_path, mode):
    key_file = tmp_path / "vault.key"
    create_key_file(key_file)
    os.chmod(key_file, mode)
    with pytest.raises(VaultKeyInsecure) as info:
        Vault.open(vault_path, key_file=key_file)
    assert str(key_file) in str(info.value)
    assert key_file.read_text().strip() not in str(info.value)


def test_key_from_environment(monkeypatch, vault_path, key):
    monkeypatch.setenv("PECGW_VAULT_KEY", base64.urlsafe_b64encode(key).decode())
    Vault.open(vault_path).set("mailbox/x", Secret("v"))
    assert Vault(vault_path, key).get("mailbox/x").reveal() == "v"
    monkeypatch.setenv("OTHER_KEY", base64.urlsafe_b64encode(key).decode().rstrip("="))
    assert Vault.open(vault_path, key_env="OTHER_KEY").get("mailbox/x").reveal() == "v"


def test_missing_and_invalid_keys(monkeypatch, tmp_path, vault_path):
    monkeypatch.delenv("PECGW_VAULT_KEY", raising=False)
    with pytest.raises(VaultKeyMissing, match="PECGW_VAULT_KEY"):
        Vault.open(vault_path)
    with pytest.raises(VaultKeyMissing, match="nope.key"):
        Vault.open(vault_path, key_file=tmp_path / "nope.key")
    monkeypatch.setenv("PECGW_VAULT_KEY", "c2hvcnQ")  # "short"
    with pytest.raises(VaultKeyInvalid) as info:
        Vault.open(vault_path)
    assert "c2hvcnQ" not in str(info.value)


def test_wrong_key_names_the_file_and_no_secret(vault_path, key):
    Vault(vault_path, key).set(mailbox_key("legale"), Secret(PASSWORD))
    other = os.urandom(32)
    with pytest.raises(VaultKeyMismatch) as info:
        Vault(vault_path, other)
    message = str(info.value)
    assert message == f"vault key does not match {vault_path}"
    for secret in (PASSWORD, key.hex(), other.hex(), base64.urlsafe_b64encode(key).decode()):
        assert secret not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_swapped_entries_are_detected(vault_path, key):
    v = Vault(vault_path, key)
    v.set(mailbox_key("legale"), Secret("legale-pw"))
    v.set(mailbox_key("acquisti"), Secret("acquisti-pw"))
    doc = json.loads(vault_path.read_text())
    entries = doc["entries"]
    entries["mailbox/legale"], entries["mailbox/acquisti"] = (
        entries["mailbox/acquisti"], entries["mailbox/legale"])
    vault_path.write_text(json.dumps(doc))
    with pytest.raises(VaultEntryTampered) as info:
        v.get(mailbox_key("legale"))
    assert str(vault_path) in str(info.value) and "mailbox/legale" in str(info.value)
    assert "pw" not in str(info.value)


def test_external_change_is_seen_without_reopening(vault_path, key):
    gateway_view = Vault(vault_path, key)
    assert gateway_view.get("mailbox/legale") is None
    cli = Vault(vault_path, key)
    cli.set("mailbox/legale", Secret("old"))
    assert gateway_view.get("mailbox/legale").reveal() == "old"
    cli.set("mailbox/legale", Secret("new"))  # same size, same second: rename gives a new inode
    assert gateway_view.get("mailbox/legale").reveal() == "new"
    cli.delete("mailbox/legale")
    assert gateway_view.get("mailbox/legale") is None


def test_writers_do_not_lose_each_others_updates(vault_path, key):
    a, b = Vault(vault_path, key), Vault(vault_path, key)
    a.set("mailbox/one", Secret("1"))
    b.set("mailbox/two", Secret("2"))  # b reloads under the lock before writing
    assert Vault(vault_path, key).names() == ["mailbox/one", "mailbox/two"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "not valid JSON"),
        (b'{"version": 99, "check": {}, "entries": {}}', "not a version 1 vault"),
        (b'{"version": 1}', "lacks"),
        (b'[1, 2]', "not a version 1 vault"),
    ],
)
def test_corrupt_file(vault_path, key, content, message):
    vault_path.write_bytes(content)
    with pytest.raises(VaultCorrupt, match=message) as info:
        Vault(vault_path, key)
    assert str(vault_path) in str(info.value)


def test_corrupt_entry_record(vault_path, key):
    Vault(vault_path, key).set("mailbox/x", Secret("v"))
    doc = json.loads(vault_path.read_text())
    doc["entries"]["mailbox/x"]["nonce"] = "!!"
    vault_path.write_text(json.dumps(doc))
    with pytest.raises(VaultCorrupt, match="malformed"):
        Vault(vault_path, key).get("mailbox/x")


def test_repr_and_values_are_redacted(vault_path, key):
    v = Vault(vault_path, key)
    v.set("mailbox/x", Secret(PASSWORD))
    assert PASSWORD not in repr(v.get("mailbox/x"))
    assert key.hex() not in repr(v)
    with pytest.raises(TypeError):
        v.set("mailbox/x", PASSWORD)  # type: ignore[arg-type]
