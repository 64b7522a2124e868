"""A stored message of the demo sandbox IMAP provider: its exact bytes, UID, flags and
INTERNALDATE, and the flag and date-time rules they follow.

What it is: :class:`StoredMessage` (twisted's ``IMessage`` + ``IMessageFile``), one object per
message, shared by every session that sees its folder; and the pure helpers behind it --
canonical flags (:func:`normalize_flags`), APPEND's date-time (:func:`parse_internaldate`) and
the INTERNALDATE of a seeded message (:func:`date_of`).

Why a module of its own: the store (:mod:`gateway.demo.sandbox_store`) and the SEARCH evaluator
(:mod:`gateway.demo.sandbox_search`) both work on these messages and the store calls SEARCH;
with the message here, SEARCH needs no import of the store.  Every object here is touched only
from the reactor thread.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import io
import re
from collections.abc import Iterable

from twisted.mail import imap4
from zope.interface import implementer

from gateway.demo.sandbox_mime import MimeEntity, split_header

__all__ = ["StoredMessage", "SYSTEM_FLAGS", "normalize_flags", "parse_internaldate",
           "date_of"]

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_CANONICAL_FLAGS = {flag.lower(): flag for flag in SYSTEM_FLAGS}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


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


def date_of(raw: bytes) -> dt.datetime:
    """INTERNALDATE for a seeded message: its Date header when it parses, else now."""
    value = MimeEntity(split_header(raw)[0]).field("date")
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
