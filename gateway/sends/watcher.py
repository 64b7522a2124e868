"""The receipt watcher: one provider IMAP session per sending mailbox, linking receipts to sends.

What: for every mailbox with ``[mailboxes.NAME.smtp]``, one task holds one connection of the
gateway's own to the provider (TLS verified, LOGIN with the vaulted password, as
:mod:`gateway.imap_proxy.upstream` does).  It ``EXAMINE``\\ s the folder where receipts land
(read-only: nothing is ever marked ``\\Seen``), reads each new message's top-level header
block and BODYSTRUCTURE, fetches just the daticert part of those that claim to be receipts
(``BODY.PEEK[section]<0.N>``), links them (:mod:`gateway.sends.receipts`,
:mod:`gateway.sends.linking`) and writes one ``receipt`` audit row per receipt linked
(protocol ``watcher``), in the name of the person who sent the PEC.  Then it waits in IDLE
(RFC 2177) until the provider announces ``EXISTS``, and starts again.

Why: the receipts are the only proof of what became of a PEC (PEC.md section 4): the
accettazione proves it was sent, each avvenuta-consegna that it was delivered.  A person sees
them in the mailbox; ``pecgw sends`` and the audit trail see them only through this.

Where it starts: the last UID examined is kept per (mailbox, folder) with the UIDVALIDITY it
belongs to, in the send store's database, so a restart goes on where it stopped.  The first
time (or after a UIDVALIDITY change) there is nothing to go on: messages are examined from the
day before the mailbox's oldest recorded send, and never more than :data:`FIRST_START_DAYS`
back — a receipt cannot be older than its send, and PEC.md section 1's last notice comes 24 h
after sending; a mailbox with no send recorded starts at its current end (its receipts are
about sends made elsewhere).  Receipts seen twice are linked once (the dedupe key).

Failures: the connection is opened again with exponential backoff (:data:`BACKOFF_FIRST_S`
doubling up to :data:`BACKOFF_MAX_S`), logged once per streak.  A password the provider refuses
(here, or at a person's IMAP or SMTP login: :mod:`gateway.mailbox_credentials` keeps one record
for the whole gateway) pauses the watcher without another try — retrying would lock the mailbox
out at the provider (PEC.md section 5, "on auth failure, stop and alert") — until the vault entry
is set again (``pecgw vault set``, seen without a restart; checked every
:data:`PASSWORD_RECHECK_S`); then it resumes where it stopped.  The store is called through
:func:`asyncio.to_thread`, so the event loop never blocks.

Limit: one folder per connection (RFC 2177 IDLE watches the selected one); receipts land in
INBOX at the providers known (:data:`gateway.sends.mailbox_check.RECEIPT_FOLDERS`), and a
receipt filed elsewhere before the watcher saw it is not linked.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import random
import secrets
from dataclasses import replace

from gateway.audit.events import Action, AuditEvent, Decision, utc_now
from gateway.config import MailboxConfig
from gateway.imap_proxy.bodystructure import bodystructure_in_fetch, find_daticert
from gateway.imap_proxy.identity import IDENTITY_ITEM, fetch_identity_item, identity_from_headers
from gateway.imap_proxy.upstream import ProviderConversation, UpstreamError
from gateway.mailbox_credentials import MailboxCredentials, PasswordRefused
from gateway.metrics import RECEIPTS, upstream_login
from gateway.sends.linking import Linked, link_receipt
from gateway.sends.mailbox_check import RECEIPT_FOLDERS
from gateway.sends.receipts import MAX_PART_OCTETS, NotCounted, read_receipt, ricevuta_of
from gateway.sends.watch_imap import (examine, fetch_items, item_uid, part_octets, search_uids, since_text,
                                      wait_for_news)

__all__ = ["ReceiptWatcher", "ReceiptWatchers", "BACKOFF_FIRST_S", "BACKOFF_MAX_S", "FIRST_START_DAYS",
           "PASSWORD_RECHECK_S"]

log = logging.getLogger("pecgw.sends")

BACKOFF_FIRST_S = 5.0
BACKOFF_MAX_S = 600.0
#: While the provider refuses the vaulted password: how often the vault entry is looked at (a
#: ``stat`` of the vault file; the provider is not asked until the entry changes).
PASSWORD_RECHECK_S = 5.0
FIRST_START_DAYS = 30
#: Messages examined per FETCH: bounded replies however long the gateway was away.
BATCH = 100
#: One command's reply (a batch of headers and structures) must come within this.
COMMAND_TIMEOUT_S = 120.0
#: The audit rows' protocol: what the gateway did on its own session, not a person's IMAP or
#: SMTP session (so ``protocol = 'smtp'`` still lists exactly what the person's clients did).
PROTOCOL = "watcher"


class ReceiptWatcher:
    """One mailbox's watcher; :meth:`run` until cancelled."""

    def __init__(self, mailbox: MailboxConfig, vault, sends, audit, *, folder: bytes = RECEIPT_FOLDERS[0],
                 credentials: MailboxCredentials | None = None) -> None:
        self.mailbox, self.vault, self.sends, self.audit = mailbox, vault, sends, audit
        # the gateway's shared record of refused passwords; a watcher alone gets its own
        self.credentials = credentials if credentials is not None else MailboxCredentials(vault)
        self.folder_wire = folder
        self.folder = folder.decode("ascii")
        self.session_id = ""
        self.caught_up = False  # this connection examined everything once: a later failure is news
        self.idling = asyncio.Event()  # set while waiting for news (tests and health checks)

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        delay, failing = BACKOFF_FIRST_S, False
        while True:
            self.caught_up = False
            try:
                await self._session()
                problem = "the provider closed the connection"
            except asyncio.CancelledError:
                raise
            except PasswordRefused:
                self.idling.clear()
                await self._wait_for_new_password()
                delay, failing = BACKOFF_FIRST_S, False
                continue
            except UpstreamError as exc:
                problem = f"{exc.kind}: {exc}"
            except Exception as exc:  # noqa: BLE001 - a parse error, the store: back off and retry
                problem = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            self.idling.clear()
            if self.caught_up:  # it worked for a while: start the backoff again
                delay, failing = BACKOFF_FIRST_S, False
            if not failing:
                log.warning("receipt watcher of mailbox %s: %s; retrying in %.0f s, then less often while it "
                            "fails", self.mailbox.name, problem, delay)
                failing = True
            else:
                log.debug("receipt watcher of mailbox %s: %s; retrying in %.0f s", self.mailbox.name, problem, delay)
            await asyncio.sleep(delay * (1 + random.random() / 4))
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _wait_for_new_password(self) -> None:
        """Wait, without asking the provider, until the refused vault entry is set again."""
        log.warning("receipt watcher of mailbox %s paused until the vault entry %r is set again (the provider "
                    "refused the password; no retry, so the provider does not lock the mailbox out)",
                    self.mailbox.name, self.mailbox.password_vault_key)
        while True:
            await asyncio.sleep(PASSWORD_RECHECK_S)
            try:
                if not self.credentials.blocked(self.mailbox):
                    break
            except Exception as exc:  # noqa: BLE001 - a vault being replaced, unreadable: look again later
                log.debug("receipt watcher of mailbox %s: vault not readable now: %s", self.mailbox.name,
                          type(exc).__name__)
        log.info("receipt watcher of mailbox %s: the vault entry %r changed; resuming", self.mailbox.name,
                 self.mailbox.password_vault_key)

    async def _session(self) -> None:
        """One provider session: log in (raising :class:`PasswordRefused` when the provider
        refused this password, now or before), catch up, then IDLE until something fails."""
        password = self.credentials.current(self.mailbox)  # PasswordRefused: refused before, unchanged
        if password is None:
            # not the provider's refusal: retried (with backoff) until 'pecgw vault set' stores it
            raise UpstreamError("no_password", f"vault entry {self.mailbox.password_vault_key!r} missing")
        try:
            with upstream_login(PROTOCOL, self.mailbox.name):
                conv = await ProviderConversation.open(self.mailbox.imap, password.secret)
        except UpstreamError as exc:
            if exc.kind != "login_refused":
                raise
            self.credentials.refused(password, str(exc))  # logged once, at ERROR
            raise PasswordRefused(self.mailbox.name, self.mailbox.password_vault_key) from None
        self.credentials.accepted(password)
        self.session_id = secrets.token_hex(8)
        state = {"news": False}
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                uidvalidity, uidnext = await examine(conv, self.folder_wire, state)
            last = await self._starting_point(conv, uidvalidity, uidnext, state)
            log.info("receipt watcher of mailbox %s: watching %s from UID %d", self.mailbox.name, self.folder,
                     last + 1)
            while True:
                async with asyncio.timeout(COMMAND_TIMEOUT_S):
                    found = [u for u in await search_uids(conv, b"UID %d:*" % (last + 1), state) if u > last]
                for start in range(0, len(found), BATCH):
                    batch = found[start:start + BATCH]
                    await self._examine_batch(conv, uidvalidity, batch, state)
                    last = batch[-1]
                    await asyncio.to_thread(self.sends.set_watch_mark, self.mailbox.name, self.folder, uidvalidity,
                                            last)
                self.caught_up = True
                self.idling.set()
                await wait_for_news(conv, state)
                self.idling.clear()
        finally:
            conv.close()

    async def _starting_point(self, conv, uidvalidity: int, uidnext: int | None, state: dict) -> int:
        """The last UID already examined (see the module docstring); examines the first-start
        backlog itself."""
        mark = await asyncio.to_thread(self.sends.watch_mark, self.mailbox.name, self.folder)
        if mark is not None and mark[0] == uidvalidity:
            return mark[1]
        # read after EXAMINE: a send recorded later has its receipts above uidnext
        first = await asyncio.to_thread(self.sends.first_created, self.mailbox.name)
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            top = (uidnext - 1) if uidnext else max(await search_uids(conv, b"UID *", state), default=0)
            backlog = []
            if first is not None:
                floor = utc_now() - _dt.timedelta(days=FIRST_START_DAYS)
                since = max(_dt.datetime.fromisoformat(first), floor) - _dt.timedelta(days=1)
                backlog = await search_uids(conv, b"SINCE " + since_text(since), state)
        for start in range(0, len(backlog), BATCH):
            await self._examine_batch(conv, uidvalidity, backlog[start:start + BATCH], state)
        last = max([top, *backlog])
        await asyncio.to_thread(self.sends.set_watch_mark, self.mailbox.name, self.folder, uidvalidity, last)
        return last

    # ------------------------------------------------------------------ one batch
    async def _examine_batch(self, conv, uidvalidity: int, uids: list[int], state: dict) -> None:
        """Headers and structure of ``uids``, then the daticert of those claiming to be receipts."""
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            items = await fetch_items(conv, uids, f"(UID BODYSTRUCTURE {IDENTITY_ITEM})", state)
        claims: dict[int, tuple[bytes, object]] = {}
        for entry in items:
            uid, header = item_uid(entry), fetch_identity_item(entry)
            if uid is None or header is None or ricevuta_of(header) is None:
                continue  # not a receipt: a busta, ordinary mail, or a reply without our items
            structure = bodystructure_in_fetch(entry)
            claims[uid] = (header, find_daticert(structure) if structure is not None else None)
        sections: dict[str, list[int]] = {}
        for uid, (_header, part) in claims.items():
            if part is not None and part.signed and part.size <= MAX_PART_OCTETS:
                sections.setdefault(part.section, []).append(uid)
        octets: dict[int, bytes | None] = {}
        for section, wanted in sections.items():
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                fetched = await fetch_items(conv, sorted(wanted),
                                            f"(UID BODY.PEEK[{section}]<0.{MAX_PART_OCTETS}>)", state)
            for entry in fetched:
                uid = item_uid(entry)
                if uid in wanted:
                    octets[uid] = part_octets(entry, section)
        for uid in sorted(claims):
            header, part = claims[uid]
            receipt = read_receipt(header, part, octets.get(uid))
            if isinstance(receipt, NotCounted):
                log.info("mailbox %s %s UID %d claims X-Ricevuta %s but does not count: %s", self.mailbox.name,
                         self.folder, uid, ricevuta_of(header), receipt.reason)
                continue
            if receipt is None:
                continue
            # linked and audited together: a stop meanwhile waits for both (a receipt linked
            # without its row would never get one, the dedupe key says it was seen)
            step = asyncio.ensure_future(self._link(receipt, header, uidvalidity, uid))
            try:
                await asyncio.shield(step)
            except asyncio.CancelledError:
                await asyncio.wait([step], timeout=COMMAND_TIMEOUT_S)
                raise

    async def _link(self, receipt, header: bytes, uidvalidity: int, uid: int) -> None:
        outcome = await asyncio.to_thread(link_receipt, self.sends, receipt, mailbox=self.mailbox.name,
                                          folder=self.folder, uidvalidity=uidvalidity, uid=uid)
        if isinstance(outcome, Linked):
            self._audit(outcome, header, uidvalidity, uid)
            RECEIPTS.labels(self.mailbox.name, receipt.tipo).inc()
        else:
            log.debug("mailbox %s %s UID %d: %s %s is %s", self.mailbox.name, self.folder, uid, receipt.tipo,
                      receipt.identificativo, outcome)

    def _audit(self, linked: Linked, header: bytes, uidvalidity: int, uid: int) -> None:
        """One ``receipt`` row, in the name of the person who sent the PEC."""
        send, receipt, change = linked.send, linked.receipt, linked.transition
        ref = replace(identity_from_headers(header, uidvalidity, uid), pec_id=receipt.identificativo)
        detail = {"tipo": receipt.tipo, "identificativo": receipt.identificativo, "consegna": receipt.consegna,
                  "at": receipt.at, "send_id": send.id, "send_message_id": send.message_id,
                  "matched_by": linked.how, "changed": linked.changed}
        for key in ("send_state", "recipient_state", "detail", "note"):
            value = getattr(change, key)
            if value is not None:
                detail[key] = value
        self.audit.emit(AuditEvent(
            when=utc_now(), session_id=self.session_id, protocol=PROTOCOL, action=Action.RECEIPT,
            decision=Decision.ALLOW, person=send.person, offices=tuple(send.offices), mailbox=send.mailbox,
            folder=self.folder, reason=receipt.tipo, detail=detail, message=ref))
        log.info("mailbox %s: %s %s linked to send %s (%s)", self.mailbox.name, receipt.tipo,
                 receipt.consegna or receipt.identificativo, send.id, "changed" if linked.changed else "no change")


class ReceiptWatchers:
    """The watchers of every sending mailbox, started and stopped with the gateway."""

    def __init__(self, config, vault, sends, audit, credentials: MailboxCredentials | None = None) -> None:
        credentials = credentials if credentials is not None else MailboxCredentials(vault)
        self.watchers = [ReceiptWatcher(m, vault, sends, audit, credentials=credentials)
                         for m in config.mailboxes.values() if m.smtp is not None]
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(w.run(), name=f"receipts-{w.mailbox.name}") for w in self.watchers]

    async def stop(self) -> None:
        """Cancel every watcher and wait for it: their connections are closed on the way out."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
