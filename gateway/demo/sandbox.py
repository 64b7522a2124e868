"""Sandbox PEC provider for ``pecgw demo``: a small but real IMAP4rev1 server over in-memory
mailboxes, reached with implicit TLS (like imaps on 993), so the demo needs no root, no Dovecot
and no system packages.

Why twisted here: ``twisted.mail.imap4.IMAP4Server`` is a complete IMAP server we do not have to
write -- command parsing, the state machine, literals, FETCH streaming, IDLE -- and a demo
provider needs nothing more.  It only ever serves the demo, never the relay: DESIGN.md point 10
keeps it out of the relay (no LITERAL+, one command at a time, cannot round-trip what it parses).

Threads: the gateway runs asyncio in the main thread; twisted gets its own reactor in one daemon
thread, started on first use and kept for the life of the process (a reactor cannot be
restarted).  Each :class:`SandboxProvider` adds and removes its own listener on it; every call
into twisted goes through ``blockingCallFromThread`` and the mailboxes
(:mod:`gateway.demo.sandbox_store`) are only touched on the reactor thread.

This module is that lifecycle: accounts in, reactor thread, TLS listener, shutdown.  The rest of
the provider: the protocol (:mod:`gateway.demo.sandbox_server`), logging in
(:mod:`gateway.demo.sandbox_auth`), accounts, folders and session views
(:mod:`gateway.demo.sandbox_store`), messages (:mod:`gateway.demo.sandbox_message`), MIME and
the FETCH renderings (:mod:`gateway.demo.sandbox_mime`) and SEARCH
(:mod:`gateway.demo.sandbox_search`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from twisted.cred.portal import Portal
from twisted.internet import defer, protocol
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.mail import imap4

from gateway.demo.sandbox_auth import PasswordChecker, Realm
from gateway.demo.sandbox_server import SandboxIMAPServer
from gateway.demo.sandbox_store import Account

__all__ = ["SandboxAccount", "SandboxProvider", "SandboxIMAPServer"]

log = logging.getLogger(__name__)

REACTOR_START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0  # seconds stop() waits for the port and the sessions to close


@dataclass
class SandboxAccount:
    """One sandbox mailbox: its password and its folders ("INBOX" required, "/" separated,
    human names) holding RFC 5322 messages as CRLF bytes."""

    password: str = field(repr=False)
    folders: dict[str, list[bytes]]


class _SandboxFactory(protocol.ServerFactory):
    noisy = False

    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.connections: set[SandboxIMAPServer] = set()
        self._waiting: list[defer.Deferred] = []

    def dropped(self, server: SandboxIMAPServer) -> None:
        self.connections.discard(server)
        if not self.connections:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def all_closed(self) -> defer.Deferred:
        if not self.connections:
            return defer.succeed(None)
        self._waiting.append(defer.Deferred())
        return self._waiting[-1]

    def buildProtocol(self, addr):
        server = SandboxIMAPServer(chal={b"PLAIN": imap4.PLAINCredentials})
        server.portal, server.factory = self.portal, self
        return server


def _log_twisted_errors(event) -> None:
    """Forward twisted's error events (failures in its callbacks) to Python logging."""
    failure = event.get("log_failure")
    if failure is None and event.get("log_level") not in (LogLevel.error, LogLevel.critical):
        return
    detail = "\n" + failure.getTraceback() if failure is not None else ""
    log.error("twisted: %s%s", formatEvent(event), detail)


class _ReactorThread:
    """The process's one twisted reactor, run in a daemon thread from the first start()."""

    _lock = threading.Lock()
    started = False

    @classmethod
    def get(cls):
        from twisted.internet import reactor

        with cls._lock:
            if cls.started:
                return reactor
            if getattr(reactor, "_startedBefore", False) and not reactor.running:
                raise RuntimeError("the twisted reactor of this process has already stopped")
            if not reactor.running:
                running = threading.Event()
                reactor.callWhenRunning(running.set)
                threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                                 name="pecgw-sandbox-reactor", daemon=True).start()
                if not running.wait(REACTOR_START_TIMEOUT):
                    raise RuntimeError("the twisted reactor did not start")
            globalLogPublisher.addObserver(_log_twisted_errors)
            cls.started = True
            return reactor


def _tls_options(certfile: Path, keyfile: Path):
    """Server TLS settings from a PEM certificate file (leaf first, then any chain) and key.
    ``cryptography`` objects, which pyOpenSSL now prefers to its own X509/PKey."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from twisted.internet import ssl

    certificates = x509.load_pem_x509_certificates(certfile.read_bytes())
    key = load_pem_private_key(keyfile.read_bytes(), password=None)
    return ssl.CertificateOptions(privateKey=key, certificate=certificates[0],
                                  extraCertChain=certificates[1:])


class SandboxProvider:
    """The sandbox provider's IMAP service: implicit TLS on ``host:port`` over in-memory
    mailboxes.  Several instances may start and stop in one process; they share one reactor."""

    def __init__(self, accounts: dict[str, SandboxAccount], certfile: Path, keyfile: Path,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        for user, account in accounts.items():
            if not any(name.upper() == "INBOX" for name in account.folders):
                raise ValueError(f"sandbox account {user!r} has no INBOX folder")
        self._accounts = {user.lower(): Account(a.folders) for user, a in accounts.items()}
        passwords = {user.lower(): a.password.encode("utf-8") for user, a in accounts.items()}
        self._portal = Portal(Realm(self._accounts), [PasswordChecker(passwords)])
        self._certfile, self._keyfile = Path(certfile), Path(keyfile)
        self._host, self._requested_port = host, port
        self._listener = self._factory = None
        self._port: int | None = None

    def start(self) -> int:
        """Listen and return the bound port."""
        if self._listener is not None:
            raise RuntimeError("sandbox provider already started")
        options = _tls_options(self._certfile, self._keyfile)
        reactor = _ReactorThread.get()
        factory = _SandboxFactory(self._portal)

        def listen():
            listener = reactor.listenSSL(self._requested_port, factory, options, interface=self._host)
            return listener, listener.getHost().port

        self._listener, self._port = blockingCallFromThread(reactor, listen)
        self._factory = factory
        log.info("sandbox IMAP provider listening on %s:%d (implicit TLS, %d account(s))",
                 self._host, self._port, len(self._accounts))
        return self._port

    def stop(self) -> None:
        """Close the listening socket and every open session, and wait until they are gone;
        safe to call twice."""
        listener, factory = self._listener, self._factory
        if listener is None:
            return
        self._listener = self._factory = None

        reactor = _ReactorThread.get()

        def shutdown():
            stopped = defer.maybeDeferred(listener.stopListening)
            for server in list(factory.connections):
                server.transport.abortConnection()
            done = defer.gatherResults([stopped, factory.all_closed()], consumeErrors=True)
            return done.addTimeout(STOP_TIMEOUT, reactor)

        blockingCallFromThread(reactor, shutdown)
        log.info("sandbox IMAP provider on %s:%d stopped", self._host, self._port)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("sandbox provider not started")
        return self._port

    def snapshot(self, user: str, folder: str) -> list[tuple[int, list[str], bytes]]:
        """(UID, flags, bytes) of each message in a folder, read on the reactor thread."""
        account = self._accounts[user.lower()]

        def read():
            box = account.folders[account.canonical(folder)]
            return [(m.uid, list(m.flags), m.raw) for m in box.messages]

        return blockingCallFromThread(_ReactorThread.get(), read) if _ReactorThread.started else read()

    def __enter__(self) -> SandboxProvider:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
