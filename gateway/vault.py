"""The vault: mailbox passwords and OTP secrets, encrypted at rest.

Employees never learn a PEC mailbox password: the gateway logs into the provider with the password
kept here.  The vault also keeps each employee's TOTP secret.  Both are worth protecting on disk, so
every value is sealed with AES-256-GCM:

* a fresh 96-bit random nonce per write (never reused with the same key: 2**32 writes per key stay
  far below the NIST SP 800-38D bound for random nonces);
* the entry's *name* as associated data, so an attacker who can edit the file cannot move the
  ciphertext of ``mailbox/legale`` under ``otp/alice`` (or any other name): the tag check fails;
* a *key check* record sealed the same way, so a wrong key ("vault key does not match <path>") is
  told apart from one damaged or swapped entry.

The file is one JSON document, rewritten atomically (temp file in the same directory, fsync, rename,
fsync of the directory) with mode 0600, under an ``flock`` on a ``<file>.lock`` sidecar so two CLI
writers cannot lose each other's update.  :meth:`Vault.get` re-reads the file whenever its inode,
size or mtime changed, so a running gateway sees a password rotated with the CLI without a restart.

The 32-byte key comes from a key file (urlsafe base64, one line, refused when readable by group or
others) or from an environment variable holding the same text (``PECGW_VAULT_KEY`` by default).
No value, key or key text ever appears in an exception message, log line or repr.

Blocking (file I/O): the async gateway calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import secrets
import stat
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.secret import Secret

__all__ = [
    "Vault",
    "VaultError",
    "VaultKeyMissing",
    "VaultKeyInvalid",
    "VaultKeyInsecure",
    "VaultKeyMismatch",
    "VaultCorrupt",
    "VaultEntryTampered",
    "create_key_file",
    "mailbox_key",
    "otp_key",
    "OTP_PREFIX",
    "DEFAULT_KEY_ENV",
]

DEFAULT_KEY_ENV = "PECGW_VAULT_KEY"
KEY_BYTES = 32
NONCE_BYTES = 12
FORMAT_VERSION = 1
_AAD_PREFIX = b"pecgw-vault-v1\x00"
_CHECK_NAME = "\x00key-check"  # not a valid entry name, so it can never collide with one
_CHECK_PLAINTEXT = b"pecgw vault key check"


class VaultError(Exception):
    """Base class: the vault cannot be used.  Messages name files, never values."""


class VaultKeyMissing(VaultError):
    """Neither a key file nor the key environment variable was given."""


class VaultKeyInvalid(VaultError):
    """The key text is not urlsafe base64 of exactly 32 bytes."""


class VaultKeyInsecure(VaultError):
    """The key file is readable or writable by group or others."""


class VaultKeyMismatch(VaultError):
    """The key does not open this vault file (its key check record fails)."""


class VaultCorrupt(VaultError):
    """The vault file is not a well-formed vault document."""


class VaultEntryTampered(VaultCorrupt):
    """One entry fails authentication although the key is right (edited or swapped)."""


def mailbox_key(mailbox: str) -> str:
    """Vault name of a PEC mailbox's upstream password: ``mailbox/<name>``."""
    return "mailbox/" + _check_part(mailbox, "mailbox")


OTP_PREFIX = "otp/"


def otp_key(user: str) -> str:
    """Vault name of a person's TOTP secret: ``otp/<user>``."""
    return OTP_PREFIX + _check_part(user, "user")


def _check_part(value: str, what: str) -> str:
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ValueError(f"{what} name must be a non-empty printable string")
    return value


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or not name.isprintable():
        raise ValueError("vault entry name must be a non-empty printable string")
    return name


def _b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64d(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a string")
    return base64.b64decode(text.encode("ascii"), validate=True)


def _decode_key(text: str | bytes, source: str) -> bytes:
    """Decode urlsafe-base64 key text; the error names ``source``, never the text."""
    if isinstance(text, str):
        text = text.encode("ascii", "replace")
    text = text.strip()
    try:
        key = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise VaultKeyInvalid(f"{source} must hold urlsafe base64 of a {KEY_BYTES}-byte key")
    return key


def create_key_file(path: Path) -> None:
    """Write a new random 32-byte key to ``path`` (mode 0600); refuse to overwrite a file."""
    path = Path(path)
    text = base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise VaultError(f"key file {path} already exists; refusing to overwrite it") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def read_key_file(path: Path) -> bytes:
    """Read a key file, refusing it when group or others may read or write it."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise VaultKeyMissing(f"vault key file {path} does not exist") from None
    except OSError as exc:
        raise VaultKeyMissing(f"vault key file {path} cannot be opened: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o077:
            raise VaultKeyInsecure(
                f"vault key file {path} has mode {stat.S_IMODE(mode):04o}; "
                f"it must not be accessible by group or others (chmod 600 {path})"
            )
        text = f.read(4096)
    return _decode_key(text, f"vault key file {path}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Vault:
    """An AES-256-GCM sealed name → :class:`Secret` store kept in one JSON file."""

    def __init__(self, path: Path, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            raise VaultKeyInvalid(f"the key for vault {path} must be {KEY_BYTES} bytes")
        self.path = Path(path)
        self._aead = AESGCM(bytes(key))
        self._lock = threading.RLock()
        self._entries: dict[str, dict[str, str]] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._reload_if_changed()

    @classmethod
    def open(
        cls, path: Path, key_file: Path | None = None, key_env: str = DEFAULT_KEY_ENV
    ) -> Vault:
        """Open ``path`` with the key from ``key_file`` if given, else from ``$key_env``."""
        if key_file is not None:
            key = read_key_file(key_file)
        else:
            text = os.environ.get(key_env)
            if not text:
                raise VaultKeyMissing(
                    f"no key for vault {path}: give a key file or set ${key_env}"
                )
            key = _decode_key(text, f"${key_env}")
        return cls(Path(path), key)

    def __repr__(self) -> str:
        return f"Vault({str(self.path)!r})"

    # -- reading -----------------------------------------------------------------------------

    def get(self, name: str) -> Secret | None:
        """Return the value stored under ``name``, or None; re-reads the file if it changed."""
        found = self.get_versioned(name)
        return found[0] if found is not None else None

    def get_versioned(self, name: str) -> tuple[Secret, str] | None:
        """The value under ``name`` and a token that changes whenever the entry is written.

        The token is the entry's nonce (public, fresh at every :meth:`set`, even of the same
        value), so a caller can tell "stored again" from "unchanged" without keeping the value:
        the gateway retries a mailbox whose password the provider refused once it is set again.
        """
        _check_name(name)
        with self._lock:
            self._reload_if_changed()
            record = self._entries.get(name)
            if record is None:
                return None
            return Secret(self._open_record(name, record, VaultEntryTampered)), str(record.get("nonce", ""))

    def names(self) -> list[str]:
        """All entry names, sorted."""
        with self._lock:
            self._reload_if_changed()
            return sorted(self._entries)

    # -- writing -----------------------------------------------------------------------------

    def set(self, name: str, value: Secret) -> None:
        """Store ``value`` under ``name`` (replacing any old value) and write the file."""
        _check_name(name)
        if not isinstance(value, Secret):
            raise TypeError("vault values must be Secret instances")
        with self._writing():
            self._entries[name] = self._seal(name, value.reveal_bytes())
            self._write()

    def delete(self, name: str) -> bool:
        """Remove ``name``; return whether it existed."""
        _check_name(name)
        with self._writing():
            if self._entries.pop(name, None) is None:
                return False
            self._write()
            return True

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the thread lock and the cross-process lock, with the latest file loaded."""
        with self._lock:
            lock_path = self.path.with_name(self.path.name + ".lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._reload_if_changed()
                yield
            finally:
                os.close(fd)  # closing releases the flock

    # -- sealing -----------------------------------------------------------------------------

    @staticmethod
    def _aad(name: str) -> bytes:
        return _AAD_PREFIX + name.encode("utf-8")

    def _seal(self, name: str, plaintext: bytes) -> dict[str, str]:
        nonce = secrets.token_bytes(NONCE_BYTES)
        ct = self._aead.encrypt(nonce, plaintext, self._aad(name))
        return {"nonce": _b64e(nonce), "ct": _b64e(ct)}

    def _open_record(self, name: str, record: dict[str, str], error: type[VaultError]) -> bytes:
        try:
            nonce, ct = _b64d(record["nonce"]), _b64d(record["ct"])
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise VaultCorrupt(f"vault {self.path}: entry {name!r} is malformed") from None
        if len(nonce) != NONCE_BYTES:
            raise VaultCorrupt(f"vault {self.path}: entry {name!r} has a bad nonce")
        try:
            return self._aead.decrypt(nonce, ct, self._aad(name))
        except InvalidTag:
            if error is VaultKeyMismatch:
                raise VaultKeyMismatch(f"vault key does not match {self.path}") from None
            raise error(
                f"vault {self.path}: entry {name!r} fails authentication "
                "(edited, damaged or moved from another name)"
            ) from None

    # -- file I/O ----------------------------------------------------------------------------

    def _reload_if_changed(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._entries, self._stamp = {}, None
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise VaultError(f"vault {self.path} cannot be read: {exc.strerror}") from None
        self._entries = self._parse(raw)
        self._stamp = stamp

    def _parse(self, raw: bytes) -> dict[str, dict[str, str]]:
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise VaultCorrupt(f"vault {self.path} is not valid JSON") from None
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise VaultCorrupt(f"vault {self.path} is not a version {FORMAT_VERSION} vault")
        check, entries = doc.get("check"), doc.get("entries")
        if not isinstance(check, dict) or not isinstance(entries, dict):
            raise VaultCorrupt(f"vault {self.path} lacks its 'check' or 'entries' table")
        if self._open_record(_CHECK_NAME, check, VaultKeyMismatch) != _CHECK_PLAINTEXT:
            raise VaultKeyMismatch(f"vault key does not match {self.path}")
        for name, record in entries.items():
            if not isinstance(record, dict) or not name or not name.isprintable():
                raise VaultCorrupt(f"vault {self.path}: entry {name!r} is malformed")
        return entries

    def _write(self) -> None:
        doc = {
            "version": FORMAT_VERSION,
            "check": self._seal(_CHECK_NAME, _CHECK_PLAINTEXT),
            "entries": dict(sorted(self._entries.items())),
        }
        data = json.dumps(doc, indent=1).encode("utf-8") + b"\n"
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(directory)
        st = os.stat(self.path)
        self._stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
