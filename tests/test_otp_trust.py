"""TOTP verification with replay protection, QR rendering, and trust windows (explicit clocks)."""

from __future__ import annotations

import os
import stat
from urllib.parse import parse_qs, urlparse

import pytest

from gateway.auth.otp import OtpResult, OtpVerifier, png_qr, terminal_qr
from gateway.auth.trust import TrustWindow
from gateway.secret import Secret

T0 = 1_700_000_010.0  # 10 s into a 30 s step
SECRET = Secret("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")


@pytest.fixture
def otp() -> OtpVerifier:
    secrets = {"alice": SECRET, "bruno": Secret("KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU")}
    return OtpVerifier(secrets.get)


def test_current_code_verifies_once(otp):
    code = otp.current_code(SECRET, T0)
    assert len(code) == 6 and code.isdigit()
    assert otp.check("alice", code, T0) is OtpResult.OK
    assert otp.check("alice", code, T0) is OtpResult.REPLAY
    assert otp.check("alice", code, T0 + 15) is OtpResult.REPLAY  # same step, later
    assert otp.verify("alice", code, T0 + 31) is False  # next step: still a used code


def test_replay_is_per_user(otp):
    assert otp.verify("alice", otp.current_code(SECRET, T0), T0)
    bruno_secret = Secret("KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU")
    assert otp.verify("bruno", otp.current_code(bruno_secret, T0), T0)


def test_previous_step_accepted_once_within_window(otp):
    previous = otp.current_code(SECRET, T0 - 30)
    assert otp.check("alice", previous, T0) is OtpResult.OK
    assert otp.check("alice", previous, T0) is OtpResult.REPLAY
    # the current code is for a newer step, so it is still good
    assert otp.check("alice", otp.current_code(SECRET, T0), T0) is OtpResult.OK


def test_after_a_newer_step_an_older_code_is_refused(otp):
    assert otp.verify("alice", otp.current_code(SECRET, T0), T0)
    older = otp.current_code(SECRET, T0 - 30)
    assert otp.check("alice", older, T0) is OtpResult.REPLAY


def test_codes_outside_the_window_are_bad(otp):
    assert otp.check("alice", otp.current_code(SECRET, T0 - 60), T0) is OtpResult.BAD
    assert otp.check("alice", otp.current_code(SECRET, T0 + 60), T0) is OtpResult.BAD
    assert otp.check("alice", otp.current_code(SECRET, T0 + 30), T0) is OtpResult.OK  # skew


def test_zero_window():
    otp = OtpVerifier({"alice": SECRET}.get, valid_window=0)
    assert otp.check("alice", otp.current_code(SECRET, T0 - 30), T0) is OtpResult.BAD


@pytest.mark.parametrize("code", ["", "12345", "1234567", "12345a", "١٢٣٤٥٦", " 12345"])
def test_malformed_codes_are_bad(otp, code):
    assert otp.check("alice", code, T0) is OtpResult.BAD


def test_not_enrolled_and_broken_secret(otp):
    assert otp.check("carla", "123456", T0) is OtpResult.NOT_ENROLLED
    broken = OtpVerifier({"alice": Secret("not base32 !!")}.get)
    assert broken.check("alice", "123456", T0) is OtpResult.NOT_ENROLLED


def test_eight_digit_codes():
    otp = OtpVerifier({"alice": SECRET}.get, digits=8, period=60)
    code = otp.current_code(SECRET, T0)
    assert len(code) == 8
    assert otp.verify("alice", code, T0)


def test_enrolment_uri_and_qr(tmp_path, otp):
    secret = otp.enroll_secret()
    assert isinstance(secret, Secret) and len(secret.reveal()) == 32
    assert secret.reveal() not in repr(secret)
    uri = otp.provisioning_uri(secret, "alice", "PEC Gateway")
    parsed = urlparse(uri)
    assert parsed.scheme == "otpauth" and parsed.netloc == "totp"
    assert parse_qs(parsed.query)["secret"] == [secret.reveal()]
    assert parse_qs(parsed.query)["issuer"] == ["PEC Gateway"]

    text = terminal_qr(uri)
    lines = text.splitlines()
    assert len(lines) > 10 and len({len(line) for line in lines}) == 1
    assert set(text) <= set(" \xa0█▀▄\n")  # qrcode uses no-break spaces

    written = png_qr(uri, tmp_path / "alice.png")
    assert written == tmp_path / "alice.png"
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o600
    assert written.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# -- trust windows ------------------------------------------------------------------------------

CRED = Secret("alice-password123456")


def test_trust_window_accepts_same_credential_until_expiry():
    trust = TrustWindow(duration_s=3600)
    assert not trust.is_trusted("alice", CRED, T0)
    trust.remember("alice", CRED, T0)
    assert trust.is_trusted("alice", CRED, T0 + 1)
    assert trust.is_trusted("alice", CRED, T0 + 3599)
    assert not trust.is_trusted("alice", CRED, T0 + 3600)
    assert not trust.is_trusted("alice", Secret("alice-password123457"), T0 + 1)
    assert not trust.is_trusted("bruno", CRED, T0 + 1)


def test_default_duration_is_twelve_hours():
    trust = TrustWindow()
    trust.remember("alice", CRED, T0)
    assert trust.is_trusted("alice", CRED, T0 + 12 * 3600 - 1)
    assert not trust.is_trusted("alice", CRED, T0 + 12 * 3600)


def test_forget_drops_all_of_a_users_windows():
    trust = TrustWindow()
    trust.remember("alice", CRED, T0)
    trust.remember("alice", Secret("alice-password654321"), T0)
    trust.remember("bruno", Secret("bruno-password111111"), T0)
    assert trust.forget("alice") == 2
    assert not trust.is_trusted("alice", CRED, T0 + 1)
    assert trust.is_trusted("bruno", Secret("bruno-password111111"), T0 + 1)
    assert trust.forget("alice") == 0


def test_entries_per_user_are_capped_oldest_dropped():
    trust = TrustWindow(max_per_user=8)
    creds = [Secret(f"alice-password{i:06d}") for i in range(10)]
    for i, cred in enumerate(creds):
        trust.remember("alice", cred, T0 + i)
    assert trust.count("alice") == 8
    assert not trust.is_trusted("alice", creds[0], T0 + 20)
    assert not trust.is_trusted("alice", creds[1], T0 + 20)
    assert all(trust.is_trusted("alice", c, T0 + 20) for c in creds[2:])


def test_expired_entries_are_pruned():
    trust = TrustWindow(duration_s=60)
    trust.remember("alice", CRED, T0)
    trust.remember("bruno", Secret("bruno-password111111"), T0)
    trust.remember("carla", Secret("carla-password222222"), T0 + 100)
    assert trust.count("alice") == 0 and trust.count("bruno") == 0
    assert trust.count("carla") == 1
    trust.prune(T0 + 1000)
    assert trust.count("carla") == 0


def test_trust_store_holds_no_clear_credential():
    trust = TrustWindow()
    trust.remember("alice", CRED, T0)
    assert CRED.reveal() not in repr(trust)
    dump = repr(trust._entries)  # what a debugger would show
    assert CRED.reveal() not in dump and "123456" not in dump
