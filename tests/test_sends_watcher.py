"""The receipt watcher's failure behaviour against the real Dovecot (gateway/sends/watcher.py).

A refused password pauses it at once, logged at ERROR, with no second attempt (a provider would
lock the mailbox out) until the vault entry is set again; an unreachable provider is retried with
a growing delay and logged once per streak; a missing vault entry is retried too (it may be set
while the gateway runs).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import pytest

from gateway.config import MailboxConfig, SubmissionConfig, UpstreamConfig
from gateway.sends import watcher as watcher_module
from gateway.sends.store import SendStore
from gateway.sends.watcher import ReceiptWatcher
from gateway.secret import Secret
from tests.fixtures.ports import free_port


class Vault(dict):
    def get(self, name):
        value = super().get(name)
        return Secret(value) if value is not None else None


def mailbox(dovecot, pki, address: str, *, port: int | None = None) -> MailboxConfig:
    imap = UpstreamConfig(host="127.0.0.1", port=port or dovecot.port, tls="implicit", username=address,
                          ca_file=pki.ca_cert, server_name="localhost", connect_timeout_s=2, login_timeout_s=5)
    return MailboxConfig("protocollo", address, imap, "mailbox/protocollo",
                         smtp=SubmissionConfig(upstream=imap))


@pytest.fixture
def sends(tmp_path):
    store = SendStore(lambda: sqlite3.connect(str(tmp_path / "s.db"), check_same_thread=False), placeholder="?")
    yield store
    store.close()


def run_for(watcher: ReceiptWatcher, seconds: float) -> bool:
    """Run the watcher for at most ``seconds``; True when it ended by itself."""
    async def main() -> bool:
        task = asyncio.create_task(watcher.run())
        done, _ = await asyncio.wait([task], timeout=seconds)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return bool(done)
    return asyncio.run(main())


def count_opens(monkeypatch) -> list[int]:
    opened: list[int] = []
    real = watcher_module.ProviderConversation.open

    async def counting(cfg, password):
        opened.append(1)
        return await real(cfg, password)

    monkeypatch.setattr(watcher_module.ProviderConversation, "open", counting)
    return opened


def test_a_refused_password_pauses_the_watcher_until_the_vault_entry_changes(dovecot, pki, pec_mailbox, sends,
                                                                            caplog, monkeypatch):
    """No second try with the refused password, however long it waits; once the vault holds
    another one (``pecgw vault set`` while the gateway runs), it resumes by itself."""
    monkeypatch.setattr(watcher_module, "BACKOFF_FIRST_S", 0.05)
    monkeypatch.setattr(watcher_module, "PASSWORD_RECHECK_S", 0.05)
    opened = count_opens(monkeypatch)
    caplog.set_level(logging.INFO, logger="pecgw")
    wrong = "Wrong-Mailbox-Pw-5e81"
    vault = Vault({"mailbox/protocollo": wrong})
    w = ReceiptWatcher(mailbox(dovecot, pki, pec_mailbox.address), vault, sends, audit=None)

    async def main() -> None:
        task = asyncio.create_task(w.run())
        try:
            await asyncio.sleep(1.0)  # some twenty looks at the vault meanwhile
            assert not task.done()  # paused, not ended
            assert len(opened) == 1 and w.credentials.is_refused("protocollo")
            vault["mailbox/protocollo"] = pec_mailbox.password
            await asyncio.wait_for(w.idling.wait(), 10)  # logged in again and watching the INBOX
            assert len(opened) == 2 and not w.credentials.is_refused("protocollo")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "refused the password in vault entry 'mailbox/protocollo'" in errors[0]
    assert "receipt watcher of mailbox protocollo paused" in caplog.text
    assert "the vault entry 'mailbox/protocollo' changed; resuming" in caplog.text
    assert wrong not in caplog.text and pec_mailbox.password not in caplog.text  # never in a log line


def test_an_unreachable_provider_is_retried_with_backoff_and_logged_once(dovecot, pki, pec_mailbox, sends, caplog,
                                                                        monkeypatch):
    monkeypatch.setattr(watcher_module, "BACKOFF_FIRST_S", 0.05)
    opened = count_opens(monkeypatch)
    caplog.set_level(logging.DEBUG, logger="pecgw.sends")
    w = ReceiptWatcher(mailbox(dovecot, pki, pec_mailbox.address, port=free_port()),
                       Vault({"mailbox/protocollo": pec_mailbox.password}), sends, audit=None)
    assert not run_for(w, 1.2)  # still trying when cancelled
    # 0.05, 0.1, 0.2, 0.4 s (plus up to a quarter): at most 5 attempts in 1.2 s, never a tight loop
    assert 3 <= len(opened) <= 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()


def test_a_missing_vault_entry_is_retried_without_asking_the_provider(dovecot, pki, pec_mailbox, sends, caplog,
                                                                     monkeypatch):
    monkeypatch.setattr(watcher_module, "BACKOFF_FIRST_S", 0.05)
    opened = count_opens(monkeypatch)
    caplog.set_level(logging.INFO, logger="pecgw.sends")
    w = ReceiptWatcher(mailbox(dovecot, pki, pec_mailbox.address), Vault(), sends, audit=None)
    assert not run_for(w, 0.5)
    assert opened == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING][0].count("missing") == 1
