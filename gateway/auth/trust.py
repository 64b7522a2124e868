"""Trust windows: a mail client's saved password+OTP credential keeps working for a while.

Mail clients reconnect all day (Thunderbird opens up to five connections, mbsync one per sync) and
cannot ask for a fresh code each time.  After a successful password+OTP login the authenticator
calls :meth:`TrustWindow.remember`; until the window ends (12 hours by default, counted from that
login, not sliding) :meth:`TrustWindow.is_trusted` accepts the *same* credential string again in
place of a fresh code.  The directory still checks the password on every login, so a password
change or a disabled account ends the window at once; :meth:`TrustWindow.forget` ends it on
revocation.

Hash choice: each entry is ``HMAC-SHA256(process_key, salt || username || 0x00 || credential)``
with a 32-byte key drawn at random when the process starts (never written anywhere) and a
16-byte random salt per entry.  Not scrypt, because:

* the table lives only in this process's memory; a digest is useless outside the process (the key
  is unknown), and anyone who can read the process's memory also finds the directory service
  password and the vault key there, which are worth far more;
* :meth:`is_trusted` runs on every reconnect and compares against up to ``max_per_user`` salted
  entries; scrypt at a cost that means anything would spend hundreds of milliseconds of CPU per
  reconnect, for no gain against the threat above;
* a clear credential never stays in memory, a ``repr`` or a debug dump shows only digests, and
  comparisons are constant-time.

Entries per user are capped (oldest dropped) so a client cannot grow the table without bound;
expired entries are pruned on every :meth:`remember`.  Thread-safe.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass

from gateway.secret import Secret

__all__ = ["TrustWindow"]

SALT_BYTES = 16


@dataclass(frozen=True)
class _Entry:
    expires_at: float
    salt: bytes
    digest: bytes


class TrustWindow:
    """Remembers salted HMACs of credentials that passed a fresh OTP, until they expire."""

    def __init__(self, duration_s: float = 12 * 3600, max_per_user: int = 8) -> None:
        if duration_s <= 0 or max_per_user < 1:
            raise ValueError("duration_s must be positive and max_per_user at least 1")
        self.duration_s = float(duration_s)
        self.max_per_user = max_per_user
        self._key = secrets.token_bytes(32)
        self._entries: dict[str, list[_Entry]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TrustWindow(duration_s={self.duration_s}, users={len(self._entries)})"

    def _digest(self, salt: bytes, username: str, credential: Secret) -> bytes:
        message = salt + username.encode("utf-8") + b"\x00" + credential.reveal_bytes()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def remember(self, username: str, credential: Secret, now: float) -> None:
        """Trust ``credential`` for ``username`` until ``now + duration_s``."""
        salt = secrets.token_bytes(SALT_BYTES)
        entry = _Entry(now + self.duration_s, salt, self._digest(salt, username, credential))
        with self._lock:
            self._prune_locked(now)
            entries = self._entries.setdefault(username, [])
            entries.append(entry)
            del entries[: -self.max_per_user]  # keep the newest max_per_user

    def is_trusted(self, username: str, credential: Secret, now: float) -> bool:
        """Whether an unexpired window exists for exactly this username and credential."""
        with self._lock:
            entries = list(self._entries.get(username, ()))
        found = False
        for entry in entries:  # no early exit: time does not depend on which entry matched
            match = hmac.compare_digest(entry.digest, self._digest(entry.salt, username, credential))
            found |= match and now < entry.expires_at
        return found

    def forget(self, username: str) -> int:
        """Drop all of ``username``'s windows, whatever the case of the name (revocation, OTP
        reset); return how many there were."""
        wanted = username.casefold()
        with self._lock:
            names = [name for name in self._entries if name.casefold() == wanted]
            return sum(len(self._entries.pop(name)) for name in names)

    def prune(self, now: float) -> None:
        """Drop every expired entry."""
        with self._lock:
            self._prune_locked(now)

    def _prune_locked(self, now: float) -> None:
        for username in list(self._entries):
            live = [e for e in self._entries[username] if now < e.expires_at]
            if live:
                self._entries[username] = live
            else:
                del self._entries[username]

    def count(self, username: str) -> int:
        """How many windows ``username`` has (expired ones included until pruned)."""
        with self._lock:
            return len(self._entries.get(username, ()))
