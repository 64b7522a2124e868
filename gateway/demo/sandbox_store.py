"""In-memory mailboxes behind the demo sandbox IMAP provider (:mod:`gateway.demo.sandbox`).

What it is: accounts, folders and per-session mailbox views kept in memory and shown to
twisted's ``IMAP4Server`` through twisted's own interfaces -- ``IAccount`` +
``INamespacePresenter`` (:class:`Account`) and ``IMailbox`` + ``ISearchableMailbox`` +
``ICloseableMailbox`` + ``IMessageCopier`` (:class:`MailboxView`).  The messages they hold are
:class:`~gateway.demo.sandbox_message.StoredMessage`; MIME structure and the IMAP renderings of
a message live in :mod:`gateway.demo.sandbox_mime`, SEARCH in :mod:`gateway.demo.sandbox_search`.

Why not twisted's ``MemoryAccount``: it upper-cases every mailbox name (``Contabilità`` would be
listed as ``CONTABILITÀ``) and hands the same mailbox object to every session.  Here each SELECT
gets its own :class:`MailboxView`, because sequence numbers belong to a session: "An EXPUNGE
response MUST NOT be sent when no command is in progress, nor while responding to a FETCH,
STORE, or SEARCH command" (RFC 3501, 7.4.1) -- so a view keeps messages expunged by another
session until its own session may announce them.

Every object here is touched only from the reactor thread.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from twisted.internet import defer
from twisted.mail import imap4
from zope.interface import implementer

from gateway.demo.sandbox_message import (SYSTEM_FLAGS, StoredMessage, date_of, normalize_flags,
                                          parse_internaldate)
from gateway.demo.sandbox_search import SearchParser

__all__ = ["Account", "Folder", "MailboxView", "DELIMITER", "uid_set"]

DELIMITER = "/"
UIDVALIDITY_BASE = 1_700_000_000  # fixed, so a restarted demo shows the same UIDVALIDITY values


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
        test = SearchParser(query, len(self.messages), last_uid).program()
        return [seq for seq, m in enumerate(self.messages, 1) if test(seq, m)]


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
                self.folders[name].append(raw, (), date_of(raw))
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

