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
from collections.abc import Callable

from aiosmtpd.smtp import SMTP

from gateway import proxy_listener
from gateway.config import ListenerConfig
from gateway.imap_proxy.server import server_tls_context
from gateway.shutdown import wait_within
from gateway.smtp_proxy.handler import SubmissionHandler

__all__ = ["SmtpFront"]

log = logging.getLogger("pecgw.smtp")

IDENT = "PEC Gateway ESMTP"

#: RFC 5321 §3.8 and RFC 3463 4.3.2 (system not accepting network messages): the gateway stops.
SHUTDOWN_REPLY = b"421 4.3.2 Service shutting down\r\n"
#: RFC 3463 4.4.2: no successful AUTH within [smtp] preauth_timeout of connecting.
PREAUTH_TIMEOUT_REPLY = b"421 4.4.2 Login timeout\r\n"
_CLOSE_GRACE_S = 1.0  # how long a client gets to acknowledge TLS close_notify
_PREAUTH_AUTH_WAIT_S = 30.0  # past the pre-login deadline, an AUTH being checked may take this long


class _SubmissionSMTP(SMTP):
    """aiosmtpd's protocol, telling the handler when a client connection ends (to close the
    provider connection that belongs to it) and keeping the live connections known."""

    def __init__(self, handler: SubmissionHandler, live: set, *, implicit_tls: bool, endings: set,
                 preauth_timeout: float | None = None, client: tuple[str, int] | None = None,
                 front_stopping: Callable[[], bool] = lambda: False, **kwargs) -> None:
        super().__init__(handler, auth_require_tls=True, **kwargs)
        self._client = client  # the address a PROXY header gave (gateway/proxy_listener.py)
        if implicit_tls:
            # aiosmtpd counts only STARTTLS as TLS; on the implicit-TLS port every octet is
            # already encrypted, so AUTH is allowed at once (the requirement holds, not its check)
            self._auth_require_tls = False
        self._live, self._endings = live, endings
        self.hooks_running = 0  # AUTH, MAIL, RCPT or DATA being decided (the handler counts them)
        self._in_data = False  # after 354: the message is being received
        self._preauth_extra = 0.0  # how long the pre-login deadline waited for an AUTH being checked
        self._stopping = False  # the gateway stops: 421 after the reply to the running command
        self._front_stopping = front_stopping
        self.gone: asyncio.Future = self.loop.create_future()  # done when the connection is lost
        self._preauth_timeout = preauth_timeout
        self._preauth_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self._client is not None:  # the session (new again after STARTTLS) audits the real client
            self.session.peer = self._client
        self._live.add(self)
        if self._front_stopping():  # accepted before the listeners closed (its TLS handshake ran on)
            self.say_goodbye()  # 421 as the greeting (RFC 5321 §3.1)
            return
        if self._preauth_timer is None and self._preauth_timeout:  # once: not again after STARTTLS
            self._preauth_timer = self.loop.call_later(self._preauth_timeout, self._preauth_expired)

    def _preauth_expired(self) -> None:
        """aiosmtpd's ``timeout`` starts again at every command: without this deadline a client
        that never logs in could keep its connection for ever by sending NOOPs (as for IMAP's
        ``preauth_timeout``, the time counts from the connection's start)."""
        if self.session is None or self.session.authenticated or self.transport is None:
            return
        if self.hooks_running and self._preauth_extra < _PREAUTH_AUTH_WAIT_S:  # an AUTH being checked
            self._preauth_extra += 1.0
            self._preauth_timer = self.loop.call_later(1.0, self._preauth_expired)
            return
        log.info("SMTP connection from %s: no login within %g s; closing", _peer(self), self._preauth_timeout)
        self.say_goodbye(PREAUTH_TIMEOUT_REPLY)

    @property
    def busy(self) -> bool:
        """A command is being decided or a message received: a graceful stop lets it finish.
        Bytes merely received are not enough (a client holding half a line would never be idle)."""
        return self.hooks_running > 0 or self._in_data

    async def push(self, status) -> None:
        await super().push(status)
        reply = status if isinstance(status, bytes) else status.encode("ascii", "replace")
        if reply[3:4] == b"-":
            return  # a line of a multi-line reply (EHLO): the reply goes on
        code = reply[:3]
        if code == b"354":
            self._in_data = True  # the message comes now; the DATA hook answers it
            return
        if code == b"334":
            return  # an AUTH challenge: the client answers next
        self._in_data = False
        if self._stopping and not self.busy and code not in (b"220", b"221"):  # not before TLS, nor after QUIT
            self.say_goodbye()

    def shut_down(self) -> None:
        """The gateway stops: an idle connection gets 421 now; one with a command running (an
        AUTH being checked, a message being received or relayed) once that command is answered."""
        if self.busy:
            self._stopping = True
        else:
            self.say_goodbye()

    def say_goodbye(self, reply: bytes = SHUTDOWN_REPLY) -> None:
        """421 and close (the client may reconnect to another instance, or later)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(reply)
            transport.close()
            # TLS waits for the client's close_notify, which a client may never send
            self.loop.call_later(_CLOSE_GRACE_S, transport.abort)

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
        if not self.gone.done():
            self.gone.set_result(None)
        if self._preauth_timer is not None:
            self._preauth_timer.cancel()
        if session is not None:  # a send still being relayed finishes first (see the handler)
            self._spawn_closed(session)


def _peer(conn: SMTP) -> str:
    peer = conn.session.peer if conn.session is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


class SmtpFront:
    """All submission listeners of the gateway (none without an ``[smtp]`` table)."""

    def __init__(self, services) -> None:
        self.services = services
        self.handler = SubmissionHandler(services)
        self._servers: list[tuple[ListenerConfig, asyncio.base_events.Server]] = []
        self.connections: set[_SubmissionSMTP] = set()
        self._endings: set[asyncio.Task] = set()  # connections winding down (a send finishing)
        self._stopping = False

    async def start(self) -> None:
        cfg = self.services.config.smtp
        if cfg is None:
            return
        ctx = server_tls_context(cfg.cert_file, cfg.key_file, cfg.tls_min_version)
        loop = asyncio.get_running_loop()
        for listener in cfg.listeners:
            starttls = listener.tls == "starttls"

            def factory(client=None, starttls=starttls):
                return _SubmissionSMTP(
                    self.handler, self.connections, implicit_tls=not starttls, endings=self._endings,
                    hostname=None, ident=IDENT, preauth_timeout=cfg.preauth_timeout_s,
                    front_stopping=lambda: self._stopping,
                    data_size_limit=cfg.max_message_bytes, tls_context=ctx if starttls else None,
                    require_starttls=starttls, auth_required=True, timeout=cfg.timeout_s, loop=loop,
                    client=client)

            if cfg.proxy_protocol is not None:  # behind a load balancer: its PROXY header, then TLS
                server = await proxy_listener.serve(listener.host, listener.port, factory,
                                                    settings=cfg.proxy_protocol, ssl_context=None if starttls else ctx,
                                                    what="SMTP")
            else:
                server = await loop.create_server(factory, listener.host, listener.port,
                                                  ssl=None if starttls else ctx,
                                                  ssl_handshake_timeout=None if starttls else 15)
            self._servers.append((listener, server))
            log.info("SMTP submission listening on %s:%d (%s%s)", listener.host,
                     server.sockets[0].getsockname()[1], listener.tls,
                     ", PROXY protocol" if cfg.proxy_protocol is not None else "")

    def bound_ports(self) -> dict[str, int]:
        """Bound port per listener kind, first listener of each kind (useful with port 0)."""
        out: dict[str, int] = {}
        for listener, server in self._servers:
            out.setdefault(listener.tls, server.sockets[0].getsockname()[1])
        return out

    async def stop(self, grace_s: float = 30.0, hurry: asyncio.Event | None = None) -> None:
        """Stop listening, then close every connection with ``421 4.3.2``: an idle one at once,
        one with a command running (a message being received or relayed) once it is answered —
        within ``grace_s`` (or until ``hurry`` is set), after which the rest are closed anyway.
        A send still being relayed then runs on within the grace period, so its record and audit
        rows are written before the stores close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        self._stopping = True
        for _, server in self._servers:
            server.close()
        conns = list(self.connections)
        for conn in conns:
            conn.shut_down()
        pending = await wait_within([c.gone for c in conns], grace_s, hurry)
        if pending:
            log.warning("stopping: closing %d SMTP connections with a command still running", len(pending))
            for conn in conns:
                if not conn.gone.done():
                    conn.say_goodbye()
        await asyncio.sleep(0)  # let connection_lost run
        if self._endings:
            left = await wait_within(list(self._endings), max(deadline - loop.time(), _CLOSE_GRACE_S), hurry)
            if left:
                log.warning("stopping: %d SMTP connections had not finished", len(left))
        # a DATA at the provider may outlive its connection: within the grace its answer is awaited,
        # after it the outcome is recorded as unknown while the stores are still open
        while self.handler.sends_at_provider() and loop.time() < deadline and not (hurry and hurry.is_set()):
            await asyncio.sleep(0.05)
        settled = self.handler.settle_unfinished()
        if settled:
            log.warning("stopping: %d sends to the provider had no answer yet; recorded as outcome unknown "
                        "(their receipts will settle them)", settled)
        for _, server in self._servers:
            await server.wait_closed()
        self._servers.clear()
