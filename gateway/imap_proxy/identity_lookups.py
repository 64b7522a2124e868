"""Audit rows waiting for their message's identity, and the gateway's own commands that find it.

Pure: the session hands over what happened (:meth:`IdentityLookups.settle`), asks at each quiet
moment which of its own commands to send (:meth:`commands` — only when nothing of the client's
is in flight, so every reply in between is the gateway's), and passes on the replies
(:meth:`untagged`, :meth:`tagged`).  Two kinds of command:

* **priming**, after a SELECT/EXAMINE: ``UID SEARCH ALL`` maps every sequence number to its UID
  (RFC 3501 §6.4.4: UIDs come back in ascending order, which is sequence order), then one
  ``UID FETCH`` of the identity headers of the messages not yet in the cache — the most recent
  :data:`PRIME_LIMIT` of them.  Rows about messages that leave the folder (EXPUNGE, MOVE) are
  then named even if nobody fetched those messages first;
* **lookups** for rows that still miss an identity (a message that arrived after the SELECT);
* for the receipts among the messages just identified, their **daticert.xml**, which alone
  carries the identificativo of the message they certify
  (:mod:`gateway.imap_proxy.receipt_identity`).

A row is never dropped: whatever cannot be looked up is written with what is known, and every
waiting row is written when the session ends (:meth:`flush`).
"""

from __future__ import annotations

from dataclasses import replace

from gateway.audit.events import MessageRef
from gateway.imap_proxy.audit_trail import AuditTrail, Happened
from gateway.imap_proxy.fetch_response import read_fetch
from gateway.imap_proxy.framing import Frame
from gateway.imap_proxy.identity import IDENTITY_ITEM, IdentityCache, fetch_identity_item, identity_from_headers
from gateway.imap_proxy.receipt_identity import is_receipt, located_part, part_identificativo, part_line, structure_line
from gateway.imap_proxy.responses import Head, parse_status
from gateway.imap_proxy.sequence_set import format_numbers

__all__ = ["IdentityLookups", "PRIME_LIMIT"]

#: Identities fetched ahead after a SELECT, newest first: enough for the PEC anyone works on,
#: bounded for folders of a hundred thousand messages (older ones are looked up when touched).
PRIME_LIMIT = 5000
_LOOKUP_ACTIONS = frozenset({"fetch", "flags", "copy"})  # rows whose message is still in the folder


class IdentityLookups:
    """One session's waiting rows and identity commands; ``cache`` is shared by all sessions."""

    def __init__(self, cache: IdentityCache, mailbox: str | None, trail: AuditTrail, tag_prefix: str) -> None:
        self.cache, self.mailbox, self.trail, self._prefix = cache, mailbox, trail, tag_prefix
        self.unresolved: list[Happened] = []
        self.outstanding: set[str] = set()
        self.prime_wanted = False
        self._search: tuple[str, list[int]] | None = None  # our UID SEARCH ALL and its UIDs
        self._receipts: list[int] = []  # UIDs just identified as receipts: their daticert is next
        self._structures: tuple[str, dict] | None = None  # our BODYSTRUCTURE fetch: UID -> part
        self._parts: dict[str, tuple[str, str]] = {}  # our part fetches: tag -> (section, encoding)
        self._count = 0

    @property
    def waiting(self) -> bool:
        """True while rows or gateway commands are pending (the client is then not read)."""
        return bool(self.unresolved or self.outstanding or self.prime_wanted)

    # ------------------------------------------------------------------ rows
    def _key(self, folder: str | None, ref: MessageRef) -> tuple:
        return (self.mailbox, folder, ref.uidvalidity, ref.uid)

    def named(self, h: Happened) -> Happened:
        """``h`` with its message's identity, when the view and the cache know it."""
        ref = h.message
        if ref is None or ref.message_id is not None:
            return h
        view = self.trail.view
        if (ref.uid is None and h.seq is not None and view is not None and self._current(h)):
            uid = view.uid_of(h.seq)
            ref = replace(ref, uid=uid) if uid is not None else ref
        known = self.cache.get(self._key(h.folder, ref)) if ref.uid is not None else None
        return replace(h, message=known or ref)

    def settle(self, records: list[Happened]) -> list[Happened]:
        """The rows that can be written now; the others wait for a lookup."""
        ready = []
        for h in records:
            if h.action in ("select", "examine"):
                self.prime_wanted = True
            h = self.named(h)
            if h.message is not None and h.message.message_id is None and self._can_look_up(h):
                self.unresolved.append(h)
            else:
                ready.append(h)
        return ready

    def _current(self, h: Happened) -> bool:
        """Is the row about the folder selected now (same name, same UIDVALIDITY)?"""
        view = self.trail.view
        return (view is not None and h.folder == self.trail.folder and h.message is not None
                and h.message.uidvalidity == view.uidvalidity)

    def _can_look_up(self, h: Happened) -> bool:
        return (h.action in _LOOKUP_ACTIONS and self._current(h) and h.message is not None
                and (h.message.uid is not None or h.seq is not None))

    def expunged(self, seq: int) -> None:
        """``* seq EXPUNGE``: waiting rows known by number follow the renumbering (RFC 3501
        §7.4.1); the row about the message that left keeps what it has."""
        shifted = []
        for h in self.unresolved:
            if h.message is not None and h.message.uid is None and h.seq is not None and self._current(h):
                h = replace(h, seq=None if h.seq == seq else h.seq - 1 if h.seq > seq else h.seq)
            shifted.append(h)
        self.unresolved = shifted

    def flush(self) -> list[Happened]:
        """Every waiting row, named as well as possible now."""
        rows = [self.named(h) for h in self.unresolved]
        self.unresolved = []
        return rows

    # ------------------------------------------------------------------ the gateway's commands
    def _tag(self, kind: str) -> str:
        self._count += 1
        tag = f"{self._prefix}{kind}{self._count}"
        self.outstanding.add(tag)
        return tag

    def commands(self) -> tuple[list[bytes], list[Happened]]:
        """At a quiet moment: the commands to send now, and rows that can no longer wait."""
        if self.outstanding:
            return [], []
        view = self.trail.view
        if self.prime_wanted:
            self.prime_wanted = False
            if view is not None and len(view):
                tag = self._tag("s")
                self._search = (tag, [])
                return [f"{tag} UID SEARCH ALL\r\n".encode()], []
        named = [self.named(h) for h in self.unresolved]
        ready = [h for h in named if h.message and h.message.message_id]
        if ready:
            self.unresolved = [h for h in named if not (h.message and h.message.message_id)]
        stale = [h for h in self.unresolved if not self._can_look_up(h)]  # another folder now
        if stale:
            self.unresolved = [h for h in self.unresolved if self._can_look_up(h)]
            ready += stale
        if not self.unresolved:
            return [], ready
        uids = sorted({h.message.uid for h in self.unresolved if h.message and h.message.uid is not None})
        seqs = sorted({h.seq for h in self.unresolved if h.message and h.message.uid is None and h.seq})
        if view is None or not (uids or seqs):
            return [], ready + self.flush()
        lines = [self._fetch_line(uids, uid=True)] if uids else []
        if seqs:
            lines.append(self._fetch_line(seqs, uid=False))
        return lines, ready

    def _fetch_line(self, numbers: list[int], *, uid: bool) -> bytes:
        verb = "UID FETCH" if uid else "FETCH"
        return f"{self._tag('i')} {verb} {format_numbers(numbers)} (UID {IDENTITY_ITEM})\r\n".encode()

    # ------------------------------------------------------------------ their replies
    def untagged(self, head: Head, frame: Frame) -> bool:
        """A reply to one of the gateway's commands: taken, never shown to the client."""
        if head.name == "SEARCH" and self._search is not None:
            words = frame.lines[0].split()[2:]
            self._search[1].extend(int(w) for w in words if w.isdigit())
            if self.trail.view is not None:
                # now, not at the tagged OK: an EXPUNGE may follow the SEARCH line (Dovecot sends
                # pending expunges before the OK) and must apply to this mapping
                self.trail.view.assign(self._search[1])
            return True
        if head.name == "FETCH" and self.outstanding:
            return self._identity(frame) or self._receipt_reply(frame)
        return False

    def _receipt_reply(self, frame: Frame) -> bool:
        """A reply to the gateway's BODYSTRUCTURE or daticert fetch (see receipt_identity)."""
        read = read_fetch(frame)
        if read is None:
            return False
        items = read[2]
        if self._structures is not None and (found := located_part(items)) is not None:
            uid, part = found
            if uid is not None and part is not None:
                self._structures[1][uid] = part
            return True  # with or without a daticert: the answer to the gateway's question
        for section, encoding in self._parts.values():
            got = part_identificativo(items, section, encoding)
            if got is not None:
                self._learn_identificativo(*got)
                return True
        return False

    def _learn_identificativo(self, uid: int | None, identificativo: str | None) -> None:
        view = self.trail.view
        if view is None or uid is None or identificativo is None:
            return
        key = self._key(self.trail.folder, MessageRef(view.uidvalidity, uid))
        ref = self.cache.get(key)
        if ref is not None:
            pec_id = identificativo if identificativo.startswith("<") else f"<{identificativo}>"
            self.cache.put(key, replace(ref, pec_id=pec_id))  # written like a busta's Message-ID

    def _identity(self, frame: Frame) -> bool:
        read = read_fetch(frame)
        if read is None:
            return False
        seq, _name, items = read
        block = fetch_identity_item(items) if isinstance(items, list) else None
        if block is None:
            return False
        view = self.trail.view
        uid = next((int(v) for k, v in zip(items[::2], items[1::2])
                    if str(k).upper() == "UID" and str(v).isdigit()), None)
        if view is not None and uid is not None and str(seq).isdigit():
            view.learn(int(seq), uid)
            ref = identity_from_headers(block, view.uidvalidity, uid)
            self.cache.put(self._key(self.trail.folder, ref), ref)
            if is_receipt(ref):
                self._receipts.append(uid)
        return True

    def tagged(self, tag: str, frame: Frame) -> tuple[list[bytes], list[Happened]]:
        """One of the gateway's commands is done: what to send next, and rows now complete."""
        self.outstanding.discard(tag)
        if self._search is not None and self._search[0] == tag:
            _tag, uids = self._search
            self._search = None
            view = self.trail.view
            if view is not None and parse_status(frame).status == "OK":
                present = {view.uid_of(n) for n in range(1, len(view) + 1)}
                missing = [u for u in uids if u in present and self.cache.get(
                    self._key(self.trail.folder, MessageRef(view.uidvalidity, u))) is None]
                if missing:
                    return [self._fetch_line(missing[-PRIME_LIMIT:], uid=True)], []
        ok = parse_status(frame).status == "OK"
        if self._structures is not None and self._structures[0] == tag:
            found = self._structures[1] if ok else {}
            self._structures = None
            lines = self._part_lines(found)
            return (lines, []) if lines else ([], self.flush())
        self._parts.pop(tag, None)
        if self.outstanding:
            return [], []
        if self._receipts and self.trail.view is not None:  # identified: now the receipts' daticert
            tag = self._tag("b")
            self._structures = (tag, {})
            uids, self._receipts = sorted(set(self._receipts)), []
            return [structure_line(tag, uids)], []
        self._receipts = []
        return [], self.flush()  # asked once: what is still unknown is written as it is

    def _part_lines(self, found: dict) -> list[bytes]:
        """One fetch per distinct daticert section (most receipts of a provider share one)."""
        by_section: dict[tuple[str, str], list[int]] = {}
        for uid, part in found.items():
            by_section.setdefault((part.section, part.encoding), []).append(uid)
        lines = []
        for (section, encoding), uids in sorted(by_section.items()):
            tag = self._tag("d")
            self._parts[tag] = (section, encoding)
            lines.append(part_line(tag, sorted(uids), section))
        return lines
