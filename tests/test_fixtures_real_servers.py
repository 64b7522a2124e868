"""The real-server fixtures work: slapd (ACLs, ppolicy lock) and Dovecot (TLS, folders, bytes,
STARTTLS-only plaintext listener, mail_max_userip_connections)."""

from __future__ import annotations

import email.utils
import imaplib
import re
import secrets
import ssl
import time

import ldap3
import pytest

from tests.fixtures.dovecot import (VerifiedIMAP4_SSL, imap_mailbox_arg, imap_utf7_decode,
                                    imap_utf7_encode)
from tests.fixtures.pki import client_ssl_context

LIST_LINE = re.compile(rb'^\((?P<flags>[^)]*)\) "(?P<sep>[^"]*)" (?P<name>.+)$')


def _ldap(slapd, user: str | None = None, password: str | None = None) -> ldap3.Connection:
    server = ldap3.Server("127.0.0.1", port=slapd.port, get_info=ldap3.NONE, connect_timeout=5)
    return ldap3.Connection(server, user, password, receive_timeout=5)


# -- slapd --------------------------------------------------------------------------------------

@pytest.mark.slapd
class TestSlapd:
    def test_people_bind_with_their_password(self, slapd):
        for uid in ("alice", "bruno", "carla"):
            conn = _ldap(slapd, slapd.person_dn(uid), f"{uid}-password")
            assert conn.bind(), conn.result
            conn.unbind()

    def test_wrong_password_is_refused(self, slapd):
        conn = _ldap(slapd, slapd.person_dn("alice"), "not-alice-password")
        assert not conn.bind()
        assert conn.result["description"] == "invalidCredentials"

    def test_disabled_person_is_locked_and_cannot_bind(self, slapd):
        with _ldap(slapd, slapd.service_dn, slapd.service_password) as svc:
            svc.search(slapd.person_dn("dario"), "(objectClass=*)", ldap3.BASE,
                       attributes=["pwdAccountLockedTime"])
            assert svc.entries[0]["pwdAccountLockedTime"].raw_values == [b"000001010000Z"]
            svc.search(slapd.people_dn, "(pwdAccountLockedTime=*)", attributes=["uid"])
            assert [e.uid.value for e in svc.entries] == ["dario"]
        conn = _ldap(slapd, slapd.person_dn("dario"), "dario-password")
        assert not conn.bind()
        assert conn.result["description"] == "invalidCredentials"

    def test_service_account_reads_people_and_groups_but_no_passwords(self, slapd):
        with _ldap(slapd, slapd.service_dn, slapd.service_password) as svc:
            svc.search(slapd.people_dn, "(objectClass=inetOrgPerson)",
                       attributes=["uid", "cn", "mail", "userPassword"])
            people = {e.uid.value: e for e in svc.entries}
            assert set(people) >= {"alice", "bruno", "carla", "dario"}
            assert people["alice"].cn.value == "Alice Rossi"
            assert people["alice"].mail.value == "alice@example.it"
            assert all(not e.userPassword.values for e in svc.entries)
            carla = slapd.person_dn("carla")
            svc.search(slapd.groups_dn, f"(&(objectClass=groupOfNames)(member={carla}))",
                       attributes=["cn"])
            assert sorted(e.cn.value for e in svc.entries) == ["acquisti", "legale"]
            svc.search(slapd.group_dn("legale"), "(objectClass=*)", ldap3.BASE,
                       attributes=["member"])
            members = set(svc.entries[0].member.values)
            assert {slapd.person_dn(u) for u in ("alice", "carla", "dario")} <= members
            assert slapd.person_dn("bruno") not in members

    def test_anonymous_sees_nothing(self, slapd):
        with _ldap(slapd) as anon:
            anon.search(slapd.base_dn, "(objectClass=*)", attributes=["*"])
            assert anon.entries == []

    def test_people_read_only_their_own_entry(self, slapd):
        with _ldap(slapd, slapd.person_dn("alice"), "alice-password") as alice:
            own, other = slapd.person_dn("alice"), slapd.person_dn("bruno")
            alice.search(own, "(objectClass=*)", ldap3.BASE, attributes=["uid"])
            assert [e.uid.value for e in alice.entries] == ["alice"]
            alice.search(other, "(objectClass=*)", ldap3.BASE, attributes=["uid"])
            assert alice.entries == []
            alice.search(slapd.people_dn, "(objectClass=inetOrgPerson)", attributes=["uid"])
            assert alice.entries == []  # no search right on ou=people itself

    def test_modification_helpers(self, slapd):
        uid = f"tmp{secrets.token_hex(3)}"
        slapd.add_person(uid, "pw-one", "Temp Person", groups=["acquisti"])
        try:
            def binds(password: str) -> bool:
                conn = _ldap(slapd, slapd.person_dn(uid), password)
                ok = conn.bind()
                conn.unbind()
                return ok

            def groups() -> set[str]:
                with _ldap(slapd, slapd.service_dn, slapd.service_password) as svc:
                    svc.search(slapd.groups_dn, f"(member={slapd.person_dn(uid)})",
                               attributes=["cn"])
                    return {e.cn.value for e in svc.entries}

            assert binds("pw-one") and groups() == {"acquisti"}
            slapd.disable(uid)
            assert not binds("pw-one")
            slapd.enable(uid)
            assert binds("pw-one")
            slapd.set_password(uid, "pw-two")
            assert not binds("pw-one") and binds("pw-two")
            slapd.remove_from_group(uid, "acquisti")
            assert groups() == set()
            slapd.add_to_group(uid, "legale")
            assert groups() == {"legale"}
        finally:
            slapd.delete_person(uid)
        assert not binds("pw-two") and groups() == set()


# -- Dovecot ------------------------------------------------------------------------------------

def _list(imap: imaplib.IMAP4) -> dict[str, tuple[str, str]]:
    """LIST "" "*" as {decoded name: (flags, separator)}."""
    typ, lines = imap.list('""', "*")
    assert typ == "OK"
    out = {}
    for line in lines:
        m = LIST_LINE.match(line)
        assert m, line
        name = m["name"].decode("ascii")
        if name.startswith('"'):
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[imap_utf7_decode(name)] = (m["flags"].decode(), m["sep"].decode())
    return out


@pytest.mark.dovecot
class TestDovecot:
    def test_tls_login_verified_against_the_test_ca(self, dovecot, pec_mailbox):
        imap = dovecot.connect(*pec_mailbox)
        try:
            cert = imap.sock.getpeercert()
            assert ("DNS", "localhost") in cert["subjectAltName"]
            assert imap.sock.version() in ("TLSv1.2", "TLSv1.3")
        finally:
            imap.logout()
        system_trust = ssl.create_default_context()  # does not know the test CA
        with pytest.raises(ssl.SSLCertVerificationError):
            VerifiedIMAP4_SSL(dovecot.host, dovecot.port, ssl_context=system_trust)

    def test_wrong_password_is_refused(self, dovecot, pec_mailbox):
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            dovecot.connect(pec_mailbox.address, "not-the-password")

    def test_seeded_folders_with_slash_separator_and_special_use(self, dovecot, pec_mailbox):
        imap = dovecot.connect(*pec_mailbox)
        try:
            folders = _list(imap)
        finally:
            imap.logout()
        assert set(pec_mailbox.folders) <= set(folders)
        assert "Contabilità" in folders
        assert {sep for _, sep in folders.values()} == {"/"}
        assert "\\Sent" in folders["Sent"][0] and "\\Trash" in folders["Trash"][0]
        assert "\\HasChildren" in folders["Acquisti"][0]

    def test_folders_hold_exactly_the_seeded_bytes(self, dovecot, pec_mailbox):
        imap = dovecot.connect(*pec_mailbox)
        try:
            assert 6 <= len(pec_mailbox.folders["INBOX"]) <= 8
            for folder, messages in pec_mailbox.folders.items():
                typ, data = imap.select(imap_mailbox_arg(folder), readonly=True)
                assert typ == "OK" and int(data[0]) == len(messages), folder
                for seq, expected in enumerate(messages, 1):
                    typ, data = imap.fetch(str(seq), "(BODY.PEEK[])")
                    assert typ == "OK"
                    assert data[0][1] == expected, (folder, seq)
            # INTERNALDATE is the message's Date: (clients sort by it), not the APPEND time.
            typ, data = imap.fetch("1", "(INTERNALDATE BODY.PEEK[HEADER.FIELDS (DATE)])")
            internal = imaplib.Internaldate2tuple(data[0][0])  # a local-time struct_time
            date = email.utils.parsedate_to_datetime(
                data[0][1].decode().partition(":")[2].strip())
            assert time.mktime(internal) == date.timestamp()
        finally:
            imap.logout()

    def test_starttls_port_refuses_plaintext_login(self, dovecot, pec_mailbox):
        plain = dovecot.connect_plain()
        try:
            assert "LOGINDISABLED" in plain.capabilities and "STARTTLS" in plain.capabilities
            with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
                plain.login(*pec_mailbox)
            plain.starttls(client_ssl_context(dovecot.pki))
            typ, _ = plain.login(*pec_mailbox)
            assert typ == "OK"
        finally:
            plain.logout()

    def test_eleventh_connection_is_refused(self, dovecot):
        address, password = f"limit-{secrets.token_hex(4)}@pec.example.it", "limit-pw"
        dovecot.add_mailbox(address, password)
        conns = []
        try:
            for _ in range(10):
                conns.append(dovecot.connect(address, password))
            with pytest.raises(imaplib.IMAP4.error, match=r"mail_max_userip_connections=10"):
                conns.append(dovecot.connect(address, password))
        finally:
            for imap in conns:
                imap.logout()

    def test_password_change_takes_effect(self, dovecot):
        address = f"pw-{secrets.token_hex(4)}@pec.example.it"
        dovecot.add_mailbox(address, "first")
        dovecot.connect(address, "first").logout()
        dovecot.set_password(address, "second")
        with pytest.raises(imaplib.IMAP4.error):
            dovecot.connect(address, "first")
        dovecot.connect(address, "second").logout()


@pytest.mark.parametrize("name, encoded", [
    ("INBOX", "INBOX"), ("Contabilità", "Contabilit&AOA-"), ("R&D", "R&-D"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 5.1.3
])
def test_modified_utf7(name, encoded):
    assert imap_utf7_encode(name) == encoded
    assert imap_utf7_decode(encoded) == name
