"""The PROXY protocol header, versions 1 and 2: a strict parser fed bytes, with no I/O.

A load balancer in TCP mode (HAProxy ``send-proxy`` / ``send-proxy-v2``) opens its connection to
the gateway with one header saying who the client really is; without it every audit row, the
brute-force counters and ``pecgw sessions`` would show the balancer's address.  The spec is
https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt.  Who may send a header at all is
not decided here but by the listener (:mod:`gateway.proxy_listener`, ``proxy_trusted``).

The reader must not take one octet of the client's own data along with the header: on an
implicit-TLS port the client's TLS handshake follows at once and must reach the TLS layer
whole.  So :func:`wanted` says how many more octets may be read *without going past the end of
the header*, and :func:`parse` reads one complete header.  Anything else is refused
(:class:`ProxyHeaderError`): a v1 line longer than 107 octets or not ending in CRLF, a v2 block
longer than :data:`V2_MAX_PAYLOAD`, unknown versions or commands, datagram transports, address
blocks too short for their family.  The LOCAL command (the balancer's own health checks) and
the UNKNOWN / UNSPEC / UNIX forms carry no client address: :attr:`ProxyHeader.source` is None and
the connection's own peer address stands.  v2 TLVs are checked for framing and skipped.

No well-kept library fitted: aiosmtpd's and PyPI ``proxy-protocol``'s readers work on a
StreamReader (which reads ahead, past the header), read an over-long v1 line to its end before
refusing it, and have no length cap for v2.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = ["ProxyHeader", "ProxyHeaderError", "V1_MAX", "V2_MAX_PAYLOAD", "V2_SIGNATURE", "parse", "wanted"]

V1_PREFIX = b"PROXY "
#: The longest v1 line, CRLF included (spec 2.1: "PROXY UNKNOWN" with two IPv6 addresses).
V1_MAX = 107
#: The shortest header of either version ("PROXY UNKNOWN\r\n"): always safe to read first.
_MIN_HEADER = 15
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16  # signature, version/command, family/transport, length
#: Cap on the v2 address block + TLVs.  The field allows 65535; HAProxy's TLVs (unique id, SSL,
#: authority) stay well under 1 KiB, and nobody gets to make the gateway buffer 64 KiB per accept.
V2_MAX_PAYLOAD = 4096

_LOCAL, _PROXY = 0x0, 0x1
_UNSPEC, _INET, _INET6, _UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1
_ADDRESS_SIZE = {_INET: 12, _INET6: 36, _UNIX: 216}


class ProxyHeaderError(ValueError):
    """The octets are not a valid PROXY header (the message says what is wrong, never echoes them)."""


@dataclass(frozen=True)
class ProxyHeader:
    """One parsed header.  ``source`` / ``destination`` are ``(ip, port)``, or None when the header
    names no IP endpoints (LOCAL, UNKNOWN, UNSPEC, UNIX): then the connection's own addresses count."""

    version: int
    local: bool  # the v2 LOCAL command: the proxy speaking for itself (health checks)
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int  # octets the header took


def wanted(data: bytes) -> int:
    """How many more octets to read before the header is complete: 0 when ``data`` is one whole
    header.  Never more than the header still lacks, so reading exactly this many never takes the
    client's own first bytes.  Raises :class:`ProxyHeaderError` as soon as ``data`` cannot begin a
    valid header."""
    n = len(data)
    if data.startswith(V1_PREFIX):
        return _v1_wanted(data)
    if data.startswith(V2_SIGNATURE):
        return _v2_wanted(data)
    if not (V1_PREFIX.startswith(data) or V2_SIGNATURE.startswith(data)):
        raise ProxyHeaderError("not a PROXY protocol header")
    return _MIN_HEADER - n  # a prefix of either signature is shorter than that


def _v1_wanted(data: bytes) -> int:
    n = len(data)
    end = data.find(b"\n")
    if end != -1:
        if end != n - 1 or data[-2:] != b"\r\n":
            raise ProxyHeaderError("PROXY v1 line does not end with CRLF")
        return 0
    if any(not 0x20 <= c <= 0x7E for c in data[:-1]) or not (0x20 <= data[-1] <= 0x7E or data[-1] == 0x0D):
        raise ProxyHeaderError("PROXY v1 line has a character other than printable ASCII")
    need = 1 if data.endswith(b"\r") else 2  # CRLF can end the line no sooner
    if n < _MIN_HEADER:
        need = max(need, _MIN_HEADER - n)
    if n + need > V1_MAX:
        raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX} octets")
    return need


def _v2_wanted(data: bytes) -> int:
    n = len(data)
    if n >= 13:
        if data[12] >> 4 != 2:
            raise ProxyHeaderError("PROXY v2 header with an unknown version")
        if data[12] & 0x0F not in (_LOCAL, _PROXY):
            raise ProxyHeaderError("PROXY v2 header with an unknown command")
    if n < _V2_FIXED:
        return _V2_FIXED - n
    (length,) = struct.unpack_from("!H", data, 14)
    if length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError(f"PROXY v2 header of {length} octets after the first 16 (at most {V2_MAX_PAYLOAD})")
    total = _V2_FIXED + length
    if n > total:
        raise ProxyHeaderError("more octets than the PROXY v2 header holds")
    return total - n


def parse(data: bytes) -> ProxyHeader:
    """Parse exactly one complete header (``wanted(data) == 0``)."""
    if wanted(data):
        raise ProxyHeaderError("incomplete PROXY header")
    return _parse_v1(data) if data.startswith(V1_PREFIX) else _parse_v2(data)


def _parse_v1(data: bytes) -> ProxyHeader:
    fields = data[len(V1_PREFIX):-2].decode("ascii").split(" ")
    if fields[0] == "UNKNOWN":  # spec 2.1: the rest of the line is ignored
        return ProxyHeader(1, False, None, None, len(data))
    if fields[0] not in ("TCP4", "TCP6") or len(fields) != 5:
        raise ProxyHeaderError("PROXY v1 line is not 'TCP4|TCP6 source destination sport dport'")
    version = 4 if fields[0] == "TCP4" else 6
    source = (_v1_address(fields[1], version), _v1_port(fields[3]))
    destination = (_v1_address(fields[2], version), _v1_port(fields[4]))
    return ProxyHeader(1, False, source, destination, len(data))


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError("PROXY v1 line with an invalid address") from None
    if address.version != version or "%" in text:
        raise ProxyHeaderError(f"PROXY v1 line with an address that is not plain IPv{version}")
    return _plain(address)


def _plain(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address as the audit trail writes it: an IPv4-mapped IPv6 one (``::ffff:1.2.3.4``, what a
    balancer listening on ``:::993 v4v6`` sends) as its IPv4 form, so searches and the
    brute-force counters see one spelling per client."""
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped if mapped is not None else address)


def _v1_port(text: str) -> int:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyHeaderError("PROXY v1 line with an invalid port")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader:
    command, family, transport = data[12] & 0x0F, data[13] >> 4, data[13] & 0x0F
    payload = data[_V2_FIXED:]
    if command == _LOCAL:  # spec 2.2: the address block, whatever it holds, is ignored
        return ProxyHeader(2, True, None, None, len(data))
    if family not in (_UNSPEC, _INET, _INET6, _UNIX) or transport not in (0x0, _STREAM, 0x2):
        raise ProxyHeaderError("PROXY v2 header with an unknown address family or transport")
    if transport == 0x2:
        raise ProxyHeaderError("PROXY v2 header for a datagram transport on a stream listener")
    if family == _UNSPEC:  # spec 2.2: accepted, its block ignored; the real endpoints count
        return ProxyHeader(2, False, None, None, len(data))
    size = _ADDRESS_SIZE[family]
    if len(payload) < size:
        raise ProxyHeaderError("PROXY v2 address block shorter than its family needs")
    _check_tlvs(payload[size:])
    if family == _INET:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", payload)
    elif family == _INET6:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", payload)
    else:  # a unix socket: no IP endpoints to take
        return ProxyHeader(2, False, None, None, len(data))
    source = (_plain(ipaddress.ip_address(src)), sport)
    destination = (_plain(ipaddress.ip_address(dst)), dport)
    return ProxyHeader(2, False, source, destination, len(data))


def _check_tlvs(tlvs: bytes) -> None:
    """TLVs are skipped, but they must tile the rest of the block exactly."""
    i = 0
    while i < len(tlvs):
        if len(tlvs) - i < 3:
            raise ProxyHeaderError("PROXY v2 TLV truncated")
        (length,) = struct.unpack_from("!H", tlvs, i + 1)
        i += 3 + length
    if i != len(tlvs):
        raise ProxyHeaderError("PROXY v2 TLV longer than the header")
