"""IT's levers on live access: revoke a person, lift it, kick one session, and the periodic check
that everyone still connected may still be.

* :meth:`AccessControl.revoke` records the revocation (it survives a restart), drops the person's
  trust windows (a saved password+code stops working), ends every live IMAP and SMTP session of
  theirs at once — an IDLE included — and writes who revoked whom in the audit trail.  New logins
  are refused by the authenticator until :meth:`lift`.
* :meth:`kick` ends one session (by the id ``pecgw sessions`` shows); the person may log in again.
* :meth:`run` is the background loop: every ``revocation_poll_s`` it re-reads the revocations
  (another instance may have revoked someone: their sessions here end too), and every
  ``revalidate_s`` it asks the directory about each person with a live session.  A person the
  directory no longer knows or reports disabled, or who no longer has the mailbox (moved out of
  every office group), loses those sessions.  When the directory cannot be asked, sessions are
  kept (logged and counted): an LDAP outage must not cut everyone off.

Every ended session gets a ``session_ended`` audit row naming why and by whom, besides its own
``logout`` row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from gateway.access import usable_mailboxes
from gateway.audit.events import Action, AuditEvent, Decision, utc_now
from gateway.auth.directory import DirectoryUnavailable
from gateway.live_sessions import LiveSession, SessionRegistry
from gateway.metrics import REVALIDATION_FAILURES, SESSIONS_ENDED
from gateway.revocations import Revocations
from policy import offices_of

__all__ = ["AccessControl", "END_TEXTS"]

log = logging.getLogger("pecgw.access")

#: What the client is told when the gateway ends its session, by reason (no detail an attacker
#: could use: a revoked and a disabled person are told the same).
END_TEXTS = {
    "revoked": "Your access to this PEC mailbox has been revoked",
    "directory_disabled": "Your access to this PEC mailbox has been revoked",
    "access_withdrawn": "Your access to this PEC mailbox was withdrawn",
    "kicked": "Session ended by the administrator",
}
END_WAIT_S = 1.0  # how long revoke/kick wait for the sessions to be gone before answering


class AccessControl:
    """See the module docstring.  Lives on the gateway's event loop."""

    def __init__(self, *, registry: SessionRegistry, revocations: Revocations, trust, directory, policy,
                 mailboxes, audit, revalidate_s: float = 60.0, revocation_poll_s: float = 2.0) -> None:
        self.registry = registry
        self.revocations = revocations
        self.trust = trust
        self.directory = directory
        self.policy = policy  # a LivePolicy
        self.mailboxes = mailboxes
        self.audit = audit
        self.revalidate_s = revalidate_s
        self.revocation_poll_s = revocation_poll_s
        self._directory_failing = False

    # ------------------------------------------------------------------ IT's verbs
    async def revoke(self, person: str, *, by: str, reason: str | None = None) -> dict:
        """Revoke ``person``; what was done, for the admin channel's answer."""
        fresh = await asyncio.to_thread(self.revocations.revoke, person, by, reason)
        windows = self.trust.forget(person)
        ended = await self.end_sessions(self.registry.of_person(person), "revoked", by=by)
        self._admin_row(Action.REVOKED, person, by=by, reason=reason,
                        detail={"already_revoked": fresh is None, "sessions_ended": ended,
                                "trust_windows_dropped": windows})
        log.warning("%s revoked %r: %d live sessions ended%s", by, person, ended,
                    "" if fresh else " (it was revoked already)")
        return {"person": person, "already_revoked": fresh is None, "sessions_ended": ended}

    async def lift(self, person: str, *, by: str) -> dict:
        """Lift ``person``'s revocation; their old trust windows stay gone (a fresh code is needed)."""
        lifted = await asyncio.to_thread(self.revocations.lift, person)
        if lifted is not None:
            self._admin_row(Action.REVOCATION_LIFTED, lifted.person, by=by,
                            detail={"revoked_at": lifted.revoked_at, "revoked_by": lifted.revoked_by})
            log.warning("%s lifted the revocation of %r", by, lifted.person)
        return {"person": person, "was_revoked": lifted is not None}

    async def kick(self, session_id: str, *, by: str) -> dict:
        """End one live session; ``found`` is False when no session has that id."""
        session = self.registry.get(session_id)
        if session is None:
            return {"session": session_id, "found": False}
        await self.end_sessions([session], "kicked", by=by)
        return {"session": session_id, "found": True, "person": session.person}

    def revoked_people(self) -> list[dict]:
        return [r.as_dict() for r in self.revocations.all()]

    # ------------------------------------------------------------------ ending sessions
    async def end_sessions(self, sessions: Iterable[LiveSession], reason: str, *, by: str) -> int:
        """End ``sessions`` together, each with a ``session_ended`` row; wait (a bounded time)
        until they are closed.  Returns how many there were."""
        sessions = list(sessions)
        for s in sessions:
            self.audit.emit(AuditEvent(
                when=utc_now(), session_id=s.session_id, protocol=s.protocol, action=Action.SESSION_ENDED,
                decision=Decision.DENY, person=s.person, mailbox=s.mailbox, client_ip=s.client_ip,
                reason=reason, detail={"by": by}))
            SESSIONS_ENDED.labels(reason).inc()
        if sessions:
            text = END_TEXTS.get(reason, "Session ended by the gateway")
            ends = [asyncio.ensure_future(s.end(reason, text)) for s in sessions]
            done, pending = await asyncio.wait(ends, timeout=END_WAIT_S)
            for task in done:
                if task.exception() is not None:
                    log.error("ending a session (%s) failed: %r", reason, task.exception())
            if pending:
                log.warning("%d sessions still closing after %.1f s (%s)", len(pending), END_WAIT_S, reason)
        return len(sessions)

    def _admin_row(self, action: str, person: str, *, by: str, reason: str | None = None,
                   detail: dict | None = None) -> None:
        self.audit.emit(AuditEvent(when=utc_now(), session_id="admin", protocol="admin", action=action,
                                   decision=Decision.ALLOW, person=person, reason=reason,
                                   detail={"by": by, **(detail or {})}))

    # ------------------------------------------------------------------ the background checks
    async def run(self) -> None:
        """Refresh revocations and re-validate sessions until cancelled."""
        next_check = time.monotonic() + self.revalidate_s
        while True:
            await asyncio.sleep(min(self.revocation_poll_s, max(0.0, next_check - time.monotonic())))
            try:
                await self.sync_revocations()
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.revalidate_s
                    await self.revalidate()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the store or the policy failed: log, try again later
                log.exception("access check failed; trying again at the next interval")

    async def sync_revocations(self) -> None:
        """Re-read the revocations; end the sessions of anyone revoked elsewhere meanwhile."""
        await asyncio.to_thread(self.revocations.refresh)
        for person in self.registry.people():
            revocation = self.revocations.get(person)
            if revocation is not None:
                self.trust.forget(person)
                await self.end_sessions(self.registry.of_person(person), "revoked", by=revocation.revoked_by)

    async def revalidate(self) -> None:
        """Ask the directory about every person with a live session (see the module docstring)."""
        for person in sorted(self.registry.people()):
            sessions = self.registry.of_person(person)
            if not sessions:
                continue
            try:
                found = await asyncio.to_thread(self.directory.lookup, person)
            except DirectoryUnavailable as exc:
                REVALIDATION_FAILURES.inc()
                if not self._directory_failing:
                    log.warning("cannot re-validate live sessions (sessions kept until the directory "
                                "answers): %s", exc)
                self._directory_failing = True
                return
            if self._directory_failing:
                log.info("the directory answers again; live sessions are re-validated")
                self._directory_failing = False
            if found is None:
                await self.end_sessions(sessions, "directory_disabled", by="directory")
                continue
            policy = self.policy.current
            offices = offices_of(found.username, found.groups, policy)
            usable = {m.name for m in usable_mailboxes(policy, offices, self.mailboxes)}
            gone = [s for s in sessions if s.mailbox not in usable]
            if gone:
                await self.end_sessions(gone, "access_withdrawn", by="directory")
