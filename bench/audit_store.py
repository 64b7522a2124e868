"""Audit store benchmark: append rate and auditor query times of each store, on synthetic rows.

Usage, from the repository root::

    python bench/audit_store.py [--rows N] [--batch B] [--stores sqlite,postgres] [--pg CONNINFO]
                                [--queries Q] [--no-analyze] [--no-verify]

What it does, for each store: creates it empty (SQLite in a temporary directory; PostgreSQL in a
throwaway schema of ``--pg``, default the test database, dropped at the end), appends N (200k)
synthetic events in batches of B (500) — one year of a 200-person, 20-office site, one event per
message with Message-ID and PEC identificativo — and prints events per second (the time spent in
``append``: flattening, HMAC chain, insert, commit; building the events is not counted).  Then,
after ``ANALYZE`` (as autovacuum or a nightly job would have run), Q (7) runs of each
representative auditor query with different values, reporting the median and worst time and the
rows returned: one person over one week, one Message-ID, one PEC identificativo, one mailbox
folder over one day, one office's logins over one month.  Finally the time of a full ``verify``.

Use ``--rows 1000000`` for the issue's "a query over a million rows answers well under a
second".  This is a script, not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.audit.events import AuditEvent, MessageRef  # noqa: E402

KEY = secrets.token_bytes(32)
START = dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc)
SPAN = dt.timedelta(days=365)
PERSONS = [f"user{n:03d}" for n in range(200)]
OFFICES = [f"office{n:02d}" for n in range(20)]
MAILBOXES = [f"ufficio{n:02d}@pec.example.it" for n in range(50)]
FOLDERS = ["INBOX", "INBOX/Tribunale", "Sent", "Archivio", "Ricevute", "Trash"]
ACTIONS = ["fetch"] * 6 + ["flags"] * 2 + ["select", "move", "copy", "expunge", "login", "logout"]
KINDS = ["posta-certificata", "accettazione", "avvenuta-consegna", None]


def message_id(n: int) -> str:
    return f"<m{n}.{n * 7919 % 100003}@pec.example.it>"


def pec_id(n: int) -> str:
    return f"opec{n:08d}.20250301.{n % 977:04d}@pec.example.it"


def events(rows: int, batch: int, seed: int = 1):
    """Batches of synthetic events in time order; about three events per message."""
    rnd = random.Random(seed)
    step = SPAN / rows
    for start in range(0, rows, batch):
        out = []
        for n in range(start, min(start + batch, rows)):
            person = rnd.randrange(len(PERSONS))
            action = rnd.choice(ACTIONS)
            msg = None
            if action not in ("login", "logout", "select"):
                m = n // 3
                msg = MessageRef(uidvalidity=1700000000, uid=m + 1, message_id=message_id(m),
                                 subject=f"POSTA CERTIFICATA: pratica {m}", sender="mittente@pec.example.it",
                                 date="Tue, 3 Mar 2026 10:00:00 +0100", pec_kind=KINDS[m % 4],
                                 pec_id=pec_id(m), pec_ref=None)
            out.append(AuditEvent(
                when=START + step * n, session_id=f"s{n // 40}", protocol="imap", action=action,
                decision="allow", person=PERSONS[person], offices=(OFFICES[person % 20],),
                mailbox=MAILBOXES[person % 50], folder=rnd.choice(FOLDERS), client_ip="192.0.2.7",
                client_name="Thunderbird 128.3", detail={"body": action == "fetch"}, message=msg))
        yield out


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def queries(rows: int, count: int) -> dict[str, list[dict]]:
    """``count`` filter sets per query kind, spread over the data."""
    rnd = random.Random(2)
    week, day, month = dt.timedelta(days=7), dt.timedelta(days=1), dt.timedelta(days=30)

    def at():
        return START + SPAN * rnd.uniform(0.05, 0.9)

    out: dict[str, list[dict]] = {
        "person + 1 week": [], "message_id": [], "pec_id": [], "mailbox/folder + 1 day": [],
        "office logins + 1 month": []}
    for _ in range(count):
        t = at()
        out["person + 1 week"].append(dict(person=rnd.choice(PERSONS), since=t, until=t + week))
        out["message_id"].append(dict(message_id=message_id(rnd.randrange(rows // 3))))
        out["pec_id"].append(dict(pec_id=pec_id(rnd.randrange(rows // 3))))
        out["mailbox/folder + 1 day"].append(dict(mailbox=rnd.choice(MAILBOXES), folder="INBOX",
                                                  since=t, until=t + day))
        out["office logins + 1 month"].append(dict(office=rnd.choice(OFFICES), action="login",
                                                   since=t, until=t + month))
    return out


def run(name: str, store, analyze, args) -> None:
    spent = 0.0
    for batch in events(args.rows, args.batch):
        t, _ = timed(lambda: store.append(batch))
        spent += t
    print(f"\n{name}: append {args.rows} events in batches of {args.batch}: {spent:.1f} s, "
          f"{args.rows / spent:,.0f} events/s")
    if args.analyze:
        t, _ = timed(analyze)
        print(f"  ANALYZE: {t:.2f} s")
    print(f"  {'query':<26} {'median':>9} {'worst':>9}  rows (median)")
    for label, filter_sets in queries(args.rows, args.queries).items():
        times, counts = [], []
        for filters in filter_sets:
            t, rows = timed(lambda: store.query(**filters))
            times.append(t)
            counts.append(len(rows))
        print(f"  {label:<26} {statistics.median(times) * 1000:7.1f}ms {max(times) * 1000:7.1f}ms"
              f"  {statistics.median(counts):g}")
    if args.verify:
        t, report = timed(store.verify)
        print(f"  verify: {t:.1f} s, {report.rows / t:,.0f} rows/s, {'ok' if report.ok else report}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--pg", default=os.environ.get("PECGW_TEST_POSTGRES",
                                                       "host=127.0.0.1 port=5432 dbname=test user=postgres"))
    parser.add_argument("--queries", type=int, default=7)
    parser.add_argument("--no-analyze", dest="analyze", action="store_false")
    parser.add_argument("--no-verify", dest="verify", action="store_false")
    args = parser.parse_args()
    print(f"audit store benchmark: {args.rows} rows, Python {sys.version.split()[0]}, "
          f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs")
    for name in args.stores.split(","):
        if name == "sqlite":
            from gateway.audit.sqlite_store import SqliteStore
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "audit.db"
                store = SqliteStore(path, KEY)

                def analyze():
                    db = sqlite3.connect(path)
                    db.execute("ANALYZE")
                    db.close()
                try:
                    run("SQLite (WAL, synchronous=FULL)", store, analyze, args)
                    print(f"  file: {path.stat().st_size / 2**20:.0f} MiB")
                finally:
                    store.close()
        elif name == "postgres":
            import psycopg

            from gateway.audit.postgres_store import PostgresStore
            schema = f"audit_bench_{secrets.token_hex(4)}"
            store = PostgresStore(args.pg, KEY, schema=schema)
            admin = psycopg.connect(args.pg, autocommit=True)
            try:
                version = admin.execute("SHOW server_version").fetchone()[0]
                run(f"PostgreSQL {version}", store, lambda: admin.execute(f'ANALYZE "{schema}".audit'), args)
                size = admin.execute(f"SELECT pg_total_relation_size('\"{schema}\".audit')").fetchone()[0]
                print(f"  table + indexes: {size / 2**20:.0f} MiB")
            finally:
                store.close()
                admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                admin.close()
        else:
            parser.error(f"unknown store {name!r}")


if __name__ == "__main__":
    main()
