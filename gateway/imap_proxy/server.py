"""The IMAP front's I/O adapter: listeners, TLS, timers, and one driver per client connection.

This is the only IMAP code that touches sockets (DESIGN.md layers).  Each connection gets an
:class:`ImapSession` and a :class:`Connection` that feeds it bytes from both sides and carries out
the actions it returns, in order.  A failure inside one connection — bad bytes, a broken TLS
handshake, a provider that dies — ends that connection only; the listeners keep serving.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway import proxy_listener
from gateway.config import GatewayConfig, ListenerConfig
from gateway.imap_proxy import actions as act
from gateway.imap_proxy.identity import IdentityCache
from gateway.imap_proxy.session import ImapSession, SessionState
from gateway.imap_proxy.upstream import UpstreamError, UpstreamSession, open_upstream
from gateway.live_sessions import LiveSession, SessionRegistry
from gateway.login import Failure, LoginResult
from gateway.mailbox_credentials import CLIENT_TEXT as REFUSED_TEXT
from gateway.mailbox_credentials import REFUSED_REASON, MailboxCredentials, PasswordRefused
from gateway.metrics import count_login, upstream_login
from gateway.shutdown import wait_within

__all__ = ["ImapFront", "server_tls_context"]

log = logging.getLogger("pecgw.imap")

_READ_SIZE = 256 * 1024
_CLOSE_GRACE_S = 1.0  # how long a closing peer gets to acknowledge TLS close_notify


def server_tls_context(cert_file, key_file, min_version: str = "TLSv1.2") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "TLSv1.3" else ssl.TLSVersion.TLSv1_2
    return ctx


@dataclass
class Services:
    """What a connection needs from the rest of the gateway."""

    config: GatewayConfig
    login_service: object  # gateway.login_service.LoginService
    vault: object  # gateway.vault.Vault
    audit: object  # an AuditSink
    policy: object  # gateway.live_policy.LivePolicy: the office folder policy in force
    version: str = "0"
    sessions: set = field(default_factory=set)
    identities: IdentityCache = field(default_factory=IdentityCache)  # message identities, all sessions
    sends: object = None  # gateway.sends.store.SendStore: the record of every PEC submitted
    live: SessionRegistry = field(default_factory=SessionRegistry)  # logged-in sessions, IMAP and SMTP
    is_revoked: Callable[[str], bool] = lambda _person: False  # gateway.revocations.Revocations.is_revoked
    # the vaulted mailbox passwords and which the provider refused: one for IMAP, SMTP and the watchers
    credentials: MailboxCredentials | None = None

    def __post_init__(self) -> None:
        if self.credentials is None:
            self.credentials = MailboxCredentials(self.vault)


class Connection:
    """Drives one client connection and, after login, its provider connection.

    The client is read by the task in :meth:`run`.  The provider is not read by a task: its
    :class:`~gateway.imap_proxy.provider_link.ProviderLink` calls :meth:`_on_upstream_data` for
    every chunk, which feeds the session and writes the replies to the client at once.
    """

    def __init__(self, services: Services, listener: ListenerConfig, reader, writer,
                 client: tuple[str, int] | None = None) -> None:
        """``client``: the address a PROXY header gave (gateway/proxy_listener.py); else the peer's."""
        self.s = services
        self.reader, self.writer = reader, writer
        self.up: UpstreamSession | None = None
        self._client_drain: asyncio.Task | None = None  # set while provider reading is paused
        self._tasks: set[asyncio.Task] = set()  # work the provider callback could not finish itself
        self._resume = asyncio.Event()
        self._closed = False
        self._closing: asyncio.Task | None = None
        self.task: asyncio.Task | None = None
        self._preauth_deadline = 0.0
        self._upstream_activity = time.monotonic()
        peer = client or writer.get_extra_info("peername") or ("?", 0)
        cfg = services.config.imap
        self.session = ImapSession(
            session_id=secrets.token_hex(8), client_ip=str(peer[0]), policy=services.policy,
            identities=services.identities,
            audit_accepting=lambda: getattr(services.audit, "accepting", True),
            tls_active=listener.tls == "implicit", starttls_available=listener.tls == "starttls",
            plaintext_login=cfg.plaintext_login, limits=cfg.limits, version=services.version)

    # -- main loop -------------------------------------------------------------------------
    async def run(self) -> None:
        self.s.sessions.add(self)
        self.task = asyncio.current_task()
        self._preauth_deadline = time.monotonic() + self.s.config.imap.preauth_timeout_s
        try:
            await self._perform(self.session.connection_made())
            while not self._closed:
                if self.session.reading_paused:
                    await self._wait_resumed()
                    continue
                data = await self._read_client()
                if data is None:
                    continue
                await self._perform(self.session.client_data(data))
                if not data and not self._closed and not self.session.draining:
                    # EOF, and the session has nothing more to do with the client: it may already
                    # have ended, its Close still waiting in a task.  StreamReader.read returns b""
                    # at EOF without yielding, so looping would never let that task run.
                    await self._close()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            log.info("session %s: client connection ended: %s", self.session.session_id, type(exc).__name__)
            await self._perform(self.session.client_closed())
        except Exception:
            log.exception("session %s: internal error; closing this session", self.session.session_id)
            await self._perform(self.session.internal_error())
        finally:
            while self.session.draining and not self._closed:
                # the client left while audited commands ran: their replies still make rows
                # (the idle timeout still applies to a provider that never answers)
                await self._wait_resumed()
            await self._close()
            for task in list(self._tasks):  # work spawned from provider data: done or moot now
                if task is not asyncio.current_task() and not task.done():
                    task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self.s.sessions.discard(self)
            self.s.live.discard(self.session.session_id)

    async def _read_client(self) -> bytes | None:
        """Read from the client; None after a timeout (the session has been told).

        Before login the deadline is absolute, from the connection's start: a client that never
        logs in cannot keep its slot by sending NOOPs.  After login it is the idle time.
        """
        authenticated = self.session.state is SessionState.AUTHENTICATED
        if authenticated:
            deadline = time.monotonic() + self.s.config.imap.idle_timeout_s
        else:
            deadline = self._preauth_deadline
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await self.reader.read(_READ_SIZE)
        except TimeoutError:
            await self._perform(self.session.timed_out("idle" if authenticated else "preauth"))
            return None

    async def _wait_resumed(self) -> None:
        """Wait while the session does not want client data, but not for ever.

        The client is not read meanwhile, so its disconnect goes unseen; if the provider also
        stays silent for the idle time, the session is ended instead of living on.
        """
        idle = self.s.config.imap.idle_timeout_s
        self._resume.clear()
        while not self._resume.is_set():
            try:
                async with asyncio.timeout(idle):
                    await self._resume.wait()
            except TimeoutError:
                if time.monotonic() - self._upstream_activity >= idle:
                    await self._perform(self.session.timed_out("idle"))
                    return

    def _on_upstream_data(self, data: bytes) -> None:
        """Provider bytes (``b""`` at the end), called synchronously by the provider link.

        The session's replies are written to the client right here, with no task in between.
        Nothing here waits for the provider to take our writes: it may be blocked writing to us
        (a big FETCH) while we hold an upload for it — both would wait for ever.  If the client
        is not keeping up, the provider is paused until the client has drained.
        """
        if self._closed:  # closing: the provider is being shut, its bytes go nowhere
            return
        self._upstream_activity = time.monotonic()
        if not data and self.up is not None and self.up.link.exception is not None:
            log.warning("session %s: provider connection failed: %s", self.session.session_id,
                        type(self.up.link.exception).__name__)
        try:
            actions = self.session.upstream_data(data)
            done, wrote_client, _ = self._apply(actions)
        except Exception:
            log.exception("session %s: internal error in the provider reader", self.session.session_id)
            actions, done, wrote_client = self.session.internal_error(), 0, False
        if done < len(actions):  # e.g. Close: finish in order in a task
            self._spawn(self._perform(actions[done:], drain_upstream=False))
        elif wrote_client and self._client_drain is None and not self._closed:
            transport = self.writer.transport
            if transport.get_write_buffer_size() >= transport.get_write_buffer_limits()[1]:
                self.up.link.pause_reading()
                self._client_drain = self._spawn(self._drain_client_then_resume())
        if not data or not self.session.reading_paused:
            self._resume.set()

    async def _drain_client_then_resume(self) -> None:
        try:
            await self._drain(True, False)
        finally:
            self._client_drain = None
            if not self._closed and self.up is not None:
                self.up.link.resume_reading()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, coro) -> None:
        try:
            await coro
        except Exception:
            log.exception("session %s: internal error after provider data", self.session.session_id)
            await self._close()

    # -- actions ---------------------------------------------------------------------------
    async def _perform(self, actions: list, *, drain_upstream: bool = True) -> None:
        """Carry out the session's actions in order, then wait for what was written to drain.

        Only the writers written to are drained, and the provider callback never drains the
        provider side (see ``_on_upstream_data``).
        """
        wrote_client = wrote_upstream = False
        i = 0
        while True:
            i, client, upstream = self._apply(actions, i)
            wrote_client |= client
            wrote_upstream |= upstream
            if i >= len(actions):
                break
            a = actions[i]
            i += 1
            if isinstance(a, act.StartTls):
                await self._start_tls(a)
            elif isinstance(a, act.Login):
                await self._login(a)
            elif isinstance(a, act.Close):
                await self._close()
        if not self._closed:
            await self._drain(wrote_client, wrote_upstream and drain_upstream)

    def _apply(self, actions: list, i: int = 0) -> tuple[int, bool, bool]:
        """Carry out ``actions[i:]`` up to the first one that must be awaited.

        Returns where it stopped and whether the client / the provider was written to.
        """
        wrote_client = wrote_upstream = False
        to_client: list[bytes] = []  # consecutive client writes become one TLS write, one send()
        n = len(actions)
        while i < n:
            a = actions[i]
            if type(a) is act.SendToClient:
                to_client.append(a.data)
                i += 1
                continue
            if to_client:
                wrote_client |= self._write_client(to_client)
            if isinstance(a, act.SendToUpstream):
                if self.up is not None and not self._closed:
                    self.up.link.write(a.data)
                    wrote_upstream = True
            elif isinstance(a, act.Audit):
                self.s.audit.emit(a.event)
            elif isinstance(a, act.Log):
                log.warning("session %s: %s", self.session.session_id, a.message)
            elif isinstance(a, act.CloseClient):
                self._close_client()
            else:
                break
            i += 1
        if to_client:
            wrote_client |= self._write_client(to_client)
        return i, wrote_client, wrote_upstream

    def _close_client(self) -> None:
        """Close the client side only (see :class:`~gateway.imap_proxy.actions.CloseClient`)."""
        if not self.writer.is_closing():
            self.writer.close()
            asyncio.get_running_loop().call_later(_CLOSE_GRACE_S, self.writer.transport.abort)

    def _write_client(self, parts: list[bytes]) -> bool:
        written = not self._closed and not self.writer.is_closing()
        if written:
            self.writer.write(parts[0] if len(parts) == 1 else b"".join(parts))
        parts.clear()
        return written

    async def _drain(self, client: bool, upstream: bool) -> None:
        """Flow control: wait until the peer has taken what we wrote, within the idle time."""
        try:
            async with asyncio.timeout(self.s.config.imap.idle_timeout_s):
                if client:
                    await self.writer.drain()
                if upstream and self.up is not None:
                    await self.up.link.drain()
        except TimeoutError:
            log.warning("session %s: peer not reading for the idle time; closing", self.session.session_id)
            await self._perform(self.session.timed_out("idle"))
        except (ConnectionError, ssl.SSLError):
            pass  # the reader side notices and ends the session

    async def _start_tls(self, a: act.StartTls) -> None:
        # The session refused if its framer held bytes sent after STARTTLS; bytes still in the
        # stream reader's buffer are just as much cleartext (RFC 2595 §3.1, CVE-2011-0411).
        buffered = len(getattr(self.reader, "_buffer", b""))
        if buffered:
            log.warning("session %s: %d octets pipelined in clear after STARTTLS; closing",
                        self.session.session_id, buffered)
            await self._perform(self.session.shutting_down())
            return
        cfg = self.s.config.imap
        await self.writer.drain()
        ctx = server_tls_context(cfg.cert_file, cfg.key_file, cfg.tls_min_version)
        await self.writer.start_tls(ctx)
        await self._perform(self.session.tls_started())

    async def _login(self, a: act.Login) -> None:
        result: LoginResult = await self.s.login_service.login(a.request)
        caps: list[str] = []
        if result.ok:
            result, caps = await self._open_upstream(result)
        count_login("imap", result.ok, result.reason)
        if self._closed and self.up is not None:  # the connection ended while logging in
            self.up.link.close()
            self.up.link.transport.abort()
            return
        await self._perform(self.session.login_finished(result, caps))
        if result.ok and self.up is not None:
            # Bytes the provider sent meanwhile wait in the link; attach() hands them over first.
            self.up.link.attach(self._on_upstream_data, first=self.up.leftover)
            self._register_live(result)

    def _register_live(self, result: LoginResult) -> None:
        """List the session for ``pecgw sessions`` / revoke / kick and the directory check."""
        if self._closed:
            return
        self.s.live.add(LiveSession(
            session_id=self.session.session_id, protocol="imap", person=result.person or "",
            mailbox=result.mailbox or "", client_ip=self.session.client_ip, end=self.end_by_gateway,
            offices=tuple(self.session.offices),
            describe=lambda: {"folder": self.session.selected_folder, "client": self.session.client_name,
                              "offices": list(self.session.offices)}))
        if self.s.is_revoked(result.person or ""):  # revoked while this login was being checked
            self._spawn(self.end_by_gateway("revoked", "Your access to this PEC mailbox has been revoked"))

    async def end_by_gateway(self, reason: str, text: str) -> None:
        """End the session now (revoked, kicked, access withdrawn), even while it sits in IDLE."""
        await self._perform(self.session.ended_by_gateway(text.encode("utf-8", "replace"), reason))
        if not self._closed:  # the client had already left and its last replies are being read
            return
        if self.task is not None and self.task is not asyncio.current_task():
            await asyncio.wait([self.task], timeout=_CLOSE_GRACE_S * 2)

    async def _open_upstream(self, result: LoginResult) -> tuple[LoginResult, list[str]]:
        mailbox = self.s.config.mailboxes[result.mailbox]
        credentials = self.s.credentials
        try:
            password = credentials.current(mailbox)
        except PasswordRefused:  # refused before and not changed since: the provider is not asked
            return self._unavailable(result, REFUSED_REASON, REFUSED_TEXT), []
        if password is None:
            log.error("mailbox %s: no password in the vault under %r; set it with 'pecgw vault set %s'",
                      mailbox.name, mailbox.password_vault_key, mailbox.name)
            return self._unavailable(result, "no_mailbox_password"), []
        try:
            with upstream_login("imap", mailbox.name):
                self.up = await open_upstream(mailbox.imap, password.secret)
        except UpstreamError as exc:
            if exc.kind == "login_refused":  # logged (once) by the credentials
                credentials.refused(password, str(exc))
                return self._unavailable(result, REFUSED_REASON, REFUSED_TEXT), []
            log.error("session %s: mailbox %s: provider unavailable (%s): %s",
                      self.session.session_id, mailbox.name, exc.kind, exc)
            return self._unavailable(result, f"upstream_{exc.kind}"), []
        credentials.accepted(password)
        return result, self.up.capabilities

    @staticmethod
    def _unavailable(result: LoginResult, reason: str,
                     text: str = "The PEC provider is unavailable; try again later") -> LoginResult:
        return LoginResult(False, person=result.person, offices=result.offices, mailbox=result.mailbox,
                           failure=Failure.UNAVAILABLE, reason=reason, client_text=text)

    async def _close(self) -> None:
        """Close both sides once; every caller waits until the closing is complete."""
        if self._closing is None:
            self._closed = True  # at once: from here on no byte is read from or sent to anybody
            self._resume.set()
            if self.up is not None:
                self.up.link.pause_reading()  # nothing more from the provider while the client is flushed
            self._closing = asyncio.get_running_loop().create_task(self._close_both())
        await asyncio.shield(self._closing)

    async def _close_both(self) -> None:
        for w in (self.writer, self.up.link if self.up else None):
            if w is None:
                continue
            try:
                if not w.is_closing():
                    w.close()  # flushes what was written (e.g. * BYE), then TLS close_notify
                await asyncio.wait_for(w.wait_closed(), _CLOSE_GRACE_S)
            except (ConnectionError, ssl.SSLError, TimeoutError, OSError):
                pass
            finally:
                w.transport.abort()  # no-op once closed; a peer ignoring close_notify must not hold us
        task = self._client_drain
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()


class ImapFront:
    """All IMAP listeners of the gateway."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._servers: list[tuple[ListenerConfig, asyncio.base_events.Server]] = []
        self._stopping = False

    async def start(self) -> None:
        cfg = self.services.config.imap
        tls_ctx = server_tls_context(cfg.cert_file, cfg.key_file, cfg.tls_min_version) if cfg.cert_file else None
        for listener in cfg.listeners:
            ctx = tls_ctx if listener.tls == "implicit" else None
            if listener.tls == "implicit" and ctx is None:
                raise RuntimeError("an implicit-TLS listener needs cert_file and key_file")

            async def handle(reader, writer, client=None, listener=listener):
                conn = Connection(self.services, listener, reader, writer, client)
                if self._stopping:  # accepted before the listeners closed (its TLS handshake ran on)
                    await conn._perform(conn.session.shutting_down())  # "* BYE" as the greeting
                    return
                await conn.run()

            if cfg.proxy_protocol is not None:  # behind a load balancer: its PROXY header, then TLS
                server = await proxy_listener.serve(
                    listener.host, listener.port, proxy_listener.stream_protocol(handle),
                    settings=cfg.proxy_protocol, ssl_context=ctx, what="IMAP")
            else:
                server = await asyncio.start_server(handle, listener.host, listener.port, ssl=ctx,
                                                    ssl_handshake_timeout=15 if ctx else None)
            self._servers.append((listener, server))
            log.info("IMAP listening on %s:%d (%s%s)", listener.host, self.port_of(server), listener.tls,
                     ", PROXY protocol" if cfg.proxy_protocol is not None else "")

    @staticmethod
    def port_of(server) -> int:
        return server.sockets[0].getsockname()[1]

    def bound_ports(self) -> dict[str, int]:
        """Bound port per listener kind, first listener of each kind (useful with port 0)."""
        out: dict[str, int] = {}
        for listener, server in self._servers:
            out.setdefault(listener.tls, self.port_of(server))
        return out

    async def stop(self, grace_s: float = 5.0, hurry: asyncio.Event | None = None) -> None:
        """Stop listening, then end every session with ``* BYE``: an idle one (or one in IDLE) at
        once, one with commands running once they are answered and audited — within ``grace_s``
        (or until ``hurry`` is set), after which the rest are ended anyway."""
        self._stopping = True
        for _, server in self._servers:
            server.close()
        conns = list(self.services.sessions)
        # together: each close may wait a moment for the client's TLS close_notify
        await asyncio.gather(*(conn._perform(conn.session.shutting_down()) for conn in conns),
                             return_exceptions=True)
        tasks = [c.task for c in conns if c.task is not None and not c.task.done()]
        if tasks:
            busy = sum(1 for c in conns if c.session.stopping)
            if busy:
                log.info("stopping: %d IMAP sessions finish their running commands first (at most %g s)",
                         busy, grace_s)
            pending = await wait_within(tasks, grace_s, hurry)
            if pending:
                late = [c for c in conns if c.task in pending]
                log.warning("stopping: ending %d IMAP sessions with commands still running (%s)", len(late),
                            "stop signal repeated" if hurry is not None and hurry.is_set()
                            else f"shutdown grace of {grace_s:g} s is over")
                await asyncio.gather(*(conn._perform(conn.session.shutting_down(now=True)) for conn in late),
                                     return_exceptions=True)
                _, pending = await asyncio.wait(pending, timeout=_CLOSE_GRACE_S * 2)
            for task in pending:
                task.cancel()
        for _, server in self._servers:
            await server.wait_closed()
        self._servers.clear()
