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
  vouches for the start (deleted rows); reported as one range;
* ``link``: a row whose own HMAC is right but whose ``prev_hash`` is not the hash of the row
  before it (one of the two is a validly signed row from elsewhere, e.g. another log kept with
  the same key), or a first row that neither starts at :data:`~gateway.audit.chain.GENESIS` nor
  is vouched for by an anchor.  The link is only judged between two rows whose HMACs are right
  and with no gap between them: otherwise the row already reported explains the broken link.

A chain cannot show rows cut off its end; :attr:`VerifyReport.last_seq` and ``last_hash`` are
there to be compared with a checkpoint kept elsewhere.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from gateway.audit.chain import ANCHOR, GENESIS, link

__all__ = ["Problem", "Scan", "VerifyReport", "verify_chain"]

Scan = Callable[[], Iterable[tuple[int, bytes, bytes, dict[str, Any]]]]

#: At most this many failed rows are kept for the moved-or-altered pass; beyond it they are
#: reported as altered straight away (a wrong key fails every row of a million-row log).
MAX_RESOLVE = 10_000


@dataclass(frozen=True)
class Problem:
    kind: str  # "altered" | "moved" | "missing" | "link"
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
    last_hash: bytes | None = None  # compare with a checkpoint kept elsewhere to detect truncation
    problems: list[Problem] = field(default_factory=list)
    hint: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = (f"{self.rows} rows, seq {self.first_seq}..{self.last_seq}: "
                + ("chain intact" if self.ok else f"{len(self.problems)} problem(s)"))
        return "\n".join([head, *map(str, self.problems), *([self.hint] if self.hint else [])])


def _anchor(row: dict[str, Any]) -> tuple[int, bytes] | None:
    try:
        detail = json.loads(row["detail"])
        return int(detail["pruned_through"]), bytes.fromhex(detail["pruned_hash"])
    except (KeyError, TypeError, ValueError):
        return None


def verify_chain(key: bytes, scan: Scan) -> VerifyReport:
    report = VerifyReport()
    problems = report.problems
    anchors: dict[int, bytes] = {}  # pruned_through -> pruned_hash, from rows with a valid HMAC
    suspects: dict[int, tuple[bytes, bytes, dict[str, Any]]] = {}
    first: tuple[int, bytes, bool] | None = None
    prev: tuple[int, bytes, bool] | None = None  # seq, hash, HMAC ok
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
        if prev is None:
            first = (seq, prev_hash, ok)
        elif seq != prev[0] + 1:
            problems.append(Problem("missing", prev[0] + 1, seq - 1, "rows deleted"))
        elif ok and prev[2] and not hmac.compare_digest(prev_hash, prev[1]):
            problems.append(Problem("link", seq, note=f"prev_hash is not the hash of seq {prev[0]}"))
        prev = (seq, hash_, ok)
    if first is None:
        return report
    report.first_seq, report.last_seq, report.last_hash = first[0], prev[0], prev[1]
    problems.extend(_check_start(first, anchors))
    problems.extend(_resolve(key, scan, suspects))
    problems.sort(key=lambda p: (p.seq, p.kind))
    if valid == 0:
        report.hint = "no row has a valid HMAC: is this the right key?"
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


def _resolve(key: bytes, scan: Scan, suspects: dict[int, tuple[bytes, bytes, dict]]) -> list[Problem]:
    """Tell moved rows from altered ones: find where each failed row's predecessor (the row whose
    hash is its prev_hash) and successor (the row whose prev_hash is its hash) sit now, and try
    the HMAC at the seq next to them."""
    if not suspects:
        return []
    want_pred = {prev_hash for prev_hash, _, _ in suspects.values()}
    want_succ = {hash_ for _, hash_, _ in suspects.values()}
    pred_at: dict[bytes, int] = {}
    succ_at: dict[bytes, int] = {}
    for seq, prev_hash, hash_, _row in scan():
        if hash_ in want_pred:
            pred_at.setdefault(hash_, seq)
        if prev_hash in want_succ:
            succ_at.setdefault(prev_hash, seq)
    out = []
    for seq, (prev_hash, hash_, row) in suspects.items():
        candidates = []
        if prev_hash in pred_at:
            candidates.append(pred_at[prev_hash] + 1)
        if prev_hash == GENESIS:
            candidates.append(1)
        if hash_ in succ_at:
            candidates.append(succ_at[hash_] - 1)
        written = next((c for c in candidates if c != seq and c > 0
                        and hmac.compare_digest(link(key, prev_hash, c, row), hash_)), None)
        if written is not None:
            out.append(Problem("moved", seq, note=f"this row was written as seq {written}"))
        else:
            out.append(Problem("altered", seq, note="HMAC does not match the content"))
    return out
