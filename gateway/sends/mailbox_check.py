"""Did a PEC go out?  Its accettazione in the mailbox says so (PEC.md sections 4 and 5).

When the connection to the provider breaks after DATA, the gateway cannot know whether the
provider took the message.  The provider answers every accepted submission with a signed
accettazione quoting the submission's Message-ID in ``X-Riferimento-Message-ID``; finding it
means the PEC was sent, and sending it again would send a second PEC, with legal effect.
"""

from __future__ import annotations

from gateway.config import MailboxConfig
from gateway.imap_proxy.upstream import UpstreamError, provider_search
from gateway.imap_proxy.syntax import quote_string
from gateway.mailbox_credentials import MailboxCredentials, PasswordRefused

__all__ = ["accettazione_in_mailbox", "RECEIPT_FOLDERS"]

#: Where providers put receipts (the watcher of sends may learn others from configuration).
RECEIPT_FOLDERS = (b"INBOX",)


async def accettazione_in_mailbox(mailbox: MailboxConfig, credentials: MailboxCredentials, message_id: str) -> bool:
    """True when an accettazione for ``message_id`` is in the mailbox.  Raises
    :class:`UpstreamError` when the mailbox cannot be asked (the caller must not send then),
    without asking the provider while it refuses the vaulted password (``credentials``)."""
    try:
        password = credentials.current(mailbox)
    except PasswordRefused as exc:
        raise UpstreamError("login_refused", str(exc)) from None
    if password is None:
        raise UpstreamError("login_refused", f"vault entry {mailbox.password_vault_key!r} missing")
    ident = message_id.encode("ascii", "replace")
    if not message_id or not message_id.isprintable():
        raise UpstreamError("protocol", "the Message-ID cannot be searched for")
    criteria = b"HEADER X-Ricevuta accettazione HEADER X-Riferimento-Message-ID " + quote_string(ident)
    for folder in RECEIPT_FOLDERS:
        try:
            found = await provider_search(mailbox.imap, password.secret, folder, criteria)
        except UpstreamError as exc:
            if exc.kind == "login_refused":
                credentials.refused(password, str(exc))
            raise
        credentials.accepted(password)
        if found:
            return True
    return False
