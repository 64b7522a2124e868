"""The PROXY protocol header parser (gateway/proxy_protocol.py), fed bytes, and its config keys.

Headers are built here by hand from the spec (proxy-protocol.txt sections 2.1 and 2.2), so the
tests do not share a mistake with the parser; HAProxy itself speaks to the gateway in
tests/test_haproxy_e2e.py.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from gateway.config import ConfigError, parse_config
from gateway.proxy_listener import is_trusted
from gateway.proxy_protocol import V1_MAX, V2_MAX_PAYLOAD, V2_SIGNATURE, ProxyHeader, ProxyHeaderError, parse, wanted
from tests.unit.test_config import minimal

CLIENT_DATA = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(40))  # a TLS ClientHello's start


def v2(command: int = 1, family: int = 1, transport: int = 1, payload: bytes = b"") -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family << 4 | transport]) + struct.pack("!H", len(payload)) + payload


def v2_inet(src="192.0.2.7", dst="10.0.0.5", sport=51234, dport=993, tlvs: bytes = b"") -> bytes:
    addresses = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + struct.pack("!HH", sport, dport)
    return v2(payload=addresses + tlvs)


def v2_inet6(src="2001:db8::7", dst="2001:db8::1", sport=40000, dport=465) -> bytes:
    addresses = ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + struct.pack("!HH", sport, dport)
    return v2(family=2, payload=addresses)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def read_like_the_listener(stream: bytes, chunk_limit: int | None = None) -> tuple[bytes, bytes]:
    """Take octets from ``stream`` exactly as the listener does (never more than ``wanted``, and
    at most ``chunk_limit`` at a time, as a slow network would): (header, what is left)."""
    got, rest = b"", stream
    while need := wanted(got):
        take = min(need, chunk_limit or need, len(rest))
        assert take, "the stream ended inside the header"
        got, rest = got + rest[:take], rest[take:]
    return got, rest


# -- version 1 ------------------------------------------------------------------------------
@pytest.mark.parametrize("line, source, destination", [
    (b"PROXY TCP4 192.0.2.7 10.0.0.5 51234 993\r\n", ("192.0.2.7", 51234), ("10.0.0.5", 993)),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 465\r\n", ("2001:db8::7", 40000), ("2001:db8::1", 465)),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", ("0.0.0.0", 0), ("255.255.255.255", 65535)),
])
def test_v1_tcp_lines_give_the_client_address(line, source, destination):
    header = parse(line)
    assert header == ProxyHeader(1, False, source, destination, len(line))


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff:f:: ffff:f:: 65535 65535\r\n"])
def test_v1_unknown_keeps_the_connection_address(line):
    header = parse(line)
    assert header.source is None and header.destination is None and header.length == len(line)


@pytest.mark.parametrize("line, why", [
    (b"PROXY TCP4 192.0.2.7 10.0.0.5 51234 993\n", "CRLF"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.5 51234 993\r\r\n", "printable"),
    (b"PROXY TCP5 192.0.2.7 10.0.0.5 51234 993\r\n", "TCP4|TCP6"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.5 51234\r\n", "TCP4|TCP6"),
    (b"PROXY TCP4  192.0.2.7 10.0.0.5 51234 993\r\n", "TCP4|TCP6"),  # two spaces
    (b"PROXY TCP4 192.0.2.7 10.0.0.5 51234 993 \r\n", "TCP4|TCP6"),
    (b"PROXY TCP4 2001:db8::7 10.0.0.5 51234 993\r\n", "plain IPv4"),
    (b"PROXY TCP6 192.0.2.7 2001:db8::1 51234 993\r\n", "plain IPv6"),
    (b"PROXY TCP6 fe80::1%eth0 2001:db8::1 51234 993\r\n", "plain IPv6"),
    (b"PROXY TCP4 192.0.2.07 10.0.0.5 51234 993\r\n", "invalid address"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.5 051234 993\r\n", "invalid port"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.5 65536 993\r\n", "invalid port"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.5 +1 993\r\n", "invalid port"),
    (b"PROXY TCP4 192.0.2.\xc3\xa9 10.0.0.5 1 993\r\n", "printable"),
    (b"PROXY \r\n", "TCP4|TCP6"),
    (b"proxy TCP4 192.0.2.7 10.0.0.5 51234 993\r\n", "not a PROXY"),
])
def test_v1_malformed_lines_are_refused(line, why):
    with pytest.raises(ProxyHeaderError, match=why.replace("|", r"\|")):
        read_and_parse(line)


def read_and_parse(stream: bytes) -> ProxyHeader:
    header, _ = read_like_the_listener(stream)
    return parse(header)


def test_v1_line_longer_than_107_octets_is_refused_without_reading_further():
    longest = b"PROXY UNKNOWN " + b"x" * (V1_MAX - len(b"PROXY UNKNOWN ") - 2) + b"\r\n"
    assert len(longest) == V1_MAX and parse(longest).source is None
    too_long = longest[:-2] + b"y\r\n"
    with pytest.raises(ProxyHeaderError, match="longer than 107"):
        read_like_the_listener(too_long + CLIENT_DATA)
    # refused once 106 octets hold no CR yet: the 108th is never asked for
    with pytest.raises(ProxyHeaderError, match="longer than 107"):
        wanted(too_long[:V1_MAX - 1])
    assert wanted(too_long[:V1_MAX - 2]) == 2


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 192.0.2.7 10.0.0.5 51234 993\r\n", b"PROXY UNKNOWN\r\n",
    b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 465\r\n"])
@pytest.mark.parametrize("chunk_limit", [None, 1, 3])
def test_v1_reading_stops_at_the_end_of_the_header(header, chunk_limit):
    got, rest = read_like_the_listener(header + CLIENT_DATA, chunk_limit)
    assert got == header and rest == CLIENT_DATA


# -- version 2 ------------------------------------------------------------------------------
def test_v2_tcp4_and_tcp6_give_the_client_address():
    assert parse(v2_inet()) == ProxyHeader(2, False, ("192.0.2.7", 51234), ("10.0.0.5", 993), 28)
    assert parse(v2_inet6()) == ProxyHeader(2, False, ("2001:db8::7", 40000), ("2001:db8::1", 465), 52)


def test_v2_tlvs_are_skipped():
    tlvs = tlv(0x05, b"unique-id-123") + tlv(0x20, b"\x01\x00\x00\x00\x00") + tlv(0x04, b"") + tlv(0xEE, b"x" * 300)
    header = parse(v2_inet(tlvs=tlvs))
    assert header.source == ("192.0.2.7", 51234) and header.length == 28 + len(tlvs)


@pytest.mark.parametrize("tlvs", [b"\x05\x00", tlv(0x05, b"abc")[:-1], tlv(0x05, b"abc") + b"\x01"])
def test_v2_badly_framed_tlvs_are_refused(tlvs):
    with pytest.raises(ProxyHeaderError, match="TLV"):
        parse(v2_inet(tlvs=tlvs))


def test_v2_local_keeps_the_connection_address_whatever_follows():
    for header in (v2(command=0, family=0, transport=0), v2(command=0, payload=b"\x00" * 12),
                   v2(command=0, family=7, transport=9, payload=b"junk")):
        parsed = parse(header)
        assert parsed.local and parsed.source is None and parsed.length == len(header)


def test_v2_unspec_and_unix_keep_the_connection_address():
    assert parse(v2(family=0, transport=0)).source is None
    assert parse(v2(family=0, transport=1, payload=b"anything")).source is None
    unix = v2(family=3, payload=b"/run/haproxy.sock".ljust(108, b"\x00") + b"/run/pecgw".ljust(108, b"\x00"))
    assert parse(unix).source is None and not parse(unix).local


@pytest.mark.parametrize("header, why", [
    (V2_SIGNATURE[:-1] + b"X" + b"\x21\x11\x00\x0c" + b"\x00" * 12, "not a PROXY"),
    (V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12, "unknown version"),
    (V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12, "unknown version"),
    (V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12, "unknown command"),
    (v2(family=4, payload=b"\x00" * 12), "unknown address family"),
    (v2(transport=3, payload=b"\x00" * 12), "unknown address family or transport"),
    (v2(transport=2, payload=b"\x00" * 12), "datagram"),
    (v2(payload=b"\x00" * 11), "shorter than its family"),
    (v2(family=2, payload=b"\x00" * 35), "shorter than its family"),
])
def test_v2_malformed_headers_are_refused(header, why):
    with pytest.raises(ProxyHeaderError, match=why):
        read_and_parse(header + CLIENT_DATA)


def test_v2_length_is_capped_before_anything_is_buffered():
    assert parse(v2_inet(tlvs=tlv(0xEE, b"x" * (V2_MAX_PAYLOAD - 12 - 3)))).length == 16 + V2_MAX_PAYLOAD
    oversized = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX_PAYLOAD + 1)
    with pytest.raises(ProxyHeaderError, match="at most 4096"):
        wanted(oversized)
    with pytest.raises(ProxyHeaderError, match="at most 4096"):
        wanted(V2_SIGNATURE + b"\x21\x11\xff\xff")


@pytest.mark.parametrize("chunk_limit", [None, 1, 5])
def test_v2_reading_stops_at_the_end_of_the_header(chunk_limit):
    header = v2_inet(tlvs=tlv(0x05, b"id"))
    assert read_like_the_listener(header + CLIENT_DATA, chunk_limit) == (header, CLIENT_DATA)
    short = v2(command=0)  # 16 octets: the first read (15) must not swallow the client's first
    assert read_like_the_listener(short + CLIENT_DATA, chunk_limit) == (short, CLIENT_DATA)


def test_data_that_is_no_header_is_refused_at_once():
    """A client that speaks TLS or IMAP straight to a PROXY listener is refused on its first octets."""
    for data in (CLIENT_DATA[:1], b"a001 LOGIN", b"\r\n\r\nX"):
        with pytest.raises(ProxyHeaderError, match="not a PROXY"):
            wanted(data)
    assert wanted(b"") == 15 and wanted(b"PRO") == 12 and wanted(V2_SIGNATURE[:5]) == 10


def test_parse_wants_one_whole_header():
    with pytest.raises(ProxyHeaderError, match="incomplete"):
        parse(b"PROXY TCP4 192.0.2.7 10.0.0.5 51234 993\r")
    with pytest.raises(ProxyHeaderError, match="more octets"):
        parse(v2_inet() + b"x")


# -- trusted networks and config ------------------------------------------------------------
def test_trusted_networks_match_ipv4_ipv6_and_mapped_addresses():
    nets = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"),
            ipaddress.ip_network("2001:db8::/32"))
    assert is_trusted("10.1.2.3", nets) and is_trusted("127.0.0.1", nets) and is_trusted("2001:db8::5", nets)
    assert is_trusted("::ffff:10.9.9.9", nets)  # an IPv4 peer on a dual-stack listener
    assert not is_trusted("127.0.0.2", nets) and not is_trusted("192.0.2.1", nets)
    assert not is_trusted("2001:db9::1", nets) and not is_trusted("?", nets)


def test_proxy_protocol_config(tmp_path):
    cfg = parse_config(minimal(), tmp_path / "gw.toml")
    assert cfg.imap.proxy_protocol is None  # off by default
    cfg = parse_config(minimal(imap__proxy_protocol=True, imap__proxy_trusted=["10.0.0.0/8", "::1/128"],
                               smtp={"listen_tls": ["127.0.0.1:465"], "proxy_protocol": True,
                                     "proxy_trusted": ["127.0.0.1/32"], "proxy_timeout": 2}),
                       tmp_path / "gw.toml")
    assert cfg.imap.proxy_protocol.trusted == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert cfg.imap.proxy_protocol.timeout_s == 5.0
    assert cfg.smtp.proxy_protocol.trusted == (ipaddress.ip_network("127.0.0.1/32"),)
    assert cfg.smtp.proxy_protocol.timeout_s == 2.0


@pytest.mark.parametrize("override, key, message", [
    ({"imap__proxy_protocol": True}, "imap.proxy_trusted", "required with proxy_protocol"),
    ({"imap__proxy_protocol": True, "imap__proxy_trusted": ["10.0.0.1/8"]}, "imap.proxy_trusted", "host bits"),
    ({"imap__proxy_protocol": True, "imap__proxy_trusted": ["haproxy.lan"]}, "imap.proxy_trusted", "not a network"),
    ({"imap__proxy_protocol": "yes"}, "imap.proxy_protocol", "true or false"),
    ({"imap__proxy_timeout": 0}, "imap.proxy_timeout", "at least"),
    ({"smtp": {"listen_tls": ["127.0.0.1:465"], "proxy_protocol": True}}, "smtp.proxy_trusted", "required"),
])
def test_proxy_protocol_config_errors_name_the_key(tmp_path, override, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(minimal(**override), tmp_path / "gw.toml")
    assert info.value.key == key


def test_ipv4_mapped_addresses_are_written_as_ipv4():
    """A balancer listening on ``:::993 v4v6`` reports IPv4 clients as ``::ffff:a.b.c.d``: the
    audit trail and the brute-force counters must see the one spelling an auditor searches for."""
    v1 = parse(b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:10.0.0.5 51234 993\r\n")
    assert (v1.source, v1.destination) == (("192.0.2.7", 51234), ("10.0.0.5", 993))
    v2_header = parse(v2_inet6(src="::ffff:192.0.2.7", dst="::ffff:10.0.0.5", sport=51234, dport=993))
    assert (v2_header.source, v2_header.destination) == (("192.0.2.7", 51234), ("10.0.0.5", 993))
    assert parse(v2_inet6()).source == ("2001:db8::7", 40000)  # a real IPv6 address stays as it is
