"""config/policy.example.toml loads, has no warnings, decides as its comments say, explains well."""

from pathlib import Path

import pytest

from policy import (can_use_mailbox, effective_rights, explain, load_policy, mailbox_send_allowed,
                    offices_of, warnings)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "policy.example.toml"
POLICY = load_policy(EXAMPLE)
K = "mailboxes.protocollo"
FOLDERS = ["INBOX", "Ricevute", "Ufficio Legale", "Ufficio Legale/Pratiche", "Acquisti",
           "Acquisti/Ordini", "Contabilità", "Trash", "Archivio", "Archivio/Duplicati"]


def test_example_loads_without_warnings():
    assert sorted(POLICY.offices) == ["acquisti", "archivio", "legale", "segreteria"]
    assert len(POLICY.mailboxes["protocollo"].rules) == 13
    assert warnings(POLICY) == []


@pytest.mark.parametrize("username,groups,folder,rights,sources", [
    ("carla", ["legale"], "INBOX", "lrs", (f"{K}.rules[0]",)),
    ("carla", ["legale"], "Ufficio Legale", "lrswik", (f"{K}.rules[2]",)),
    ("carla", ["legale"], "Ufficio Legale/Pratiche/2024", "lrswik", (f"{K}.rules[3]",)),
    ("carla", ["legale"], "Acquisti/Ordini", "", (f"{K}.default_rights",)),
    ("carla", ["legale"], "Trash", "", (f"{K}.default_rights",)),
    ("marco", ["acquisti"], "Contabilità", "lr", (f"{K}.rules[8]",)),
    ("marco", ["acquisti"], "Ufficio Legale/Pratiche", "", (f"{K}.default_rights",)),
    # the front desk reads without marking read (no s), and never sees accounting
    ("sara", ["reception"], "INBOX", "lr", (f"{K}.rules[9]",)),
    ("sara", ["reception"], "Contabilità", "", (f"{K}.rules[10]",)),
    ("sara", ["reception"], "Acquisti/Ordini", "", (f"{K}.default_rights",)),
    # a person in two offices gets the union
    ("lucia", ["legale", "segreteria"], "INBOX", "lrs", (f"{K}.rules[0]", f"{K}.rules[9]")),
    ("lucia", ["legale", "segreteria"], "Trash", "lr", (f"{K}.default_rights", f"{K}.rules[9]")),
    # the only x/t/e in the file
    ("dario", [], "Archivio/Duplicati", "lrsixte", (f"{K}.rules[12]",)),
    ("dario", [], "Archivio", "lr", (f"{K}.rules[11]",)),
])
def test_example_decisions(username, groups, folder, rights, sources):
    offices = offices_of(username, groups, POLICY)
    d = effective_rights(POLICY, offices, "protocollo", folder)
    assert (d.rights.render(), set(d.sources)) == (rights, set(sources))


@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("groups", [["legale"], ["acquisti"], ["segreteria"], ["legale", "acquisti", "segreteria"]])
def test_example_nobody_but_the_archivist_can_destroy_a_pec(groups, folder):
    d = effective_rights(POLICY, offices_of("someone", groups, POLICY), "protocollo", folder)
    assert not d.rights.protected


@pytest.mark.parametrize("groups,send", [(["legale"], True), (["acquisti"], True), (["segreteria"], False)])
def test_example_send(groups, send):
    offices = offices_of("x", groups, POLICY)
    assert mailbox_send_allowed(POLICY, offices, "protocollo").rights.send is send
    assert can_use_mailbox(POLICY, offices, "protocollo")


CARLA = """\
person   carla
groups   Legale, staff
offices  legale  group 'Legale' (offices.legale.groups)

mailbox protocollo  (delimiter '/')
  send PEC: yes — legale (mailboxes.protocollo.send[0])

  folder                   rights  office  grants  rule                                 pattern
  INBOX                    lrs     legale  lrs     mailboxes.protocollo.rules[0]        INBOX
  Ricevute                 lr      legale  lr      mailboxes.protocollo.rules[1]        Ricevute
  Ufficio Legale           lrswik  legale  lrswik  mailboxes.protocollo.rules[2]        Ufficio Legale
  Ufficio Legale/Pratiche  lrswik  legale  lrswik  mailboxes.protocollo.rules[3]        Ufficio Legale/*
  Acquisti                 -       legale  -       mailboxes.protocollo.default_rights
  Acquisti/Ordini          -       legale  -       mailboxes.protocollo.default_rights
  Contabilità              -       legale  -       mailboxes.protocollo.default_rights
  Trash                    -       legale  -       mailboxes.protocollo.default_rights
  Archivio                 -       legale  -       mailboxes.protocollo.default_rights
  Archivio/Duplicati       -       legale  -       mailboxes.protocollo.default_rights

rights (RFC 4314): l lookup, r read, s keep seen, w write, i insert, p post, k create,
                  x delete folder, t delete messages, e expunge, a administer; - none (hidden)
"""


def test_explain_per_folder():
    assert explain(POLICY, "carla", ["staff", "Legale"], "protocollo", folders=FOLDERS) == CARLA


def test_explain_two_offices_one_folder():
    lines = explain(POLICY, "dario", ["reception"], "protocollo", folder="Contabilità").splitlines()
    assert lines[2:4] == ["offices  archivio    listed in offices.archivio.members",
                          "         segreteria  group 'reception' (offices.segreteria.groups)"]
    assert "  send PEC: no — none of these offices is listed in mailboxes.protocollo.send" in lines
    i = lines.index("  folder       rights  office      grants  rule                            pattern")
    assert lines[i + 1:i + 3] == [
        "  Contabilità  lr      archivio    lr      mailboxes.protocollo.rules[11]  *",
        "                       segreteria  -       mailboxes.protocollo.rules[10]  Contabilità",
    ]


def test_explain_without_folders_lists_the_rules():
    text = explain(POLICY, "sara", ["reception"])
    table = text.split("\n\n")[2].splitlines()
    assert table == [
        "  office      pattern            rights  rule",
        "  segreteria  Contabilità        -       mailboxes.protocollo.rules[10]",
        "  segreteria  %                  lr      mailboxes.protocollo.rules[9]",
        "  (any)       (no rule matches)  -       mailboxes.protocollo.default_rights",
    ]


def test_explain_nobody():
    lines = explain(POLICY, "eve", []).splitlines()
    assert lines[:3] == ["person   eve", "groups   none", "offices  none"]
    assert "mailboxes: none — no office of this person can see or send from any mailbox" in lines


def test_explain_named_mailbox_the_person_cannot_use():
    lines = explain(POLICY, "eve", [], "protocollo", folder="INBOX").splitlines()
    assert "  cannot use this mailbox: no folder is visible and no send right" in lines
    assert "  INBOX   -       (none)  -       mailboxes.protocollo.default_rights" in lines


def test_explain_unknown_mailbox():
    with pytest.raises(ValueError, match=r"unknown mailbox 'nope' \(mailboxes: protocollo\)"):
        explain(POLICY, "carla", ["legale"], "nope")


def test_explain_output_has_no_trailing_spaces():
    text = explain(POLICY, "lucia", ["legale", "segreteria"], folders=FOLDERS)
    assert all(line == line.rstrip() for line in text.splitlines())
