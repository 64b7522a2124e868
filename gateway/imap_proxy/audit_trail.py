"""What a person did, message by message, read from the commands and the provider's replies.

Pure, like the session that feeds it: :meth:`AuditTrail.command` when a client command is
relayed, :meth:`untagged` for each untagged reply, :meth:`tagged` for each command's tagged
reply.  Each returns :class:`Happened` records — action, folder, message, detail — which the
session turns into audit events for the person.

Only what the provider confirmed is recorded: a SELECT counts when it is answered OK, a FETCH
per ``* n FETCH`` that came back while the person's FETCH ran, a COPY per UID pair of its
``[COPYUID …]`` (or, at a provider without UIDPLUS, per message the COPY named).  An EXPUNGE
reply counts for the person only while their EXPUNGE, UID EXPUNGE, MOVE or expunging CLOSE is
running, and only for the UIDs it named (:mod:`~gateway.imap_proxy.expunge_plan` turns EXPUNGE
and CLOSE into a ``UID EXPUNGE`` of what was marked): the same reply at other times, or about
other messages, reports what *another* session did.  Sets are never expanded
(:mod:`~gateway.imap_proxy.sequence_set`): ``1:*`` over any number of messages costs the
folder's size, not the set's.

Messages are named by UIDVALIDITY and UID (:class:`~gateway.imap_proxy.mailbox_view.MailboxView`
keeps sequence numbers mapped to UIDs); the headers that identify a PEC are filled in later by
the gateway's identity lookups.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from gateway.audit.events import MessageRef
from gateway.imap_proxy.commands import Command
from gateway.imap_proxy.fetch_response import parse_fetch
from gateway.imap_proxy.framing import Frame
from gateway.imap_proxy.identity import IDENTITY_OCTETS, identity_from_headers
from gateway.imap_proxy.mailbox_view import MailboxView
from gateway.imap_proxy.responses import Head, StatusResponse, parse_status
from gateway.imap_proxy.sequence_set import SequenceSet

__all__ = ["AuditTrail", "Happened"]

#: Commands whose EXPUNGE replies are the person's doing.  MOVE's become its "move" rows (when
#: the provider sends no COPYUID); CLOSE's come from the gateway's own ``UID EXPUNGE`` for it.
_EXPUNGING = frozenset({"EXPUNGE", "MOVE", "CLOSE"})


@dataclass(frozen=True)
class Happened:
    """One audited action: ``message`` for the per-message ones."""

    action: str
    folder: str | None
    message: MessageRef | None = None
    detail: dict = field(default_factory=dict)
    seq: int | None = None  # the message's sequence number, when its UID is not known yet


@dataclass
class _Running:
    """A client command between its relay and its tagged reply."""

    name: str
    uid: bool
    folder: str | None  # the folder it acts in (the selected one, or its argument)
    target: str | None = None  # COPY/MOVE/APPEND destination, RENAME's new name
    flags: tuple[str, str, bool] | None = None  # STORE: ("+FLAGS", "\\Seen \\Flagged", silent)
    messages: str = ""  # STORE, COPY, MOVE: the sequence or UID set
    members: SequenceSet | None = None  # the numbers (or UIDs) it names; None: unknown
    moved: list[tuple[int, int]] = field(default_factory=list)  # MOVE: (source UID, destination UID)
    left: list[int | None] = field(default_factory=list)  # MOVE: the UIDs its EXPUNGE replies removed
    expunging: bool = False  # CLOSE: the gateway runs an expunge for it (its replies are the person's)
    headers: bytes = b""  # APPEND: the header block of the message uploaded (its identity)


def _uid_pairs(code_data: str, bound: int) -> tuple[int | None, list[tuple[int, int]]]:
    """``[COPYUID 38505 304,319:320 3956:3958]`` → (38505, [(304, 3956), (319, 3957), (320, 3958)]).

    The two sets pair up in the order written (RFC 4315 §3).  ``bound`` is how many messages
    the folder holds: a reply naming more is not believed (and never expanded).
    """
    parts = code_data.split()
    if len(parts) != 3 or not parts[0].isdigit():
        return None, []
    try:
        src, dst = _in_order(parts[1], bound), _in_order(parts[2], bound)
    except ValueError:
        return int(parts[0]), []
    return int(parts[0]), list(zip(src, dst)) if len(src) == len(dst) else []


def _in_order(text: str, bound: int) -> list[int]:
    """A UID set's numbers in the order written (``5:3`` is 3, 4, 5); ValueError beyond ``bound``."""
    out: list[int] = []
    for part in text.split(","):
        piece = SequenceSet.parse(part)
        if len(out) + len(piece) > bound:
            raise ValueError(f"more than {bound} UIDs")
        out.extend(piece)
    return out


class AuditTrail:
    """One session's record keeping; ``folder_name`` turns a wire name into its human name."""

    def __init__(self, folder_name) -> None:
        self._name = folder_name
        self.folder: str | None = None  # the selected folder, as the provider confirmed it
        self.view: MailboxView | None = None
        self._running: dict[str, _Running] = {}
        self._order: deque[str] = deque()  # running tags, oldest first
        self._selecting: tuple[str, str, bool] | None = None  # (tag, folder, read-only)
        self._deselect_after: set[str] | None = None  # the folder goes when these commands are done
        self._select_view: MailboxView | None = None

    # ------------------------------------------------------------------ client commands
    def command(self, cmd: Command, wire_args: tuple[bytes | None, ...]) -> None:
        """A client command is being relayed; ``wire_args`` are its mailbox arguments."""
        name = cmd.name
        human = [self._name(w) if w is not None else None for w in wire_args]
        # a command pipelined behind a SELECT runs in the folder being selected
        running = _Running(name, cmd.uid, self._selecting[1] if self._selecting is not None else self.folder)
        if name in ("SELECT", "EXAMINE"):
            self._selecting = (cmd.tag, human[0] or "", name == "EXAMINE")
            self._select_view = MailboxView()
        elif name in ("CREATE", "DELETE", "APPEND"):
            running.folder, running.target = human[0], human[0]
            if name == "APPEND" and cmd.frame.literals:
                running.headers = _header_block(cmd.frame.literals[-1])
        elif name == "RENAME":
            running.folder, running.target = human[0], human[1] if len(human) > 1 else None
        elif name in ("COPY", "MOVE"):
            running.target = human[0] if human else None
        elif name == "STORE":
            running.flags = _store_flags(cmd)
        if name in ("FETCH", "STORE", "COPY", "MOVE") or (name == "EXPUNGE" and cmd.uid):
            running.messages = str(cmd.args[0]) if cmd.args else ""
            running.members = self._members(running.messages, cmd.uid)
        self._running[cmd.tag] = running
        self._order.append(cmd.tag)

    def expunging(self, tag: str, uids: list[int] | None) -> None:
        """The person's EXPUNGE or CLOSE (``tag``) removes only ``uids`` (None: whatever the
        provider reports while it runs); see :mod:`gateway.imap_proxy.expunge_plan`."""
        running = self._running.get(tag)
        if running is None:
            return
        running.expunging = True
        if uids is not None:
            running.uid, running.members = True, SequenceSet((u, u) for u in uids)

    @property
    def closing(self) -> bool:
        """True while expunge replies belong to a CLOSE (the client expects none: not relayed)."""
        running = self._oldest(_EXPUNGING)
        return running is not None and running.name == "CLOSE" and running.expunging

    def _oldest(self, names: frozenset[str] | set[str]) -> _Running | None:
        for tag in self._order:
            running = self._running.get(tag)
            if running is not None and running.name in names:
                return running
        return None

    # ------------------------------------------------------------------ provider replies
    def untagged(self, head: Head, frame: Frame) -> list[Happened]:
        name = head.name
        view = self._select_view if self._selecting is not None else self.view
        if name == "EXISTS" and head.number is not None and view is not None:
            view.exists(head.number)
        elif name == "FETCH" and head.number is not None:
            return self._fetched(frame, head.number)
        elif name == "EXPUNGE" and head.number is not None and self.view is not None:
            return self._left([self.view.expunge(head.number)])
        elif name == "VANISHED" and self.view is not None:
            return self._vanished(frame)
        elif name == "OK":
            return self._untagged_ok(parse_status(frame), view)
        return []

    def _untagged_ok(self, status: StatusResponse, view: MailboxView | None) -> list[Happened]:
        if status.code == "UIDVALIDITY" and view is not None and status.code_data.isdigit():
            view.uidvalidity = int(status.code_data)
        elif status.code == "COPYUID":  # MOVE reports it untagged (RFC 6851 §4.3)
            running = self._oldest({"MOVE"})
            if running is not None:
                _validity, pairs = _uid_pairs(status.code_data, self._size())
                running.moved.extend(pairs)
        return []

    def _fetched(self, frame: Frame, seq: int) -> list[Happened]:
        if self.view is None:
            return []
        data = parse_fetch(frame)
        if data is None:
            return self._unreadable_fetch(seq, frame)
        if data.uid is not None:
            self.view.learn(data.seq, data.uid)
        uid = data.uid if data.uid is not None else self.view.uid_of(data.seq)
        running = self._owner(data.seq, uid)
        if running is None:
            return []  # an unsolicited update about another message: another session's doing
        if running.name == "STORE":
            op, flags, silent = running.flags or ("", "", False)
            if silent:  # one row per message at the tagged OK (a CONDSTORE reply here only carries MODSEQ)
                return []
            return [Happened("flags", self.folder, self._ref(uid), {
                "change": op, "flags": flags, "now": list(data.flags) if data.flags is not None else None},
                data.seq)]
        kind = "body" if data.body else "headers" if data.headers else "metadata"
        return [Happened("fetch", self.folder, self._ref(uid), {
            "content": kind, "items": list(data.content + data.headers + data.other)}, data.seq)]

    def _unreadable_fetch(self, seq: int, frame: Frame) -> list[Happened]:
        """A FETCH reply the tokeniser cannot read (a BODYSTRUCTURE nested deeper than its limit:
        the sender of a PEC chooses that structure) still went to the person: a row that says
        what is known, rather than none.  Its UID, when it comes before any nested value, is
        read from the line itself."""
        match = _LEADING_UID.match(frame.lines[0])
        if match is not None and self.view is not None:
            self.view.learn(seq, int(match.group(1)))
        uid = self.view.uid_of(seq) if self.view is not None else None
        running = self._owner(seq, uid)
        if running is None or running.name != "FETCH":
            return []
        return [Happened("fetch", self.folder, self._ref(uid), {"content": "unknown", "items": []}, seq)]

    def _vanished(self, frame: Frame) -> list[Happened]:
        text = frame.lines[0].decode("latin-1").split()
        if len(text) < 3:
            return []
        try:
            uids = SequenceSet.parse(text[-1])
        except ValueError:
            return []
        earlier = "(EARLIER)" in (t.upper() for t in text)
        gone = self.view.vanished(uids, None if earlier else len(uids)) if self.view is not None else []
        if earlier:
            return []
        return self._left(list(gone))

    def _left(self, uids: list[int | None]) -> list[Happened]:
        """Messages removed from the folder: rows when the person's command removed them.

        A command naming UIDs (UID EXPUNGE, UID MOVE, the gateway's expunge for CLOSE) owns only
        the UIDs it named; another session's expunge reported meanwhile is not the person's.
        """
        running = self._oldest(_EXPUNGING)
        if running is None:
            return []
        if running.uid and running.members is not None:
            # a message whose UID the view never learnt may still be one the command named: its
            # row is kept (over-recorded rather than lost)
            uids = [u for u in uids if u is None or u in running.members]
        if running.name == "MOVE":
            running.left.extend(uids)  # the move rows, if the provider sends no COPYUID
            return []
        if running.name == "CLOSE" and not running.expunging:
            return []  # CLOSE itself reports nothing; only the gateway's expunge for it does
        return [Happened("expunge", self.folder, self._ref(uid), {"by": running.name}) for uid in uids]

    def tagged(self, tag: str, frame: Frame) -> list[Happened]:
        """A client command's tagged reply; what it confirmed."""
        running = self._running.pop(tag, None)
        if tag in self._order:
            self._order.remove(tag)
        status = parse_status(frame)
        rows = self._completed(tag, running, status)
        if self._deselect_after is not None:
            self._deselect_after.discard(tag)
            if not self._deselect_after:  # the last command relayed before the withdrawal
                self._deselect_after = None
                self.folder, self.view = None, None
        return rows

    def _completed(self, tag: str, running: _Running | None, status: StatusResponse) -> list[Happened]:
        ok = status.status == "OK"
        if self._selecting is not None and self._selecting[0] == tag:
            _tag, folder, examine = self._selecting
            self._selecting = None
            if not ok:
                self.folder, self.view = None, None
                return []
            self.folder, self.view = folder, self._select_view
            read_only = examine or status.code == "READ-ONLY"
            return [Happened("examine" if read_only else "select", folder, None, {
                "uidvalidity": self.view.uidvalidity if self.view is not None else None,
                "messages": len(self.view) if self.view is not None else None})]
        if running is None or not ok:
            return []
        return self._confirmed(running, status)

    def _confirmed(self, running: _Running, status: StatusResponse) -> list[Happened]:
        name = running.name
        if name in ("CLOSE", "UNSELECT"):
            self.folder, self.view = None, None
        elif name == "STORE" and running.flags is not None and running.flags[2]:
            return self._silent_store(running)
        elif name == "CREATE":
            return [Happened("folder_create", running.target)]
        elif name == "DELETE":
            return [Happened("folder_delete", running.target)]
        elif name == "RENAME":
            return [Happened("folder_rename", running.folder, None, {"to": running.target})]
        elif name == "APPEND":  # named from the message itself: the gateway has just relayed it
            validity, uid = _append_uid(status)
            ref = identity_from_headers(running.headers, validity, uid) if running.headers else MessageRef(validity, uid)
            return [Happened("append", running.target, ref)]
        elif name == "COPY":
            validity, pairs = self._copied(running, status)
            return [Happened("copy", running.folder, self._ref(src), {
                "to": running.target, "to_uidvalidity": validity, "to_uid": dst}) for src, dst in pairs]
        elif name == "MOVE":
            validity, pairs = (None, running.moved) if status.code != "COPYUID" else self._copied(running, status)
            if status.code != "COPYUID" and not running.moved:  # no UIDPLUS: what its expunges removed
                pairs = [(src, None) for src in running.left]
            return [Happened("move", running.folder, self._ref(src), {
                "to": running.target, "to_uid": dst}) for src, dst in pairs]
        return []

    def _copied(self, running: _Running, status: StatusResponse) -> tuple[int | None, list[tuple]]:
        """(destination UIDVALIDITY, [(source UID, destination UID)]) of a confirmed COPY or MOVE:
        from ``[COPYUID]``, or — at a provider without UIDPLUS — the messages the command named,
        with the destination unknown."""
        if status.code == "COPYUID":
            return _uid_pairs(status.code_data, self._size())
        return None, [(src, None) for _seq, src in self._named(running.messages, running.uid)]

    def _silent_store(self, running: _Running) -> list[Happened]:
        """``STORE … .SILENT`` sends no FETCH replies: one row per message of its set, as known
        (by number when its UID is not known yet, so the identity lookup can still name it)."""
        op, flags, _silent = running.flags or ("", "", True)
        return [Happened("flags", self.folder, self._ref(uid), {"change": op, "flags": flags, "now": None},
                         seq if uid is None else None)
                for seq, uid in self._named(running.messages, running.uid)]

    def _size(self) -> int:
        """How many messages the selected folder holds (at least 1: a bound, never a count)."""
        return max(len(self.view) if self.view is not None else 0, 1)

    def _named(self, text: str, uid: bool) -> list[tuple[int | None, int | None]]:
        """(number, UID) of the messages a sequence set (or UID set) names in the view, in folder
        order; however large the set, the work is bounded by the folder's size."""
        view = self.view
        members = self._members(text, uid)
        if view is None or members is None:
            return []
        if uid:
            return [(None, u) for u in members.among(view.uids())]
        return [(n, view.uid_of(n)) for n in range(1, len(view) + 1) if n in members]

    def _members(self, text: str, uid: bool) -> SequenceSet | None:
        """The sequence numbers (or UIDs) a command's set names, ``*`` as the last one; None when
        it cannot be known here (``$``, RFC 5182's saved result, or not a set at all)."""
        if self.view is None or not text or "$" in text:
            return None
        try:
            return SequenceSet.parse(text, last=self.view.last_uid if uid else len(self.view))
        except ValueError:
            return None

    def _owner(self, seq: int, uid: int | None) -> _Running | None:
        """The oldest running FETCH or STORE that asked about this message (mbsync pipelines
        one UID FETCH per message: each reply belongs to the one naming it)."""
        for tag in self._order:
            running = self._running.get(tag)
            if running is not None and running.name in ("FETCH", "STORE") and self._names(running, seq, uid):
                return running
        return None

    @staticmethod
    def _names(running: _Running, seq: int, uid: int | None) -> bool:
        """Is the message (``seq``, ``uid``) one the running command asked about?"""
        if running.members is None:
            return True
        if running.uid:
            return uid is not None and uid in running.members
        return seq in running.members

    def deselected(self) -> None:
        """The gateway itself left the folder (a policy reload withdrew it).  Commands relayed
        before still run in it and their replies still need the view: it goes when they are done."""
        if self._order:
            self._deselect_after = set(self._order)
        else:
            self.folder, self.view = None, None

    def _ref(self, uid: int | None) -> MessageRef:
        return MessageRef(self.view.uidvalidity if self.view is not None else None, uid)


#: ``* n FETCH (… UID u …`` with the UID among the leading flat items (before any list or string).
_LEADING_UID = re.compile(rb"^\* \d+ FETCH \((?:[^()\[\]{}\"]*? )?UID (\d+)[ )]", re.IGNORECASE)


def _header_block(message: bytes) -> bytes:
    """The header block of an uploaded message, at most as much as an identity lookup reads."""
    head = message[:IDENTITY_OCTETS]
    end = head.find(b"\r\n\r\n")
    return head[:end + 4] if end >= 0 else head


def _append_uid(status: StatusResponse) -> tuple[int | None, int | None]:
    """``[APPENDUID 38505 3955]`` (RFC 4315) → (38505, 3955)."""
    parts = status.code_data.split() if status.code == "APPENDUID" else []
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None, None


def _store_flags(cmd: Command) -> tuple[str, str, bool]:
    """``STORE 1:3 +FLAGS.SILENT (\\Seen)`` → ("+FLAGS", "\\Seen", True) (the guard has checked
    the syntax: an optional modifier list, the item, one flag list or bare flags)."""
    args = list(cmd.args[1:])
    if args and isinstance(args[0], list):
        args.pop(0)
    if not args:
        return "", "", False
    item = str(args[0]).upper()
    flags = args[1] if len(args) == 2 and isinstance(args[1], list) else args[1:]
    return item.removesuffix(".SILENT"), " ".join(str(f) for f in flags), item.endswith(".SILENT")
