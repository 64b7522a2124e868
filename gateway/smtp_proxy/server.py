"""The submission listeners: 465 with implicit TLS, 587 with STARTTLS required before AUTH.

aiosmtpd's :class:`~aiosmtpd.smtp.SMTP` protocol runs on the gateway's own event loop (never its
``Controller`` thread, which is for tests) with :class:`~gateway.smtp_proxy.handler.SubmissionHandler`
deciding.  Nothing is accepted without authentication, and AUTH is refused before TLS: on 465
the connection is TLS from the first octet, on 587 aiosmtpd refuses every command but EHLO,
NOOP, QUIT and STARTTLS until STARTTLS (``require_starttls``).
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import SMTP

from gateway.config import ListenerConfig
from gateway.imap_proxy.server import server_tls_context
from gateway.smtp_proxy.handler import SubmissionHandler

__all__ = ["SmtpFront"]

log = logging.getLogger("pecgw.smtp")

IDENT = "PEC Gateway ESMTP"


class _SubmissionSMTP(SMTP):
    """aiosmtpd's protocol, telling the handler when a client connection ends (to close the
    provider connection that belongs to it) and keeping the live connections known."""

    def __init__(self, handler: SubmissionHandler, live: set, *, implicit_tls: bool, endings: set, **kwargs) -> None:
        super().__init__(handler, auth_require_tls=True, **kwargs)
        if implicit_tls:
            # aiosmtpd counts only STARTTLS as TLS; on the implicit-TLS port every octet is
            # already encrypted, so AUTH is allowed at once (the requirement holds, not its check)
            self._auth_require_tls = False
        self._live, self._endings = live, endings

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._live.add(self)

    def eof_received(self):
        """The client closed its side (or vanished without QUIT): the provider connection goes
        now, not after the idle timeout (a provider caps the sessions a mailbox may hold)."""
        result = super().eof_received()
        if self.session is not None:
            self._spawn_closed(self.session)
        return result

    def _spawn_closed(self, session) -> None:
        task = self.loop.create_task(self.event_handler.closed(session))
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)

    def connection_lost(self, error) -> None:
        session = self.session
        super().connection_lost(error)
        self._live.discard(self)
        if session is not None:  # a send still being relayed finishes first (see the handler)
            self._spawn_closed(session)


class SmtpFront:
    """All submission listeners of the gateway (none without an ``[smtp]`` table)."""

    def __init__(self, services) -> None:
        self.services = services
        self.handler = SubmissionHandler(services)
        self._servers: list[tuple[ListenerConfig, asyncio.base_events.Server]] = []
        self.connections: set[_SubmissionSMTP] = set()
        self._endings: set[asyncio.Task] = set()  # connections winding down (a send finishing)

    async def start(self) -> None:
        cfg = self.services.config.smtp
        if cfg is None:
            return
        ctx = server_tls_context(cfg.cert_file, cfg.key_file, cfg.tls_min_version)
        loop = asyncio.get_running_loop()
        for listener in cfg.listeners:
            starttls = listener.tls == "starttls"

            def factory(starttls=starttls):
                return _SubmissionSMTP(
                    self.handler, self.connections, implicit_tls=not starttls, endings=self._endings,
                    hostname=None, ident=IDENT,
                    data_size_limit=cfg.max_message_bytes, tls_context=ctx if starttls else None,
                    require_starttls=starttls, auth_required=True, timeout=cfg.timeout_s, loop=loop)

            server = await loop.create_server(factory, listener.host, listener.port,
                                              ssl=None if starttls else ctx,
                                              ssl_handshake_timeout=None if starttls else 15)
            self._servers.append((listener, server))
            log.info("SMTP submission listening on %s:%d (%s)", listener.host,
                     server.sockets[0].getsockname()[1], listener.tls)

    def bound_ports(self) -> dict[str, int]:
        """Bound port per listener kind, first listener of each kind (useful with port 0)."""
        out: dict[str, int] = {}
        for listener, server in self._servers:
            out.setdefault(listener.tls, server.sockets[0].getsockname()[1])
        return out

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop listening and close every connection; a send being relayed is let finish (its
        record and audit rows are written before the stores close)."""
        for _, server in self._servers:
            server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)  # let connection_lost run
        if self._endings:
            await asyncio.wait(list(self._endings), timeout=grace_s)
        for _, server in self._servers:
            await server.wait_closed()
        self._servers.clear()
