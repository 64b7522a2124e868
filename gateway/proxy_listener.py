"""Listeners behind a load balancer: the PROXY header first, then TLS, then IMAP or SMTP.

With ``proxy_protocol = true`` a listener group (``[imap]``, ``[smtp]``) accepts connections
only from ``proxy_trusted``; anyone else is refused at once, before a byte is read — a header
from an untrusted peer is never believed.  A trusted peer must send a complete, valid PROXY v1
or v2 header (:mod:`gateway.proxy_protocol`) within ``proxy_timeout``, or it is refused too.
The client address the header names is what the session then uses everywhere (audit rows, the
brute-force counters, ``pecgw sessions``); a LOCAL header (the balancer's health check) keeps
the balancer's own address.

Why a protocol of its own rather than a StreamReader: the header must be read to its last octet
and not one further.  On an implicit-TLS port the client's TLS handshake follows the header in
the same stream, and whatever a reader took ahead would be lost to the TLS layer.  So the
listener is plain TCP, the header is read with an :class:`asyncio.BufferedProtocol` whose buffer
is never larger than the header still lacks, and only then does TLS start on the connection
(:meth:`asyncio.loop.start_tls`) and the real protocol take over.  aiosmtpd's own PROXY support
(``proxy_protocol_timeout``) reads the header from its stream after a TLS server has already
done the handshake, so it cannot serve port 465, and has no trusted-network check: it is not used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable

from gateway.config import ProxyProtocolConfig
from gateway.proxy_protocol import ProxyHeaderError, parse, wanted

__all__ = ["Peer", "is_trusted", "serve", "stream_protocol"]

log = logging.getLogger("pecgw.proxy")

Peer = tuple[str, int]
#: Makes the protocol that serves one connection, given the client's address.
InnerFactory = Callable[[Peer], asyncio.BaseProtocol]

TLS_HANDSHAKE_TIMEOUT_S = 15.0  # as for the listeners without PROXY protocol
_STREAM_LIMIT = 2**16  # asyncio.start_server's
_handovers: set[asyncio.Task] = set()  # TLS handshakes in progress, kept referenced


def is_trusted(host: str, networks) -> bool:
    """Whether ``host`` (an IP address as text) is in one of ``networks``; an IPv4 client on a
    dual-stack listener (``::ffff:10.0.0.5``) is matched as IPv4."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


async def serve(host: str, port: int, inner: InnerFactory, *, settings: ProxyProtocolConfig,
                ssl_context: ssl.SSLContext | None, what: str) -> asyncio.Server:
    """A plain TCP listener whose connections start with a PROXY header; ``inner(client)`` then
    serves each one (over TLS when ``ssl_context`` is given).  ``what`` names it in the log."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Gate(settings, inner, ssl_context, what), host, port)


def stream_protocol(client_connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter, Peer],
                                               Awaitable[None]]) -> InnerFactory:
    """``inner`` for a stream handler, as :func:`asyncio.start_server` would run it, plus the
    client's address from the header."""
    def factory(client: Peer) -> asyncio.StreamReaderProtocol:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_STREAM_LIMIT, loop=loop)
        return asyncio.StreamReaderProtocol(reader, lambda r, w: client_connected(r, w, client), loop=loop)
    return factory


class _Gate(asyncio.BufferedProtocol):
    """One accepted connection until its header is read; then the inner protocol's."""

    def __init__(self, settings: ProxyProtocolConfig, inner: InnerFactory, ssl_context, what: str) -> None:
        self.settings, self.inner, self.ssl_context, self.what = settings, inner, ssl_context, what
        self.transport: asyncio.Transport | None = None
        self._peer: Peer = ("?", 0)
        self._data = bytearray()
        self._want = wanted(b"")  # octets the header still lacks, at the least
        self._chunk = bytearray()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("?", 0)
        self._peer = (str(peer[0]), int(peer[1]))
        if not is_trusted(self._peer[0], self.settings.trusted):
            self._refuse("not from a trusted proxy (proxy_trusted)")
            return
        self._timer = asyncio.get_running_loop().call_later(self.settings.timeout_s, self._timed_out)

    def get_buffer(self, sizehint: int) -> bytearray:
        self._chunk = bytearray(self._want)  # never more: the client's own bytes stay in the socket
        return self._chunk

    def buffer_updated(self, nbytes: int) -> None:
        self._data += self._chunk[:nbytes]
        try:
            self._want = wanted(self._data)
            if self._want:
                return
            header = parse(bytes(self._data))
        except ProxyHeaderError as exc:
            self._refuse(f"invalid PROXY header: {exc}")
            return
        self._cancel_timer()
        client = header.source or self._peer  # LOCAL / UNKNOWN: the proxy speaks for itself
        log.debug("%s: connection from %s:%d through proxy %s (PROXY v%d%s)", self.what, client[0], client[1],
                  self._peer[0], header.version, ", LOCAL" if header.local else "")
        self.transport.pause_reading()
        protocol = self.inner(client)
        if self.ssl_context is None:
            self.transport.set_protocol(protocol)
            protocol.connection_made(self.transport)
            self.transport.resume_reading()
        else:
            task = asyncio.get_running_loop().create_task(self._start_tls(protocol, client))
            _handovers.add(task)
            task.add_done_callback(_handovers.discard)

    async def _start_tls(self, protocol: asyncio.BaseProtocol, client: Peer) -> None:
        """TLS on the connection, then hand it over: what arrived meanwhile is passed on."""
        if self.transport.is_closing():  # gone while this task was scheduled
            return
        holding = _Holding()
        try:
            tls = await asyncio.get_running_loop().start_tls(
                self.transport, holding, self.ssl_context, server_side=True,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - ssl.SSLError, TimeoutError, a reset: this connection only
            log.info("%s: TLS handshake with %s failed: %s", self.what, client[0], type(exc).__name__)
            self.transport.close()
            return
        if holding.lost:  # gone right after the handshake: no session to start
            return
        tls.set_protocol(protocol)
        protocol.connection_made(tls)
        for data in holding.data:
            protocol.data_received(data)
        if holding.eof:
            protocol.eof_received()

    def eof_received(self) -> bool:
        # a bare connect-and-close is a TCP health check: not worth a line at INFO
        self._refuse("closed before a complete PROXY header", level=logging.INFO if self._data else logging.DEBUG)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()

    def _timed_out(self) -> None:
        self._timer = None
        self._refuse(f"no complete PROXY header within {self.settings.timeout_s:g} s")

    def _refuse(self, why: str, level: int = logging.WARNING) -> None:
        log.log(level, "%s: connection from %s refused: %s", self.what, self._peer[0], why)
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Holding(asyncio.Protocol):
    """The TLS connection's protocol between the end of the handshake and the hand-over: a
    client that pipelines, or leaves, in that moment loses nothing and leaks nothing."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.data.append(bytes(data))

    def eof_received(self) -> None:
        self.eof = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
