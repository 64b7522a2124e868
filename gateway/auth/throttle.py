"""Brute-force protection of logins: growing delays after failures, then temporary lockouts.

Guessing a password + TOTP code through the gateway must be slow and must stop.  Failed logins
are counted (:mod:`gateway.auth.attempts`) in three scopes:

* ``pair``   -- one login name from one client address: the person mistyping, or one guesser;
* ``ip``     -- every name from one address: a guesser trying many names;
* ``person`` -- one name from every address: guessing spread over many addresses.  This one lets
  an attacker lock a person out everywhere by failing on purpose, so its limit is high (and 0
  turns it off).

The name is the one *typed* (case-folded, without the ``#mailbox`` suffix), never the
directory's: an unknown name is counted exactly like a known one, so nothing here tells them
apart.  Failures within ``window`` of a counter's first one add up.

* **Delay.**  A failed login's answer waits ``failure_delay * 2**(n-1)``, at most ``max_delay``,
  where n is the larger of the pair and ip counts after this failure.  A success does not wait.
* **Lockout.**  The failure that brings a scope to its limit locks it for ``lockout_duration``.
  While a scope of an attempt is locked, the attempt is refused *without asking the directory*
  (a guess made then is worthless, even a right one) and answered like any failure, with the
  same delay rule: a locked, a wrong and an unknown person get the same reply.  Each lockout is
  reported once (``on_lockout``: an audit row) and counted in ``pecgw_login_lockouts_total``.
* **Success** clears the pair counter only: clearing the ip or person counter would let a guesser
  holding one valid account reset the count of an address, or of the person they target.
* **What is a guess.**  A refused-while-locked attempt is not counted (it tested nothing), nor
  one that could not be checked (directory unavailable), nor the *same* wrong credential again
  for the same name from the same address within the window: a mail client retrying its saved
  password after the trust window ended tests nothing new, and must not lock its person out
  before they can type a fresh code.  Repeats are recognised by an HMAC under a key drawn at
  start, kept in this process's memory only (so with several instances a repeat counts at most
  once per instance).

The counters are shared by every gateway instance when the audit store is PostgreSQL.  When the
store fails, the attempt is counted in memory instead (logged as an error): refusing every login
because a counter could not be written would lock everybody out.  The check before a login and
the count after it are two steps, so parallel attempts may overshoot a limit by a few.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth.attempts import Count, Key, MemoryAttempts
from gateway.config import BruteForceConfig
from gateway.metrics import LOGIN_LOCKOUTS
from gateway.secret import Secret

__all__ = ["Admission", "Lockout", "LoginThrottle", "login_key"]

log = logging.getLogger(__name__)

#: Names longer than this are cut in the counters (the authenticator refuses them anyway).
MAX_KEY = 256
#: Fingerprints of recent wrong credentials kept at most (the oldest go first).
MAX_REPEATS = 20000
#: Dead counters are deleted at most this often (seconds).
PRUNE_EVERY_S = 60.0


def login_key(username: object) -> str:
    """The name a counter is kept under: as typed, case-folded, without ``#mailbox``."""
    if not isinstance(username, str):
        return ""
    return username.partition("#")[0].casefold().replace("\x00", "\ufffd")[:MAX_KEY]


@dataclass(frozen=True)
class Admission:
    """What the counters say before a login: the scopes locked now, and n for the delay."""

    locked: tuple[str, ...]
    failures: int  # the larger of the live pair and ip counts


@dataclass(frozen=True)
class Lockout:
    """A scope that just became locked: for the audit row and the log."""

    scope: str
    name: str  # the name typed in the attempt that locked it
    ip: str
    failures: int
    until: float  # Unix time
    protocol: str
    session_id: str

    @property
    def until_iso(self) -> str:
        return _dt.datetime.fromtimestamp(self.until, _dt.timezone.utc).isoformat(timespec="seconds")


class LoginThrottle:
    """Counts failed logins, computes their delay and decides lockouts (see the module docstring).

    ``store`` is a :class:`~gateway.auth.attempts.SqlAttempts` (blocking, run in a thread) or
    None for memory only; it may be set later with :meth:`use_store`."""

    def __init__(self, settings: BruteForceConfig, base_delay_s: float, *, store=None,
                 clock: Callable[[], float] = time.time,
                 on_lockout: Callable[[Lockout], None] | None = None) -> None:
        self.settings = settings
        self.base_delay_s = base_delay_s
        self.clock = clock
        self.on_lockout = on_lockout
        self.store = store
        self.memory = MemoryAttempts()  # the store's stand-in while it fails (or the only one)
        self._key = secrets.token_bytes(32)
        self._repeats: OrderedDict[bytes, float] = OrderedDict()
        self._last_prune = 0.0

    def use_store(self, store) -> None:
        """Count in ``store`` from now on (the gateway opens it after the audit store)."""
        self.store = store

    # ------------------------------------------------------------------ the rules
    def keys(self, name: str, ip: str) -> list[tuple[Key, int]]:
        """The counters an attempt touches, with their limits (in the same order everywhere)."""
        s = self.settings
        keys = [(Key("pair", name, ip), s.lockout_after), (Key("ip", "", ip), s.ip_lockout_after)]
        if s.person_lockout_after > 0:
            keys.append((Key("person", name, ""), s.person_lockout_after))
        return keys

    def delay(self, failures: int) -> float:
        """Seconds a failed attempt waits when n = ``failures``."""
        n = min(max(failures, 1), 64)
        return min(self.base_delay_s * 2 ** (n - 1), self.settings.max_delay_s)

    # ------------------------------------------------------------------ storage, with the fallback
    async def _call(self, what: str, *args):
        if self.store is not None:
            try:
                return await asyncio.to_thread(getattr(self.store, what), *args)
            except Exception as exc:  # noqa: BLE001 - any driver error: count in memory this time
                log.error("login attempt counters: the store failed (%s: %s); counting this attempt in memory",
                          type(exc).__name__, " ".join(str(exc).split())[:300])
        return getattr(self.memory, what)(*args)

    # ------------------------------------------------------------------ the login path
    async def admit(self, username: str, ip: str) -> Admission:
        """Before asking the directory: which scopes of this attempt are locked now."""
        name, now = login_key(username), self.clock()
        keys = [key for key, _ in self.keys(name, ip)]
        counts: dict[Key, Count] = await self._call("counts", keys, now, self.settings.window_s)
        locked = tuple(key.scope for key in keys if key in counts and counts[key].locked(now))
        n = max((counts[key].failures for key in keys[:2] if key in counts), default=0)
        return Admission(locked, n)

    async def failed(self, username: str, ip: str, credential: Secret | None, *, protocol: str = "",
                     session_id: str = "") -> float:
        """Count a checked, failed attempt; return how long its answer must wait.  Reports each
        lockout it causes."""
        name, now, s = login_key(username), self.clock(), self.settings
        keys = self.keys(name, ip)
        if self._repeated(name, ip, credential, now):
            counts = await self._call("counts", [key for key, _ in keys], now, s.window_s)
            return self.delay(max((counts[key].failures for key, _ in keys[:2] if key in counts), default=0))
        counts_after: list[Count] = await self._call("fail", keys, now, s.window_s, s.lockout_duration_s)
        for (key, _), count in zip(keys, counts_after):
            if count.newly_locked:
                self._locked(Lockout(key.scope, name, ip, count.failures, count.locked_until, protocol, session_id))
        if now - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = now
            await self._call("prune", now, s.window_s)
            self.memory.prune(now, s.window_s)
        return self.delay(max(count.failures for count in counts_after[:2]))

    async def succeeded(self, username: str, ip: str) -> None:
        """A login succeeded: the pair's failures are forgiven (not the ip's nor the person's)."""
        await self._call("clear", Key("pair", login_key(username), ip), self.clock())

    # ------------------------------------------------------------------ helpers
    def _repeated(self, name: str, ip: str, credential: Secret | None, now: float) -> bool:
        """Whether this wrong credential was counted for this name and address within the window
        (and remember it if not)."""
        if not isinstance(credential, Secret):
            return False
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (name.encode("utf-8", "replace"), ip.encode("utf-8", "replace"), credential.reveal_bytes()):
            mac.update(len(part).to_bytes(4, "big") + part)
        digest = mac.digest()
        expires = self._repeats.get(digest)
        if expires is not None and expires > now:
            return True
        self._repeats[digest] = now + self.settings.window_s
        self._repeats.move_to_end(digest)
        while len(self._repeats) > MAX_REPEATS or (self._repeats and next(iter(self._repeats.values())) <= now):
            self._repeats.popitem(last=False)
        return False

    def _locked(self, lockout: Lockout) -> None:
        LOGIN_LOCKOUTS.labels(lockout.scope).inc()
        log.warning("login lockout: %s scope for %r from %s after %d failures, until %s", lockout.scope,
                    lockout.name, lockout.ip or "-", lockout.failures, lockout.until_iso)
        if self.on_lockout is not None:
            try:
                self.on_lockout(lockout)
            except Exception:  # noqa: BLE001 - the login answer must not depend on the report
                log.exception("reporting a login lockout failed")
