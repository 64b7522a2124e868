"""IT's levers on live access: revoke a person, lift it, kick one session, and the periodic checks
that everyone still connected may still be.

* :meth:`AccessControl.revoke` makes the revocation effective in this process at once (no I/O
  first, so it works while the database is down), drops the person's trust windows (a saved
  password+code stops working), ends every live IMAP and SMTP session of theirs — an IDLE
  included — then stores it (it survives a restart and reaches the other instances) and writes
  who revoked whom in the audit trail.  A revocation the store could not take is kept in memory
  and written at the next poll.  New logins are refused by the authenticator until :meth:`lift`.
  The name is first looked up in the directory, so ``alice@example.it`` revokes ``alice``.
* :meth:`kick` ends one session (by the id ``pecgw sessions`` shows); the person may log in again.
* Two background loops (:meth:`run`), independent so a slow directory never delays a revocation:
  every ``revocation_poll_s`` the revocations are re-read (another instance may have revoked
  someone: their trust windows here go, and their sessions here end); every ``revalidate_s`` the
  directory is asked about each person with a live session, a few at a time.  A person the
  directory no longer knows or reports disabled, or who no longer has the mailbox, loses those
  sessions (``directory_disabled``, ``access_withdrawn``); one who lost an office the session
  acts for is asked to log in again (``access_changed``: rights are set at login).  When the
  directory cannot be asked, sessions are kept (logged and counted): an LDAP outage must not cut
  everyone off.

Every ended session gets one ``session_ended`` audit row naming why and by whom, besides its own
``logout`` row.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from gateway.access import usable_mailboxes
from gateway.audit.events import Action, AuditEvent, Decision, utc_now
from gateway.auth.directory import DirectoryUnavailable
from gateway.live_sessions import LiveSession, SessionRegistry
from gateway.metrics import REVALIDATION_FAILURES, REVOCATIONS, SESSIONS_ENDED
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
    "access_changed": "Your offices have changed; please log in again",
    "kicked": "Session ended by the administrator",
}
END_WAIT_S = 1.0  # how long revoke/kick wait for the sessions to be gone before answering
LOOKUPS_AT_ONCE = 4  # directory lookups of one re-validation running together


class AccessControl:
    """See the module docstring.  Lives on the gateway's event loop."""

    def __init__(self, *, registry: SessionRegistry, revocations: Revocations, trust, directory, policy,
                 mailboxes, audit, revalidate_s: float = 60.0, revocation_poll_s: float = 0.5) -> None:
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
        self._store_failing = False
        self._ending: set[asyncio.Task] = set()  # sessions ended in the background

    # ------------------------------------------------------------------ IT's verbs
    async def revoke(self, person: str, *, by: str, reason: str | None = None) -> dict:
        """Revoke ``person``; what was done, for the admin channel's answer."""
        name, known = await self._canonical(person)
        revocation, fresh = self.revocations.hold(name, by, reason)
        if fresh:
            REVOCATIONS.labels("revoke").inc()
        windows = self.trust.forget(name)
        ended = await self.end_sessions(self.registry.of_person(name), "revoked", by=by)
        try:
            await asyncio.to_thread(self.revocations.save, revocation)
            stored = True
        except Exception as exc:  # noqa: BLE001 - the store is down: in force here, stored later
            stored = False
            log.error("the revocation of %r is in force on this instance but could not be stored yet "
                      "(retried at every poll): %s", name, _brief(exc))
        self._admin_row(Action.REVOKED, name, by=by, reason=reason,
                        detail={"already_revoked": not fresh, "sessions_ended": ended, "stored": stored,
                                "trust_windows_dropped": windows, "known_to_directory": known,
                                **({"as_given": person} if name != person else {})})
        log.warning("%s revoked %r: %d live sessions ended%s", by, name, ended,
                    "" if fresh else " (it was revoked already)")
        return {"person": name, "already_revoked": not fresh, "sessions_ended": ended, "stored": stored,
                "known_to_directory": known}

    async def lift(self, person: str, *, by: str) -> dict:
        """Lift ``person``'s revocation; their old trust windows stay gone (a fresh code is needed)."""
        name, _ = await self._canonical(person)
        lifted = await asyncio.to_thread(self.revocations.lift, name)
        if lifted is None and name != person:
            lifted = await asyncio.to_thread(self.revocations.lift, person)
        if lifted is not None:
            REVOCATIONS.labels("lift").inc()
            self._admin_row(Action.REVOCATION_LIFTED, lifted.person, by=by,
                            detail={"revoked_at": lifted.revoked_at, "revoked_by": lifted.revoked_by})
            log.warning("%s lifted the revocation of %r", by, lifted.person)
        return {"person": lifted.person if lifted else name, "was_revoked": lifted is not None}

    async def kick(self, session_id: str, *, by: str) -> dict:
        """End one live session; ``found`` is False when no session has that id."""
        session = self.registry.get(session_id)
        if session is None:
            return {"session": session_id, "found": False}
        await self.end_sessions([session], "kicked", by=by)
        return {"session": session_id, "found": True, "person": session.person}

    def revoked_people(self) -> list[dict]:
        return [r.as_dict() for r in self.revocations.all()]

    async def _canonical(self, person: str) -> tuple[str, bool | None]:
        """The directory's spelling of ``person`` and whether it knows them (None: it could not
        be asked).  A person unknown to it (deleted, disabled) is revoked by the name given."""
        try:
            found = await asyncio.to_thread(self.directory.lookup, person)
        except DirectoryUnavailable as exc:
            log.warning("revocation of %r: the directory cannot be asked (%s); using the name as given",
                        person, exc)
            return person, None
        return (found.username, True) if found is not None else (person, False)

    # ------------------------------------------------------------------ ending sessions
    async def end_sessions(self, sessions: Iterable[LiveSession], reason: str, *, by: str,
                           wait: bool = True) -> int:
        """End ``sessions`` together, each with one ``session_ended`` row (a session already
        being ended is left alone); with ``wait``, until they are closed (at most END_WAIT_S: an
        answer to IT), else in the background (the checks must not be held up by a client slow
        to acknowledge the close).  Returns how many were ended now."""
        sessions = [s for s in sessions if s.ending is None]
        for s in sessions:
            s.ending = reason
            self.audit.emit(AuditEvent(
                when=utc_now(), session_id=s.session_id, protocol=s.protocol, action=Action.SESSION_ENDED,
                decision=Decision.DENY, person=s.person, offices=s.offices, mailbox=s.mailbox,
                client_ip=s.client_ip, reason=reason, detail={"by": by}))
            SESSIONS_ENDED.labels(reason).inc()
        if sessions:
            text = END_TEXTS.get(reason, "Session ended by the gateway")
            ends = [asyncio.ensure_future(s.end(reason, text)) for s in sessions]
            if not wait:
                self._ending.update(ends)
                for task in ends:
                    task.add_done_callback(self._ending.discard)
                return len(sessions)
            done, pending = await asyncio.wait(ends, timeout=END_WAIT_S)
            for task in done:
                if task.exception() is not None:
                    log.error("ending a session (%s) failed: %r", reason, task.exception())
            if pending:
                log.info("%d sessions still closing after %.1f s (%s)", len(pending), END_WAIT_S, reason)
        return len(sessions)

    def _admin_row(self, action: str, person: str, *, by: str, reason: str | None = None,
                   detail: dict | None = None) -> None:
        self.audit.emit(AuditEvent(when=utc_now(), session_id="admin", protocol="admin", action=action,
                                   decision=Decision.ALLOW, person=person, reason=reason,
                                   detail={"by": by, **(detail or {})}))

    # ------------------------------------------------------------------ the background checks
    async def run(self) -> None:
        """The revocation poll and the directory re-validation, until cancelled."""
        await asyncio.gather(self._every(self.revocation_poll_s, self.sync_revocations, "revocation poll"),
                             self._every(self.revalidate_s, self.revalidate, "re-validation"))

    @staticmethod
    async def _every(interval: float, check, what: str) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await check()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug or the policy: log, try again next time
                log.exception("%s failed; trying again in %.0f s", what, interval)

    async def sync_revocations(self) -> None:
        """Re-read the revocations (writing those still unsaved); drop the trust windows of anyone
        newly revoked and end the sessions of anyone revoked who still has one here."""
        try:
            new = await asyncio.to_thread(self.revocations.refresh)
        except Exception as exc:  # noqa: BLE001 - the store is down: what is in memory still holds
            if not self._store_failing:
                log.error("cannot read the revocations (those known stay in force): %s", _brief(exc))
            self._store_failing = True
            return
        if self._store_failing:
            log.info("the revocations can be read again")
            self._store_failing = False
        for key in new:
            self.trust.forget(key)
        for person in self.registry.people():
            revocation = self.revocations.get(person)
            if revocation is not None:
                await self.end_sessions(self.registry.of_person(person), "revoked", by=revocation.revoked_by,
                                        wait=False)

    async def revalidate(self) -> None:
        """Ask the directory about every person with a live session (see the module docstring)."""
        people = sorted(self.registry.people())
        gate = asyncio.Semaphore(LOOKUPS_AT_ONCE)

        async def one(person: str):
            async with gate:
                try:
                    return person, await asyncio.to_thread(self.directory.lookup, person)
                except DirectoryUnavailable as exc:
                    return person, exc

        results = await asyncio.gather(*(one(p) for p in people))
        failures = [r for _, r in results if isinstance(r, DirectoryUnavailable)]
        if failures:
            REVALIDATION_FAILURES.inc()
            if not self._directory_failing:
                log.warning("cannot re-validate live sessions (they are kept until the directory "
                            "answers): %s", failures[0])
            self._directory_failing = True
        elif self._directory_failing:
            log.info("the directory answers again; live sessions are re-validated")
            self._directory_failing = False
        for person, found in results:
            if not isinstance(found, DirectoryUnavailable):
                await self._judge(person, found)

    async def _judge(self, person: str, found) -> None:
        """End ``person``'s sessions that the directory's answer ``found`` no longer allows."""
        sessions = self.registry.of_person(person)
        if found is None:
            await self.end_sessions(sessions, "directory_disabled", by="directory", wait=False)
            return
        policy = self.policy.current
        offices = set(offices_of(found.username, found.groups, policy))
        usable = {m.name for m in usable_mailboxes(policy, tuple(offices), self.mailboxes)}
        await self.end_sessions([s for s in sessions if s.mailbox not in usable], "access_withdrawn",
                                by="directory", wait=False)
        lost = [s for s in self.registry.of_person(person)
                if s.ending is None and set(s.as_dict().get("offices") or ()) - offices]
        await self.end_sessions(lost, "access_changed", by="directory", wait=False)


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
