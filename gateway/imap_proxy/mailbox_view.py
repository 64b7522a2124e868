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

__all__ = ["MailboxView", "parse_uid_set"]


def parse_uid_set(text: str, *, limit: int = 1_000_000) -> list[int]:
    """``"1:3,7"`` → ``[1, 2, 3, 7]`` (RFC 3501 sequence-set of UIDs, no ``*``); raises ValueError.

    ``limit`` bounds the expansion: a hostile ``1:4294967295`` must not allocate gigabytes.
    """
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.partition(":")
        a = int(lo)
        b = int(hi) if sep else a
        if a <= 0 or b <= 0:
            raise ValueError(f"not a UID: {part!r}")
        a, b = min(a, b), max(a, b)
        if len(out) + (b - a + 1) > limit:
            raise ValueError(f"UID set larger than {limit}")
        out.extend(range(a, b + 1))
    return out


class MailboxView:
    """Sequence number → UID for one selected folder (``uidvalidity`` from SELECT's reply)."""

    def __init__(self, uidvalidity: int | None = None, exists: int = 0) -> None:
        self.uidvalidity = uidvalidity
        self._uids: list[int | None] = [None] * exists

    def __len__(self) -> int:
        return len(self._uids)

    def exists(self, count: int) -> None:
        """``* n EXISTS``: the folder now has ``count`` messages (new ones at the end)."""
        if count > len(self._uids):
            self._uids.extend([None] * (count - len(self._uids)))
        elif count < len(self._uids):  # only after expunges the view missed: keep the first ones
            del self._uids[count:]

    def learn(self, seq: int, uid: int) -> None:
        """``* seq FETCH (UID uid …)``."""
        if seq > len(self._uids):
            self.exists(seq)
        self._uids[seq - 1] = uid

    def assign(self, uids: list[int]) -> None:
        """The whole mapping at once, in sequence order (from ``UID SEARCH ALL``)."""
        self._uids = list(uids)

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

    def vanished(self, uids: list[int]) -> list[int]:
        """``* VANISHED``: remove these UIDs; return those that were in the view."""
        gone = set(uids)
        present = [u for u in self._uids if u in gone]
        if present:
            self._uids = [u for u in self._uids if u not in gone]
        return present

    def unknown(self) -> list[int]:
        """Sequence numbers whose UID is not known yet, ascending."""
        return [i + 1 for i, u in enumerate(self._uids) if u is None]
