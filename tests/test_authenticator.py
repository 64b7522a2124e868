"""The authenticator over the static directory: every outcome, delays, trust windows."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.auth.authenticator import REASONS, Authenticator, AuthOutcome, split_credential
from gateway.auth.directory import DirectoryUnavailable, Person
from gateway.auth.otp import OtpVerifier
from gateway.auth.passwords import hash_password
from gateway.auth.static_directory import StaticDirectory
from gateway.auth.trust import TrustWindow
from gateway.secret import Secret

T0 = 1_700_000_010.0
DELAY = 0.05
ALICE_OTP = Secret("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")
FAST = {"n": 2**10, "r": 8, "p": 1}


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def users_file(tmp_path):
    path = tmp_path / "users.toml"
    path.write_text(f"""
[users.alice]
password = "{hash_password(Secret("alice-pw"), **FAST)}"
display_name = "Alice Rossi"
groups = ["legale"]

[users.bruno]
password = "{hash_password(Secret("bruno-pw"), **FAST)}"

[users.dario]
password = "{hash_password(Secret("dario-pw"), **FAST)}"
disabled = true
""")
    return path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def otp() -> OtpVerifier:
    return OtpVerifier({"alice": ALICE_OTP, "dario": ALICE_OTP}.get)  # bruno: not enrolled


@pytest.fixture
def auth(users_file, otp, clock) -> Authenticator:
    return Authenticator(StaticDirectory(users_file), otp, TrustWindow(duration_s=3600),
                         failure_delay_s=DELAY, clock=clock)


def code(now: float) -> str:
    return OtpVerifier(lambda _: None).current_code(ALICE_OTP, now)


async def timed(auth: Authenticator, user: str, credential: str) -> tuple[AuthOutcome, float]:
    t = time.perf_counter()
    outcome = await auth.authenticate(user, Secret(credential))
    return outcome, time.perf_counter() - t


async def test_success_with_fresh_code(auth):
    outcome, elapsed = await timed(auth, "alice", "alice-pw" + code(T0))
    assert outcome == AuthOutcome(Person("alice", "Alice Rossi", frozenset({"legale"})), "ok")
    assert outcome.ok
    assert elapsed < DELAY  # no delay on success


@pytest.mark.parametrize(
    "user, credential, reason",
    [
        ("alice", "alice-pw", "malformed"),  # no code at all
        ("alice", "alice-pw12345", "malformed"),  # "w12345" is not 6 digits
        ("alice", "123456", "malformed"),  # empty password
        ("", "alice-pw123456", "malformed"),
        ("alice", "alice-pw12345x", "malformed"),
        ("alice", "wrong-pw{code}", "bad_password"),
        ("nobody", "alice-pw{code}", "bad_password"),  # unknown user: same reason
        ("dario", "dario-pw{code}", "bad_password"),  # disabled: same reason
        ("alice", "alice-pw{wrong}", "bad_otp"),
        ("bruno", "bruno-pw123456", "no_otp_enrolled"),
    ],
)
async def test_failures_give_no_person_and_wait(auth, user, credential, reason):
    good = code(T0)
    wrong = f"{(int(good) + 1) % 10**6:06d}"
    credential = credential.replace("{code}", good).replace("{wrong}", wrong)
    outcome, elapsed = await timed(auth, user, credential)
    assert outcome.person is None and not outcome.ok
    assert outcome.reason == reason and reason in REASONS
    assert elapsed >= DELAY


async def test_replayed_code_is_refused(auth, clock):
    credential = "alice-pw" + code(T0)
    assert (await auth.authenticate("alice", Secret(credential))).reason == "ok"
    auth.trust.forget("alice")  # without the trust window the code is spent
    clock.now = T0 + 5
    outcome, elapsed = await timed(auth, "alice", credential)
    assert outcome == AuthOutcome(None, "otp_replay")
    assert elapsed >= DELAY


async def test_wrong_password_does_not_burn_the_code(auth):
    good = code(T0)
    assert (await auth.authenticate("alice", Secret("typo-pw" + good))).reason == "bad_password"
    assert (await auth.authenticate("alice", Secret("alice-pw" + good))).reason == "ok"


async def test_trusted_credential_works_without_fresh_code(auth, clock):
    credential = "alice-pw" + code(T0)
    assert (await auth.authenticate("alice", Secret(credential))).reason == "ok"
    for later in (T0 + 60, T0 + 1800, T0 + 3599):  # the code itself is long out of its window
        clock.now = later
        outcome = await auth.authenticate("alice", Secret(credential))
        assert outcome.reason == "trusted" and outcome.person.username == "alice"


async def test_after_expiry_the_same_credential_is_refused(auth, clock):
    credential = "alice-pw" + code(T0)
    assert (await auth.authenticate("alice", Secret(credential))).ok
    clock.now = T0 + 3600
    outcome = await auth.authenticate("alice", Secret(credential))
    assert outcome.person is None and outcome.reason in ("bad_otp", "otp_replay")
    # a fresh code opens a new window
    outcome = await auth.authenticate("alice", Secret("alice-pw" + code(clock.now)))
    assert outcome.reason == "ok"


async def test_short_window_expiry_refuses_as_replay(users_file, otp, clock):
    auth = Authenticator(StaticDirectory(users_file), otp, TrustWindow(duration_s=10),
                         failure_delay_s=DELAY, clock=clock)
    credential = "alice-pw" + code(T0)
    assert (await auth.authenticate("alice", Secret(credential))).ok
    clock.now = T0 + 10  # still inside the OTP validity window: refused because it was used
    assert (await auth.authenticate("alice", Secret(credential))).reason == "otp_replay"


async def test_directory_decides_even_inside_trust_window(auth, users_file, clock):
    credential = "alice-pw" + code(T0)
    assert (await auth.authenticate("alice", Secret(credential))).ok
    text = users_file.read_text().replace('groups = ["legale"]', 'groups = ["legale"]\ndisabled = true')
    users_file.write_text(text + "\n")  # different size: the directory re-reads it
    clock.now = T0 + 60
    outcome = await auth.authenticate("alice", Secret(credential))
    assert outcome == AuthOutcome(None, "bad_password")


class DownDirectory:
    def __init__(self) -> None:
        self.calls = 0

    def authenticate(self, username: str, password: Secret) -> Person | None:
        self.calls += 1
        raise DirectoryUnavailable("LDAP directory ldap://127.0.0.1:1: connect failed")

    def lookup(self, username: str) -> Person | None:
        raise DirectoryUnavailable("down")


async def test_directory_unavailable(otp, clock):
    directory = DownDirectory()
    auth = Authenticator(directory, otp, TrustWindow(), failure_delay_s=DELAY, clock=clock)
    outcome, elapsed = await timed(auth, "alice", "alice-pw" + code(T0))
    assert outcome == AuthOutcome(None, "directory_unavailable")
    assert elapsed >= DELAY and directory.calls == 1


class CountingDirectory(StaticDirectory):
    calls = 0

    def authenticate(self, username, password):
        type(self).calls += 1
        return super().authenticate(username, password)


async def test_directory_is_asked_for_unknown_user_and_wrong_code(users_file, otp, clock):
    directory = CountingDirectory(users_file)
    auth = Authenticator(directory, otp, TrustWindow(), failure_delay_s=0, clock=clock)
    await auth.authenticate("nobody", Secret("x-pw123456"))
    await auth.authenticate("alice", Secret("alice-pw000000"))
    assert CountingDirectory.calls == 2


async def test_blocking_work_runs_off_the_event_loop(users_file, otp, clock):
    loop_thread = []

    class Probe(StaticDirectory):
        def authenticate(self, username, password):
            import threading

            loop_thread.append(threading.current_thread() is threading.main_thread())
            return super().authenticate(username, password)

    auth = Authenticator(Probe(users_file), otp, TrustWindow(), failure_delay_s=0, clock=clock)
    await auth.authenticate("alice", Secret("alice-pw" + code(T0)))
    assert loop_thread == [False]


async def test_concurrent_logins_do_not_block_each_other(auth):
    outcomes = await asyncio.gather(
        auth.authenticate("nobody", Secret("x-pw123456")),
        auth.authenticate("alice", Secret("alice-pw" + code(T0))),
    )
    assert [o.reason for o in outcomes] == ["bad_password", "ok"]


def test_split_credential():
    password, c = split_credential(Secret("p@ss 1!123456"), 6)
    assert password.reveal() == "p@ss 1!" and c == "123456"
    assert split_credential(Secret("123456"), 6) is None
    assert split_credential(Secret("pw12345"), 6) is None
    assert split_credential(Secret(""), 6) is None

