"""The admin channel of a running gateway: a unix socket (and optionally a loopback TCP port).

``pecgw sessions``, ``revoke``, ``kick``, ``reload`` and the OTP verbs talk to it
(:mod:`gateway.admin.client`); the wire format is :mod:`gateway.admin.protocol`.  It is never
open to the network:

* the **unix socket** (default ``admin.sock`` next to the vault) is created mode 0600 (or
  ``socket_mode``, with ``socket_group``), so only the gateway's own user — and root — can
  connect; the kernel tells who connected (``SO_PEERCRED``) and that name is recorded in the
  audit trail with whatever name the CLI claims (``$SUDO_USER``);
* the optional **TCP listener** takes loopback addresses only and requires the token kept in the
  vault (``admin/token``, created at the first start), compared in constant time.

Each request is answered by a handler ``async (args, operator) -> result``; a handler's
:class:`AdminError` becomes ``{"ok": false, "error": ...}``, any other exception a generic error
(logged with its traceback), and the connection stays usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import hmac
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.admin.protocol import MAX_LINE, ProtocolError, decode, encode
from gateway.secret import Secret

__all__ = ["AdminError", "AdminServer", "Handler"]

log = logging.getLogger("pecgw.admin")

Handler = Callable[[dict, str], Awaitable[Any]]
_IDLE_S = 300.0  # an admin connection that says nothing for this long is closed


class AdminError(Exception):
    """A request the gateway refuses; the text is shown to the operator."""


def _peer_user(writer) -> str:
    """The OS user on the other end of a unix socket, from the kernel (Linux SO_PEERCRED)."""
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
    except (OSError, AttributeError):
        return "unknown"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def operator_name(seen: str, claimed: object) -> str:
    """``seen`` (the OS user, or how the TCP client was let in) plus the name the CLI claims."""
    if isinstance(claimed, str) and claimed and claimed != seen:
        claimed = "".join(ch for ch in claimed if ch.isprintable())[:64]
        return f"{seen} (as {claimed})"
    return seen


class AdminServer:
    """Serves the admin verbs on the configured socket and listener."""

    def __init__(self, config, handlers: dict[str, Handler], token: Secret | None = None) -> None:
        self.config = config  # gateway.config.AdminConfig
        self.handlers = handlers
        self.token = token
        self._servers: list[asyncio.base_events.Server] = []
        self._connections: set[asyncio.Task] = set()

    async def start(self) -> None:
        cfg = self.config
        if cfg.socket is not None:
            await self._start_unix(cfg.socket)
        if cfg.listen_port is not None:
            if self.token is None:
                raise RuntimeError("the admin TCP listener needs a token")
            server = await asyncio.start_server(lambda r, w: self._serve(r, w, unix=False), cfg.listen_host,
                                                cfg.listen_port)
            self._servers.append(server)
            log.info("admin channel on %s:%d (token required)", cfg.listen_host,
                     server.sockets[0].getsockname()[1])

    async def _start_unix(self, path: Path) -> None:
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise RuntimeError(f"{path} exists and is not a socket; not replacing it")
            if await _answers(path):
                raise RuntimeError(f"{path}: another gateway is answering on this admin socket")
            path.unlink()  # left by a gateway that did not stop cleanly
        old = os.umask(0o177)  # no moment where the socket is open to others
        try:
            server = await asyncio.start_unix_server(lambda r, w: self._serve(r, w, unix=True), path)
        finally:
            os.umask(old)
        if self.config.socket_group:
            os.chown(path, -1, grp.getgrnam(self.config.socket_group).gr_gid)
        os.chmod(path, self.config.socket_mode)
        self._servers.append(server)
        log.info("admin channel on %s (mode %04o)", path, self.config.socket_mode)

    def bound_port(self) -> int | None:
        for server in self._servers:
            for sock in server.sockets:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    return sock.getsockname()[1]
        return None

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self.config.socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.config.socket.unlink()

    # ------------------------------------------------------------------ one connection
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, unix: bool) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        seen = _peer_user(writer) if unix else "token"
        try:
            while True:
                async with asyncio.timeout(_IDLE_S):
                    line = await reader.readuntil(b"\n")
                if len(line) > MAX_LINE:
                    writer.write(encode({"ok": False, "error": "request too long"}))
                    break
                writer.write(encode(await self._answer(line, seen, unix)))
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, TimeoutError,
                asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _answer(self, line: bytes, seen: str, unix: bool) -> dict:
        try:
            request = decode(line)
        except ProtocolError as exc:
            return {"ok": False, "error": str(exc)}
        if not unix and not self._token_ok(request.get("token")):
            log.warning("admin channel: request with a wrong or missing token refused")
            return {"ok": False, "error": "wrong or missing admin token"}
        verb, args = request.get("verb"), request.get("args") or {}
        handler = self.handlers.get(verb) if isinstance(verb, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown verb {verb!r} (known: {', '.join(sorted(self.handlers))})"}
        if not isinstance(args, dict):
            return {"ok": False, "error": "args must be an object"}
        operator = operator_name(seen, request.get("operator"))
        try:
            return {"ok": True, "result": await handler(args, operator)}
        except AdminError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception:  # noqa: BLE001 - one failed verb must not end the channel
            log.exception("admin verb %r failed", verb)
            return {"ok": False, "error": f"{verb} failed inside the gateway; see its log"}

    def _token_ok(self, given: object) -> bool:
        if self.token is None or not isinstance(given, str):
            return False
        return hmac.compare_digest(given.encode("utf-8"), self.token.reveal_bytes())


async def _answers(path: Path) -> bool:
    """Whether something accepts connections on the unix socket ``path``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True
