"""How a person's EXPUNGE, or a CLOSE that expunges, is run so its audit rows are exactly theirs.

Two things make a plain relay wrong for the audit trail:

* **Another session's expunge arrives in the person's reply.**  A provider reports pending
  expunges with the next command's reply (RFC 3501 §7.4.1), so the ``* n EXPUNGE`` lines of the
  person's EXPUNGE may include messages a colleague removed a moment before.
* **CLOSE expunges silently** (RFC 3501 §6.4.2): no ``* EXPUNGE`` line says what left.

So, at a provider with UIDPLUS (RFC 4315), the gateway first asks ``SEARCH DELETED`` (the
command is held until every earlier one is done, so the flags it sees are the ones the
person's earlier STOREs set) and, for numbers whose UID it does not know yet, ``FETCH n (UID)``
(:class:`DeletedQuestion`; both by number, so no other session's expunge can be reported to a
client that has no command running, RFC 3501 §7.4.1), and then:

* EXPUNGE goes up as ``UID EXPUNGE <those UIDs>`` (or as NOOP when none is marked): it removes
  exactly what the person's EXPUNGE would have removed at that moment, and replies about other
  messages are someone else's;
* CLOSE becomes the gateway's own ``UID EXPUNGE <those UIDs>``, whose replies are recorded and
  not shown (a closing client expects none), then the client's command as UNSELECT (RFC 3691),
  which removes nothing more — or as the CLOSE itself at a provider without UNSELECT.

Without UIDPLUS, EXPUNGE is relayed as it came and CLOSE is preceded by the gateway's own plain
EXPUNGE: every expunge reported meanwhile is then written as the person's — a colleague's
simultaneous expunge may appear twice in the trail, but nothing the person removed goes
unrecorded.  So many scattered messages marked that their UID set would make a command line
longer than :data:`~gateway.imap_proxy.sequence_set.MAX_SET_TEXT` are expunged the same way,
with the rows still limited to the UIDs found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import re

from gateway.imap_proxy.commands import Command
from gateway.imap_proxy.framing import Frame
from gateway.imap_proxy.mailbox_view import MailboxView
from gateway.imap_proxy.responses import parse_status
from gateway.imap_proxy.sequence_set import format_chunks, format_numbers

__all__ = ["DeletedQuestion", "ExpungePlan", "PendingQuestion", "plan_expunge"]

_UID_ONLY = re.compile(rb"^\* (\d+) FETCH \(UID (\d+)\)\r\n$", re.IGNORECASE)


@dataclass(frozen=True)
class ExpungePlan:
    """What to send: ``own`` first (the gateway's tags), then ``frame`` under the client's tag.

    ``uids`` are the messages the person's command may remove (None: not known, every expunge
    reported meanwhile counts).
    """

    frame: Frame
    uids: list[int] | None
    own: list[bytes] = field(default_factory=list)


class DeletedQuestion:
    """The gateway's question before a held expunge: which messages are marked \\Deleted now,
    by UID.  First a ``NOOP`` (sent together with the search): another session's expunges still
    pending for this connection are reported by it (and relayed: the client's EXPUNGE or CLOSE
    is in progress), so a message a colleague already removed is neither found nor written as
    the person's.  Then ``SEARCH DELETED`` gives numbers, and ``FETCH n (UID)`` their UIDs;
    neither may carry EXPUNGE replies, so the numbers hold.  (A colleague's expunge in the round
    trip between the search and the expunge can still be reported in its reply.)"""

    answer = "SEARCH"  # the untagged reply that answers the current step

    def __init__(self, tagger, view_of, *, noop_tag: str, unnamed=lambda n: False, item: str = "",
                 on_fetch=lambda frame: None) -> None:
        """``view_of()``: the selected folder's view when the question is asked (a SELECT
        pipelined before the expunge is done by then).  ``unnamed(n)``: is message ``n``'s
        identity still to be looked up?  Those are fetched with ``item`` too, and each reply
        goes to ``on_fetch`` (the identity lookups): once expunged, a message can no longer be
        asked who it was."""
        self._tagger, self._view_of = tagger, view_of
        self._unnamed, self._item, self._on_fetch = unnamed, item, on_fetch
        self.prelude = [b"%s NOOP\r\n" % noop_tag.encode()]  # its reply is consumed as the gateway's
        self.tag = tagger()
        self.line = b"%s SEARCH DELETED\r\n" % self.tag.encode()
        self.seqs: list[int] = []
        self.failed = False

    @property
    def _view(self) -> MailboxView | None:
        return self._view_of()

    def collect(self, frame: Frame) -> bool:
        """One untagged reply while the question runs: True when it answers the question.
        Anything else (another session's flag change, say) is the client's as usual."""
        if self.answer == "SEARCH":
            self.seqs += [int(w) for w in frame.lines[0].split()[2:] if w.isdigit()]
            return True
        return _answer_to_uid_fetch(frame, self._view, self._on_fetch)

    def answered(self, frame: Frame) -> bytes | None:
        """The step's tagged reply: the next command to send, or None when the answer is in."""
        if parse_status(frame).status != "OK" or self._view is None:
            self.failed = True
            return None
        if self.answer == "FETCH" or not self.seqs:
            return None
        # every number found is asked its UID: the view's mapping can be stale (a VANISHED
        # naming a message whose number was never learnt), and an expunge of the wrong UID
        # would be worse than one more round trip
        unnamed = any(self._unnamed(n) for n in self.seqs)
        self.answer = "FETCH"
        self.tag = self._tagger()
        chunks = format_chunks(self.seqs)
        which = chunks[0] if len(chunks) == 1 else "1:*"  # one bounded line, whatever the set
        items = f"UID {self._item}".strip() if len(chunks) == 1 and unnamed else "UID"
        self.line = b"%s FETCH %s (%s)\r\n" % (self.tag.encode(), which.encode(), items.encode())
        return self.line

    def deleted(self) -> list[int] | None:
        """The UIDs marked, or None when the question failed (the expunge then goes unfiltered)."""
        if self.failed or self._view is None:
            return None
        uids = [self._view.uid_of(n) for n in self.seqs]
        return None if None in uids else sorted(u for u in uids if u is not None)


class PendingQuestion:
    """Before a client's ``UID EXPUNGE``: the ``NOOP``, so another session's expunges still
    pending for this connection — of a message in the person's set, say — are reported before
    the person's command and not taken for its doing; and, for messages it announces that the
    view cannot name yet, ``FETCH n (UID <identity>)``, so the expunge rows name them.  The
    command then goes as it came."""

    failed = False

    def __init__(self, noop_tag: str, tagger, view_of, *, item: str = "", on_fetch=lambda frame: False) -> None:
        self.tag = noop_tag
        self.line = b"%s NOOP\r\n" % noop_tag.encode()
        self.answer: str | None = None  # no untagged reply answers a NOOP: whatever comes is relayed
        self._tagger, self._view_of, self._item, self._on_fetch = tagger, view_of, item, on_fetch

    def collect(self, frame: Frame) -> bool:
        return _answer_to_uid_fetch(frame, self._view_of(), self._on_fetch)

    def answered(self, frame: Frame) -> bytes | None:
        view = self._view_of()
        unknown = view.unknown() if view is not None and self.answer is None else []
        chunks = format_chunks(unknown)
        if len(chunks) != 1:
            return None
        self.answer = "FETCH"
        self.tag = self._tagger()
        self.line = b"%s FETCH %s (UID %s)\r\n" % (self.tag.encode(), chunks[0].encode(), self._item.encode())
        return self.line

    def deleted(self) -> list[int] | None:
        return None  # the command's own UID set limits its rows


def _answer_to_uid_fetch(frame: Frame, view: MailboxView | None, on_fetch) -> bool:
    """A reply to the gateway's ``FETCH n (UID …)``: ``(UID u)`` alone teaches the view, one with
    the identity item goes to the identity lookups (``on_fetch``); True when it was either."""
    match = _UID_ONLY.match(frame.lines[0]) if not frame.literals else None
    if match is None:
        return on_fetch(frame)
    if view is not None:
        view.learn(int(match.group(1)), int(match.group(2)))
    return True


def plan_expunge(cmd: Command, deleted: list[int] | None, *, own_tag: str, unselect: bool) -> ExpungePlan:
    """The plan for a client's EXPUNGE or expunging CLOSE, given the UIDs marked \\Deleted (None
    when not known: no UIDPLUS, or the question failed)."""
    tag = cmd.tag.encode()
    long = deleted is not None and len(format_chunks(deleted)) > 1  # a line too long for the provider
    close = Frame((b"%s UNSELECT\r\n" % tag,)) if unselect else cmd.frame
    if cmd.name == "EXPUNGE":
        if deleted is None or long:
            return ExpungePlan(cmd.frame, deleted)
        if not deleted:
            return ExpungePlan(Frame((b"%s NOOP\r\n" % tag,)), [])
        return ExpungePlan(Frame((b"%s UID EXPUNGE %s\r\n" % (tag, format_numbers(deleted).encode()),)), deleted)
    if deleted is None or long:
        return ExpungePlan(close, deleted, [b"%s EXPUNGE\r\n" % own_tag.encode()])
    if not deleted:
        return ExpungePlan(close, [])
    return ExpungePlan(close, deleted, [b"%s UID EXPUNGE %s\r\n" % (own_tag.encode(), format_numbers(deleted).encode())])
