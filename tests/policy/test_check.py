"""Warnings for `policy check`: load fine, but worth a second look."""

import pytest

from policy import parse_policy, warnings

OFFICES = {"legale": {"groups": ["legale"]}, "acquisti": {"groups": ["acquisti"]}}
MB = "p.toml: mailboxes.m"


def _policy(rules, offices=OFFICES, default="", send=("legale", "acquisti")):
    return parse_policy({"offices": offices, "mailboxes": {"m": {
        "default_rights": default, "send": list(send),
        "rules": [{"office": o, "folders": f, "rights": r} for o, f, r in rules]}}}, "p.toml")


WARNINGS = [
    ("clean", [("legale", "*", "lr"), ("legale", "Legale/*", "lrsw"), ("acquisti", "A*", "lr"),
               ("acquisti", "Archivio/Duplicati", "lrte")], []),
    ("equal specificity, same office", [("legale", "*", "lr"), ("legale", "A*", "lr"), ("legale", "*Z", "lrs")],
     [f"{MB}.rules[2].folders: '*Z' is as specific as 'A*' (mailboxes.m.rules[1]) for office 'legale' and "
      "both match e.g. 'AZ'; the first listed (mailboxes.m.rules[1]) wins"]),
    ("equal specificity, disjoint", [("legale", "Acquisti/%", "lr"), ("legale", "Contabil%/%", "lr")], []),
    ("equal specificity, other office", [("legale", "A*", "lr"), ("acquisti", "*Z", "lrs")], []),
    ("wildcard x/t/e", [("legale", "Archivio/*", "lrxte")],
     [f"{MB}.rules[0].rights: the wildcard 'Archivio/*' grants 'xte' (can destroy PEC) on every folder "
      "it matches, including folders created later"]),
    ("rights without l", [("legale", "*", "l"), ("acquisti", "*", "l"), ("legale", "INBOX", "rs")],
     [f"{MB}.rules[2].rights: 'rs' without 'l': the folder is hidden from 'legale', so these rights "
      "count only with another office's 'l'"]),
    ("modified UTF-7", [("legale", "Contabilit&AOA-", "lr"), ("acquisti", "*", "l")],
     [f"{MB}.rules[0].folders: 'Contabilit&AOA-' looks like modified UTF-7; write the folder's human "
      "name ('Contabilità'?)"]),
    ("spaces", [("legale", "Legale ", "lr"), ("acquisti", "*", "l")],
     [f"{MB}.rules[0].folders: 'Legale ' begins or ends with a space"]),
    ("nobody sees the mailbox", [("legale", "*", "")],
     [f"{MB}: nobody can see this mailbox: no rule grants 'l' and default_rights has no 'l'"]),
]


@pytest.mark.parametrize("rules,expected", [w[1:] for w in WARNINGS], ids=[w[0] for w in WARNINGS])
def test_warnings(rules, expected):
    assert warnings(_policy(rules)) == expected


def test_default_l_means_somebody_sees_the_mailbox():
    assert warnings(_policy([], default="l")) == []


def test_office_warnings():
    offices = dict(OFFICES, vuoto={}, inutile={"members": ["x"]})
    assert warnings(_policy([("legale", "*", "l"), ("acquisti", "*", "l")], offices=offices)) == [
        "p.toml: offices.vuoto: no members and no groups: nobody is in this office",
        "p.toml: offices.inutile: no mailbox rule or send list names this office",
    ]
