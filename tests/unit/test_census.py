"""The census's pure parts: ``[census]`` config, the unhandled-PEC search, who may use a mailbox,
one inventory row, and reading the provider's QUOTA and STATUS replies."""

from pathlib import Path

import pytest

from gateway.config import CensusConfig, ConfigError, load_config, parse_config
from gateway.imap_proxy.framing import Frame
from gateway.imap_proxy.responses import classify
from gateway.mailbox_census import census_row, offices_allowed, size_text
from gateway.mailbox_probe import ProbeResult, _quota, _status, unhandled_criteria
from policy import parse_policy
from tests.unit.test_config import EXAMPLE, minimal


def test_census_config_defaults_example_and_errors(tmp_path):
    assert parse_config(minimal(), tmp_path / "gw.toml").census == CensusConfig()
    example = load_config(EXAMPLE).census
    assert (example.probe_interval_s, example.probe_timeout_s, example.quota_warn, example.unhandled_age_s) == (
        60.0, 20.0, 0.9, 259200.0)
    for table, key in (({"quota_warn": 1.5}, "census.quota_warn"), ({"quota_warn": -0.1}, "census.quota_warn"),
                       ({"probe_interval": 0}, "census.probe_interval"), ({"unhandled_age": "3d"}, "census.unhandled_age"),
                       ({"typo": 1}, "census.typo")):
        with pytest.raises(ConfigError) as info:
            parse_config(minimal(census=table), tmp_path / "gw.toml")
        assert info.value.key == key


def test_unhandled_pec_search():
    assert unhandled_criteria(259200, within=True) == b"UNSEEN OLDER 259200 HEADER X-Trasporto posta-certificata"
    # 2026-03-05 12:00 UTC minus 3 days: before the 2nd (whole days without WITHIN)
    assert unhandled_criteria(3 * 86400, within=False, now=1772712000.0) == (
        b"UNSEEN BEFORE 2-Mar-2026 HEADER X-Trasporto posta-certificata")
    assert unhandled_criteria(0, within=True) == b"UNSEEN HEADER X-Trasporto posta-certificata"


POLICY = parse_policy({
    "offices": {"legale": {"groups": ["legale"]}, "acquisti": {"groups": ["acquisti"]}, "urp": {"members": ["u"]}},
    "mailboxes": {
        "protocollo": {"send": ["urp"], "rules": [{"office": "legale", "folders": "*", "rights": "lr"},
                                                  {"office": "acquisti", "folders": "Acquisti", "rights": "r"}]},
        "albo": {"default_rights": "lr"},
    }}, "policy.toml")


def test_offices_allowed():
    # acquisti's rule grants no "l": it cannot use the mailbox; urp only sends
    assert offices_allowed(POLICY, "protocollo") == {"everyone": False, "offices": [
        {"office": "legale", "send": False}, {"office": "urp", "send": True}]}
    assert offices_allowed(POLICY, "albo")["everyone"] is True
    assert offices_allowed(POLICY, "unknown") == {"everyone": False, "offices": []}


def test_a_row_takes_the_latest_login_and_flags_the_quota():
    config = parse_config(minimal(), Path("/etc/pecgw/gw.toml")).mailboxes["protocollo"]
    probe = ProbeResult("protocollo", at=200.0, state="ok", login_at=150.0, quota_used=950, quota_limit=1000,
                        messages=12, unseen=3, unhandled=1)
    row = census_row(config, POLICY, probe, 180.0, 0.9)
    assert row["last_login"] == 180.0 and row["quota_ratio"] == 0.95 and row["quota_warn"] is True
    assert (row["messages"], row["unseen"], row["unhandled"], row["upstream"]) == (12, 3, 1, "ok")
    assert row["provider"] == "imap.example.it:993"
    assert census_row(config, POLICY, probe, None, 0.96)["quota_warn"] is False
    never = census_row(config, None, None, None, 0.9)
    assert never["upstream"] == "unknown" and never["reason"] == "not probed yet" and never["last_login"] is None
    assert ProbeResult("protocollo", 1.0, "ok", quota_used=5, quota_limit=None).quota_ratio is None


def frame(line: bytes) -> Frame:
    return Frame(lines=(line,))


def test_quota_and_status_replies():
    quotas: list = []
    for line in (b'* QUOTA "User quota" (STORAGE 10 20 MESSAGE 3 100)\r\n', b"* QUOTA backup (MESSAGE 1 2)\r\n",
                 b"* QUOTA x (STORAGE 7 0)\r\n", b'* QUOTAROOT INBOX "User quota"\r\n'):
        f = frame(line)
        _quota(classify(f), f, quotas)
    assert quotas == [(10240, 20480), (7168, None)]  # units of 1024 octets; a 0 limit is none
    counts: dict = {}
    f = frame(b'* STATUS "INBOX" (MESSAGES 8 UNSEEN 3)\r\n')
    _status(classify(f), f, counts)
    assert counts == {"MESSAGES": 8, "UNSEEN": 3}


def test_sizes_for_people():
    assert [size_text(n) for n in (512, 22 * 1024, 1536 * 1024, 5 * 1024 ** 3, None)] == [
        "512 B", "22 KiB", "1.5 MiB", "5.0 GiB", "-"]


def test_a_login_under_way_is_pending_until_it_ends(tmp_path):
    import os

    from gateway.mailbox_credentials import MailboxCredentials
    from gateway.secret import Secret
    from gateway.vault import Vault

    vault = Vault(tmp_path / "vault.json", os.urandom(32))
    vault.set("mailbox/protocollo", Secret("pw"))
    mailbox = parse_config(minimal(), tmp_path / "gw.toml").mailboxes["protocollo"]
    credentials = MailboxCredentials(vault, ["protocollo"])
    assert not credentials.login_pending("protocollo", 30)
    first = credentials.current(mailbox)  # the receipt watcher starts logging in
    assert credentials.login_pending("protocollo", 30) and not credentials.login_pending("protocollo", 0)
    credentials.refused(first, "[AUTHENTICATIONFAILED]")  # the verdict: the probe would now see the mark
    assert not credentials.login_pending("protocollo", 30) and credentials.blocked(mailbox)
    vault.set("mailbox/protocollo", Secret("new"))
    second = credentials.current(mailbox)
    assert credentials.login_pending("protocollo", 30)
    credentials.ended(second)  # unreachable: no verdict, but over
    assert not credentials.login_pending("protocollo", 30)
    credentials.accepted(credentials.current(mailbox))
    assert not credentials.login_pending("protocollo", 30) and "protocollo" in credentials.last_accepted
