"""``[smtp] preauth_timeout``: a submission client that never logs in is closed, NOOPs or not.

aiosmtpd's own ``timeout`` starts again at every command, so without this deadline a client could
hold a connection for ever without authenticating.  Real gateway, real socket client.
"""

from __future__ import annotations

import select
import socket
import time

from tests.fixtures.gateway import GatewayHarness, office_policy


def test_a_client_that_never_logs_in_is_closed_at_the_preauth_deadline(tmp_path, pki):
    h = GatewayHarness(tmp_path / "gw", pki)
    users = tmp_path / "users.toml"
    users.write_text("")
    tables = h.base_tables(directory={"backend": "static", "users_file": str(users)},
                           policy=office_policy({"legale": {"members": ["alice"]}}, {"protocollo": ["legale"]}),
                           mailboxes={"protocollo": {"address": "protocollo@pec.example.it",
                                                     "imap": {"host": "localhost", "username": "protocollo"}}})
    tables["smtp"] = {"listen_tls": [], "listen_starttls": ["127.0.0.1:0"], "preauth_timeout": 1.5}
    h.start(tables)
    try:
        sock = socket.create_connection(("127.0.0.1", h.smtp_ports["starttls"]), timeout=10)
        started = time.monotonic()
        replies = sock.makefile("rb")
        assert replies.readline().startswith(b"220 ")
        sock.sendall(b"EHLO client.example.it\r\n")
        while not (line := replies.readline()).startswith(b"250 "):
            assert line.startswith(b"250-"), line
        while True:  # a command every 0.3 s: aiosmtpd's idle timer never runs out
            if select.select([sock], [], [], 0.3)[0]:
                line = replies.readline()  # unasked: the gateway closes
                break
            sock.sendall(b"NOOP\r\n")
            line = replies.readline()
            if not line.startswith(b"250 "):
                break
            assert time.monotonic() - started < 10, "never closed"
        assert line == b"421 4.4.2 Login timeout\r\n"
        assert replies.readline() == b""
        assert 1.4 <= time.monotonic() - started < 10
        sock.close()
    finally:
        h.stop()
