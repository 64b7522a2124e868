"""Configuration: one TOML file → frozen dataclasses; every error names the file and the key.

A gateway that starts with a typo in its config is worse than one that refuses to start, so
unknown keys are errors too.  Relative paths are resolved against the config file's folder.
No secret is ever read from this file: passwords live in the vault (``pecgw vault set``), and the
config only names the vault entries.  See ``config/gateway.example.toml`` for every key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.imap_proxy.session import SessionLimits

__all__ = [
    "ConfigError",
    "ListenerConfig",
    "ProxyProtocolConfig",
    "ImapConfig",
    "UpstreamConfig",
    "MailboxConfig",
    "LdapConfig",
    "AuthConfig",
    "BruteForceConfig",
    "VaultConfig",
    "AuditConfig",
    "CensusConfig",
    "GatewayConfig",
    "load_config",
    "parse_config",
]


class ConfigError(ValueError):
    """A configuration problem, as ``<file>: <key>: <what is wrong>``."""

    def __init__(self, source: Path | str, key: str, message: str) -> None:
        self.source, self.key = str(source), key
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")


@dataclass(frozen=True)
class ListenerConfig:
    host: str
    port: int
    tls: str  # "implicit" (imaps, 993) or "starttls" (imap, 143)


@dataclass(frozen=True)
class ProxyProtocolConfig:
    """``proxy_protocol = true`` in ``[imap]`` / ``[smtp]``: every connection to those listeners
    must come from ``trusted`` and open with a PROXY v1/v2 header (gateway/proxy_listener.py)."""

    trusted: tuple  # ipaddress.IPv4Network / IPv6Network: the load balancers' addresses
    timeout_s: float = 5.0  # a trusted peer that sends no complete header by then is refused


@dataclass(frozen=True)
class ImapConfig:
    listeners: tuple[ListenerConfig, ...]
    cert_file: Path | None
    key_file: Path | None
    tls_min_version: str = "TLSv1.2"
    plaintext_login: bool = False  # insecure; for tests on loopback only
    limits: SessionLimits = field(default_factory=SessionLimits)
    preauth_timeout_s: float = 60.0
    idle_timeout_s: float = 1860.0  # RFC 3501 §5.4: autologout timer at least 30 minutes
    proxy_protocol: ProxyProtocolConfig | None = None  # None: clients connect directly


@dataclass(frozen=True)
class UpstreamConfig:
    host: str
    port: int
    tls: str  # "implicit" or "starttls"
    username: str
    ca_file: Path | None = None  # None: the system trust store
    server_name: str | None = None  # TLS name to verify; defaults to host
    connect_timeout_s: float = 10.0
    login_timeout_s: float = 20.0


@dataclass(frozen=True)
class SubmissionConfig:
    """A mailbox's provider submission server (``[mailboxes.NAME.smtp]``) and its limits."""

    upstream: UpstreamConfig
    max_recipients: int = 100
    max_total_bytes: int = 100 * 1000 * 1000  # message size x recipients (PEC.md section 5)
    timeout_s: float = 120.0  # per SMTP step toward the provider (DATA of a large message included)


@dataclass(frozen=True)
class SmtpConfig:
    """The submission front (``[smtp]``): 465 implicit TLS, 587 STARTTLS required before AUTH."""

    listeners: tuple[ListenerConfig, ...]
    cert_file: Path
    key_file: Path
    tls_min_version: str = "TLSv1.2"
    max_message_bytes: int = 100 * 1000 * 1000
    timeout_s: float = 300.0  # RFC 5321 section 4.5.3.2.7: at least 5 minutes
    preauth_timeout_s: float = 60.0  # from the connection to a successful AUTH, like [imap] preauth_timeout
    #: A retried PEC whose earlier attempt has an unknown outcome (the connection broke after
    #: DATA) and no accettazione yet: refused with 451 for this long, then sent again.
    unknown_outcome_wait_s: float = 600.0
    proxy_protocol: ProxyProtocolConfig | None = None  # None: clients connect directly


@dataclass(frozen=True)
class MailboxConfig:
    """How to reach one PEC mailbox at its provider.  Who may use it is the policy file's business."""

    name: str
    address: str
    imap: UpstreamConfig
    password_vault_key: str
    smtp: SubmissionConfig | None = None  # None: no sending from this mailbox


@dataclass(frozen=True)
class LdapConfig:
    url: str
    bind_dn: str
    bind_password_vault_key: str
    user_base: str
    group_base: str
    user_filter: str = "(&(objectClass=inetOrgPerson)(uid={username}))"
    group_filter: str = "(&(objectClass=groupOfNames)(member={dn}))"
    group_name_attribute: str = "cn"
    display_name_attribute: str = "cn"
    disabled_filter: str = "(pwdAccountLockedTime=*)"
    ca_file: Path | None = None
    start_tls: bool = False
    timeout_s: float = 5.0
    username_attribute: str = "uid"  # the canonical login name (AD: sAMAccountName or userPrincipalName)


@dataclass(frozen=True)
class BruteForceConfig:
    """``[auth.brute_force]``: growing delays and lockouts after failed logins (gateway/auth/throttle.py).

    Counted per login name as typed and client address (``pair``), per address (``ip``) and per
    name from everywhere (``person``); a limit of 0 never locks that scope."""

    window_s: float = 900.0  # failures are added up for this long from a counter's first one
    max_delay_s: float = 30.0  # a failure waits auth.failure_delay * 2**(n-1), at most this
    lockout_after: int = 10  # failures of one name from one address
    ip_lockout_after: int = 30  # failures of any names from one address; 0: never
    person_lockout_after: int = 100  # failures of one name from any address; 0: never
    lockout_duration_s: float = 900.0


@dataclass(frozen=True)
class AuthConfig:
    backend: str  # "ldap" or "static"
    ldap: LdapConfig | None
    users_file: Path | None
    otp_issuer: str = "PEC Gateway"
    otp_digits: int = 6
    trust_window_s: float = 12 * 3600.0
    failure_delay_s: float = 1.0
    brute_force: BruteForceConfig = field(default_factory=BruteForceConfig)


@dataclass(frozen=True)
class VaultConfig:
    path: Path
    key_file: Path | None
    key_env: str = "PECGW_VAULT_KEY"


@dataclass(frozen=True)
class AuditConfig:
    """Where the audit trail goes: an HMAC-chained store, optionally a JSON-lines copy too."""

    sqlite_path: Path  # store = "sqlite"; default audit.sqlite in the folder of [vault] path
    spool_path: Path  # on_store_failure = "spool"; default audit-spool.jsonl beside the vault
    store: str = "sqlite"  # "sqlite" | "postgresql"
    postgresql_dsn: str | None = None  # libpq conninfo or URI, without a password
    postgresql_password_vault_key: str | None = None  # vault entry with the server's password
    postgresql_schema: str = "public"
    on_store_failure: str = "fail-closed"  # "fail-closed" | "spool"
    chain_key_vault_key: str = "audit/chain-key"
    jsonl_path: Path | None = None  # an extra copy as JSON lines, e.g. for log shipping


@dataclass(frozen=True)
class AdminConfig:
    """The admin channel (gateway/admin/): a unix socket, and optionally a loopback TCP port."""

    socket: Path | None  # default admin.sock next to the vault; socket = "" turns it off
    socket_mode: int = 0o600
    socket_group: str | None = None
    listen_host: str | None = None  # loopback only; needs the token from the vault
    listen_port: int | None = None
    token_vault_key: str = "admin/token"
    revalidate_s: float = 60.0  # ask the directory about every live session this often
    revocation_poll_s: float = 0.5  # re-read revocations made by other instances this often
    # the HTTP endpoint (/metrics, /healthz, /readyz: gateway/admin/http.py), loopback only;
    # http_listen = "" turns it off (both None)
    http_host: str | None = "127.0.0.1"
    http_port: int | None = 9925


@dataclass(frozen=True)
class CensusConfig:
    """``[census]``: the probe of each mailbox's provider behind ``/readyz`` and ``pecgw mailboxes``
    (gateway/mailbox_census.py)."""

    probe_interval_s: float = 60.0  # log in to each provider this often (quota, INBOX, unhandled PEC)
    probe_timeout_s: float = 20.0  # for the questions after the login (the login has its own timeouts)
    quota_warn: float = 0.9  # warn (log, metric) above this share of the quota
    unhandled_age_s: float = 3 * 86400.0  # an unseen incoming PEC older than this is "unhandled"


@dataclass(frozen=True)
class GatewayConfig:
    source: Path
    imap: ImapConfig
    auth: AuthConfig
    vault: VaultConfig
    audit: AuditConfig
    policy_file: Path  # offices and folder rights (policy/); reloaded on SIGHUP
    mailboxes: dict[str, MailboxConfig]
    pid_file: Path  # written by 'pecgw serve', read by 'pecgw reload'; default <vault folder>/pecgw.pid
    log_level: str = "INFO"
    log_format: str = "text"  # "text" or "json" (one object per line, gateway/logs.py)
    shutdown_grace_s: float = 30.0  # SIGTERM: how long running commands may take to finish
    demo: bool = False  # demo installs only: allows 'pecgw otp code'
    smtp: SmtpConfig | None = None  # None: no submission front
    admin: AdminConfig | None = None  # always set by parse_config
    census: CensusConfig = field(default_factory=CensusConfig)


# ------------------------------------------------------------------------------------------
class _Table:
    """A TOML table with typed, key-naming accessors; unknown keys are reported by ``done``."""

    def __init__(self, data: Any, source: Path, prefix: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(source, prefix, "must be a table")
        self.data, self.source, self.prefix, self._used = data, source, prefix, set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), message)

    def _get(self, name: str, default: Any, kinds: tuple, what: str) -> Any:
        self._used.add(name)
        if name not in self.data:
            if default is _REQUIRED:
                raise self.error(name, "missing (required)")
            return default
        value = self.data[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise self.error(name, f"must be {what}, not {type(value).__name__}")
        return value

    def str(self, name: str, default: Any = None, *, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(name, default, (str,), "a string")
        if choices and value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, not {value!r}")
        if isinstance(value, str) and not value and default is _REQUIRED:
            raise self.error(name, "must not be empty")
        return value

    def int(self, name: str, default: Any = None, *, minimum: int = 0, maximum: int = 2**62) -> Any:
        value = self._get(name, default, (int,), "an integer")
        if value is not None and not minimum <= value <= maximum:
            raise self.error(name, f"must be between {minimum} and {maximum}, not {value}")
        return value

    def float(self, name: str, default: Any = None, *, minimum: float = 0.0) -> Any:
        value = self._get(name, default, (int, float), "a number")
        if value is not None and value < minimum:
            raise self.error(name, f"must be at least {minimum}, not {value}")
        return float(value) if value is not None else None

    def bool(self, name: str, default: Any = None) -> Any:
        return self._get(name, default, (bool,), "true or false")

    def strings(self, name: str, default: Any = ()) -> tuple[str, ...]:
        value = self._get(name, list(default), (list,), "a list of strings")
        if not all(isinstance(v, str) for v in value):
            raise self.error(name, "must be a list of strings")
        return tuple(value)

    def path(self, name: str, default: Any = None) -> Any:
        value = self.str(name, default)
        if value is None or isinstance(value, Path):
            return value
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.source.parent / p)

    def table(self, name: str, required: bool = False) -> "_Table | None":
        self._used.add(name)
        if name not in self.data:
            if required:
                raise self.error(name, "missing (required table)")
            return None
        return _Table(self.data[name], self.source, self.key(name))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self._used)
        if unknown:
            raise self.error(unknown[0], "unknown key (check the spelling against config/gateway.example.toml)")


_REQUIRED = object()


def _listener(text: str, t: _Table, name: str, tls: str) -> ListenerConfig:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise t.error(name, f"{text!r} is not host:port")
    return ListenerConfig(host.strip("[]") or "0.0.0.0", int(port), tls)


def _proxy_protocol(t: _Table) -> ProxyProtocolConfig | None:
    """``proxy_protocol``, ``proxy_trusted`` and ``proxy_timeout`` of a listener group."""
    import ipaddress

    enabled = t.bool("proxy_protocol", False)
    trusted = []
    for text in t.strings("proxy_trusted"):
        try:
            trusted.append(ipaddress.ip_network(text))
        except ValueError as exc:
            raise t.error("proxy_trusted", f"{text!r} is not a network such as \"10.0.0.0/8\" ({exc})") from None
    timeout = t.float("proxy_timeout", 5.0, minimum=0.1)
    if not enabled:
        return None
    if not trusted:
        raise t.error("proxy_trusted", "required with proxy_protocol = true: the load balancers' addresses "
                                       "(a PROXY header is never taken from anyone else)")
    return ProxyProtocolConfig(trusted=tuple(trusted), timeout_s=timeout)


def _imap(t: _Table) -> ImapConfig:
    listeners = [_listener(x, t, "listen_tls", "implicit") for x in t.strings("listen_tls")]
    listeners += [_listener(x, t, "listen_starttls", "starttls") for x in t.strings("listen_starttls")]
    if not listeners:
        raise t.error("listen_tls", "no listener configured (set listen_tls and/or listen_starttls)")
    defaults = SessionLimits()
    limits = SessionLimits(
        max_line=t.int("max_line_length", defaults.max_line, minimum=1024),
        max_literal=t.int("max_literal_size", defaults.max_literal, minimum=1024),
        max_in_flight=t.int("max_in_flight", defaults.max_in_flight, minimum=1, maximum=10000),
        max_login_failures=t.int("max_login_failures", defaults.max_login_failures, minimum=1),
    )
    cfg = ImapConfig(
        listeners=tuple(listeners),
        cert_file=t.path("cert_file"),
        key_file=t.path("key_file"),
        tls_min_version=t.str("tls_min_version", "TLSv1.2", choices=("TLSv1.2", "TLSv1.3")),
        plaintext_login=t.bool("insecure_plaintext_login", False),
        limits=limits,
        preauth_timeout_s=t.float("preauth_timeout", 60.0, minimum=1.0),
        idle_timeout_s=t.float("idle_timeout", 1860.0, minimum=1.0),
        proxy_protocol=_proxy_protocol(t),
    )
    if (cfg.cert_file is None) != (cfg.key_file is None):
        raise t.error("cert_file", "cert_file and key_file go together")
    if cfg.cert_file is None and not cfg.plaintext_login:
        raise t.error("cert_file", "required: the gateway serves IMAP over TLS only")
    t.done()
    return cfg


def _smtp(t: _Table, imap: ImapConfig) -> SmtpConfig:
    listeners = [_listener(x, t, "listen_tls", "implicit") for x in t.strings("listen_tls")]
    listeners += [_listener(x, t, "listen_starttls", "starttls") for x in t.strings("listen_starttls")]
    if not listeners:
        raise t.error("listen_tls", "no listener configured (set listen_tls and/or listen_starttls)")
    cert, key = t.path("cert_file", imap.cert_file), t.path("key_file", imap.key_file)
    if cert is None or key is None:
        raise t.error("cert_file", "required (or set [imap] cert_file and key_file): submission is TLS only")
    cfg = SmtpConfig(
        listeners=tuple(listeners), cert_file=cert, key_file=key,
        tls_min_version=t.str("tls_min_version", imap.tls_min_version, choices=("TLSv1.2", "TLSv1.3")),
        max_message_bytes=t.int("max_message_size", 100 * 1000 * 1000, minimum=1024),
        timeout_s=t.float("timeout", 300.0, minimum=1.0),
        preauth_timeout_s=t.float("preauth_timeout", 60.0, minimum=1.0),
        unknown_outcome_wait_s=t.float("unknown_outcome_wait", 600.0, minimum=0.0),
        proxy_protocol=_proxy_protocol(t),
    )
    t.done()
    return cfg


def _submission(t: _Table, imap: UpstreamConfig) -> SubmissionConfig:
    """``[mailboxes.NAME.smtp]``: like the imap table (the username defaults to the IMAP one)."""
    limits = SubmissionConfig(imap)
    cfg = SubmissionConfig(
        upstream=_upstream(t, default_port=465, default_username=imap.username, finish=False),
        max_recipients=t.int("max_recipients", limits.max_recipients, minimum=1),
        max_total_bytes=t.int("max_total_size", limits.max_total_bytes, minimum=1024),
        timeout_s=t.float("timeout", limits.timeout_s, minimum=1.0),
    )
    t.done()
    return cfg


def _upstream(t: _Table, *, default_port: int = 993, default_username: Any = _REQUIRED,
              finish: bool = True) -> UpstreamConfig:
    """A provider server's table; ``finish``: no other keys may be in it."""
    cfg = UpstreamConfig(
        host=t.str("host", _REQUIRED),
        port=t.int("port", default_port, minimum=1, maximum=65535),
        tls=t.str("tls", "implicit", choices=("implicit", "starttls")),
        username=t.str("username", default_username),
        ca_file=t.path("ca_file"),
        server_name=t.str("server_name"),
        connect_timeout_s=t.float("connect_timeout", 10.0, minimum=0.1),
        login_timeout_s=t.float("login_timeout", 20.0, minimum=0.1),
    )
    if finish:
        t.done()
    return cfg


def _ldap(t: _Table) -> LdapConfig:
    d = LdapConfig("", "", "", "", "")
    cfg = LdapConfig(
        url=t.str("url", _REQUIRED),
        bind_dn=t.str("bind_dn", _REQUIRED),
        bind_password_vault_key=t.str("bind_password_vault_key", "ldap/bind"),
        user_base=t.str("user_base", _REQUIRED),
        group_base=t.str("group_base", _REQUIRED),
        user_filter=t.str("user_filter", d.user_filter),
        group_filter=t.str("group_filter", d.group_filter),
        group_name_attribute=t.str("group_name_attribute", d.group_name_attribute),
        display_name_attribute=t.str("display_name_attribute", d.display_name_attribute),
        disabled_filter=t.str("disabled_filter", d.disabled_filter),
        ca_file=t.path("ca_file"),
        start_tls=t.bool("start_tls", False),
        timeout_s=t.float("timeout", 5.0, minimum=0.1),
        username_attribute=t.str("username_attribute", d.username_attribute),
    )
    if "{username}" not in cfg.user_filter:
        raise t.error("user_filter", "must contain {username}")
    t.done()
    return cfg


def _brute_force(t: _Table, failure_delay_s: float) -> BruteForceConfig:
    d = BruteForceConfig()
    cfg = BruteForceConfig(
        window_s=t.float("window", d.window_s, minimum=1.0),
        max_delay_s=t.float("max_delay", d.max_delay_s),
        lockout_after=t.int("lockout_after", d.lockout_after, minimum=1),
        ip_lockout_after=t.int("ip_lockout_after", d.ip_lockout_after),
        person_lockout_after=t.int("person_lockout_after", d.person_lockout_after),
        lockout_duration_s=t.float("lockout_duration", d.lockout_duration_s, minimum=1.0),
    )
    if cfg.max_delay_s < failure_delay_s:
        raise t.error("max_delay", f"must be at least auth.failure_delay ({failure_delay_s}), not {cfg.max_delay_s}")
    t.done()
    return cfg


def _auth(t: _Table) -> AuthConfig:
    backend = t.str("backend", _REQUIRED, choices=("ldap", "static"))
    ldap_t = t.table("ldap", required=backend == "ldap")
    failure_delay_s = t.float("failure_delay", 1.0)
    bf_t = t.table("brute_force")
    cfg = AuthConfig(
        backend=backend,
        ldap=_ldap(ldap_t) if ldap_t is not None else None,
        users_file=t.path("users_file"),
        otp_issuer=t.str("otp_issuer", "PEC Gateway"),
        otp_digits=t.int("otp_digits", 6, minimum=6, maximum=8),
        trust_window_s=t.float("trust_window", 12 * 3600.0),
        failure_delay_s=failure_delay_s,
        brute_force=_brute_force(bf_t, failure_delay_s) if bf_t is not None else BruteForceConfig(),
    )
    if backend == "static" and cfg.users_file is None:
        raise t.error("users_file", "required when backend = \"static\"")
    t.done()
    return cfg


def _dsn_without_password(t: _Table, dsn: str) -> str:
    """``dsn`` checked to be a conninfo (or URI) that carries no password."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError:
        # the parser's message may quote the string, and with it a password: do not repeat it
        raise t.error("postgresql_dsn", "is not a valid libpq connection string or URI") from None
    if params.get("password"):
        raise t.error("postgresql_dsn", "must not contain a password: store it in the vault and name "
                                        "the entry with postgresql_password_vault_key")
    return dsn


def _audit(t: _Table, vault: VaultConfig) -> AuditConfig:
    # Like the pid file, the embedded store and the spool live in the vault's folder: the state
    # folder the gateway must be able to write anyway.
    store = t.str("store", "sqlite", choices=("sqlite", "postgresql"))
    dsn = t.str("postgresql_dsn")
    if store == "postgresql" and not dsn:
        raise t.error("postgresql_dsn", 'required when store = "postgresql"')
    if dsn:
        dsn = _dsn_without_password(t, dsn)
    schema = t.str("postgresql_schema", "public")
    if not schema:
        raise t.error("postgresql_schema", "must not be empty")
    for name in ("sqlite_path", "spool_path", "jsonl_path", "chain_key_vault_key",
                 "postgresql_password_vault_key"):
        if t.data.get(name) == "":
            raise t.error(name, "must not be empty (omit it for the default)")
    cfg = AuditConfig(
        store=store,
        sqlite_path=t.path("sqlite_path", vault.path.parent / "audit.sqlite"),
        postgresql_dsn=dsn,
        postgresql_password_vault_key=t.str("postgresql_password_vault_key"),
        postgresql_schema=schema,
        on_store_failure=t.str("on_store_failure", "fail-closed", choices=("fail-closed", "spool")),
        spool_path=t.path("spool_path", vault.path.parent / "audit-spool.jsonl"),
        chain_key_vault_key=t.str("chain_key_vault_key", "audit/chain-key"),
        jsonl_path=t.path("jsonl_path"),
    )
    if store == "sqlite" and cfg.sqlite_path in (cfg.spool_path, cfg.jsonl_path):
        raise t.error("sqlite_path", "must differ from spool_path and jsonl_path")
    if cfg.spool_path == cfg.jsonl_path:
        raise t.error("spool_path", "must differ from jsonl_path")
    t.done()
    return cfg


def _loopback_listener(t: _Table, name: str, text: str, why: str) -> tuple[str, int]:
    """``host:port`` of a listener that must stay on a loopback address."""
    import ipaddress

    parsed = _listener(text, t, name, "plain")
    try:
        loopback = ipaddress.ip_address(parsed.host).is_loopback
    except ValueError:
        loopback = parsed.host == "localhost"
    if not loopback:
        raise t.error(name, f"{parsed.host} is not a loopback address: {why}")
    return parsed.host, parsed.port


def _admin(t: _Table, vault: VaultConfig) -> AdminConfig:
    if t.data.get("socket") == "":
        t._used.add("socket")
        sock = None
    else:
        sock = t.path("socket", vault.path.parent / "admin.sock")
    if sock is not None and len(os.fsencode(sock)) > 107:  # sun_path is 108 octets on Linux
        raise t.error("socket", f"{sock} is too long for a unix socket (at most 107 octets); "
                                "choose a shorter path, e.g. /run/pecgw/admin.sock")
    mode_text = t.str("socket_mode", "0600")
    if not (len(mode_text) == 4 and mode_text[0] == "0" and all(c in "01234567" for c in mode_text)):
        raise t.error("socket_mode", f"{mode_text!r} is not an octal mode such as \"0600\" or \"0660\"")
    mode = int(mode_text, 8)
    if mode & 0o007:
        raise t.error("socket_mode", "must give nothing to others (the admin socket can revoke anyone)")
    listen = t.str("listen")
    host = port = None
    if listen:
        host, port = _loopback_listener(t, "listen", listen, "the admin channel is never open to the network "
                                                            "(reach it over SSH instead)")
    http = t.str("http_listen", "127.0.0.1:9925")
    http_host = http_port = None
    if http:
        http_host, http_port = _loopback_listener(t, "http_listen", http, "the metrics and health endpoint "
                                                  "stays on loopback (let the scraper reach it through a proxy "
                                                  "or run it on this host)")
    cfg = AdminConfig(socket=sock, socket_mode=mode, socket_group=t.str("socket_group"), listen_host=host,
                      listen_port=port, token_vault_key=t.str("token_vault_key", "admin/token"),
                      revalidate_s=t.float("revalidate_interval", 60.0, minimum=1.0),
                      revocation_poll_s=t.float("revocation_poll", 0.5, minimum=0.1),
                      http_host=http_host, http_port=http_port)
    if cfg.socket is None and cfg.listen_port is None:
        raise t.error("socket", "the admin channel needs a socket or a listen address (pecgw revoke, "
                                "sessions and kick use it)")
    t.done()
    return cfg


def _census(t: _Table) -> CensusConfig:
    d = CensusConfig()
    cfg = CensusConfig(probe_interval_s=t.float("probe_interval", d.probe_interval_s, minimum=0.1),
                       probe_timeout_s=t.float("probe_timeout", d.probe_timeout_s, minimum=0.1),
                       quota_warn=t.float("quota_warn", d.quota_warn, minimum=0.0),
                       unhandled_age_s=t.float("unhandled_age", d.unhandled_age_s))
    if cfg.quota_warn > 1:
        raise t.error("quota_warn", f"is a share of the quota, between 0 and 1 (0.9 = 90%), not {cfg.quota_warn}")
    t.done()
    return cfg


def parse_config(data: dict, source: Path) -> GatewayConfig:
    """Build a :class:`GatewayConfig` from parsed TOML; raises :class:`ConfigError`."""
    root = _Table(data, source, "")
    if "offices" in data:
        raise root.error("offices", "offices are defined in the policy file ([policy] file), "
                                    "together with the folder rights of each office")
    imap = _imap(root.table("imap", required=True))
    auth = _auth(root.table("auth", required=True))
    vt = root.table("vault", required=True)
    vault = VaultConfig(path=vt.path("path", _REQUIRED), key_file=vt.path("key_file"),
                        key_env=vt.str("key_env", "PECGW_VAULT_KEY"))
    vt.done()
    audit = _audit(root.table("audit") or _Table({}, source, "audit"), vault)
    pt = root.table("policy", required=True)
    policy_file = pt.path("file", _REQUIRED)
    pt.done()
    mailboxes: dict[str, MailboxConfig] = {}
    mt = root.table("mailboxes", required=True)
    for name in mt.data:
        if "#" in name:
            raise mt.error(name, "a mailbox name must not contain '#'")
        m = mt.table(name)
        if "offices" in m.data:
            raise m.error("offices", "who may use a mailbox is set in the policy file ([policy] file): "
                                     f"its [mailboxes.{name}] rules and send list")
        upstream = _upstream(m.table("imap", required=True))
        st = m.table("smtp")
        mailboxes[name] = MailboxConfig(
            name=name, address=m.str("address", _REQUIRED), imap=upstream,
            password_vault_key=m.str("password_vault_key", f"mailbox/{name}"),
            smtp=_submission(st, upstream) if st is not None else None)
        m.done()
    if not mailboxes:
        raise mt.error("", "at least one mailbox is required")
    log_level = root.str("log_level", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format = root.str("log_format", "text", choices=("text", "json"))
    shutdown_grace = root.float("shutdown_grace", 30.0)
    demo = root.bool("demo", False)
    # The vault's folder is the one the gateway must be able to write anyway (vault set, OTP
    # enrolment), so the pid file lives there unless the operator says otherwise.
    if data.get("pid_file") == "":
        raise root.error("pid_file", "must not be empty (omit it for the default, next to the vault)")
    pid_file = root.path("pid_file", vault.path.parent / "pecgw.pid")
    smtp_t = root.table("smtp")
    smtp = _smtp(smtp_t, imap) if smtp_t is not None else None
    admin = _admin(root.table("admin") or _Table({}, source, "admin"), vault)
    census = _census(root.table("census") or _Table({}, source, "census"))
    root.done()
    return GatewayConfig(source=source, imap=imap, auth=auth, vault=vault, audit=audit,
                         policy_file=policy_file, mailboxes=mailboxes, pid_file=pid_file,
                         log_level=log_level, log_format=log_format, shutdown_grace_s=shutdown_grace, demo=demo,
                         smtp=smtp, admin=admin, census=census)


def load_config(path: Path | str) -> GatewayConfig:
    """Read and validate a config file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    return parse_config(data, path.resolve())
