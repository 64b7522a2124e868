"""RFC 4314 ACL commands, answered by the gateway from the policy and never sent to the provider.

The provider's own ACLs (if any) describe the shared provider account, not the people behind the
gateway, so relaying them would be wrong twice: the answers would be about the wrong subject, and
SETACL would let a client change access behind the policy's back.  Instead:

* ``MYRIGHTS f`` — the person's effective rights on ``f`` (any right on the folder suffices, as
  RFC 4314 §4 says: "MYRIGHTS: any of l, r, i, k, x, a").
* ``GETACL f`` — with ``a``: one entry per office of the policy with that office's rights on
  ``f``, the identifier being the office name; without ``a``: ``NO [NOPERM]``.
* ``LISTRIGHTS f id`` — with ``a``: nothing is always granted, each right may be granted alone.
* ``SETACL``/``DELETEACL`` — always ``NO [NOPERM]``: rights are changed in the policy file.

A folder without ``l`` does not exist for the person: ``NO [NONEXISTENT]`` (as for SELECT).
"""

from __future__ import annotations

from policy import RFC4314_ORDER, Right, effective_rights

from gateway.imap_proxy.folder_access import FolderAccess
from gateway.imap_proxy.syntax import quote_string

__all__ = ["ACL_COMMANDS", "AclAnswer", "answer_acl"]

ACL_COMMANDS = frozenset({"MYRIGHTS", "GETACL", "LISTRIGHTS", "SETACL", "DELETEACL"})


class AclAnswer:
    """What to tell the client: the untagged data, the tagged status line, and a denial if any.

    ``denied`` is ``(code, missing right)`` when the command was refused.
    """

    def __init__(self, data: bytes, status: bytes, denied: tuple[str, str] | None = None) -> None:
        self.data, self.status, self.denied = data, status, denied


def _quote(wire: bytes) -> bytes:
    return quote_string(wire)


def answer_acl(name: str, tag: str, folder: bytes, identifier: bytes | None, access: FolderAccess) -> AclAnswer:
    """The reply to one ACL command ``name`` on the folder ``folder`` (wire name)."""
    t = tag.encode()
    rights = access.rights(folder)
    if not rights.has(Right.LOOKUP):
        return AclAnswer(b"", b"%s NO [NONEXISTENT] No such folder\r\n" % t, ("NONEXISTENT", "l"))
    if name in ("SETACL", "DELETEACL"):
        return AclAnswer(b"", b"%s NO [NOPERM] Access rights are set in the gateway's policy file, "
                              b"not by IMAP\r\n" % t, ("NOPERM", "a"))
    if name == "MYRIGHTS":
        return AclAnswer(b"* MYRIGHTS %s %s\r\n" % (_quote(folder), rights.render().encode()),
                         b"%s OK MYRIGHTS completed\r\n" % t)
    if not rights.has(Right.ADMINISTER):
        return AclAnswer(b"", b"%s NO [NOPERM] %s needs the 'a' right on this folder\r\n" % (t, name.encode()),
                         ("NOPERM", "a"))
    if name == "LISTRIGHTS":
        ident = _quote(identifier or b"")
        each = " ".join(RFC4314_ORDER).encode()
        return AclAnswer(b'* LISTRIGHTS %s %s "" %s\r\n' % (_quote(folder), ident, each),
                         b"%s OK LISTRIGHTS completed\r\n" % t)
    policy = access.policy
    assert policy is not None
    human = access.human(folder) or ""
    entries = []
    for office in sorted(policy.offices):
        granted = effective_rights(policy, (office,), access.mailbox, human).rights.render()
        if granted:
            entries.append(b"%s %s" % (_quote(office.encode("utf-8")), granted.encode()))
    return AclAnswer(b"* ACL %s%s\r\n" % (_quote(folder), b"".join(b" " + e for e in entries)),
                     b"%s OK GETACL completed\r\n" % t)
