"""The LDAP directory (OpenLDAP, Active Directory) behind :class:`~gateway.auth.directory.Directory`.

One login, in order:

1. open a connection and bind as the **service account** (refused → the directory is unusable);
2. search ``user_base`` with ``user_filter`` (the username escaped with ldap3's
   ``escape_filter_chars``, RFC 4515 section 3, so ``*`` or ``alice)(uid=*`` match nothing);
   exactly one entry must match, else the answer is "no such person";
3. check ``disabled_filter`` on that entry alone (base-scope search of its DN with
   ``(&(objectClass=*)<disabled_filter>)``); a match means disabled;
4. bind as the person's DN with the given password on a **separate** connection;
5. search ``group_base`` with ``group_filter`` (``{dn}`` = the person's DN, ``{username}`` = the
   canonical username, both escaped) and collect ``group_name_attribute``.

An unknown, ambiguous or disabled user still costs one bind (against a DN that cannot exist), so
response time does not tell those cases from a wrong password.  An empty password is refused
before any bind: RFC 4513 section 5.1.2 makes a simple bind with an empty password an
*unauthenticated* bind, which many servers accept.

Connections: a fresh one per call, closed at the end.  Simple, thread-safe (the authenticator calls
from ``asyncio.to_thread`` workers) and it always sees the directory's current state; the cost is
one TCP (and TLS) handshake per login, which is small next to a mail client's own TLS session.

Errors: connection refused, timeout, TLS failure, a refused service bind or a server-side error
raise :class:`~gateway.auth.directory.DirectoryUnavailable` naming the URL and the step.  Messages
never contain a password: ldap3's error text is included only when no password in play occurs in
it, and ldap3's connection object (whose repr shows the password) forgets it right after the bind.
"""

from __future__ import annotations

import math
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from gateway.auth.directory import DirectoryUnavailable, Person
from gateway.secret import Secret

__all__ = ["LdapSettings", "LdapDirectory"]

# RFC 4511 result codes that mean "not found / no answer for you", not "the directory is broken".
_OK_SEARCH = {0, 4, 32}  # success, sizeLimitExceeded (ambiguous: >1 match), noSuchObject
_BIND_REFUSED = {48, 49, 50, 53}  # inappropriateAuth, invalidCredentials, insufficientAccess, unwilling
_DUMMY_RDN = "cn=pecgw-no-such-entry-"


@dataclass(frozen=True)
class LdapSettings:
    """Where the directory is and how people, groups and disabled accounts are found."""

    url: str
    bind_dn: str
    bind_password: Secret
    user_base: str
    group_base: str
    user_filter: str = "(&(objectClass=inetOrgPerson)(uid={username}))"
    group_filter: str = "(&(objectClass=groupOfNames)(member={dn}))"
    group_name_attribute: str = "cn"
    display_name_attribute: str = "cn"
    disabled_filter: str = "(pwdAccountLockedTime=*)"
    ca_file: Path | None = None
    start_tls: bool = False
    timeout: float = 5.0
    username_attribute: str = "uid"  # canonical spelling of the login name (AD: sAMAccountName)

    def __post_init__(self) -> None:
        if not self.url.startswith(("ldap://", "ldaps://")):
            raise ValueError("ldap url must start with ldap:// or ldaps://")
        if self.url.startswith("ldaps://") and self.start_tls:
            raise ValueError("start_tls makes no sense with an ldaps:// url")
        if not isinstance(self.bind_password, Secret):
            raise TypeError("bind_password must be a Secret")
        if "{username}" not in self.user_filter:
            raise ValueError("user_filter must contain {username}")
        for name in ("user_filter", "group_filter", "disabled_filter"):
            value = getattr(self, name)
            if value and not (value.startswith("(") and value.endswith(")")):
                raise ValueError(f"{name} must be a parenthesised LDAP filter")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")


def _fill(template: str, **values: str) -> str:
    """Substitute ``{name}`` placeholders with RFC 4515-escaped values (no str.format parsing)."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", escape_filter_chars(value))
    return template


def _first(attributes: dict[str, Any], name: str) -> str | None:
    value = attributes.get(name)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def _all(attributes: dict[str, Any], name: str) -> list[str]:
    value = attributes.get(name)
    values = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in values:
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if isinstance(v, str) and v:
            out.append(v)
    return out


class LdapDirectory:
    """:class:`~gateway.auth.directory.Directory` over LDAP; see the module docstring."""

    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings
        tls = None
        if settings.url.startswith("ldaps://") or settings.start_tls:
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED,
                ca_certs_file=str(settings.ca_file) if settings.ca_file else None,
                sni=urlsplit(settings.url).hostname,  # ldap3 checks the name after the handshake
            )
        self._server = ldap3.Server(
            settings.url,
            use_ssl=settings.url.startswith("ldaps://"),
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=settings.timeout,
        )

    def __repr__(self) -> str:
        return f"LdapDirectory({self.settings.url!r})"

    # -- Directory ---------------------------------------------------------------------------

    def authenticate(self, username: str, password: Secret) -> Person | None:
        """The enabled person whose password this is, else None; see the module docstring."""
        if not isinstance(username, str) or not username or not password:
            return None
        with self._service() as conn:
            found = self._find_enabled(conn, username)
            if found is None:
                self._bind_user(_DUMMY_RDN + secrets.token_hex(8) + "," + self.settings.user_base,
                                password)
                return None
            dn, attributes = found
            if not self._bind_user(dn, password):
                return None
            return self._person(conn, username, dn, attributes)

    def lookup(self, username: str) -> Person | None:
        """The enabled person named ``username``, without a password check.

        ``username`` may be the login as typed or the canonical name the directory gave at login
        (re-validation and revocation use that one): with ``user_filter`` on ``mail`` and
        ``username_attribute = "uid"``, ``alice`` is found by her uid, not taken for a leaver."""
        if not isinstance(username, str) or not username:
            return None
        with self._service() as conn:
            found = self._find_enabled(conn, username, canonical_too=True)
            if found is None:
                return None
            dn, attributes = found
            return self._person(conn, username, dn, attributes)

    # -- steps -------------------------------------------------------------------------------

    def _find_enabled(self, conn: _Conn, username: str, *,
                      canonical_too: bool = False) -> tuple[str, dict[str, Any]] | None:
        """The one entry matching ``username`` unless it is disabled: ``(dn, attributes)``.
        ``canonical_too`` also matches ``username_attribute`` (see :meth:`lookup`)."""
        s = self.settings
        wanted = sorted({s.display_name_attribute, s.username_attribute})
        flt = _fill(s.user_filter, username=username)
        if canonical_too:
            flt = f"(|{flt}({s.username_attribute}={escape_filter_chars(username)}))"
        entries = conn.search(s.user_base, flt, ldap3.SUBTREE, wanted, size_limit=2, step="user search")
        if len(entries) != 1:
            return None
        dn, attributes = entries[0]
        if s.disabled_filter:
            locked = conn.search(dn, f"(&(objectClass=*){s.disabled_filter})", ldap3.BASE,
                                 [], size_limit=1, step="disabled check")
            if locked:
                return None
        return dn, attributes

    def _person(self, conn: _Conn, username: str, dn: str, attributes: dict[str, Any]) -> Person:
        """Build the :class:`Person`, with the groups whose filter names this entry."""
        s = self.settings
        canonical = _first(attributes, s.username_attribute) or username
        groups: set[str] = set()
        if s.group_filter:
            flt = _fill(s.group_filter, dn=dn, username=canonical)
            for _, group_attrs in conn.search(s.group_base, flt, ldap3.SUBTREE,
                                              [s.group_name_attribute], step="group search"):
                groups.update(_all(group_attrs, s.group_name_attribute))
        return Person(
            username=canonical,
            display_name=_first(attributes, s.display_name_attribute) or canonical,
            groups=frozenset(groups),
            dn=dn,
        )

    def _bind_user(self, dn: str, password: Secret) -> bool:
        """Bind as ``dn`` on a separate connection; False when the server refuses the password."""
        conn = _Conn(self, dn, password)
        try:
            conn.open("user bind")
            if conn.bind("user bind"):
                return True
            code = conn.result_code()
            if code in _BIND_REFUSED:
                return False
            raise conn.unavailable("user bind", f"result {code} {conn.result_description()}")
        finally:
            conn.close()

    def _service(self) -> _Conn:
        """An open connection bound as the service account (a context manager)."""
        s = self.settings
        conn = _Conn(self, s.bind_dn, s.bind_password)
        try:
            conn.open("connect")
            if not conn.bind("service bind"):
                raise conn.unavailable(
                    "service bind",
                    f"refused: result {conn.result_code()} {conn.result_description()}",
                )
        except BaseException:
            conn.close()
            raise
        return conn


class _Conn:
    """One ldap3 connection with error translation; every failure becomes DirectoryUnavailable."""

    def __init__(self, directory: LdapDirectory, user: str, password: Secret) -> None:
        self._url = directory.settings.url
        self._start_tls = directory.settings.start_tls
        self._time_limit = max(1, math.ceil(directory.settings.timeout))
        self._secrets = [directory.settings.bind_password, password]
        self._conn = ldap3.Connection(
            directory._server,
            user=user,
            password=password.reveal(),
            authentication=ldap3.SIMPLE,
            auto_bind=ldap3.AUTO_BIND_NONE,
            raise_exceptions=False,
            read_only=True,
            receive_timeout=max(1, math.ceil(directory.settings.timeout)),  # ldap3 needs an int
            auto_referrals=False,
        )

    def __repr__(self) -> str:
        return f"_Conn({self._url!r})"

    def __enter__(self) -> _Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def unavailable(self, step: str, detail: str, kind: str = "") -> DirectoryUnavailable:
        """The error to raise; ``detail`` is dropped if a password occurs in it anywhere.

        Dropping rather than masking: masking a short password inside ldap3's text would show
        where (and so what) it is.
        """
        if any(secret and secret.reveal() in detail for secret in self._secrets):
            detail = "(details withheld)"
        if kind:
            detail = f"{kind}: {detail}"
        return DirectoryUnavailable(f"LDAP directory {self._url}: {step} failed: {detail}")

    def _wrap(self, step: str, exc: BaseException) -> DirectoryUnavailable:
        return self.unavailable(step, str(exc), type(exc).__name__)

    def open(self, step: str) -> None:
        try:
            self._conn.open()
            if self._start_tls and not self._conn.start_tls():
                raise self.unavailable(step, f"StartTLS refused: {self.result_description()}")
        except LDAPException as exc:
            raise self._wrap(step, exc) from None
        except OSError as exc:
            raise self._wrap(step, exc) from None

    def bind(self, step: str) -> bool:
        """Simple bind; then drop the clear password from ldap3 (its repr would show it)."""
        try:
            return bool(self._conn.bind())
        except LDAPException as exc:
            raise self._wrap(step, exc) from None
        finally:
            self._conn.password = None

    def search(
        self, base: str, flt: str, scope: str, attributes: list[str], *, step: str,
        size_limit: int = 0,
    ) -> list[tuple[str, dict[str, Any]]]:
        """Entries ``(dn, attributes)``; noSuchObject and sizeLimitExceeded are not errors."""
        try:
            self._conn.search(base, flt, search_scope=scope,
                              attributes=attributes or [ldap3.NO_ATTRIBUTES],
                              size_limit=size_limit, time_limit=self._time_limit)
        except LDAPException as exc:
            raise self._wrap(step, exc) from None
        code = self.result_code()
        if code not in _OK_SEARCH:
            raise self.unavailable(step, f"result {code} {self.result_description()}")
        return [
            (r["dn"], dict(r.get("attributes") or {}))
            for r in (self._conn.response or [])
            if r.get("type") == "searchResEntry"
        ]

    def result_code(self) -> int | None:
        result = self._conn.result or {}
        return result.get("result")

    def result_description(self) -> str:
        result = self._conn.result or {}
        return str(result.get("description", ""))

    def close(self) -> None:
        self._conn.password = None
        try:
            if not self._conn.closed:
                self._conn.unbind()
        except (LDAPException, OSError):
            pass
