"""Login decisions: directory password plus TOTP code, or a trusted saved credential.

The client sends one credential: the person's directory password immediately followed by the
current ``digits``-digit code (``s3cret!123456``), because IMAP LOGIN and SMTP AUTH have a single
password field.  The steps:

1. split off the code (the last ``digits`` characters must be ASCII digits, the password must be
   non-empty), else ``malformed``;
2. **always** ask the directory for the password (service search, then bind as the person), even
   inside a trust window -- so a password change or a disabled account takes effect at once, and
   so an unknown user, a wrong password and a wrong code all cost one directory round trip;
   a person IT revoked (``pecgw revoke``) is refused here, after the password, as ``revoked``;
3. if the whole credential is inside a trust window, the OTP step is satisfied (``trusted``);
4. otherwise verify the code, replay-protected (``ok`` / ``bad_otp`` / ``otp_replay`` /
   ``no_otp_enrolled``); on ``ok`` open a trust window for this credential.

The password is checked *before* the code so that a mistyped password does not burn the person's
current code (the replay guard would refuse it on the retry).  OTP and trust use the username
returned by the directory (canonical spelling), not the one typed.

Before all this, the brute-force throttle (:class:`~gateway.auth.throttle.LoginThrottle`) is asked
whether the name as typed, the client address or the pair of them is locked out after too many
failures; if so the attempt is refused as ``locked`` without asking the directory, so a guess made
during a lockout is worthless even when right.

Every failure waits before returning -- ``failure_delay_s``, doubled with each recent failure of
the name from that address or of the address (the throttle's rule), the same for every reason --
and the reason (:attr:`AuthOutcome.reason`) is for logs and metrics only: clients get one generic
answer.
Directory and OTP checks block (LDAP, scrypt, vault file) and run in ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from gateway.auth.directory import Directory, DirectoryUnavailable, Person
from gateway.auth.otp import OtpResult, OtpVerifier
from gateway.auth.throttle import LoginThrottle
from gateway.auth.trust import TrustWindow
from gateway.config import BruteForceConfig
from gateway.metrics import LOGIN_FAILURES
from gateway.secret import Secret

__all__ = ["Authenticator", "AuthOutcome", "REASONS", "split_credential"]

log = logging.getLogger(__name__)

REASONS = frozenset(
    {
        "ok",
        "trusted",
        "bad_password",
        "bad_otp",
        "otp_replay",
        "no_otp_enrolled",
        "malformed",
        "directory_unavailable",
        "revoked",
        "locked",  # a brute-force lockout: refused without asking the directory
    }
)
MAX_USERNAME = 256
MAX_CREDENTIAL = 1024


@dataclass(frozen=True)
class AuthOutcome:
    """The result of one login: the person on success, and an internal reason class."""

    person: Person | None
    reason: str

    @property
    def ok(self) -> bool:
        """Whether the login succeeded."""
        return self.person is not None


def split_credential(credential: Secret, digits: int) -> tuple[Secret, str] | None:
    """Split ``password + code``; None when the code part is not ``digits`` ASCII digits."""
    value = credential.reveal()
    password, code = value[:-digits], value[-digits:]
    if not password or len(code) != digits or not all("0" <= c <= "9" for c in code):
        return None
    return Secret(password), code


class Authenticator:
    """Decides logins from a :class:`Directory`, an :class:`OtpVerifier` and a :class:`TrustWindow`."""

    def __init__(
        self,
        directory: Directory,
        otp: OtpVerifier,
        trust: TrustWindow,
        failure_delay_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        revoked: Callable[[str], bool] = lambda _person: False,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.directory = directory
        self.otp = otp
        self.trust = trust
        self.failure_delay_s = failure_delay_s
        self.clock = clock
        self.revoked = revoked  # people IT revoked (gateway.revocations): refused like a wrong password
        # without one: the default limits, counted in this process's memory
        self.throttle = throttle or LoginThrottle(BruteForceConfig(), failure_delay_s, clock=clock)

    async def authenticate(self, username: str, credential: Secret, *, client_ip: str = "", protocol: str = "",
                           session_id: str = "") -> AuthOutcome:
        """Check ``credential`` (password followed by the OTP code) for ``username`` logging in
        from ``client_ip``; ``protocol`` and ``session_id`` go into a lockout's audit row."""
        admission = await self.throttle.admit(username, client_ip)
        if admission.locked:
            outcome = AuthOutcome(None, "locked")
        else:
            outcome = await self._decide(username, credential)
        if outcome.person is None:
            log.info("login refused for %r: %s", username, outcome.reason)
            LOGIN_FAILURES.labels(protocol or "other", outcome.reason).inc()
            if admission.locked or outcome.reason == "directory_unavailable":
                delay = self.throttle.delay(admission.failures)  # nothing was tested: not counted
            else:
                delay = await self.throttle.failed(username, client_ip, credential, protocol=protocol,
                                                   session_id=session_id)
            await asyncio.sleep(delay)
        else:
            log.info("login accepted for %r: %s", outcome.person.username, outcome.reason)
            await self.throttle.succeeded(username, client_ip)
        return outcome

    async def _decide(self, username: str, credential: Secret) -> AuthOutcome:
        now = self.clock()
        if (
            not isinstance(credential, Secret)
            or not isinstance(username, str)
            or not username
            or len(username) > MAX_USERNAME
            or not username.isprintable()
            or len(credential) > MAX_CREDENTIAL
        ):
            return AuthOutcome(None, "malformed")
        parts = split_credential(credential, self.otp.digits)
        if parts is None:
            return AuthOutcome(None, "malformed")
        password, code = parts

        try:
            person = await asyncio.to_thread(self.directory.authenticate, username, password)
        except DirectoryUnavailable as exc:
            log.warning("directory unavailable during login of %r: %s", username, exc)
            return AuthOutcome(None, "directory_unavailable")
        if person is None:
            return AuthOutcome(None, "bad_password")
        if self.revoked(person.username):  # after the password: a revoked leaver looks like a wrong one
            return AuthOutcome(None, "revoked")

        if self.trust.is_trusted(person.username, credential, now):
            return AuthOutcome(person, "trusted")
        result = await asyncio.to_thread(self.otp.check, person.username, code, now)
        if result is not OtpResult.OK:
            return AuthOutcome(None, result.value)
        if self.revoked(person.username):  # revoked while the code was checked: no window for it
            return AuthOutcome(None, "revoked")
        self.trust.remember(person.username, credential, now)
        return AuthOutcome(person, "ok")
