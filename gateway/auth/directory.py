"""The directory interface: who a person is and which groups they belong to.

Two backends implement it: :mod:`gateway.auth.ldap_directory` (OpenLDAP, Active Directory) and
:mod:`gateway.auth.static_directory` (a TOML file of users, for the demo and small sites).
Both are blocking; the authenticator calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.secret import Secret

__all__ = ["Person", "Directory", "DirectoryUnavailable"]


@dataclass(frozen=True)
class Person:
    """An authenticated employee as the directory describes them."""

    username: str
    display_name: str = ""
    groups: frozenset[str] = field(default_factory=frozenset)
    dn: str | None = None


class DirectoryUnavailable(Exception):
    """The directory could not be asked (server down, service bind refused, timeout)."""


class Directory(Protocol):
    """Checks a person's password and tells their groups."""

    def authenticate(self, username: str, password: Secret) -> Person | None:
        """Return the person when ``password`` is theirs and the account is enabled, else None.

        Unknown user, wrong password and disabled account all return None: callers must not be
        able to tell them apart.  Raises :class:`DirectoryUnavailable` when the directory cannot
        answer at all.
        """
        ...

    def lookup(self, username: str) -> Person | None:
        """Return the enabled person without checking a password (used to re-validate sessions)."""
        ...
