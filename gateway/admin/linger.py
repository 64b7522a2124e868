"""Ending a connection after its last answer without losing that answer.

Shared by the admin channel and the HTTP endpoint: closing a socket while the client's input is
still unread makes the kernel reset the connection, and a reset can make the client discard an
answer it has not read yet.  So the answer is flushed, the end of the stream sent, and whatever
the client still sends read and dropped for a moment before the caller closes.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["LINGER_S", "finish_answer"]

LINGER_S = 1.0  # how long input is still read (and dropped) after the last answer


async def finish_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        linger_s: float = LINGER_S) -> None:
    """Flush what was written, send the end of the stream, then read and drop the client's input
    until it closes or ``linger_s`` passes.  Never raises for a client that went away."""
    with contextlib.suppress(ConnectionError, OSError, TimeoutError, RuntimeError):
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(linger_s):
            while await reader.read(65536):
                pass
