"""Closing a connection whose provider is still streaming: nothing is buffered, nothing is left open.

Driven like ``test_relay_hardening.py``: a real ``ProviderLink`` on the in-memory transport of
``fake_provider``, a fake client writer, no sockets.
"""

import asyncio
import contextlib
from types import SimpleNamespace

from tests.unit.fake_provider import provider_link, provider_sends
from tests.unit.test_relay_hardening import make_conn
from tests.unit.transcript import logged_in


def _attached_conn():
    conn, reader, writer = make_conn()
    conn.session = logged_in()
    link = provider_link()
    conn.up = SimpleNamespace(link=link)
    link.attach(conn._on_upstream_data)
    return conn, reader, writer, link


async def test_provider_bytes_are_not_buffered_once_the_connection_is_closing():
    """The old reader task stopped reading the provider as soon as ``_closed`` was set.  Now the
    link keeps calling ``_on_upstream_data`` while ``_close()`` waits (up to _CLOSE_GRACE_S) for the
    client's close, and before a spawned Close even starts; the session is in LOGOUT, so
    ``upstream_data`` appends every chunk to ``upstream_framer`` and never consumes it.  A provider
    streaming a FETCH at LAN speed (~350 MB/s in the commit's own benchmark) fills memory for the
    whole grace period.  The feed below honours ``pause_reading`` like a real transport would."""
    conn, reader, writer, link = _attached_conn()
    client_acked = asyncio.Event()

    async def wait_closed():  # a client slow to acknowledge TLS close_notify
        await client_acked.wait()

    writer.wait_closed = wait_closed
    stopping = asyncio.create_task(conn._perform(conn.session.shutting_down()))  # as ImapFront.stop()
    await asyncio.sleep(0)
    assert conn._closed
    provider_sends(link, b"* 1 FETCH (UID 1 BODY[] {50000000}\r\n")
    sent = 0
    chunk = b"x" * (256 * 1024)
    while link.transport.reading and sent < 20 * 1024 * 1024:
        provider_sends(link, chunk)
        sent += len(chunk)
    held = conn.session.upstream_framer.buffered
    client_acked.set()
    await asyncio.wait_for(stopping, 5)
    assert held < 2 * 1024 * 1024, f"{held} provider octets kept in memory after the session was closed"


async def test_run_does_not_return_while_a_spawned_close_is_still_closing_the_provider():
    """A Close produced by provider data is carried out in a task of ``_tasks``.  That task sets
    ``_closed`` first and then waits for the client's close; ``run()``'s own ``finally: await
    self._close()`` then returns at once, ``run()`` ends and the session leaves
    ``Services.sessions`` while the provider connection is still open.  Nothing awaits or cancels
    ``_tasks``: at shutdown ``ImapFront.stop()`` waits for ``run()`` only, so the provider link can
    be left unclosed (no close_notify, ResourceWarning) when the loop ends."""
    conn, reader, writer, link = _attached_conn()
    client_acked = asyncio.Event()

    async def wait_closed():
        await client_acked.wait()

    def close():  # a real client transport: closing it ends the client's stream
        writer.closed = True
        reader.feed_eof()

    writer.wait_closed, writer.close = wait_closed, close
    run = asyncio.create_task(conn.run())
    await asyncio.sleep(0.01)
    provider_sends(link, b"* BYE going away\r\n")
    provider_sends(link, b"")
    try:
        await asyncio.wait_for(asyncio.shield(run), 0.5)
        provider_closed_when_run_ended = link.transport.closed
    except TimeoutError:
        provider_closed_when_run_ended = True  # run() still waiting: also acceptable
    finally:
        client_acked.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run, 5)
        for t in list(conn._tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 5)
    assert provider_closed_when_run_ended, "run() returned before the provider connection was closed"
