"""The record of refused mailbox passwords (gateway/mailbox_credentials.py), on a real vault file.

Once the provider refuses what the vault holds for a mailbox, no login is attempted with it
(a provider locks mailboxes out after a few wrong passwords); writing the entry again — a new
password, or the same one stored again on purpose — lets the next login try; a success clears
the mailbox.  The refused password is remembered only as a keyed digest, and no log line or
error message carries it.
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from gateway.mailbox_credentials import MailboxCredentials, MailboxPassword, PasswordRefused
from gateway.secret import Secret
from gateway.vault import Vault

OLD, NEW = "Old-Mailbox-Pw-31a7", "New-Mailbox-Pw-9c2e"


def mailbox(name: str) -> SimpleNamespace:
    """What the credentials read of a MailboxConfig."""
    return SimpleNamespace(name=name, password_vault_key=f"mailbox/{name}")


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value("pecgw_mailbox_password_refused", {"mailbox": name})


def blocked_total(name: str) -> float:
    return REGISTRY.get_sample_value("pecgw_mailbox_logins_blocked_total", {"mailbox": name}) or 0.0


@pytest.fixture
def vault(tmp_path) -> Vault:
    v = Vault(tmp_path / "vault.json", os.urandom(32))
    v.set("mailbox/rotaz", Secret(OLD))
    v.set("mailbox/altra", Secret(OLD))
    return v


@pytest.fixture
def creds(vault) -> MailboxCredentials:
    return MailboxCredentials(vault, ["rotaz", "altra"])


def test_a_refused_password_is_not_handed_out_again_until_the_vault_entry_changes(vault, creds, caplog):
    caplog.set_level(logging.DEBUG, logger="pecgw.credentials")
    assert gauge("rotaz") == 0  # every configured mailbox has its series from the start
    first = creds.current(mailbox("rotaz"))
    racing = creds.current(mailbox("rotaz"))  # a second login already under way with the same password
    assert first.secret.reveal() == OLD and first.vault_key == "mailbox/rotaz"

    creds.refused(first, "the provider refused the mailbox login: [AUTHENTICATIONFAILED] Authentication failed.")
    assert gauge("rotaz") == 1 and creds.is_refused("rotaz")
    before = blocked_total("rotaz")
    for _ in range(3):
        with pytest.raises(PasswordRefused) as exc:
            creds.current(mailbox("rotaz"))
    assert blocked_total("rotaz") == before + 3
    assert "rotaz" in str(exc.value) and "mailbox/rotaz" in str(exc.value)
    assert creds.blocked(mailbox("rotaz")) and blocked_total("rotaz") == before + 3  # polling is not a login

    creds.refused(racing, "refused again")  # the racing login's refusal: not a new event
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "rotaz" in errors[0].getMessage() and "'mailbox/rotaz'" in errors[0].getMessage()
    assert "AUTHENTICATIONFAILED" in errors[0].getMessage()  # the provider's own words

    # the other mailbox is not concerned
    assert creds.current(mailbox("altra")).secret.reveal() == OLD and gauge("altra") == 0

    vault.set("mailbox/rotaz", Secret(NEW))  # what 'pecgw vault set rotaz' does
    assert not creds.blocked(mailbox("rotaz"))
    rotated = creds.current(mailbox("rotaz"))
    assert rotated.secret.reveal() == NEW
    assert creds.is_refused("rotaz") and gauge("rotaz") == 1  # until a login succeeds
    creds.accepted(rotated)
    assert not creds.is_refused("rotaz") and gauge("rotaz") == 0
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("accepted the password in vault entry 'mailbox/rotaz' again" in m and "3 not attempted" in m
               for m in infos)

    for secret in (OLD, NEW):
        assert secret not in caplog.text


def test_storing_the_same_password_again_means_try_again(vault, creds):
    """After the provider itself was fixed (an account unlocked there), the administrator stores
    the unchanged password once more and the gateway asks the provider again."""
    creds.refused(creds.current(mailbox("rotaz")), "refused")
    with pytest.raises(PasswordRefused):
        creds.current(mailbox("rotaz"))
    vault.set("mailbox/rotaz", Secret(OLD))
    assert creds.current(mailbox("rotaz")).secret.reveal() == OLD


def test_a_new_password_refused_too_is_a_new_refusal(vault, creds, caplog):
    caplog.set_level(logging.INFO, logger="pecgw.credentials")
    creds.refused(creds.current(mailbox("rotaz")), "refused")
    vault.set("mailbox/rotaz", Secret(NEW))
    creds.refused(creds.current(mailbox("rotaz")), "refused")
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2  # each wrong value is news
    with pytest.raises(PasswordRefused):
        creds.current(mailbox("rotaz"))
    assert gauge("rotaz") == 1


def test_a_missing_entry_is_none_not_a_refusal(vault, creds):
    vault.delete("mailbox/altra")
    assert creds.current(mailbox("altra")) is None
    assert not creds.blocked(mailbox("altra"))


def test_the_refused_password_is_kept_only_as_a_digest_under_a_key_of_this_process(vault, creds):
    password = creds.current(mailbox("rotaz"))
    assert OLD not in repr(password) and OLD.encode() not in password.digest
    assert len(password.digest) == 32
    other = MailboxCredentials(vault)  # another process: another key, another digest for the same entry
    assert other.current(mailbox("rotaz")).digest != password.digest
    creds.refused(password, "refused")
    state = repr(vars(creds))
    assert OLD not in state and "Secret" not in state  # nothing of the value is held for the mark


def test_a_plain_lookup_without_versions_is_enough():
    """A vault-like object with only ``get`` (no entry versions): the value alone counts."""
    class Plain(dict):
        def get(self, name):
            value = super().get(name)
            return Secret(value) if value is not None else None

    plain = Plain({"mailbox/rotaz": OLD})
    creds = MailboxCredentials(plain)
    creds.refused(creds.current(mailbox("rotaz")), "refused")
    assert creds.blocked(mailbox("rotaz"))
    plain["mailbox/rotaz"] = NEW
    got = creds.current(mailbox("rotaz"))
    assert isinstance(got, MailboxPassword) and got.secret.reveal() == NEW


def test_vault_versions_change_at_every_write(vault):
    secret, version = vault.get_versioned("mailbox/rotaz")
    assert secret.reveal() == OLD and version
    vault.set("mailbox/rotaz", Secret(OLD))
    again, version2 = vault.get_versioned("mailbox/rotaz")
    assert again.reveal() == OLD and version2 != version
    vault.set("mailbox/altra", Secret(NEW))  # another entry written: this one's version stays
    assert vault.get_versioned("mailbox/rotaz")[1] == version2
    assert vault.get_versioned("mailbox/none") is None
