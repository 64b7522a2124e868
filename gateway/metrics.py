"""The gateway's Prometheus metrics (prometheus-client), defined once for every module to update.

They live in prometheus-client's default registry; the admin HTTP endpoint
(:mod:`gateway.admin.http`) serves them at ``/metrics`` (:func:`scrape`).  Names follow Prometheus
conventions (``_total`` counters, base units); no label ever carries a person's name, a secret or
text a client chose.  Two kinds are computed at each scrape rather than updated: the live
sessions (from the session registries) and the counters the pure IMAP session keeps as plain
dictionaries (:mod:`gateway.tally`).  The README's "Metrics" table lists them all.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.tally import TALLY

__all__ = ["AUDIT_ACCEPTING", "AUDIT_QUEUE_DEPTH", "AUDIT_ROWS", "AUDIT_SPOOLED_ROWS", "AUDIT_STORE_FAILURES",
           "AUDIT_STORE_UP", "AUDIT_WRITE_SECONDS", "LOGIN_FAILURES", "LOGIN_LOCKOUTS", "MAILBOX_LOGINS_BLOCKED",
           "MAILBOX_PASSWORD_REFUSED"]

AUDIT_ROWS = Counter("pecgw_audit_rows_written_total", "Audit rows committed to the audit store", ["store"])
AUDIT_WRITE_SECONDS = Histogram(
    "pecgw_audit_write_seconds", "Time to append one batch of rows to the audit store", ["store"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
AUDIT_STORE_FAILURES = Counter(
    "pecgw_audit_store_failures_total", "Failed writes to the audit store (the batch is kept and retried)", ["store"])
AUDIT_STORE_UP = Gauge("pecgw_audit_store_up", "1 while the audit store takes rows, 0 while writes fail", ["store"])
AUDIT_ACCEPTING = Gauge(
    "pecgw_audit_accepting", "1 while audited commands are accepted; 0 while the gateway fails closed "
    "(the store failing with on_store_failure = fail-closed, or the spool unwritable)")
AUDIT_SPOOLED_ROWS = Counter("pecgw_audit_spooled_rows_total", "Audit rows written to the spool file while the "
                             "store failed (replayed into the store when it recovers)")
AUDIT_QUEUE_DEPTH = Gauge("pecgw_audit_queue_depth", "Audit rows accepted and not yet in the store or the spool")

# -- access lifecycle (gateway/access_control.py)
SESSIONS_ENDED = Counter("pecgw_sessions_ended_total", "Live sessions the gateway ended: revoked, kicked, "
                         "disabled in the directory, access withdrawn", ["reason"])
REVALIDATION_FAILURES = Counter("pecgw_session_revalidation_failures_total", "Periodic re-validations of live "
                                "sessions that could not ask the directory (the sessions were kept)")
# pecgw_live_sessions{protocol,mailbox} and pecgw_live_office_sessions{...,office}: LiveSessionsCollector below

# -- mailbox passwords (gateway/mailbox_credentials.py)
MAILBOX_PASSWORD_REFUSED = Gauge(
    "pecgw_mailbox_password_refused", "1 while the PEC provider refuses the mailbox password kept in the vault (no "
    "login to the provider is attempted until the vault entry is set again), 0 otherwise", ["mailbox"])
MAILBOX_LOGINS_BLOCKED = Counter(
    "pecgw_mailbox_logins_blocked_total", "Provider logins not attempted because the provider refused the mailbox "
    "password still in the vault (IMAP, SMTP and the receipt watcher)", ["mailbox"])

# -- mailbox census (gateway/mailbox_census.py: the periodic probe of each provider)
MAILBOX_UP = Gauge("pecgw_mailbox_up", "1 when the last probe logged in to the mailbox's provider with the vaulted "
                   "password, 0 when it could not (unreachable, timeout, password refused or missing)", ["mailbox"])
MAILBOX_QUOTA_USED_BYTES = Gauge("pecgw_mailbox_quota_used_bytes", "Storage used at the provider (IMAP QUOTA)",
                                 ["mailbox"])
MAILBOX_QUOTA_LIMIT_BYTES = Gauge("pecgw_mailbox_quota_limit_bytes", "Storage limit at the provider (IMAP QUOTA)",
                                  ["mailbox"])
MAILBOX_QUOTA_USED_RATIO = Gauge("pecgw_mailbox_quota_used_ratio", "Share of the provider's storage quota used "
                                 "(0-1); a full PEC mailbox bounces incoming PEC", ["mailbox"])
MAILBOX_QUOTA_OVER = Gauge("pecgw_mailbox_quota_over_threshold", "1 while the quota used is at or above [census] "
                           "quota_warn, 0 otherwise", ["mailbox"])
MAILBOX_INBOX_MESSAGES = Gauge("pecgw_mailbox_inbox_messages", "Messages in the mailbox's INBOX", ["mailbox"])
MAILBOX_UNHANDLED_PEC = Gauge("pecgw_mailbox_unhandled_pec", "Unseen incoming PEC (busta di trasporto) in INBOX "
                              "older than [census] unhandled_age", ["mailbox"])

# -- logins (gateway/auth/authenticator.py, gateway/auth/throttle.py)
LOGIN_FAILURES = Counter("pecgw_login_failures_total", "Failed authentications (directory password, OTP code, "
                         "lockout) by protocol and internal reason (bad_password, bad_otp, locked, ...: the client "
                         "is told none of them)", ["protocol", "reason"])
LOGIN_LOCKOUTS = Counter("pecgw_login_lockouts_total", "Login lockouts begun after repeated failures, by scope "
                         "(pair: a name from an address; ip: an address; person: a name from everywhere)", ["scope"])


# -- logins, as the client saw them (IMAP server, SMTP handler): success, or which failure
LOGINS = Counter("pecgw_logins_total", "Logins by protocol and outcome: result success or failure, reason the "
                 "internal class (ok, trusted; bad_password, bad_otp, locked, revoked, no_mailbox, "
                 "directory_unavailable, mailbox_password_refused, upstream_timeout, ...)",
                 ["protocol", "result", "reason"])

# -- IT's levers (gateway/access_control.py)
REVOCATIONS = Counter("pecgw_revocations_total", "Revocations made (revoke) and lifted (lift) on this instance",
                      ["action"])

# -- commands (gateway/imap_proxy/session.py, gateway/smtp_proxy/handler.py); the IMAP session is
# pure, so these three are plain counters in gateway/tally.py, exported by TallyCollector below
TALLIED = {
    "pecgw_imap_commands_total": (
        "IMAP commands after login by name (UID FETCH apart from FETCH; other: not a known command; unparsed: "
        "no valid command) and tagged result (OK, NO, BAD; none: the session ended first)", ("command", "result")),
    "pecgw_denials_total": (
        "Commands refused by the policy, by rule (IMAP: the response code, e.g. noperm; SMTP: the sending rule, "
        "e.g. recipient_deny)", ("protocol", "command", "rule")),
    "pecgw_relayed_bytes_total": (
        "Octets exchanged with clients (IMAP: everything each way; SMTP: the messages submitted, from_client)",
        ("protocol", "direction")),
}
SMTP_COMMANDS = Counter("pecgw_smtp_commands_total", "SMTP commands the gateway decides (AUTH, MAIL, RCPT, DATA) "
                        "by reply class (2xx, 4xx, 5xx; none: the client aborted)", ["command", "result"])

# -- the provider (IMAP server, SMTP handler, receipt watcher)
UPSTREAM_LOGIN_SECONDS = Histogram(
    "pecgw_upstream_login_seconds", "Time to open a provider session (connect, TLS, login with the vaulted "
    "password), successful ones", ["protocol", "mailbox"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30))
UPSTREAM_LOGIN_ERRORS = Counter(
    "pecgw_upstream_login_errors_total", "Provider sessions that could not be opened, by kind (unreachable, "
    "timeout, tls, protocol, login_refused, ...)", ["protocol", "mailbox", "kind"])

# -- sending PEC (gateway/smtp_proxy/handler.py, gateway/sends/watcher.py)
SMTP_SENDS = Counter("pecgw_smtp_sends_total", "PEC submissions by result: relayed (the provider took it), "
                     "refused (it said no), unknown (no answer: outcome unknown), duplicate (a retry of one "
                     "already sent, answered without sending)", ["mailbox", "result"])
RECEIPTS = Counter("pecgw_receipts_total", "Provider receipts linked to a send by the receipt watcher, by tipo "
                   "(accettazione, avvenuta-consegna, mancata-consegna, ...)", ["mailbox", "tipo"])


UPSTREAM_ERROR_KINDS = ("unreachable", "timeout", "tls", "protocol", "login_refused")


def prepare_series(mailboxes: dict) -> None:
    """Create the series alerts watch at 0, so their first increase is seen (``increase()`` of a
    series that appears at 1 is 0): revocations, and per configured mailbox the provider login
    errors and the send results."""
    for action in ("revoke", "lift"):
        REVOCATIONS.labels(action)
    for name, mailbox in mailboxes.items():
        protocols = ("imap", "smtp", "watcher") if getattr(mailbox, "smtp", None) is not None else ("imap",)
        for protocol in protocols:
            for kind in UPSTREAM_ERROR_KINDS:
                UPSTREAM_LOGIN_ERRORS.labels(protocol, name, kind)
        if "smtp" in protocols:
            for result in ("relayed", "refused", "unknown", "duplicate"):
                SMTP_SENDS.labels(name, result)


def count_login(protocol: str, ok: bool, reason: str) -> None:
    """One login's outcome; ``reason`` is an internal class (never a name: unknown text is 'other')."""
    if not reason or len(reason) > 48 or not reason.replace("_", "").isalnum():
        reason = "other"
    LOGINS.labels(protocol, "success" if ok else "failure", reason).inc()


def count_smtp_command(command: str, reply: object) -> None:
    """One SMTP command's reply (``"250 ..."``) by class."""
    text = reply if isinstance(reply, str) else ""
    SMTP_COMMANDS.labels(command, f"{text[0]}xx" if text[:1] in ("2", "3", "4", "5") else "none").inc()


@contextmanager
def upstream_login(protocol: str, mailbox: str) -> Iterator[None]:
    """Time one provider login: its duration when it works, its error's ``kind`` when it raises."""
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:
        UPSTREAM_LOGIN_ERRORS.labels(protocol, mailbox, str(getattr(exc, "kind", "other"))).inc()
        raise
    UPSTREAM_LOGIN_SECONDS.labels(protocol, mailbox).observe(time.perf_counter() - started)


class LiveSessionsCollector(Collector):
    """``pecgw_live_sessions{protocol,mailbox}`` and ``pecgw_live_office_sessions{protocol,mailbox,office}``,
    counted from the live-session registries (:class:`~gateway.live_sessions.SessionRegistry`) at
    each scrape, so they are never out of step with ``pecgw sessions``.

    Every configured mailbox has its IMAP and SMTP series, 0 when nobody is connected (an alert
    on "no sessions during office hours" then sees a 0, not a missing series).  A session acting
    for two offices counts once in ``pecgw_live_sessions`` and once per office in the other.
    Several gateways in one process (tests) add up.
    """

    def __init__(self) -> None:
        self._sources: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # registry -> mailbox names

    def watch(self, registry, mailboxes: Iterable[str]) -> None:
        self._sources[registry] = tuple(mailboxes)

    def unwatch(self, registry) -> None:
        self._sources.pop(registry, None)

    def collect(self):
        sessions: dict[tuple[str, str], int] = {}
        offices: dict[tuple[str, str, str], int] = {}
        for registry, mailboxes in list(self._sources.items()):
            for name in mailboxes:
                for protocol in ("imap", "smtp"):
                    sessions.setdefault((protocol, name), 0)
            for s in registry:
                key = (s.protocol, s.mailbox)
                sessions[key] = sessions.get(key, 0) + 1
                for office in s.offices:
                    okey = (s.protocol, s.mailbox, office)
                    offices[okey] = offices.get(okey, 0) + 1
        total = GaugeMetricFamily("pecgw_live_sessions", "Logged-in client sessions by protocol and mailbox",
                                  labels=["protocol", "mailbox"])
        for (protocol, mailbox), n in sorted(sessions.items()):
            total.add_metric([protocol, mailbox], n)
        by_office = GaugeMetricFamily("pecgw_live_office_sessions", "Logged-in client sessions by protocol, mailbox "
                                      "and the office they act for (a session counts once per office)",
                                      labels=["protocol", "mailbox", "office"])
        for (protocol, mailbox, office), n in sorted(offices.items()):
            by_office.add_metric([protocol, mailbox, office], n)
        yield total
        yield by_office

    def describe(self):
        return [GaugeMetricFamily("pecgw_live_sessions", "", labels=["protocol", "mailbox"]),
                GaugeMetricFamily("pecgw_live_office_sessions", "", labels=["protocol", "mailbox", "office"])]


class TallyCollector(Collector):
    """The counters of :data:`gateway.tally.TALLY` named in :data:`TALLIED`, as Prometheus counters."""

    def collect(self):
        for name, (doc, labels) in TALLIED.items():
            family = CounterMetricFamily(name, doc, labels=list(labels))
            for values, count in sorted(TALLY.snapshot(name).items()):
                family.add_metric(list(values), count)
            yield family

    def describe(self):
        return [CounterMetricFamily(name, doc, labels=list(labels)) for name, (doc, labels) in TALLIED.items()]


LIVE_SESSIONS = LiveSessionsCollector()
REGISTRY.register(LIVE_SESSIONS)
REGISTRY.register(TallyCollector())


async def scrape() -> tuple[int, str, bytes]:
    """The ``/metrics`` route of the HTTP endpoint: every metric, in Prometheus' text format."""
    return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
