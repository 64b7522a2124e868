"""``[smtp] preauth_timeout``: a submission client that never logs in is closed, NOOPs or not.

aiosmtpd's own ``timeout`` starts again at every command, so without this deadline a client could
hold a connection for ever without authenticating.  Real gateway, real socket client.
"""

from __future__ import annotations

import select
import socket
import time

from tests.fixtures.gateway import GatewayHarness, offline_tables


def start(tmp_path, pki) -> GatewayHarness:
    h = GatewayHarness(tmp_path / "gw", pki)
    tables = offline_tables(h, tmp_path)
    tables["smtp"] = {"listen_tls": [], "listen_starttls": ["127.0.0.1:0"], "preauth_timeout": 1.5}
    return h.start(tables)


def test_a_client_that_never_logs_in_is_closed_at_the_preauth_deadline(tmp_path, pki):
    h = start(tmp_path, pki)
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


def test_half_a_command_kept_waiting_does_not_hold_off_the_deadline(tmp_path, pki):
    """Was: any byte received marked a command as running, and the deadline waited for its
    answer: a client answering each 250 with the first byte of its next command stayed for ever."""
    h = start(tmp_path, pki)
    try:
        sock = socket.create_connection(("127.0.0.1", h.smtp_ports["starttls"]), timeout=10)
        started = time.monotonic()
        replies = sock.makefile("rb")
        assert replies.readline().startswith(b"220 ")
        line = b""
        try:
            sock.sendall(b"N")
            while time.monotonic() - started < 10:
                if select.select([sock], [], [], 0.3)[0]:
                    line = replies.readline()
                    if not line.startswith(b"250 "):
                        break
                    sock.sendall(b"N")  # the next command begins, and waits
                else:
                    sock.sendall(b"OOP\r\n")  # ... and ends: aiosmtpd's idle timer starts again
        except ConnectionResetError:
            # our "N" reached a socket the gateway had just closed: the kernel's reset can overtake
            # the 421; what counts then is that the gateway closed it, and when
            line = b"(reset)"
        assert line in (b"421 4.4.2 Login timeout\r\n", b"(reset)")
        assert 1.4 <= time.monotonic() - started < 5
        sock.close()
    finally:
        h.stop()
