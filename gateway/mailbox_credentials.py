"""The vaulted PEC mailbox passwords, and which of them the provider has refused.

What: :class:`MailboxCredentials` hands out the password the vault keeps for a mailbox (as a
:class:`MailboxPassword`) to everything in the gateway that logs in to the provider: the IMAP
front, the SMTP front (at MAIL FROM), the receipt watchers and the SMTP front's accettazione
check.  Whoever uses one reports back: :meth:`~MailboxCredentials.refused` when the provider
said no to it, :meth:`~MailboxCredentials.accepted` when it logged in.

Why: a provider locks a mailbox out after a few wrong passwords (PEC.md section 5, "on auth
failure, stop and alert"), and mail clients reconnect all day.  Once the provider refuses the
password in the vault, every later login with that same vault entry would be refused too, so
none is attempted: :meth:`~MailboxCredentials.current` raises :class:`PasswordRefused` instead,
and the client is told to ask IT (:data:`CLIENT_TEXT`).  As soon as the entry is written again
(``pecgw vault set MAILBOX`` from another process: :meth:`gateway.vault.Vault.get_versioned`
re-reads the file), the next login tries the provider again; when one succeeds the mailbox is
clear.  Storing the *same* value again also counts as a change: it is the administrator's way
of saying "try again" after the provider itself was fixed (an account unlocked there).

How the refused password is remembered: never as itself, but as an HMAC-SHA256 under a random
key made for this process, over the entry's version token and the value — enough to recognise
the same entry, useless to anyone reading memory for the password.

Signals: the first refusal of a vault entry is logged once at ERROR (mailbox and vault entry
name, the provider's own words, never the password); logins not attempted are logged at DEBUG
and counted in ``pecgw_mailbox_logins_blocked_total{mailbox}``; the gauge
``pecgw_mailbox_password_refused{mailbox}`` is 1 from the refusal until a login succeeds again.

Used on the gateway's event loop only (no locking); the vault reads are a ``stat`` when nothing
changed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.metrics import MAILBOX_LOGINS_BLOCKED, MAILBOX_PASSWORD_REFUSED
from gateway.secret import Secret

__all__ = ["MailboxCredentials", "MailboxPassword", "PasswordRefused", "CLIENT_TEXT", "REFUSED_REASON"]

log = logging.getLogger("pecgw.credentials")

#: What a person's mail client is told while the provider refuses the mailbox's password: what
#: happened and who can fix it (the person cannot: they never see that password).
CLIENT_TEXT = "The PEC provider refused this mailbox's password stored in the gateway; ask IT to update it"
#: The audit rows' ``reason`` for a login refused or not attempted for that cause.
REFUSED_REASON = "mailbox_password_refused"


class PasswordRefused(Exception):
    """No login attempted: the provider refused the password the vault still holds for this
    mailbox.  The message names the mailbox and the vault entry, never a value."""

    def __init__(self, mailbox: str, vault_key: str) -> None:
        super().__init__(f"mailbox {mailbox}: the PEC provider refused the password in vault entry {vault_key!r}; "
                         f"not retried until the entry is set again")
        self.mailbox, self.vault_key = mailbox, vault_key


@dataclass(frozen=True)
class MailboxPassword:
    """One mailbox's vaulted password as handed out, with the digest that recognises it."""

    mailbox: str
    vault_key: str
    secret: Secret = field(repr=False)
    digest: bytes = field(repr=False)  # HMAC under the process key; see the module docstring


@dataclass
class _Refusal:
    digest: bytes
    since: float  # time.time() of the refusal
    blocked: int = 0  # logins not attempted since


class MailboxCredentials:
    """The gateway's one view of the mailbox passwords; see the module docstring."""

    def __init__(self, vault, mailboxes: Iterable[str] = ()) -> None:
        self.vault = vault
        self._key = secrets.token_bytes(32)
        self._refused: dict[str, _Refusal] = {}
        #: time.time() of the last login the provider accepted, per mailbox (any front, the
        #: receipt watcher, the census probe): what ``pecgw mailboxes`` shows
        self.last_accepted: dict[str, float] = {}
        # time.monotonic() when a password was last handed out for a login, and when a login last
        # ended (the provider's verdict, or :meth:`ended`): see :meth:`login_pending`
        self._handed_out: dict[str, float] = {}
        self._answered: dict[str, float] = {}
        for name in mailboxes:  # every configured mailbox has its series, 0 until refused
            MAILBOX_PASSWORD_REFUSED.labels(name).set(0)

    # ------------------------------------------------------------------ reading
    def _read(self, vault_key: str) -> tuple[Secret, bytes] | None:
        versioned = getattr(self.vault, "get_versioned", None)
        if versioned is not None:
            found = versioned(vault_key)
            if found is None:
                return None
            secret, version = found
        else:  # a plain name -> Secret lookup: the value alone identifies the entry
            secret, version = self.vault.get(vault_key), ""
            if secret is None:
                return None
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        mac.update(version.encode("utf-8") + b"\x00")
        mac.update(secret.reveal_bytes())
        return secret, mac.digest()

    def current(self, mailbox) -> MailboxPassword | None:
        """The password for ``mailbox`` (a :class:`~gateway.config.MailboxConfig`), or None when
        the vault has no entry for it.  Raises :class:`PasswordRefused`, counted as a blocked
        login, when the provider refused exactly what the vault holds: do not connect then."""
        found = self._read(mailbox.password_vault_key)
        if found is None:
            return None
        secret, digest = found
        refusal = self._refused.get(mailbox.name)
        if refusal is not None and hmac.compare_digest(refusal.digest, digest):
            refusal.blocked += 1
            MAILBOX_LOGINS_BLOCKED.labels(mailbox.name).inc()
            log.debug("mailbox %s: provider login not attempted (%d since the refusal): the vault entry %r still "
                      "holds the refused password", mailbox.name, refusal.blocked, mailbox.password_vault_key)
            raise PasswordRefused(mailbox.name, mailbox.password_vault_key)
        self._handed_out[mailbox.name] = time.monotonic()
        return MailboxPassword(mailbox.name, mailbox.password_vault_key, secret, digest)

    def blocked(self, mailbox) -> bool:
        """Whether :meth:`current` would refuse now (not counted as a blocked login): what a
        waiting receipt watcher polls."""
        refusal = self._refused.get(mailbox.name)
        if refusal is None:
            return False
        found = self._read(mailbox.password_vault_key)
        return found is not None and hmac.compare_digest(refusal.digest, found[1])

    def login_pending(self, name: str, within_s: float) -> bool:
        """Whether a password for the mailbox called ``name`` was handed out in the last
        ``within_s`` seconds and no login has ended since: a login may be under way.  A login
        that can wait (the census probe) waits for its verdict rather than try a password the
        provider may be refusing at this moment -- at a start with a stale password, the
        receipt watcher's try is then the only one."""
        handed = self._handed_out.get(name)
        return (handed is not None and time.monotonic() - handed < within_s
                and self._answered.get(name, float("-inf")) < handed)

    def ended(self, password: MailboxPassword) -> None:
        """A login with ``password`` ended without the provider's verdict (unreachable, timeout)."""
        self._answered[password.mailbox] = time.monotonic()

    def is_refused(self, name: str) -> bool:
        """Whether the mailbox called ``name`` is marked refused (the gauge's value)."""
        return name in self._refused

    # ------------------------------------------------------------------ reports
    def refused(self, password: MailboxPassword, detail: str) -> None:
        """The provider refused ``password``; ``detail`` is why, in the provider's words (never
        the password).  Logged at ERROR the first time for this vault entry only."""
        self._answered[password.mailbox] = time.monotonic()
        previous = self._refused.get(password.mailbox)
        if previous is not None and hmac.compare_digest(previous.digest, password.digest):
            log.debug("mailbox %s: the provider refused the password again (a login already under way): %s",
                      password.mailbox, detail)
            return
        self._refused[password.mailbox] = _Refusal(password.digest, time.time())
        MAILBOX_PASSWORD_REFUSED.labels(password.mailbox).set(1)
        log.error("mailbox %s: the PEC provider refused the password in vault entry %r (%s); no login to the "
                  "provider will be attempted for this mailbox until that entry is set again "
                  "('pecgw vault set %s'), so the provider does not lock the mailbox out; clients are told to "
                  "ask IT", password.mailbox, password.vault_key, detail, password.mailbox)

    def accepted(self, password: MailboxPassword) -> None:
        """The provider accepted ``password``: the mailbox is clear again if it was refused."""
        self.last_accepted[password.mailbox] = time.time()
        self._answered[password.mailbox] = time.monotonic()
        refusal = self._refused.pop(password.mailbox, None)
        if refusal is None:
            return
        MAILBOX_PASSWORD_REFUSED.labels(password.mailbox).set(0)
        log.info("mailbox %s: the PEC provider accepted the password in vault entry %r again; logins to the "
                 "provider resume (%d not attempted meanwhile)", password.mailbox, password.vault_key,
                 refusal.blocked)
