"""The IMAP protocol of the demo sandbox provider: twisted's ``IMAP4Server`` with the overrides
a provider needs.

What it is: :class:`SandboxIMAPServer`, one instance per connection, built by the factory in
:mod:`gateway.demo.sandbox` and serving the accounts of :mod:`gateway.demo.sandbox_store`.
Beyond twisted's server it adds what ordinary clients expect of a provider: UIDNEXT/
PERMANENTFLAGS/UNSEEN on SELECT, UIDPLUS (APPENDUID, COPYUID, UID EXPUNGE), MOVE, UNSELECT, ID,
CHILDREN, the implicit ``\\Seen`` of body fetches, exact bytes for every BODY[section] and
partial fetch, and EXPUNGE announced to other sessions only when RFC 3501 allows it.  LOGIN and
AUTHENTICATE (``[CAPABILITY]`` in the reply, SASL-IR) come from
:class:`gateway.demo.sandbox_auth.LoginCommands`.

Why overrides: besides those additions they fix twisted bugs on the way (quoted strings with
escapes, APPEND without flags, STATUS of a name with spaces, TRYCREATE answered as a server
error); each override says what it changes.  Everything here runs on the reactor thread.
"""

from __future__ import annotations

import logging
import re

from twisted.internet import defer
from twisted.mail import imap4

from gateway.demo.sandbox_auth import LoginCommands
from gateway.demo.sandbox_message import parse_internaldate
from gateway.demo.sandbox_mime import (bodystructure, envelope, is_section, literal, nstring,
                                       section_bytes, section_name)
from gateway.demo.sandbox_store import uid_set

__all__ = ["SandboxIMAPServer", "MAX_LINE", "MAX_APPEND"]

log = logging.getLogger("gateway.demo.sandbox")  # one logger for the whole provider

MAX_LINE = 64 * 1024  # longest command line; twisted's 16 KiB is short for long UID sets
MAX_APPEND = 64 * 1024 * 1024  # largest APPEND literal


def _mailbox_name(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("imap4-utf-7")
    except (UnicodeError, ValueError):
        raise imap4.IllegalMailboxEncoding("not modified UTF-7") from None


class _FlagsItem:
    """A FLAGS fetch item added when a body fetch sets \\Seen: "if this causes the flags to
    change, they SHOULD be included as part of the FETCH responses" (RFC 3501, 6.4.5)."""

    type = "flags"


class SandboxIMAPServer(LoginCommands, imap4.IMAP4Server):
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
        reads = any((p.type == "body" and not p.peek and is_section(p))
                    or p.type in ("rfc822", "rfc822text") for p in query)
        if reads and self.mbox.mark_seen(msg) and not any(p.type == "flags" for p in query):
            query = list(query) + [_FlagsItem()]
        return imap4.IMAP4Server.spewMessage(self, id, msg, query, uid)

    def spew_body(self, part, id, msg, _w=None, _f=None):
        """BODY[section]<partial> from the stored bytes; twisted rebuilds headers from a dict and
        ignores the partial range."""
        if not is_section(part):
            _w(b"BODY " + bodystructure(msg.mime, False))
            return
        try:
            data = section_bytes(msg.mime, part)
        except (IndexError, TypeError):
            data = b""  # a part that does not exist reads as empty, as Dovecot answers
        name = section_name(part)
        if part.partialBegin is not None:
            data = data[part.partialBegin:part.partialBegin + part.partialLength]
            name += b"<%d>" % part.partialBegin
        _w(name + b" " + literal(data))

    def spew_rfc822(self, id, msg, _w=None, _f=None):
        _w(b"RFC822 " + literal(msg.raw))

    def spew_rfc822header(self, id, msg, _w=None, _f=None):
        _w(b"RFC822.HEADER " + literal(msg.mime.header))

    def spew_rfc822text(self, id, msg, _w=None, _f=None):
        _w(b"RFC822.TEXT " + literal(msg.mime.body))

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
    # parser is overridden (above or in LoginCommands) is registered again here; arg_mailbox
    # marks mailbox names.
    _S = imap4.IMAP4Server
    unauth_LOGIN = (LoginCommands.do_LOGIN, arg_astring, _S.arg_finalastring)
    unauth_AUTHENTICATE = (LoginCommands.do_AUTHENTICATE, _S.arg_line)
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
