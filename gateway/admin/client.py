"""The CLI's side of the admin channel (:mod:`gateway.admin.server`): one blocking request.

The unix socket is used when configured; otherwise the loopback TCP listener with the token from
the vault.  :class:`AdminUnavailable` means no gateway is there to ask — no socket, nothing
listening, not allowed to connect — and callers say so, or fall back to working on the stores
directly.  It is raised only while connecting: once a gateway has accepted the connection it is
running, so a timeout or a dropped connection after that is a :class:`CliError` ("the gateway
did not answer"), never a reason to act as if it were stopped (``pecgw revoke`` would then
write the revocation itself and report "no running gateway").
"""

from __future__ import annotations

import getpass
import os
import pwd
import socket
from typing import Any

from gateway.admin.protocol import MAX_LINE, ProtocolError, decode, encode
from gateway.cli_error import CliError

__all__ = ["AdminUnavailable", "call", "claimed_operator", "local_operator"]

TIMEOUT_S = 30.0


class AdminUnavailable(Exception):
    """No running gateway could be reached on the admin channel."""


def claimed_operator() -> str:
    """Who runs the CLI, as far as the environment says (``sudo`` keeps the real person)."""
    for name in ("SUDO_USER", "LOGNAME", "USER"):
        value = os.environ.get(name)
        if value:
            return value
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def local_operator() -> str:
    """Who is acting when no gateway is reached: the process's user (as the admin socket would
    see it), with the name the environment claims (``sudo``'s ``$SUDO_USER``)."""
    from gateway.admin.server import operator_name

    try:
        seen = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        seen = f"uid {os.getuid()}"
    return operator_name(seen, claimed_operator())


def _connect(config) -> tuple[socket.socket, str | None]:
    """A connected socket and the token to send (TCP only); :class:`AdminUnavailable` when
    nothing is there to connect to, :class:`CliError` when something is but does not accept."""
    admin = config.admin
    if admin.socket is not None:
        where, token = f"the admin socket {admin.socket}", None
    elif admin.listen_port is None:
        raise AdminUnavailable(f"{config.source}: [admin] has neither a socket nor a listener")
    else:
        from gateway.app import open_vault

        secret = open_vault(config).get(admin.token_vault_key)
        if secret is None:
            raise AdminUnavailable(f"the vault has no admin token ({admin.token_vault_key!r}); the gateway "
                                   "creates it at its first start")
        where, token = f"the admin listener {admin.listen_host}:{admin.listen_port}", secret.reveal()
    try:
        if admin.socket is None:
            return socket.create_connection((admin.listen_host, admin.listen_port), timeout=TIMEOUT_S), token
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(TIMEOUT_S)
            sock.connect(str(admin.socket))
        except OSError:
            sock.close()
            raise
        return sock, None
    except (FileNotFoundError, NotADirectoryError):
        raise AdminUnavailable(f"no admin socket at {admin.socket}: is the gateway running?") from None
    except ConnectionRefusedError:
        raise AdminUnavailable(f"nothing listens on {where} (connection refused): is the gateway running?") from None
    except PermissionError:
        raise AdminUnavailable(f"not allowed to use {where}: run this as the gateway's user (or root)") from None
    except OSError as exc:  # a timeout, a full backlog (EAGAIN): something is there but does not accept
        raise CliError(f"{where} did not accept the connection ({exc.strerror or exc}): the gateway may be "
                       "running but overloaded; nothing was done") from None


def call(config, verb: str, **args: Any) -> Any:
    """Send one request and return its result; :class:`CliError` with the gateway's refusal, or
    when the gateway did not answer."""
    sock, token = _connect(config)
    try:
        request: dict[str, Any] = {"verb": verb, "args": args, "operator": claimed_operator()}
        if token is not None:
            request["token"] = token
        line = encode(request)
        if len(line) - 1 > MAX_LINE:  # the newline aside; the gateway would refuse it unread
            raise CliError(f"the request is too long for the admin channel ({len(line)} octets, at most "
                           f"{MAX_LINE}); nothing was done")
        sock.sendall(line)
        reply = _read_line(sock)
    except OSError as exc:
        raise CliError(f"the gateway did not answer: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        answer = decode(reply)
    except ProtocolError as exc:
        raise CliError(f"the gateway's answer was not understood: {exc}") from None
    if not answer.get("ok"):
        raise CliError(str(answer.get("error") or "the gateway refused the request"))
    return answer.get("result")


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("it closed the connection")
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)
        if size > MAX_LINE * 64:
            raise OSError("answer too long")
