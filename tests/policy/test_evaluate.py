"""Evaluation: per office the most specific rule decides; union over offices; PEC-safe default."""

import pytest

from policy import (can_use_mailbox, effective_rights, mailbox_send_allowed, memberships,
                    offices_of, parse_policy)

DATA = {
    "offices": {
        "legale": {"groups": ["Legale"], "members": ["carla"]},
        "acquisti": {"groups": ["acquisti"]},
        "segreteria": {"groups": ["segreteria"]},
        "archivio": {"members": ["dario"]},
        "ospiti": {"groups": ["ospiti"]},
    },
    "mailboxes": {
        "protocollo": {
            "default_rights": "l",
            "send": ["legale"],
            "rules": [
                {"office": "legale", "folders": "*", "rights": "lr"},                        # 0
                {"office": "legale", "folders": "Ufficio Legale/*", "rights": "lrswi"},      # 1
                {"office": "legale", "folders": "Ufficio Legale/Riservato", "rights": ""},   # 2
                {"office": "acquisti", "folders": "Acquisti/%", "rights": "lrsw"},           # 3
                {"office": "acquisti", "folders": "Acquisti/*", "rights": "lr"},             # 4
                {"office": "segreteria", "folders": "%", "rights": "lr"},                    # 5
                {"office": "archivio", "folders": "Archivio/Duplicati", "rights": "lrte"},   # 6
                {"office": "legale", "folders": "A*", "rights": "lrs"},                      # 7  tie with 8
                {"office": "legale", "folders": "*Z", "rights": "lrw"},                      # 8
            ],
        },
        "fornitori": {"delimiter": ".", "rules": [
            {"office": "acquisti", "folders": "INBOX.*", "rights": "lrs"}]},
    },
}
POLICY = parse_policy(DATA, "t.toml")
K = "mailboxes.protocollo"

EVALUATIONS = [
    # offices, folder, rights, source keys
    (("legale",), "INBOX", "lr", (f"{K}.rules[0]",)),
    (("legale",), "Ufficio Legale/Pratiche", "lrswi", (f"{K}.rules[1]",)),        # more specific wins
    (("legale",), "Ufficio Legale/Riservato", "", (f"{K}.rules[2]",)),            # narrower grants less
    (("legale",), "Ufficio Legale/Riservato/2024", "lrswi", (f"{K}.rules[1]",)),
    (("legale",), "AZ", "lrs", (f"{K}.rules[7]",)),                               # tie: first listed wins
    (("acquisti",), "Acquisti/Ordini", "lrsw", (f"{K}.rules[3]",)),               # % beats * at equal literals
    (("acquisti",), "Acquisti/Ordini/2024", "lr", (f"{K}.rules[4]",)),
    (("acquisti",), "INBOX", "l", (f"{K}.default_rights",)),                      # no rule: default
    (("segreteria",), "Acquisti", "lr", (f"{K}.rules[5]",)),
    (("segreteria",), "Acquisti/Ordini", "l", (f"{K}.default_rights",)),
    (("acquisti", "segreteria"), "Acquisti/Ordini", "lrsw", (f"{K}.rules[3]", f"{K}.default_rights")),
    (("legale", "segreteria"), "Ufficio Legale/Riservato", "l",                   # % stops at "/"
     (f"{K}.rules[2]", f"{K}.default_rights")),
    (("legale", "segreteria"), "Ricevute", "lr", (f"{K}.rules[0]", f"{K}.rules[5]")),
    (("acquisti", "legale"), "Acquisti/Ordini", "lrsw", (f"{K}.rules[3]", f"{K}.rules[7]")),  # union
    ((), "INBOX", "l", (f"{K}.default_rights",)),                                 # no office: default
    (("nonexistent",), "INBOX", "l", (f"{K}.default_rights",)),
    # x/t/e only where a rule names them
    (("archivio",), "Archivio/Duplicati", "lrte", (f"{K}.rules[6]",)),
    (("archivio",), "Archivio", "l", (f"{K}.default_rights",)),
    (("archivio", "legale", "acquisti", "segreteria"), "Archivio/Duplicati", "lrste",
     (f"{K}.default_rights", f"{K}.rules[6]", f"{K}.rules[7]")),
]


@pytest.mark.parametrize("offices,folder,rights,sources", EVALUATIONS)
def test_effective_rights(offices, folder, rights, sources):
    d = effective_rights(POLICY, offices, "protocollo", folder)
    assert d.rights.render() == rights
    assert set(d.sources) == set(sources)
    assert not d.rights.send


@pytest.mark.parametrize("folder", ["INBOX", "Ufficio Legale/Pratiche", "Acquisti/Ordini", "Archivio",
                                    "Archivio/Duplicati/x", "Trash", "Ufficio Legale/Riservato"])
def test_no_xte_without_an_explicit_grant(folder):
    d = effective_rights(POLICY, ("legale", "acquisti", "segreteria"), "protocollo", folder)
    assert not d.rights.protected


def test_other_delimiter_and_inbox_case():
    assert effective_rights(POLICY, ("acquisti",), "fornitori", "inbox.Ordini").rights.render() == "lrs"
    assert effective_rights(POLICY, ("acquisti",), "fornitori", "INBOX").rights.render() == ""


def test_unknown_mailbox_fails_closed():
    d = effective_rights(POLICY, ("legale",), "nope", "INBOX")
    assert not d.rights and d.sources == ()
    assert not can_use_mailbox(POLICY, ("legale",), "nope")
    assert not mailbox_send_allowed(POLICY, ("legale",), "nope").rights.send


@pytest.mark.parametrize("username,groups,offices", [
    ("carla", [], ("legale",)),                       # listed as a member
    ("mario", ["LEGALE"], ("legale",)),               # group, case-insensitively
    ("Carla", [], ()),                                # usernames are exact
    ("dario", ["segreteria", "acquisti"], ("acquisti", "archivio", "segreteria")),
    ("eve", ["altro"], ()),
])
def test_offices_of(username, groups, offices):
    assert offices_of(username, groups, POLICY) == offices


def test_memberships_say_why():
    (m,) = memberships("carla", ["legale"], POLICY)
    assert (m.office, m.listed, m.groups) == ("legale", True, ("legale",))


@pytest.mark.parametrize("offices,mailbox,usable", [
    (("legale",), "protocollo", True),
    ((), "protocollo", True),                 # default grants l
    (("acquisti",), "fornitori", True),
    (("legale",), "fornitori", False),        # no rule, no send, default ""
    (("ospiti",), "fornitori", False),
])
def test_can_use_mailbox(offices, mailbox, usable):
    assert can_use_mailbox(POLICY, offices, mailbox) is usable


@pytest.mark.parametrize("offices,allowed,sources", [
    (("legale",), True, (f"{K}.send[0]",)),
    (("acquisti", "legale"), True, (f"{K}.send[0]",)),
    (("acquisti",), False, (f"{K}.send",)),
    ((), False, (f"{K}.send",)),
])
def test_send(offices, allowed, sources):
    d = mailbox_send_allowed(POLICY, offices, "protocollo")
    assert d.rights.send is allowed and d.has("send") is allowed
    assert d.sources == sources
    assert not d.rights.letters


def test_offices_must_not_be_a_bare_string():
    with pytest.raises(TypeError, match="not the string 'legale'"):
        effective_rights(POLICY, "legale", "protocollo", "INBOX")
