"""Audit rows waiting for their message's identity, and the gateway's own commands that find it.

Pure: the session hands over what happened (:meth:`IdentityLookups.settle`), asks at each quiet
moment which of its own commands to send (:meth:`commands` — only when nothing of the client's
is in flight, so every reply in between is the gateway's), and passes on the replies
(:meth:`untagged`, :meth:`tagged`).  Two kinds of command:

* **priming**, after a SELECT/EXAMINE: ``FETCH 1:* (UID)`` maps every sequence number to its
  UID, then ``FETCH`` of the identity headers of the messages not yet in the cache — the most
  recent :data:`PRIME_LIMIT` of them.  Rows about messages that leave the folder (EXPUNGE,
  MOVE) are then named even if nobody fetched those messages first;
* **lookups** for rows that still miss an identity (a message that arrived after the SELECT);
* for the receipts among the messages just identified, their **daticert.xml**, which alone
  carries the identificativo of the message they certify
  (:mod:`gateway.imap_proxy.receipt_identity`).

A row is never dropped: whatever cannot be looked up is written with what is known, and every
waiting row is written when the session ends (:meth:`flush`).
"""

from __future__ import annotations

import re
from dataclasses import replace

from gateway.audit.events import MessageRef
from gateway.imap_proxy.audit_trail import AuditTrail, Happened
from gateway.imap_proxy.fetch_response import read_fetch
from gateway.imap_proxy.framing import Frame
from gateway.imap_proxy.identity import (IDENTITY_ITEM, IdentityCache, fetch_identity_item, has_identity_item,
                                         identity_from_headers)
from gateway.imap_proxy.receipt_identity import (is_receipt, located_part, part_identificativo, part_lines,
                                                 structure_lines)
from gateway.imap_proxy.responses import Head, parse_status
from gateway.imap_proxy.sequence_set import format_chunks

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
        self._mapping: str | None = None  # our FETCH 1:* (UID), mapping every number to its UID
        self.for_client: list[bytes] = []  # flag changes folded into replies to our questions
        self._asked_at: tuple = ()  # (view, its arrivals count) when unmapped messages were last asked about
        self._receipts: list[int] = []  # UIDs just identified as receipts: their daticert is next
        self._structures: tuple[set[str], dict] | None = None  # our BODYSTRUCTURE fetches: UID -> part
        self._parts: dict[str, tuple[str, str]] = {}  # our part fetches: tag -> (section, encoding)
        self._count = 0

    @property
    def waiting(self) -> bool:
        """True while rows or gateway commands are pending (the client is then not read)."""
        return bool(self.unresolved or self.outstanding or self.prime_wanted or self._arrivals_unasked())

    def _arrivals_unasked(self) -> bool:
        """Did the folder change size (messages arrived: ``* n EXISTS``) since its unmapped
        messages were last asked about, with some unmapped?  They are asked before the client's
        next command is read, so a ``UID STORE``/``UID EXPUNGE`` of a new message finds it mapped
        and named — the client may know its UID already (a UID SEARCH), the gateway must too."""
        view = self.trail.view
        return view is not None and self._asked_at != (id(view), view.arrivals) and bool(view.unknown())

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
    # All by sequence number (FETCH, never UID FETCH or UID SEARCH): RFC 3501 §7.4.1 forbids
    # EXPUNGE replies during a FETCH, while a UID command may carry another session's expunges,
    # which would reach the client while no command of its own runs and shift the numbers of
    # the commands it has already sent.  Sets are split so no command line grows past a bound.
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
                self._mapping = self._tag("s")
                return [f"{self._mapping} FETCH 1:* (UID)\r\n".encode()], []
        arrivals: list[int] = []
        if view is not None and self._asked_at != (id(view), view.arrivals):
            self._asked_at = (id(view), view.arrivals)
            arrivals = view.unknown()
        named = [self.named(h) for h in self.unresolved]
        ready = [h for h in named if h.message and h.message.message_id]
        if ready:
            self.unresolved = [h for h in named if not (h.message and h.message.message_id)]
        stale = [h for h in self.unresolved if not self._can_look_up(h)]  # another folder now
        if stale:
            self.unresolved = [h for h in self.unresolved if self._can_look_up(h)]
            ready += stale
        if not self.unresolved and not arrivals:
            return [], ready
        uids = {h.message.uid for h in self.unresolved if h.message and h.message.uid is not None}
        seqs = {h.seq for h in self.unresolved if h.message and h.message.uid is None and h.seq} | set(arrivals)
        if view is not None:
            seqs |= set(view.seqs_of(uids))
        if view is None or not seqs:
            return [], ready + self.flush()
        return self._identity_lines(sorted(seqs)), ready

    def unnamed(self, seq: int) -> bool:
        """Is message ``seq`` of the selected folder not yet identified (its UID or identity)?"""
        view = self.trail.view
        uid = view.uid_of(seq) if view is not None else None
        return uid is None or self.cache.get(self._key(self.trail.folder, MessageRef(view.uidvalidity, uid))) is None

    def absorb(self, frame: Frame) -> bool:
        """A reply to an identity fetch made on the gateway's behalf elsewhere (before an
        expunge): True when it was one."""
        read = read_fetch(frame)
        return read is not None and self._identity(read)

    def _identity_lines(self, seqs: list[int]) -> list[bytes]:
        return [f"{self._tag('i')} FETCH {chunk} (UID {IDENTITY_ITEM})\r\n".encode() for chunk in format_chunks(seqs)]

    # ------------------------------------------------------------------ their replies
    def untagged(self, head: Head, frame: Frame) -> bool:
        """A reply to one of the gateway's commands: taken, never shown to the client."""
        if head.name != "FETCH" or not self.outstanding:
            return False
        if self._mapping is not None and self._uid_only(head, frame):
            return True
        read = read_fetch(frame)
        if read is None:
            # not even tokenisable (e.g. a BODYSTRUCTURE nested past the limit): while only the
            # gateway's own fetch of structures or parts runs, it is the answer to it
            return self._structures is not None or bool(self._parts)
        if not (self._identity(read) or self._receipt_reply(read[2])):
            return False
        self._pass_on_flags(read)
        return True

    def _pass_on_flags(self, read: tuple) -> None:
        """A server may fold a message's changed FLAGS into any FETCH reply about it (RFC 3501
        §7.4.2), the gateway's own included: that part is the client's, passed on as an
        unsolicited ``* n FETCH (FLAGS … UID …)``."""
        seq, _name, items = read
        pairs = dict((str(k).upper(), v) for k, v in zip(items[::2], items[1::2]))
        flags = pairs.get("FLAGS")
        if not isinstance(flags, list) or not str(seq).isdigit():
            return
        parts = [b"FLAGS (%s)" % " ".join(str(f) for f in flags).encode("utf-8", "replace")]
        for key in ("UID", "MODSEQ"):
            value = pairs.get(key)
            if isinstance(value, list):
                parts.append(b"%s (%s)" % (key.encode(), " ".join(str(v) for v in value).encode()))
            elif value is not None and str(value).isdigit():
                parts.append(b"%s %s" % (key.encode(), str(value).encode()))
        self.for_client.append(b"* %s FETCH (%s)\r\n" % (str(seq).encode(), b" ".join(parts)))

    def _uid_only(self, head: Head, frame: Frame) -> bool:
        """``* n FETCH (UID u)`` (a provider may add ``MODSEQ (m)``): the priming map, one
        message at a time.  A reply carrying anything else (FLAGS) is not the map's."""
        if head.number is None or self.trail.view is None or frame.literals:
            return False
        match = _UID_ONLY.match(frame.lines[0])
        if match is None:
            read = read_fetch(frame)
            items = read[2] if read is not None else None
            if not isinstance(items, list) or {str(k).upper() for k in items[::2]} - {"UID", "MODSEQ"}:
                return False
            uid = next((str(v) for k, v in zip(items[::2], items[1::2]) if str(k).upper() == "UID"), "")
            if not uid.isdigit():
                return False
            self.trail.view.learn(head.number, int(uid))
            return True
        self.trail.view.learn(head.number, int(match.group(1)))
        return True

    def _receipt_reply(self, items) -> bool:
        """A reply to the gateway's BODYSTRUCTURE or daticert fetch (see receipt_identity)."""
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

    def _identity(self, read: tuple) -> bool:
        seq, _name, items = read
        if not isinstance(items, list) or not has_identity_item(items):
            return False
        block = fetch_identity_item(items)  # None: NIL, the message was expunged meanwhile
        view = self.trail.view
        uid = next((int(v) for k, v in zip(items[::2], items[1::2])
                    if str(k).upper() == "UID" and str(v).isdigit()), None)
        if view is not None and uid is not None and str(seq).isdigit():
            view.learn(int(seq), uid)
            if block is not None:
                ref = identity_from_headers(block, view.uidvalidity, uid)
                self.cache.put(self._key(self.trail.folder, ref), ref)
                if is_receipt(ref):
                    self._receipts.append(uid)
        return True

    def tagged(self, tag: str, frame: Frame) -> tuple[list[bytes], list[Happened]]:
        """One of the gateway's commands is done: what to send next, and rows now complete."""
        self.outstanding.discard(tag)
        ok = parse_status(frame).status == "OK"
        view = self.trail.view
        if tag == self._mapping:
            self._mapping = None
            if view is not None:
                self._asked_at = (id(view), view.arrivals)  # mapped: the rest is known, or gone
            if view is not None and ok:
                missing = [u for u in view.uids() if self.cache.get(
                    self._key(self.trail.folder, MessageRef(view.uidvalidity, u))) is None]
                if missing:
                    return self._identity_lines(view.seqs_of(missing[-PRIME_LIMIT:])), []
        if self._structures is not None and tag in self._structures[0]:
            self._structures[0].discard(tag)
            if self._structures[0]:
                return [], []
            found = self._structures[1] if ok else {}
            self._structures = None
            lines = self._part_lines(found)
            return (lines, []) if lines else ([], self.flush())
        self._parts.pop(tag, None)
        if self.outstanding:
            return [], []
        if self._receipts and view is not None:  # identified: now the receipts' daticert
            seqs, self._receipts = view.seqs_of(self._receipts), []
            tags: set[str] = set()
            lines = structure_lines(lambda: _add(tags, self._tag("b")), seqs)
            if lines:
                self._structures = (tags, {})
                return lines, []
        self._receipts = []
        return [], self.flush()  # asked once: what is still unknown is written as it is

    def _part_lines(self, found: dict) -> list[bytes]:
        """One fetch per distinct daticert section (most receipts of a provider share one)."""
        view = self.trail.view
        by_section: dict[tuple[str, str], list[int]] = {}
        for uid, part in found.items():
            by_section.setdefault((part.section, part.encoding), []).append(uid)
        lines: list[bytes] = []
        for (section, encoding), uids in sorted(by_section.items()):
            def tagger(section=section, encoding=encoding) -> str:
                tag = self._tag("p")
                self._parts[tag] = (section, encoding)
                return tag
            lines += part_lines(tagger, view.seqs_of(uids) if view is not None else [], section)
        return lines


_UID_ONLY = re.compile(rb"^\* \d+ FETCH \(UID (\d+)\)\r\n$", re.IGNORECASE)


def _add(tags: set[str], tag: str) -> str:
    tags.add(tag)
    return tag
