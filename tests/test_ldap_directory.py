"""LdapDirectory against a real slapd (the session fixture ``slapd`` from tests/conftest.py).

Seeded people: alice (legale), bruno (acquisti), carla (legale, acquisti), dario (legale,
disabled with ppolicy's pwdAccountLockedTime).  Tests that change the directory use their own
freshly added people so the shared server stays as seeded.
"""

from __future__ import annotations

import dataclasses
import secrets
import socket
import time

import pytest

from gateway.auth.directory import DirectoryUnavailable, Person
from gateway.auth.ldap_directory import LdapDirectory, LdapSettings
from gateway.secret import Secret
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slapd


@pytest.fixture
def settings(slapd) -> LdapSettings:
    return LdapSettings(
        url=slapd.url,
        bind_dn=slapd.service_dn,
        bind_password=Secret(slapd.service_password),
        user_base=slapd.people_dn,
        group_base=slapd.groups_dn,
        timeout=2,
    )


@pytest.fixture
def directory(settings) -> LdapDirectory:
    return LdapDirectory(settings)


def fresh_uid(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(3)}"


def test_correct_password_gives_person_with_groups(directory, slapd):
    alice = directory.authenticate("alice", Secret("alice-password"))
    assert alice == Person(
        username="alice",
        display_name="Alice Rossi",
        groups=frozenset({"legale"}),
        dn=f"uid=alice,{slapd.people_dn}",
    )
    carla = directory.authenticate("carla", Secret("carla-password"))
    assert carla.groups == frozenset({"legale", "acquisti"})
    assert directory.authenticate("bruno", Secret("bruno-password")).groups == {"acquisti"}


def test_username_is_returned_in_the_directorys_spelling(directory):
    assert directory.authenticate("ALICE", Secret("alice-password")).username == "alice"


@pytest.mark.parametrize(
    "username, password",
    [
        ("alice", "wrong-password"),
        ("alice", "bruno-password"),
        ("alice", ""),  # an empty password would be an unauthenticated bind (RFC 4513 5.1.2)
        ("nobody", "alice-password"),
        ("", "alice-password"),
        ("dario", "dario-password"),  # disabled
    ],
)
def test_refusals_return_none(directory, username, password):
    assert directory.authenticate(username, Secret(password)) is None


@pytest.mark.parametrize(
    "username",
    ["*", "alice)(uid=*", "alice)(|(uid=*", "*)(uid=*))(|(uid=*", "al*", "alice\\", "alice\x00"],
)
def test_filter_injection_finds_nobody(directory, username):
    for password in ("alice-password", "x"):
        assert directory.authenticate(username, Secret(password)) is None
    assert directory.lookup(username) is None


def test_lookup(directory):
    bruno = directory.lookup("bruno")
    assert bruno.username == "bruno" and bruno.groups == frozenset({"acquisti"})
    assert bruno.display_name == "Bruno Bianchi"
    assert directory.lookup("dario") is None
    assert directory.lookup("nobody") is None


def test_lookup_finds_the_canonical_name_when_people_log_in_with_their_address(settings):
    """Logins by e-mail address (user_filter on mail) give the person as their uid; re-validation
    and revocation look that name up, which must not read as "no such person" (a leaver)."""
    directory = LdapDirectory(dataclasses.replace(
        settings, user_filter="(&(objectClass=inetOrgPerson)(mail={username}))", username_attribute="uid"))
    alice = directory.authenticate("alice@example.it", Secret("alice-password"))
    assert alice is not None and alice.username == "alice"
    assert directory.lookup("alice").groups == alice.groups
    assert directory.lookup("alice@example.it").username == "alice"
    assert directory.lookup("dario") is None  # disabled stays disabled by either name
    assert directory.authenticate("alice", Secret("alice-password")) is None  # logins still by address


def test_disable_enable_and_password_change_take_effect_at_once(directory, slapd):
    uid = fresh_uid("erika")
    slapd.add_person(uid, "first-password", "Erika Gallo", groups=["acquisti"])
    assert directory.authenticate(uid, Secret("first-password")).groups == {"acquisti"}
    slapd.disable(uid)
    assert directory.authenticate(uid, Secret("first-password")) is None
    assert directory.lookup(uid) is None
    slapd.enable(uid)
    assert directory.lookup(uid).display_name == "Erika Gallo"
    slapd.set_password(uid, "second-password")
    assert directory.authenticate(uid, Secret("first-password")) is None
    assert directory.authenticate(uid, Secret("second-password")) is not None
    slapd.add_to_group(uid, "legale")
    assert directory.lookup(uid).groups == {"acquisti", "legale"}


def test_disabled_filter_can_be_turned_off(settings):
    directory = LdapDirectory(dataclasses.replace(settings, disabled_filter=""))
    assert directory.lookup("dario") is not None  # no filter: the entry is found...
    assert directory.authenticate("dario", Secret("dario-password")) is None  # ...ppolicy refuses


def test_ambiguous_filter_matches_nobody(settings, slapd):
    loose = dataclasses.replace(settings, user_filter="(|(uid={username})(objectClass=inetOrgPerson))")
    assert LdapDirectory(loose).authenticate("alice", Secret("alice-password")) is None


def test_wrong_service_password_is_unavailable_without_the_password(settings):
    wrong = "Wr0ng-Service-Pa55"
    directory = LdapDirectory(dataclasses.replace(settings, bind_password=Secret(wrong)))
    with pytest.raises(DirectoryUnavailable) as info:
        directory.authenticate("alice", Secret("alice-password"))
    message = str(info.value)
    assert settings.url in message and "service bind" in message
    assert wrong not in message and "alice-password" not in message
    assert info.value.__cause__ is None


def test_unreachable_port_is_unavailable(settings, slapd):
    url = f"ldap://127.0.0.1:{free_port()}"
    directory = LdapDirectory(dataclasses.replace(settings, url=url))
    for call in (lambda: directory.authenticate("alice", Secret("alice-password")),
                 lambda: directory.lookup("alice")):
        with pytest.raises(DirectoryUnavailable) as info:
            call()
        message = str(info.value)
        assert url in message
        assert slapd.service_password not in message and "alice-password" not in message


def test_error_text_containing_a_password_is_withheld(settings):
    """ldap3 says "... Connection refused": a password that occurs there is never shown."""
    url = f"ldap://127.0.0.1:{free_port()}"
    directory = LdapDirectory(dataclasses.replace(settings, url=url, bind_password=Secret("refused")))
    with pytest.raises(DirectoryUnavailable) as info:
        directory.lookup("alice")
    assert "refused" not in str(info.value) and "withheld" in str(info.value)


def test_silent_server_times_out(settings):
    """A server that accepts TCP but never answers must not hang a login."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel completes the handshake; nobody ever reads
        url = f"ldap://127.0.0.1:{listener.getsockname()[1]}"
        directory = LdapDirectory(dataclasses.replace(settings, url=url, timeout=1))
        started = time.monotonic()
        with pytest.raises(DirectoryUnavailable) as info:
            directory.authenticate("alice", Secret("alice-password"))
        assert time.monotonic() - started < 5
    assert url in str(info.value)
    assert settings.bind_password.reveal() not in str(info.value)


def test_settings_validation(settings):
    with pytest.raises(ValueError, match="user_filter"):
        dataclasses.replace(settings, user_filter="(uid=alice)")
    with pytest.raises(ValueError, match="ldap://"):
        dataclasses.replace(settings, url="http://example.it")
    with pytest.raises(ValueError, match="disabled_filter"):
        dataclasses.replace(settings, disabled_filter="pwdAccountLockedTime=*")
    assert settings.bind_password.reveal() not in repr(settings)


async def test_authenticator_over_ldap(directory):
    """End to end: LDAP password + TOTP; OTP is keyed by the directory's spelling of the name."""
    from gateway.auth.authenticator import Authenticator
    from gateway.auth.otp import OtpVerifier
    from gateway.auth.trust import TrustWindow

    otp_secret = OtpVerifier.enroll_secret()
    otp = OtpVerifier({"carla": otp_secret}.get)
    now = 1_700_000_010.0
    auth = Authenticator(directory, otp, TrustWindow(), failure_delay_s=0.01, clock=lambda: now)
    credential = Secret("carla-password" + otp.current_code(otp_secret, now))
    outcome = await auth.authenticate("Carla", credential)
    assert outcome.reason == "ok" and outcome.person.groups == {"legale", "acquisti"}
    assert (await auth.authenticate("carla", credential)).reason == "trusted"
    wrong = Secret("carla-passwor" + otp.current_code(otp_secret, now))
    assert (await auth.authenticate("carla", wrong)).reason == "bad_password"
