"""IMAP sequence sets (RFC 3501 §9 ``sequence-set``) as ranges, never expanded.

A client may name ``1:*`` in a folder of two hundred thousand messages, and a provider may answer
``* VANISHED (EARLIER) 1:4000000000``.  Listing such sets number by number costs memory in
proportion to the numbers, not to the messages that exist; so a set is kept as its sorted,
merged ranges, asked ``n in s`` in logarithmic time, and walked only against what exists
(:meth:`SequenceSet.among`).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Iterable, Iterator

__all__ = ["SequenceSet", "format_numbers", "format_chunks", "MAX_SET_TEXT"]

#: Longest set the gateway writes in one command of its own.  Providers bound command lines
#: (Dovecot: 64 KiB), and scattered numbers make long sets: more are split over several commands.
MAX_SET_TEXT = 8000

_MAX_NUMBER = 4_294_967_295  # nz-number is 32 bits (RFC 3501 §9)


class SequenceSet:
    """A parsed sequence set: disjoint ranges ``(low, high)``, ascending."""

    __slots__ = ("_lows", "_highs")

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for low, high in sorted(ranges):
            if merged and low <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        self._lows = [r[0] for r in merged]
        self._highs = [r[1] for r in merged]

    @classmethod
    def parse(cls, text: str, *, last: int | None = None) -> "SequenceSet":
        """``"1:3,7,9:*"`` with ``*`` standing for ``last`` (the largest number in use).

        Raises ValueError for anything that is not a sequence set, and for ``*`` when ``last``
        is not given (a UID set in a provider's reply never holds one).
        """
        ranges = []
        for part in text.split(","):
            low, sep, high = part.partition(":")
            a = _number(low, last)
            b = _number(high, last) if sep else a
            ranges.append((min(a, b), max(a, b)))
        return cls(ranges)

    def __contains__(self, n: object) -> bool:
        if not isinstance(n, int):
            return False
        i = bisect_right(self._lows, n) - 1
        return i >= 0 and n <= self._highs[i]

    def __len__(self) -> int:
        return sum(h - l + 1 for l, h in zip(self._lows, self._highs))

    def __iter__(self) -> Iterator[int]:
        """Every number, ascending: only for sets known to be small (check ``len`` first)."""
        for low, high in zip(self._lows, self._highs):
            yield from range(low, high + 1)

    def among(self, numbers: Iterable[int | None]) -> list[int]:
        """The members of ``numbers`` (e.g. the UIDs of a folder) that are in the set, in order."""
        return [n for n in numbers if n is not None and n in self]

    def __repr__(self) -> str:
        return f"SequenceSet({format_ranges(zip(self._lows, self._highs))!r})"


def _number(text: str, last: int | None) -> int:
    if text == "*":
        if last is None:
            raise ValueError("'*' where no largest number is known")
        return max(last, 1)
    if not text.isdigit() or len(text) > 10:
        raise ValueError(f"not a sequence number: {text!r}")
    n = int(text)
    if not 0 < n <= _MAX_NUMBER:
        raise ValueError(f"sequence number out of range: {text}")
    return n


def format_ranges(ranges: Iterable[tuple[int, int]]) -> str:
    return ",".join(str(l) if l == h else f"{l}:{h}" for l, h in ranges)


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def format_numbers(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` → ``"1:3,7"`` (ascending input), for the gateway's own commands."""
    return format_ranges(_runs(numbers))


def format_chunks(numbers: list[int], limit: int = MAX_SET_TEXT) -> list[str]:
    """``numbers`` (ascending) as sets of at most ``limit`` characters each, in order."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for low, high in _runs(numbers):
        text = str(low) if low == high else f"{low}:{high}"
        if current and size + 1 + len(text) > limit:
            chunks.append(",".join(current))
            current, size = [], 0
        current.append(text)
        size += len(text) + (1 if size else 0)
    if current:
        chunks.append(",".join(current))
    return chunks
