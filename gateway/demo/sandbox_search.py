"""SEARCH in the demo sandbox IMAP provider: RFC 3501 search keys (6.4.4) turned into one
predicate over a session's messages.

What it is: :class:`SearchParser` reads the keys as twisted's ``parseNestedParens`` splits them
and returns a test ``(sequence number, message) -> bool``, which
:meth:`gateway.demo.sandbox_store.MailboxView.search` applies to every message of the view.  A
key it does not know is an ``IllegalQueryError`` (answered BAD), never a silent match.  Pure:
no I/O.

Why not twisted's own search: its fallback walks the mailbox across reactor turns and writes
``* SEARCH `` with a trailing space when nothing matches; a predicate answers in one go.
``\\Recent`` is not tracked, so NEW and RECENT match nothing and OLD matches everything.
"""

from __future__ import annotations

import datetime as dt
import email.errors
import email.header
import email.utils
from collections.abc import Callable

from twisted.mail import imap4

from gateway.demo.sandbox_message import StoredMessage, parse_internaldate
from gateway.demo.sandbox_mime import MimeEntity, unfold

__all__ = ["SearchParser"]


_Test = Callable[[int, StoredMessage], bool]


class SearchParser:
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
            return SearchParser(token, self.last_seq, self.last_uid).program()
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
            value = unfold(raw.split(b":", 1)[-1]).decode("utf-8", "replace")
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
