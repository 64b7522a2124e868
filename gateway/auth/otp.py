"""TOTP (RFC 6238) codes with replay protection, and QR codes for enrolment.

RFC 6238 section 5.2: "Note that a prover may send the same OTP inside a given time-step window
multiple times to a verifier.  The verifier MUST NOT accept the second attempt of the OTP after
the successful validation has been issued for the first OTP, which ensures one-time only use of
an OTP."  :class:`OtpVerifier` therefore remembers, per user, the last time step it accepted and
refuses any code whose matching step is not newer.  That memory is per process and in RAM: after a
restart a code from the last ``valid_window`` steps (one minute by default) could be accepted once
more; several gateway instances do not share it.

Secrets come from a lookup callable (normally ``lambda u: vault.get(otp_key(u))``), so a secret
enrolled with the CLI is used at once.  The lookup may block: call :meth:`OtpVerifier.verify` from
a worker thread.

QR codes: :func:`terminal_qr` renders the ``otpauth://`` URI as text for the CLI; :func:`png_qr`
writes a PNG when Pillow or pypng is installed and otherwise an SVG (qrcode's built-in SVG
writer), returning the path it actually wrote.  The picture contains the secret: it is written
with mode 0600.
"""

from __future__ import annotations

import binascii
import enum
import hmac
import io
import logging
import os
import threading
from pathlib import Path
from typing import Callable

import pyotp
import qrcode
import qrcode.constants

from gateway.secret import Secret

__all__ = ["OtpVerifier", "OtpResult", "terminal_qr", "png_qr"]

log = logging.getLogger(__name__)


class OtpResult(enum.Enum):
    """Why a code was accepted or refused (for logs and metrics; never told to clients)."""

    OK = "ok"
    BAD = "bad_otp"
    REPLAY = "otp_replay"
    NOT_ENROLLED = "no_otp_enrolled"


class OtpVerifier:
    """Checks TOTP codes against per-user secrets; each time step is accepted at most once."""

    def __init__(
        self,
        secret_lookup: Callable[[str], Secret | None],
        digits: int = 6,
        period: int = 30,
        valid_window: int = 1,
    ) -> None:
        if not 6 <= digits <= 10:
            raise ValueError("digits must be between 6 and 10")
        if period < 1 or valid_window < 0:
            raise ValueError("period must be positive and valid_window non-negative")
        self._lookup = secret_lookup
        self.digits = digits
        self.period = period
        self.valid_window = valid_window
        self._last_step: dict[str, int] = {}
        self._lock = threading.Lock()

    def _totp(self, secret: Secret) -> pyotp.TOTP:
        return pyotp.TOTP(secret.reveal(), digits=self.digits, interval=self.period)

    def check(self, username: str, code: str, now: float) -> OtpResult:
        """Verify ``code`` for ``username`` at time ``now`` and say why it passed or failed.

        Every step in ``[now - valid_window, now + valid_window]`` is computed and compared in
        constant time (no early exit), so timing does not tell which step matched.
        """
        secret = self._lookup(username)
        if secret is None or not secret:
            return OtpResult.NOT_ENROLLED
        if not isinstance(code, str) or len(code) != self.digits or not _ascii_digits(code):
            return OtpResult.BAD
        if isinstance(now, bool) or not isinstance(now, (int, float)):
            raise TypeError("now must be a number of seconds since the epoch")
        matched: int | None = None
        try:
            totp = self._totp(secret)
            step = totp.timecode(now)
            for s in range(max(0, step - self.valid_window), step + self.valid_window + 1):
                if hmac.compare_digest(totp.generate_otp(s).encode(), code.encode()):
                    matched = s if matched is None else max(matched, s)
        except binascii.Error:  # the stored secret is not base32
            log.warning("OTP secret for %r is not valid base32; treating as not enrolled", username)
            return OtpResult.NOT_ENROLLED
        if matched is None:
            return OtpResult.BAD
        with self._lock:
            if matched <= self._last_step.get(username, -1):
                return OtpResult.REPLAY
            self._last_step[username] = matched
        return OtpResult.OK

    def verify(self, username: str, code: str, now: float) -> bool:
        """Whether ``code`` is a fresh, valid code for ``username`` at time ``now``."""
        return self.check(username, code, now) is OtpResult.OK

    # -- enrolment ---------------------------------------------------------------------------

    @staticmethod
    def enroll_secret() -> Secret:
        """A new random base32 secret (160 bits, as RFC 4226 recommends)."""
        return Secret(pyotp.random_base32())

    def provisioning_uri(self, secret: Secret, username: str, issuer: str) -> str:
        """The ``otpauth://totp/...`` URI an authenticator app scans.  It contains the secret."""
        return self._totp(secret).provisioning_uri(name=username, issuer_name=issuer)

    def current_code(self, secret: Secret, now: float) -> str:
        """The code valid at ``now`` (for tests and the CLI's self-check)."""
        return self._totp(secret).at(now)


def _ascii_digits(code: str) -> bool:
    return all("0" <= c <= "9" for c in code)


def _qr(uri: str) -> qrcode.QRCode:
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=2)
    qr.add_data(uri)
    qr.make(fit=True)
    return qr


def terminal_qr(uri: str) -> str:
    """The QR code of ``uri`` as text (half-block characters, dark on a light terminal)."""
    out = io.StringIO()
    _qr(uri).print_ascii(out=out, invert=True)
    return out.getvalue()


def png_qr(uri: str, path: Path) -> Path:
    """Write the QR code of ``uri`` as a PNG (pure-Python pypng, no imaging library needed).

    Returns the path written, mode 0600: the image holds the OTP secret.
    """
    from qrcode.image.pure import PyPNGImage as factory

    path = Path(path)
    image = _qr(uri).make_image(image_factory=factory)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)  # never through a symlink
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        image.save(f)
    return path
