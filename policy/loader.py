"""Loading a policy file: TOML → a frozen :class:`~policy.model.Policy`, or a :class:`PolicyError`.

The file (see ``config/policy.example.toml`` for every key)::

    [offices.<office>]
    groups  = ["..."]        # directory groups, case-insensitive      (optional, default [])
    members = ["..."]        # usernames                                (optional, default [])
    send_to_allow = ["..."]  # address patterns its PEC may go to (* ?), (optional, default: any)
    send_to_deny  = ["..."]  # address patterns its PEC may never go to (optional, default [])

    [mailboxes.<mailbox>]
    delimiter      = "/"     # the provider's hierarchy delimiter, one character (default "/")
    default_rights = ""      # rights on folders no rule of an office matches (default "")
    send           = ["..."] # offices that may send PEC from this mailbox (default [])

    [[mailboxes.<mailbox>.rules]]
    office  = "<office>"     # required, an office defined above
    folders = "<pattern>"    # required, IMAP LIST pattern (* and %), human Unicode names
    rights  = "lr"           # required, RFC 4314 letters (may be "" to hide folders)

Why so strict: a policy decides who may read legal correspondence, so a typo must stop the
load rather than silently grant or hide something.  Unknown keys, wrong types, unknown offices,
malformed patterns, duplicate rules and unknown rights are all errors, each reported as
``<file>: <key>: <problem>`` with the TOML key path of the offending value.

PEC-safe default: a PEC is a legal record, so ``default_rights`` may not contain x (delete
mailbox), t (set \\Deleted) or e (expunge); those come only from rules that list them, and
there is no "all rights" shorthand.

The loader builds every value before returning and returns only a complete :class:`Policy`;
on any error it raises, so the caller (``pecgw`` on reload) simply keeps its last good policy.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from types import MappingProxyType
from typing import Any

from policy.model import MailboxPolicy, Office, Policy, Right, Rights, Rule, toml_key
from policy.patterns import normalize, pattern_problem

__all__ = ["PolicyError", "parse_policy", "load_policy"]

_NAMES = {Right.DELETE_MAILBOX: "delete mailbox", Right.DELETE_MESSAGES: "delete messages",
          Right.EXPUNGE: "expunge"}
_TOML_TYPES = {str: "a string", int: "an integer", float: "a float", bool: "a boolean",
               list: "an array", dict: "a table"}


class PolicyError(ValueError):
    """A policy file problem, rendered ``<file>: <key>: <problem>``."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = str(source), key, problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


def _kind(value: Any) -> str:
    return next((name for t, name in _TOML_TYPES.items() if type(value) is t), type(value).__name__)


class _Table:
    """One TOML table at ``key``: unknown keys refused up front, typed accessors naming the key."""

    def __init__(self, data: Any, source: str, key: str, allowed: tuple[str, ...] | None) -> None:
        if not isinstance(data, dict):
            raise PolicyError(source, key, f"must be a table, not {_kind(data)}")
        self.data, self.source, self.key = data, source, key
        for name in data:
            if allowed is not None and name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
                raise self.error(name, f"unknown key ({hint})")

    def sub(self, name: str) -> str:
        return f"{self.key}.{toml_key(name)}" if self.key else toml_key(name)

    def error(self, name: str, problem: str) -> PolicyError:
        return PolicyError(self.source, self.sub(name), problem)

    def str(self, name: str, default: str | None = None) -> str:
        if name not in self.data:
            if default is None:
                raise self.error(name, "missing (required)")
            return default
        value = self.data[name]
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, not {_kind(value)}")
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.data.get(name, [])
        if not isinstance(value, list):
            raise self.error(name, f"must be an array of strings, not {_kind(value)}")
        seen: dict[str, int] = {}
        for i, item in enumerate(value):
            key = f"{self.sub(name)}[{i}]"
            if not isinstance(item, str):
                raise PolicyError(self.source, key, f"must be a string, not {_kind(item)}")
            if not item.strip():
                raise PolicyError(self.source, key, "must not be empty")
            if item.casefold() in seen:
                raise PolicyError(self.source, key,
                                  f"{item!r} is already listed at {self.sub(name)}[{seen[item.casefold()]}]")
            seen[item.casefold()] = i
        return tuple(value)

    def tables(self, name: str, allowed: tuple[str, ...]) -> list["_Table"]:
        value = self.data.get(name, [])
        if not isinstance(value, list):
            raise self.error(name, f"must be an array of tables ([[{self.sub(name)}]]), not {_kind(value)}")
        return [_Table(item, self.source, f"{self.sub(name)}[{i}]", allowed) for i, item in enumerate(value)]


def _rights(t: _Table, name: str, default: str | None = None) -> Rights:
    try:
        return Rights.parse(t.str(name, default))
    except ValueError as exc:
        if isinstance(exc, PolicyError):
            raise
        raise t.error(name, str(exc)) from None


def _office(t: _Table, name: str) -> Office:
    if not name.strip():
        raise PolicyError(t.source, t.key, "an office name must not be empty")
    allow, deny = (tuple(_address_pattern(t, key, p) for p in t.strings(key))
                   for key in ("send_to_allow", "send_to_deny"))
    return Office(name, frozenset(t.strings("groups")), frozenset(t.strings("members")), allow, deny)


def _address_pattern(t: _Table, key: str, pattern: str) -> str:
    """A recipient pattern: ``*@pec.tribunale.*``, ``ufficio@pec.example.it`` (compared lower-case)."""
    if not pattern.strip() or any(c.isspace() for c in pattern) or "@" not in pattern:
        raise t.error(key, f"{pattern!r} is not an address pattern (like '*@pec.tribunale.*')")
    return pattern.lower()


def _delimiter(t: _Table) -> str:
    delimiter = t.str("delimiter", "/")
    if len(delimiter) != 1:
        raise t.error("delimiter", f"must be exactly one character, not {delimiter!r}")
    if delimiter in "*%" or not delimiter.isprintable() or delimiter.isspace():
        raise t.error("delimiter", f"{delimiter!r} cannot be a hierarchy delimiter")
    return delimiter


def _mailbox(t: _Table, name: str, offices: dict[str, Office]) -> MailboxPolicy:
    if not name.strip() or "#" in name:
        raise PolicyError(t.source, t.key, "a mailbox name must be non-empty and must not contain '#'")
    known = f"offices: {', '.join(sorted(offices))}" if offices else "no [offices] are defined"
    delimiter = _delimiter(t)
    default = _rights(t, "default_rights", "")
    if default.protected:
        bad = sorted(default.protected, key=lambda r: r.order)
        listed = ", ".join(f"'{r.value}' ({_NAMES[r]})" for r in bad)
        raise t.error("default_rights", f"{listed} may never be a default: a PEC is a legal record; "
                                        "grant x, t or e to an office in an explicit rule")
    send = t.strings("send")
    for i, office in enumerate(send):
        if office not in offices:
            raise PolicyError(t.source, f"{t.sub('send')}[{i}]", f"unknown office {office!r} ({known})")
    rules: list[Rule] = []
    exact: dict[tuple[str, str], Rule] = {}
    for rt in t.tables("rules", ("office", "folders", "rights")):
        office = rt.str("office")
        if office not in offices:
            raise rt.error("office", f"unknown office {office!r} ({known})")
        pattern = rt.str("folders")
        problem = pattern_problem(pattern, delimiter)
        if problem:
            raise rt.error("folders", problem)
        rule = Rule(office, name, pattern, _rights(rt, "rights"), rt.key)
        same = exact.setdefault((office, normalize(pattern, delimiter)), rule)
        if same is not rule:
            raise rt.error("folders", f"same office {office!r} and folders {pattern!r} as "
                                      f"{same.source_key}: merge the two rules")
        rules.append(rule)
    return MailboxPolicy(name, delimiter, default, tuple(rules), send, t.key)


def parse_policy(data: dict, source: str) -> Policy:
    """Build a :class:`Policy` from parsed TOML; raises :class:`PolicyError`, never returns half."""
    source = str(source)
    root = _Table(data, source, "", ("offices", "mailboxes"))
    for required in ("offices", "mailboxes"):
        if required not in data:
            raise root.error(required, "missing (required table)")
    ot = _Table(data["offices"], source, "offices", None)
    office_keys = ("groups", "members", "send_to_allow", "send_to_deny")
    offices = {name: _office(_Table(ot.data[name], source, ot.sub(name), office_keys), name)
               for name in ot.data}
    mt = _Table(data["mailboxes"], source, "mailboxes", None)
    if not mt.data:
        raise PolicyError(source, "mailboxes", "at least one mailbox is required")
    allowed = ("delimiter", "default_rights", "send", "rules")
    mailboxes = {name: _mailbox(_Table(mt.data[name], source, mt.sub(name), allowed), name, offices)
                 for name in mt.data}
    return Policy(MappingProxyType(offices), MappingProxyType(mailboxes), source)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; every failure is a :class:`PolicyError` naming the file."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise PolicyError(source, "", "file not found") from None
    except OSError as exc:
        raise PolicyError(source, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PolicyError(source, "", f"not UTF-8 (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(source, "", f"not valid TOML: {exc}") from None
    return parse_policy(data, source)
