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

Any local user can reach the TCP listener, so nothing a peer does may cost the gateway much:
each listener serves at most :data:`MAX_CONNECTIONS` connections at once (more are answered one
error line and closed; a listener of its own each, so a flood on TCP never locks IT out of the
unix socket), the first request must arrive within :data:`FIRST_REQUEST_S` and later ones within
:data:`IDLE_S`, a request over :data:`~gateway.admin.protocol.MAX_LINE` is answered "request too
long" and closed, and on TCP a request without the right token is answered, logged once and
closed.  :meth:`AdminServer.stop` lets requests being handled finish (a revoke's audit row
included) before it ends the connections.
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

from gateway.admin.linger import finish_answer
from gateway.admin.protocol import MAX_LINE, ProtocolError, decode, encode
from gateway.secret import Secret

__all__ = ["AdminError", "AdminServer", "Handler"]

log = logging.getLogger("pecgw.admin")

Handler = Callable[[dict, str], Awaitable[Any]]
MAX_CONNECTIONS = 16  # per listener; the CLI uses one connection per command
FIRST_REQUEST_S = 10.0  # the CLI sends its request as soon as it is connected
IDLE_S = 60.0  # between two requests on one connection
STOP_GRACE_S = 5.0  # how long stop() lets requests being handled finish


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
    """Serves the admin verbs on the configured socket and listener.

    The limits are parameters so tests can make them short; the gateway uses the defaults."""

    def __init__(self, config, handlers: dict[str, Handler], token: Secret | None = None, *,
                 max_connections: int = MAX_CONNECTIONS, first_request_s: float = FIRST_REQUEST_S,
                 idle_s: float = IDLE_S, stop_grace_s: float = STOP_GRACE_S) -> None:
        self.config = config  # gateway.config.AdminConfig
        self.handlers = handlers
        self.token = token
        self.max_connections, self.first_request_s, self.idle_s = max_connections, first_request_s, idle_s
        self.stop_grace_s = stop_grace_s
        self._servers: list[asyncio.base_events.Server] = []
        self._open: dict[bool, set[asyncio.Task]] = {True: set(), False: set()}  # by unix or not
        self._full_logged: dict[bool, bool] = {True: False, False: False}
        self._busy: set[asyncio.Task] = set()  # connections handling a request right now
        self._stopping = False

    async def start(self) -> None:
        cfg = self.config
        if cfg.socket is not None:
            await self._start_unix(cfg.socket)
        if cfg.listen_port is not None:
            if self.token is None:
                raise RuntimeError("the admin TCP listener needs a token")
            server = await asyncio.start_server(lambda r, w: self._serve(r, w, unix=False), cfg.listen_host,
                                                cfg.listen_port, limit=MAX_LINE)
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
            server = await asyncio.start_unix_server(lambda r, w: self._serve(r, w, unix=True), path,
                                                     limit=MAX_LINE)
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
        """Stop accepting; let requests being handled finish (at most ``stop_grace_s``), so a
        revoke that was persisted also gets its audit row; then end every connection."""
        self._stopping = True
        for server in self._servers:
            server.close()
        connections = self._open[True] | self._open[False]
        for task in connections - self._busy:
            task.cancel()  # waiting for a request: nothing is lost
        if self._busy:
            await asyncio.wait(set(self._busy), timeout=self.stop_grace_s)
        for task in connections:
            task.cancel()
        if connections:
            await asyncio.gather(*connections, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self.config.socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.config.socket.unlink()

    # ------------------------------------------------------------------ one connection
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, unix: bool) -> None:
        task, open_ = asyncio.current_task(), self._open[unix]
        try:
            if self._stopping or len(open_) >= self.max_connections:
                self._log_full(unix)
                writer.write(encode({"ok": False, "error": "the gateway is stopping" if self._stopping else
                                     "too many admin connections; try again shortly"}))
                return  # closed at once: lingering here would let a flood hold file descriptors
            open_.add(task)
            await self._converse(reader, writer, unix)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, asyncio.CancelledError):
            pass
        except Exception:  # noqa: BLE001 - e.g. a result that is not JSON: this connection ends, not others
            log.exception("admin channel: a connection failed")
        finally:
            open_.discard(task)
            self._busy.discard(task)
            if len(open_) < self.max_connections:
                self._full_logged[unix] = False
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, unix: bool) -> None:
        task, seen = asyncio.current_task(), _peer_user(writer) if unix else "token"
        wait_s = self.first_request_s
        while not self._stopping:
            try:
                async with asyncio.timeout(wait_s):
                    line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:  # no newline within MAX_LINE octets
                writer.write(encode({"ok": False, "error": "request too long"}))
                await finish_answer(reader, writer)
                return
            wait_s = self.idle_s
            self._busy.add(task)
            answer, keep_open = await self._answer(line, seen, unix)
            writer.write(encode(answer))
            if not keep_open:
                await finish_answer(reader, writer)
                return
            await writer.drain()
            self._busy.discard(task)

    async def _answer(self, line: bytes, seen: str, unix: bool) -> tuple[dict, bool]:
        """The answer to one request line, and whether the connection stays open after it."""
        try:
            request = decode(line)
        except ProtocolError as exc:
            if not unix:
                log.warning("admin channel: a TCP client sent something that is not a request; closed")
            return {"ok": False, "error": str(exc)}, unix
        if not unix and not self._token_ok(request.get("token")):
            log.warning("admin channel: a TCP request with a wrong or missing token refused; closed")
            return {"ok": False, "error": "wrong or missing admin token"}, False
        verb, args = request.get("verb"), request.get("args") or {}
        handler = self.handlers.get(verb) if isinstance(verb, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown verb {verb!r} (known: {', '.join(sorted(self.handlers))})"}, True
        if not isinstance(args, dict):
            return {"ok": False, "error": "args must be an object"}, True
        operator = operator_name(seen, request.get("operator"))
        try:
            return {"ok": True, "result": await handler(args, operator)}, True
        except AdminError as exc:
            return {"ok": False, "error": str(exc)}, True
        except Exception:  # noqa: BLE001 - one failed verb must not end the channel
            log.exception("admin verb %r failed", verb)
            return {"ok": False, "error": f"{verb} failed inside the gateway; see its log"}, True

    def _log_full(self, unix: bool) -> None:
        """One warning each time a listener fills up, not one per refused connection."""
        if not self._stopping and not self._full_logged[unix]:
            self._full_logged[unix] = True
            log.warning("admin channel: %d connections open on the %s; refusing more", self.max_connections,
                        "unix socket" if unix else "TCP listener")

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
