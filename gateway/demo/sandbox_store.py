"""In-memory mailboxes behind the demo sandbox IMAP provider (:mod:`gateway.demo.sandbox`).

What it is: accounts, folders and messages kept in memory and shown to twisted's ``IMAP4Server``
through twisted's own interfaces -- ``IAccount`` + ``INamespacePresenter`` (:class:`Account`),
``IMailbox`` + ``ISearchableMailbox`` + ``ICloseableMailbox`` + ``IMessageCopier``
(:class:`MailboxView`), ``IMessage`` + ``IMessageFile`` (:class:`StoredMessage`) and
``IMessagePart`` (:class:`MimeEntity`) -- plus the IMAP renderings of a message (ENVELOPE,
BODYSTRUCTURE, BODY[section]) computed from its exact stored bytes.

Why not twisted's ``MemoryAccount``: it upper-cases every mailbox name (``Contabilità`` would be
listed as ``CONTABILITÀ``) and hands the same mailbox object to every session.  Here each SELECT
gets its own :class:`MailboxView`, because sequence numbers belong to a session: "An EXPUNGE
response MUST NOT be sent when no command is in progress, nor while responding to a FETCH,
STORE, or SEARCH command" (RFC 3501, 7.4.1) -- so a view keeps messages expunged by another
session until its own session may announce them.  Why not twisted's ENVELOPE/BODYSTRUCTURE/
HEADER code: it rebuilds headers from a dict (title-cased names, lost duplicates, no closing
blank line), puts spaces between multipart bodies and lower-cases parameter values.

Every object here is touched only from the reactor thread.
"""

from __future__ import annotations

import datetime as dt
import email.errors
import email.header
import email.parser
import email.policy
import email.utils
import io
import re
from collections.abc import Callable, Iterable

from twisted.internet import defer
from twisted.mail import imap4
from zope.interface import implementer

__all__ = ["Account", "Folder", "MailboxView", "MimeEntity", "StoredMessage", "DELIMITER",
           "SYSTEM_FLAGS", "envelope", "bodystructure", "parse_internaldate", "uid_set"]

DELIMITER = "/"
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_CANONICAL_FLAGS = {flag.lower(): flag for flag in SYSTEM_FLAGS}
UIDVALIDITY_BASE = 1_700_000_000  # fixed, so a restarted demo shows the same UIDVALIDITY values
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def _to_bytes(text: str) -> bytes:
    """Undo the ASCII+surrogateescape decoding of ``email``'s compat32 header parsing."""
    try:
        return text.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:  # a decoded RFC 2231 value holding real non-ASCII characters
        return text.encode("utf-8", "surrogateescape")


def _unfold(value: bytes) -> bytes:
    return re.sub(rb"\r?\n(?=[ \t])", b"", value).strip()


def _split_header(raw: bytes) -> tuple[bytes, bytes]:
    """Split an entity into its header block (ending with the blank line) and its body."""
    for blank in (b"\r\n", b"\n"):
        if raw.startswith(blank):
            return blank, raw[len(blank):]
    ends = [i + 4 for i in (raw.find(b"\r\n\r\n"),) if i >= 0]
    ends += [i + 2 for i in (raw.find(b"\n\n"),) if i >= 0]
    if not ends:
        return raw, b""
    return raw[:min(ends)], raw[min(ends):]


def _header_fields(header: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, exact field bytes with continuation lines and line ends), in order."""
    fields: list[tuple[str, bytes]] = []
    for line in re.findall(rb"[^\n]*\n|[^\n]+$", header):
        if line.strip(b"\r\n") == b"":
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + line)
        else:
            fields.append((line.split(b":", 1)[0].strip().lower().decode("ascii", "replace"), line))
    return fields


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts between ``--boundary`` lines; "the CRLF preceding the boundary delimiter line
    is conceptually attached to the boundary" (RFC 2046, 5.1.1), so it is not part of a part."""
    delimiter = re.compile(rb"(?:\A|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?=\r?\n|\Z)")
    parts: list[bytes] = []
    start = None
    for match in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start:match.start()])
        if match.group(1):
            return parts
        newline = body.find(b"\n", match.end())
        start = len(body) if newline < 0 else newline + 1
    if start is not None:  # no closing delimiter: the last part runs to the end
        parts.append(body[start:])
    return parts


@implementer(imap4.IMessagePart)
class MimeEntity:
    """One MIME entity with its exact header and body bytes, its parts and, for message/rfc822,
    the encapsulated message."""

    def __init__(self, raw: bytes, default_type: str = "text/plain") -> None:
        self.raw = raw
        self.header, self.body = _split_header(raw)
        self.fields = _header_fields(self.header)
        self.info = _HEADER_PARSER.parsebytes(self.header)  # for Content-* parameters only
        self.info.set_default_type(default_type)
        self.content_type = self.info.get_content_type()
        self.children: list[MimeEntity] = []
        self.encapsulated: MimeEntity | None = None
        maintype, subtype = self.content_type.split("/", 1)
        boundary = self.info.get_boundary()
        if maintype == "multipart" and boundary:
            inner = "message/rfc822" if subtype == "digest" else "text/plain"
            self.children = [MimeEntity(part, inner)
                             for part in _split_multipart(self.body, _to_bytes(boundary))]
        elif self.content_type == "message/rfc822":
            self.encapsulated = MimeEntity(self.body)

    def field(self, name: str) -> bytes | None:
        """The unfolded value of the first ``name`` field, or None."""
        for key, raw in self.fields:
            if key == name:
                return _unfold(raw.split(b":", 1)[1]) if b":" in raw else b""
        return None

    def header_fields(self, names: Iterable[str], negate: bool) -> bytes:
        """BODY[HEADER.FIELDS (...)] / [HEADER.FIELDS.NOT (...)]: the exact fields plus the blank line."""
        wanted = {name.lower() for name in names}
        chosen = b"".join(raw for key, raw in self.fields if (key in wanted) != negate)
        ends_blank = self.header.endswith(b"\n\n") or self.header.endswith(b"\n\r\n") or (
            self.header in (b"\r\n", b"\n"))
        return chosen + b"\r\n" if ends_blank or not negate else chosen  # as Dovecot does

    def resolve(self, path: Iterable[int]) -> MimeEntity:
        """The entity at a 0-based part path; "non-multipart messages ... only have a part 1", and a
        message/rfc822 part's sub-parts are those of the message it carries (RFC 3501, 6.4.5)."""
        node, inside_message = self, True
        for index in path:
            if not inside_message and node.encapsulated is not None:
                node, inside_message = node.encapsulated, True
            if node.children:
                node, inside_message = node.children[index], False
            elif index != 0 or not inside_message:
                raise IndexError("no such body part")
            else:
                inside_message = False
        return node

    # IMessagePart -- what twisted itself reads (its SEARCH and COPY fallbacks)
    def getHeaders(self, negate, *names):
        wanted = {name.lower() for name in names}
        headers: dict[str, str] = {}
        for key, raw in self.fields:
            if (key in wanted) != bool(negate) and key not in headers:
                headers[key] = _unfold(raw.split(b":", 1)[-1]).decode("utf-8", "replace")
        return headers

    def getBodyFile(self):
        return io.BytesIO(self.body)

    def getSize(self):
        return len(self.body)

    def isMultipart(self):
        return bool(self.children)

    def getSubPart(self, part):
        if self.encapsulated is not None and part == 0:
            return self.encapsulated
        if not self.children:
            raise TypeError("not a multipart entity")
        return self.children[part]


def normalize_flags(flags: Iterable[str]) -> list[str]:
    """System flags in their canonical case, keywords as given, no duplicates, no ``\\Recent``."""
    out: list[str] = []
    for flag in flags:
        flag = _CANONICAL_FLAGS.get(flag.lower(), flag)
        if flag.lower() != "\\recent" and flag.lower() not in (f.lower() for f in out):
            out.append(flag)
    return out


def parse_internaldate(value: bytes | str | dt.datetime | None) -> dt.datetime:
    """APPEND's date-time (``"17-Jul-1996 02:44:25 -0700"``) or now."""
    if value is None:
        return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    if isinstance(value, dt.datetime):
        return value
    text = value.decode("ascii") if isinstance(value, bytes) else value
    match = re.fullmatch(r"\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)",
                         text)
    months = [m.lower() for m in _MONTHS]
    if not match or match.group(2).lower() not in months:
        raise ValueError("invalid date-time")
    day, month, year, hh, mm, ss, sign, zh, zm = match.groups()
    offset = dt.timedelta(hours=int(zh), minutes=int(zm)) * (1 if sign == "+" else -1)
    return dt.datetime(int(year), months.index(month.lower()) + 1, int(day), int(hh), int(mm),
                       int(ss), tzinfo=dt.timezone(offset))


def _date_of(raw: bytes) -> dt.datetime:
    """INTERNALDATE for a seeded message: its Date header when it parses, else now."""
    value = MimeEntity(_split_header(raw)[0]).field("date")
    try:
        when = email.utils.parsedate_to_datetime(value.decode("ascii")) if value else None
    except (TypeError, ValueError, UnicodeDecodeError):
        when = None
    return when if when is not None and when.tzinfo is not None else parse_internaldate(None)


@implementer(imap4.IMessage, imap4.IMessageFile)
class StoredMessage:
    """A message as stored: exact bytes, UID, flags, internal date."""

    def __init__(self, uid: int, raw: bytes, flags: Iterable[str], internaldate: dt.datetime):
        self.uid, self.raw, self.internaldate = uid, raw, internaldate
        self.flags = normalize_flags(flags)
        self.expunged = False
        self._mime: MimeEntity | None = None

    @property
    def mime(self) -> MimeEntity:
        if self._mime is None:
            self._mime = MimeEntity(self.raw)
        return self._mime

    def update_flags(self, flags: list[str], mode: int) -> bool:
        """STORE: mode 1 adds, -1 removes, 0 replaces.  Returns whether anything changed."""
        before = list(self.flags)
        lowered = {flag.lower() for flag in flags}
        if mode > 0:
            self.flags = normalize_flags(self.flags + flags)
        elif mode < 0:
            self.flags = [flag for flag in self.flags if flag.lower() not in lowered]
        else:
            self.flags = list(flags)
        return self.flags != before

    def has_flag(self, flag: str) -> bool:
        return flag.lower() in (f.lower() for f in self.flags)

    # IMessage / IMessageFile
    def getUID(self):
        return self.uid

    def getFlags(self):
        return list(self.flags)

    def getInternalDate(self):
        return email.utils.format_datetime(self.internaldate)

    def getHeaders(self, negate, *names):
        return self.mime.getHeaders(negate, *names)

    def getBodyFile(self):
        return self.mime.getBodyFile()

    def getSize(self):
        return len(self.raw)

    def isMultipart(self):
        return self.mime.isMultipart()

    def getSubPart(self, part):
        return self.mime.getSubPart(part)

    def open(self):
        return io.BytesIO(self.raw)


class Folder:
    """A mailbox's contents, shared by every session: messages, UIDNEXT, UIDVALIDITY."""

    def __init__(self, name: str, uidvalidity: int) -> None:
        self.name, self.uidvalidity, self.uidnext = name, uidvalidity, 1
        self.messages: list[StoredMessage] = []
        self.views: list[MailboxView] = []  # selected views, told about changes

    def append(self, raw: bytes, flags: Iterable[str] = (), when: dt.datetime | None = None
               ) -> StoredMessage:
        message = StoredMessage(self.uidnext, raw, flags, when or parse_internaldate(None))
        self.uidnext += 1
        self.messages.append(message)
        for view in list(self.views):
            view.arrived(message)
        return message

    def remove(self, victims: list[StoredMessage], source: MailboxView | None) -> None:
        gone = {id(message) for message in victims}
        self.messages = [m for m in self.messages if id(m) not in gone]
        for message in victims:
            message.expunged = True
        for view in list(self.views):
            if view is not source:
                view.expunged_elsewhere()

    def flags_changed(self, changed: list[StoredMessage], source: MailboxView | None) -> None:
        for view in list(self.views):
            if view is not source:
                view.flags_changed_elsewhere(changed)

    def keywords(self) -> list[str]:
        seen: dict[str, str] = {}
        for message in self.messages:
            for flag in message.flags:
                if not flag.startswith("\\"):
                    seen.setdefault(flag.lower(), flag)
        return sorted(seen.values())

    def unseen(self) -> int:
        return sum(1 for m in self.messages if not m.has_flag("\\Seen"))


def uid_set(uids: Iterable[int]) -> bytes:
    """``1:3,7`` for COPYUID/APPENDUID (RFC 4315); runs are compressed, order kept."""
    runs: list[list[int]] = []
    for uid in uids:
        if runs and uid == runs[-1][1] + 1:
            runs[-1][1] = uid
        else:
            runs.append([uid, uid])
    return b",".join(b"%d" % a if a == b else b"%d:%d" % (a, b) for a, b in runs)


@implementer(imap4.IMailbox, imap4.ISearchableMailbox, imap4.ICloseableMailbox,
             imap4.IMessageCopier)
class MailboxView:
    """One session's view of a folder: its own sequence numbers (``messages[seq - 1]``)."""

    def __init__(self, folder: Folder, readwrite: bool) -> None:
        self.folder, self.readwrite = folder, bool(readwrite)
        self.messages = list(folder.messages)
        self.listeners: list = []

    # changes made by other sessions
    def arrived(self, message: StoredMessage) -> None:
        self.messages.append(message)
        for listener in list(self.listeners):
            listener.newMessages(len(self.messages), None)

    def expunged_elsewhere(self) -> None:
        for listener in list(self.listeners):
            notify = getattr(listener, "expungesPending", None)
            if notify is not None:
                notify()

    def flags_changed_elsewhere(self, changed: list[StoredMessage]) -> None:
        positions = {id(m): seq for seq, m in enumerate(self.messages, 1)}
        update = {positions[id(m)]: list(m.flags) for m in changed if id(m) in positions}
        if update:
            for listener in list(self.listeners):
                listener.flagsChanged(update)

    def flush_expunged(self) -> list[int]:
        """Forget messages expunged by anyone; their sequence numbers, highest first, so each
        ``* n EXPUNGE`` can be sent as is."""
        gone = [seq for seq, m in enumerate(self.messages, 1) if m.expunged]
        self.messages = [m for m in self.messages if not m.expunged]
        return gone[::-1]

    def matching(self, messages: imap4.MessageSet, uid: bool) -> list[tuple[int, StoredMessage]]:
        if not self.messages:
            return []
        wanted = imap4.MessageSet(list(messages.ranges))
        wanted.last = self.messages[-1].uid if uid else len(self.messages)
        return [(seq, m) for seq, m in enumerate(self.messages, 1) if (m.uid if uid else seq) in wanted]

    def mark_seen(self, message: StoredMessage) -> bool:
        """The implicit ``\\Seen`` of a non-PEEK body fetch; True if the flags changed."""
        if not self.readwrite or message.has_flag("\\Seen") or message.expunged:
            return False
        message.update_flags(["\\Seen"], 1)
        self.folder.flags_changed([message], self)
        return True

    def remove(self, victims: list[StoredMessage]) -> list[int]:
        """Expunge ``victims`` from the folder; returns this view's EXPUNGE numbers."""
        self.folder.remove(victims, self)
        return self.flush_expunged()

    def expunge_uids(self, uids: imap4.MessageSet | None) -> list[int]:
        """EXPUNGE (``uids`` None) or UID EXPUNGE: remove ``\\Deleted`` messages."""
        if not self.readwrite:
            raise imap4.ReadOnlyMailbox()
        chosen = self.folder.messages if uids is None else [m for _, m in self.matching(uids, True)]
        return self.remove([m for m in chosen if m.has_flag("\\Deleted") and not m.expunged])

    # IMailboxInfo / IMailbox
    def getFlags(self):
        return list(SYSTEM_FLAGS) + self.folder.keywords()

    def getHierarchicalDelimiter(self):
        return DELIMITER

    def getUIDValidity(self):
        return self.folder.uidvalidity

    def getUIDNext(self):
        return self.folder.uidnext

    def getUID(self, message):
        return self.messages[message - 1].uid

    def getMessageCount(self):
        return len(self.messages)

    def getRecentCount(self):
        return 0  # \Recent is not tracked; 0 is always a truthful answer to "how many are recent"

    def getUnseenCount(self):
        return self.folder.unseen()

    def isWriteable(self):
        return self.readwrite

    def destroy(self):
        self.folder.views.clear()

    def requestStatus(self, names):
        folder = self.folder
        values = {"MESSAGES": len(folder.messages), "RECENT": 0, "UIDNEXT": folder.uidnext,
                  "UIDVALIDITY": folder.uidvalidity, "UNSEEN": folder.unseen()}
        return {name.upper(): values[name.upper()] for name in names}

    def addListener(self, listener):
        self.listeners.append(listener)
        if self not in self.folder.views:
            self.folder.views.append(self)

    def removeListener(self, listener):
        self.listeners.remove(listener)
        if not self.listeners:
            self.close()

    def close(self):
        if self in self.folder.views:
            self.folder.views.remove(self)

    def addMessage(self, message, flags, date=None):
        raw = message.read() if hasattr(message, "read") else bytes(message)
        stored = self.folder.append(raw, flags, parse_internaldate(date))
        return defer.succeed(stored.uid)

    def expunge(self):
        return self.expunge_uids(None)

    def fetch(self, messages, uid):
        return self.matching(messages, bool(uid))

    def store(self, messages, flags, mode, uid):
        if not self.readwrite:
            raise imap4.ReadOnlyMailbox()
        flags = normalize_flags(flags)
        result, changed = {}, []
        for seq, message in self.matching(messages, bool(uid)):
            if message.update_flags(flags, mode):
                changed.append(message)
            result[seq] = list(message.flags)
        if changed:
            self.folder.flags_changed(changed, self)
        return result

    # IMessageCopier
    def copy(self, messageObject):
        source = messageObject
        return self.folder.append(source.raw, source.flags, source.internaldate).uid

    # ISearchableMailbox
    def search(self, query, uid):
        """Sequence numbers matching the parsed SEARCH keys (twisted maps them to UIDs)."""
        last_uid = self.messages[-1].uid if self.messages else 0
        test = _SearchParser(query, len(self.messages), last_uid).program()
        return [seq for seq, m in enumerate(self.messages, 1) if test(seq, m)]


_Test = Callable[[int, StoredMessage], bool]


class _SearchParser:
    """RFC 3501 SEARCH keys (as twisted's ``parseNestedParens`` splits them) -> a predicate."""

    _FLAGS = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft",
              "FLAGGED": "\\Flagged", "SEEN": "\\Seen"}
    _HEADERS = {"FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject"}

    def __init__(self, tokens, last_seq: int, last_uid: int) -> None:
        self.tokens, self.pos = list(tokens), 0
        self.last_seq, self.last_uid = last_seq, last_uid

    def program(self) -> _Test:
        tests = []
        while self.pos < len(self.tokens):
            tests.append(self.key())
        return lambda seq, m: all(t(seq, m) for t in tests)

    def _next(self):
        if self.pos >= len(self.tokens):
            raise imap4.IllegalQueryError("missing search argument")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def _text(self) -> bytes:
        token = self._next()
        if isinstance(token, list):
            raise imap4.IllegalQueryError("expected a string")
        return token

    def _set(self, token: bytes, last: int) -> imap4.MessageSet:
        try:
            return imap4.parseIdList(token, last or None) if last else imap4.MessageSet()
        except imap4.IllegalIdentifierError as e:
            raise imap4.IllegalQueryError(f"bad message set: {e}") from None

    def key(self) -> _Test:
        token = self._next()
        if isinstance(token, list):
            return _SearchParser(token, self.last_seq, self.last_uid).program()
        word = token.upper().decode("ascii", "replace")
        if word[:1].isdigit() or word[:1] == "*":
            seqs = self._set(token, self.last_seq)
            return lambda seq, m: bool(seqs.ranges) and seq in seqs
        if word in self._FLAGS or (word.startswith("UN") and word[2:] in self._FLAGS):
            flag, want = self._FLAGS.get(word, self._FLAGS.get(word[2:])), not word.startswith("UN")
            return lambda seq, m: m.has_flag(flag) == want
        if word in ("KEYWORD", "UNKEYWORD"):
            keyword, want = self._text().decode("utf-8", "replace"), word == "KEYWORD"
            return lambda seq, m: m.has_flag(keyword) == want
        if word in ("ALL", "OLD"):
            return lambda seq, m: True
        if word in ("NEW", "RECENT"):
            return lambda seq, m: False  # \Recent is not tracked
        if word == "NOT":
            inner = self.key()
            return lambda seq, m: not inner(seq, m)
        if word == "OR":
            left, right = self.key(), self.key()
            return lambda seq, m: left(seq, m) or right(seq, m)
        if word == "UID":
            uids = self._set(self._text(), self.last_uid)
            return lambda seq, m: bool(uids.ranges) and m.uid in uids
        if word in ("LARGER", "SMALLER"):
            size = self._number()
            return (lambda seq, m: len(m.raw) > size) if word == "LARGER" else (
                lambda seq, m: len(m.raw) < size)
        if word in self._HEADERS or word == "HEADER":
            name = self._HEADERS.get(word) or self._text().decode("ascii", "replace").lower()
            needle = self._text().decode("utf-8", "replace").lower()
            return lambda seq, m: _header_contains(m.mime, name, needle)
        if word in ("BODY", "TEXT"):
            needle = self._text().lower()
            if word == "BODY":
                return lambda seq, m: needle in m.mime.body.lower()
            return lambda seq, m: needle in m.raw.lower()
        if word in ("BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"):
            day = self._date()
            compare = {"BEFORE": lambda d: d < day, "ON": lambda d: d == day,
                       "SINCE": lambda d: d >= day}[word.removeprefix("SENT")]
            if word.startswith("SENT"):
                return lambda seq, m: (d := _sent_date(m)) is not None and compare(d)
            return lambda seq, m: compare(m.internaldate.date())
        raise imap4.IllegalQueryError(f"unsupported search key {word}")

    def _number(self) -> int:
        try:
            return int(self._text())
        except ValueError:
            raise imap4.IllegalQueryError("expected a number") from None

    def _date(self) -> dt.date:
        try:
            return parse_internaldate(self._text().decode("ascii") + " 00:00:00 +0000").date()
        except (ValueError, UnicodeDecodeError):
            raise imap4.IllegalQueryError("expected a date like 1-Feb-1994") from None


def _header_contains(entity: MimeEntity, name: str, needle: str) -> bool:
    for key, raw in entity.fields:
        if key == name:
            value = _unfold(raw.split(b":", 1)[-1]).decode("utf-8", "replace")
            try:
                value = str(email.header.make_header(email.header.decode_header(value)))
            except (ValueError, LookupError, email.errors.HeaderParseError):
                pass
            if needle in value.lower():
                return True
    return False


def _sent_date(message: StoredMessage) -> dt.date | None:
    value = message.mime.field("date")
    try:
        return email.utils.parsedate_to_datetime(value.decode("ascii")).date() if value else None
    except (TypeError, ValueError, UnicodeDecodeError):
        return None


@implementer(imap4.IMailboxInfo)
class _ListInfo:
    """What LIST shows for one name (``IMailboxInfo``): attributes and the delimiter."""

    def __init__(self, attributes: list[str]) -> None:
        self.attributes = attributes

    def getFlags(self):
        return list(self.attributes)

    def getHierarchicalDelimiter(self):
        return DELIMITER



def _wildcard(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """LIST patterns: ``*`` matches anything, ``%`` anything but the delimiter."""
    regex = "".join(".*" if part == "*" else "[^/]*" if part == "%" else re.escape(part)
                    for part in re.split(r"([*%])", pattern))
    return re.compile(regex, re.IGNORECASE if ignore_case else 0)


@implementer(imap4.IAccount, imap4.INamespacePresenter)
class Account:
    """One user's folders (case-preserving names, ``INBOX`` case-insensitive) and subscriptions."""

    def __init__(self, folders: dict[str, list[bytes]]) -> None:
        self.folders: dict[str, Folder] = {}
        self.subscriptions: set[str] = set()
        self._created = 0
        for name, messages in folders.items():
            name = self.canonical(name)
            if name not in self.folders:
                self.create(name)
            for raw in messages:
                self.folders[name].append(raw, (), _date_of(raw))
        if "INBOX" not in self.folders:
            self.create("INBOX")
        self.subscriptions.update(self.folders)

    @staticmethod
    def canonical(name: str) -> str:
        name = name.rstrip(DELIMITER)
        if name.upper() == "INBOX":
            return "INBOX"
        parts = name.split(DELIMITER)
        if not name or any(not part for part in parts) or any(ord(c) < 0x20 for c in name) or (
                "*" in name or "%" in name):
            raise imap4.MailboxException("Invalid mailbox name")
        return name

    def _inferiors(self, name: str) -> list[str]:
        return [other for other in self.folders if other.startswith(name + DELIMITER)]

    # IAccount
    def addMailbox(self, name, mbox=None):
        name = self.canonical(name)
        if name in self.folders:
            raise imap4.MailboxException("[ALREADYEXISTS] Mailbox already exists")
        self._created += 1
        self.folders[name] = mbox if isinstance(mbox, Folder) else Folder(
            name, UIDVALIDITY_BASE + self._created)
        return True

    def create(self, pathspec):
        name = self.canonical(pathspec)
        if name in self.folders:
            raise imap4.MailboxException("[ALREADYEXISTS] Mailbox already exists")
        parts = name.split(DELIMITER)
        for depth in range(1, len(parts)):  # "SHOULD create any superior hierarchical names"
            parent = DELIMITER.join(parts[:depth])
            if parent not in self.folders:
                self.addMailbox(parent)
        return self.addMailbox(name)

    def select(self, name, rw=True):
        try:
            folder = self.folders.get(self.canonical(name))
        except imap4.MailboxException:
            return None
        return MailboxView(folder, rw) if folder is not None else None

    def delete(self, name):
        name = self.canonical(name)
        if name not in self.folders:
            raise imap4.MailboxException("[NONEXISTENT] No such mailbox")
        if name == "INBOX":
            raise imap4.MailboxException("INBOX cannot be deleted")
        if self._inferiors(name):
            raise imap4.MailboxException("Mailbox has children, delete them first")
        folder = self.folders.pop(name)
        folder.views.clear()
        self.subscriptions.discard(name)

    def rename(self, oldname, newname):
        old, new = self.canonical(oldname), self.canonical(newname)
        if old not in self.folders:
            raise imap4.MailboxException("[NONEXISTENT] No such mailbox")
        if new in self.folders:
            raise imap4.MailboxException("[ALREADYEXISTS] Target mailbox already exists")
        if new.startswith(old + DELIMITER):
            raise imap4.MailboxException("Cannot move a mailbox under itself")
        for name in [old] + self._inferiors(old):
            renamed = new + name[len(old):]
            folder = self.folders.pop(name)
            folder.name = renamed
            self.folders[renamed] = folder
            if name in self.subscriptions:
                self.subscriptions.discard(name)
                self.subscriptions.add(renamed)
        parts = new.split(DELIMITER)
        for depth in range(1, len(parts)):
            if DELIMITER.join(parts[:depth]) not in self.folders:
                self.addMailbox(DELIMITER.join(parts[:depth]))

    def isSubscribed(self, name):
        return name in self.subscriptions or (name.upper() == "INBOX" and "INBOX" in self.subscriptions)

    def subscribe(self, name):
        self.subscriptions.add(self.canonical(name))

    def unsubscribe(self, name):
        self.subscriptions.discard(self.canonical(name))

    def listMailboxes(self, ref, wildcard):
        if not wildcard:  # LIST "" "": the hierarchy delimiter and root (RFC 3501, 6.3.8)
            return [("", _ListInfo(["\\Noselect"]))]
        pattern = ref + wildcard
        exact, inbox = _wildcard(pattern, False), _wildcard(pattern, True)
        names = sorted(self.folders, key=lambda n: (n != "INBOX", n))
        return [(name, _ListInfo(["\\HasChildren" if self._inferiors(name) else "\\HasNoChildren"]))
                for name in names
                if exact.fullmatch(name) or (name == "INBOX" and inbox.fullmatch(name))]

    # INamespacePresenter
    def getPersonalNamespaces(self):
        return [[b"", DELIMITER.encode()]]

    def getSharedNamespaces(self):
        return None

    def getOtherNamespaces(self):
        return None

    def getUserNamespaces(self):
        return None


# ---- IMAP renderings of a message (RFC 3501, 7.4.2) -------------------------------------------

def nstring(value: bytes | str | None) -> bytes:
    """NIL, a quoted string, or a literal when the value holds CR, LF, NUL or 8-bit bytes."""
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        value = _to_bytes(value)
    if re.search(rb"[\x00\r\n\x80-\xff]", value):
        return b"{%d}\r\n" % len(value) + value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _addresses(value: bytes | None) -> bytes:
    if value is None:
        return b"NIL"
    out = []
    for name, address in email.utils.getaddresses([value.decode("ascii", "surrogateescape")]):
        if not address and not name:
            continue
        mailbox, _, host = address.rpartition("@") if "@" in address else (address, "", "")
        out.append(b"(" + b" ".join([nstring(name or None), b"NIL", nstring(mailbox),
                                     nstring(host or ".MISSING-HOST-NAME.")]) + b")")
    return b"(" + b"".join(out) + b")" if out else b"NIL"


def envelope(entity: MimeEntity) -> bytes:
    """ENVELOPE; "If the Sender or Reply-To lines are absent ... the server sets the
    corresponding member of the envelope to be the same value as the from member"."""
    sender = entity.field("sender") if entity.field("sender") is not None else entity.field("from")
    reply_to = entity.field("reply-to")
    return b"(" + b" ".join([
        nstring(entity.field("date")), nstring(entity.field("subject")),
        _addresses(entity.field("from")), _addresses(sender),
        _addresses(reply_to if reply_to is not None else entity.field("from")),
        _addresses(entity.field("to")), _addresses(entity.field("cc")),
        _addresses(entity.field("bcc")),
        nstring(entity.field("in-reply-to")), nstring(entity.field("message-id")),
    ]) + b")"


def _params(entity: MimeEntity, header: str = "content-type") -> bytes:
    params = entity.info.get_params(header=header) or []
    pairs = [(key, email.utils.collapse_rfc2231_value(value)) for key, value in params[1:]]
    if not pairs and header == "content-type" and entity.info.get("content-type") is None:
        pairs = [("charset", "us-ascii")] if entity.content_type == "text/plain" else []
    return b"(" + b" ".join(nstring(k) + b" " + nstring(v) for k, v in pairs) + b")" if pairs else b"NIL"


def _extension(entity: MimeEntity) -> list[bytes]:
    disposition = entity.info.get_content_disposition()
    dsp = b"(" + nstring(disposition) + b" " + _params(entity, "content-disposition") + b")" \
        if disposition else b"NIL"
    return [dsp, nstring(entity.field("content-language")), nstring(entity.field("content-location"))]


def _lines(body: bytes) -> int:
    return body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)


def bodystructure(entity: MimeEntity, extended: bool) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY; multipart bodies are written back to back, as the
    grammar says (``body-type-mpart = 1*body SP media-subtype``)."""
    maintype, subtype = entity.content_type.split("/", 1)
    if entity.children:
        out = b"".join(bodystructure(child, extended) for child in entity.children)
        out += b" " + nstring(subtype)
        if extended:
            out += b" " + b" ".join([_params(entity)] + _extension(entity))
        return b"(" + out + b")"
    fields = [nstring(maintype), nstring(subtype), _params(entity),
              nstring(entity.field("content-id")), nstring(entity.field("content-description")),
              nstring(entity.field("content-transfer-encoding") or b"7bit"), b"%d" % len(entity.body)]
    if entity.encapsulated is not None:
        fields += [envelope(entity.encapsulated), bodystructure(entity.encapsulated, extended),
                   b"%d" % _lines(entity.body)]
    elif maintype == "text":
        fields.append(b"%d" % _lines(entity.body))
    if extended:
        fields += [nstring(entity.field("content-md5"))] + _extension(entity)
    return b"(" + b" ".join(fields) + b")"
