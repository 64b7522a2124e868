"""Sandbox PEC provider for ``pecgw demo``: a small but real IMAP4rev1 server over in-memory
mailboxes, reached with implicit TLS (like imaps on 993), so the demo needs no root, no Dovecot
and no system packages.

Why twisted here: ``twisted.mail.imap4.IMAP4Server`` is a complete IMAP server we do not have to
write -- command parsing, the state machine, literals, FETCH streaming, IDLE -- and a demo
provider needs nothing more.  It only ever serves the demo, never the relay: DESIGN.md point 10
keeps it out of the relay (no LITERAL+, one command at a time, cannot round-trip what it parses).

Threads: the gateway runs asyncio in the main thread; twisted gets its own reactor in one daemon
thread, started on first use and kept for the life of the process (a reactor cannot be
restarted).  Each :class:`SandboxProvider` adds and removes its own listener on it; every call
into twisted goes through ``blockingCallFromThread`` and the mailboxes
(:mod:`gateway.demo.sandbox_store`) are only touched on the reactor thread.

Beyond twisted's server, :class:`SandboxIMAPServer` adds what ordinary clients expect of a
provider: UIDNEXT/PERMANENTFLAGS/UNSEEN on SELECT, ``[CAPABILITY]`` in the LOGIN reply,
AUTHENTICATE with SASL-IR, UIDPLUS (APPENDUID, COPYUID, UID EXPUNGE), MOVE, UNSELECT, ID,
CHILDREN, the implicit ``\\Seen`` of body fetches, exact bytes for every BODY[section] and
partial fetch, and EXPUNGE announced to other sessions only when RFC 3501 allows it.  It also
fixes twisted bugs on the way (quoted strings with escapes, APPEND without flags, STATUS of a
name with spaces, TRYCREATE answered as a server error); each override says what it changes.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, protocol
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.mail import imap4
from zope.interface import implementer

from gateway.demo.sandbox_store import (Account, bodystructure, envelope, nstring,
                                        parse_internaldate, uid_set)

__all__ = ["SandboxAccount", "SandboxProvider", "SandboxIMAPServer"]

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024  # longest command line; twisted's 16 KiB is short for long UID sets
MAX_APPEND = 64 * 1024 * 1024  # largest APPEND literal
REACTOR_START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0  # seconds stop() waits for the port and the sessions to close


@dataclass
class SandboxAccount:
    """One sandbox mailbox: its password and its folders ("INBOX" required, "/" separated,
    human names) holding RFC 5322 messages as CRLF bytes."""

    password: str = field(repr=False)
    folders: dict[str, list[bytes]]


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def _mailbox_name(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("imap4-utf-7")
    except (UnicodeError, ValueError):
        raise imap4.IllegalMailboxEncoding("not modified UTF-7") from None


def _is_section(part) -> bool:
    """BODY[...] (a section, which sets \\Seen unless PEEK) as opposed to bare BODY."""
    return bool(part.empty) or any(x is not None for x in (part.header, part.text, part.mime))


def _section_name(part) -> bytes:
    numbers = b".".join(b"%d" % (index + 1) for index in part.part or ())
    if part.header is not None and part.header.fields:
        spec = b"HEADER.FIELDS" + (b".NOT" if part.header.negate else b"") + \
            b" (" + b" ".join(part.header.fields) + b")"
    elif part.header is not None:
        spec = b"HEADER"
    else:
        spec = b"TEXT" if part.text is not None else b"MIME" if part.mime is not None else b""
    return b"BODY[" + numbers + (b"." if numbers and spec else b"") + spec + b"]"


def _section_bytes(top, part) -> bytes:
    """The exact bytes of a BODY[section] (RFC 3501, 6.4.5)."""
    node = top.resolve(part.part) if part.part else top
    if part.mime is not None:
        return node.header
    target = node.encapsulated if part.part and node.encapsulated is not None else node
    if part.header is not None and part.header.fields:
        names = [name.decode("ascii", "replace") for name in part.header.fields]
        return target.header_fields(names, part.header.negate)
    if part.header is not None:
        return target.header
    if part.text is not None:
        return target.body
    return node.body if part.part else top.raw


class _FlagsItem:
    """A FLAGS fetch item added when a body fetch sets \\Seen: "if this causes the flags to
    change, they SHOULD be included as part of the FETCH responses" (RFC 3501, 6.4.5)."""

    type = "flags"


class SandboxIMAPServer(imap4.IMAP4Server):
    """twisted's IMAP4rev1 server with the provider behaviour ordinary clients expect."""

    IDENT = b"PEC sandbox IMAP4rev1 ready (demo only)"
    MAX_LENGTH = MAX_LINE
    factory = None

    def connectionMade(self):
        super().connectionMade()
        if self.factory is not None:
            self.factory.connections.add(self)

    def connectionLost(self, reason):
        # twisted leaves the listener registered on the mailbox when a client just hangs up
        if self.mbox is not None:
            self._deselect()
        super().connectionLost(reason)
        if self.factory is not None:
            self.factory.dropped(self)

    def _deselect(self) -> None:
        try:
            self.mbox.removeListener(self)
        except ValueError:
            pass
        self.mbox.close()
        self.mbox, self.state = None, "auth"

    def capabilities(self):
        caps = {}
        if self.state == "unauth":
            caps[b"AUTH"] = list(self.challengers)
            caps[b"SASL-IR"] = None
        for name in (b"NAMESPACE", b"IDLE", b"UIDPLUS", b"UNSELECT", b"MOVE", b"CHILDREN", b"ID"):
            caps[name] = None
        return caps

    def parse_command(self, line):
        """twisted answers an unexpected error with an untagged ``* BAD`` and no tagged reply, so
        the client waits forever; answer the tag.  The line is not logged: it may hold a password."""
        try:
            return imap4.IMAP4Server.parse_command(self, line)
        except Exception:  # noqa: BLE001 - last resort for one command
            log.exception("sandbox IMAP command failed")
            self.sendBadResponse(line.split(None, 1)[0] if line.strip() else None, b"Server error")

    # -- arguments -------------------------------------------------------------------------------

    def arg_astring(self, line, final=False):
        """twisted splits quoted strings at the next ``"`` and keeps backslashes; RFC 3501 quoted
        strings escape ``"`` and ``\\`` (imaplib quotes every LOGIN password this way)."""
        line = (line or b"").lstrip(b" ")
        if not line:  # twisted's own parser fails on a missing argument with AttributeError
            raise imap4.IllegalClientResponse("Missing argument")
        if line[:1] != b'"':
            return imap4.IMAP4Server.arg_astring(self, line, final)
        out, i = bytearray(), 1
        while i < len(line):
            char = line[i:i + 1]
            if char == b"\\" and i + 1 < len(line):
                out += line[i + 1:i + 2]
                i += 2
            elif char == b'"':
                rest = line[i + 1:]
                return bytes(out), rest[1:] if rest[:1] == b" " else rest
            else:
                out += char
                i += 1
        raise imap4.IllegalClientResponse("Unmatched quotes")

    def arg_mailbox(self, line, final=False):
        """A mailbox name, decoded from modified UTF-7 here: twisted decodes later and logs a
        traceback for every badly encoded name a client sends."""
        parsed = self.arg_astring(line, final)
        if isinstance(parsed, defer.Deferred):
            return parsed.addCallback(lambda result: (_mailbox_name(result[0]), result[1]))
        return _mailbox_name(parsed[0]), parsed[1]

    def arg_final_mailbox(self, line):
        return self.arg_mailbox(line, final=True)

    def arg_fetchatt(self, line):
        """twisted's fetch parser raises bare ``Exception`` (answered and logged as a server error)."""
        try:
            return imap4.IMAP4Server.arg_fetchatt(self, line)
        except Exception as e:  # noqa: BLE001 - that is what twisted raises
            raise imap4.IllegalClientResponse(f"Invalid fetch attributes: {e}") from None

    def arg_literal(self, line):
        match = re.fullmatch(rb"\{(\d+)\}", (line or b"").strip())
        if match and int(match.group(1)) > MAX_APPEND:
            raise imap4.IllegalClientResponse("[TOOBIG] message too large")
        return imap4.IMAP4Server.arg_literal(self, line)

    def arg_searchkeys(self, line, _before=b""):
        """twisted parses the search keys of one line and never asks for a literal's bytes, so a
        client sending ``SUBJECT {6}`` (Thunderbird does, for non-ASCII text) waits forever.
        Read each literal, then let twisted's parser take ``{N}\\r\\n<bytes>`` inline."""
        match = re.search(rb"\{(\d+)\}$", line or b"")
        if match is None:
            try:
                return imap4.parseNestedParens(_before + (line or b"")), b""
            except (imap4.MismatchedNesting, imap4.MismatchedQuoting, ValueError):
                raise imap4.IllegalClientResponse("Malformed search keys") from None
        head = _before + line[:match.end()] + b"\r\n"
        return self._stringLiteral(int(match.group(1))).addCallback(
            lambda result: self.arg_searchkeys(result[1], head + result[0]))

    # -- authentication ---------------------------------------------------------------------------

    def do_LOGIN(self, tag, user, passwd):
        defer.maybeDeferred(self.authenticateLogin, user, passwd).addCallbacks(
            self._loggedIn, self._loginFailed, callbackArgs=(tag,), errbackArgs=(tag,))

    def do_AUTHENTICATE(self, tag, line):
        """AUTHENTICATE, with the initial response of SASL-IR (RFC 4959) that twisted refuses."""
        mechanism, _, initial = (line or b"").strip().partition(b" ")
        factory = self.challengers.get(mechanism.upper())
        if factory is None:
            self.sendNegativeResponse(tag, b"Unsupported authentication mechanism")
        elif initial:
            self._saslStep(initial, factory(), tag)
        else:
            self._saslChallenge(factory(), tag)

    def _saslChallenge(self, chal, tag) -> None:
        self.sendLine(b"+ " + base64.b64encode(chal.getChallenge()))
        self.parseState = "pending"
        self._pendingLiteral = defer.Deferred()
        self._pendingLiteral.addCallback(self._saslStep, chal, tag)

    def _saslStep(self, line, chal, tag) -> None:
        line = line.strip()
        if line == b"*":
            self.sendBadResponse(tag, b"AUTHENTICATE cancelled")
            return
        try:
            chal.setResponse(b"" if line == b"=" else base64.b64decode(line, validate=True))
        except (binascii.Error, imap4.IllegalClientResponse):
            self.sendBadResponse(tag, b"Malformed SASL response")
            return
        if chal.moreChallenges():
            self._saslChallenge(chal, tag)
            return
        self.portal.login(chal, None, imap4.IAccount).addCallbacks(
            self._loggedIn, self._loginFailed, callbackArgs=(tag,), errbackArgs=(tag,))

    def _loggedIn(self, result, tag) -> None:
        _iface, avatar, logout = result
        self.account, self._onLogout, self.state = avatar, logout, "auth"
        self.setTimeout(self.POSTAUTH_TIMEOUT)
        caps = b" ".join(self.listCapabilities())
        self.sendPositiveResponse(tag, b"[CAPABILITY " + caps + b"] Logged in")

    def _loginFailed(self, failure, tag) -> None:
        if failure.check(UnauthorizedLogin, UnhandledCredentials):
            self.sendNegativeResponse(tag, b"[AUTHENTICATIONFAILED] Authentication failed.")
        else:  # the type only: a failure's text could quote what the client sent
            log.error("sandbox login failed unexpectedly: %s", failure.type.__name__)
            self.sendBadResponse(tag, b"Server error")

    # -- mailboxes --------------------------------------------------------------------------------

    def _cbSelectWork(self, mbox, cmdName, tag):
        """SELECT/EXAMINE with the UIDNEXT, PERMANENTFLAGS and UNSEEN codes twisted omits."""
        if mbox is None:
            self.sendNegativeResponse(tag, b"[NONEXISTENT] No such mailbox")
            return
        flags = b" ".join(flag.encode("utf-8") for flag in mbox.getFlags())
        self.sendUntaggedResponse(b"FLAGS (" + flags + b")")
        self.sendUntaggedResponse(b"%d EXISTS" % mbox.getMessageCount())
        self.sendUntaggedResponse(b"%d RECENT" % mbox.getRecentCount())
        unseen = next((seq for seq, m in enumerate(mbox.messages, 1) if not m.has_flag("\\Seen")), 0)
        if unseen:
            self.sendPositiveResponse(None, b"[UNSEEN %d] First unseen" % unseen)
        permanent = flags + b" \\*" if mbox.isWriteable() else b""
        self.sendPositiveResponse(None, b"[PERMANENTFLAGS (" + permanent + b")] Flags permitted")
        self.sendPositiveResponse(None, b"[UIDVALIDITY %d] UIDs valid" % mbox.getUIDValidity())
        self.sendPositiveResponse(None, b"[UIDNEXT %d] Predicted next UID" % mbox.getUIDNext())
        mbox.addListener(self)
        self.mbox, self.state = mbox, "select"
        mode = b"[READ-WRITE] " if mbox.isWriteable() else b"[READ-ONLY] "
        self.sendPositiveResponse(tag, mode + cmdName + b" completed")

    def do_UNSELECT(self, tag):
        self._deselect()
        self.sendPositiveResponse(tag, b"UNSELECT completed")

    def do_STATUS(self, tag, mailbox, names):
        """twisted writes the mailbox name unquoted (wrong for names with spaces)."""
        mbox = self.account.select(mailbox, 0)
        if mbox is None:
            self.sendNegativeResponse(tag, b"[NONEXISTENT] No such mailbox")
            return
        try:
            status = mbox.requestStatus([item.decode("ascii") for item in names])
        except (KeyError, AttributeError, UnicodeDecodeError):
            self.sendBadResponse(tag, b"Unknown STATUS item")
            return
        items = b" ".join(b"%s %d" % (key.encode("ascii"), value) for key, value in status.items())
        self.sendUntaggedResponse(
            b"STATUS " + nstring(mailbox.encode("imap4-utf-7")) + b" (" + items + b")")
        self.sendPositiveResponse(tag, b"STATUS completed")

    def _cbAppendGotMailbox(self, mbox, tag, flags, date, message):
        """APPEND: twisted fails on a missing flag list, answers TRYCREATE as a server error and
        announces EXISTS of the target instead of the selected mailbox; adds APPENDUID."""
        if mbox is None:
            self.sendNegativeResponse(tag, b"[TRYCREATE] No such mailbox")
            return
        try:
            when = parse_internaldate(date)
        except (ValueError, UnicodeDecodeError):
            self.sendBadResponse(tag, b"Invalid date-time")
            return
        names = [f.decode("utf-8", "replace") for f in flags or () if isinstance(f, bytes)]
        mbox.addMessage(message, names, when).addCallback(
            lambda uid: self.sendPositiveResponse(
                tag, b"[APPENDUID %d %d] APPEND completed" % (mbox.getUIDValidity(), uid)))

    def _cbCopySelectedMailbox(self, mbox, tag, messages, mailbox, uid):
        """COPY with exact bytes, flags and date kept, COPYUID (RFC 4315) and a real TRYCREATE."""
        if mbox is None:
            self.sendNegativeResponse(tag, b"[TRYCREATE] No such mailbox")
            return
        pairs = self.mbox.fetch(messages, uid)
        if not pairs:
            self.sendPositiveResponse(tag, b"COPY completed (no messages)")
            return
        copied = [mbox.copy(message) for _, message in pairs]
        self.sendPositiveResponse(tag, b"[COPYUID %d %s %s] COPY completed" % (
            mbox.getUIDValidity(), uid_set(m.uid for _, m in pairs), uid_set(copied)))

    def do_MOVE(self, tag, messages, mailbox, uid=0):
        """MOVE (RFC 6851): COPYUID in an untagged OK, then EXPUNGE for the moved messages."""
        target = self.account.select(mailbox)
        if target is None:
            self.sendNegativeResponse(tag, b"[TRYCREATE] No such mailbox")
            return
        if not self.mbox.isWriteable():
            self.sendNegativeResponse(tag, b"[READ-ONLY] Mailbox is read-only")
            return
        pairs = self.mbox.fetch(messages, uid)
        if pairs:
            copied = [target.copy(message) for _, message in pairs]
            self.sendPositiveResponse(None, b"[COPYUID %d %s %s] Moved" % (
                target.getUIDValidity(), uid_set(m.uid for _, m in pairs), uid_set(copied)))
            for seq in self.mbox.remove([message for _, message in pairs]):
                self.sendUntaggedResponse(b"%d EXPUNGE" % seq)
        self.sendPositiveResponse(tag, b"MOVE completed")

    # -- messages ---------------------------------------------------------------------------------

    def do_STORE(self, tag, messages, mode, flags, uid=0):
        """twisted treats any unknown mode as FLAGS and a read-only mailbox as a server error."""
        if not re.fullmatch(rb"[+-]?FLAGS(\.SILENT)?", mode.upper()):
            self.sendBadResponse(tag, b"Invalid STORE data item")
        elif not self.mbox.isWriteable():
            self.sendNegativeResponse(tag, b"[READ-ONLY] Mailbox is read-only")
        else:
            imap4.IMAP4Server.do_STORE(self, tag, messages, mode, flags, uid)

    def do_SEARCH(self, tag, charset, query, uid=0):
        """SEARCH answered in one go (twisted's fallback walks the mailbox across reactor turns
        and writes ``* SEARCH `` with a trailing space when nothing matches)."""
        if charset is not None and charset.upper() not in (b"US-ASCII", b"UTF-8"):
            self.sendNegativeResponse(tag, b"[BADCHARSET (US-ASCII UTF-8)] Unsupported charset")
            return
        try:
            found = self.mbox.search(query, uid=uid)
        except imap4.IllegalQueryError as e:
            self.sendBadResponse(tag, b"Invalid search: " + str(e).encode("ascii", "replace"))
            return
        ids = [self.mbox.getUID(seq) if uid else seq for seq in found]
        self.sendUntaggedResponse(b" ".join([b"SEARCH"] + [b"%d" % i for i in ids]))
        self.sendPositiveResponse(tag, b"SEARCH completed")

    def do_UID(self, tag, command, line):
        """Adds UID EXPUNGE (RFC 4315) and UID MOVE to twisted's COPY/FETCH/STORE/SEARCH."""
        command = command.upper()
        if command == b"EXPUNGE":
            uids, rest = self.arg_seqset(line or b"")
            if rest:
                raise imap4.IllegalClientResponse("Too many arguments")
            if not self.mbox.isWriteable():
                self.sendNegativeResponse(tag, b"[READ-ONLY] Mailbox is read-only")
                return
            for seq in self.mbox.expunge_uids(uids):
                self.sendUntaggedResponse(b"%d EXPUNGE" % seq)
            self.sendPositiveResponse(tag, b"UID EXPUNGE completed")
        elif command == b"MOVE":
            self.dispatchCommand(tag, command, line, uid=1)
        else:
            imap4.IMAP4Server.do_UID(self, tag, command, line)

    def spewMessage(self, id, msg, query, uid):
        reads = any((p.type == "body" and not p.peek and _is_section(p))
                    or p.type in ("rfc822", "rfc822text") for p in query)
        if reads and self.mbox.mark_seen(msg) and not any(p.type == "flags" for p in query):
            query = list(query) + [_FlagsItem()]
        return imap4.IMAP4Server.spewMessage(self, id, msg, query, uid)

    def spew_body(self, part, id, msg, _w=None, _f=None):
        """BODY[section]<partial> from the stored bytes; twisted rebuilds headers from a dict and
        ignores the partial range."""
        if not _is_section(part):
            _w(b"BODY " + bodystructure(msg.mime, False))
            return
        try:
            data = _section_bytes(msg.mime, part)
        except (IndexError, TypeError):
            data = b""  # a part that does not exist reads as empty, as Dovecot answers
        name = _section_name(part)
        if part.partialBegin is not None:
            data = data[part.partialBegin:part.partialBegin + part.partialLength]
            name += b"<%d>" % part.partialBegin
        _w(name + b" " + _literal(data))

    def spew_rfc822(self, id, msg, _w=None, _f=None):
        _w(b"RFC822 " + _literal(msg.raw))

    def spew_rfc822header(self, id, msg, _w=None, _f=None):
        _w(b"RFC822.HEADER " + _literal(msg.mime.header))

    def spew_rfc822text(self, id, msg, _w=None, _f=None):
        _w(b"RFC822.TEXT " + _literal(msg.mime.body))

    def spew_envelope(self, id, msg, _w=None, _f=None):
        _w(b"ENVELOPE " + envelope(msg.mime))

    def spew_bodystructure(self, id, msg, _w=None, _f=None):
        _w(b"BODYSTRUCTURE " + bodystructure(msg.mime, True))

    # -- session updates: NOOP, CHECK and IDLE announce what other sessions did ------------------

    def _flushExpunges(self) -> None:
        if self.mbox is not None:
            for seq in self.mbox.flush_expunged():
                self.sendUntaggedResponse(b"%d EXPUNGE" % seq)

    def expungesPending(self) -> None:
        """Called by the mailbox view when another session expunged; only IDLE may hear it now."""
        if self.parseState == "idle":
            self._flushExpunges()

    def do_NOOP(self, tag):
        self._flushExpunges()
        self.sendPositiveResponse(tag, b"NOOP completed")

    def do_CHECK(self, tag):
        self._flushExpunges()
        self.sendPositiveResponse(tag, b"CHECK completed")

    def do_IDLE(self, tag):
        self.sendContinuationRequest(b"idling")
        self.parseTag, self.lastState, self.parseState = tag, self.parseState, "idle"
        self._flushExpunges()

    def parse_idle(self, line):
        """twisted ends IDLE on any line; RFC 2177 ends it with DONE."""
        tag, self.parseState = self.parseTag, self.lastState
        del self.parseTag, self.lastState
        if line.strip().upper() == b"DONE":
            self.sendPositiveResponse(tag, b"IDLE terminated")
        else:
            self.sendBadResponse(tag, b"Expected DONE")

    def do_ID(self, tag, line):
        self.sendUntaggedResponse(b'ID ("name" "pecgw-sandbox" "vendor" "PEC gateway demo")')
        self.sendPositiveResponse(tag, b"ID completed")

    # twisted's command tables hold function objects, so each command whose handler or argument
    # parser is overridden above is registered again here; arg_mailbox marks mailbox names.
    _S = imap4.IMAP4Server
    unauth_LOGIN = (do_LOGIN, arg_astring, _S.arg_finalastring)
    unauth_AUTHENTICATE = (do_AUTHENTICATE, _S.arg_line)
    unauth_NOOP = auth_NOOP = select_NOOP = (do_NOOP,)
    unauth_ID = auth_ID = select_ID = (do_ID, _S.arg_line)
    auth_SELECT = select_SELECT = (_S._selectWork, arg_mailbox, 1, b"SELECT")
    auth_EXAMINE = select_EXAMINE = (_S._selectWork, arg_mailbox, 0, b"EXAMINE")
    auth_CREATE = select_CREATE = (_S.do_CREATE, arg_final_mailbox)
    auth_DELETE = select_DELETE = (_S.do_DELETE, arg_final_mailbox)
    auth_RENAME = select_RENAME = (_S.do_RENAME, arg_mailbox, arg_final_mailbox)
    auth_SUBSCRIBE = select_SUBSCRIBE = (_S.do_SUBSCRIBE, arg_final_mailbox)
    auth_UNSUBSCRIBE = select_UNSUBSCRIBE = (_S.do_UNSUBSCRIBE, arg_final_mailbox)
    auth_LIST = select_LIST = (_S._listWork, arg_mailbox, arg_mailbox, 0, b"LIST")
    auth_LSUB = select_LSUB = (_S._listWork, arg_mailbox, arg_mailbox, 1, b"LSUB")
    auth_STATUS = select_STATUS = (do_STATUS, arg_mailbox, _S.arg_plist)
    auth_APPEND = select_APPEND = (_S.do_APPEND, arg_mailbox, _S.opt_plist, _S.opt_datetime,
                                   arg_literal)
    auth_IDLE = select_IDLE = (do_IDLE,)
    select_CHECK = (do_CHECK,)
    select_UNSELECT = (do_UNSELECT,)
    select_FETCH = (_S.do_FETCH, _S.arg_seqset, arg_fetchatt)
    select_STORE = (do_STORE, _S.arg_seqset, _S.arg_atom, _S.arg_flaglist)
    select_SEARCH = (do_SEARCH, _S.opt_charset, arg_searchkeys)
    select_COPY = (_S.do_COPY, _S.arg_seqset, arg_final_mailbox)
    select_MOVE = (do_MOVE, _S.arg_seqset, arg_final_mailbox)
    select_UID = (do_UID, _S.arg_atom, _S.arg_line)
    del _S


@implementer(ICredentialsChecker)
class _PasswordChecker:
    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, passwords: dict[str, bytes]) -> None:
        self._passwords = passwords

    def requestAvatarId(self, credentials):
        user, given = credentials.username, credentials.password
        user = (user.decode("utf-8", "replace") if isinstance(user, bytes) else user).lower()
        given = given if isinstance(given, bytes) else given.encode("utf-8")
        expected = self._passwords.get(user)
        if expected is not None and hmac.compare_digest(given, expected):
            return defer.succeed(user)
        return defer.fail(UnauthorizedLogin())


@implementer(IRealm)
class _Realm:
    def __init__(self, accounts: dict[str, Account]) -> None:
        self._accounts = accounts

    def requestAvatar(self, avatarId, mind, *interfaces):
        if imap4.IAccount not in interfaces:
            raise NotImplementedError("the sandbox serves IMAP accounts only")
        return imap4.IAccount, self._accounts[avatarId], lambda: None


class _SandboxFactory(protocol.ServerFactory):
    noisy = False

    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.connections: set[SandboxIMAPServer] = set()
        self._waiting: list[defer.Deferred] = []

    def dropped(self, server: SandboxIMAPServer) -> None:
        self.connections.discard(server)
        if not self.connections:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def all_closed(self) -> defer.Deferred:
        if not self.connections:
            return defer.succeed(None)
        self._waiting.append(defer.Deferred())
        return self._waiting[-1]

    def buildProtocol(self, addr):
        server = SandboxIMAPServer(chal={b"PLAIN": imap4.PLAINCredentials})
        server.portal, server.factory = self.portal, self
        return server


def _log_twisted_errors(event) -> None:
    """Forward twisted's error events (failures in its callbacks) to Python logging."""
    failure = event.get("log_failure")
    if failure is None and event.get("log_level") not in (LogLevel.error, LogLevel.critical):
        return
    detail = "\n" + failure.getTraceback() if failure is not None else ""
    log.error("twisted: %s%s", formatEvent(event), detail)


class _ReactorThread:
    """The process's one twisted reactor, run in a daemon thread from the first start()."""

    _lock = threading.Lock()
    started = False

    @classmethod
    def get(cls):
        from twisted.internet import reactor

        with cls._lock:
            if cls.started:
                return reactor
            if getattr(reactor, "_startedBefore", False) and not reactor.running:
                raise RuntimeError("the twisted reactor of this process has already stopped")
            if not reactor.running:
                running = threading.Event()
                reactor.callWhenRunning(running.set)
                threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                                 name="pecgw-sandbox-reactor", daemon=True).start()
                if not running.wait(REACTOR_START_TIMEOUT):
                    raise RuntimeError("the twisted reactor did not start")
            globalLogPublisher.addObserver(_log_twisted_errors)
            cls.started = True
            return reactor


def _tls_options(certfile: Path, keyfile: Path):
    """Server TLS settings from a PEM certificate file (leaf first, then any chain) and key.
    ``cryptography`` objects, which pyOpenSSL now prefers to its own X509/PKey."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from twisted.internet import ssl

    certificates = x509.load_pem_x509_certificates(certfile.read_bytes())
    key = load_pem_private_key(keyfile.read_bytes(), password=None)
    return ssl.CertificateOptions(privateKey=key, certificate=certificates[0],
                                  extraCertChain=certificates[1:])


class SandboxProvider:
    """The sandbox provider's IMAP service: implicit TLS on ``host:port`` over in-memory
    mailboxes.  Several instances may start and stop in one process; they share one reactor."""

    def __init__(self, accounts: dict[str, SandboxAccount], certfile: Path, keyfile: Path,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        for user, account in accounts.items():
            if not any(name.upper() == "INBOX" for name in account.folders):
                raise ValueError(f"sandbox account {user!r} has no INBOX folder")
        self._accounts = {user.lower(): Account(a.folders) for user, a in accounts.items()}
        passwords = {user.lower(): a.password.encode("utf-8") for user, a in accounts.items()}
        self._portal = Portal(_Realm(self._accounts), [_PasswordChecker(passwords)])
        self._certfile, self._keyfile = Path(certfile), Path(keyfile)
        self._host, self._requested_port = host, port
        self._listener = self._factory = None
        self._port: int | None = None

    def start(self) -> int:
        """Listen and return the bound port."""
        if self._listener is not None:
            raise RuntimeError("sandbox provider already started")
        options = _tls_options(self._certfile, self._keyfile)
        reactor = _ReactorThread.get()
        factory = _SandboxFactory(self._portal)

        def listen():
            listener = reactor.listenSSL(self._requested_port, factory, options, interface=self._host)
            return listener, listener.getHost().port

        self._listener, self._port = blockingCallFromThread(reactor, listen)
        self._factory = factory
        log.info("sandbox IMAP provider listening on %s:%d (implicit TLS, %d account(s))",
                 self._host, self._port, len(self._accounts))
        return self._port

    def stop(self) -> None:
        """Close the listening socket and every open session, and wait until they are gone;
        safe to call twice."""
        listener, factory = self._listener, self._factory
        if listener is None:
            return
        self._listener = self._factory = None

        reactor = _ReactorThread.get()

        def shutdown():
            stopped = defer.maybeDeferred(listener.stopListening)
            for server in list(factory.connections):
                server.transport.abortConnection()
            done = defer.gatherResults([stopped, factory.all_closed()], consumeErrors=True)
            return done.addTimeout(STOP_TIMEOUT, reactor)

        blockingCallFromThread(reactor, shutdown)
        log.info("sandbox IMAP provider on %s:%d stopped", self._host, self._port)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("sandbox provider not started")
        return self._port

    def snapshot(self, user: str, folder: str) -> list[tuple[int, list[str], bytes]]:
        """(UID, flags, bytes) of each message in a folder, read on the reactor thread."""
        account = self._accounts[user.lower()]

        def read():
            box = account.folders[account.canonical(folder)]
            return [(m.uid, list(m.flags), m.raw) for m in box.messages]

        return blockingCallFromThread(_ReactorThread.get(), read) if _ReactorThread.started else read()

    def __enter__(self) -> SandboxProvider:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
