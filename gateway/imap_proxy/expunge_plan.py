"""How a person's EXPUNGE, or a CLOSE that expunges, is run so its audit rows are exactly theirs.

Two things make a plain relay wrong for the audit trail:

* **Another session's expunge arrives in the person's reply.**  A provider reports pending
  expunges with the next command's reply (RFC 3501 §7.4.1), so the ``* n EXPUNGE`` lines of the
  person's EXPUNGE may include messages a colleague removed a moment before.
* **CLOSE expunges silently** (RFC 3501 §6.4.2): no ``* EXPUNGE`` line says what left.

So, at a provider with UIDPLUS (RFC 4315), the gateway first asks ``UID SEARCH DELETED`` (the
command is held until every earlier one is done, so the flags it sees are the ones the
person's earlier STOREs set), and then:

* EXPUNGE goes up as ``UID EXPUNGE <those UIDs>`` (or as NOOP when none is marked): it removes
  exactly what the person's EXPUNGE would have removed at that moment, and replies about other
  messages are someone else's;
* CLOSE becomes the gateway's own ``UID EXPUNGE <those UIDs>``, whose replies are recorded and
  not shown (a closing client expects none), then the client's command as UNSELECT (RFC 3691),
  which removes nothing more — or as the CLOSE itself at a provider without UNSELECT.

Without UIDPLUS, EXPUNGE is relayed as it came and CLOSE is preceded by the gateway's own plain
EXPUNGE: every expunge reported meanwhile is then written as the person's — a colleague's
simultaneous expunge may appear twice in the trail, but nothing the person removed goes
unrecorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.imap_proxy.commands import Command
from gateway.imap_proxy.framing import Frame
from gateway.imap_proxy.sequence_set import format_numbers

__all__ = ["ExpungePlan", "plan_expunge", "search_deleted"]


@dataclass(frozen=True)
class ExpungePlan:
    """What to send: ``own`` first (the gateway's tags), then ``frame`` under the client's tag.

    ``uids`` are the messages the person's command may remove (None: not known, every expunge
    reported meanwhile counts).
    """

    frame: Frame
    uids: list[int] | None
    own: list[bytes] = field(default_factory=list)


def search_deleted(own_tag: str) -> bytes:
    """The gateway's question before an expunge: which messages are marked \\Deleted now."""
    return b"%s UID SEARCH DELETED\r\n" % own_tag.encode()


def plan_expunge(cmd: Command, deleted: list[int] | None, *, own_tag: str, unselect: bool) -> ExpungePlan:
    """The plan for a client's EXPUNGE or expunging CLOSE, given the UIDs marked \\Deleted (None
    when not known: no UIDPLUS, or the search failed)."""
    tag = cmd.tag.encode()
    if cmd.name == "EXPUNGE":
        if deleted is None:
            return ExpungePlan(cmd.frame, None)
        if not deleted:
            return ExpungePlan(Frame((b"%s NOOP\r\n" % tag,)), [])
        return ExpungePlan(Frame((b"%s UID EXPUNGE %s\r\n" % (tag, format_numbers(deleted).encode()),)), deleted)
    close = Frame((b"%s UNSELECT\r\n" % tag,)) if unselect else cmd.frame
    if deleted is None:
        return ExpungePlan(close, None, [b"%s EXPUNGE\r\n" % own_tag.encode()])
    if not deleted:
        return ExpungePlan(close, [])
    return ExpungePlan(close, deleted, [b"%s UID EXPUNGE %s\r\n" % (own_tag.encode(), format_numbers(deleted).encode())])
