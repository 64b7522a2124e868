"""The admin HTTP endpoint: ``GET`` (and ``HEAD``) on a few fixed paths, for Prometheus and probes.

What: a small asyncio HTTP/1.1 server whose routes are ``path -> async () -> (status, content
type, body)`` — ``/metrics`` (:mod:`gateway.metrics`), ``/healthz`` and ``/readyz``
(:mod:`gateway.health`) are added by the :class:`~gateway.app.Gateway`.  One request per
connection, always answered with ``Connection: close``: a scraper or a probe opens one
connection per request anyway, and nothing has to be kept between requests.

Why so small: it listens on loopback by default (``[admin] http_listen``) and serves only
read-only answers, but any local process (or, when IT opens it up, anything on the network path)
can reach it, so nothing a client does may cost the gateway much.  HTTP parsing is left to
`h11 <https://h11.readthedocs.io>`_ (a pure-Python HTTP/1.1 state machine, the one under httpx
and uvicorn) rather than written by hand; around it:

* a request line and headers over :data:`MAX_REQUEST_BYTES` are answered ``431`` and closed;
  anything that is not HTTP/1.x is answered ``400`` and closed;
* the whole request must arrive within :data:`READ_TIMEOUT_S` of the connection (a client that
  sends nothing, or one byte a second, is answered ``408`` and closed), and a client that does
  not read the answer is cut off after :data:`WRITE_TIMEOUT_S`;
* at most :data:`MAX_CONNECTIONS` connections at once; more are answered ``503`` and closed;
* methods other than GET and HEAD get ``405`` with ``Allow: GET, HEAD``, unknown paths ``404``;
  a request body is never read; the query string is ignored;
* a route that raises is answered ``500`` (the exception is logged, never sent), one that takes
  longer than :data:`ROUTE_TIMEOUT_S` ``503``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

import h11

from gateway.admin.linger import LINGER_S, finish_answer

__all__ = ["HttpEndpoint", "Route", "MAX_CONNECTIONS", "MAX_REQUEST_BYTES", "READ_TIMEOUT_S", "ROUTE_TIMEOUT_S",
           "WRITE_TIMEOUT_S"]

log = logging.getLogger("pecgw.http")

Route = Callable[[], Awaitable[tuple[int, str, bytes]]]  # (status, content type, body)

MAX_CONNECTIONS = 32  # a scraper and a few probes need a handful
MAX_REQUEST_BYTES = 8 * 1024  # request line and headers; a GET has no more
READ_TIMEOUT_S = 5.0  # from accepting the connection to the end of the request
WRITE_TIMEOUT_S = 10.0  # for the client to take the answer
ROUTE_TIMEOUT_S = 30.0  # for a route to produce its answer (/readyz asks other servers)
_READ_SIZE = 4096
SERVER_HEADER = b"pecgw"


class HttpEndpoint:
    """Serves ``routes`` on ``host:port`` between :meth:`start` and :meth:`stop`.

    ``routes`` is read at each request, so routes added after construction (by another part of
    the gateway) are served too.  The limits are parameters so tests can make them short.
    """

    def __init__(self, host: str, port: int, routes: dict[str, Route], *, max_connections: int = MAX_CONNECTIONS,
                 max_request_bytes: int = MAX_REQUEST_BYTES, read_timeout_s: float = READ_TIMEOUT_S,
                 write_timeout_s: float = WRITE_TIMEOUT_S, route_timeout_s: float = ROUTE_TIMEOUT_S) -> None:
        self.host, self.port, self.routes = host, port, routes
        self.max_connections, self.max_request_bytes = max_connections, max_request_bytes
        self.read_timeout_s, self.write_timeout_s, self.route_timeout_s = read_timeout_s, write_timeout_s, route_timeout_s
        self._server: asyncio.base_events.Server | None = None
        self._open: set[asyncio.Task] = set()  # connections being served (the cap counts these)
        self._tasks: set[asyncio.Task] = set()  # every connection, refused ones too (stop() ends them)
        self._full_logged = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        log.info("HTTP endpoint on http://%s:%d/ (%s)", self.host, self.bound_port(), ", ".join(sorted(self.routes)))

    def bound_port(self) -> int | None:
        """The port listened on (the real one when configured as 0); None when not listening."""
        if self._server is None or not self._server.sockets:
            return None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and end the connections still open (each is at most one short request)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    # ------------------------------------------------------------------ one connection
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_request_bytes)
        try:
            if len(self._open) >= self.max_connections:
                if not self._full_logged:
                    log.warning("HTTP endpoint: %d connections open, refusing more (logged once until it "
                                "recovers)", len(self._open))
                    self._full_logged = True
                await self._send(conn, writer, _Answer(503, b"too many connections\n"))
                return
            self._full_logged = False
            self._open.add(task)
            answer = await self._handle(conn, reader)
            if answer is not None:
                await self._send(conn, writer, answer)
        except (ConnectionError, TimeoutError, OSError):
            pass  # the client went away or would not read: nothing to tell anyone
        except Exception:
            log.exception("HTTP endpoint: internal error on a connection")
        finally:
            self._open.discard(task)
            await _close(reader, writer)
            self._tasks.discard(task)

    async def _handle(self, conn: h11.Connection, reader) -> _Answer | None:
        """Read one request and produce its answer; None when the client closed without one."""
        try:
            async with asyncio.timeout(self.read_timeout_s):
                request = await _read_request(conn, reader)
        except TimeoutError:
            return _Answer(408, b"request not received in time\n")
        except h11.RemoteProtocolError as exc:  # 400 for garbage, 431 for a head over the limit
            status = exc.error_status_hint
            return _Answer(status, f"{HTTPStatus(status).phrase.lower()}\n".encode())
        if request is None:  # closed without sending anything: nobody to answer
            return None
        if request.method == b"HEAD":  # GET's answer without the body
            return dataclasses.replace(await self._get(request), head=True)
        if request.method != b"GET":
            return _Answer(405, b"only GET and HEAD\n", headers=((b"Allow", b"GET, HEAD"),))
        return await self._get(request)

    async def _get(self, request: h11.Request) -> _Answer:
        path = request.target.split(b"?", 1)[0].decode("ascii", "replace")
        route = self.routes.get(path)
        if route is None:
            return _Answer(404, b"not found\n")
        try:
            async with asyncio.timeout(self.route_timeout_s):
                status, ctype, body = await route()
        except TimeoutError:
            log.warning("HTTP endpoint: %s did not answer within %.0f s", path, self.route_timeout_s)
            return _Answer(503, b"timed out\n")
        except Exception:
            log.exception("HTTP endpoint: %s failed", path)
            return _Answer(500, b"internal error\n")
        return _Answer(status, body, ctype)

    async def _send(self, conn: h11.Connection, writer, answer: _Answer) -> None:
        """Send the whole answer and flush it."""
        try:
            phrase = HTTPStatus(answer.status).phrase.encode()
        except ValueError:
            phrase = b""
        headers = [(b"Content-Type", answer.content_type.encode("latin-1")),
                   (b"Content-Length", b"%d" % len(answer.body)), (b"Connection", b"close"),
                   (b"Cache-Control", b"no-store"), (b"Server", SERVER_HEADER), *answer.headers]
        data = conn.send(h11.Response(status_code=answer.status, headers=headers, reason=phrase))
        if answer.body and not answer.head:
            data += conn.send(h11.Data(data=answer.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        writer.write(data)
        async with asyncio.timeout(self.write_timeout_s):
            await writer.drain()


@dataclass(frozen=True)
class _Answer:
    """One response; ``head``: to a HEAD request, so the headers say the body's length and it stays home."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[bytes, bytes], ...] = ()
    head: bool = False


async def _read_request(conn: h11.Connection, reader) -> h11.Request | None:
    """The request's line and headers (the body, if any, is never read); None at end of stream."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(_READ_SIZE)
            conn.receive_data(data)  # b"": end of stream, which h11 turns into an error or ConnectionClosed
            continue
        if isinstance(event, h11.Request):
            return event
        if isinstance(event, h11.ConnectionClosed):
            return None
        # nothing else can come before a Request on a server connection



async def _close(reader, writer) -> None:
    """Close after the answer without losing it (:func:`~gateway.admin.linger.finish_answer`),
    all within :data:`~gateway.admin.linger.LINGER_S`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + LINGER_S
    await finish_answer(reader, writer, LINGER_S)
    try:
        writer.close()
        async with asyncio.timeout_at(max(end, loop.time())):
            await writer.wait_closed()
    except (ConnectionError, TimeoutError, OSError, RuntimeError):
        pass
    finally:
        writer.transport.abort()  # no-op once closed; a client that lingers is not waited for
