"""The office folder policy end to end: real slapd, real Dovecot, imaplib and mbsync.

Two people in two offices share one PEC mailbox (seeded with INBOX, Ricevute, Ufficio Legale,
Acquisti, Acquisti/Fornitori and Contabilità):

* alice (legale) reads and marks INBOX, reads Ricevute, works in Ufficio Legale — but has no
  x, t or e anywhere, like everybody under the PEC-safe default;
* bruno (acquisti) may flag INBOX but not mark it read (``lrw``), reads Ricevute and
  Contabilità, works in Acquisti and its subfolders.

Dovecot is always checked directly, with the provider password, to see what really happened.
The last tests send hostile byte sequences with a raw TLS client — what a person could type to
get around the policy — and check at Dovecot that nothing the policy forbids happened.
"""

from __future__ import annotations

import imaplib

import pytest

from gateway.secret import Secret
from tests.fixtures.gateway import GatewayHarness, ldap_directory, upstream_table
from tests.fixtures.raw_imap import RawImap
from tests.test_third_party_clients import maildir_snapshot, mbsync_config, run_mbsync


OFFICES = {"legale": {"groups": ["legale"]}, "acquisti": {"groups": ["acquisti"]}}
RULES = [
    ("legale", "INBOX", "lrs"),
    ("legale", "Ricevute", "lr"),
    ("legale", "Ufficio Legale", "lrswik"),
    ("acquisti", "INBOX", "lrw"),
    ("acquisti", "Ricevute", "lr"),
    ("acquisti", "Acquisti", "lrswik"),
    ("acquisti", "Acquisti/*", "lrswik"),
    ("acquisti", "Contabilità", "lr"),
]


def policy_tables(rules=RULES) -> dict:
    return {"offices": OFFICES, "mailboxes": {"protocollo": {
        "send": ["legale", "acquisti"],
        "rules": [{"office": o, "folders": f, "rights": r} for o, f, r in rules]}}}


@pytest.fixture
def gw(tmp_path, pki, slapd, dovecot, pec_mailbox):
    h = GatewayHarness(tmp_path / "gw", pki)
    h.vault.set("ldap/bind", Secret(slapd.service_password))
    h.vault.set("mailbox/protocollo", Secret(pec_mailbox.password))
    for person in ("alice", "bruno"):
        h.enroll(person)
    h.start(h.base_tables(directory=ldap_directory(slapd), policy=policy_tables(), mailboxes={
        "protocollo": {"address": pec_mailbox.address,
                       "imap": upstream_table(dovecot, pki, pec_mailbox.address)}}))
    h.mailbox = pec_mailbox
    yield h
    h.stop()


def login(gw, user: str) -> imaplib.IMAP4_SSL:
    c = gw.imap()
    c.login(user, gw.credential(user, f"{user}-password"))
    return c


def direct(gw, dovecot) -> imaplib.IMAP4_SSL:
    return dovecot.connect(gw.mailbox.address, gw.mailbox.password)


def flags(c: imaplib.IMAP4, folder: str) -> list[bytes]:
    """Each message's FLAGS in ``folder``, read without changing anything (EXAMINE)."""
    typ, _ = c.select(folder, readonly=True)
    assert typ == "OK", folder
    typ, data = c.fetch("1:*", "(FLAGS)")
    c.close()
    return [item for item in data if item]


def listed(c: imaplib.IMAP4) -> set[str]:
    typ, data = c.list()
    assert typ == "OK"
    return {line.rsplit(b' "/" ', 1)[1].strip(b'"').decode() for line in data}


# -- what each person sees ---------------------------------------------------------------
def test_each_person_lists_exactly_the_folders_the_policy_allows(gw):
    alice, bruno = login(gw, "alice"), login(gw, "bruno")
    try:
        assert listed(alice) == {"INBOX", "Ricevute", "Ufficio Legale"}
        assert listed(bruno) == {"INBOX", "Ricevute", "Acquisti", "Acquisti/Fornitori", "Contabilit&AOA-"}
        # a hidden folder looks exactly like one that does not exist
        hidden = alice.select('"Contabilit&AOA-"')
        missing = alice.select('"Non Esiste"')
        assert hidden == missing == ("NO", [b"[NONEXISTENT] No such folder"])
        typ, data = alice.status('"Acquisti"', "(MESSAGES)")
        assert (typ, data) == ("NO", [b"[NONEXISTENT] No such folder"])
        typ, data = alice.list('""', '"Acquisti*"')
        assert typ == "OK" and data == [None]
    finally:
        alice.logout()
        bruno.logout()


def test_mbsync_per_person_syncs_exactly_the_allowed_folders(gw, pki, tmp_path):
    folders = gw.mailbox.folders
    for person, expected in (("alice", {"INBOX", "Ricevute", "Ufficio Legale"}),
                             ("bruno", {"INBOX", "Ricevute", "Acquisti", "Acquisti/Fornitori", "Contabilità"})):
        cfg = mbsync_config(tmp_path / f"{person}.rc", port=gw.ports["implicit"], user=person,
                            password=gw.credential(person, f"{person}-password"), ca=pki.ca_cert,
                            local=tmp_path / person)
        run_mbsync(cfg, "--pull")
        snapshot = maildir_snapshot(tmp_path / person)
        wire = {name.replace("Contabilità", "Contabilit&AOA-") for name in expected}
        assert set(snapshot) == wire, person
        for name in expected:
            local = snapshot[name.replace("Contabilità", "Contabilit&AOA-")]
            assert len(local) == len(folders[name]), (person, name)


# -- reading without the s right --------------------------------------------------------
def test_reading_without_s_leaves_the_pec_unread_for_everybody(gw, dovecot):
    seen_before = flags(direct(gw, dovecot), "INBOX")
    assert not any(b"\\Seen" in f for f in seen_before)
    d = direct(gw, dovecot)
    d.select("INBOX", readonly=True)
    bodies = [d.fetch(n, "(BODY.PEEK[])")[1][0][1] for n in ("1", "2")]
    d.logout()
    bruno = login(gw, "bruno")
    try:
        # INBOX opens read-write (bruno may flag), but the body is fetched with PEEK
        typ, data = bruno.select("INBOX")
        assert typ == "OK"
        typ, data = bruno.fetch("1", "(BODY[])")
        assert typ == "OK" and data[0][1] == bodies[0]
        typ, data = bruno.fetch("2", "(RFC822)")  # answered under the name the client asked for
        assert typ == "OK" and data[0][0].endswith(b"(RFC822 {%d}" % len(bodies[1])) and data[0][1] == bodies[1]
        typ, _ = bruno.store("1", "+FLAGS", "(\\Seen)")
        assert typ == "NO"
        assert bruno.store("1", "+FLAGS", "($Inoltrato)")[0] == "OK"  # w: other flags are fine
        # Ricevute is read-only for bruno: SELECT runs as EXAMINE and the client is told
        with pytest.raises(imaplib.IMAP4.readonly):
            bruno.select("Ricevute")
        bruno.untagged_responses.pop("READ-ONLY")  # imaplib refuses every later command otherwise
        bruno.is_readonly = True
        typ, data = bruno.fetch("1", "(BODY[TEXT])")
        assert typ == "OK"
    finally:
        bruno.logout()
    after = flags(direct(gw, dovecot), "INBOX")
    assert not any(b"\\Seen" in f for f in after), "bruno's reads must not mark the PEC as read"
    assert b"$Inoltrato" in after[0]
    assert not any(b"\\Seen" in f for f in flags(direct(gw, dovecot), "Ricevute"))
    # alice, who has s, still finds the PEC unread — and marks it read by reading it
    alice = login(gw, "alice")
    try:
        alice.select("INBOX")
        _, data = alice.fetch("1", "(FLAGS)")
        assert b"\\Seen" not in data[0]
        alice.fetch("1", "(BODY[])")
    finally:
        alice.logout()
    assert b"\\Seen" in flags(direct(gw, dovecot), "INBOX")[0]


# -- nobody can erase a PEC without x, t, e ---------------------------------------------
def test_expunge_deleted_flag_move_and_folder_delete_fail_and_nothing_is_lost(gw, dovecot):
    seeded = {name: len(msgs) for name, msgs in gw.mailbox.folders.items()}
    d = direct(gw, dovecot)
    # someone with full rights at the provider flagged a message \Deleted in Ufficio Legale
    d.select('"Ufficio Legale"')
    assert d.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
    d.unselect()
    d.logout()
    alice = login(gw, "alice")
    try:
        assert alice.select('"Ufficio Legale"')[0] == "OK"
        typ, data = alice.store("1", "-FLAGS", "(\\Deleted)")
        assert typ == "NO" and data[0].startswith(b"[NOPERM]")
        typ, data = alice.expunge()
        assert typ == "NO" and data[0].startswith(b"[NOPERM]")
        typ, data = alice.uid("EXPUNGE", "1:*")
        assert typ == "NO" and data[0].startswith(b"[NOPERM]")
        typ, data = alice._simple_command("MOVE", "1", "INBOX")
        assert typ == "NO" and data[0].startswith(b"[NOPERM]")
        typ, _ = alice.close()  # CLOSE would expunge the \Deleted message: it runs as UNSELECT
        assert typ == "OK"
        typ, data = alice.delete('"Ufficio Legale"')
        assert typ == "NO" and data[0].startswith(b"[NOPERM]")
        typ, data = alice.rename('"Ufficio Legale"', '"Ufficio Legale 2"')
        assert typ == "NO" and data[0].startswith(b"[NOPERM]")
        typ, data = alice.delete('"Acquisti"')  # not even visible to alice
        assert typ == "NO" and data[0].startswith(b"[NONEXISTENT]")
    finally:
        alice.logout()
    d = direct(gw, dovecot)
    try:
        typ, data = d.list()
        names = {line.rsplit(b' "/" ', 1)[1].strip(b'"').decode() for line in data}
        assert {"Ufficio Legale", "Acquisti"} <= names
        for name, count in seeded.items():
            typ, data = d.status(f'"{name.replace("Contabilità", "Contabilit&AOA-")}"', "(MESSAGES)")
            assert typ == "OK" and b"(MESSAGES %d)" % count in data[0], (name, data)
    finally:
        d.logout()
    rows = [r for r in gw.audit_events() if r["action"] == "denied"]
    assert len(rows) == 7
    store = rows[0]
    assert (store["person"], store["folder"], store["detail"]["command"], store["detail"]["missing"]) == (
        "alice", "Ufficio Legale", "STORE", "t")
    assert store["detail"]["rules"] == ["mailboxes.protocollo.rules[2]"]
    hidden = rows[-1]
    assert hidden["folder"] is None and hidden["reason"] == "nonexistent"


# -- reload -------------------------------------------------------------------------------
def test_reload_takes_effect_at_the_next_command_of_a_live_session(gw):
    alice = login(gw, "alice")
    try:
        assert alice.select("Ricevute", readonly=True)[0] == "OK"
        assert alice.fetch("1", "(FLAGS)")[0] == "OK"
        rules = [r for r in RULES if r[1] != "Ricevute" or r[0] != "legale"]
        gw.write_policy(policy_tables(rules))
        assert gw.reload() is None
        with pytest.raises(imaplib.IMAP4.error, match="No mailbox selected"):
            alice.fetch("1", "(FLAGS)")  # Ricevute was closed for her at this command
        assert listed(alice) == {"INBOX", "Ufficio Legale"}
        # a broken policy is refused and the one in force stays
        broken = policy_tables()
        broken["offices"] = {**OFFICES, "legale": {"groups": "legale"}}  # a string, not a list
        gw.write_policy(broken)
        error = gw.reload()
        assert error is not None and "offices.legale.groups" in error
        assert listed(alice) == {"INBOX", "Ufficio Legale"}
    finally:
        alice.logout()
    withdrawn = [r for r in gw.audit_events() if r["action"] == "folder_withdrawn"]
    assert [(r["person"], r["folder"]) for r in withdrawn] == [("alice", "Ricevute")]


# -- hostile byte sequences ------------------------------------------------------------------
SMUGGLED = (b'x1 SELECT "Contabilit&AOA-"\r\n'  # hidden from alice
            b'x2 FETCH 1 BODY[]\r\n'
            b'x3 STORE 1 +FLAGS (\\Deleted)\r\n'  # no t anywhere
            b'x4 EXPUNGE\r\n')  # no e anywhere


def raw_login(gw, user: str) -> RawImap:
    r = RawImap("localhost", gw.ports["implicit"], gw.client_context())
    cred = gw.credential(user, f"{user}-password")
    out = r.command(b'l LOGIN %s "%s"\r\n' % (user.encode(), cred.encode()), b"l")
    assert b"l OK" in out, out
    return r


def messages(gw, dovecot, folder: str) -> int:
    d = direct(gw, dovecot)
    try:
        _, data = d.status(f'"{folder}"', "(MESSAGES)")
        return int(data[0].rsplit(b"MESSAGES ", 1)[1].rstrip(b")"))
    finally:
        d.logout()


@pytest.mark.parametrize("prefix,marker", [
    (b"i1 IDLE\r\nDONE\r\n", b"{%d}"),  # IDLE's "+ idling" must not release APPEND's literal
    (b"", b"{%d+}"),  # a non-synchronising literal after an argument the provider refuses
])
def test_a_literal_the_provider_never_asked_for_is_never_sent(gw, dovecot, prefix, marker):
    before = messages(gw, dovecot, "Contabilit&AOA-")
    alice = raw_login(gw, "alice")
    try:
        alice.send(prefix + b'a1 APPEND "Ufficio Legale" "not a date" ' + marker % len(SMUGGLED) + b"\r\n"
                   + SMUGGLED + b"\r\n")
        got = alice.tagged(b"a1")
        assert got.rstrip().endswith(b"Invalid internal date") or b"a1 BAD" in got, got
        after = alice.command(b"z1 NOOP\r\n", b"z1", timeout=3)
    finally:
        alice.close()
    assert b"x4" not in got + after and b"x1" not in got + after
    assert messages(gw, dovecot, "Contabilit&AOA-") == before


def test_hidden_and_missing_folders_get_the_same_replies(gw):
    bruno = raw_login(gw, "bruno")  # "Ufficio Legale" is hidden from him; "Acquisti/Manca" is missing
    try:
        for verb, extra in ((b"SELECT", b""), (b"EXAMINE", b""), (b"STATUS", b" (MESSAGES)"),
                            (b"SUBSCRIBE", b""), (b"UNSUBSCRIBE", b"")):
            hidden = bruno.command(b't %s "Ufficio Legale"%s\r\n' % (verb, extra), b"t").splitlines()[-1]
            missing = bruno.command(b't %s "Acquisti/Manca"%s\r\n' % (verb, extra), b"t").splitlines()[-1]
            if verb == b"UNSUBSCRIBE":  # OK either way (the provider's text carries timings)
                assert hidden.split()[:2] == missing.split()[:2] == [b"t", b"OK"]
            else:
                assert hidden == missing == b"t NO [NONEXISTENT] No such folder", verb
    finally:
        bruno.close()


def test_a_flag_list_followed_by_more_flags_is_refused(gw, dovecot):
    bruno = raw_login(gw, "bruno")  # INBOX lrw: may flag, may not mark read
    try:
        bruno.command(b"s1 SELECT INBOX\r\n", b"s1")
        out = bruno.command(b"t1 STORE 1 +FLAGS (\\Seen) $X\r\n", b"t1")
        assert out.endswith(b"t1 BAD STORE takes one flag list, or flags without parentheses\r\n")
        out = bruno.command(b"t2 FETCH 1 (BODY.PEEK[HEADER.FIELDS (X[)] BODY[] BODY.PEEK[HEADER.FIELDS (])])\r\n",
                            b"t2")
        assert out.endswith(b"BAD FETCH sections may not contain quotes, brackets or literals through the gateway\r\n")
    finally:
        bruno.close()
    assert not any(b"\\Seen" in f for f in flags(direct(gw, dovecot), "INBOX"))


def test_rename_cannot_carry_a_hidden_subfolder_into_view(gw, dovecot):
    d = direct(gw, dovecot)
    for name in ("Ufficio Legale/A", "Ufficio Legale/A/Riservata"):
        assert d.create(f'"{name}"')[0] == "OK"
    d.logout()
    # alice may do everything under "Ufficio Legale" except see "Ufficio Legale/A/Riservata"
    gw.write_policy(policy_tables([*RULES, ("legale", "Ufficio Legale/*", "lrswikx"),
                                   ("legale", "Ufficio Legale/A/Riservata", "")]))
    assert gw.reload() is None
    alice = raw_login(gw, "alice")
    try:
        out = alice.command(b'r1 RENAME "Ufficio Legale/A" "Ufficio Legale/B"\r\n', b"r1")
        assert out.endswith(b"r1 NO [NOPERM] RENAME would also move subfolders you may not move\r\n")
        assert b"Riservata" not in out
        out = alice.command(b'r2 RENAME "Ufficio Legale/A/Riservata" "Ufficio Legale/C"\r\n', b"r2")
        assert out.endswith(b"r2 NO [NONEXISTENT] No such folder\r\n")
    finally:
        alice.close()
    d = direct(gw, dovecot)
    try:
        _, data = d.list('"Ufficio Legale/"', "*")
        names = sorted(line.rsplit(b'"/" ', 1)[1].strip(b'"') for line in data)
        assert names == [b"Ufficio Legale/A", b"Ufficio Legale/A/Riservata"]
    finally:
        d.logout()


def test_pipelined_idles_and_idle_with_arguments(gw, dovecot):
    before = messages(gw, dovecot, "Contabilit&AOA-")
    alice = raw_login(gw, "alice")
    try:
        out = alice.command(b"i1 IDLE\r\nDONE\r\ni2 IDLE\r\nDONE\r\nn1 NOOP\r\n", b"n1")
        assert out.count(b"+ idling") == 2 and b"i2 OK" in out and b"n1 OK" in out, out
        # Dovecot reads nothing after IDLE: a literal there would be taken for DONE and commands
        out = alice.command(b"i3 IDLE {%d+}\r\nDONE\r\n" % (len(SMUGGLED) + 6) + SMUGGLED + b"\r\n", b"i3")
        assert out.endswith(b"i3 BAD IDLE takes no arguments\r\n"), out
    finally:
        alice.close()
    assert messages(gw, dovecot, "Contabilit&AOA-") == before
