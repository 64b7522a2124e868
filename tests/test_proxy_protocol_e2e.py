"""PROXY protocol on the gateway's listeners, spoken by hand from a trusted address, and TCP_NODELAY.

The gateway trusts only 127.0.0.3 here: these tests play the load balancer from 127.0.0.3 with
real imaplib / smtplib clients that write a PROXY header before speaking IMAP or SMTP (so the
header names a client address the test chose), and show that a header from anyone else, a
missing header and a bad one are refused.  HAProxy itself is in tests/test_haproxy_e2e.py.
"""

from __future__ import annotations

import imaplib
import ipaddress
import logging
import smtplib
import socket
import ssl
import struct
import time

import pytest

from gateway.proxy_protocol import V2_SIGNATURE
from tests.test_smtp_e2e import start_gateway

PROXY_ADDRESS = "127.0.0.3"  # the "load balancer" of these tests


# -- clients --------------------------------------------------------------------------------
def v2_header(source: tuple[str, int] | None, destination: tuple[str, int] = ("127.0.0.1", 993)) -> bytes:
    """A PROXY v2 header (LOCAL when ``source`` is None), built from the spec."""
    if source is None:
        return V2_SIGNATURE + b"\x20\x00\x00\x00"
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x11 if src.version == 4 else 0x21
    if src.version != dst.version:
        dst = ipaddress.ip_address("::ffff:" + str(dst)) if src.version == 6 else dst
    block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(block)) + block


def v1_header(source: tuple[str, int], destination: tuple[str, int] = ("127.0.0.1", 143)) -> bytes:
    return f"PROXY TCP4 {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def connect(port: int, source: str, header: bytes = b"", timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout, source_address=(source, 0))
    if header:
        sock.sendall(header)
    return sock


class ProxiedIMAP4_SSL(imaplib.IMAP4_SSL):
    """imaplib over implicit TLS from ``source``, writing ``header`` first as a load balancer would."""

    def __init__(self, port: int, ctx: ssl.SSLContext, *, source: str = PROXY_ADDRESS, header: bytes = b"") -> None:
        self.source, self.header = source, header
        super().__init__("localhost", port, ssl_context=ctx, timeout=10)

    def _create_socket(self, timeout):
        sock = connect(self.port, self.source, self.header, timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname="localhost")


class ProxiedIMAP4(imaplib.IMAP4):
    """Plain imaplib (for STARTTLS) from ``source``, writing ``header`` first."""

    def __init__(self, port: int, *, source: str = PROXY_ADDRESS, header: bytes = b"") -> None:
        self.source, self.header = source, header
        super().__init__("localhost", port, timeout=10)

    def _create_socket(self, timeout):
        return connect(self.port, self.source, self.header, timeout)


class ProxiedSMTP_SSL(smtplib.SMTP_SSL):
    """smtplib over implicit TLS from ``source``, writing ``header`` first."""

    def __init__(self, port: int, ctx: ssl.SSLContext, *, source: str = PROXY_ADDRESS, header: bytes = b"") -> None:
        self.source, self.header = source, header
        super().__init__("localhost", port, context=ctx, timeout=20)

    def _get_socket(self, host, port, timeout):
        return self.context.wrap_socket(connect(port, self.source, self.header, timeout), server_hostname="localhost")


class ProxiedSMTP(smtplib.SMTP):
    """Plain smtplib (for STARTTLS) from ``source``, writing ``header`` first."""

    def __init__(self, port: int, *, source: str = PROXY_ADDRESS, header: bytes = b"") -> None:
        self.source, self.header = source, header
        super().__init__("localhost", port, timeout=20)

    def _get_socket(self, host, port, timeout):
        return connect(port, self.source, self.header, timeout)


def closed_without_a_word(sock: socket.socket, timeout: float = 5) -> bool:
    """The gateway closed the connection and sent nothing (a timeout raises)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    finally:
        sock.close()


# -- the gateway ----------------------------------------------------------------------------
def proxied_tables(pki, trusted: list[str], timeout: float = 1) -> dict:
    """``[imap]`` and ``[smtp]`` of a gateway behind a load balancer at ``trusted``."""
    proxy = {"proxy_protocol": True, "proxy_trusted": trusted, "proxy_timeout": timeout}
    return {"imap": {"listen_tls": ["127.0.0.1:0"], "listen_starttls": ["127.0.0.1:0"],
                     "cert_file": str(pki.server_cert), "key_file": str(pki.server_key), "preauth_timeout": 30,
                     **proxy},
            "smtp": {"listen_tls": ["127.0.0.1:0"], "listen_starttls": ["127.0.0.1:0"], "timeout": 30, **proxy}}


@pytest.fixture
def gw(tmp_path, pki, slapd, dovecot, pec_mailbox, pec_provider):
    h = start_gateway(tmp_path, pki, slapd, dovecot, pec_mailbox, pec_provider,
                      **proxied_tables(pki, [f"{PROXY_ADDRESS}/32"]))
    h.ctx = h.client_context()
    yield h
    h.stop()


def live_sessions(gw) -> list[dict]:
    async def listed():
        return [s.as_dict() for s in gw.gateway.services.live]
    return gw.call(listed)


# -- the header gives the client address ----------------------------------------------------
def test_imap_behind_a_proxy_audits_and_lists_the_client_address(gw):
    client = ProxiedIMAP4_SSL(gw.ports["implicit"], gw.ctx, header=v2_header(("192.0.2.7", 51234)))
    client.login("alice", gw.credential("alice", "alice-password"))
    (row,) = gw.rows_of("login", protocol="imap", person="alice")
    assert row["client_ip"] == "192.0.2.7"
    assert [s["client_ip"] for s in live_sessions(gw) if s["person"] == "alice"] == ["192.0.2.7"]
    client.logout()

    # v1 on the STARTTLS listener: the header in clear, then STARTTLS, then the login
    client = ProxiedIMAP4(gw.ports["starttls"], header=v1_header(("198.51.100.9", 40001)))
    client.starttls(ssl_context=gw.ctx)
    client.login("bruno", gw.credential("bruno", "bruno-password"))
    client.logout()
    assert [r["client_ip"] for r in gw.rows_of("login", protocol="imap", person="bruno")] == ["198.51.100.9"]


def test_an_ipv6_client_and_a_failed_login_are_counted_for_the_client(gw):
    client = ProxiedIMAP4_SSL(gw.ports["implicit"], gw.ctx, header=v2_header(("2001:db8::7", 40000)))
    with pytest.raises(client.error, match="AUTHENTICATIONFAILED"):
        client.login("carla", "wrong-password000000")
    client.logout()
    (row,) = gw.rows_of("login_failed", protocol="imap", person="carla")
    assert row["client_ip"] == "2001:db8::7"


def test_the_local_command_keeps_the_proxy_address(gw):
    """HAProxy's health checks say LOCAL: the connection is the proxy's own, and so is its address."""
    client = ProxiedIMAP4_SSL(gw.ports["implicit"], gw.ctx, header=v2_header(None))
    client.login("carla", gw.credential("carla", "carla-password"))
    client.logout()
    assert [r["client_ip"] for r in gw.rows_of("login", protocol="imap", person="carla")] == [PROXY_ADDRESS]


def test_smtp_behind_a_proxy_audits_the_client_address(gw):
    with ProxiedSMTP_SSL(gw.smtp_ports["implicit"], gw.ctx, header=v2_header(("203.0.113.5", 50000))) as c:
        c.login("alice", gw.credential("alice", "alice-password"))
    with ProxiedSMTP(gw.smtp_ports["starttls"], header=v1_header(("203.0.113.6", 50001))) as c:
        c.starttls(context=gw.ctx)
        c.login("bruno", gw.credential("bruno", "bruno-password"))
    assert [r["client_ip"] for r in gw.rows_of("login", protocol="smtp", person="alice")] == ["203.0.113.5"]
    assert [r["client_ip"] for r in gw.rows_of("login", protocol="smtp", person="bruno")] == ["203.0.113.6"]


def test_client_bytes_right_behind_the_header_reach_tls(gw):
    """The header and the client's first TLS flight in one segment (as HAProxy sends them): the
    listener must read the header and not one octet more, or the handshake breaks."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = gw.ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    sock = connect(gw.ports["implicit"], PROXY_ADDRESS)
    sock.sendall(v2_header(("192.0.2.8", 1)) + outgoing.read())  # one write: one segment on loopback
    greeting = b""
    while not greeting.endswith(b"\r\n"):
        data = sock.recv(65536)
        assert data, "the gateway closed the connection"
        incoming.write(data)
        try:
            tls.do_handshake()
            greeting += tls.read(4096)
        except ssl.SSLWantReadError:
            pass
        if pending := outgoing.read():
            sock.sendall(pending)
    sock.close()
    assert greeting.startswith(b"* OK")


# -- refusals -------------------------------------------------------------------------------
def test_a_header_from_an_untrusted_peer_is_refused(gw, caplog):
    caplog.set_level(logging.WARNING, logger="pecgw.proxy")
    for port in (gw.ports["implicit"], gw.ports["starttls"], gw.smtp_ports["implicit"], gw.smtp_ports["starttls"]):
        sock = connect(port, "127.0.0.1", v2_header(("192.0.2.66", 1)))
        assert closed_without_a_word(sock)
    refused = [r.getMessage() for r in caplog.records if "not from a trusted proxy" in r.getMessage()]
    assert len(refused) == 4 and all("from 127.0.0.1 refused" in m for m in refused)


def test_a_trusted_peer_without_a_valid_header_is_refused(gw, caplog):
    caplog.set_level(logging.INFO, logger="pecgw.proxy")
    # a client speaking TLS straight to the listener: refused on its first octets
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        ProxiedIMAP4_SSL(gw.ports["implicit"], gw.ctx)
    # IMAP or SMTP straight away, a malformed header: refused
    for port, data in ((gw.ports["starttls"], b"a1 CAPABILITY\r\n"),
                       (gw.smtp_ports["starttls"], b"EHLO me\r\n"),
                       (gw.ports["starttls"], b"PROXY TCP4 192.0.2.999 127.0.0.1 1 143\r\n"),
                       (gw.ports["starttls"], b"PROXY TCP4 192.0.2.1 127.0.0.1 1 143 " + b"x" * 80)):
        assert closed_without_a_word(connect(port, PROXY_ADDRESS, data))
    # silence: refused once proxy_timeout (1 s here) has passed
    started = time.monotonic()
    assert closed_without_a_word(connect(gw.smtp_ports["implicit"], PROXY_ADDRESS), timeout=5)
    assert time.monotonic() - started >= 0.9
    # a good header, then no TLS on a TLS port: the handshake fails, no session starts
    sock = connect(gw.ports["implicit"], PROXY_ADDRESS, v2_header(("192.0.2.10", 3)) + b"a1 CAPABILITY\r\n")
    sock.settimeout(20)
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    sock.close()
    assert b"OK" not in answer and not live_sessions(gw)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("IMAP: TLS handshake with 192.0.2.10 failed") for m in messages)
    assert sum("invalid PROXY header" in m for m in messages) == 5
    assert any("SMTP: connection from 127.0.0.3 refused: no complete PROXY header within 1 s" in m for m in messages)


# -- TCP_NODELAY ----------------------------------------------------------------------------
def nodelay(sock) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def gateway_side_nodelay(gw) -> dict[str, list[bool]]:
    """TCP_NODELAY on the gateway's own sockets of every live connection, read on its loop."""
    async def read():
        imap, smtp = gw.gateway.services.sessions, gw.gateway.smtp.connections
        return {
            "imap client": [nodelay(c.writer.get_extra_info("socket")) for c in imap],
            "imap provider": [nodelay(c.up.link.transport.get_extra_info("socket")) for c in imap if c.up],
            "smtp client": [nodelay(c.transport.get_extra_info("socket")) for c in smtp],
            "smtp provider": [nodelay(c.session.auth_data.provider._smtp.sock) for c in smtp
                              if c.session.auth_data and c.session.auth_data.provider
                              and c.session.auth_data.provider.connected],
        }
    return gw.call(read)


def open_one_of_each(gw, imap_implicit, imap_starttls, smtp_implicit, smtp_starttls):
    """An IMAP session per listener (logged in: provider connected) and an SMTP session per
    listener with a MAIL FROM (which opens the provider connection), all left open."""
    clients = []
    for make in (imap_implicit, imap_starttls):
        client = make()
        if isinstance(client, imaplib.IMAP4) and not isinstance(client, imaplib.IMAP4_SSL):
            client.starttls(ssl_context=gw.ctx)
        client.login("carla", gw.credential("carla", "carla-password"))
        clients.append(client)
    for make in (smtp_implicit, smtp_starttls):
        client = make()
        if not isinstance(client, smtplib.SMTP_SSL):
            client.starttls(context=gw.ctx)
        client.login("alice", gw.credential("alice", "alice-password"))
        assert client.mail(gw.mailbox.address)[0] == 250
        clients.append(client)
    return clients


def close_all(clients) -> None:
    for client in clients:
        client.logout() if isinstance(client, imaplib.IMAP4) else client.quit()


def test_every_socket_of_a_proxied_gateway_has_tcp_nodelay(gw):
    header = v2_header(("192.0.2.9", 2))
    clients = open_one_of_each(
        gw, lambda: ProxiedIMAP4_SSL(gw.ports["implicit"], gw.ctx, header=header),
        lambda: ProxiedIMAP4(gw.ports["starttls"], header=header),
        lambda: ProxiedSMTP_SSL(gw.smtp_ports["implicit"], gw.ctx, header=header),
        lambda: ProxiedSMTP(gw.smtp_ports["starttls"], header=header))
    try:
        seen = gateway_side_nodelay(gw)
    finally:
        close_all(clients)
    assert seen == {"imap client": [True, True], "imap provider": [True, True],
                    "smtp client": [True, True], "smtp provider": [True, True]}


def test_every_socket_of_a_direct_gateway_has_tcp_nodelay(tmp_path, pki, slapd, dovecot, pec_mailbox, pec_provider):
    """Without PROXY protocol too: asyncio sets TCP_NODELAY on the sockets it accepts and opens
    (kept through TLS and STARTTLS); smtplib's provider connection gets it from the gateway."""
    direct = start_gateway(tmp_path, pki, slapd, dovecot, pec_mailbox, pec_provider)
    direct.ctx = direct.client_context()
    try:
        clients = open_one_of_each(
            direct, direct.imap, direct.imap_plain,
            lambda: smtplib.SMTP_SSL("localhost", direct.smtp_ports["implicit"], context=direct.ctx, timeout=20),
            lambda: smtplib.SMTP("localhost", direct.smtp_ports["starttls"], timeout=20))
        try:
            seen = gateway_side_nodelay(direct)
        finally:
            close_all(clients)
        assert seen == {"imap client": [True, True], "imap provider": [True, True],
                        "smtp client": [True, True], "smtp provider": [True, True]}
    finally:
        direct.stop()
