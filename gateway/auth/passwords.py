"""Password hashes for the static directory: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``.

scrypt (RFC 7914) is memory-hard, in the standard library (``hashlib.scrypt``) and needs no extra
package.  The parameters travel inside each hash, so they can be raised later without invalidating
old hashes.  Default cost: N=2**15, r=8, p=1 (32 MiB, tens of milliseconds) -- the OWASP
recommendation for scrypt.

:func:`verify_password` compares in constant time and bounds the parameters it accepts, so a
hostile or mistyped hash in a configuration file cannot make a login allocate gigabytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import NamedTuple

from gateway.secret import Secret

__all__ = [
    "hash_password",
    "verify_password",
    "parse_password_hash",
    "ScryptParams",
    "DEFAULT_N",
    "DEFAULT_R",
    "DEFAULT_P",
]

DEFAULT_N = 2**15
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_N = 2**20
MAX_R = 32
MAX_P = 16
PREFIX = "scrypt"


class ScryptParams(NamedTuple):
    """The parsed parts of an encoded hash."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _maxmem(n: int, r: int, p: int) -> int:
    # OpenSSL needs ~128*r*(n+p+2) bytes; its default cap (32 MiB) is too small for N=2**15.
    return 128 * r * (n + p + 2) + 1024 * 1024


def _check_params(n: int, r: int, p: int) -> None:
    if n < 2 or n > MAX_N or n & (n - 1):
        raise ValueError(f"scrypt n must be a power of two between 2 and {MAX_N}")
    if not 1 <= r <= MAX_R:
        raise ValueError(f"scrypt r must be between 1 and {MAX_R}")
    if not 1 <= p <= MAX_P:
        raise ValueError(f"scrypt p must be between 1 and {MAX_P}")


def _b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64d(text: str) -> bytes:
    raw = text.encode("ascii")
    return base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)


def _derive(password: Secret, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.reveal_bytes(), salt=salt, n=n, r=r, p=p, maxmem=_maxmem(n, r, p), dklen=length
    )


def hash_password(
    password: Secret, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    """Hash ``password`` with a fresh random salt; the result is safe to store in config."""
    if not isinstance(password, Secret):
        raise TypeError("hash_password takes a Secret")
    _check_params(n, r, p)
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _derive(password, salt, n, r, p, HASH_BYTES)
    return f"{PREFIX}${n}${r}${p}${_b64e(salt)}${_b64e(digest)}"


def parse_password_hash(encoded: str) -> ScryptParams:
    """Split and validate an encoded hash; ``ValueError`` says what is wrong (never the value)."""
    if not isinstance(encoded, str):
        raise ValueError("not a scrypt hash (not a string)")
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != PREFIX:
        raise ValueError("not a scrypt hash (expected scrypt$n$r$p$salt$hash)")
    try:
        n, r, p = (int(x) for x in parts[1:4])
    except ValueError:
        raise ValueError("not a scrypt hash (n, r, p must be integers)") from None
    _check_params(n, r, p)
    try:
        salt, digest = _b64d(parts[4]), _b64d(parts[5])
    except (binascii.Error, ValueError):
        raise ValueError("not a scrypt hash (salt or hash is not base64)") from None
    if len(salt) < 8 or not 16 <= len(digest) <= 64:
        raise ValueError("not a scrypt hash (salt or hash has a wrong length)")
    return ScryptParams(n, r, p, salt, digest)


def verify_password(password: Secret, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded``; False (not an error) for a malformed hash."""
    if not isinstance(password, Secret):
        raise TypeError("verify_password takes a Secret")
    try:
        params = parse_password_hash(encoded)
    except ValueError:
        return False
    n, r, p, salt, digest = params
    candidate = _derive(password, salt, n, r, p, len(digest))
    return hmac.compare_digest(candidate, digest)
