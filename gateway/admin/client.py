"""The CLI's side of the admin channel (:mod:`gateway.admin.server`): one blocking request.

The unix socket is used when configured; otherwise the loopback TCP listener with the token from
the vault.  :class:`AdminUnavailable` means no gateway answered (not running, or the socket is
not reachable for this user): callers say so, or fall back to working on the stores directly.
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
    admin = config.admin
    if admin.socket is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT_S)
        try:
            sock.connect(str(admin.socket))
        except FileNotFoundError:
            sock.close()
            raise AdminUnavailable(f"no admin socket at {admin.socket}: is the gateway running?") from None
        except PermissionError:
            sock.close()
            raise AdminUnavailable(f"not allowed to use the admin socket {admin.socket}: run this as the "
                                   "gateway's user (or root)") from None
        except OSError as exc:
            sock.close()
            raise AdminUnavailable(f"admin socket {admin.socket}: {exc.strerror or exc}") from None
        return sock, None
    if admin.listen_port is None:
        raise AdminUnavailable(f"{config.source}: [admin] has neither a socket nor a listener")
    from gateway.app import open_vault

    token = open_vault(config).get(admin.token_vault_key)
    if token is None:
        raise AdminUnavailable(f"the vault has no admin token ({admin.token_vault_key!r}); the gateway "
                               "creates it at its first start")
    try:
        sock = socket.create_connection((admin.listen_host, admin.listen_port), timeout=TIMEOUT_S)
    except OSError as exc:
        raise AdminUnavailable(f"admin listener {admin.listen_host}:{admin.listen_port}: "
                               f"{exc.strerror or exc}: is the gateway running?") from None
    return sock, token.reveal()


def call(config, verb: str, **args: Any) -> Any:
    """Send one request and return its result; :class:`CliError` with the gateway's refusal."""
    sock, token = _connect(config)
    request: dict[str, Any] = {"verb": verb, "args": args, "operator": claimed_operator()}
    if token is not None:
        request["token"] = token
    try:
        sock.sendall(encode(request))
        reply = _read_line(sock)
    except OSError as exc:
        raise AdminUnavailable(f"the admin channel broke: {exc.strerror or exc}") from None
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
            raise OSError("the gateway closed the connection without answering")
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)
        if size > MAX_LINE * 64:
            raise OSError("answer too long")
