"""Capability lists: the gateway's own before login, the provider's filtered after.

Capabilities are an allowlist (DESIGN.md).  Before login the gateway speaks for itself; after
login the client sees what the provider offers *minus* everything the gateway cannot parse or must
not let through: ``COMPRESS`` (the gateway has to read every byte), ``STARTTLS``/``AUTH=``/
``LOGINDISABLED``/``SASL-IR`` (login is over), ``ACL``/``RIGHTS=`` (the gateway answers access
control itself), ``UTF8=`` and ``IMAP4rev2`` (they change mailbox-name and response syntax),
``BINARY``/``CATENATE``/``URLAUTH``/``NOTIFY``/``METADATA`` (not parsed yet), ``SEARCHRES``
and ``MULTIAPPEND`` (a saved ``$`` result or several messages in one APPEND would leave the
audit trail unable to say which messages a command touched).

Clients such as mbsync and Thunderbird never send CAPABILITY: they read the list from the greeting
and from the tagged OK of LOGIN/AUTHENTICATE, so those codes are written by the gateway too.
"""

from __future__ import annotations

__all__ = ["preauth_capabilities", "filter_capabilities", "ALLOWED", "ALLOWED_PREFIXES"]

#: Capabilities passed through after login, exactly as named (upper-case compare).
ALLOWED = frozenset(
    {
        "IMAP4REV1",
        "LITERAL+",
        "ID",
        "ENABLE",
        "IDLE",
        "NAMESPACE",
        "UIDPLUS",
        "MOVE",
        "UNSELECT",
        "CHILDREN",
        "CONDSTORE",
        "QRESYNC",
        "SPECIAL-USE",
        "CREATE-SPECIAL-USE",
        "LIST-EXTENDED",
        "LIST-STATUS",
        "ESEARCH",
        "SORT",
        "SORT=DISPLAY",
        "ESORT",
        "WITHIN",
        "CONTEXT=SEARCH",
        "CONTEXT=SORT",
        "QUOTA",
        "STATUS=SIZE",
        "SAVEDATE",
        "MULTISEARCH",
        "I18NLEVEL=1",
    }
)

#: Capability families passed through by prefix.
ALLOWED_PREFIXES = ("THREAD=", "QUOTA=RES-", "APPENDLIMIT")


def preauth_capabilities(*, tls_active: bool, starttls_available: bool, plaintext_allowed: bool) -> list[str]:
    """The gateway's own list before login (RFC 3501 §6.2.1, RFC 2595 §3.2)."""
    caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE"]
    if not tls_active and starttls_available:
        caps.append("STARTTLS")
    if tls_active or plaintext_allowed:
        caps.append("AUTH=PLAIN")
    else:
        caps.append("LOGINDISABLED")
    return caps


def filter_capabilities(upstream: list[str]) -> list[str]:
    """The provider's list reduced to the allowlist; LITERAL+ is the gateway's own and always kept.

    The gateway buffers client literals itself and converts them for the provider, so clients may
    use non-synchronising literals whatever the provider offers.
    """
    out: list[str] = []
    seen: set[str] = set()
    for cap in upstream:
        up = cap.upper()
        if up in seen:
            continue
        if up in ALLOWED or up.startswith(ALLOWED_PREFIXES):
            out.append(cap)
            seen.add(up)
    if "IMAP4REV1" not in seen:
        out.insert(0, "IMAP4rev1")
    if "LITERAL+" not in seen:
        out.insert(1, "LITERAL+")
    return out
