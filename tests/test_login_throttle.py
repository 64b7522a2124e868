"""The brute-force throttle: delays, lockouts, expiry, what a success clears, shared counters.

Fast and pure: a fake clock, the counters in memory, in a SQLite file in tmp_path, or in the real
PostgreSQL (a schema of its own per test, dropped afterwards).  The end-to-end test with real
clients is tests/test_brute_force_e2e.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from prometheus_client import REGISTRY

from gateway.auth.attempts import Key, MemoryAttempts, SqlAttempts, open_attempt_store
from gateway.auth.authenticator import Authenticator
from gateway.auth.otp import OtpVerifier
from gateway.auth.passwords import hash_password
from gateway.auth.static_directory import StaticDirectory
from gateway.auth.throttle import Admission, LoginThrottle, login_key
from gateway.auth.trust import TrustWindow
from gateway.config import BruteForceConfig, ConfigError, load_config, parse_config
from gateway.secret import Secret
from tests.audit.conftest import Backend
from tests.unit.test_config import EXAMPLE, minimal

T0 = 1_700_000_010.0
IP, OTHER_IP = "192.0.2.10", "198.51.100.7"
SETTINGS = BruteForceConfig(window_s=900, max_delay_s=30, lockout_after=10, ip_lockout_after=30,
                            person_lockout_after=100, lockout_duration_s=900)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wrong(i: int) -> Secret:
    """The i-th different wrong credential (a repeated one is not a new guess)."""
    return Secret(f"guess-{i}-123456")


def lockouts_metric(scope: str) -> float:
    return REGISTRY.get_sample_value("pecgw_login_lockouts_total", {"scope": scope}) or 0.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sqlite_store(tmp_path):
    store = SqlAttempts(lambda: sqlite3.connect(str(tmp_path / "audit.sqlite"), check_same_thread=False),
                        placeholder="?")
    yield store
    store.close()


@pytest.fixture(params=["memory", "sqlite"])
def throttle(request, clock, tmp_path):
    """A throttle (base delay 1 s, the default limits) over memory or a SQLite file; ``.lockouts``
    lists what it reported."""
    store = None
    if request.param == "sqlite":
        store = SqlAttempts(lambda: sqlite3.connect(str(tmp_path / "audit.sqlite"), check_same_thread=False),
                            placeholder="?")
    lockouts = []
    t = LoginThrottle(SETTINGS, 1.0, store=store, clock=clock, on_lockout=lockouts.append)
    t.lockouts = lockouts
    yield t
    if store is not None:
        store.close()


# ------------------------------------------------------------------------------------------ rules
def test_login_key_is_the_name_typed_case_folded_without_mailbox():
    assert login_key("Alice#Protocollo") == "alice"
    assert login_key("ALICE") == login_key("alice") == "alice"
    assert login_key("nobody-at-all") == "nobody-at-all"  # unknown names are keys like any other
    assert login_key(None) == ""
    assert len(login_key("x" * 5000)) == 256


async def test_delay_doubles_with_each_failure_up_to_the_maximum(throttle):
    delays = [await throttle.failed("alice", IP, wrong(i)) for i in range(8)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]


async def test_delay_counts_the_address_too(throttle):
    """A guesser trying a new name at each attempt still waits longer each time."""
    delays = [await throttle.failed(f"name{i}", IP, wrong(i)) for i in range(5)]
    assert delays == [1, 2, 4, 8, 16]
    assert await throttle.failed("fresh", OTHER_IP, wrong(99)) == 1  # another address: its own count


async def test_pair_lockout_then_expiry(throttle, clock):
    before = lockouts_metric("pair")
    for i in range(9):
        await throttle.failed("alice", IP, wrong(i), protocol="imap", session_id="s1")
        clock.now += 1
    assert (await throttle.admit("alice", IP)).locked == ()
    await throttle.failed("alice", IP, wrong(9), protocol="imap", session_id="s1")  # the 10th
    admission = await throttle.admit("Alice", IP)  # the name as typed, any case
    assert admission.locked == ("pair",)
    assert throttle.delay(admission.failures) == 30  # a locked attempt waits like the 10th failure
    [lockout] = throttle.lockouts
    assert (lockout.scope, lockout.name, lockout.ip, lockout.failures) == ("pair", "alice", IP, 10)
    assert (lockout.protocol, lockout.session_id) == ("imap", "s1")
    assert lockout.until == pytest.approx(clock.now + 900)
    assert lockouts_metric("pair") == before + 1
    # unaffected: the same name from another address, another name from this one
    assert (await throttle.admit("alice", OTHER_IP)).locked == ()
    assert (await throttle.admit("bruno", IP)).locked == ()
    # the lockout ends after lockout_duration; then the pair starts again at one failure
    clock.now = lockout.until - 1
    assert (await throttle.admit("alice", IP)).locked == ("pair",)
    clock.now = lockout.until
    assert (await throttle.admit("alice", IP)).locked == ()
    assert await throttle.failed("alice", IP, wrong(100)) == 1  # the ip's failures are out of window too
    assert len(throttle.lockouts) == 1


async def test_failures_outside_the_window_are_forgotten(throttle, clock):
    for i in range(9):
        await throttle.failed("alice", IP, wrong(i))
    clock.now += 901  # the window (from the first failure) is over
    assert await throttle.failed("alice", IP, wrong(9)) == 1
    assert (await throttle.admit("alice", IP)).locked == ()


async def test_ip_lockout_covers_every_name_from_the_address(throttle):
    for i in range(30):
        await throttle.failed(f"name{i % 5}", IP, wrong(i))  # 6 per name: no pair lockout
    assert [lk.scope for lk in throttle.lockouts] == ["ip"]
    assert (await throttle.admit("anyone-else", IP)).locked == ("ip",)
    assert (await throttle.admit("anyone-else", OTHER_IP)).locked == ()


async def test_person_lockout_covers_every_address_and_can_be_turned_off(clock):
    settings = BruteForceConfig(lockout_after=10, ip_lockout_after=30, person_lockout_after=12)
    t = LoginThrottle(settings, 0.5, clock=clock)
    for i in range(12):
        await t.failed("carla", f"203.0.113.{i}", wrong(i))  # one failure from each of 12 addresses
    assert (await t.admit("carla", "203.0.113.200")).locked == ("person",)
    assert (await t.admit("bruno", "203.0.113.200")).locked == ()
    off = LoginThrottle(BruteForceConfig(person_lockout_after=0), 0.5, clock=clock)
    for i in range(200):
        await off.failed("carla", f"203.0.113.{i}", wrong(i))
    assert (await off.admit("carla", "203.0.113.250")).locked == ()


async def test_success_clears_only_the_pair(throttle):
    for i in range(9):
        await throttle.failed("alice", IP, wrong(i))
    await throttle.succeeded("alice", IP)
    # the pair starts again: nine more failures do not lock it ...
    for i in range(9):
        await throttle.failed("alice", IP, wrong(10 + i))
    assert (await throttle.admit("alice", IP)).locked == ()
    # ... but the address kept its 18 failures: the delay stays at the top, and twelve more lock it
    assert throttle.delay((await throttle.admit("alice", IP)).failures) == 30
    for i in range(12):
        await throttle.failed(f"other{i}", IP, wrong(50 + i))
    assert "ip" in (await throttle.admit("alice", IP)).locked


async def test_success_does_not_end_a_lockout(throttle):
    for i in range(10):
        await throttle.failed("alice", IP, wrong(i))
    await throttle.succeeded("alice", IP)  # e.g. counted by another instance meanwhile
    assert (await throttle.admit("alice", IP)).locked == ("pair",)


async def test_the_same_wrong_credential_again_is_not_a_new_guess(throttle, clock):
    """A mail client retrying its saved (now stale) credential must not lock its person out."""
    stale = Secret("alice-password123456")
    delays = [await throttle.failed("alice", IP, stale) for _ in range(50)]
    assert delays == [1] * 50
    assert (await throttle.admit("alice", IP)).locked == ()
    assert await throttle.failed("alice", IP, wrong(1)) == 2  # a different one counts
    assert await throttle.failed("alice", OTHER_IP, stale) == 1  # from elsewhere: counted there
    clock.now += 901
    assert await throttle.failed("alice", IP, stale) == 1  # a new window: counted again, from one


# ------------------------------------------------------------------------------------------ storage
async def test_store_failure_falls_back_to_memory(tmp_path, clock, caplog):
    path = tmp_path / "audit.sqlite"
    store = SqlAttempts(lambda: sqlite3.connect(str(path), check_same_thread=False), placeholder="?")
    t = LoginThrottle(SETTINGS, 1.0, store=store, clock=clock)
    assert await t.failed("alice", IP, wrong(0)) == 1
    db = sqlite3.connect(path)
    db.execute("DROP TABLE pecgw_login_attempts")  # the store breaks under the gateway
    db.commit()
    db.close()
    with caplog.at_level(logging.ERROR, logger="gateway.auth.throttle"):
        assert (await t.admit("alice", IP)).locked == ()
        delays = [await t.failed("alice", IP, wrong(i)) for i in range(1, 11)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30]  # counted in memory, from scratch
    assert (await t.admit("alice", IP)).locked == ("pair",)  # memory locks too
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all("no such table" in e and "guess-" not in e for e in errors)
    store.close()


def test_sqlite_and_memory_agree(tmp_path):
    """The SQL statement and the Python rules are the same rules, step by step."""
    sql = SqlAttempts(lambda: sqlite3.connect(str(tmp_path / "a.sqlite"), check_same_thread=False),
                      placeholder="?")
    mem = MemoryAttempts()
    pair, ip = Key("pair", "alice", IP), Key("ip", "", IP)
    times = [T0 + t for t in (0, 10, 20, 30, 40, 130, 135, 500, 1000, 1001, 1900, 1901, 1902, 3000)]
    for now in times:
        a = sql.fail([(pair, 3), (ip, 0)], now, 100, 60)
        b = mem.fail([(pair, 3), (ip, 0)], now, 100, 60)
        assert a == b, now
        assert sql.counts([pair, ip], now + 1, 100) == mem.counts([pair, ip], now + 1, 100)
    assert sql.prune(T0 + 10_000, 100) == mem.prune(T0 + 10_000, 100) == 2
    sql.close()


def _count_in_threads(stores, total: int, limit: int, now: float):
    """``total`` failures on one counter, spread over ``stores`` and threads, all at once."""
    key = Key("pair", "alice", IP)
    barrier = threading.Barrier(total)

    def one(i):
        barrier.wait()
        return stores[i % len(stores)].fail([(key, limit)], now, 900, 900)[0]

    with ThreadPoolExecutor(total) as pool:
        return list(pool.map(one, range(total)))


def test_sqlite_counting_is_atomic_across_connections(tmp_path):
    def connect():
        db = sqlite3.connect(str(tmp_path / "audit.sqlite"), check_same_thread=False, timeout=10)
        db.execute("PRAGMA busy_timeout = 10000")
        return db

    stores = [SqlAttempts(connect, placeholder="?") for _ in range(2)]
    counts = _count_in_threads(stores, 20, 10, T0)
    assert sorted(c.failures for c in counts) == list(range(1, 21))
    assert sum(c.newly_locked for c in counts) == 1
    for store in stores:
        store.close()


@pytest.fixture
def pg(tmp_path):
    """A schema of its own in the real PostgreSQL, as the audit store would have created it."""
    backend = Backend("postgres", tmp_path)
    with psycopg.connect(backend.conninfo, autocommit=True) as db:
        db.execute(f'CREATE SCHEMA "{backend.schema}"')
    yield backend
    backend.cleanup()


def test_postgres_counting_is_atomic_across_instances(pg):
    stores = [SqlAttempts(lambda: psycopg.connect(pg.conninfo), placeholder="%s", schema=pg.schema)
              for _ in range(2)]
    counts = _count_in_threads(stores, 30, 10, T0)
    assert sorted(c.failures for c in counts) == list(range(1, 31))
    assert [c.failures for c in counts if c.newly_locked] == [10]  # exactly one instance saw it begin
    for store in stores:
        store.close()


async def test_postgres_counters_are_shared_by_two_gateways(pg, clock):
    """Two throttles, as in two instances: failures on either add up, the lockout is reported once
    and holds on both, and a success on one clears the pair for both."""
    reported = []
    stores = [SqlAttempts(lambda: psycopg.connect(pg.conninfo), placeholder="%s", schema=pg.schema)
              for _ in range(2)]
    a, b = (LoginThrottle(SETTINGS, 1.0, store=s, clock=clock, on_lockout=reported.append) for s in stores)
    delays = [await (a if i % 2 else b).failed("alice", IP, wrong(i)) for i in range(6)]
    assert delays == [1, 2, 4, 8, 16, 30]  # each sees the other's failures
    for i in range(6, 10):
        await (a if i % 2 else b).failed("alice", IP, wrong(i))
    assert [(lk.scope, lk.failures) for lk in reported] == [("pair", 10)]
    assert (await a.admit("alice", IP)).locked == (await b.admit("alice", IP)).locked == ("pair",)
    clock.now += 901  # lockout over; 3 new failures counted on a, a success on b clears them
    for i in range(3):
        await a.failed("bruno", IP, wrong(20 + i))
    await b.succeeded("bruno", IP)
    assert (await a.admit("bruno", IP)).failures == 3  # what is left is the address's count
    assert stores[0].counts([Key("pair", "bruno", IP)], clock.now, 900) == {}
    for store in stores:
        store.close()


def test_open_attempt_store_follows_the_audit_config(pg, tmp_path):
    """The gateway's counters live in the audit store's PostgreSQL schema (or SQLite file)."""
    tables = minimal(audit={"store": "postgresql", "postgresql_dsn": pg.conninfo, "postgresql_schema": pg.schema})
    config = parse_config(tables, tmp_path / "gateway.toml")
    store = open_attempt_store(config, vault=None)
    store.fail([(Key("ip", "", IP), 30)], T0, 900, 900)
    store.close()
    with psycopg.connect(pg.conninfo) as db:
        rows = db.execute(f'SELECT scope, ip, failures FROM "{pg.schema}".pecgw_login_attempts').fetchall()
    assert rows == [("ip", IP, 1)]
    config = parse_config(minimal(), tmp_path / "gateway.toml")
    store = open_attempt_store(config, vault=None)
    store.close()
    db = sqlite3.connect(config.audit.sqlite_path)
    assert config.audit.sqlite_path == tmp_path / "audit.sqlite"
    assert db.execute("SELECT COUNT(*) FROM pecgw_login_attempts").fetchone() == (0,)
    db.close()


# ------------------------------------------------------------------------------------------ config
def test_config_table(tmp_path):
    cfg = parse_config(minimal(), tmp_path / "gw.toml")
    assert cfg.auth.brute_force == BruteForceConfig()
    assert load_config(EXAMPLE).auth.brute_force == BruteForceConfig()  # the example shows the defaults
    cfg = parse_config(minimal(auth__brute_force={"window": 60, "max_delay": 5, "lockout_after": 3,
                                                  "ip_lockout_after": 0, "person_lockout_after": 0,
                                                  "lockout_duration": 120}), tmp_path / "gw.toml")
    assert cfg.auth.brute_force == BruteForceConfig(60.0, 5.0, 3, 0, 0, 120.0)
    for table, key in (({"lockout_after": 0}, "auth.brute_force.lockout_after"),
                       ({"max_delay": 0.5}, "auth.brute_force.max_delay"),  # below failure_delay (1.0)
                       ({"window": "15m"}, "auth.brute_force.window"),
                       ({"lockout_duration": 0}, "auth.brute_force.lockout_duration"),
                       ({"lockout": 3}, "auth.brute_force.lockout")):
        with pytest.raises(ConfigError) as info:
            parse_config(minimal(auth__brute_force=table), tmp_path / "gw.toml")
        assert info.value.key == key


# ------------------------------------------------------------------------------------------ authenticator
FAST = {"n": 2**10, "r": 8, "p": 1}
ALICE_OTP = Secret("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")


class CountingDirectory(StaticDirectory):
    """The static directory, counting how often it is asked."""

    asked = 0

    def authenticate(self, username, password):
        self.asked += 1
        return super().authenticate(username, password)


@pytest.fixture
def auth(tmp_path, clock):
    path = tmp_path / "users.toml"
    path.write_text(f'[users.alice]\npassword = "{hash_password(Secret("alice-pw"), **FAST)}"\n')
    throttle = LoginThrottle(BruteForceConfig(max_delay_s=0.08, lockout_after=4), 0.01, clock=clock)
    return Authenticator(CountingDirectory(path), OtpVerifier({"alice": ALICE_OTP}.get), TrustWindow(),
                         failure_delay_s=0.01, clock=clock, throttle=throttle)


async def test_authenticator_refuses_a_locked_pair_without_asking_the_directory(auth, clock):
    good = Secret("alice-pw" + OtpVerifier(lambda _: None).current_code(ALICE_OTP, clock.now))
    outcomes = []
    for i, user in enumerate(["alice", "nobody"] * 4):
        start = time.perf_counter()
        outcome = await auth.authenticate(user, wrong(i), client_ip=IP, protocol="imap")
        outcomes.append((user, outcome.reason, time.perf_counter() - start))
    # a known and an unknown name: the same reason, and delays growing with the address's count
    assert [r for _, r, _ in outcomes] == ["bad_password"] * 8
    assert [round(auth.throttle.delay(n), 2) for n in range(1, 9)] == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08, 0.08, 0.08]
    assert all(elapsed >= auth.throttle.delay(n) for n, (_, _, elapsed) in enumerate(outcomes, 1))
    asked = auth.directory.asked
    # both pairs are locked: even the right credential is refused, unchecked, after the delay
    start = time.perf_counter()
    outcome = await auth.authenticate("alice", good, client_ip=IP, protocol="imap")
    assert outcome.reason == "locked" and not outcome.ok and time.perf_counter() - start >= 0.08
    assert (await auth.authenticate("nobody", good, client_ip=IP)).reason == "locked"
    assert auth.directory.asked == asked
    # from another address the right credential works (and the code was not spent by the refusal)
    assert (await auth.authenticate("alice", good, client_ip=OTHER_IP)).reason == "ok"
    assert auth.directory.asked == asked + 1


async def test_directory_unavailable_is_not_a_guess(tmp_path, clock):
    missing = tmp_path / "gone.toml"  # the static directory cannot read its file: unavailable
    missing.write_text("")
    directory = StaticDirectory(missing)
    missing.unlink()
    throttle = LoginThrottle(BruteForceConfig(max_delay_s=0.05, lockout_after=2), 0.001, clock=clock)
    a = Authenticator(directory, OtpVerifier({}.get), TrustWindow(), failure_delay_s=0.001, clock=clock,
                      throttle=throttle)
    reasons = {(await a.authenticate("alice", wrong(i), client_ip=IP)).reason for i in range(5)}
    assert reasons == {"directory_unavailable"}
    assert await throttle.admit("alice", IP) == Admission((), 0)  # nothing counted


def test_a_throttle_never_holds_a_secret(clock):
    t = LoginThrottle(SETTINGS, 1.0, clock=clock)
    asyncio.run(t.failed("alice", IP, Secret("s3cret-pw123456")))
    dump = repr(t.__dict__) + repr(t.memory.__dict__)
    assert "s3cret" not in dump and "123456" not in dump
