"""IMAP relay benchmark: the gateway against the Dovecot behind it, measured in the same run.

Usage, from the repository root::

    python bench/imap_relay.py [--messages N] [--size BYTES] [--small M] [--rounds R] [--noops K]
                               [--loop asyncio|uvloop] [--profile PREFIX]
                               [--audit jsonl|sqlite|postgresql|all] [--pg CONNINFO]

What it does: starts a throwaway Dovecot (tests/fixtures/dovecot.py), seeds one PEC mailbox with
N realistic PEC messages (``busta di trasporto`` with a signed envelope and a PDF-sized attachment)
of about BYTES each plus M small receipts mixed in, starts a real gateway in front of it
(tests/fixtures/gateway.py, static directory, log level WARNING), and then, R rounds, alternating
the order direct/gateway each round to cancel drift:

* bulk: a fresh connection, LOGIN, EXAMINE INBOX, then the timed ``UID FETCH 1:* BODY.PEEK[]``
  from sending the command to reading its tagged OK;
* latency: one connection, K sequential ``NOOP`` round trips, each timed.

The measuring client (bench/imap_client.py) is a raw ``ssl`` socket in a separate process; see
there why.  Before timing, one verification pass checks that the bytes received through the
gateway equal the direct ones (SHA-256 of everything before the tagged OK), and every timed fetch
checks its octet and literal counts against that pass.  CPU time per fetch of the client, the
gateway's thread and all Dovecot processes (from ``/proc/<pid>/schedstat``) is reported next to
the throughput, to tell a slow gateway from a machine with too few cores.

Targets (issue 1): throughput through the gateway >= 0.8 x direct; median added NOOP latency
<= 1 ms.  This is a script, not a test: nothing here asserts on time.

With ``--audit`` (issue 4) the rounds measure instead the gateway's bulk fetch with auditing off
(a null sink swapped in on the running gateway) and with each chosen store on (a writer in front
of a JSON-lines file, SQLite in the temporary directory, PostgreSQL in a throwaway schema of
``--pg``), interleaved with the direct fetch, and report the throughput ratio on/off per store
(target >= 0.9) and the audit events per second each store took while relaying.  No NOOPs then.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import signal
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.imap_client import Worker  # noqa: E402  (needs ROOT on sys.path)

THROUGHPUT_TARGET = 0.8  # gateway / direct
AUDIT_TARGET = 0.9  # gateway with auditing on / off (issue 4)
AUDIT_STORES = ("jsonl", "sqlite", "postgresql")
DEFAULT_PG = os.environ.get("PECGW_TEST_POSTGRES", "host=127.0.0.1 dbname=test user=postgres")
LATENCY_TARGET_MS = 1.0  # median added NOOP round trip
MB = 1_000_000

def make_messages(address: str, count: int, size: int, small: int) -> tuple[list[bytes], int, int]:
    """``count`` PEC buste of about ``size`` octets, ``small`` receipts interleaved evenly.

    Returns the messages in mailbox order and the mean sizes of the large and the small ones."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    from gateway.demo.pec_samples import (Invio, busta_trasporto, make_gestore, ricevuta_accettazione,
                                          ricevuta_avvenuta_consegna)

    gestore = make_gestore("posta-certificata@pec.example.it")
    rome = ZoneInfo("Europe/Rome")
    start = dt.datetime(2025, 3, 3, 8, 0, 0, tzinfo=rome)
    fornitore = "amministrazione@pec.fornitore.example.it"

    def invio(i: int, payload: bytes = b"") -> "Invio":
        allegati = (((f"Fattura_{i:04d}_2025.pdf", "application/pdf", payload),) if payload else ())
        return Invio(fornitore, (address,), f"Fattura n. {i}/2025 - documentazione allegata",
                     start + dt.timedelta(minutes=7 * i),
                     f"Buongiorno,\nin allegato la fattura n. {i}/2025 e la documentazione.\n"
                     "Cordiali saluti,\nl'Amministrazione\n", allegati=allegati, seed="bench")

    # base64 in 76-column CRLF lines: 57 octets of attachment become 78 octets of message.
    overhead = len(busta_trasporto(invio(0, b"x"), gestore))
    payload_len = max(1, (size - overhead) * 57 // 78)
    big = [busta_trasporto(invio(i, os.urandom(payload_len)), gestore) for i in range(count)]
    smalls = []
    for j in range(small):
        send = Invio(address, (f"ufficio{j}@pec.comune-esempio.example.it",), f"Istanza n. {j}/2025",
                     start + dt.timedelta(minutes=11 * j), "Si trasmette l'istanza in oggetto.\n",
                     seed="bench")
        smalls.append(ricevuta_accettazione(send, gestore) if j % 2 == 0
                      else ricevuta_avvenuta_consegna(send, send.destinatari[0], gestore))
    big_mean = sum(map(len, big)) // len(big)
    small_mean = sum(map(len, smalls)) // len(smalls) if smalls else 0
    out: list[bytes] = []
    every = max(1, count // small) if small else 0
    for i, message in enumerate(big):
        out.append(message)
        if small and (i + 1) % every == 0 and smalls:
            out.append(smalls.pop())
    out.extend(smalls)
    return out, big_mean, small_mean


def start_gateway(stack: contextlib.ExitStack, workdir: Path, pki, dovecot, address: str,
                  mailbox_password: str, user_password: str, loop: str = "asyncio",
                  audit: dict | None = None):
    from gateway.auth.passwords import hash_password
    from gateway.secret import Secret
    from tests.fixtures.gateway import GatewayHarness, office_policy, toml_value

    users = workdir / "users.toml"
    users.write_text(f"[users.bench]\npassword = {toml_value(hash_password(Secret(user_password)))}\n"
                     f'groups = ["bench"]\n', encoding="utf-8")
    h = GatewayHarness(workdir / "gw", pki)
    h.vault.set("mailbox/bench", Secret(mailbox_password))
    h.enroll("bench")
    tables = h.base_tables(
        directory={"backend": "static", "users_file": str(users)},
        policy=office_policy({"bench": {"groups": ["bench"]}}, {"bench": ["bench"]}),
        mailboxes={"bench": {"address": address, "imap": {
            "host": "127.0.0.1", "port": dovecot.port, "tls": "implicit", "username": address,
            "ca_file": str(pki.ca_cert), "server_name": "localhost"}}},
        imap={"listen_starttls": []},
    )
    tables["log_level"] = "WARNING"
    if audit is not None:
        tables["audit"] = audit
    if loop == "uvloop":  # an experiment: the gateway's loop from uvloop instead of asyncio's
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    h.start(tables)
    stack.callback(h.stop)
    return h


class CpuMeter:
    """CPU time (ns, from /proc/<pid>/schedstat) of the gateway's thread and of all Dovecot
    processes (the process group of its master), to see who uses the machine's cores."""

    def __init__(self, gateway_tid: int, dovecot_pgid: int) -> None:
        self.gateway_tid = gateway_tid
        self.dovecot_pgid = dovecot_pgid

    @staticmethod
    def _ns(path: str) -> int:
        try:
            with open(path) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def _dovecot(self) -> dict[int, int]:
        out = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == self.dovecot_pgid:
                out[int(entry)] = self._ns(f"/proc/{entry}/schedstat")
        return out

    def snapshot(self) -> tuple[int, dict[int, int]]:
        return self._ns(f"/proc/self/task/{self.gateway_tid}/schedstat"), self._dovecot()

    @staticmethod
    def delta(before, after) -> tuple[int, int]:
        gateway = after[0] - before[0]
        dovecot = sum(ns - before[1].get(pid, 0) for pid, ns in after[1].items())
        return gateway, dovecot


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def run(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from tests.fixtures.dovecot import DovecotServer
    from tests.fixtures.pki import make_pki

    print("PEC gateway: IMAP relay benchmark (gateway vs. direct Dovecot, same run)")
    print(f"machine: nproc={os.cpu_count()} (usable {len(os.sched_getaffinity(0))}), "
          f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
          f"{platform.system()} {platform.release()}, {ssl.OPENSSL_VERSION}")
    print(f"parameters: --messages {args.messages} --size {args.size} --small {args.small} "
          f"--rounds {args.rounds} --noops {args.noops}"
          + (f" --loop {args.loop}" if args.loop != "asyncio" else "")
          + (f" --profile {args.profile}" if args.profile else "")
          + (f" --audit {args.audit}" if args.audit else ""))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work on the "
          f"machine makes the numbers noisy)")
    if len(os.sched_getaffinity(0)) < 4:
        print("note: fewer than 4 CPUs: client, gateway and Dovecot compete for cores, so the throughput "
              "ratio also measures the gateway's CPU cost (see bench/README.md)")
    sys.stdout.flush()

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-imap-")))
        pki = make_pki(tmp / "pki")
        t0 = time.monotonic()
        dovecot = DovecotServer(pki)
        dovecot.start()
        stack.callback(dovecot.stop)
        worker = Worker()
        stack.callback(worker.stop)

        address = "protocollo-bench@pec.example.it"
        mailbox_password = secrets.token_urlsafe(12)
        user_password = "bench-" + secrets.token_hex(8)
        messages, big_mean, small_mean = make_messages(address, args.messages, args.size, args.small)
        dovecot.add_mailbox(address, mailbox_password, {"INBOX": messages})
        print(f"mailbox: {len(messages)} messages, {sum(map(len, messages)) / MB:.1f} MB "
              f"({args.messages} PEC buste of ~{big_mean / 1024:.1f} KiB, {args.small} receipts of "
              f"~{small_mean / 1024:.1f} KiB, interleaved); seeded in {time.monotonic() - t0:.1f} s")

        # --audit: the gateway's own sink is an SQLite store without the JSON-lines copy; the
        # measured sinks are built next to it (AuditBench) and swapped in round by round.
        gw = start_gateway(stack, tmp, pki, dovecot, address, mailbox_password, user_password, args.loop,
                           audit={"sqlite_path": str(tmp / "gw" / "audit.sqlite")} if args.audit else None)
        direct = {"port": dovecot.port, "ca_file": str(pki.ca_cert), "user": address,
                  "password": mailbox_password}
        via = {"port": gw.ports["implicit"], "ca_file": str(pki.ca_cert), "user": "bench",
               "password": gw.credential("bench", user_password)}  # reused inside the trust window
        targets = {"direct": direct, "gateway": via}

        # -- verification pass (also warms Dovecot's and the kernel's caches) --------------
        v_direct = worker.measure("verify", direct)
        v_gw = worker.measure("verify", via)
        same = v_direct == v_gw
        print(f"verify: UID FETCH 1:* BODY.PEEK[] through the gateway "
              f"{'==' if same else '!='} direct: {v_direct['literals']} literals, "
              f"{v_direct['payload']:,} octets before the tagged OK, sha256 {v_direct['sha256'][:16]}"
              + ("" if same else f" (gateway: {v_gw})"))
        if not same:
            print("ERROR: the gateway altered the bytes; timings would be meaningless")
            return 1

        import threading

        gateway_tid = gw.call(_async(threading.get_native_id))
        meter = CpuMeter(gateway_tid, int((dovecot.directory / "run" / "master.pid").read_text()))
        if args.audit:
            return audit_rounds(args, stack, tmp, gw, worker, meter, direct, via, v_direct)
        profilers = {}
        if args.profile:
            import cProfile

            profilers = {"fetch": cProfile.Profile(), "noop": cProfile.Profile()}

        # -- rounds ------------------------------------------------------------------------
        fetch = {"direct": [], "gateway": []}  # MB/s per round
        cpu = {"direct": [], "gateway": []}  # per fetch: (wall, client, gateway, dovecot) ns
        noops = {"direct": [], "gateway": []}  # ms, all samples
        rows = []

        def timed(name: str, what: str, job: str, target: dict, **kwargs) -> dict:
            """Open a connection, run one timed job (CPU metered, gateway profiled if asked)."""
            conn = worker.run("open", **target)
            try:
                profiler = profilers.get(what) if name == "gateway" else None
                if profiler is not None:
                    gw.call(_async(profiler.enable))
                before = meter.snapshot()
                res = worker.run(job, conn=conn, **kwargs)
                res["gateway_cpu_ns"], res["dovecot_cpu_ns"] = meter.delta(before, meter.snapshot())
                if profiler is not None:
                    gw.call(_async(profiler.disable))
                return res
            finally:
                worker.run("close", conn=conn)

        for r in range(args.rounds):
            order = ("direct", "gateway") if r % 2 == 0 else ("gateway", "direct")
            row = {}
            for name in order:
                res = timed(name, "fetch", "fetch", targets[name])
                if res["payload"] != v_direct["payload"] or res["literal_bytes"] != v_direct["literal_bytes"]:
                    print(f"ERROR: round {r + 1} {name}: {res['payload']} octets, expected {v_direct['payload']}")
                    return 1
                fetch[name].append(res["payload"] / MB / (res["ns"] / 1e9))
                cpu[name].append((res["ns"], res["cpu_ns"], res["gateway_cpu_ns"] if name == "gateway" else 0,
                                  res["dovecot_cpu_ns"]))
                row[name + "_mbps"] = fetch[name][-1]
            for name in order:
                res = timed(name, "noop", "noops", targets[name], count=args.noops, warmup=min(50, args.noops))
                ms = [ns / 1e6 for ns in res["ns"]]
                noops[name].extend(ms)
                row[name + "_noop"] = statistics.median(ms)
            rows.append(row)

        # -- report ------------------------------------------------------------------------
        print()
        print("round   direct MB/s  gateway MB/s  ratio   NOOP direct ms  gateway ms  added ms")
        for i, row in enumerate(rows, 1):
            print(f"{i:>5}  {row['direct_mbps']:>11.1f}  {row['gateway_mbps']:>12.1f}  "
                  f"{row['gateway_mbps'] / row['direct_mbps']:>5.2f}   {row['direct_noop']:>14.3f}  "
                  f"{row['gateway_noop']:>10.3f}  {row['gateway_noop'] - row['direct_noop']:>8.3f}")

        d_med, g_med = statistics.median(fetch["direct"]), statistics.median(fetch["gateway"])
        ratio = g_med / d_med
        print()
        print(f"bulk UID FETCH 1:* BODY.PEEK[]: {v_direct['payload'] / MB:.1f} MB per fetch, "
              f"{args.rounds} fetches each (MB = 10^6 octets; CPU from /proc/*/schedstat)")
        ncpu = len(os.sched_getaffinity(0))
        print("             median MB/s   best MB/s   wall ms   CPU ms per fetch: client  gateway  dovecot"
              "   cores busy")
        for name, med in (("direct", d_med), ("gateway", g_med)):
            wall, client, gateway, dove = (statistics.median(x) / 1e6 for x in zip(*cpu[name]))
            busy = statistics.median((c + g + d) / w for w, c, g, d in cpu[name])
            gateway_text = f"{gateway:.0f}" if name == "gateway" else "-"
            print(f"  {name:<9}  {med:>11.1f}   {max(fetch[name]):>9.1f}   {wall:>7.0f}   {'':>16} {client:>6.0f}"
                  f"  {gateway_text:>7}  {dove:>7.0f}   {busy:.2f} of {ncpu}")
        paired = [row["gateway_mbps"] / row["direct_mbps"] for row in rows]
        print(f"  per-round ratios: median {statistics.median(paired):.2f}, range {min(paired):.2f}-{max(paired):.2f}")
        print(f"  throughput ratio gateway/direct (median MB/s): {ratio:.2f}   "
              f"target >= {THROUGHPUT_TARGET:.2f}   {_verdict(ratio >= THROUGHPUT_TARGET)}")

        dn, gn = noops["direct"], noops["gateway"]
        added = statistics.median(gn) - statistics.median(dn)
        print()
        print(f"NOOP round trip: {len(dn)} samples each ({args.rounds} x {args.noops}, one connection per round)")
        print("             median ms   p95 ms")
        print(f"  direct     {statistics.median(dn):>9.3f}   {_pct(dn, 0.95):>6.3f}")
        print(f"  gateway    {statistics.median(gn):>9.3f}   {_pct(gn, 0.95):>6.3f}")
        print(f"  median added latency (gateway - direct): {added:.3f} ms   "
              f"target <= {LATENCY_TARGET_MS:.3f} ms   {_verdict(added <= LATENCY_TARGET_MS)}")

        if profilers:
            import pstats

            print()
            print("(timings above are slowed down by the profiler)")
            for what, profiler in profilers.items():
                path = f"{args.profile}-{what}.pstats"
                profiler.dump_stats(path)
                print(f"\n== gateway thread profile during the gateway {what} measurements -> {path}")
                pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(args.profile_top)
    return 0


# -- --audit: auditing off vs on --------------------------------------------------------------

class NullSink:
    """Auditing off: takes every event and does nothing with it; always accepting, never behind."""

    accepting = True
    depth = 0

    def emit(self, event) -> None:
        pass

    def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class AuditBench:
    """The sinks measured with ``--audit``, built on the running gateway's loop with the
    gateway's own functions (``gateway.audit.setup``) and swapped in as its sink round by round.

    Every connection reaches the sink through ``Services.audit`` at each event (``self.s.audit``
    in ``imap_proxy/server.py``, also for ``accepting``), so a swap takes effect for the next
    event of every session; ``Gateway.audit`` is swapped too and restored before the gateway stops,
    so its own sink is the one it closes."""

    def __init__(self, gw, stores: tuple[str, ...], tmp: Path, pg: str) -> None:
        self.gw = gw
        self.g = gw.gateway
        self.own = self.g.audit  # the gateway's configured sink (SQLite, tmp/gw/audit.sqlite)
        self.stores = stores
        self.tmp = tmp
        self.pg = pg
        self.schema = f"bench_relay_audit_{secrets.token_hex(4)}"
        self.sinks: dict[str, object] = {"off": NullSink()}
        # per store: rows the store committed and the time spent committing them (writer busy)
        self.written: dict[str, dict[str, int]] = {s: {"emitted": 0, "rows": 0, "busy_ns": 0, "batches": 0}
                                                   for s in stores}
        self.paths = {"jsonl": tmp / "audit-bench.jsonl", "sqlite": tmp / "audit-bench.sqlite"}

    # -- setup and teardown (on the gateway's loop) ---------------------------------------------
    async def build(self) -> None:
        import dataclasses

        from gateway.audit.jsonl import JsonLinesSink
        from gateway.audit.setup import build_sink, chain_key, open_store

        config = self.g.config
        key = chain_key(config, self.g.vault)  # the running gateway created it
        for store in self.stores:
            stats = self.written[store]
            if store == "jsonl":
                sink = JsonLinesSink(self.paths["jsonl"])
                write = sink._write_until_done

                async def timed_write(data: bytes, write=write, stats=stats) -> None:
                    t0 = time.perf_counter_ns()
                    await write(data)
                    stats["busy_ns"] += time.perf_counter_ns() - t0
                    stats["rows"] += data.count(b"\n")
                    stats["batches"] += 1

                sink._write_until_done = timed_write
            else:
                audit = dataclasses.replace(config.audit, store=store, jsonl_path=None,
                                            sqlite_path=self.paths["sqlite"], postgresql_dsn=self.pg,
                                            postgresql_schema=self.schema, postgresql_password_vault_key=None)
                cfg = dataclasses.replace(config, audit=audit)
                sink = build_sink(cfg, open_store(cfg, self.g.vault, key))  # a StoreSink, as the gateway's
                append = sink.store.append  # runs in the writer's thread, one batch at a time

                def timed_append(events, append=append, stats=stats):
                    t0 = time.perf_counter_ns()
                    seq = append(events)
                    stats["busy_ns"] += time.perf_counter_ns() - t0
                    stats["rows"] += len(events)
                    stats["batches"] += 1
                    return seq

                sink.store.append = timed_append
            emit = sink.emit

            def counted_emit(event, emit=emit, stats=stats) -> None:  # ~0.1 us per event
                stats["emitted"] += 1
                emit(event)

            sink.emit = counted_emit
            sink.start()
            self.sinks[store] = sink

    async def close(self) -> None:
        self.g.services.audit = self.g.audit = self.own
        for name, sink in self.sinks.items():
            await sink.close()
            store = getattr(sink, "store", None)
            if store is not None:
                store.close()

    def drop_schema(self) -> None:
        import psycopg

        with psycopg.connect(self.pg, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    # -- from the benchmark's thread ------------------------------------------------------------
    def use(self, name: str) -> None:
        sink = self.sinks[name]

        def swap() -> None:
            self.g.services.audit = self.g.audit = sink

        self.gw.call(_async(swap))

    def depth(self, sink) -> int:
        return self.gw.call(_async(lambda: sink.depth))

    def drain(self, sink, stats: dict | None = None, timeout: float = 120.0) -> float:
        """Wait until ``sink``'s depth is 0 and (with ``stats``) every event emitted into it is
        committed (JsonLinesSink's depth leaves out the batch being written); seconds waited."""
        t0 = time.perf_counter()
        while self.depth(sink) or (stats is not None and stats["rows"] < stats["emitted"]):
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"audit sink still {self.depth(sink)} events behind after {timeout:.0f} s")
            time.sleep(0.002)
        return time.perf_counter() - t0

    def count(self, store: str) -> int:
        """Rows actually in the store, read independently of the writer."""
        if store == "jsonl":
            path = self.paths["jsonl"]
            return path.read_bytes().count(b"\n") if path.exists() else 0
        if store == "sqlite":
            import sqlite3

            with contextlib.closing(sqlite3.connect(f"file:{self.paths['sqlite']}?mode=ro", uri=True)) as db:
                return db.execute("SELECT count(*) FROM audit").fetchone()[0]
        import psycopg

        with psycopg.connect(self.pg) as db:
            return db.execute(f'SELECT count(*) FROM "{self.schema}".audit').fetchone()[0]


def _own_rows(tmp: Path) -> int:
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{tmp / 'gw' / 'audit.sqlite'}?mode=ro", uri=True)) as db:
        return db.execute("SELECT count(*) FROM audit").fetchone()[0]


def audit_rounds(args, stack: contextlib.ExitStack, tmp: Path, gw, worker, meter, direct: dict, via: dict,
                 v_direct: dict) -> int:
    """``--audit``: bulk fetches direct, through the gateway with auditing off, and with each store
    on, interleaved; the throughput ratio on/off per store and the events per second it took."""
    stores = AUDIT_STORES if args.audit == "all" else (args.audit,)
    bench = AuditBench(gw, stores, tmp, args.pg)
    if "postgresql" in stores:
        import psycopg

        try:
            with psycopg.connect(args.pg, connect_timeout=5) as admin:
                pg_version = admin.execute("SHOW server_version").fetchone()[0]
        except psycopg.Error as exc:
            print(f"ERROR: cannot reach PostgreSQL ({' '.join(str(exc).split())}); use --pg or another --audit")
            return 1
        stack.callback(bench.drop_schema)  # after the sinks are closed (callbacks run last first)
    stack.callback(lambda: gw.call(bench.close, timeout=120))
    gw.call(bench.build, timeout=60)
    bench.drain(bench.own)
    own_before = _own_rows(tmp)
    where = {"jsonl": str(bench.paths["jsonl"]), "sqlite": str(bench.paths["sqlite"]),
             "postgresql": f"PostgreSQL {pg_version if 'postgresql' in stores else ''}, schema "
                           f"{bench.schema} of '{args.pg}' (dropped at the end)"}
    print("audit sinks (the gateway's StoreSink / JsonLinesSink, swapped in per fetch): off = a null sink; "
          + "; ".join(f"{s}: {where[s]}" for s in stores))
    variants = ("direct", "off", *stores)
    print(f"order: rotating through {', '.join(variants)} each round, reversed every other cycle; "
          "no NOOP rounds with --audit")
    sys.stdout.flush()

    profilers = {}
    if args.profile:
        import cProfile

        profilers = {v: cProfile.Profile() for v in variants if v != "direct"}

    fetch = {v: [] for v in variants}  # MB/s per round
    cpu = {v: [] for v in variants}  # per fetch: (wall, client, gateway thread, writer threads, dovecot) ns
    events = {s: {"rows": 0, "fetch_ns": 0, "drain_ns": 0, "depth_end": [], "drain": []} for s in stores}
    rows = []
    t_rounds = time.perf_counter()
    n = len(variants)
    for r in range(args.rounds):
        k = r % n
        order = variants[k:] + variants[:k]
        if (r // n) % 2:
            order = order[::-1]
        row = {}
        for name in order:
            sink = bench.sinks.get(name)
            if sink is not None:
                bench.use(name)
            stats = bench.written.get(name)
            rows0 = stats["rows"] if stats else 0
            conn = worker.run("open", **(direct if name == "direct" else via))
            try:
                profiler = profilers.get(name)
                if profiler is not None:
                    gw.call(_async(profiler.enable))
                before, p0, m0 = meter.snapshot(), time.process_time_ns(), time.thread_time_ns()
                res = worker.run("fetch", conn=conn)
                after, p1, m1 = meter.snapshot(), time.process_time_ns(), time.thread_time_ns()
                t_end = time.perf_counter()
                if profiler is not None:
                    gw.call(_async(profiler.disable))
                depth_end = bench.depth(sink) if name in events else 0
            finally:
                worker.run("close", conn=conn)
            if res["payload"] != v_direct["payload"] or res["literal_bytes"] != v_direct["literal_bytes"]:
                print(f"ERROR: round {r + 1} {name}: {res['payload']} octets, expected {v_direct['payload']}")
                return 1
            gateway_ns, dovecot_ns = meter.delta(before, after)
            # CPU of this process's other threads: the audit writer's (asyncio.to_thread) workers
            writer_ns = max(0, (p1 - p0) - gateway_ns - (m1 - m0)) if name != "direct" else 0
            fetch[name].append(res["payload"] / MB / (res["ns"] / 1e9))
            cpu[name].append((res["ns"], res["cpu_ns"], gateway_ns if name != "direct" else 0, writer_ns,
                              dovecot_ns))
            row[name] = fetch[name][-1]
            if name in events:  # wait for this store's writer before the next fetch, untimed
                drain_s = (time.perf_counter() - t_end) + bench.drain(sink, stats)
                e = events[name]
                e["rows"] += stats["rows"] - rows0
                e["fetch_ns"] += res["ns"]
                e["drain_ns"] += int(drain_s * 1e9)
                e["depth_end"].append(depth_end)
                e["drain"].append(drain_s * 1e3)
        rows.append(row)
    rounds_s = time.perf_counter() - t_rounds
    final = {}
    for s in stores:  # the brief's check: every writer's queue empty after the rounds
        final[s] = (bench.depth(bench.sinks[s]), bench.drain(bench.sinks[s], bench.written[s]))
    bench.drain(bench.own)
    own_after = _own_rows(tmp)

    # -- report ----------------------------------------------------------------------------
    print()
    print("round " + "".join(f"{v + ' MB/s':>17}" for v in variants) + "   "
          + "".join(f"{s + '/off':>16}" for s in stores))
    for i, row in enumerate(rows, 1):
        print(f"{i:>5} " + "".join(f"{row[v]:>17.1f}" for v in variants) + "   "
              + "".join(f"{row[s] / row['off']:>16.2f}" for s in stores))

    med = {v: statistics.median(fetch[v]) for v in variants}
    ncpu = len(os.sched_getaffinity(0))
    print()
    print(f"bulk UID FETCH 1:* BODY.PEEK[]: {v_direct['payload'] / MB:.1f} MB per fetch, {args.rounds} fetches "
          f"per variant (MB = 10^6 octets; CPU from /proc/*/schedstat)")
    print("              median MB/s   best MB/s   wall ms   CPU ms per fetch: client  gateway  writer"
          "  dovecot   cores busy")
    for v in variants:
        wall, client, gateway, writer, dove = (statistics.median(x) / 1e6 for x in zip(*cpu[v]))
        busy = statistics.median((c + g + w + d) / t for t, c, g, w, d in cpu[v])
        label = "direct" if v == "direct" else f"gw {v}"
        g_text, w_text = (f"{gateway:.0f}", f"{writer:.0f}") if v != "direct" else ("-", "-")
        print(f"  {label:<13} {med[v]:>9.1f}   {max(fetch[v]):>9.1f}   {wall:>7.0f}   {'':>16} {client:>6.0f}"
              f"  {g_text:>7}  {w_text:>6}  {dove:>7.0f}   {busy:.2f} of {ncpu}")
    print(f"  gateway (auditing off) / direct: {med['off'] / med['direct']:.2f}")
    print("  (writer: CPU of the gateway process's threads other than the event loop during the fetch: "
          "the audit writer's to_thread workers; a PostgreSQL server's own CPU is not counted)")
    for s in stores:
        paired = [row[s] / row["off"] for row in rows]
        ratio = med[s] / med["off"]
        print(f"  auditing on/off, {s:<10} (median MB/s): {ratio:.2f}   per-round median "
              f"{statistics.median(paired):.2f}, range {min(paired):.2f}-{max(paired):.2f}   "
              f"target >= {AUDIT_TARGET:.2f}   {'PASS' if ratio >= AUDIT_TARGET else 'FAIL'}")

    print()
    print(f"audit events per store while relaying (after each fetch the next waits until the store's "
          f"writer is drained, untimed; all rounds took {rounds_s:.1f} s)")
    print("              rows   per fetch   ev/s during fetch   ev/s sustained   writer busy   "
          "ev/s in append   depth at fetch end   drain ms")
    print(f"{'':>66}(store capacity)      median / max    median / max")
    for s in stores:
        e, w = events[s], bench.written[s]
        fetch_s, total_s = e["fetch_ns"] / 1e9, (e["fetch_ns"] + e["drain_ns"]) / 1e9
        busy_s = w["busy_ns"] / 1e9
        print(f"  {s:<10} {e['rows']:>7}   {e['rows'] / args.rounds:>9.0f}   {e['rows'] / fetch_s:>17,.0f}   "
              f"{e['rows'] / total_s:>14,.0f}   {busy_s:>9.2f} s   {w['rows'] / busy_s if busy_s else 0:>14,.0f}   "
              f"{statistics.median(e['depth_end']):>8.0f} / {max(e['depth_end']):<7}  "
              f"{statistics.median(e['drain']):>6.1f} / {max(e['drain']):.1f}")
    print("  ev/s during fetch: rows / the timed fetches' wall time (the rate the relay produced them);"
          " sustained: rows / (fetch + wait until the writer's depth was 0)")
    for s in stores:
        depth, waited = final[s]
        in_store = bench.count(s)
        print(f"  after the rounds: {s} depth {depth}, 0 after {waited * 1e3:.1f} ms; rows in the store "
              f"{in_store} ({'==' if in_store == bench.written[s]['rows'] else '!='} {bench.written[s]['rows']} "
              f"committed by the writer in {bench.written[s]['batches']} batches, of "
              f"{bench.written[s]['emitted']} emitted)")
    print(f"  the gateway's own sink took {own_after - own_before} rows during the rounds "
          f"(0: every session used the swapped-in sinks)")

    if profilers:
        import pstats

        print()
        print("(timings above are slowed down by the profiler; the profile covers the gateway's event-loop "
              "thread only, not the audit writer's threads)")
        for v, profiler in profilers.items():
            path = f"{args.profile}-fetch-{v}.pstats"
            profiler.dump_stats(path)
            print(f"\n== gateway thread profile during the fetches with auditing {v} -> {path}")
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(args.profile_top)
    return 0


def _async(fn):
    """A coroutine function calling ``fn`` on the gateway's loop thread (cProfile is per thread)."""

    async def call():
        return fn()

    return call


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=300,
                   help="large messages (PEC buste) in the mailbox (default 300)")
    p.add_argument("--size", type=int, default=64 * 1024,
                   help="approximate size of a large message in octets (default 65536)")
    p.add_argument("--small", type=int, default=None,
                   help="small receipts mixed in among them (default: messages / 4)")
    p.add_argument("--rounds", type=int, default=15,
                   help="rounds of direct + gateway measurements, order alternating (default 15)")
    p.add_argument("--noops", type=int, default=500,
                   help="timed NOOP round trips per connection per round (default 500)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="the gateway's event loop (uvloop: an experiment, needs 'pip install uvloop')")
    p.add_argument("--profile", metavar="PREFIX",
                   help="cProfile the gateway thread during its timed measurements; writes "
                        "PREFIX-fetch.pstats and PREFIX-noop.pstats (slows the gateway down)")
    p.add_argument("--profile-top", type=int, default=20, metavar="N",
                   help="functions to print per profile (default 20)")
    p.add_argument("--audit", choices=(*AUDIT_STORES, "all"),
                   help="measure the gateway with auditing off vs on into this store (all: each of "
                        "jsonl, sqlite, postgresql), interleaved, instead of gateway vs direct + NOOPs")
    p.add_argument("--pg", default=DEFAULT_PG, metavar="CONNINFO",
                   help="--audit postgresql: the server, a throwaway schema is created and dropped "
                        "(default $PECGW_TEST_POSTGRES or 'host=127.0.0.1 dbname=test user=postgres')")
    args = p.parse_args(argv)
    if args.small is None:
        args.small = args.messages // 4
    if args.messages < 1 or args.size < 1024 or args.rounds < 1 or args.noops < 1 or args.small < 0:
        p.error("need --messages >= 1, --size >= 1024, --rounds >= 1, --noops >= 1, --small >= 0")

    def terminate(signum, frame):  # SIGTERM: unwind like Ctrl-C so every server is stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
