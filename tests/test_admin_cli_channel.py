"""The CLI's side of the admin channel, against a real admin server: a running gateway that does
not answer is an error, never a reason to act as if it were stopped; what the gateway reports
cannot drive IT's terminal; a revocation's reason is capped with or without a gateway."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway import cli
from gateway.admin import client
from gateway.admin.client import AdminUnavailable, call
from gateway.admin.protocol import MAX_LINE
from gateway.admin_cli import _stored_revocations
from gateway.cli_error import CliError
from gateway.secret import Secret
from tests.audit.conftest import Trail
from tests.fixtures.admin import RunningAdmin

HOSTILE = "x\x1b[2K\x1b[1A\x7f\x9b\u202e\U000e0001\ud800"  # erase line, cursor up, DEL, CSI, RLO, tag, lone half


@pytest.fixture
def trail(monkeypatch):
    """A gateway configuration in a short folder (its admin socket must fit in 107 octets),
    with the vault key in this process's environment for in-process ``pecgw`` runs."""
    folder = Path(tempfile.mkdtemp(prefix="pecgw-cli-"))
    made = Trail(folder)
    monkeypatch.setenv("PECGW_AUDIT_TEST_VAULT_KEY", made.env["PECGW_AUDIT_TEST_VAULT_KEY"])
    monkeypatch.setenv("SUDO_USER", "it-mario")
    yield made
    shutil.rmtree(folder, ignore_errors=True)


def pecgw(trail: Trail, *args: str) -> int:
    return cli.main([*args, "--config", str(trail.config_path)])


def test_a_gateway_that_stops_answering_is_an_error_and_nothing_is_revoked_offline(trail, monkeypatch, capsys):
    async def revoke(args: dict, operator: str) -> dict:
        await asyncio.sleep(1.5)
        return {"person": args["person"], "already_revoked": False, "sessions_ended": 0}

    monkeypatch.setattr(client, "TIMEOUT_S", 0.5)
    admin = RunningAdmin({"revoke": revoke}, socket_path=trail.config.admin.socket, stop_grace_s=0.1)
    try:
        assert pecgw(trail, "revoke", "alice", "--reason", "left") == 2
        err = capsys.readouterr().err
        assert "the gateway did not answer: timed out" in err and "no running gateway" not in err
        assert _stored_revocations(trail.config) == []  # not recorded behind the running gateway's back
        with pytest.raises(CliError, match="the request is too long"):  # refused before sending
            call(trail.config, "revoke", person="a" * MAX_LINE)
    finally:
        admin.stop()


def test_a_connection_dropped_mid_request_is_an_error(trail):
    began = threading.Event()

    async def revoke(args: dict, operator: str) -> None:
        began.set()
        await asyncio.sleep(30)

    admin = RunningAdmin({"revoke": revoke}, socket_path=trail.config.admin.socket, stop_grace_s=0.2)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(call, trail.config, "revoke", person="alice")
        assert began.wait(5)
        admin.stop()  # the request outlives stop()'s grace: its connection is ended unanswered
        with pytest.raises(CliError, match="the gateway did not answer: it closed the connection"):
            pending.result(10)


def test_only_an_absent_gateway_is_unavailable(trail):
    path = trail.config.admin.socket
    with pytest.raises(AdminUnavailable, match="is the gateway running"):  # no socket at all
        call(trail.config, "ping")
    with socket.socket(socket.AF_UNIX) as stale:  # a socket file nobody listens on
        stale.bind(str(path))
        with pytest.raises(AdminUnavailable, match="connection refused"):
            call(trail.config, "ping")
    os.unlink(path)


def test_the_reason_is_capped_with_and_without_a_gateway(trail, capsys):
    calls = []

    async def revoke(args: dict, operator: str) -> dict:
        calls.append(args)
        return {"person": args["person"], "already_revoked": False, "sessions_ended": 0}

    assert pecgw(trail, "revoke", "alice", "--reason", "r" * 501) == 2  # no gateway: the offline path
    assert "--reason: at most 500 characters (this one has 501)" in capsys.readouterr().err
    assert _stored_revocations(trail.config) == []
    admin = RunningAdmin({"revoke": revoke}, socket_path=trail.config.admin.socket)
    try:
        assert pecgw(trail, "revoke", "alice", "--reason", "r" * 501) == 2
        assert calls == []
        assert pecgw(trail, "revoke", "alice", "--reason", "r" * 500) == 0
        assert calls == [{"person": "alice", "reason": "r" * 500}]
    finally:
        admin.stop()


def test_sessions_never_reach_the_terminal_raw(trail, capsys):
    row = {"session": "3f9c0a1e2b4d5c6f", "protocol": "smtp", "person": "al\u202eice", "mailbox": "protocollo",
           "folder": None, "client_ip": "127.0.0.1", "client": HOSTILE, "since": time.time()}

    async def sessions(args: dict, operator: str) -> list[dict]:
        return [row]

    admin = RunningAdmin({"sessions": sessions}, socket_path=trail.config.admin.socket)
    try:
        assert pecgw(trail, "sessions") == 0
        table = capsys.readouterr().out
        assert pecgw(trail, "sessions", "--json") == 0
        lines = capsys.readouterr().out
    finally:
        admin.stop()
    for out in (table, lines):
        assert all(ch.isprintable() for ch in out.replace("\n", "")), ascii(out)
    body = table.splitlines()[1]
    assert body.split()[2] == "al?ice" and body.split()[6] == "x?[2K?[1A?????"
    (line,) = lines.splitlines()
    assert json.loads(line) == row  # the JSON still says exactly what the gateway sent


def test_an_otp_reset_the_gateway_does_not_confirm_is_still_audited_and_said(trail, monkeypatch, capsys):
    async def otp_changed(args: dict, operator: str) -> None:
        await asyncio.sleep(1.5)

    trail.fill([])  # the gateway's first start: the chain key in the vault
    trail.vault.set("otp/alice", Secret("JBSWY3DPEHPK3PXP"))
    monkeypatch.setattr(client, "TIMEOUT_S", 0.5)
    admin = RunningAdmin({"otp-changed": otp_changed}, socket_path=trail.config.admin.socket, stop_grace_s=0.1)
    try:
        assert pecgw(trail, "otp", "reset", "alice") == 2
    finally:
        admin.stop()
    err = capsys.readouterr().err
    assert "the OTP secret of alice was removed, but the running gateway did not confirm it" in err
    assert trail.vault.get("otp/alice") is None
    out = trail.run("query", "--action", "otp_reset", "--format", "jsonl")
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert row["person"] == "alice" and row["detail"]["gateway_answered"] is False
    assert row["detail"]["by"].endswith("(as it-mario)")
