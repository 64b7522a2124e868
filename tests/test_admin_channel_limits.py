"""The admin channel cannot be used to wear the gateway down, and stopping it loses no request.

A real :class:`~gateway.admin.server.AdminServer` (unix socket, and a loopback TCP listener with
its token) is driven with plain sockets the way a hostile local user would: too many
connections, silence, a wrong token again and again, a request far over the line limit, JSON
nested until the parser gives up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import pytest

from gateway.admin.protocol import MAX_LINE, ProtocolError, decode, encode
from gateway.admin.server import FIRST_REQUEST_S, IDLE_S, MAX_CONNECTIONS
from tests.fixtures.admin import RunningAdmin, ask, read_line, request, until_eof

NESTED = b"[" * 20000 + b"]" * 20000  # json.loads raises RecursionError, not JSONDecodeError


async def ping(args: dict, operator: str) -> dict:
    return {"pong": True, "operator": operator}


@pytest.fixture
def running():
    started: list[RunningAdmin] = []

    def start(handlers: dict | None = None, **kwargs) -> RunningAdmin:
        admin = RunningAdmin(handlers or {"ping": ping}, **kwargs)
        started.append(admin)
        return admin

    yield start
    for admin in started:
        admin.stop()


def admin_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pecgw.admin" and r.levelno == logging.WARNING]


def test_every_undecodable_line_is_a_protocol_error():
    for line in (NESTED, b"1" * 5000, b"\xff\xfe", b"{", b"[1]"):
        with pytest.raises(ProtocolError):
            decode(line)


def test_nested_json_is_answered_and_the_unix_connection_stays_usable(running):
    admin = running()
    with admin.unix() as s:
        s.sendall(NESTED + b"\n" + b"9" * 5000 + b"\n")
        nested, digits = read_line(s), read_line(s)
        assert ask(s, "ping")["result"]["pong"] is True
    assert nested["ok"] is False and nested["error"].startswith("not a JSON line: maximum recursion depth")
    assert digits["ok"] is False and "digits" in digits["error"]


def test_connections_are_capped_per_listener_and_a_freed_place_is_usable(running, caplog):
    assert MAX_CONNECTIONS <= 16
    admin = running(token="s3cret")
    held = [admin.unix() for _ in range(MAX_CONNECTIONS)]
    for s in held:
        assert ask(s, "ping")["ok"] is True  # each one is being served
    for _ in range(2):
        with admin.unix() as extra:
            data, closed, _ = until_eof(extra, 5)
        assert closed and [json.loads(line) for line in data.splitlines()] == [
            {"ok": False, "error": "too many admin connections; try again shortly"}]
    assert admin_warnings(caplog) == [f"admin channel: {MAX_CONNECTIONS} connections open on the unix socket; "
                                      "refusing more"]  # once, not per refused connection
    with admin.tcp() as tcp:  # a flood on one listener does not lock IT out of the other
        assert ask(tcp, "ping", token="s3cret")["ok"] is True
    held.pop().close()
    deadline = time.monotonic() + 5
    while True:
        with admin.unix() as again:
            answer = ask(again, "ping")
        if answer["ok"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert answer["result"]["pong"] is True
    for s in held:
        s.close()


def test_a_silent_or_slow_client_is_closed_and_an_idle_one_later(running):
    assert FIRST_REQUEST_S <= 10 and IDLE_S <= 60
    admin = running(first_request_s=0.3, idle_s=1.0)
    with admin.unix() as silent:
        data, closed, after = until_eof(silent, 5)
    assert data == b"" and closed and 0.2 < after < 2
    with admin.unix() as slow:
        slow.sendall(b'{"verb": "pi')  # never finishes its line
        data, closed, after = until_eof(slow, 5)
    assert data == b"" and closed and after < 2
    with admin.unix() as idle:
        assert ask(idle, "ping")["ok"] is True
        data, closed, after = until_eof(idle, 5)
    assert data == b"" and closed and 0.7 < after < 3


def test_a_wrong_token_on_tcp_is_answered_once_logged_once_and_closed(running, caplog):
    admin = running(token="s3cret")
    with admin.tcp() as s:
        s.sendall(request("ping", token="guess1") + request("ping", token="guess2") + request("ping"))
        data, closed, _ = until_eof(s, 5)
    assert closed and [json.loads(line) for line in data.splitlines()] == [
        {"ok": False, "error": "wrong or missing admin token"}]
    assert len(admin_warnings(caplog)) == 1
    with admin.tcp() as s:  # garbage before any token: answered, then closed too
        s.sendall(NESTED + b"\n" + request("ping", token="s3cret"))
        data, closed, _ = until_eof(s, 5)
    (answer,) = [json.loads(line) for line in data.splitlines()]
    assert closed and answer["ok"] is False and answer["error"].startswith("not a JSON line")
    with admin.tcp() as s:  # the right token: the connection serves request after request
        assert ask(s, "ping", token="s3cret")["result"] == {"pong": True, "operator": "token"}
        assert ask(s, "ping", token="s3cret")["ok"] is True


@pytest.mark.parametrize("size", [MAX_LINE + 100, 1 << 20])
def test_a_request_over_the_limit_is_answered_and_closed(running, size):
    admin = running()
    with admin.unix() as s:
        s.sendall(b"x" * size + b"\n")
        data, closed, _ = until_eof(s, 5)
    assert closed and data == encode({"ok": False, "error": "request too long"})
    fill = MAX_LINE - len(request("ping", pad="")) + 1
    longest = request("ping", pad="x" * fill)
    assert len(longest) == MAX_LINE + 1  # MAX_LINE octets and the newline: still a request
    with admin.unix() as s:
        s.sendall(longest)
        assert read_line(s)["ok"] is True


def test_stop_lets_the_request_being_handled_finish_and_ends_the_idle_ones(running):
    began, done = threading.Event(), []

    async def revoke(args: dict, operator: str) -> dict:
        began.set()
        await asyncio.sleep(0.5)  # the revocation is stored...
        done.append(args["person"])  # ...then its audit row is written
        return {"person": args["person"]}

    admin = running({"ping": ping, "revoke": revoke})
    idle, busy = admin.unix(), admin.unix()
    assert ask(idle, "ping")["ok"] is True
    busy.sendall(request("revoke", args={"person": "alice"}))
    assert began.wait(5)
    took = admin.stop()
    assert done == ["alice"] and took < 3
    assert read_line(busy) == {"ok": True, "result": {"person": "alice"}}
    assert until_eof(busy, 2)[1] and until_eof(idle, 2)[:2] == (b"", True)
    assert not admin.socket_path.exists()
    idle.close()
    busy.close()


def test_stop_waits_for_a_stuck_request_only_so_long(running):
    began = threading.Event()

    async def stuck(args: dict, operator: str) -> None:
        began.set()
        await asyncio.sleep(60)

    admin = running({"stuck": stuck}, stop_grace_s=0.3)
    with admin.unix() as s:
        s.sendall(request("stuck"))
        assert began.wait(5)
        took = admin.stop()
        data, closed, _ = until_eof(s, 2)
    assert 0.25 < took < 3 and closed and data == b""
