"""One look at a PEC mailbox through its provider: does the vaulted password log in, how full is
it, what waits in its INBOX.

What: :func:`probe_mailbox` opens a short IMAP session of the gateway's own with the provider
(:class:`~gateway.imap_proxy.upstream.ProviderConversation`: verified TLS, LOGIN with the
password from the vault) and, unless only the login is wanted, asks three read-only questions:

* ``GETQUOTAROOT INBOX`` (RFC 9208, formerly RFC 2087), when the provider offers ``QUOTA``: the
  ``STORAGE`` used and limit (in units of 1024 octets on the wire, octets here).  With several
  quota roots the fullest one counts.
* ``STATUS INBOX (MESSAGES UNSEEN)``.
* the **unhandled PEC**: after ``EXAMINE INBOX`` (read-only: nothing is marked read),
  ``UID SEARCH UNSEEN OLDER <age> HEADER X-Trasporto posta-certificata`` -- a busta di trasporto
  (an incoming PEC, PEC.md section 1) that nobody has opened for longer than ``[census]
  unhandled_age``.  ``OLDER`` is RFC 5032 (``WITHIN``); a provider without it is asked
  ``BEFORE <day>`` instead, which counts whole days.  The header is the provider's top-level
  one, as IMAP ``HEADER`` searches only that; a plain message forging it would be counted too,
  which is acceptable for a count meant to make someone look.

Why here: ``/readyz`` (:mod:`gateway.health`) and ``pecgw mailboxes``
(:mod:`gateway.census_cli`) must ask the provider the same way, and both must respect the rule
of :mod:`gateway.mailbox_credentials`: a password the provider refused is **never tried again**
until the vault entry is set again (a provider locks the mailbox out after a few wrong
passwords).  So a refused mailbox is reported without connecting at all, a refusal met here is
reported to the credentials (logged once, seen by every front), and a login accepted here clears
the mark like any other.  When another login to the mailbox is under way (the receipt watcher
logging in at the gateway's start, a person's client), the probe waits for the provider's verdict
on it first: after a password change at the provider, a restart then costs one wrong try, not two.

Bounded: the login by the mailbox's own ``connect_timeout`` and ``login_timeout`` (a provider
that does not answer is reported as ``timeout``), the questions after it by ``timeout_s``.  Errors say what failed with the
provider's own words at most, never a password.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import time
from dataclasses import asdict, dataclass

from gateway.config import MailboxConfig
from gateway.imap_proxy.framing import Frame
from gateway.imap_proxy.responses import Head
from gateway.imap_proxy.syntax import Atom, Reader
from gateway.imap_proxy.upstream import ProviderConversation, UpstreamError
from gateway.mailbox_credentials import MailboxCredentials, PasswordRefused
from gateway.sends.watch_imap import examine, search_uids, since_text

__all__ = ["ProbeResult", "probe_mailbox", "unhandled_criteria", "OK", "PASSWORD_REFUSED", "NO_PASSWORD"]

log = logging.getLogger("pecgw.census")

#: ``ProbeResult.state`` values besides the :class:`UpstreamError` kinds (unreachable, timeout,
#: tls, protocol): logged in; the provider refused the vaulted password (now or before); no
#: password in the vault (or the vault could not be read).
OK, PASSWORD_REFUSED, NO_PASSWORD = "ok", "password_refused", "no_password"

_TRASPORTO = b"HEADER X-Trasporto posta-certificata"
_PENDING_STEP_S = 0.05


@dataclass(frozen=True)
class ProbeResult:
    """What one probe found.  ``state`` is ``ok`` when the provider accepted the vaulted
    password; the census fields are None when not asked or not answered (``reason`` says why)."""

    mailbox: str
    at: float  # time.time() when the probe ended
    state: str
    reason: str = ""  # for people; never a secret
    login_at: float | None = None  # time.time() of the successful login
    quota_used: int | None = None  # octets
    quota_limit: int | None = None  # octets; None also when the provider sets no limit
    messages: int | None = None  # in INBOX
    unseen: int | None = None  # in INBOX
    unhandled: int | None = None  # unseen incoming PEC older than the configured age

    @property
    def ok(self) -> bool:
        return self.state == OK

    @property
    def quota_ratio(self) -> float | None:
        if self.quota_used is None or not self.quota_limit:
            return None
        return self.quota_used / self.quota_limit

    def as_dict(self) -> dict:
        return {**asdict(self), "quota_ratio": self.quota_ratio}


def unhandled_criteria(age_s: float, *, within: bool, now: float | None = None) -> bytes:
    """The SEARCH criteria for unseen incoming PEC older than ``age_s`` seconds."""
    if age_s < 1:
        return b"UNSEEN " + _TRASPORTO
    if within:  # RFC 5032: OLDER n = INTERNALDATE more than n seconds ago
        return b"UNSEEN OLDER %d %s" % (int(age_s), _TRASPORTO)
    # RFC 3501 BEFORE: INTERNALDATE earlier than that day (whole days, the server's time zone)
    day = _dt.datetime.fromtimestamp((now if now is not None else time.time()) - age_s, _dt.timezone.utc)
    return b"UNSEEN BEFORE %s %s" % (since_text(day), _TRASPORTO)


async def probe_mailbox(mailbox: MailboxConfig, credentials: MailboxCredentials, *, timeout_s: float,
                        unhandled_age_s: float = 0.0, census: bool = True) -> ProbeResult:
    """Probe ``mailbox``'s provider; see the module docstring.  Never raises for the provider's
    or the vault's sake: every outcome is a :class:`ProbeResult`."""
    def result(state: str, reason: str = "", **found) -> ProbeResult:
        return ProbeResult(mailbox.name, time.time(), state, reason, **found)

    # a login of someone else's under way (the receipt watcher at start, a person's client): let
    # the provider answer it first, so a password it is refusing right now is not tried twice
    window = mailbox.imap.connect_timeout_s + mailbox.imap.login_timeout_s
    until = time.monotonic() + window
    while credentials.login_pending(mailbox.name, window) and time.monotonic() < until:
        await asyncio.sleep(_PENDING_STEP_S)
    refused_text = (f"the provider refused the password in vault entry {mailbox.password_vault_key!r}; "
                    f"not tried again until it is set again ('pecgw vault set {mailbox.name}')")
    try:
        if credentials.blocked(mailbox):  # not counted as a blocked login: nobody asked to log in
            return result(PASSWORD_REFUSED, refused_text)
        password = credentials.current(mailbox)
    except PasswordRefused:
        return result(PASSWORD_REFUSED, refused_text)
    except Exception as exc:  # noqa: BLE001 - a vault being replaced, unreadable: say so, try next time
        return result(NO_PASSWORD, f"the vault could not be read: {type(exc).__name__}")
    if password is None:
        return result(NO_PASSWORD, f"no password in the vault under {mailbox.password_vault_key!r} "
                                   f"('pecgw vault set {mailbox.name}')")
    try:  # bounded by the mailbox's own connect_timeout and login_timeout
        conv = await ProviderConversation.open(mailbox.imap, password.secret)
    except UpstreamError as exc:
        if exc.kind == "login_refused":
            credentials.refused(password, str(exc))  # logged once, at ERROR; no front retries it
            return result(PASSWORD_REFUSED, refused_text)
        credentials.ended(password)  # no verdict: not under way any more
        return result(exc.kind, str(exc))
    credentials.accepted(password)
    login_at = time.time()
    if not census:
        conv.close()
        return result(OK, login_at=login_at)
    found: dict = {}
    reason = ""
    try:
        async with asyncio.timeout(timeout_s):
            reason = await _ask(conv, found, unhandled_age_s)
    except TimeoutError:
        reason = f"the provider did not answer the census questions within {timeout_s:g} s"
    except UpstreamError as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - a reply that does not parse: the login still stands
        reason = f"unexpected reply from the provider: {type(exc).__name__}"
    finally:
        conv.close()
    return result(OK, reason, login_at=login_at, **found)


async def _ask(conv: ProviderConversation, found: dict, unhandled_age_s: float) -> str:
    """GETQUOTAROOT, STATUS and the unhandled-PEC SEARCH, filling ``found``; a note on what was
    not available ("" when everything was)."""
    notes = []
    if conv.has_capability("QUOTA"):
        quotas: list[tuple[int, int | None]] = []
        await _command(conv, b"GETQUOTAROOT INBOX", lambda head, frame: _quota(head, frame, quotas))
        if quotas:  # the fullest root decides (the one that bounces mail first)
            used, limit = max(quotas, key=lambda q: (q[0] / q[1]) if q[1] else -1.0)
            found["quota_used"], found["quota_limit"] = used, limit
        else:
            notes.append("the provider reported no storage quota for INBOX")
    else:
        notes.append("the provider does not offer IMAP QUOTA")
    counts: dict[str, int] = {}
    await _command(conv, b"STATUS INBOX (MESSAGES UNSEEN)", lambda head, frame: _status(head, frame, counts))
    found["messages"], found["unseen"] = counts.get("MESSAGES"), counts.get("UNSEEN")
    state = {"news": False}
    await examine(conv, b"INBOX", state)
    criteria = unhandled_criteria(unhandled_age_s, within=conv.has_capability("WITHIN"))
    found["unhandled"] = len(await search_uids(conv, criteria, state))
    return "; ".join(notes)


async def _command(conv: ProviderConversation, text: bytes, collect) -> None:
    tag = conv.next_tag()
    conv.link.write(b"%s %s\r\n" % (tag.encode(), text))
    status = await conv.tagged(tag, on_untagged=collect)
    if status.status != "OK":
        verb = text.split(b" ", 1)[0].decode("latin-1")
        raise UpstreamError("protocol", f"{verb} refused by the provider: {status.text[:200]}")


def _quota(head: Head, frame: Frame, out: list[tuple[int, int | None]]) -> None:
    """``* QUOTA root (STORAGE used limit ...)``: the STORAGE pair, in octets."""
    if head.name != "QUOTA":
        return
    reader = Reader(frame, start=1)
    reader.read()  # QUOTA
    reader.read()  # the root's name
    resources = reader.read()
    if not isinstance(resources, list):
        return
    for i in range(0, len(resources) - 2, 3):
        name, used, limit = resources[i:i + 3]
        if isinstance(name, Atom) and name.upper() == "STORAGE" and str(used).isdigit() and str(limit).isdigit():
            out.append((int(used) * 1024, int(limit) * 1024 or None))


def _status(head: Head, frame: Frame, out: dict[str, int]) -> None:
    """``* STATUS INBOX (MESSAGES n UNSEEN n)``."""
    if head.name != "STATUS":
        return
    reader = Reader(frame, start=1)
    reader.read()  # STATUS
    reader.read()  # the mailbox
    items = reader.read()
    if isinstance(items, list):
        for name, value in zip(items[::2], items[1::2]):
            if isinstance(name, Atom) and str(value).isdigit():
                out[name.upper()] = int(value)
