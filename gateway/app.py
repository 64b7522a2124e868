"""Assembling a running gateway from a :class:`~gateway.config.GatewayConfig`.

Construction order follows the dependencies: vault (secrets) → directory (may need the LDAP
service password from the vault) → OTP and trust windows → audit chain key, store and sink →
revocations (next to the audit store) → authenticator → policy → login service → IMAP front →
SMTP front → receipt watchers → access control (revoke, kick, re-validation) → admin channel.
``Gateway.start``/``stop`` bracket the listeners and the watchers and flush the audit sink, so a
clean stop loses no event.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from collections.abc import Callable
from importlib import metadata

from gateway.access_control import AccessControl
from gateway.admin.http import HttpEndpoint, Route
from gateway.admin.server import AdminServer
from gateway.admin.verbs import admin_verbs
from gateway.audit.events import Action, AuditEvent, Decision, utc_now
from gateway.audit.setup import build_sink, open_trail
from gateway.auth.attempts import open_attempt_store
from gateway.auth.authenticator import Authenticator
from gateway.auth.otp import OtpVerifier
from gateway.auth.throttle import Lockout, LoginThrottle
from gateway.auth.trust import TrustWindow
from gateway.config import ConfigError, GatewayConfig
from gateway.health import Health
from gateway.imap_proxy.server import ImapFront, Services
from gateway.live_policy import LivePolicy
from gateway.login_service import LoginService
from gateway.mailbox_census import MailboxWatch
from gateway.mailbox_credentials import MailboxCredentials
from gateway.metrics import (AUDIT_ACCEPTING, AUDIT_QUEUE_DEPTH, AUDIT_STORE_UP, LIVE_SESSIONS, prepare_series,
                             scrape)
from gateway.revocations import Revocations, open_revocation_store
from gateway.sends.store import open_send_store
from gateway.sends.watcher import ReceiptWatchers
from gateway.smtp_proxy.server import SmtpFront
from gateway.secret import Secret
from gateway.vault import Vault, VaultError, otp_key
from policy import PolicyError

__all__ = ["Gateway", "build_directory", "open_vault", "version"]

log = logging.getLogger("pecgw")


def version() -> str:
    try:
        return metadata.version("pec-gateway")
    except metadata.PackageNotFoundError:
        return "0"


def open_vault(config: GatewayConfig) -> Vault:
    try:
        return Vault.open(config.vault.path, config.vault.key_file, config.vault.key_env)
    except VaultError as exc:
        raise ConfigError(config.source, "vault", str(exc)) from None


def open_policy(config: GatewayConfig) -> LivePolicy:
    """The policy file named by ``[policy] file``; a bad file stops the start with its error."""
    try:
        return LivePolicy(config.policy_file, config.mailboxes)
    except PolicyError as exc:
        raise ConfigError(config.source, "policy.file", str(exc)) from None


def build_directory(config: GatewayConfig, vault: Vault):
    """The configured directory backend."""
    auth = config.auth
    if auth.backend == "static":
        from gateway.auth.static_directory import StaticDirectory

        return StaticDirectory(auth.users_file)
    from gateway.auth.ldap_directory import LdapDirectory, LdapSettings

    ldap = auth.ldap
    assert ldap is not None
    password = vault.get(ldap.bind_password_vault_key)
    if password is None:
        raise ConfigError(config.source, "auth.ldap.bind_password_vault_key",
                          f"no vault entry {ldap.bind_password_vault_key!r}; "
                          f"set it with 'pecgw vault set --entry {ldap.bind_password_vault_key}'")
    try:
        settings = LdapSettings(
            url=ldap.url, bind_dn=ldap.bind_dn, bind_password=password, user_base=ldap.user_base,
            group_base=ldap.group_base, user_filter=ldap.user_filter, group_filter=ldap.group_filter,
            group_name_attribute=ldap.group_name_attribute, display_name_attribute=ldap.display_name_attribute,
            disabled_filter=ldap.disabled_filter, ca_file=ldap.ca_file, start_tls=ldap.start_tls,
            timeout=ldap.timeout_s, username_attribute=ldap.username_attribute)
    except (ValueError, TypeError) as exc:
        raise ConfigError(config.source, "auth.ldap", str(exc)) from None
    return LdapDirectory(settings)


def admin_token(config: GatewayConfig, vault: Vault) -> Secret | None:
    """The admin TCP listener's token from the vault, created at the first start; None without
    a TCP listener (the unix socket relies on file permissions)."""
    if config.admin.listen_port is None:
        return None
    token = vault.get(config.admin.token_vault_key)
    if token is None:
        token = Secret(secrets.token_urlsafe(32))
        vault.set(config.admin.token_vault_key, token)
        log.info("created the admin token in the vault as %r", config.admin.token_vault_key)
    return token


class Gateway:
    """A configured gateway: call :meth:`start`, then :meth:`serve_forever` or :meth:`stop`."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.vault = open_vault(config)
        directory = build_directory(config, self.vault)
        otp = OtpVerifier(lambda user: self.vault.get(otp_key(user)), digits=config.auth.otp_digits)
        self.trust = TrustWindow(config.auth.trust_window_s)
        # The audit store: opened now, so a gateway that cannot record refuses to start (and the
        # tables kept next to it -- revocations, sends -- find their file or schema there).
        self.audit_store = open_trail(config, self.vault)
        self.audit = build_sink(config, self.audit_store)  # .emit(), .accepting, .depth
        AUDIT_QUEUE_DEPTH.set_function(lambda: self.audit.depth)
        AUDIT_ACCEPTING.set(1)
        AUDIT_STORE_UP.labels(config.audit.store).set(1)
        # a revoked person is refused by the authenticator itself
        self.revocations = Revocations(open_revocation_store(config, self.vault))
        # brute-force counters, next to the audit trail (shared by the instances on PostgreSQL)
        self.attempts = open_attempt_store(config, self.vault)
        self.throttle = LoginThrottle(config.auth.brute_force, config.auth.failure_delay_s, store=self.attempts,
                                      on_lockout=self._audit_lockout)
        self.authenticator = Authenticator(directory, otp, self.trust, config.auth.failure_delay_s,
                                           revoked=self.revocations.is_revoked, throttle=self.throttle)
        self.policy = open_policy(config)
        self.login_service = LoginService(self.authenticator, self.policy, config.mailboxes)
        self.sends = open_send_store(config, self.vault)  # next to the audit trail
        # which mailbox passwords the provider refused: shared, so no front retries what another saw refused
        self.credentials = MailboxCredentials(self.vault, config.mailboxes)
        self.services = Services(config=config, login_service=self.login_service, vault=self.vault,
                                 audit=self.audit, policy=self.policy, version=version(), sends=self.sends,
                                 credentials=self.credentials, is_revoked=self.revocations.is_revoked)
        LIVE_SESSIONS.watch(self.services.live, config.mailboxes)  # counted at each scrape
        prepare_series(config.mailboxes)  # at 0 from the start, for the alerts
        self.access = AccessControl(
            registry=self.services.live, revocations=self.revocations, trust=self.trust, directory=directory,
            policy=self.policy, mailboxes=config.mailboxes, audit=self.audit,
            revalidate_s=config.admin.revalidate_s, revocation_poll_s=config.admin.revocation_poll_s)
        self.imap = ImapFront(self.services)
        self.smtp = SmtpFront(self.services)  # no listeners without an [smtp] table
        # one provider session per sending mailbox, linking its receipts to the sends
        self.watchers = ReceiptWatchers(config, self.vault, self.sends, self.audit, credentials=self.credentials)
        # each provider probed every [census] probe_interval: /readyz, `pecgw mailboxes`, quota warnings
        self.census = MailboxWatch(config.mailboxes, self.credentials, config.census)
        self.health = Health(directory=directory, audit=self.audit, census=self.census, credentials=self.credentials,
                             spool=config.audit.on_store_failure == "spool", version=version())
        self.admin = AdminServer(config.admin, admin_verbs(self), token=admin_token(config, self.vault))
        # the GET routes of the HTTP endpoint ([admin] http_listen), served from start() to stop()
        self.http_routes: dict[str, Route] = {"/metrics": scrape}
        self.http_routes.update(self.health.routes())  # /healthz, /readyz
        self.http: HttpEndpoint | None = None
        self._access_task: asyncio.Task | None = None
        self._stopped = asyncio.Event()
        self._hurry = asyncio.Event()  # a second stop signal: end the running sessions without waiting

    async def start(self) -> None:
        self.audit.start()
        await self.imap.start()
        await self.smtp.start()
        self._access_task = asyncio.get_running_loop().create_task(self.access.run())
        await self.admin.start()
        if self.config.admin.http_port is not None:
            self.http = HttpEndpoint(self.config.admin.http_host, self.config.admin.http_port, self.http_routes)
            await self.http.start()
        # last: what logs in to the providers on its own starts only once nothing else can fail
        # (a start that fails after a provider login has spent a try of a maybe-stale password)
        self.watchers.start()
        self.census.start()

    async def stop(self) -> None:
        """Stop cleanly: the fronts first (nothing new is accepted; commands running finish
        within ``shutdown_grace``), then the channels and watchers, and the audit sink last, so
        every row is written."""
        self.health.stopping = True  # /readyz answers 503 while the sessions finish
        grace = self.config.shutdown_grace_s
        await asyncio.gather(self.smtp.stop(grace, self._hurry), self.imap.stop(grace, self._hurry))
        if self.http is not None:
            await self.http.stop()
        await self.admin.stop()
        LIVE_SESSIONS.unwatch(self.services.live)
        if self._access_task is not None:
            self._access_task.cancel()
            await asyncio.gather(self._access_task, return_exceptions=True)
        await self.watchers.stop()  # before the audit sink closes: their last rows go in
        await self.census.stop()
        await self.audit.close()
        self.audit_store.close()
        self.sends.close()
        self.revocations.store.close()
        self.attempts.close()
        self._stopped.set()

    def _audit_lockout(self, lockout: Lockout) -> None:
        """A login lockout began: one audit row (the name typed, never a secret)."""
        self.audit.emit(AuditEvent(
            when=utc_now(), session_id=lockout.session_id, protocol=lockout.protocol or "imap",
            action=Action.LOCKOUT, decision=Decision.DENY, person=lockout.name, client_ip=lockout.ip or None,
            reason=lockout.scope, detail={"scope": lockout.scope, "failures": lockout.failures,
                                          "until": lockout.until_iso}))

    def reload(self) -> str | None:
        """Reload what can change while running (the policy); None, or the error (nothing changed)."""
        return self.policy.reload()

    async def serve_forever(self, ready: Callable[[], None] | None = None) -> None:
        """Run until SIGINT/SIGTERM, then stop cleanly (:meth:`stop`); SIGHUP reloads the policy.
        A second SIGINT/SIGTERM ends the sessions still running without waiting for the grace.

        ``ready`` is called once the signal handlers are in place: ``pecgw serve`` writes its pid
        file then, so a ``pecgw reload`` can never meet SIGHUP's default action (ending the process).
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_stop() -> None:
            if stop.is_set() and not self._hurry.is_set():
                log.warning("stop signal repeated: ending the running sessions now")
                self._hurry.set()
            stop.set()

        handlers = {signal.SIGINT: on_stop, signal.SIGTERM: on_stop, signal.SIGHUP: self.reload}
        for sig, handler in handlers.items():
            try:
                loop.add_signal_handler(sig, handler)
            except (NotImplementedError, RuntimeError):
                pass
        if ready is not None:
            ready()
        await stop.wait()
        log.info("stopping: no new connections; running commands may take up to %g s to finish "
                 "(signal again to end them now)", self.config.shutdown_grace_s)
        await self.stop()
        log.info("stopped")
