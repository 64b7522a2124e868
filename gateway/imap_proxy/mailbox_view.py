"""The selected folder as the client sees it: message sequence numbers mapped to UIDs.

Clients name messages by sequence number as often as by UID, and the audit trail must record
UIDs (with UIDVALIDITY) — sequence numbers shift with every expunge.  The view is kept only from
what the provider says, in the order it says it (RFC 3501 §7.4.1: "* n EXPUNGE ... the message
sequence number of each successive message in the mailbox is immediately decremented by 1"):

* ``* n EXISTS`` grows the view (new messages, UIDs not yet known);
* ``* n FETCH (… UID u …)`` teaches one mapping;
* ``* n EXPUNGE`` removes one position, returning the UID that left (if known);
* ``* VANISHED [(EARLIER)] uid-set`` (RFC 7162) removes by UID.

Positions whose UID is unknown are listed by :meth:`MailboxView.unknown`, so the gateway can
ask the provider with its own ``FETCH n:m (UID)`` between client commands.
"""

from __future__ import annotations

from typing import Container

__all__ = ["MailboxView"]


class MailboxView:
    """Sequence number → UID for one selected folder (``uidvalidity`` from SELECT's reply)."""

    def __init__(self, uidvalidity: int | None = None, exists: int = 0) -> None:
        self.uidvalidity = uidvalidity
        self._uids: list[int | None] = [None] * exists
        self.forgot = False  # mappings were dropped (see vanished): the gateway should map again
        self.arrivals = 0  # counts EXISTS growths: new messages the gateway may not have mapped

    def __len__(self) -> int:
        return len(self._uids)

    def exists(self, count: int) -> None:
        """``* n EXISTS``: the folder now has ``count`` messages (new ones at the end)."""
        if count > len(self._uids):
            self._uids.extend([None] * (count - len(self._uids)))
            self.arrivals += 1
        elif count < len(self._uids):  # only after expunges the view missed: keep the first ones
            del self._uids[count:]

    def learn(self, seq: int, uid: int) -> None:
        """``* seq FETCH (UID uid …)``."""
        if seq > len(self._uids):
            self.exists(seq)
        self._uids[seq - 1] = uid

    def uid_of(self, seq: int) -> int | None:
        return self._uids[seq - 1] if 0 < seq <= len(self._uids) else None

    def seq_of(self, uid: int) -> int | None:
        try:
            return self._uids.index(uid) + 1
        except ValueError:
            return None

    def expunge(self, seq: int) -> int | None:
        """``* seq EXPUNGE``: remove that position; return the UID that left, if it was known."""
        if not 0 < seq <= len(self._uids):
            return None
        return self._uids.pop(seq - 1)

    def vanished(self, gone: Container[int], count: int | None = None) -> list[int]:
        """``* VANISHED``: remove these UIDs (a set or a :class:`SequenceSet`); return those
        that were in the view.

        ``count`` is how many messages left (a VANISHED without EARLIER names only messages
        that were there).  When some of them had positions whose UID the view never learnt,
        which positions left is not said: every mapping from the first unknown position on is
        forgotten (to be asked again), never guessed — a wrong guess would name, or expunge,
        the wrong message.
        """
        present = [u for u in self._uids if u is not None and u in gone]
        if present:
            self._uids = [u for u in self._uids if u is None or u not in gone]
        missing = (count or 0) - len(present)
        if missing > 0 and None in self._uids:
            first = self._uids.index(None)
            self._uids[first:] = [None] * max(0, len(self._uids) - first - missing)
            self.forgot = True
        return present

    def seqs_of(self, uids) -> list[int]:
        """The current sequence numbers of those UIDs that are in the view, ascending."""
        wanted = set(uids)
        return [i + 1 for i, u in enumerate(self._uids) if u is not None and u in wanted]

    def uids(self) -> list[int]:
        """The known UIDs, in sequence order."""
        return [u for u in self._uids if u is not None]

    @property
    def last_uid(self) -> int:
        """The largest known UID (what ``*`` means in a UID set), 0 when none is known."""
        return max(self.uids(), default=0)

    def unknown(self) -> list[int]:
        """Sequence numbers whose UID is not known yet, ascending."""
        return [i + 1 for i, u in enumerate(self._uids) if u is None]
