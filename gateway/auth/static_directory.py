"""A directory kept in a TOML file, for the demo and for small offices without LDAP.

::

    [users.alice]
    password = "scrypt$32768$8$1$...$..."   # from `pecgw hash-password`
    display_name = "Alice Rossi"
    groups = ["legale"]
    disabled = false

Only scrypt hashes are accepted (see :mod:`gateway.auth.passwords`); a clear-text password in the
file is an error.  Every problem is reported as :class:`StaticDirectoryError` naming the file and
the key (``users.alice.password: not a scrypt hash ...``).

Timing: an unknown user costs the same scrypt work as a known one (a dummy verify against a fixed
hash built with the file's own parameters), and a disabled user's password is still checked, so
response time does not reveal which names exist.

The file is re-read when it changes (size, mtime or inode), so disabling someone takes effect at
their next login, as with LDAP.  If the edited file is broken, logins fail with
:class:`~gateway.auth.directory.DirectoryUnavailable` until it is fixed, rather than silently
keeping the old user list.
"""

from __future__ import annotations

import os
import secrets
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.auth.directory import DirectoryUnavailable, Person
from gateway.auth.passwords import (
    DEFAULT_N,
    DEFAULT_P,
    DEFAULT_R,
    hash_password,
    parse_password_hash,
    verify_password,
)
from gateway.secret import Secret

__all__ = ["StaticDirectory", "StaticDirectoryError"]

_USER_KEYS = {"password", "display_name", "groups", "disabled"}


class StaticDirectoryError(ValueError):
    """The users file is missing or malformed; the message names the file and the key."""


@dataclass(frozen=True)
class _User:
    password_hash: str
    person: Person
    disabled: bool


class StaticDirectory:
    """:class:`~gateway.auth.directory.Directory` backed by a TOML file of scrypt-hashed users."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp, self._users, self._dummy_hash = self._load()

    def __repr__(self) -> str:
        return f"StaticDirectory({str(self.path)!r})"

    # -- Directory ---------------------------------------------------------------------------

    def authenticate(self, username: str, password: Secret) -> Person | None:
        """The enabled person whose password this is, else None (always one scrypt verify)."""
        user = self._users_now().get(username) if isinstance(username, str) else None
        if user is None:
            verify_password(password, self._dummy_hash)  # same cost as a real user
            return None
        ok = verify_password(password, user.password_hash)
        if not ok or user.disabled or not password:
            return None
        return user.person

    def lookup(self, username: str) -> Person | None:
        """The enabled person named ``username``, without a password check."""
        user = self._users_now().get(username) if isinstance(username, str) else None
        if user is None or user.disabled:
            return None
        return user.person

    # -- loading -----------------------------------------------------------------------------

    def _users_now(self) -> dict[str, _User]:
        """The current user table, re-read when the file changed."""
        with self._lock:
            try:
                stamp = self._stat()
            except StaticDirectoryError as exc:
                raise DirectoryUnavailable(str(exc)) from None
            if stamp != self._stamp:
                try:
                    self._stamp, self._users, self._dummy_hash = self._load()
                except StaticDirectoryError as exc:
                    raise DirectoryUnavailable(str(exc)) from None
            return self._users

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise StaticDirectoryError(f"{self.path}: cannot read users file: {exc.strerror}")
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> tuple[tuple[int, int, int], dict[str, _User], str]:
        stamp = self._stat()
        try:
            with open(self.path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise StaticDirectoryError(f"{self.path}: cannot read users file: {exc.strerror}")
        except tomllib.TOMLDecodeError as exc:
            raise StaticDirectoryError(f"{self.path}: not valid TOML: {exc}") from None
        unknown = set(doc) - {"users"}
        if unknown:
            raise self._error(sorted(unknown)[0], "unknown key (expected only [users.*] tables)")
        users_doc = doc.get("users", {})
        if not isinstance(users_doc, dict):
            raise self._error("users", "must be a table of [users.<name>] tables")
        users = {name: self._parse_user(name, entry) for name, entry in users_doc.items()}
        return stamp, users, self._make_dummy(users)

    def _parse_user(self, name: str, entry: Any) -> _User:
        key = f"users.{name}"
        if not name or not name.isprintable() or name != name.strip():
            raise self._error(key, "user name must be non-empty printable text without spaces")
        if not isinstance(entry, dict):
            raise self._error(key, "must be a table")
        unknown = set(entry) - _USER_KEYS
        if unknown:
            raise self._error(f"{key}.{sorted(unknown)[0]}", "unknown key")
        password = entry.get("password")
        if password is None:
            raise self._error(f"{key}.password", "missing")
        try:
            parse_password_hash(password)
        except ValueError as exc:
            raise self._error(f"{key}.password", str(exc)) from None
        display_name = entry.get("display_name", "")
        if not isinstance(display_name, str):
            raise self._error(f"{key}.display_name", "must be a string")
        groups = entry.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            raise self._error(f"{key}.groups", "must be a list of non-empty strings")
        disabled = entry.get("disabled", False)
        if not isinstance(disabled, bool):
            raise self._error(f"{key}.disabled", "must be true or false")
        person = Person(username=name, display_name=display_name, groups=frozenset(groups))
        return _User(password_hash=password, person=person, disabled=disabled)

    def _make_dummy(self, users: dict[str, _User]) -> str:
        """A fixed hash of a random password, with the cost parameters the users have."""
        n, r, p = DEFAULT_N, DEFAULT_R, DEFAULT_P
        if users:
            first = parse_password_hash(next(iter(users.values())).password_hash)
            n, r, p = first.n, first.r, first.p
        return hash_password(Secret(secrets.token_urlsafe(16)), n=n, r=r, p=p)

    def _error(self, key: str, problem: str) -> StaticDirectoryError:
        return StaticDirectoryError(f"{self.path}: {key}: {problem}")
