"""The PEC Manager's inventory: every configured mailbox, probed at its provider now and then.

What: :class:`MailboxWatch` runs in the gateway and probes every mailbox
(:func:`gateway.mailbox_probe.probe_mailbox`) once per ``[census] probe_interval``, at most
:data:`PROBES_AT_ONCE` at a time, and keeps the latest result of each.  ``/readyz`` reads those results (it never asks a
provider itself, so a probe storm cannot reach one), the admin verb ``census`` hands them with
the rest of :func:`census_row` to ``pecgw mailboxes``, and each result sets the metrics
``pecgw_mailbox_up``, ``pecgw_mailbox_quota_*``, ``pecgw_mailbox_inbox_messages`` and
``pecgw_mailbox_unhandled_pec``.

Why the quota matters: a full PEC mailbox bounces incoming PEC back to the sender as a mancata
consegna, and court communications are then deemed served anyway (PEC.md section 5).  When a
mailbox's quota use reaches ``[census] quota_warn`` the gateway logs one WARNING -- once per
crossing, not at every probe -- and ``pecgw_mailbox_quota_over_threshold`` is 1 until it is
below again (logged at INFO).

A mailbox whose vaulted password the provider refused is not probed (the probe sees the mark
in :class:`~gateway.mailbox_credentials.MailboxCredentials` and does not connect) until the
vault entry is set again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from gateway.config import CensusConfig, MailboxConfig
from gateway.mailbox_credentials import MailboxCredentials
from gateway.mailbox_probe import ProbeResult, probe_mailbox
from gateway.metrics import (MAILBOX_INBOX_MESSAGES, MAILBOX_QUOTA_LIMIT_BYTES, MAILBOX_QUOTA_OVER,
                             MAILBOX_QUOTA_USED_BYTES, MAILBOX_QUOTA_USED_RATIO, MAILBOX_UNHANDLED_PEC, MAILBOX_UP)
from policy import Policy, can_use_mailbox, mailbox_send_allowed
from policy.model import Right

__all__ = ["MailboxWatch", "census_row", "offices_allowed", "size_text"]

log = logging.getLogger("pecgw.census")

#: Probes at once in a round: many mailboxes at one provider are not all logged in at the same moment.
PROBES_AT_ONCE = 4


class MailboxWatch:
    """Probes every mailbox every ``census.probe_interval_s``; :meth:`latest` gives the results."""

    def __init__(self, mailboxes: Mapping[str, MailboxConfig], credentials: MailboxCredentials,
                 census: CensusConfig) -> None:
        self.mailboxes, self.credentials, self.census = dict(mailboxes), credentials, census
        self._latest: dict[str, ProbeResult] = {}
        self._over: set[str] = set()  # mailboxes above quota_warn, warned about once
        self._round: asyncio.Task | None = None
        self._task: asyncio.Task | None = None
        self._slots = asyncio.Semaphore(PROBES_AT_ONCE)
        for name in self.mailboxes:
            MAILBOX_QUOTA_OVER.labels(name).set(0)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mailbox-census")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._round) if t is not None]
        self._task = self._round = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug must not end the census for good
                log.exception("mailbox census: a probe round failed")
            await asyncio.sleep(self.census.probe_interval_s)

    # ------------------------------------------------------------------ probing
    async def refresh(self) -> dict[str, ProbeResult]:
        """Probe every mailbox now, or wait for the round already under way; the results."""
        if self._round is None or self._round.done():
            self._round = asyncio.get_running_loop().create_task(self._probe_all(), name="mailbox-census-round")
        await asyncio.shield(self._round)
        return dict(self._latest)

    async def wait_first(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until every mailbox has been probed once."""
        if all(name in self._latest for name in self.mailboxes):
            return
        try:
            async with asyncio.timeout(timeout_s):
                while self._round is None:
                    await asyncio.sleep(0.05)
                await asyncio.shield(self._round)
        except TimeoutError:
            pass

    async def _probe_all(self) -> None:
        await asyncio.gather(*(self._probe(m) for m in self.mailboxes.values()))

    async def _probe(self, mailbox: MailboxConfig) -> None:
        async with self._slots:
            self._record(await probe_mailbox(mailbox, self.credentials, timeout_s=self.census.probe_timeout_s,
                                             unhandled_age_s=self.census.unhandled_age_s))

    def latest(self, name: str) -> ProbeResult | None:
        return self._latest.get(name)

    def _record(self, result: ProbeResult) -> None:
        name = result.mailbox
        previous = self._latest.get(name)
        self._latest[name] = result
        MAILBOX_UP.labels(name).set(1 if result.ok else 0)
        if not result.ok:
            if previous is None or previous.ok or previous.reason != result.reason:
                log.warning("mailbox census: mailbox %s: %s", name, result.reason)
            return
        if previous is not None and not previous.ok:
            log.info("mailbox census: mailbox %s: the provider answers again", name)
        if result.messages is not None:
            MAILBOX_INBOX_MESSAGES.labels(name).set(result.messages)
        if result.unhandled is not None:
            MAILBOX_UNHANDLED_PEC.labels(name).set(result.unhandled)
        if result.quota_used is not None:
            MAILBOX_QUOTA_USED_BYTES.labels(name).set(result.quota_used)
        if result.quota_limit is not None:
            MAILBOX_QUOTA_LIMIT_BYTES.labels(name).set(result.quota_limit)
        ratio = result.quota_ratio
        if ratio is None:
            return
        MAILBOX_QUOTA_USED_RATIO.labels(name).set(ratio)
        over = ratio >= self.census.quota_warn
        MAILBOX_QUOTA_OVER.labels(name).set(1 if over else 0)
        if over and name not in self._over:
            self._over.add(name)
            log.warning("mailbox %s: %.0f%% of its quota is used (%s of %s), at or above [census] quota_warn "
                        "(%.0f%%): when it is full, incoming PEC bounces back to the sender; free space or enlarge "
                        "the mailbox at the provider", name, ratio * 100, size_text(result.quota_used),
                        size_text(result.quota_limit), self.census.quota_warn * 100)
        elif not over and name in self._over:
            self._over.discard(name)
            log.info("mailbox %s: quota use is below [census] quota_warn again (%.0f%%)", name, ratio * 100)


# ---------------------------------------------------------------------- the inventory rows
def offices_allowed(policy: Policy, mailbox: str) -> dict:
    """Who may use ``mailbox`` under ``policy``: ``{"everyone": bool, "offices": [{"office",
    "send"}]}`` -- each office that sees some folder of it or may send from it."""
    mb = policy.mailboxes.get(mailbox)
    everyone = mb is not None and mb.default_rights.has(Right.LOOKUP)
    offices = [{"office": name, "send": mailbox_send_allowed(policy, [name], mailbox).rights.send}
               for name in sorted(policy.offices) if can_use_mailbox(policy, [name], mailbox)]
    return {"everyone": everyone, "offices": offices}


def census_row(mailbox: MailboxConfig, policy: Policy | None, result: ProbeResult | None,
               last_login: float | None, quota_warn: float) -> dict:
    """One mailbox of ``pecgw mailboxes``, JSON-ready.  ``last_login``: the last provider login
    that succeeded (any front, the watcher, a probe), as the gateway knows it."""
    logins = [t for t in (last_login, result.login_at if result else None) if t is not None]
    allowed = offices_allowed(policy, mailbox.name) if policy is not None else {"everyone": False, "offices": []}
    row = {"mailbox": mailbox.name, "address": mailbox.address,
           "provider": f"{mailbox.imap.host}:{mailbox.imap.port}", **allowed,
           "upstream": result.state if result else "unknown",
           "reason": result.reason if result else "not probed yet",
           "probed_at": result.at if result else None, "last_login": max(logins) if logins else None}
    for key in ("quota_used", "quota_limit", "messages", "unseen", "unhandled"):
        row[key] = getattr(result, key) if result else None
    ratio = result.quota_ratio if result else None
    row["quota_ratio"] = ratio
    row["quota_warn"] = ratio is not None and ratio >= quota_warn
    return row


def size_text(octets: int | None) -> str:
    """``850 KiB``, ``1.5 GiB``: a quota figure for people."""
    if octets is None:
        return "-"
    value, unit = float(octets), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.0f} {unit}" if unit in ("B", "KiB") or value >= 100 else f"{value:.1f} {unit}"
