"""The gateway's Prometheus metrics (prometheus-client), defined once for every module to update.

They live in prometheus-client's default registry; the admin endpoint serves them at
``/metrics``.  Names follow Prometheus conventions (``_total`` counters, base units); no label
ever carries a person's name or a secret.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
LIVE_SESSIONS = Gauge("pecgw_live_sessions", "Logged-in client sessions", ["protocol"])

# -- mailbox passwords (gateway/mailbox_credentials.py)
MAILBOX_PASSWORD_REFUSED = Gauge(
    "pecgw_mailbox_password_refused", "1 while the PEC provider refuses the mailbox password kept in the vault (no "
    "login to the provider is attempted until the vault entry is set again), 0 otherwise", ["mailbox"])
MAILBOX_LOGINS_BLOCKED = Counter(
    "pecgw_mailbox_logins_blocked_total", "Provider logins not attempted because the provider refused the mailbox "
    "password still in the vault (IMAP, SMTP and the receipt watcher)", ["mailbox"])

# -- logins (gateway/auth/authenticator.py, gateway/auth/throttle.py)
LOGIN_FAILURES = Counter("pecgw_login_failures_total", "Failed logins by internal reason (bad_password, bad_otp, "
                         "locked, ...: the client is told none of them)", ["reason"])
LOGIN_LOCKOUTS = Counter("pecgw_login_lockouts_total", "Login lockouts begun after repeated failures, by scope "
                         "(pair: a name from an address; ip: an address; person: a name from everywhere)", ["scope"])
