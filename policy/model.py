"""The policy model: RFC 4314 rights, offices, folder rules, mailboxes — frozen values only.

Why RFC 4314 letters: they are the vocabulary IMAP already has for "who may do what on a
folder", so every IMAP command the gateway enforces maps onto one or two letters, and an
administrator can read a policy next to the RFC.  RFC 4314 §2.1 defines eleven rights::

    l - lookup (mailbox is visible to LIST/LSUB commands, SUBSCRIBE mailbox)
    r - read (SELECT the mailbox, perform STATUS)
    s - keep seen/unseen information across sessions (set or clear \\SEEN flag
        via STORE, also set \\SEEN during APPEND/COPY/FETCH BODY[...])
    w - write (set or clear flags other than \\SEEN and \\DELETED via
        STORE, also set them during APPEND/COPY)
    i - insert (perform APPEND, COPY into mailbox)
    p - post (send mail to submission address for mailbox, not enforced by IMAP4 itself)
    k - create mailboxes (CREATE new sub-mailboxes in any implementation-defined hierarchy)
    x - delete mailbox (DELETE mailbox, old mailbox name in RENAME)
    t - delete messages (set or clear \\DELETED flag via STORE, set \\DELETED flag during APPEND/COPY)
    e - perform EXPUNGE and expunge as a part of CLOSE
    a - administer (perform SETACL/DELETEACL/GETACL/LISTRIGHTS)

The gateway adds one right of its own, ``send``: submitting PEC through SMTP *from* a mailbox.
It is per mailbox, not per folder, so it lives on :class:`Rights` as a flag, not as a letter.

Everything here is immutable: a loaded :class:`Policy` is shared by every session and swapped
whole on reload, never edited in place.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from policy.patterns import specificity

__all__ = [
    "RFC4314_ORDER",
    "PEC_PROTECTED",
    "NO_RIGHTS",
    "Right",
    "Rights",
    "Office",
    "Rule",
    "MailboxPolicy",
    "Policy",
    "toml_key",
]

RFC4314_ORDER = "lrswipkxtea"
"""The eleven RFC 4314 letters in the order the RFC lists them; rights always render in it."""


class Right(enum.Enum):
    """One RFC 4314 right; the value is its letter."""

    LOOKUP = "l"
    READ = "r"
    SEEN = "s"
    WRITE = "w"
    INSERT = "i"
    POST = "p"
    CREATE = "k"
    DELETE_MAILBOX = "x"
    DELETE_MESSAGES = "t"
    EXPUNGE = "e"
    ADMINISTER = "a"

    @property
    def order(self) -> int:
        return RFC4314_ORDER.index(self.value)


PEC_PROTECTED = frozenset({Right.DELETE_MAILBOX, Right.DELETE_MESSAGES, Right.EXPUNGE})
"""x, t, e: the rights that can destroy a PEC.  Never a default; only an explicit rule grants them."""

_OBSOLETE = {  # RFC 4314 §2.1.1: RFC 2086's "c" and "d" became virtual rights
    "c": "'c' is the obsolete RFC 2086 right; RFC 4314 split it into 'k' (create) and 'x' (delete mailbox)",
    "d": "'d' is the obsolete RFC 2086 right; RFC 4314 split it into 'x', 't' and 'e'",
}


@dataclass(frozen=True)
class Rights:
    """A set of RFC 4314 rights plus the gateway's ``send`` flag.

    ``Rights.parse("lrsw")``; ``str()`` renders the letters in RFC order (``"-"`` is never
    used here: an empty set renders as ``""``).  ``|`` is the union.
    """

    letters: frozenset[Right] = frozenset()
    send: bool = False

    @classmethod
    def parse(cls, text: str, *, send: bool = False) -> "Rights":
        """Parse a string of RFC 4314 letters; raises :class:`ValueError` naming the first bad one.

        There is deliberately no shorthand for "all rights" (``"all"`` would otherwise read as
        ``a`` + ``l``): x, t and e must always be written out.
        """
        stripped = text.strip().lower()
        if stripped in {"all", "*", "any", "full"}:
            raise ValueError(f"{text!r} is not a shorthand: list the RFC 4314 letters you mean "
                             f"({RFC4314_ORDER})")
        if "send" in stripped:
            raise ValueError("'send' is not an RFC 4314 right: list the office in the mailbox's send")
        letters = set()
        for ch in text:
            if ch in _OBSOLETE:
                raise ValueError(_OBSOLETE[ch])
            try:
                letters.add(Right(ch))
            except ValueError:
                raise ValueError(f"unknown right {ch!r} (RFC 4314 letters: {RFC4314_ORDER})") from None
        return cls(frozenset(letters), send)

    def has(self, right: Right | str) -> bool:
        """True when the right is present; ``"send"`` asks for the gateway's send right."""
        if right == "send":
            return self.send
        return (right if isinstance(right, Right) else Right(right)) in self.letters

    def __or__(self, other: "Rights") -> "Rights":
        return Rights(self.letters | other.letters, self.send or other.send)

    union = __or__

    def __contains__(self, right: Right | str) -> bool:
        return self.has(right)

    def __bool__(self) -> bool:
        return bool(self.letters) or self.send

    def render(self) -> str:
        """The letters in RFC 4314 order, e.g. ``"lrswi"``."""
        return "".join(r.value for r in sorted(self.letters, key=lambda r: r.order))

    def __str__(self) -> str:
        return self.render() + ("+send" if self.send else "")

    @property
    def protected(self) -> frozenset[Right]:
        """The PEC-destroying rights (x, t, e) in this set."""
        return self.letters & PEC_PROTECTED


NO_RIGHTS = Rights()


@dataclass(frozen=True)
class Office:
    """A group of people: directory groups (compared case-insensitively) and usernames."""

    name: str
    groups: frozenset[str] = frozenset()
    members: frozenset[str] = frozenset()
    #: PEC the office sends may go only to these addresses (shell patterns; empty: any) and never
    #: to these; checked at each RCPT TO, lower-case.
    send_to_allow: tuple[str, ...] = ()
    send_to_deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """``office`` gets ``rights`` on the folders of ``mailbox`` matching ``pattern``.

    ``source_key`` is the TOML key path that defined it (``mailboxes.protocollo.rules[2]``), so
    an audit row or ``policy explain`` can name the rule that decided.  A mailbox's ``send``
    grant is also reported as a rule: its ``pattern`` is ``""`` and its rights are only ``send``.
    """

    office: str
    mailbox: str
    pattern: str
    rights: Rights
    source_key: str

    @property
    def is_send_grant(self) -> bool:
        return self.pattern == ""

    def describe(self) -> str:
        """``mailboxes.protocollo.rules[2] (legale: "Ufficio Legale/*" → lrswi)``."""
        what = "send" if self.is_send_grant else f"{self.pattern!r} → {self.rights.render() or '-'}"
        return f"{self.source_key} ({self.office}: {what})"


@dataclass(frozen=True)
class MailboxPolicy:
    """The rules of one PEC mailbox, in file order (file order breaks specificity ties)."""

    name: str
    delimiter: str = "/"
    default_rights: Rights = NO_RIGHTS
    rules: tuple[Rule, ...] = ()
    send_offices: tuple[str, ...] = ()
    key: str = ""  # TOML key of the mailbox table; "" means mailboxes.<name>

    @property
    def source_key(self) -> str:
        return self.key or toml_key("mailboxes", self.name)

    @property
    def default_key(self) -> str:
        return f"{self.source_key}.default_rights"

    @cached_property
    def ranked(self) -> Mapping[str, tuple[Rule, ...]]:
        """Each office's rules, most specific first; equally specific rules keep file order.

        So the first rule of an office's list that matches a folder is the one that decides,
        and among equally specific matches the one listed first in the file wins.
        """
        by_office: dict[str, list[Rule]] = {}
        for rule in self.rules:
            by_office.setdefault(rule.office, []).append(rule)
        return {office: tuple(sorted(rules, key=lambda r: specificity(r.pattern), reverse=True))
                for office, rules in by_office.items()}

    def send_rule(self, office: str) -> Rule | None:
        """The ``send`` list entry naming ``office``, as a :class:`Rule`, or None."""
        if office not in self.send_offices:
            return None
        i = self.send_offices.index(office)
        return Rule(office, self.name, "", Rights(send=True), f"{self.source_key}.send[{i}]")


@dataclass(frozen=True)
class Policy:
    """Offices and mailboxes, by name; ``source`` names the file it came from."""

    offices: Mapping[str, Office] = field(default_factory=dict)
    mailboxes: Mapping[str, MailboxPolicy] = field(default_factory=dict)
    source: str = "<policy>"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(*parts: str) -> str:
    """A dotted TOML key path, quoting parts that are not bare keys (``mailboxes."pec.legale"``)."""
    out = []
    for p in parts:
        if _BARE_KEY.fullmatch(p):
            out.append(p)
        else:
            out.append('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return ".".join(out)
