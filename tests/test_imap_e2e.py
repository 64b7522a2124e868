"""End to end through a real gateway: real slapd, real Dovecot, real imaplib clients.

Each test gets a fresh PEC mailbox on the session's Dovecot (seeded with realistic PEC messages)
and a fresh gateway whose vault holds that mailbox's password and the people's OTP secrets.
"""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
import time

import pytest

from gateway.secret import Secret
from tests.fixtures.gateway import FULL_RIGHTS, GatewayHarness, ldap_directory, office_policy, upstream_table

AUTH_FAILED = b"[AUTHENTICATIONFAILED] Authentication failed"


@pytest.fixture
def second_mailbox(dovecot):
    address, password = "fornitori@pec.example.it", "fornitori-provider-pw"
    dovecot.add_mailbox(address, password, {"INBOX": []})
    return address, password


@pytest.fixture
def gw(tmp_path, pki, slapd, dovecot, pec_mailbox, second_mailbox):
    h = GatewayHarness(tmp_path / "gw", pki)
    h.vault.set("ldap/bind", Secret(slapd.service_password))
    h.vault.set("mailbox/protocollo", Secret(pec_mailbox.password))
    h.vault.set("mailbox/fornitori", Secret(second_mailbox[1]))
    for person in ("alice", "bruno", "carla", "dario"):
        h.enroll(person)
    tables = h.base_tables(
        directory=ldap_directory(slapd),
        policy=office_policy({"legale": {"groups": ["legale"]}, "acquisti": {"groups": ["acquisti"]},
                              "collaudo": {"members": ["carla"]}},
                             {"protocollo": ["legale", "acquisti"], "fornitori": ["acquisti"], "spenta": ["collaudo"]},
                             rights=FULL_RIGHTS),
        mailboxes={
            "protocollo": {"address": pec_mailbox.address,
                           "imap": upstream_table(dovecot, pki, pec_mailbox.address)},
            "fornitori": {"address": second_mailbox[0],
                          "imap": upstream_table(dovecot, pki, second_mailbox[0])},
            "spenta": {"address": "spenta@pec.example.it",
                       "imap": {**upstream_table(dovecot, pki, "spenta@pec.example.it"), "port": _closed_port()}},
        },
    )
    h.mailbox = pec_mailbox
    h.start(tables)
    yield h
    h.stop()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def login(gw: GatewayHarness, user: str, password: str, login_name: str | None = None) -> imaplib.IMAP4_SSL:
    c = gw.imap()
    c.login(login_name or user, gw.credential(user, password))
    return c


def fetch_all(c: imaplib.IMAP4, folder: str) -> list[tuple[bytes, bytes]]:
    typ, _ = c.select(folder, readonly=True)
    assert typ == "OK", folder
    typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
    assert typ == "OK"
    return [(item[0], item[1]) for item in data if isinstance(item, tuple)]


def test_mailbox_seen_through_gateway_equals_direct(gw, dovecot):
    direct = dovecot.connect(gw.mailbox.address, gw.mailbox.password)
    via = login(gw, "alice", "alice-password")
    _, direct_list = direct.list()
    _, via_list = via.list()
    assert sorted(via_list) == sorted(direct_list) and len(via_list) >= 5
    for line in direct_list:
        name = re.match(rb'\(.*?\) "." (.*)$', line).group(1)
        folder = name.decode()
        assert fetch_all(via, folder) == fetch_all(direct, folder)
    via.logout()
    direct.logout()


def test_login_ok_carries_filtered_capabilities(gw):
    c = gw.imap()
    assert "AUTH=PLAIN" in c.capabilities and "STARTTLS" not in c.capabilities
    typ, data = c.login("alice", gw.credential("alice", "alice-password"))
    assert typ == "OK"
    assert data[0].startswith(b"[CAPABILITY ")
    caps = data[0].split(b"]")[0].split()[1:]
    assert b"IDLE" in caps and b"MOVE" in caps and b"LITERAL+" in caps
    assert not [cap for cap in caps if cap.startswith((b"COMPRESS", b"AUTH=", b"STARTTLS", b"LOGINDISABLED"))]
    c.logout()


def test_authenticate_plain_with_sasl_ir(gw):
    c = gw.imap()
    cred = gw.credential("alice", "alice-password")
    typ, _ = c.authenticate("PLAIN", lambda _: f"\0alice\0{cred}".encode())
    assert typ == "OK" and c.state == "AUTH"
    assert c.select("INBOX")[0] == "OK"
    c.logout()


def test_trust_window_accepts_the_same_saved_string(gw):
    cred = gw.credential("alice", "alice-password")
    for _ in range(3):  # a mail client reconnecting with its saved password
        c = gw.imap()
        assert c.login("alice", cred)[0] == "OK"
        c.logout()


@pytest.mark.parametrize("who,password,otp_ok", [
    ("alice", "wrong-password", True),
    ("alice", "alice-password", False),
    ("dario", "dario-password", True),  # disabled in LDAP
    ("nobody", "whatever-pass", True),  # unknown
])
def test_failures_are_indistinguishable_and_audited(gw, who, password, otp_ok):
    c = gw.imap()
    code = gw.code(who) if who in gw.otp_secrets else "123456"
    if not otp_ok:
        code = f"{(int(code) + 1) % 1000000:06d}"
    with pytest.raises(imaplib.IMAP4.error) as info:
        c.login(who, password + code)
    assert str(info.value) == str(AUTH_FAILED)
    rows = gw.audit_events(wait_for=1)
    failed = [r for r in rows if r["action"] == "login_failed"]
    assert len(failed) == 1 and failed[0]["person"] == who and failed[0]["decision"] == "deny"
    assert failed[0]["client_ip"] == "127.0.0.1" and failed[0]["reason"]


def test_several_mailboxes_need_a_choice(gw):
    c = gw.imap()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHORIZATIONFAILED.*name#mailbox.*fornitori, protocollo"):
        c.login("bruno", gw.credential("bruno", "bruno-password"))
    c = gw.imap()
    assert c.login("bruno#fornitori", gw.credential("bruno", "bruno-password"))[0] == "OK"
    c.logout()
    c = gw.imap()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHORIZATIONFAILED"):
        c.login("alice#fornitori", gw.credential("alice", "alice-password"))


def test_login_before_starttls_is_refused(gw):
    c = gw.imap_plain()
    assert "LOGINDISABLED" in c.capabilities and "STARTTLS" in c.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        c.login("alice", gw.credential("alice", "alice-password"))
    c.starttls(ssl_context=gw.client_context())
    assert c.login("alice", gw.credential("alice", "alice-password"))[0] == "OK"
    c.logout()


def test_provider_down_gives_unavailable_and_is_audited(gw):
    c = gw.imap()
    with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\] The PEC provider is unavailable"):
        c.login("carla#spenta", gw.credential("carla", "carla-password"))
    rows = gw.audit_events(wait_for=1)
    assert rows[-1]["action"] == "upstream_unavailable" and rows[-1]["mailbox"] == "spenta"


def test_provider_refusing_vaulted_password_gives_unavailable(gw):
    gw.vault.set("mailbox/protocollo", Secret("not-the-password"))
    c = gw.imap()
    with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
        c.login("alice", gw.credential("alice", "alice-password"))


def test_flags_set_through_gateway_are_visible_directly(gw, dovecot):
    c = login(gw, "alice", "alice-password")
    c.select("INBOX")
    typ, _ = c.uid("STORE", "1", "+FLAGS", "(\\Flagged $Presa-In-Carico)")
    assert typ == "OK"
    c.logout()
    d = dovecot.connect(gw.mailbox.address, gw.mailbox.password)
    d.select("INBOX", readonly=True)
    _, data = d.uid("FETCH", "1", "(FLAGS)")
    assert b"\\Flagged" in data[0] and b"$Presa-In-Carico" in data[0]
    d.logout()


def test_append_literal_and_idle(gw, dovecot):
    c = login(gw, "alice", "alice-password")
    msg = b"From: a@example.it\r\nSubject: prova\r\n\r\nCorpo\r\n"
    typ, data = c.append("INBOX", "(\\Seen)", None, msg)
    assert typ == "OK" and b"APPENDUID" in data[0]
    c.select("INBOX")
    tag = c._new_tag()
    c.send(tag + b" IDLE\r\n")
    assert c.readline().startswith(b"+")
    d = dovecot.connect(gw.mailbox.address, gw.mailbox.password)
    d.append("INBOX", None, None, b"Subject: new\r\n\r\nx\r\n")
    d.logout()
    line = c.readline()
    assert re.match(rb"\* \d+ (EXISTS|RECENT)", line), line
    c.send(b"DONE\r\n")
    while not (line := c.readline()).startswith(tag):
        pass
    assert b"OK" in line
    c.logout()


def test_logout_is_audited_with_person_and_client_name(gw):
    c = login(gw, "carla", "carla-password", "carla#protocollo")
    c.xatom("ID", '("name" "pytest-imaplib" "version" "3")')
    c.logout()
    rows = gw.audit_events(wait_for=2)
    login_row = [r for r in rows if r["action"] == "login"][0]
    logout_row = [r for r in gw.audit_events(wait_for=2) if r["action"] == "logout"]
    assert login_row["person"] == "carla" and login_row["offices"] == ["acquisti", "collaudo", "legale"]
    assert logout_row and logout_row[0]["client_name"] == "pytest-imaplib 3"


# -- malformed input: only the offending session suffers ----------------------------------------
def _raw_tls(gw) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", gw.ports["implicit"]), timeout=10)
    tls = gw.client_context().wrap_socket(sock, server_hostname="localhost")
    assert tls.recv(4096).startswith(b"* OK")
    return tls


def _read_until_closed(sock) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (ConnectionError, ssl.SSLError, TimeoutError):
        pass
    return out


def test_malformed_input_closes_only_that_session(gw):
    healthy = login(gw, "alice", "alice-password")
    healthy.select("INBOX")

    huge = _raw_tls(gw)  # a 10 MB line
    try:
        huge.sendall(b"a1 NOOP " + b"x" * (10 * 1024 * 1024))
    except (ConnectionError, ssl.SSLError):
        pass
    assert b"* BYE Protocol error: line exceeds" in _read_until_closed(huge)

    big_literal = _raw_tls(gw)  # a literal over the pre-auth limit, then a normal command
    big_literal.sendall(b"a1 LOGIN {99999999}\r\na2 NOOP\r\n")
    reply = big_literal.recv(4096)
    while b"a2 " not in reply:
        reply += big_literal.recv(4096)
    assert b"a1 NO [TOOBIG]" in reply
    big_literal.close()

    nonsync = _raw_tls(gw)  # a non-synchronising literal over the limit cannot be skipped: closed
    nonsync.sendall(b"a1 LOGIN {99999999+}\r\n")
    assert b"* BYE Protocol error: literal of 99999999 octets exceeds 8192" in _read_until_closed(nonsync)

    garbage = _raw_tls(gw)
    garbage.sendall(b"\x00\xff\x13garbage\r\n)(\r\n")
    assert b"BAD" in garbage.recv(4096)
    garbage.close()

    mid_literal = _raw_tls(gw)  # authenticated, then gone halfway through an APPEND
    cred = gw.credential("alice", "alice-password").encode()
    mid_literal.sendall(b"a1 LOGIN alice " + cred + b"\r\n")
    assert b"a1 OK" in mid_literal.recv(4096)
    mid_literal.sendall(b"a2 APPEND INBOX {100000+}\r\n" + b"y" * 5000)
    mid_literal.close()

    plain_garbage = socket.create_connection(("127.0.0.1", gw.ports["implicit"]), timeout=5)
    plain_garbage.sendall(b"this is not TLS\r\n" * 10)  # broken TLS handshake
    _read_until_closed(plain_garbage)

    assert healthy.noop()[0] == "OK"
    typ, data = healthy.uid("FETCH", "1", "(UID FLAGS)")
    assert typ == "OK" and b"UID 1" in data[0]
    fresh = login(gw, "alice", "alice-password")
    assert fresh.select("INBOX")[0] == "OK"
    fresh.logout()
    healthy.logout()


# -- the provider side: STARTTLS, certificate checks, a provider that never answers -------------
def _gateway_with_upstream(workdir, pki, slapd, mailbox, imap_table) -> GatewayHarness:
    h = GatewayHarness(workdir, pki)
    h.vault.set("ldap/bind", Secret(slapd.service_password))
    h.vault.set("mailbox/protocollo", Secret(mailbox.password))
    h.enroll("alice")
    return h.start(h.base_tables(
        directory=ldap_directory(slapd),
        policy=office_policy({"legale": {"groups": ["legale"]}}, {"protocollo": ["legale"]}, rights=FULL_RIGHTS),
        mailboxes={"protocollo": {"address": mailbox.address, "imap": imap_table}}))


def test_upstream_starttls(tmp_path, pki, slapd, dovecot, pec_mailbox):
    table = {**upstream_table(dovecot, pki, pec_mailbox.address), "tls": "starttls", "port": dovecot.starttls_port}
    h = _gateway_with_upstream(tmp_path / "gw-starttls", pki, slapd, pec_mailbox, table)
    try:
        c = login(h, "alice", "alice-password")
        typ, data = c.select("INBOX")
        assert typ == "OK" and int(data[0]) == len(pec_mailbox.folders["INBOX"])
        c.logout()
    finally:
        h.stop()


def test_upstream_certificate_is_verified(tmp_path, pki, slapd, dovecot, pec_mailbox):
    from tests.fixtures.pki import make_pki

    other_ca = make_pki(tmp_path / "other-ca").ca_cert
    table = {**upstream_table(dovecot, pki, pec_mailbox.address), "ca_file": str(other_ca)}
    h = _gateway_with_upstream(tmp_path / "gw-other-ca", pki, slapd, pec_mailbox, table)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
            login(h, "alice", "alice-password")
        rows = h.audit_events(wait_for=1)
        assert rows[-1]["action"] == "upstream_unavailable" and rows[-1]["reason"] == "upstream_tls"
        wrong_name = {**upstream_table(dovecot, pki, pec_mailbox.address), "server_name": "imap.example.org"}
        h.stop()
        h = _gateway_with_upstream(tmp_path / "gw-wrong-name", pki, slapd, pec_mailbox, wrong_name)
        with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
            login(h, "alice", "alice-password")
    finally:
        h.stop()


def test_silent_provider_times_out_with_unavailable(tmp_path, pki, slapd, pec_mailbox):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts connections, never says a word
    table = {"host": "127.0.0.1", "port": silent.getsockname()[1], "tls": "starttls", "username": "x",
             "connect_timeout": 1, "login_timeout": 1}
    h = _gateway_with_upstream(tmp_path / "gw-silent", pki, slapd, pec_mailbox, table)
    try:
        started = time.monotonic()
        with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
            login(h, "alice", "alice-password")
        assert time.monotonic() - started < 5
        assert h.audit_events(wait_for=1)[-1]["reason"] == "upstream_timeout"
    finally:
        h.stop()
        silent.close()


def _exchange(sock, data: bytes, tag: bytes) -> bytes:
    """Send raw bytes and read until the tagged reply for ``tag``."""
    sock.sendall(data)
    out = b""
    while not re.search(rb"(^|\r\n)" + re.escape(tag) + rb" (OK|NO|BAD)[^\r\n]*\r\n", out):
        chunk = sock.recv(65536)
        assert chunk, out
        out += chunk
    return out


def test_extensions_pass_through(gw):
    """ENABLE, QRESYNC/CONDSTORE, NAMESPACE, ID, SPECIAL-USE, MOVE and UID EXPUNGE reach Dovecot and back."""
    s = _raw_tls(gw)
    cred = gw.credential("alice", "alice-password").encode()
    assert b"x1 OK [CAPABILITY" in _exchange(s, b"x1 LOGIN alice " + cred + b"\r\n", b"x1")
    out = _exchange(s, b"x2 ENABLE QRESYNC UTF8=ACCEPT\r\n", b"x2")
    assert b"* ENABLED QRESYNC" in out and b"UTF8" not in out  # UTF8=ACCEPT was never offered
    assert b'* NAMESPACE (("" "/"))' in _exchange(s, b"x3 NAMESPACE\r\n", b"x3")
    assert b'* ID ("name" "Dovecot")' in _exchange(s, b'x4 ID ("name" "raw-test")\r\n', b"x4")
    out = _exchange(s, b'x5 LIST "" "*" RETURN (SPECIAL-USE)\r\n', b"x5")
    assert b"\\Sent" in out and b"\\Trash" in out and b"Contabilit&AOA-" in out
    out = _exchange(s, b"x6 SELECT INBOX (CONDSTORE)\r\n", b"x6")
    assert b"[HIGHESTMODSEQ " in out and b"x6 OK [READ-WRITE]" in out
    out = _exchange(s, b"x7 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)\r\n", b"x7")
    assert b"MODSEQ (" in out
    out = _exchange(s, b"x8 UID MOVE 2 Trash\r\n", b"x8")
    assert b"[COPYUID " in out and b"* VANISHED 2" in out  # QRESYNC turns EXPUNGE into VANISHED
    _exchange(s, b"x9 UID STORE 3 +FLAGS.SILENT (\\Deleted)\r\n", b"x9")
    assert b"* VANISHED 3" in _exchange(s, b"y1 UID EXPUNGE 3\r\n", b"y1")
    assert b"y2 OK" in _exchange(s, b"y2 UNSELECT\r\n", b"y2")
    assert b"* BYE" in _exchange(s, b"y3 LOGOUT\r\n", b"y3")
    s.close()
