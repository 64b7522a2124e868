"""Waiting for sessions to wind down when the gateway stops (SIGTERM), within the grace period.

The IMAP and SMTP fronts stop alike: they stop accepting, tell each idle session at once, let
the sessions with a command running finish it, and wait for them here — until every one has
ended, the grace period (``shutdown_grace``) is over, or the operator asked again (a second
SIGTERM or Ctrl-C sets ``hurry``).  What is still running then is ended by the front itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

__all__ = ["wait_within"]


async def wait_within(waitables: Iterable[asyncio.Future], timeout: float,
                      hurry: asyncio.Event | None = None) -> set[asyncio.Future]:
    """Wait until every future is done, ``timeout`` seconds pass, or ``hurry`` is set.

    Returns the futures not done yet; nothing is cancelled here.
    """
    pending = {w for w in waitables if not w.done()}
    if not pending or timeout <= 0 or (hurry is not None and hurry.is_set()):
        return pending
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    hurried = loop.create_task(hurry.wait()) if hurry is not None else None
    try:
        while pending and not (hurried is not None and hurried.done()):
            left = deadline - loop.time()
            if left <= 0:
                break
            watch = pending | {hurried} if hurried is not None else pending
            await asyncio.wait(watch, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            pending = {w for w in pending if not w.done()}
    finally:
        if hurried is not None and not hurried.done():
            hurried.cancel()
    return pending
