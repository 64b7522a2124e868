"""scrypt password hashes and the TOML static directory."""

from __future__ import annotations

import os
import time

import pytest

from gateway.auth.directory import DirectoryUnavailable, Person
from gateway.auth.passwords import hash_password, parse_password_hash, verify_password
from gateway.auth.static_directory import StaticDirectory, StaticDirectoryError
from gateway.secret import Secret

FAST = {"n": 2**10, "r": 8, "p": 1}  # tests only: the default cost is N=2**15


def test_hash_format_and_verify():
    encoded = hash_password(Secret("correct horse"), **FAST)
    prefix, n, r, p, salt, digest = encoded.split("$")
    assert (prefix, n, r, p) == ("scrypt", "1024", "8", "1")
    assert "correct horse" not in encoded
    assert verify_password(Secret("correct horse"), encoded)
    assert not verify_password(Secret("correct horsE"), encoded)
    assert not verify_password(Secret(""), encoded)
    assert hash_password(Secret("correct horse"), **FAST) != encoded  # fresh salt


def test_default_cost():
    encoded = hash_password(Secret("pw"))
    assert encoded.startswith("scrypt$32768$8$1$")
    assert verify_password(Secret("pw"), encoded)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plaintext",
        "scrypt$1024$8$1$c2FsdHNhbHQ",
        "bcrypt$1024$8$1$c2FsdHNhbHRzYWx0$" + "A" * 43,
        "scrypt$1000$8$1$c2FsdHNhbHRzYWx0$" + "A" * 43,  # n not a power of two
        "scrypt$2097152$8$1$c2FsdHNhbHRzYWx0$" + "A" * 43,  # n too large (memory bomb)
        "scrypt$1024$8$1$not*base64$" + "A" * 43,
        "scrypt$x$8$1$c2FsdHNhbHRzYWx0$" + "A" * 43,
    ],
)
def test_malformed_hashes_never_verify(encoded):
    with pytest.raises(ValueError, match="not a scrypt hash|scrypt n"):
        parse_password_hash(encoded)
    assert verify_password(Secret("anything"), encoded) is False


def test_verify_requires_secret():
    with pytest.raises(TypeError):
        verify_password("pw", hash_password(Secret("pw"), **FAST))  # type: ignore[arg-type]


# -- static directory ---------------------------------------------------------------------------


def write_users(path, body: str):
    path.write_text(body)
    return path


@pytest.fixture
def users_file(tmp_path):
    alice = hash_password(Secret("alice-pw"), **FAST)
    dario = hash_password(Secret("dario-pw"), **FAST)
    return write_users(tmp_path / "users.toml", f"""
[users.alice]
password = "{alice}"
display_name = "Alice Rossi"
groups = ["legale"]

[users.dario]
password = "{dario}"
groups = ["legale", "acquisti"]
disabled = true
""")


def test_static_authenticate(users_file):
    d = StaticDirectory(users_file)
    assert d.authenticate("alice", Secret("alice-pw")) == Person(
        "alice", "Alice Rossi", frozenset({"legale"}), None)
    assert d.authenticate("alice", Secret("wrong")) is None
    assert d.authenticate("nobody", Secret("alice-pw")) is None
    assert d.authenticate("dario", Secret("dario-pw")) is None  # disabled
    assert d.lookup("alice").display_name == "Alice Rossi"
    assert d.lookup("dario") is None
    assert d.lookup("nobody") is None


def test_unknown_user_costs_a_verify(users_file, monkeypatch):
    import gateway.auth.static_directory as mod

    calls = []
    real = mod.verify_password
    monkeypatch.setattr(mod, "verify_password", lambda pw, h: calls.append(h) or real(pw, h))
    d = StaticDirectory(users_file)
    assert d.authenticate("nobody", Secret("x")) is None
    assert d.authenticate("dario", Secret("x")) is None
    assert len(calls) == 2
    dummy = parse_password_hash(calls[0])
    assert (dummy.n, dummy.r, dummy.p) == (2**10, 8, 1)  # same cost as the real users


def test_unknown_and_known_users_take_comparable_time(users_file):
    d = StaticDirectory(users_file)

    def timed(user):
        t = time.perf_counter()
        for _ in range(10):
            d.authenticate(user, Secret("wrong"))
        return time.perf_counter() - t

    timed("alice")  # warm up
    known, unknown = timed("alice"), timed("nobody")
    assert 1 / 3 < unknown / known < 3  # loose: CI machines are noisy


def test_file_changes_are_picked_up(users_file):
    d = StaticDirectory(users_file)
    assert d.lookup("alice") is not None
    text = users_file.read_text().replace('groups = ["legale"]', 'groups = ["legale"]\ndisabled = true')
    users_file.write_text(text)
    os.utime(users_file, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert d.lookup("alice") is None
    users_file.write_text("[users.alice\n")  # broken edit: unavailable, not silently stale
    with pytest.raises(DirectoryUnavailable, match="users.toml"):
        d.lookup("alice")


@pytest.mark.parametrize(
    "body, key",
    [
        ('[users.alice]\npassword = "hunter2"\n', "users.alice.password: not a scrypt hash"),
        ("[users.alice]\ndisplay_name = 'A'\n", "users.alice.password: missing"),
        ("[users.alice]\npassword = '{h}'\ngroups = 'legale'\n", "users.alice.groups"),
        ("[users.alice]\npassword = '{h}'\ndisabled = 'no'\n", "users.alice.disabled"),
        ("[users.alice]\npassword = '{h}'\npasword = 'x'\n", "users.alice.pasword: unknown key"),
        ("[people.alice]\n", "people: unknown key"),
        ("users = 3\n", "users: must be a table"),
        ("[users.alice\n", "not valid TOML"),
    ],
)
def test_bad_file_names_file_and_key(tmp_path, body, key):
    h = hash_password(Secret("pw"), **FAST)
    path = write_users(tmp_path / "users.toml", body.replace("{h}", h))
    with pytest.raises(StaticDirectoryError) as info:
        StaticDirectory(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value) and key in str(info.value)
    assert "hunter2" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(StaticDirectoryError, match="nope.toml"):
        StaticDirectory(tmp_path / "nope.toml")
