"""Walk an audit chain in ``seq`` order and report every problem, each naming its ``seq``.

The walk is store-independent: a store passes a ``scan`` callable that yields
``(seq, prev_hash, hash, row)`` in ``seq`` order, afresh on each call (a second pass runs only
when some row's HMAC is wrong, to tell a moved row from an edited one).  Memory stays flat on a
million-row log: the walk keeps the previous row and the rows that failed, nothing else.

Problems, in ``seq`` order:

* ``altered``: the row's HMAC does not match its content at this ``seq`` (edited content,
  edited hashes, or a wrong key: then *every* row is altered, and :attr:`VerifyReport.hint` says
  so);
* ``moved``: the HMAC is wrong at this ``seq`` but right at another one, which is where the row
  was written (rows swapped or renumbered);
* ``missing``: ``seq`` values absent between two rows, or before the first row when no anchor
  vouches for the start (deleted rows), or after the last row when a checkpoint names a later
  ``seq`` (rows cut off the end); reported as one range;
* ``link``: a row whose own HMAC is right but whose ``prev_hash`` is not the hash of the row
  before it (one of the two is a validly signed row from elsewhere, e.g. another log kept with
  the same key), or a first row that neither starts at :data:`~gateway.audit.chain.GENESIS` nor
  is vouched for by an anchor.  The link is only judged between two rows whose HMACs are right
  and with no gap between them: otherwise the row already reported explains the broken link;
* ``checkpoint``: the row at the checkpoint's ``seq`` is there but has another hash (the end of
  the chain was cut and written again, or the checkpoint belongs to another trail).

What the chain alone cannot show: rows cut off its *end*.  Every row vouches only for the rows
before it, and nothing in the database records how long the chain was, so after the last rows
are deleted the one before them is an intact end.  :attr:`VerifyReport.last_seq` and
``last_hash`` are the head to keep elsewhere (a ticket, a signed e-mail, the auditor's notes);
passed back as ``expect_head`` on a later walk they prove that no row up to that head was cut.
"""

from __future__ import annotations

import hmac
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from gateway.audit.chain import ANCHOR, GENESIS, link

__all__ = ["Problem", "Scan", "VerifyReport", "verify_chain"]

Scan = Callable[[], Iterable[tuple[int, bytes, bytes, dict[str, Any]]]]
Suspect = tuple[bytes, bytes, dict[str, Any]]  # prev_hash, hash, row of a row whose HMAC failed

#: At most this many failed rows are kept for the moved-or-altered pass; beyond it they are
#: reported as altered straight away (a wrong key fails every row of a million-row log).
MAX_RESOLVE = 10_000


@dataclass(frozen=True)
class Problem:
    kind: str  # "altered" | "moved" | "missing" | "link" | "checkpoint"
    seq: int
    last: int | None = None  # for "missing": the last absent seq of the range
    note: str = ""

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.last in (None, self.seq) else f"seq {self.seq}..{self.last}"
        return f"{where}: {self.kind}" + (f" ({self.note})" if self.note else "")


@dataclass
class VerifyReport:
    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: bytes | None = None  # the head: keep it elsewhere, pass it back as expect_head
    problems: list[Problem] = field(default_factory=list)
    hint: str = ""
    checkpoint: str = ""  # what the expected head showed, when one was given and is not a problem

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = (f"{self.rows} rows, seq {self.first_seq}..{self.last_seq}: "
                + ("chain intact" if self.ok else f"{len(self.problems)} problem(s)"))
        notes = [note for note in (self.checkpoint, self.hint) if note]
        return "\n".join([head, *map(str, self.problems), *notes])


def _anchor(row: dict[str, Any]) -> tuple[int, bytes] | None:
    try:
        detail = json.loads(row["detail"])
        return int(detail["pruned_through"]), bytes.fromhex(detail["pruned_hash"])
    except (KeyError, TypeError, ValueError):
        return None


def verify_chain(key: bytes, scan: Scan, *, expect_head: tuple[int, bytes] | None = None) -> VerifyReport:
    """Walk the chain ``scan`` yields with ``key``.  ``expect_head`` is a ``(seq, hash)`` head
    an earlier walk reported: the chain must still reach it, with that hash there."""
    report = VerifyReport()
    problems = report.problems
    anchors: dict[int, bytes] = {}  # pruned_through -> pruned_hash, from rows with a valid HMAC
    suspects: dict[int, Suspect] = {}
    first: tuple[int, bytes, bool] | None = None
    prev: tuple[int, bytes, bool] | None = None  # seq, hash, HMAC ok
    at_head: bytes | None = None  # the hash of the row at expect_head's seq
    valid = 0
    for seq, prev_hash, hash_, row in scan():
        report.rows += 1
        ok = hmac.compare_digest(link(key, prev_hash, seq, row), hash_)
        if ok:
            valid += 1
            if row.get("action") == ANCHOR and (anchor := _anchor(row)):
                anchors[anchor[0]] = anchor[1]
        elif len(suspects) < MAX_RESOLVE:
            suspects[seq] = (prev_hash, hash_, row)
        else:
            problems.append(Problem("altered", seq, note="HMAC does not match the content"))
        if expect_head is not None and seq == expect_head[0]:
            at_head = hash_
        if prev is None:
            first = (seq, prev_hash, ok)
        elif seq != prev[0] + 1:
            problems.append(Problem("missing", prev[0] + 1, seq - 1, "rows deleted"))
        elif ok and prev[2] and not hmac.compare_digest(prev_hash, prev[1]):
            problems.append(Problem("link", seq, note=f"prev_hash is not the hash of seq {prev[0]}"))
        prev = (seq, hash_, ok)
    if first is not None:
        report.first_seq, report.last_seq, report.last_hash = first[0], prev[0], prev[1]
        problems.extend(_check_start(first, anchors))
        problems.extend(_resolve(key, scan, suspects))
        if valid == 0:
            report.hint = "no row has a valid HMAC: is this the right key?"
    if expect_head is not None:
        found, report.checkpoint = _check_head(expect_head, report, at_head, anchors)
        problems.extend(found)
    problems.sort(key=lambda p: (p.seq, p.kind))
    return report


def _check_start(first: tuple[int, bytes, bool], anchors: dict[int, bytes]) -> list[Problem]:
    """The first row must start at GENESIS (seq 1) or be vouched for by an anchor."""
    seq, prev_hash, ok = first
    if seq == 1 and prev_hash == GENESIS:
        return []
    vouched = anchors.get(seq - 1)
    if vouched is not None and hmac.compare_digest(vouched, prev_hash):
        return []
    through = max((t for t in anchors if t < seq), default=0)
    if through < seq - 1:
        note = f"after the anchor for seq {through}" if through else "no anchor vouches for them"
        return [Problem("missing", through + 1, seq - 1, f"rows deleted at the start, {note}")]
    if not ok:  # already reported as altered or moved
        return []
    return [Problem("link", seq, note="the first row is not linked to GENESIS or an anchor")]


def _check_head(head: tuple[int, bytes], report: VerifyReport, at_head: bytes | None,
                anchors: dict[int, bytes]) -> tuple[list[Problem], str]:
    """``(problems, note)`` for a head kept from an earlier walk: the chain must reach its seq
    and have its hash there (or, once pruned, in the anchor that pruned it)."""
    seq, expected = head
    if report.last_seq is None or seq > report.last_seq:
        start = 1 if report.last_seq is None else report.last_seq + 1
        return [Problem("missing", start, seq, f"rows cut off the end: the checkpoint names seq {seq}")], ""
    if seq >= report.first_seq:
        if at_head is None:  # inside a gap, already reported as missing
            return [], ""
        if hmac.compare_digest(at_head, expected):
            return [], f"checkpoint seq {seq} matches: no row up to it was cut off the end"
        return [Problem("checkpoint", seq, note="its hash is not the checkpoint's: the rows from here "
                                                "on were rewritten, or the checkpoint is from another trail")], ""
    vouched = anchors.get(seq)
    if vouched is None:
        return [], (f"checkpoint seq {seq} was pruned: its hash cannot be compared, "
                    "but the chain goes on past it")
    if hmac.compare_digest(vouched, expected):
        return [], f"checkpoint seq {seq} matches the anchor that pruned it: no row up to it was cut off the end"
    return [Problem("checkpoint", seq, note="the anchor that pruned it names another hash")], ""


def _neighbours(scan: Scan, suspects: dict[int, Suspect]) -> tuple[dict[int, int], dict[int, int]]:
    """For each failed row, where its predecessor (the row whose hash is its prev_hash) and its
    successor (the row whose prev_hash is its hash) sit now: ``(pred_seq, succ_seq)``."""
    want_pred = {prev_hash for prev_hash, _, _ in suspects.values()}
    want_succ = {hash_ for _, hash_, _ in suspects.values()}
    pred_at: dict[bytes, int] = {}
    succ_at: dict[bytes, int] = {}
    for seq, prev_hash, hash_, _row in scan():
        if hash_ in want_pred:
            pred_at.setdefault(hash_, seq)
        if prev_hash in want_succ:
            succ_at.setdefault(prev_hash, seq)
    pred_seq = {s: pred_at[p] for s, (p, _, _) in suspects.items() if p in pred_at}
    succ_seq = {s: succ_at[h] for s, (_, h, _) in suspects.items() if h in succ_at}
    return pred_seq, succ_seq


def _candidates(seq: int, prev_hash: bytes, pred: int | None, succ: int | None,
                written: dict[int, int]) -> list[int]:
    """The seqs a failed row may have been written at: right after its predecessor, right before
    its successor, counting each neighbour where it sits now and, when that neighbour moved too,
    where it was written."""
    out = [1] if prev_hash == GENESIS else []
    if pred is not None:
        out += [pred + 1] + ([written[pred] + 1] if pred in written else [])
    if succ is not None:
        out += [succ - 1] + ([written[succ] - 1] if succ in written else [])
    return [c for c in dict.fromkeys(out) if c != seq and c > 0]


def _resolve(key: bytes, scan: Scan, suspects: dict[int, Suspect]) -> list[Problem]:
    """Tell moved rows from altered ones by trying each failed row's HMAC at the seqs next to its
    neighbours.

    A row is proven moved when its HMAC is right at another seq.  Where its neighbours moved too
    (two rows swapped at the end of the chain: the last row has no successor, and its
    predecessor is the other swapped row) the row is retried once a neighbour's original seq is
    known, so a block of moved rows is resolved from whichever end still touches an unmoved row.
    Each row is tried at most once more per neighbour, so the pass stays linear."""
    if not suspects:
        return []
    pred_seq, succ_seq = _neighbours(scan, suspects)
    dependents: dict[int, list[int]] = {}
    for seq in suspects:
        for neighbour in {pred_seq.get(seq), succ_seq.get(seq)} & suspects.keys():
            dependents.setdefault(neighbour, []).append(seq)
    written: dict[int, int] = {}
    queue = deque(sorted(suspects))
    while queue:
        seq = queue.popleft()
        if seq in written:
            continue
        prev_hash, hash_, row = suspects[seq]
        for c in _candidates(seq, prev_hash, pred_seq.get(seq), succ_seq.get(seq), written):
            if hmac.compare_digest(link(key, prev_hash, c, row), hash_):
                written[seq] = c
                queue.extend(dependents.get(seq, ()))
                break
    return [Problem("moved", seq, note=f"this row was written as seq {written[seq]}") if seq in written
            else Problem("altered", seq, note="HMAC does not match the content")
            for seq in sorted(suspects)]
