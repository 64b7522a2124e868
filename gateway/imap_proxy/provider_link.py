"""The provider connection as an :class:`asyncio.BufferedProtocol`: no StreamReader on the hot path.

Why: a bulk FETCH is almost all provider → client bytes.  Through a StreamReader each chunk was
decrypted into a new ``bytes``, copied into the reader's buffer, copied out again by ``read()``
and handed over with a task wake-up.  With a buffered protocol, asyncio's SSL layer decrypts
straight into the buffer :meth:`ProviderLink.get_buffer` returns (CPython ``sslproto``
``_do_read__buffered``), and the consumer runs synchronously in :meth:`buffer_updated`: one copy
out of that buffer, no task per chunk.

The link has two phases, so no byte can fall between them:

* **login** (:mod:`gateway.imap_proxy.upstream`): bytes are kept here and handed out by
  ``await read()``, like a StreamReader; the gateway's own dialogue needs no speed.
* **relay** (:mod:`gateway.imap_proxy.server`): :meth:`attach` first delivers what the login
  phase left (the framer's leftover, then the bytes kept here), then every chunk as it comes,
  and ``b""`` once at the end of the stream.  The consumer applies back-pressure with
  :meth:`pause_reading` / :meth:`resume_reading`.

Toward the provider it is a small StreamWriter look-alike (``write``, ``drain``, ``close``,
``is_closing``, ``wait_closed``, ``transport``), and :meth:`start_tls` upgrades it in place.
"""

from __future__ import annotations

import asyncio
from typing import Callable

__all__ = ["ProviderLink"]

_BUFFER_SIZE = 256 * 1024  # asyncio's SSL layer reads at most this much per recv, too
_LOGIN_PENDING_MAX = 256 * 1024  # in the login phase, stop reading above this many unread octets


class ProviderLink(asyncio.BufferedProtocol):
    """One provider connection: the protocol asyncio calls, and the object the gateway holds."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray(_BUFFER_SIZE)  # reused: asyncio decrypts into it
        self._view = memoryview(self._buf)
        self._on_data: Callable[[bytes], None] | None = None  # set by attach(): the relay phase
        self._pending = bytearray()  # login phase: received, not yet read()
        self._read_waiter: asyncio.Future | None = None
        self._eof = False
        self.exception: BaseException | None = None  # why the connection was lost, if not cleanly
        self._lost = False
        self._paused_by_consumer = False
        self._paused_by_us = False  # login phase: too much unread
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future] = []
        self._closed = asyncio.get_running_loop().create_future()

    # -- asyncio protocol callbacks ----------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self._on_data is not None:
            self._on_data(bytes(self._view[:nbytes]))  # the one copy: the buffer is reused
            return
        self._pending += self._view[:nbytes]
        if len(self._pending) > _LOGIN_PENDING_MAX and not self._paused_by_us:
            self._paused_by_us = True
            self._set_reading()
        self._wake_reader()

    def eof_received(self) -> None:
        self._end()  # returning None: a plain transport closes itself; IMAP has no half-close

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        if exc is not None and self.exception is None:
            self.exception = exc
        self._end()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # -- login phase ---------------------------------------------------------------------------
    async def read(self) -> bytes:
        """Bytes received so far (waiting for some); ``b""`` at the end of the stream."""
        while not self._pending:
            if self.exception is not None:
                raise self.exception
            if self._eof:
                return b""
            self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        data = bytes(self._pending)
        self._pending.clear()
        if self._paused_by_us:
            self._paused_by_us = False
            self._set_reading()
        return data

    @property
    def buffered(self) -> int:
        """Octets received and not yet read (STARTTLS: these came in clear)."""
        return len(self._pending)

    async def start_tls(self, ctx, *, server_hostname: str) -> None:
        """Upgrade to TLS in place; later bytes are decrypted into this link's buffer."""
        loop = asyncio.get_running_loop()
        self.transport = await loop.start_tls(self.transport, self, ctx, server_hostname=server_hostname)
        self._write_paused = False  # the TLS transport has its own flow control

    # -- relay phase ---------------------------------------------------------------------------
    def attach(self, on_data: Callable[[bytes], None], first: bytes = b"") -> None:
        """From now on, hand every chunk to ``on_data`` synchronously, starting with ``first``
        (what the login dialogue's framer held) and what arrived since; ``b""`` at the end."""
        data = first + self._pending if self._pending else first
        self._pending = bytearray()
        self._on_data = on_data
        if self._paused_by_us:
            self._paused_by_us = False
            self._set_reading()
        if data:
            on_data(data)
        if self._eof:
            on_data(b"")

    def pause_reading(self) -> None:
        """Back-pressure from the consumer: stop reading the provider until resumed."""
        if not self._paused_by_consumer:
            self._paused_by_consumer = True
            self._set_reading()

    def resume_reading(self) -> None:
        if self._paused_by_consumer:
            self._paused_by_consumer = False
            self._set_reading()

    # -- writing to the provider (StreamWriter look-alike) ------------------------------------
    def write(self, data: bytes) -> None:
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the provider is not taking our writes; ConnectionResetError once lost."""
        while self._write_paused and not self._lost:
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self._lost:
            raise ConnectionResetError("connection to the provider lost")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # flushes, then TLS close_notify

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    # -- internals -----------------------------------------------------------------------------
    def _end(self) -> None:
        if self._eof:
            return
        self._eof = True
        if self._on_data is not None:
            self._on_data(b"")
        else:
            self._wake_reader()

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _set_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._paused_by_consumer or self._paused_by_us:
            transport.pause_reading()
        else:
            transport.resume_reading()
