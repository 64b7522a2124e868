"""The IMAP session: a pure state machine between one client and one provider connection.

Bytes and events go in through methods (``client_data``, ``upstream_data``, ``login_finished``,
``tls_started``, ``client_closed``, ``upstream_closed``); each returns a list of actions from
:mod:`gateway.imap_proxy.actions` for the I/O adapter to carry out in order.  Nothing here touches a
socket, a timer or a thread (DESIGN.md style 1).

States and their invariants (all transitions happen in :meth:`ImapSession._set_state`):

* ``NOT_AUTHENTICATED`` — the gateway answers every command itself; no provider connection.
  Login is refused until TLS is active unless ``plaintext_login`` was set explicitly.
* ``AUTHENTICATING`` — a :class:`LoginRequest` is out; client bytes received meanwhile stay in
  the framer, unparsed, and are handled in order once the result is in.
* ``AUTHENTICATED`` — the provider session is open; client commands are parsed, checked against
  the command table and the office folder policy (:mod:`gateway.imap_proxy.enforce`), and
  forwarded as their exact bytes unless the policy rewrites or refuses them; replies come back in
  order, with folders the person may not see removed.
* ``LOGOUT`` — the connection is closing; nothing more is read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from gateway.audit.events import Action, AuditEvent, Decision, MessageRef, utc_now
from gateway.imap_proxy import actions as act
from gateway.imap_proxy.audit_trail import AuditTrail, Happened
from gateway.imap_proxy.capabilities import filter_capabilities, preauth_capabilities
from gateway.imap_proxy.commands import Command, Handling, parse_command, parse_tag
from gateway.imap_proxy.enforce import FolderGuard, Verdict
from gateway.imap_proxy.errors import CommandSyntaxError, FramingError, ImapProtocolError
from gateway.imap_proxy.expunge_plan import DeletedQuestion, PendingQuestion, plan_expunge
from gateway.imap_proxy.folder_access import FolderAccess
from gateway.imap_proxy.identity import IDENTITY_ITEM, IdentityCache
from gateway.imap_proxy.identity_lookups import IdentityLookups
from gateway.imap_proxy.preauth import PREAUTH_VERBS, SERVER_NAME, PreauthVerbs
from gateway.imap_proxy.states import SessionState
from gateway.imap_proxy.framing import NEED_DATA, EndOfStream, Frame, Framer, LiteralAnnounced, LiteralRefused
from gateway.imap_proxy.relay import InFlightEntry, InFlightTable, UpstreamPacer
from gateway.imap_proxy.responses import Kind, classify, parse_status
from gateway.imap_proxy.syntax import Atom, String, astring_octets
from gateway.login import Failure, LoginResult
from gateway.tally import TALLY

__all__ = ["SessionState", "SessionLimits", "ImapSession", "GATEWAY_TAG_PREFIX"]

#: Tags of the gateway's own commands toward the provider; never relayed to the client.
GATEWAY_TAG_PREFIX = "PECGW."

#: Commands whose effects are audited: refused while the audit store cannot take rows.
AUDITED = frozenset({"SELECT", "EXAMINE", "FETCH", "STORE", "COPY", "MOVE", "EXPUNGE", "APPEND", "CREATE",
                     "DELETE", "RENAME", "CLOSE"})

#: Commands whose message set decides their audit rows.
_SETS_AUDITED = frozenset({"FETCH", "STORE", "COPY", "MOVE", "EXPUNGE"})

#: Capabilities the gateway adds after login: it answers RFC 4314 ACL commands from the policy.
GATEWAY_CAPABILITIES = ["ACL", "RIGHTS=texk"]

#: The BYE text of a gateway that stops (RFC 3501 §7.1.5; RFC 5530 UNAVAILABLE: try again later).
SHUTDOWN_TEXT = b"[UNAVAILABLE] Gateway shutting down"


@dataclass(frozen=True)
class SessionLimits:
    """Per-session limits (see config ``[imap]``)."""

    max_line: int = 65536
    max_literal: int = 100 * 1024 * 1024
    preauth_max_literal: int = 8192  # before login nobody needs more than a password
    max_in_flight: int = 128
    max_login_failures: int = 3  # per connection, then BYE
    max_response_line: int = 16 * 1024 * 1024  # SEARCH/THREAD/VANISHED of big mailboxes are long
    max_response_literal: int = 512 * 1024 * 1024



class ImapSession(PreauthVerbs):
    """One client connection's protocol state."""

    def __init__(
        self,
        *,
        session_id: str,
        client_ip: str,
        policy,
        tls_active: bool,
        starttls_available: bool,
        plaintext_login: bool = False,
        limits: SessionLimits = SessionLimits(),
        clock: Callable[[], float] = time.monotonic,
        now: Callable = utc_now,
        version: str = "0",
        identities: IdentityCache | None = None,
        audit_accepting: Callable[[], bool] = lambda: True,
    ) -> None:
        self.session_id = session_id
        self._policy = policy  # holds .current: the office folder policy in force (LivePolicy)
        self._guard: FolderGuard | None = None  # set at login
        self._trail: AuditTrail | None = None  # set at login: what the person did, per message
        self._identities = identities if identities is not None else IdentityCache()
        self._ids: IdentityLookups | None = None  # set at login: rows waiting for message identity
        self.audit_accepting = audit_accepting  # False while the audit store cannot take rows
        self._held: _Held | None = None  # a RENAME or an expunge waiting for the gateway's own question
        self._own_count = 0  # numbers the gateway's own expunge commands
        self._noops = 0  # numbers the NOOPs that precede them
        self.client_ip = client_ip
        self.tls_active = tls_active
        self.starttls_available = starttls_available
        self.plaintext_login = plaintext_login
        self.limits = limits
        self._clock = clock
        self._now = now
        self._version = version
        self.state = SessionState.NOT_AUTHENTICATED
        self.client_framer = Framer(max_line=limits.max_line, max_literal=limits.preauth_max_literal,
                                    max_message=limits.preauth_max_literal * 2 + limits.max_line)
        self.upstream_framer = Framer(max_line=limits.max_response_line, max_literal=limits.max_response_literal,
                                      announce_literals=False)
        self._sasl_tag: str | None = None  # AUTHENTICATE waiting for its client response line
        self._login_tag: str | None = None
        self._login_failures = 0
        self.client_name: str | None = None
        self.person: str | None = None
        self.offices: tuple[str, ...] = ()
        self.mailbox: str | None = None
        self._attempted_user: str | None = None
        self.inflight = InFlightTable()
        self._pacer: UpstreamPacer | None = None
        self._upstream_caps: list[str] = []
        self._idle_entry: InFlightEntry | None = None  # the IDLE command awaiting its tagged reply
        self._idling = False  # IDLE relayed and DONE not yet seen: the next client line is DONE
        self._logout_entry: InFlightEntry | None = None
        self._provider_said_bye = False
        self._draining: str | None = None  # the client left with audited commands running: why
        self._stopping = False  # the gateway stops: no new command is read, BYE once the running ones end
        self._started = clock()
        self.bytes_from_client = 0
        self.bytes_to_client = 0

    # ======================================================================= public events
    def connection_made(self) -> list:
        caps = " ".join(self._preauth_caps()).encode()
        return self._count_out([act.SendToClient(b"* OK [CAPABILITY %s] %s ready\r\n" % (caps, SERVER_NAME))])

    def client_data(self, data: bytes) -> list:
        """Bytes from the client (``b""`` at end of stream)."""
        if self.state is SessionState.LOGOUT:
            return []
        self.bytes_from_client += len(data)
        _BYTES[_FROM_CLIENT] = _BYTES.get(_FROM_CLIENT, 0) + len(data)
        self.client_framer.receive_data(data)
        return self._count_out(self._pump_client())

    def upstream_data(self, data: bytes) -> list:
        """Bytes from the provider (``b""`` at end of stream); ignored once the session has ended."""
        if self.state is SessionState.LOGOUT:
            return []
        self.upstream_framer.receive_data(data)
        out: list = []
        while self.state is not SessionState.LOGOUT:
            try:
                event = self.upstream_framer.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, EndOfStream):
                    out += self._upstream_lost()
                    break
                out += self._on_upstream_frame(event)
            except ImapProtocolError as exc:
                out += self._upstream_broken(f"provider protocol error: {exc.message}")
                break
        return self._count_out(out)

    def tls_started(self) -> list:
        """The client side is now TLS (after STARTTLS)."""
        self.tls_active = True
        return []

    def login_finished(self, result: LoginResult, upstream_capabilities: list[str] | None = None) -> list:
        """The login service answered the pending LoginRequest."""
        tag = self._login_tag or "*"
        self._login_tag = None
        out: list = []
        if self.state is SessionState.LOGOUT:  # the connection ended while the login was out
            return out
        if result.ok:
            self.person, self.offices, self.mailbox = result.person, result.offices, result.mailbox
            self._upstream_caps = _client_caps(list(upstream_capabilities or ()))
            upper = {c.upper() for c in upstream_capabilities or ()}
            access = FolderAccess(self._policy, result.person or "", result.groups, result.mailbox or "")
            self._guard = FolderGuard(access, unselect="UNSELECT" in upper)
            self._uidplus = "UIDPLUS" in upper
            self._trail = AuditTrail(access.human)
            self._ids = IdentityLookups(self._identities, result.mailbox, self._trail, GATEWAY_TAG_PREFIX)
            self.offices = access.offices
            self._pacer = UpstreamPacer()
            self.client_framer.max_literal = self.limits.max_literal
            self.client_framer.max_message = self.limits.max_literal + 1024 * 1024
            self._set_state(SessionState.AUTHENTICATED)
            caps = " ".join(self._upstream_caps).encode()
            out.append(act.SendToClient(b"%s OK [CAPABILITY %s] Logged in\r\n" % (tag.encode(), caps)))
            out.append(self._audit(Action.LOGIN, Decision.ALLOW, reason=result.reason))
        else:
            self._login_failures += 1
            code = (result.failure or Failure.AUTHENTICATION).value
            text = result.client_text or "Authentication failed"
            out.append(act.SendToClient(b"%s NO [%s] %s\r\n" % (tag.encode(), code.encode(), text.encode())))
            action = Action.UPSTREAM_UNAVAILABLE if result.failure is Failure.UNAVAILABLE else Action.LOGIN_FAILED
            out.append(self._audit(action, Decision.DENY, reason=result.reason, person=result.person
                                   or self._attempted_user, mailbox=result.mailbox))
            self._set_state(SessionState.NOT_AUTHENTICATED)
            if self._login_failures >= self.limits.max_login_failures:
                return self._count_out(out + self._bye(b"Too many failed logins"))
        return self._count_out(out + self._pump_client())

    def client_closed(self) -> list:
        """The client went away (EOF or reset)."""
        if self.state is SessionState.LOGOUT:
            return []
        return self._count_out(self._client_gone("client closed the connection"))

    def internal_error(self) -> list:
        """Something in the gateway failed for this session: end it now (never draining: the
        reply that failed is lost), writing the rows that wait and the logout row."""
        if self.state is SessionState.LOGOUT:
            return []
        self._draining = None
        return self._count_out(self._bye(b"[UNAVAILABLE] Internal error in the gateway; please reconnect",
                                         reason="internal_error"))

    def _client_gone(self, reason: str) -> list:
        """The client left.  Audited commands it sent may be running at the provider (an
        EXPUNGE, a MOVE): their replies are still read, for the audit rows, before the session
        ends; nothing more is sent to the provider, and a command held for the gateway's own
        question is dropped unsent (it never ran)."""
        if self.state is not SessionState.AUTHENTICATED or self._draining is not None:
            return self._finish(reason) if self._draining is None else []
        if self._held is not None:
            self.inflight.answer(self._held.entry, b"")
            self._held = None
        if not self._audited_running():
            return self._finish(reason)
        self._draining = reason
        return [act.Log(f"client left with audited commands running; reading their replies ({reason})")]

    def _audited_running(self) -> bool:
        return any(e.command is not None and e.local_reply is None and e.command.name in AUDITED
                   for e in self.inflight)

    @property
    def draining(self) -> bool:
        """True while the client is gone and the provider's last replies are read for the audit."""
        return self._draining is not None

    def upstream_closed(self) -> list:
        return self.upstream_data(b"")

    def timed_out(self, what: str) -> list:
        """A timer of the I/O adapter ran out (``preauth`` or ``idle``)."""
        text = b"Login timeout" if what == "preauth" else b"Autologout; idle for too long"
        return self._count_out(self._bye(text, reason=f"{what}_timeout"))

    def shutting_down(self, *, now: bool = False) -> list:
        """The gateway is stopping: say so and close (RFC 3501 §7.1.5 BYE).

        A session with nothing running — idle, in IDLE (which only waits for news), or logging
        in (a login finished only to be ended at once is worth nothing) — gets the BYE at once.
        One with commands running at the provider (a bulk FETCH streaming, the gateway's own
        identity lookups) reads no new command and gets the BYE as soon as they are answered and
        their audit rows made.  ``now`` (the grace period is over) ends it whatever runs; the rows
        still waiting for a message identity are written as they are.
        """
        if self.state is SessionState.LOGOUT:
            return []
        if now or not self._busy():
            return self._count_out(self._bye(SHUTDOWN_TEXT, reason="shutdown"))
        self._stopping = True
        return []

    def _busy(self) -> bool:
        """Is something running at the provider that a graceful stop lets finish?  Not an IDLE
        the client has not ended: it runs until the client's DONE, which may never come."""
        if self.state is not SessionState.AUTHENTICATED:
            return False
        oldest = self.inflight.oldest_relayed()
        if oldest is not None and not (self._idling and oldest is self._idle_entry):
            return True
        return self._held is not None or (self._ids is not None and bool(self._ids.outstanding))

    @property
    def stopping(self) -> bool:
        """True while a graceful stop waits for this session's running commands."""
        return self._stopping and self.state is not SessionState.LOGOUT

    def ended_by_gateway(self, text: bytes, reason: str) -> list:
        """IT or the directory check ended this session (revoked, kicked, access withdrawn): tell
        the client why and close.  A client already gone while the last replies are read for the
        audit is left to finish that."""
        if self.state is SessionState.LOGOUT or self._draining is not None:
            return []
        if self._held is not None:  # held for the gateway's own question: it never runs now
            self.inflight.answer(self._held.entry, b"")
            self._held = None
        if self.state is not SessionState.AUTHENTICATED or not self._audited_running():
            return self._count_out(self._bye(text, reason=reason))
        # A MOVE or an EXPUNGE is running at the provider: the client is told and cut off now,
        # and the provider's replies are still read for the rows they make (as when a client leaves).
        out = self._count_out([act.SendToClient(b"* BYE %s\r\n" % text), act.CloseClient()])
        self._draining = reason
        return out + [act.Log(f"session ended ({reason}) with audited commands running; reading their replies")]

    @property
    def selected_folder(self) -> str | None:
        """The folder the client has selected, by its human name (for ``pecgw sessions``)."""
        wire = self._guard.selected if self._guard is not None else None
        return None if wire is None else FolderAccess.human(wire)

    @property
    def reading_paused(self) -> bool:
        """True while the client must not be read.

        That is while a login is out, while a RENAME waits for the gateway's subfolder LIST,
        while the writes to the provider wait for it (a literal it has not asked for yet, or an
        IDLE it has not acknowledged: later commands would pile up in memory, literals and all),
        and while too many commands are in flight — except during IDLE, when the client's next
        line is the ``DONE`` that ends it.
        """
        if (self.state is SessionState.AUTHENTICATING or self._held is not None or self._draining is not None
                or self._stopping):
            return True
        if self._ids is not None and self._ids.waiting and not self._idling:
            return True  # the identity lookups go when nothing else is in flight
        if self._pacer is not None and self._pacer.blocked and not self._idling:
            return True  # a literal or an IDLE waits for the provider: later commands would pile up
        return len(self.inflight) >= self.limits.max_in_flight and not self._idling

    # ======================================================================= client side
    def _pump_client(self) -> list:
        # a quiet moment may be the one the identity lookups wait for, whatever made it quiet
        # (a reply from the provider, or a command the gateway answered itself)
        out: list = self._identity_commands() if self._ids is not None and self._ids.waiting else []
        while self.state not in (SessionState.LOGOUT, SessionState.AUTHENTICATING):
            if self.reading_paused:
                break
            try:
                event = self.client_framer.next_event()
            except FramingError as exc:
                return out + self._bye(f"Protocol error: {exc.message}".encode(), reason="client_framing")
            if event is NEED_DATA:
                break
            if isinstance(event, EndOfStream):
                out += self._client_gone("client closed the connection")
                break
            if isinstance(event, LiteralAnnounced):
                if event.marker.kind.synchronizing:
                    refused = self._refuse_before_upload(event)
                    out += refused or [act.SendToClient(b"+ Ready for literal data\r\n")]
                continue
            if isinstance(event, LiteralRefused):
                tag = parse_tag(event.line_so_far) or "*"
                out += self._reply(None, b"%s NO [TOOBIG] Literal of %d octets exceeds the limit of %d\r\n"
                                   % (tag.encode(), event.marker.size, event.limit), tag)
                continue
            out += self._on_client_frame(event)
        # a login may have started while frames remain in the framer: they wait there
        if self._stopping and self.state is not SessionState.LOGOUT and not self._busy():
            out += self._bye(SHUTDOWN_TEXT, reason="shutdown")  # what ran is answered: the gateway stops
        return out

    def _on_client_frame(self, frame: Frame) -> list:
        if self._sasl_tag is not None:
            return self._on_sasl_response(frame)
        if self.state is SessionState.AUTHENTICATED and self._idling:
            return self._on_idle_line(frame)
        try:
            command = parse_command(frame)
        except CommandSyntaxError as exc:
            tag = exc.tag or "*"
            return self._reply(None, b"%s BAD %s\r\n" % (tag.encode(), exc.message.encode()), tag)
        spec = command.spec
        if spec is None:
            return self._reply(command, b"%s BAD Unknown command\r\n" % command.tag.encode())
        if command.args and not spec.takes_arguments(command.uid):
            # a provider may never parse them (Dovecot reads nothing after IDLE): an argument
            # here could be a literal it would then take for commands
            return self._reply(command, b"%s BAD %s takes no arguments\r\n"
                               % (command.tag.encode(), command.display_name.encode()))
        if self.state is SessionState.AUTHENTICATED:
            return self._relay_command(command, spec.postauth)
        if spec.preauth is not Handling.GATEWAY:
            return self._reply(command, b"%s BAD Log in first\r\n" % command.tag.encode())
        return PREAUTH_VERBS[command.name](self, command)

    # -- authenticated: the relay ------------------------------------------------------------
    def _relay_command(self, cmd: Command, handling: Handling) -> list:
        if handling is Handling.REFUSED:
            if cmd.name in ("LOGIN", "AUTHENTICATE", "STARTTLS"):
                return self._reply(cmd, b"%s BAD Already logged in\r\n" % cmd.tag.encode())
            return self._reply(cmd, b"%s NO [CANNOT] %s is not available through the gateway\r\n"
                               % (cmd.tag.encode(), cmd.display_name.encode()))
        if cmd.tag.startswith(GATEWAY_TAG_PREFIX):
            return self._reply(cmd, b"%s BAD Tag prefix reserved by the gateway\r\n" % cmd.tag.encode())
        if cmd.name in AUDITED and not self.audit_accepting():
            # fail closed: what would go unaudited is not done (the store's outage is logged)
            return self._reply(cmd, b"%s NO [UNAVAILABLE] The audit trail cannot be written now; "
                                    b"try again later\r\n" % cmd.tag.encode())
        if cmd.name in _SETS_AUDITED and cmd.args and "$" in str(cmd.args[0]):
            # RFC 5182's saved result names messages the gateway cannot see: the audit trail
            # could not say which ones the command touched (SEARCHRES is not offered either)
            return self._reply(cmd, b"%s BAD The saved search result ($) is not available through the gateway; "
                                    b"name the messages\r\n" % cmd.tag.encode())
        if self.inflight.find(cmd.tag) is not None:
            # RFC 3501 §2.2.1: tags are unique per command.  Two alike in flight would let one's
            # reply be taken for the other's — a literal dropped, a SELECT judged wrongly.
            return self._reply(cmd, b"%s BAD Tag already in use by a command in progress\r\n" % cmd.tag.encode())
        assert self._guard is not None
        verdict = self._guard.check(cmd)
        self.offices = self._guard.access.offices
        if verdict.end_session:
            return [self._audit(Action.ACCESS_WITHDRAWN, Decision.DENY, reason="policy_reload")] + self._bye(
                b"Your access to this PEC mailbox was withdrawn", reason="access_withdrawn")
        out = self._apply_verdict(verdict)
        if verdict.reply is not None:
            return out + self._reply(cmd, verdict.reply)
        frame = verdict.frame or cmd.frame
        expunge = verdict.expunges or (cmd.name == "EXPUNGE" and not cmd.uid)
        question: object | None = None
        if expunge and self._uidplus and self._ids is not None and self._trail is not None:
            ids, trail = self._ids, self._trail
            self._noops += 1
            question = DeletedQuestion(lambda: self._own_tag("x"), lambda: trail.view, unnamed=ids.unnamed,
                                       item=IDENTITY_ITEM, on_fetch=ids.absorb,
                                       noop_tag=f"{GATEWAY_TAG_PREFIX}n{self._noops}")
        elif cmd.name == "EXPUNGE" and cmd.uid and self._trail is not None:
            expunge = True  # UID EXPUNGE: a NOOP first, then the command as it came
            self._noops += 1
            trail, ids = self._trail, self._ids
            question = PendingQuestion(f"{GATEWAY_TAG_PREFIX}n{self._noops}", lambda: self._own_tag("x"),
                                       lambda: trail.view, item=IDENTITY_ITEM,
                                       on_fetch=ids.absorb if ids is not None else (lambda frame: False))
        elif verdict.hold is not None:
            question = _SubfolderQuestion(verdict.hold, self._guard)
        if question is not None:
            # keep its place in the reply order; later commands wait unread until it is decided
            self._held = _Held(cmd, self.inflight.add_relayed(cmd), frame, question, expunge)
            return out + self._list_for_held()
        if expunge:  # no UIDPLUS: nothing to ask first
            return out + self._relay_expunge(cmd, None, self.inflight.add_relayed(cmd))
        self._note_relayed(cmd)
        if cmd.name == "ID":
            self._record_client_id(cmd)
        elif cmd.name == "ENABLE":
            frame = self._enable_frame(cmd)
            if frame is None:
                return self._reply(cmd, b"* ENABLED\r\n%s OK ENABLE completed\r\n" % cmd.tag.encode())
        entry = self.inflight.add_relayed(cmd)
        if cmd.name == "IDLE":
            self._idle_entry, self._idling = entry, True
        elif cmd.name == "LOGOUT":
            self._logout_entry = entry
        assert self._pacer is not None
        chunks = self._pacer.submit(cmd.tag, frame, idle=cmd.name == "IDLE")
        return out + [act.SendToUpstream(chunk) for chunk in chunks]

    def _closing(self) -> bool:
        """Is a CLOSE under way — held for the gateway's question, or its expunge running?
        RFC 3501 §6.4.2: CLOSE sends no EXPUNGE replies, so none reach the client then."""
        held = self._held
        if held is not None and held.listing and held.command.name == "CLOSE":
            return True
        return self._trail is not None and self._trail.closing

    def _own_tag(self, kind: str) -> str:
        self._own_count += 1
        return f"{GATEWAY_TAG_PREFIX}{kind}{self._own_count}"

    def _relay_expunge(self, cmd: Command, deleted: list[int] | None, entry: InFlightEntry) -> list:
        """Send a person's EXPUNGE or expunging CLOSE as planned in
        :mod:`gateway.imap_proxy.expunge_plan`, and tell the audit trail which messages it removes."""
        assert self._guard is not None and self._pacer is not None
        plan = plan_expunge(cmd, deleted, own_tag=self._own_tag("e"), unselect=self._guard.unselect)
        self._note_relayed(cmd)
        if self._trail is not None:
            self._trail.expunging(cmd.tag, plan.uids)
        return self._send_own(plan.own) + [act.SendToUpstream(c) for c in self._pacer.submit(cmd.tag, plan.frame)]

    def _apply_verdict(self, verdict: Verdict) -> list:
        """The side effects of a policy verdict: the gateway's own commands, notices, audit rows."""
        out = self._send_own(verdict.upstream)
        if verdict.notes:
            out.append(act.SendToClient(verdict.notes))
        if verdict.withdrawn is not None:
            if self._trail is not None:
                self._trail.deselected()
            out.append(self._audit(Action.FOLDER_WITHDRAWN, Decision.DENY, reason="policy_reload",
                                   folder=verdict.withdrawn))
        d = verdict.denial
        if d is not None:
            out.append(self._audit(Action.DENIED, Decision.DENY, reason=d.code.lower(), folder=d.folder,
                                   detail={"command": d.command, "missing": d.missing, "rules": d.rules}))
            _count(_DENIALS, ("imap", d.command, d.code.lower()))
        return out

    def _note_relayed(self, cmd: Command) -> None:
        """Tell the audit trail about a command on its way to the provider."""
        if self._trail is not None and cmd.spec is not None:
            self._trail.command(cmd, tuple(astring_octets(cmd.args[i]) if i < len(cmd.args) else None
                                           for i in cmd.spec.mailbox_args))

    def _happened(self, records: list[Happened]) -> list:
        """Audit rows for what happened; rows about a message whose identity is not known yet
        wait for the gateway's lookups (:mod:`gateway.imap_proxy.identity_lookups`)."""
        ready = self._ids.settle(records) if self._ids is not None else records
        return [self._row(h) for h in ready]

    def _row(self, h: Happened) -> act.Audit:
        return self._audit(h.action, Decision.ALLOW, folder=h.folder, detail=h.detail, message=h.message)

    def _identity_commands(self) -> list:
        """At a quiet moment (nothing of the client's in flight): the gateway's identity commands."""
        if (self._ids is None or self._held is not None or self._idling
                or self.inflight.oldest_relayed() is not None or self.state is not SessionState.AUTHENTICATED):
            return []
        if self._stopping:
            self._ids.prime_wanted = False  # stopping: only rows waiting for an identity are looked up
        lines, rows = self._ids.commands()
        return [self._row(h) for h in rows] + self._send_own(lines)

    def _send_own(self, lines: list[bytes]) -> list:
        """The gateway's own commands (``PECGW.`` tags), through the pacer like any other."""
        out: list = []
        assert self._pacer is not None or not lines
        for line in lines:
            tag = line.split(b" ", 1)[0].decode("ascii")
            out += [act.SendToUpstream(chunk) for chunk in self._pacer.submit(tag, Frame((line,)))]
        return out

    def _refuse_before_upload(self, event: LiteralAnnounced) -> list | None:
        """An APPEND the policy refuses is answered before the client sends its message."""
        if self._guard is None or self.state is not SessionState.AUTHENTICATED or event.index != 0:
            return None
        try:
            cmd = parse_command(Frame((event.line_so_far[:event.marker.start] + b"\r\n",)))
        except CommandSyntaxError:
            return None  # judged when the message is complete
        if cmd.tag.startswith(GATEWAY_TAG_PREFIX):
            return None
        verdict = self._guard.check_announced(cmd)
        if verdict.reply is None:
            return None
        self.client_framer.drop_message()
        return self._apply_verdict(verdict) + self._reply(None, verdict.reply, cmd.tag, counted_as=cmd)

    def _enable_frame(self, cmd: Command) -> Frame | None:
        """ENABLE only what the client was offered (RFC 5161: unknown capabilities are ignored).

        The provider may support UTF8=ACCEPT or IMAP4rev2, but they change mailbox-name and
        response syntax under the gateway's feet; the client never saw them, so they are dropped.
        Returns the frame to relay (the original bytes when nothing was dropped), or None when
        nothing is left to enable.
        """
        offered = {c.upper() for c in self._upstream_caps}
        wanted = [str(a) for a in cmd.args if isinstance(a, Atom)]
        kept = [a for a in wanted if a.upper() in offered]
        if len(kept) == len(cmd.args):
            return cmd.frame
        if not kept:
            return None
        return Frame((b"%s ENABLE %s\r\n" % (cmd.tag.encode(), " ".join(kept).encode()),))

    def _on_idle_line(self, frame: Frame) -> list:
        """RFC 2177: while idling the client sends only ``DONE``; forward it as it came.

        Commands pipelined after DONE are ordinary commands again, even before the provider's
        tagged reply to IDLE arrives.
        """
        if frame.literals or frame.lines[0].upper() != b"DONE\r\n":
            return self._bye(b"Expected DONE to end IDLE", reason="client_idle_protocol")
        self._idling = False
        assert self._pacer is not None and self._idle_entry is not None
        return [act.SendToUpstream(c) for c in self._pacer.done(self._idle_entry.tag)]

    def _reply(self, cmd: Command | None, reply: bytes, tag: str | None = None, *,
               counted_as: Command | None = None) -> list:
        """Answer a command from the gateway, in order with replies still due from the provider."""
        tag = cmd.tag if cmd else tag
        if self.state is SessionState.AUTHENTICATED:
            count_imap_command(_command_label(cmd or counted_as), _result_of(reply, tag or "*"))
        now = self.inflight.add_local(tag, reply, cmd)
        return [act.SendToClient(now)] if now else []

    # ======================================================================= provider side
    def _on_upstream_frame(self, frame: Frame) -> list:
        head = classify(frame)
        if head.kind is Kind.CONTINUATION:
            kind, chunks = self._pacer.continuation() if self._pacer is not None else (None, [])
            if kind is None:
                return self._upstream_broken("a continuation request nobody was waiting for")
            out = [act.SendToUpstream(c) for c in chunks]
            if kind == "idle":  # "+ idling", for the client; a DONE it sent may go now
                return [act.SendToClient(frame.raw)] + out + self._pump_client()
            return out + self._pump_client()
        if head.kind is Kind.UNTAGGED:
            if (self._held is not None and self._held.listing and head.name == self._held.question.answer
                    and self._held.question.collect(frame)):
                return []  # nothing else is in flight: this answers the gateway's question
            if self._ids is not None and self._ids.untagged(head, frame):
                # a reply to the gateway's own identity command; a flag change folded into it
                # is the client's
                forward, self._ids.for_client = self._ids.for_client, []
                return [act.SendToClient(b"".join(forward))] if forward else []
            audit = self._happened(self._trail.untagged(head, frame)) if self._trail is not None else []
            if head.name == "EXPUNGE" and head.number is not None and self._ids is not None:
                self._ids.expunged(head.number)
            view = self._trail.view if self._trail is not None else None
            if view is not None and view.forgot and self._ids is not None:
                view.forgot = False
                self._ids.prime_wanted = True  # map the folder again at the next quiet moment
            if head.name in ("EXPUNGE", "VANISHED") and self._closing():
                return audit  # the gateway's questions and expunge for a CLOSE: the closing client expects none
            if self._guard is not None and (head.name != "FETCH" or self._guard.renaming):
                kept = self._guard.filter_untagged(head.name, frame)
                if kept is None:
                    return audit
                frame = kept
            if head.name == "CAPABILITY":
                caps = frame.first_line.decode("latin-1").split()[2:]
                return [act.SendToClient(b"* CAPABILITY %s\r\n" % " ".join(_client_caps(caps)).encode())]
            if head.name in ("OK", "NO", "BAD", "BYE", "PREAUTH"):
                self._provider_said_bye |= head.name == "BYE"
                return [act.SendToClient(self._rewrite_capability_code(frame))] + audit
            return [act.SendToClient(frame.raw)] + audit
        return self._on_tagged(head.tag or "", frame)

    def _on_tagged(self, tag: str, frame: Frame) -> list:
        out: list = []
        if tag.startswith(GATEWAY_TAG_PREFIX):
            if self._held is not None and self._held.listing and tag == self._held.question.tag:
                follow_up = self._held.question.answered(frame)
                return self._send_own([follow_up]) if follow_up else self._decide_held()
            if tag.startswith(f"{GATEWAY_TAG_PREFIX}e") and parse_status(frame).status != "OK":
                # the gateway's expunge for a CLOSE was refused: say so, as a provider's CLOSE would
                text = parse_status(frame).text[:200].encode("utf-8", "replace")
                return [act.SendToClient(b"* NO The messages marked for deletion were not expunged: %s\r\n" % text)]
            if self._ids is not None and tag in self._ids.outstanding:
                lines, rows = self._ids.tagged(tag, frame)
                out = [self._row(h) for h in rows] + self._send_own(lines)
                return out + self._pump_client()  # which sends the next question if one is due
            return out  # the gateway's own commands: consumed here
        if self._pacer is not None:
            out += [act.SendToUpstream(c) for c in self._pacer.completed(tag)]
        if self._trail is not None:
            out += self._happened(self._trail.tagged(tag, frame))
        if self._guard is not None:
            frame, own = self._guard.tagged_reply(tag, frame)
            out += self._send_own(own)
        data = self._rewrite_capability_code(frame)
        entry, released = self.inflight.complete(tag)
        if entry is None:  # a reply to nothing in flight: the provider is out of step with us
            return out + self._upstream_broken(f"a tagged reply to no command in flight ({tag[:40]!r})")
        count_imap_command(_command_label(entry.command), _result_of(frame.lines[0], tag))
        out.append(act.SendToClient(data + released if released else data))
        if entry is self._idle_entry:
            self._idle_entry, self._idling = None, False  # e.g. the provider refused IDLE
        if entry is self._logout_entry:  # nothing more goes to the provider after LOGOUT
            return out + self._finish("logout", send_bye=False)
        if self._draining is not None and not self._audited_running():
            return out + self._finish(self._draining)
        if self._held is not None:
            out += self._list_for_held()
        return out + self._pump_client()

    def _list_for_held(self) -> list:
        """Send the held RENAME's LIST once every earlier command is done.

        Not before: Dovecot runs a LIST alongside a slow earlier command (a SEARCH), and its
        ``* LIST`` lines would then be mixed with that command's — or taken for the client's.
        """
        held = self._held
        assert held is not None
        if held.listing or self.inflight.oldest_relayed() is not held.entry:
            return []
        held.listing = True
        return self._send_own([*getattr(held.question, "prelude", []), held.question.line])

    def _decide_held(self) -> list:
        """The gateway's question for a held command is answered: relay the command (an expunge
        as planned with the UIDs found), or answer it (a RENAME the subfolders forbid)."""
        assert self._held is not None and self._guard is not None and self._pacer is not None
        held = self._held
        cmd, entry, frame = held.command, held.entry, held.frame
        self._held = None
        if held.expunge:
            return self._relay_expunge(cmd, held.question.deleted(), entry) + self._pump_client()
        verdict = self._guard.rename_listed(cmd, held.question.ok)
        if verdict.reply is None:
            self._note_relayed(cmd)
            out = [act.SendToUpstream(c) for c in self._pacer.submit(cmd.tag, frame)]
        else:
            released = self.inflight.answer(entry, verdict.reply)
            count_imap_command(_command_label(cmd), _result_of(verdict.reply, cmd.tag))
            out = self._apply_verdict(verdict) + ([act.SendToClient(released)] if released else [])
        return out + self._pump_client()

    def _rewrite_capability_code(self, frame: Frame) -> bytes:
        """A status response with the provider's list filtered in a ``[CAPABILITY …]`` code."""
        if b"[CAPABILITY " not in frame.lines[0].upper():
            return frame.raw
        status = parse_status(frame)
        if status.code != "CAPABILITY":
            return frame.raw
        caps = " ".join(_client_caps(status.code_data.split()))
        tag = status.tag or "*"
        return f"{tag} {status.status} [CAPABILITY {caps}] {status.text}\r\n".encode("utf-8")

    def _upstream_lost(self) -> list:
        if self.state is SessionState.LOGOUT:
            return []
        if self._logout_entry is not None or self._provider_said_bye:
            return self._finish("logout" if self._logout_entry else "provider_bye", send_bye=False)
        return self._bye(b"[UNAVAILABLE] Connection to the PEC provider was lost", reason="upstream_closed")

    def _upstream_broken(self, why: str) -> list:
        return self._bye(b"[UNAVAILABLE] The PEC provider sent something the gateway cannot relay",
                         reason="upstream_protocol", log=why)

    # ======================================================================= helpers
    def _preauth_caps(self) -> list[str]:
        return preauth_capabilities(tls_active=self.tls_active, starttls_available=self.starttls_available,
                                    plaintext_allowed=self.plaintext_login)

    def _record_client_id(self, cmd: Command) -> None:
        """Remember the client's name and version from ID (RFC 2971), sanitised for the audit trail."""
        if not cmd.args or not isinstance(cmd.args[0], list):
            return
        fields = cmd.args[0]
        values = {}
        for key, value in zip(fields[::2], fields[1::2]):
            if isinstance(key, (String, Atom)) and isinstance(value, String):
                k = (bytes(key) if isinstance(key, String) else key.encode()).decode("utf-8", "replace").lower()
                values[k] = bytes(value).decode("utf-8", "replace")
        name = " ".join(v for v in (values.get("name"), values.get("version")) if v)
        if name:
            self.client_name = "".join(ch for ch in name if ch.isprintable())[:100]

    def _set_state(self, state: SessionState) -> None:
        if state is SessionState.AUTHENTICATED:
            assert self.state is SessionState.AUTHENTICATING, "login result without a login"
        self.state = state

    def _audit(self, action: str, decision: str, *, reason: str | None = None, person: str | None = None,
               mailbox: str | None = None, folder: str | None = None, detail: dict | None = None,
               message: MessageRef | None = None) -> act.Audit:
        return act.Audit(AuditEvent(
            when=self._now(), session_id=self.session_id, protocol="imap", action=action, decision=decision,
            person=person or self.person, offices=self.offices, mailbox=mailbox or self.mailbox, folder=folder,
            client_ip=self.client_ip, client_name=self.client_name, reason=reason, detail=detail or {},
            message=message))

    def _bye(self, text: bytes, *, reason: str = "", log: str | None = None) -> list:
        out: list = [act.SendToClient(b"* BYE %s\r\n" % text)]
        if log:
            out.append(act.Log(log))
        return out + self._finish(reason or "bye", send_bye=False)

    def _finish(self, reason: str, *, send_bye: bool = False) -> list:
        """Enter LOGOUT: audit the logout of an authenticated person and close both sides."""
        out: list = []
        was_authenticated = self.state is SessionState.AUTHENTICATED
        self.state = SessionState.LOGOUT
        if was_authenticated:
            out += [self._row(h) for h in self._ids.flush()] if self._ids is not None else []
            out.append(self._audit(Action.LOGOUT, Decision.ALLOW, reason=reason, detail={
                "duration_s": round(self._clock() - self._started, 3),
                "bytes_in": self.bytes_from_client, "bytes_out": self.bytes_to_client}))
            for entry in self.inflight:  # sent to the provider, never answered: counted as such
                if entry.local_reply is None and entry.command is not None:
                    count_imap_command(_command_label(entry.command), "none")
        out.append(act.Close(reason))
        return out

    def _count_out(self, actions: list) -> list:
        if self._draining is not None:  # the client is gone: what was meant for it goes nowhere
            return [a for a in actions if not isinstance(a, act.SendToClient)]
        sent = 0
        for a in actions:
            if isinstance(a, act.SendToClient):
                sent += len(a.data)
        if sent:
            self.bytes_to_client += sent
            _BYTES[_TO_CLIENT] = _BYTES.get(_TO_CLIENT, 0) + sent
        return actions


# -- metrics: plain counters (gateway/tally.py; gateway/metrics.py exports them), the session stays pure
_COMMANDS = TALLY.counter("pecgw_imap_commands_total")  # (command, result)
_DENIALS = TALLY.counter("pecgw_denials_total")  # (protocol, command, rule)
_BYTES = TALLY.counter("pecgw_relayed_bytes_total")  # (protocol, direction)
_FROM_CLIENT, _TO_CLIENT = ("imap", "from_client"), ("imap", "to_client")
_RESULTS = {b"OK": "OK", b"NO": "NO", b"BAD": "BAD"}


def _count(counter: dict, key: tuple) -> None:
    counter[key] = counter.get(key, 0) + 1


def count_imap_command(command: str, result: str) -> None:
    """One IMAP command answered; ``command`` comes from :func:`_command_label`."""
    key = (command, result)
    _COMMANDS[key] = _COMMANDS.get(key, 0) + 1


def _command_label(cmd: Command | None) -> str:
    """A command's metric label: only names from the command table (a client cannot add series)."""
    if cmd is None:
        return "unparsed"
    return cmd.display_name if cmd.spec is not None else "other"


def _result_of(reply: bytes, tag: str) -> str:
    """OK, NO or BAD from the tagged status line that ends ``reply`` ("other" if none)."""
    end = len(reply) - 2 if reply.endswith(b"\r\n") else len(reply)
    start = reply.rfind(b"\n", 0, end) + 1 + len(tag) + 1
    return _RESULTS.get(reply[start:min(start + 4, end)].split(b" ", 1)[0].upper(), "other")


@dataclass
class _Held:
    """A command held until the gateway's own question is answered: a RENAME waits for the LIST
    of its subfolders (:class:`_SubfolderQuestion`), an expunge for what is marked \\Deleted
    (:class:`~gateway.imap_proxy.expunge_plan.DeletedQuestion`)."""

    command: Command
    entry: InFlightEntry  # its place in the reply order
    frame: Frame  # what to relay if allowed
    question: object  # .tag, .line, .answer (the untagged reply name), .collect(), .answered()
    expunge: bool = False  # an EXPUNGE or expunging CLOSE (else a RENAME)
    listing: bool = False  # the question has been sent (every earlier command was done)


class _SubfolderQuestion:
    """A held RENAME's question: the gateway's ``LIST "" old/*`` (the guard judges the answer)."""

    answer = "LIST"

    def __init__(self, line: bytes, guard: FolderGuard) -> None:
        self.line, self.tag, self._guard = line, line.split(b" ", 1)[0].decode("ascii"), guard
        self.ok = False

    def collect(self, frame: Frame) -> bool:
        self._guard.collect(frame)
        return True

    def answered(self, frame: Frame) -> bytes | None:
        self.ok = parse_status(frame).status == "OK"
        return None


def _client_caps(upstream: list[str]) -> list[str]:
    """What the client is told after login: the provider's list filtered, plus the gateway's own."""
    return filter_capabilities(upstream) + GATEWAY_CAPABILITIES
