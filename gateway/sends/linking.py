"""Applying a trusted receipt to the send records: dedupe, match, transition, remember.

Blocking (it calls the :class:`~gateway.sends.store.SendStore`): the watcher runs
:func:`link_receipt` through :func:`asyncio.to_thread`.  The order makes a crash or a second
gateway instance harmless: the change is applied first (every change is idempotent: the same
accettazione twice, the same delivery twice), then the receipt is remembered, and only the
instance whose insert wins reports it — one audit row per receipt (PEC.md section 4 step 5).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.sends.receipts import Receipt, Transition, match_send, transition

__all__ = ["Linked", "link_receipt"]


@dataclass(frozen=True)
class Linked:
    """A receipt linked to a send: which, how it was found, what it changed."""

    send: object  # SendRecord, as it was before this receipt
    receipt: Receipt
    how: str
    transition: Transition
    changed: bool


def link_receipt(store, receipt: Receipt, *, mailbox: str, folder: str, uidvalidity: int | None,
                 uid: int | None) -> Linked | str:
    """Link ``receipt`` (found in ``mailbox``/``folder`` at ``uid``) to its send and apply it.
    Returns :class:`Linked`, or a word saying why not: ``"duplicate"`` (linked before) or
    ``"unmatched"`` (about no send made through the gateway)."""
    key = receipt.dedupe_key
    if store.seen_receipt(key):
        return "duplicate"
    found = match_send(receipt, mailbox, store)
    if found is None:
        return "unmatched"
    send, how = found
    change = transition(receipt, send)
    changed = _apply(store, send, change)
    if not store.add_receipt(key, send_id=send.id, tipo=receipt.tipo, at=receipt.at, mailbox=mailbox,
                             folder=folder, uid=uid, uidvalidity=uidvalidity, consegna=receipt.consegna,
                             detail=receipt.detail):
        return "duplicate"
    return Linked(send, receipt, how, change, changed)


def _apply(store, send, change: Transition) -> bool:
    if change.send_state == "accepted":
        store.accepted(send.id, change.identificativo, change.at, kinds=change.kinds)
        return send.state != "accepted" or send.identificativo != change.identificativo or any(
            send.recipients.get(a, {}).get("kind") != k for a, k in change.kinds.items())
    if change.send_state == "not_accepted":
        return store.not_accepted(send.id, change.identificativo)
    if change.recipient is not None and change.recipient_state is not None:
        return store.recipient(send.id, change.recipient, change.recipient_state, change.at, change.detail)
    return False
