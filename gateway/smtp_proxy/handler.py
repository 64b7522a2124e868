"""The submission front's aiosmtpd handler: who is sending, the PEC rules, the relay, the audit.

aiosmtpd speaks SMTP; this handler decides.  Per client connection, after ``AUTH``:

* **AUTH PLAIN / LOGIN** (``handle_AUTH``, so the directory lookup is awaited and never blocks
  the loop; aiosmtpd's own ``authenticator`` callback is synchronous): the same login as IMAP —
  directory password plus TOTP, trust window, failure delay, ``alice#mailbox`` to pick a mailbox.
  A failure says only ``535 5.7.8``, whatever failed (no user enumeration).
* **MAIL FROM**: the person's ``send`` right on the mailbox, then the provider connection is
  opened with the vaulted password and the *mailbox's* address goes up as the envelope sender
  (``454 4.7.0`` without asking the provider while it refuses that password, see
  :mod:`gateway.mailbox_credentials`).
* **RCPT TO**: the recipient count and the office's recipient patterns, then the provider's own
  answer for that recipient is passed back as it is.
* **DATA**: the header rules (:mod:`gateway.smtp_proxy.rules`), a Message-ID if missing, the
  ``send`` audit row *before* the message goes up, the provider's answer, the ``send_result`` row.

Every refusal is an audit row (``denied``, with the rule) and the client gets its exact reply.
While the audit trail cannot take rows, sends are refused with ``451 4.3.0`` (fail closed).
"""

from __future__ import annotations

import asyncio
import binascii
import datetime as _dt
import functools
import hashlib
import logging
import secrets
from base64 import b64decode
from dataclasses import dataclass, field

from aiosmtpd.smtp import MISSING

from gateway.audit.events import Action, AuditEvent, Decision, MessageRef, utc_now
from gateway.config import MailboxConfig
from gateway.live_sessions import LiveSession
from gateway.login import Failure, LoginRequest, LoginResult
from gateway.mailbox_credentials import CLIENT_TEXT as REFUSED_TEXT
from gateway.mailbox_credentials import REFUSED_REASON, PasswordRefused
from gateway.metrics import SMTP_SENDS, count_login, count_smtp_command, upstream_login
from gateway.secret import Secret
from gateway.smtp_proxy.message import summarise, with_message_id
from gateway.smtp_proxy.rules import (Refusal, SendLimits, check_message, check_recipient, check_sender_right,
                                      normalise)
from gateway.imap_proxy.upstream import UpstreamError
from gateway.sends.mailbox_check import accettazione_in_mailbox
from gateway.smtp_proxy.upstream import ProviderError, ProviderSubmission
from gateway.tally import TALLY
from policy.evaluate import mailbox_send_allowed

__all__ = ["SubmissionHandler", "Sender"]

log = logging.getLogger("pecgw.smtp")

AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_UNAVAILABLE = "454 4.7.0 Temporary authentication failure; try again later"
AUDIT_DOWN = "451 4.3.0 The audit trail cannot be written now; nothing was sent, try again later"


def _counted(command: str):
    """Count the hook's reply in ``pecgw_smtp_commands_total{command,result}``, and mark the
    connection busy while the hook runs."""
    def wrap(hook):
        @functools.wraps(hook)
        async def counted(self, server, session, envelope, *args):
            # the connection is busy while a hook decides (a graceful stop and the pre-login
            # deadline wait for the answer, gateway/smtp_proxy/server.py)
            server.hooks_running = getattr(server, "hooks_running", 0) + 1
            try:
                reply = await hook(self, server, session, envelope, *args)
            finally:
                server.hooks_running -= 1
            count_smtp_command(command, reply)
            return reply
        return counted
    return wrap


@dataclass
class Sender:
    """One authenticated client connection: who, for which mailbox, and its provider connection."""

    session_id: str
    client_ip: str
    result: LoginResult
    mailbox: MailboxConfig
    provider: ProviderSubmission | None = None
    given_from: str | None = None  # the client's MAIL FROM (the mailbox's address goes up)
    accepted: list[str] = field(default_factory=list)  # recipients the provider accepted
    sending: asyncio.Task | None = None  # the DATA being recorded and relayed, run to its end

    @property
    def person(self) -> str | None:
        return self.result.person


class SubmissionHandler:
    """aiosmtpd hooks for one listener; ``services`` as for IMAP (login, vault, audit, policy)."""

    def __init__(self, services) -> None:
        self.services = services
        self._ending: set[asyncio.Task] = set()  # sessions being ended (kept referenced until done)
        # sends whose DATA is at the provider, by send id: (session, sender, message ref, settled?)
        self._at_provider: dict[str, list] = {}

    # ------------------------------------------------------------------ audit
    def _audit(self, session, action: str, decision: str, *, sender: Sender | None = None, reason: str | None = None,
               detail: dict | None = None, message: MessageRef | None = None, person: str | None = None) -> None:
        sid = getattr(session, "pec_session_id", None) or _session_id(session)
        result = sender.result if sender is not None else None
        self.services.audit.emit(AuditEvent(
            when=utc_now(), session_id=sid, protocol="smtp", action=action, decision=decision,
            person=person or (result.person if result else None), offices=result.offices if result else (),
            mailbox=sender.mailbox.name if sender else None, client_ip=_peer_ip(session),
            client_name=session.host_name, reason=reason, detail=detail or {}, message=message))

    def _refused(self, session, sender: Sender, refusal: Refusal, command: str, **detail) -> str:
        self._audit(session, Action.DENIED, Decision.DENY, sender=sender, reason=refusal.rule,
                    detail={"command": command, "rule": refusal.rule, "reply": refusal.reply, **detail})
        TALLY.add("pecgw_denials_total", ("smtp", command, refusal.rule))
        return refusal.reply

    # ------------------------------------------------------------------ AUTH
    @_counted("AUTH")
    async def handle_AUTH(self, server, session, envelope, args: list[str]):
        mechanism = args[0].upper()
        if mechanism == "PLAIN":
            creds = await _plain(server, args)
        elif mechanism == "LOGIN":
            creds = await _login(server, args)
        else:
            return "504 5.5.4 Unrecognized authentication type"
        if creds is None:
            return None  # the client aborted or sent bad base64: aiosmtpd has answered
        authzid, login, password = creds
        request = LoginRequest(login=login, credential=Secret(password), client_ip=_peer_ip(session) or "",
                               protocol="smtp", mailbox_hint=authzid or None, session_id=_session_id(session))
        result = await self.services.login_service.login(request)
        count_login("smtp", result.ok, result.reason)
        if not result.ok:
            action = Action.UPSTREAM_UNAVAILABLE if result.failure is Failure.UNAVAILABLE else Action.LOGIN_FAILED
            self._audit(session, action, Decision.DENY, reason=result.reason, person=result.person or login,
                        detail={"mechanism": mechanism})
            session.pec_failures = getattr(session, "pec_failures", 0) + 1
            if session.pec_failures >= self.services.config.imap.limits.max_login_failures:
                # as for IMAP: a few tries per connection, then it ends (each try waited already)
                server.loop.call_soon(server.transport.close)
                return "421 4.7.0 Too many failed logins; closing the connection"
            return AUTH_UNAVAILABLE if result.failure is Failure.UNAVAILABLE else AUTH_INVALID
        sender = Sender(_session_id(session), _peer_ip(session) or "", result,
                        self.services.config.mailboxes[result.mailbox])
        session.authenticated, session.auth_data = True, sender
        self._audit(session, Action.LOGIN, Decision.ALLOW, sender=sender, reason=result.reason,
                    detail={"mechanism": mechanism})
        self._register_live(server, session, sender)
        return "235 2.7.0 Authentication successful"

    # ------------------------------------------------------------------ the transaction
    @_counted("MAIL")
    async def handle_MAIL(self, server, session, envelope, address: str, mail_options: list[str]):
        sender: Sender = session.auth_data
        smtp = sender.mailbox.smtp
        if smtp is None:
            return self._refused(session, sender, Refusal(550, "5.7.1", f"Sending is not set up for "
                                                          f"{sender.mailbox.address}", "no_submission"), "MAIL")
        decision = mailbox_send_allowed(self.services.policy.current, sender.result.offices, sender.mailbox.name)
        refusal = check_sender_right(decision.rights.send, sender.mailbox.address)
        if refusal is not None:
            return self._refused(session, sender, refusal, "MAIL")
        if not self.services.audit.accepting:
            return AUDIT_DOWN
        try:
            if sender.provider is None:
                sender.provider = await self._open_provider(sender)
            await sender.provider.open()
            code, text = await sender.provider.mail(sender.mailbox.address, _size(mail_options))
        except ProviderError as exc:
            return self._provider_failed(session, sender, exc, "MAIL")
        if code != 250:
            return f"{code} {text}"
        envelope.mail_from, envelope.mail_options = address, list(mail_options)
        sender.given_from, sender.accepted = address, []
        return "250 2.1.0 Sender OK"

    @_counted("RCPT")
    async def handle_RCPT(self, server, session, envelope, address: str, rcpt_options: list[str]):
        sender: Sender = session.auth_data
        smtp = sender.mailbox.smtp
        if smtp is None or sender.provider is None:
            return _restart(envelope)
        policy = self.services.policy.current
        offices = [(o.send_to_allow, o.send_to_deny) for name in sender.result.offices
                   if (o := policy.offices.get(name)) is not None and name in _sending_offices(policy, sender)]
        refusal = check_recipient(address, len(envelope.rcpt_tos), _limits(smtp), offices)
        if refusal is not None:
            return self._refused(session, sender, refusal, "RCPT", recipient=normalise(address))
        try:
            code, text = await sender.provider.rcpt(address)
        except ProviderError as exc:
            envelope.mail_from, envelope.rcpt_tos = None, []
            return self._provider_failed(session, sender, exc, "RCPT")
        if code in (250, 251):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return f"{code} {text}"

    @_counted("DATA")
    async def handle_DATA(self, server, session, envelope):
        # The whole message is in: what follows runs to its end even if the client drops the
        # connection now (aiosmtpd would cancel the hook), so a send is never left half-recorded
        # — recorded but not relayed, or relayed but not marked — for a retry to stumble on.
        sender: Sender = session.auth_data
        sender.sending = asyncio.ensure_future(self._data(session, envelope))
        return await asyncio.shield(sender.sending)

    async def _data(self, session, envelope) -> str:
        sender: Sender = session.auth_data
        smtp = sender.mailbox.smtp
        if smtp is None or sender.provider is None:
            return _restart(envelope)
        original = envelope.original_content or b""
        summary = await asyncio.to_thread(summarise, original)
        refusal = check_message(summary, envelope.rcpt_tos, sender.mailbox.address, _limits(smtp))
        if refusal is not None:
            await sender.provider.rset()
            return self._refused(session, sender, refusal, "DATA", message_id=summary.message_id)
        if not self.services.audit.accepting:
            await sender.provider.rset()
            return AUDIT_DOWN
        domain = sender.mailbox.address.rpartition("@")[2]
        message, message_id, added = with_message_id(original, summary, domain)
        digest = hashlib.sha256(original).hexdigest()
        ref = MessageRef(message_id=message_id, subject=summary.subject, sender=", ".join(summary.from_))
        sends = self.services.sends
        previous = await asyncio.to_thread(sends.find, sender.mailbox.name, message_id)
        if previous is not None:
            answer = await self._previous_attempt(session, sender, previous, digest, ref)
            if answer is not None:
                await sender.provider.rset()
                return answer
            send_id = previous.id  # refused before, or unknown for too long: it goes again, once
            if not await asyncio.to_thread(sends.claim, send_id, previous.state):
                await sender.provider.rset()
                return "451 4.4.3 This PEC is being sent by another connection right now; try again later"
        else:
            try:
                send_id = await asyncio.to_thread(
                    sends.record, person=sender.person or "", offices=sender.result.offices,
                    mailbox=sender.mailbox.name, session_id=sender.session_id, message_id=message_id,
                    content_sha256=digest, subject=summary.subject, size=len(message),
                    attachments=[{"name": a.name, "sha256": a.sha256, "size": a.size} for a in summary.attachments],
                    recipients=[normalise(r) for r in envelope.rcpt_tos])
            except Exception as exc:  # noqa: BLE001 - the same PEC recorded meanwhile, or the store down
                log.error("session %s: cannot record the send: %s", sender.session_id, type(exc).__name__)
                await sender.provider.rset()
                return "451 4.3.0 The send could not be recorded; nothing was sent, try again later"
        self._audit(session, Action.SEND, Decision.ALLOW, sender=sender, message=ref, detail={
            "envelope_from": sender.given_from, "recipients": [normalise(r) for r in envelope.rcpt_tos],
            "size": len(message), "message_id_added": added, "send_id": send_id,
            "attachments": [f"{a.name} sha256:{a.sha256}" for a in summary.attachments]})
        return await self._relay(session, sender, send_id, message, ref)

    async def _relay(self, session, sender: Sender, send_id: str, message: bytes, ref: MessageRef) -> str:
        """DATA to the provider; the record and the audit say what came of it."""
        assert sender.provider is not None
        entry = self._at_provider[send_id] = [session, sender, ref, False]
        try:
            code, text = await sender.provider.data(message)
        except ProviderError as exc:
            if entry[3]:  # recorded as unknown by a stop that could not wait: that record stands
                return f"{exc.reply[0]} {exc.reply[1]}"
            reply = f"{exc.reply[0]} {exc.reply[1]}"
            await asyncio.to_thread(self.services.sends.set_state, send_id, "unknown", reply=reply)
            self._audit(session, Action.SEND_RESULT, Decision.ERROR, sender=sender, message=ref,
                        reason="outcome_unknown", detail={"reply": reply, "send_id": send_id})
            log.error("session %s: %s", sender.session_id, exc.log)
            SMTP_SENDS.labels(sender.mailbox.name, "unknown").inc()
            return reply
        finally:
            self._at_provider.pop(send_id, None)
        reply = f"{code} {text}"
        if entry[3]:  # the stores were closed meanwhile; the receipts will tell (README, sends)
            log.warning("session %s: send %s answered %d by the provider after the gateway recorded its outcome "
                        "as unknown (it stopped)", sender.session_id, send_id, code)
            return reply
        SMTP_SENDS.labels(sender.mailbox.name, "relayed" if code == 250 else "refused").inc()
        TALLY.add("pecgw_relayed_bytes_total", ("smtp", "from_client"), len(message))
        try:  # the provider has answered: that answer is the client's, whatever the record does
            await asyncio.to_thread(self.services.sends.set_state, send_id, "relayed" if code == 250 else "refused",
                                    reply=reply)
        except Exception as exc:  # noqa: BLE001 - a retry then finds it 'recorded' and asks the mailbox
            log.error("session %s: send %s relayed (%d) but its record could not be updated: %s",
                      sender.session_id, send_id, code, type(exc).__name__)
        self._audit(session, Action.SEND_RESULT, Decision.ALLOW if code == 250 else Decision.DENY, sender=sender,
                    message=ref, detail={"reply": reply, "send_id": send_id})
        return reply

    def sends_at_provider(self) -> int:
        """How many sends wait for the provider's answer to their DATA and are not settled yet."""
        return sum(1 for entry in self._at_provider.values() if not entry[3])

    def settle_unfinished(self) -> int:
        """The gateway stops and cannot wait any longer for sends at the provider: record each as
        ``unknown`` now, with its ``send_result`` row, while the stores are still open (the
        provider may yet accept it; its accettazione settles it).  Blocking (one small write each).
        Returns how many."""
        settled = 0
        for send_id, entry in list(self._at_provider.items()):
            session, sender, ref, done = entry
            if done:
                continue
            entry[3] = True
            reply = "the gateway stopped before the provider answered"
            try:
                self.services.sends.set_state(send_id, "unknown", reply=reply)
            except Exception as exc:  # noqa: BLE001 - still write the audit row
                log.error("send %s: could not record its unknown outcome: %s", send_id, type(exc).__name__)
            self._audit(session, Action.SEND_RESULT, Decision.ERROR, sender=sender, message=ref,
                        reason="outcome_unknown", detail={"reply": reply, "send_id": send_id})
            SMTP_SENDS.labels(sender.mailbox.name, "unknown").inc()
            settled += 1
        return settled

    async def handle_exception(self, error: Exception) -> str:
        """A hook failed (a store, the vault): a temporary error for the client, never the
        exception's text (aiosmtpd's default would send it, with a permanent 500)."""
        log.error("SMTP session: internal error: %s", type(error).__name__, exc_info=error)
        return "451 4.3.0 Temporary error in the gateway; try again later"

    async def _previous_attempt(self, session, sender: Sender, previous, digest: str, ref: MessageRef) -> str | None:
        """The same Message-ID was submitted from this mailbox before: the answer that avoids a
        second PEC, or None when it may go (again).  PEC.md section 5: after a broken connection,
        look for the accettazione before sending again."""
        mid = ref.message_id
        if previous.content_sha256 != digest:
            refusal = Refusal(550, "5.6.0", f"Message-ID {mid} was already used for a different PEC from this "
                                            "mailbox; send this one with a new Message-ID", "message_id_reused")
            return self._refused(session, sender, refusal, "DATA", message_id=mid)
        if previous.state in ("relayed", "accepted"):
            return self._duplicate(session, sender, previous, ref, "already relayed")
        if previous.state in ("refused", "not_accepted"):
            return None
        try:  # recorded or unknown: did it go out after all?
            accepted = await accettazione_in_mailbox(sender.mailbox, self.services.credentials, mid or "")
        except UpstreamError as exc:
            log.error("session %s: cannot check the mailbox for an accettazione: %s", sender.session_id, exc)
            return "451 4.4.1 The PEC provider cannot be reached to check an earlier attempt; try again later"
        if accepted:
            await asyncio.to_thread(self.services.sends.set_state, previous.id, "relayed",
                                    reply="accettazione found in the mailbox")
            return self._duplicate(session, sender, previous, ref, "accettazione found")
        waited = (utc_now() - _dt.datetime.fromisoformat(previous.updated)).total_seconds()
        if waited < self.services.config.smtp.unknown_outcome_wait_s:
            return ("451 4.4.3 An earlier attempt to send this PEC may have gone out: waiting for the provider's "
                    "accettazione; try again in a few minutes")
        return None

    def _duplicate(self, session, sender: Sender, previous, ref: MessageRef, why: str) -> str:
        self._audit(session, Action.SEND_DUPLICATE, Decision.ALLOW, sender=sender, message=ref, reason=why,
                    detail={"send_id": previous.id, "first_sent": previous.created})
        SMTP_SENDS.labels(sender.mailbox.name, "duplicate").inc()
        return f"250 2.0.0 Already sent as {ref.message_id} ({why}); not sent again"

    async def handle_RSET(self, server, session, envelope):
        sender = session.auth_data
        if isinstance(sender, Sender) and sender.provider is not None:
            await sender.provider.rset()
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server, session, envelope):
        await self.closed(session)
        return "221 2.0.0 Bye"

    def _register_live(self, server, session, sender: Sender) -> None:
        """List the connection for ``pecgw sessions`` / revoke / kick and the directory check."""
        async def end(reason: str, text: str) -> None:
            # 421 (RFC 5321 §3.8): the service closes the channel.  A DATA being relayed runs
            # to its end (handle_DATA shields it), so its record and audit rows stay whole.
            self.services.live.discard(sender.session_id)
            server.say_goodbye(f"421 4.7.0 {text}\r\n".encode("utf-8", "replace"))

        self.services.live.add(LiveSession(
            session_id=sender.session_id, protocol="smtp", person=sender.person or "",
            mailbox=sender.mailbox.name, client_ip=sender.client_ip, end=end, offices=tuple(sender.result.offices),
            describe=lambda: {"client": session.host_name}))
        if self.services.is_revoked(sender.person or ""):  # revoked while this AUTH was being checked
            task = server.loop.create_task(end("revoked", "Your access to this PEC mailbox has been revoked"))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    async def closed(self, session) -> None:
        """The client connection ended (QUIT or lost): close the provider connection."""
        sender = session.auth_data
        if not isinstance(sender, Sender):
            return
        self.services.live.discard(sender.session_id)
        if sender.sending is not None and not sender.sending.done():
            await asyncio.wait([sender.sending])  # the provider connection is still needed for it
        if sender.provider is not None:
            provider, sender.provider = sender.provider, None
            await provider.close()

    async def _open_provider(self, sender: Sender) -> ProviderSubmission:
        """A provider connection logged in with the vaulted password, whose refusal or success
        is reported to the credentials; never tried with a password the provider refused
        already (``ProviderError`` of kind ``password_refused``: retrying could lock it out)."""
        credentials = self.services.credentials
        mailbox = sender.mailbox
        try:
            password = credentials.current(mailbox)
        except PasswordRefused as exc:
            raise ProviderError((454, f"4.7.0 {REFUSED_TEXT}"), str(exc), kind="password_refused") from None
        if password is None:
            raise ProviderError((454, "4.7.0 The mailbox's password is not in the gateway's vault"),
                                f"vault entry {mailbox.password_vault_key!r} missing")
        provider = ProviderSubmission(mailbox.smtp, password.secret)
        try:
            with upstream_login("smtp", mailbox.name):
                await provider.open()
        except ProviderError as exc:
            if exc.kind == "login_refused":
                credentials.refused(password, exc.log)
            raise
        credentials.accepted(password)
        return provider

    def _provider_failed(self, session, sender: Sender, exc: ProviderError, command: str) -> str:
        password_refused = exc.kind in ("login_refused", "password_refused")
        # a refused password is logged once, at ERROR, by the credentials
        log.log(logging.DEBUG if password_refused else logging.ERROR, "session %s: %s", sender.session_id, exc.log)
        self._audit(session, Action.UPSTREAM_UNAVAILABLE, Decision.ERROR, sender=sender,
                    reason=REFUSED_REASON if password_refused else "provider",
                    detail={"command": command, "reply": f"{exc.reply[0]} {exc.reply[1]}"})
        sender.provider = None
        return f"{exc.reply[0]} {exc.reply[1]}"


def _restart(envelope) -> str:
    """The provider connection went away mid-transaction: the client starts again at MAIL FROM."""
    envelope.mail_from, envelope.rcpt_tos = None, []
    return "451 4.4.2 The connection to the PEC provider was lost; start again with MAIL FROM"


def _limits(smtp) -> SendLimits:
    return SendLimits(smtp.max_recipients, smtp.max_total_bytes)


def _sending_offices(policy, sender: Sender) -> set[str]:
    """The person's offices that may send from the mailbox (their recipient patterns apply)."""
    mb = policy.mailboxes.get(sender.mailbox.name)
    return set(mb.send_offices) if mb is not None else set()


def _size(mail_options: list[str]) -> int:
    for option in mail_options:
        key, _, value = option.partition("=")
        if key.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


def _peer_ip(session) -> str | None:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


def _session_id(session) -> str:
    sid = getattr(session, "pec_session_id", None)
    if sid is None:
        sid = secrets.token_hex(8)
        session.pec_session_id = sid
    return sid


def _decoded(blob: str) -> bytes | None:
    try:
        return b64decode(blob.encode(), validate=True)
    except (binascii.Error, ValueError):
        return None


async def _first_response(server, args: list[str], challenge: str) -> bytes | None:
    """The mechanism's first client response: the initial response on the AUTH line (RFC 4954),
    or the answer to ``challenge``; None when the client aborted or sent bad base64 (aiosmtpd's
    ``challenge_auth`` has answered then, and so has this)."""
    if len(args) > 1:
        blob = _decoded(args[1])
        if blob is None:
            await server.push("501 5.5.2 Can't decode base64")
        return blob
    blob = await server.challenge_auth(challenge)
    return None if blob is MISSING else blob


async def _plain(server, args: list[str]) -> tuple[str, str, str] | None:
    """RFC 4616: ``authzid NUL authcid NUL password``, with or without an initial response."""
    blob = await _first_response(server, args, "")
    if blob is None:
        return None
    parts = blob.split(b"\x00")
    if len(parts) != 3:
        await server.push("501 5.5.2 Can't split auth value")
        return None
    authzid, login, password = (p.decode("utf-8", "replace") for p in parts)
    return authzid, login, password


async def _login(server, args: list[str]) -> tuple[str, str, str] | None:
    """The LOGIN mechanism: user name, then password, each base64 after a 334 challenge."""
    login = await _first_response(server, args, server.AuthLoginUsernameChallenge)
    if login is None:
        return None
    password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
    if password is MISSING:
        return None
    return "", login.decode("utf-8", "replace"), password.decode("utf-8", "replace")
