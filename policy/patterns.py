"""Folder patterns: IMAP LIST wildcards, and which of two matching patterns is more specific.

Matching follows RFC 3501 §6.3.8 (LIST):

    The character "*" is a wildcard, and matches zero or more characters at this position.
    The character "%" is similar to "*", but it does not match a hierarchy delimiter.

and RFC 3501 §5.1: "The case-insensitive mailbox name INBOX is a special name reserved to mean
'the primary mailbox for this user on this server'" — so ``inbox``, ``Inbox`` and ``INBOX`` are
the same folder, also as the first level of ``INBOX/sub`` (a pattern's first level is folded
only when it is literally ``inbox``; ``inb*`` stays case-sensitive like every other name).
Only ASCII spellings fold (``ınbox`` with a dotless ı is not INBOX).

Names are the human Unicode names (the session decodes modified UTF-7, RFC 3501 §5.1.3, before
asking), compared after Unicode NFC normalisation so that an "à" typed in the policy equals an
"à" the provider spelt as "a" + combining grave.  Every other character matches itself
exactly, case-sensitively; there is no escaping (a literal ``*`` or ``%`` cannot be matched:
RFC 3501 names should not contain them).

Specificity — "the most specific rule wins".  :func:`specificity` returns a key; larger is more
specific.  Compared in this order:

1. an exact name (no wildcard) beats any pattern with a wildcard;
2. then more literal (non-wildcard) characters wins;
3. then a pattern using only ``%`` beats one using ``*`` (``%`` stays within one level).

Examples, most specific first, all matching ``Ufficio Legale/Pratiche``::

    Ufficio Legale/Pratiche     exact
    Ufficio Legale/Prat%        wildcard, 19 literals
    Ufficio Legale/%            wildcard, 15 literals, %-only
    Ufficio Legale/*            wildcard, 15 literals, uses *
    Uff*                        wildcard, 3 literals
    %/%                         wildcard, 1 literal, %-only
    *                           wildcard, 0 literals, uses *

Two different patterns can still be equally specific (``Acquisti/%`` and ``%/Fatture`` would
not be — 9 and 8 literals — but ``A*`` and ``*Z`` are); the evaluator breaks such ties by file
order and ``policy check`` warns about them (:func:`overlap` finds a folder both match).
"""

from __future__ import annotations

import re
import unicodedata
from collections import deque
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "WILDCARDS",
    "Specificity",
    "normalize",
    "is_exact",
    "matches",
    "specificity",
    "overlap",
    "pattern_problem",
]

WILDCARDS = "*%"


def normalize(name: str, delimiter: str = "/") -> str:
    """NFC-normalise ``name`` and spell a case-insensitive INBOX first level as ``INBOX``."""
    name = unicodedata.normalize("NFC", name)
    first, sep, rest = name.partition(delimiter)
    if first != "INBOX" and first.isascii() and first.upper() == "INBOX":
        return "INBOX" + sep + rest
    return name


def is_exact(pattern: str) -> bool:
    """True when ``pattern`` names one folder (has no wildcard)."""
    return not any(c in WILDCARDS for c in pattern)


@lru_cache(maxsize=4096)
def _regex(pattern: str, delimiter: str) -> re.Pattern[str]:
    parts: list[str] = []
    for ch in normalize(pattern, delimiter):
        if ch == "*":
            if parts[-1:] != [".*"]:  # "**" is "*"; collapsing keeps backtracking linear-ish
                parts.append(".*")
        elif ch == "%":
            parts.append(f"[^{re.escape(delimiter)}]*")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def matches(pattern: str, name: str, delimiter: str = "/") -> bool:
    """Does the LIST-style ``pattern`` match the folder ``name`` (whole name, RFC 3501 §6.3.8)?"""
    return _regex(pattern, delimiter).fullmatch(normalize(name, delimiter)) is not None


@dataclass(frozen=True, order=True)
class Specificity:
    """Sort key of a pattern; compare with ``<``/``>``: the larger is the more specific."""

    exact: bool
    literals: int
    percent_only: bool  # no "*" (true for exact names too)

    def __str__(self) -> str:
        if self.exact:
            return "exact"
        kind = "%-only" if self.percent_only else "uses *"
        return f"wildcard, {self.literals} literals, {kind}"


def specificity(pattern: str) -> Specificity:
    """The specificity key of ``pattern`` (see the module docstring for the ordering)."""
    literals = sum(1 for c in pattern if c not in WILDCARDS)
    return Specificity(is_exact(pattern), literals, "*" not in pattern)


def _moves(pattern: str, i: int, ch: str, delimiter: str) -> tuple[int, ...]:
    """NFA positions reachable from position ``i`` of ``pattern`` by reading ``ch``."""
    if i == len(pattern):
        return ()
    token = pattern[i]
    if token == "*":
        return (i,)
    if token == "%":
        return (i,) if ch != delimiter else ()
    return (i + 1,) if token == ch else ()


def overlap(a: str, b: str, delimiter: str = "/") -> str | None:
    """A folder name both patterns match, or None when they can match no folder in common.

    Breadth-first search over the product of the two patterns' automata, restricted to
    well-formed names (non-empty, no leading, trailing or doubled delimiter).  The alphabet is
    the literal characters of both, the delimiter, and one other character standing for
    "anything else", so the search is exact and small (``3·(len(a)+1)·(len(b)+1)`` states).
    """
    a, b = normalize(a, delimiter), normalize(b, delimiter)
    literals = {c for c in a + b if c not in WILDCARDS}
    other = next(c for c in "xyzqjkXYZ0123456789" if c not in literals and c != delimiter)
    alphabet = [other] + sorted(literals - {delimiter}) + [delimiter]
    start = (0, 0, "start")  # third item: what the name read so far ends with
    parent: dict[tuple[int, int, str], tuple[tuple[int, int, str], str] | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        i, j, last = state
        if i == len(a) and j == len(b) and last == "char":
            out: list[str] = []
            node: tuple[int, int, str] | None = state
            while parent[node] is not None:
                node, ch = parent[node]  # type: ignore[misc]
                out.append(ch)
            return "".join(reversed(out))
        steps: list[tuple[tuple[int, int, str], str]] = []
        if i < len(a) and a[i] in WILDCARDS:
            steps.append(((i + 1, j, last), ""))
        if j < len(b) and b[j] in WILDCARDS:
            steps.append(((i, j + 1, last), ""))
        for ch in alphabet:
            if ch == delimiter and last != "char":
                continue
            for ni in _moves(a, i, ch, delimiter):
                for nj in _moves(b, j, ch, delimiter):
                    steps.append(((ni, nj, "delim" if ch == delimiter else "char"), ch))
        for nxt, ch in steps:
            if nxt not in parent:
                parent[nxt] = (state, ch)
                queue.append(nxt)
    return None


def pattern_problem(pattern: str, delimiter: str = "/") -> str | None:
    """Why ``pattern`` cannot be a folder pattern, or None when it is fine.

    Folder names are never empty, never begin or end with the hierarchy delimiter and never have
    an empty level (RFC 3501 §5.1: a trailing delimiter in CREATE only announces a hierarchy;
    the folder created has no trailing delimiter).  Control characters cannot appear in a name.
    """
    if not pattern:
        return "empty folder pattern (use \"*\" for every folder)"
    if delimiter * 2 in pattern:
        return f"{pattern!r} contains the delimiter {delimiter!r} twice in a row (an empty level)"
    if pattern.startswith(delimiter):
        return f"{pattern!r} starts with the delimiter {delimiter!r} (folder names are relative)"
    if pattern.endswith(delimiter):
        return (f"{pattern!r} ends with the delimiter {delimiter!r}; "
                f"write {pattern + '*'!r} for its subfolders")
    bad = next((c for c in pattern if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        return f"{pattern!r} contains the control character {bad!r}"
    return None
