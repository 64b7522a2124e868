"""``/healthz`` and ``/readyz`` on the admin HTTP endpoint (gateway/admin/http.py).

``/healthz`` (liveness): the process and its event loop answer -- the answer is produced on the
loop itself, so a wedged loop gets no answer and the supervisor restarts the gateway.  Always
``200`` with ``{"status": "alive", "pid", "version", "uptime_s"}``.

``/readyz`` (readiness): may this instance be given clients?  ``200`` when every check passes,
``503`` when one does not, with JSON naming each check, ``ok`` or not, and a ``reason`` text
without secrets::

    {"status": "not ready",
     "checks": {"directory": {"ok": true, "reason": ""},
                "audit": {"ok": true, "reason": ""},
                "mailboxes": {"protocollo": {"ok": false, "reason": "cannot connect to ..."}}}}

* ``directory``: the configured directory answers a lookup (LDAP: the service account binds and
  searches, within :data:`DIRECTORY_TIMEOUT_S`).  The outcome is kept for
  :data:`DIRECTORY_CACHE_S`, and concurrent requests share one lookup, so a busy probe cannot
  load the directory.
* ``audit``: the audit sink accepts events and its store takes writes.  While the store fails
  with ``on_store_failure = "spool"`` the instance stays ready (the site chose to keep serving,
  events go to the spool) and the reason says so; failing closed, it is not ready.
* ``mailboxes``: each mailbox's provider is reachable and accepts the vaulted password, as the
  census probe last saw it (:class:`gateway.mailbox_census.MailboxWatch`, every ``[census]
  probe_interval``): ``/readyz`` answers at once and never asks a provider itself.  A mailbox
  whose password the provider refused is not ready at once, without any probe; a login that
  succeeded after the last probe (a person's session, the receipt watcher) counts as reachable.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from gateway.auth.directory import DirectoryUnavailable
from gateway.mailbox_census import MailboxWatch
from gateway.mailbox_credentials import MailboxCredentials

__all__ = ["Health", "DIRECTORY_CACHE_S", "DIRECTORY_TIMEOUT_S"]

DIRECTORY_TIMEOUT_S = 5.0  # a directory that takes longer is not ready
DIRECTORY_CACHE_S = 5.0  # one directory lookup serves the readiness answers of this long
_NOBODY = "pecgw-readiness-check"  # looked up in the directory: nobody, but the search must run
_JSON = "application/json"


class Health:
    """The two routes; :meth:`routes` maps their paths to them."""

    def __init__(self, *, directory, audit, census: MailboxWatch, credentials: MailboxCredentials,
                 spool: bool, version: str) -> None:
        self.directory, self.audit, self.census, self.credentials = directory, audit, census, credentials
        self.spool, self.version = spool, version
        self.started = time.monotonic()
        self._directory_check: asyncio.Task | None = None
        self._directory_at = float("-inf")
        self._directory_result = {"ok": False, "reason": "not checked yet"}
        self.stopping = False  # set when a graceful stop begins: a balancer should send no one here

    def routes(self) -> dict:
        return {"/healthz": self.liveness, "/readyz": self.readiness}

    async def liveness(self) -> tuple[int, str, bytes]:
        body = {"status": "alive", "pid": os.getpid(), "version": self.version,
                "uptime_s": round(time.monotonic() - self.started, 1)}
        return 200, _JSON, _dump(body)

    async def readiness(self) -> tuple[int, str, bytes]:
        checks = {"directory": await self.directory_check(), "audit": self.audit_check(),
                  "mailboxes": {name: self.mailbox_check(name) for name in sorted(self.census.mailboxes)}}
        ready = checks["directory"]["ok"] and checks["audit"]["ok"] and all(
            c["ok"] for c in checks["mailboxes"].values())
        if self.stopping:
            checks["stopping"] = {"ok": False, "reason": "the gateway is stopping: running commands finish, "
                                                         "new connections are refused"}
            ready = False
        return (200 if ready else 503), _JSON, _dump({"status": "ready" if ready else "not ready", "checks": checks})

    # ------------------------------------------------------------------ the checks
    async def directory_check(self) -> dict:
        if time.monotonic() - self._directory_at < DIRECTORY_CACHE_S:
            return self._directory_result
        if self._directory_check is None or self._directory_check.done():
            self._directory_check = asyncio.get_running_loop().create_task(self._ask_directory())
        try:
            async with asyncio.timeout(DIRECTORY_TIMEOUT_S):
                return await asyncio.shield(self._directory_check)
        except TimeoutError:
            return {"ok": False, "reason": f"the directory did not answer within {DIRECTORY_TIMEOUT_S:g} s"}

    async def _ask_directory(self) -> dict:
        try:
            await asyncio.to_thread(self.directory.lookup, _NOBODY)
            result = {"ok": True, "reason": ""}
        except DirectoryUnavailable as exc:  # its text names the server and the step, never a password
            result = {"ok": False, "reason": str(exc)}
        except Exception as exc:  # noqa: BLE001 - anything else is "not ready" too, without details
            result = {"ok": False, "reason": f"the directory lookup failed: {type(exc).__name__}"}
        self._directory_at, self._directory_result = time.monotonic(), result
        return result

    def audit_check(self) -> dict:
        failing = _store_failing(self.audit)
        if not self.audit.accepting:
            return {"ok": False, "reason": "the audit trail cannot be written: audited commands are refused "
                                           "(see the gateway's log)"}
        if failing and self.spool:
            return {"ok": True, "reason": "the audit store refuses writes; events go to the spool file "
                                          "(on_store_failure = \"spool\")"}
        if failing:
            return {"ok": False, "reason": "the audit store refuses writes (see the gateway's log)"}
        return {"ok": True, "reason": ""}

    def mailbox_check(self, name: str) -> dict:
        mailbox = self.census.mailboxes[name]
        if self.credentials.is_refused(name):
            return {"ok": False, "reason": f"the provider refused the password in vault entry "
                                           f"{mailbox.password_vault_key!r}; not tried again until it is set "
                                           f"again ('pecgw vault set {name}')"}
        result = self.census.latest(name)
        last_login = self.credentials.last_accepted.get(name)
        if result is None:
            if last_login is not None:
                return {"ok": True, "reason": ""}
            return {"ok": False, "reason": "not probed yet"}
        if result.ok or (last_login is not None and last_login > result.at):
            return {"ok": True, "reason": ""}
        return {"ok": False, "reason": result.reason}


def _store_failing(sink) -> bool:
    """Whether a store behind ``sink`` (a StoreSink, or a FanOutSink of them) refuses writes."""
    if getattr(sink, "failing", False):
        return True
    return any(_store_failing(s) for s in getattr(sink, "sinks", ()))


def _dump(body: dict) -> bytes:
    return (json.dumps(body, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
