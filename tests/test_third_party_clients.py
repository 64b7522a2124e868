"""Third-party clients through the gateway: mbsync (isync) and curl, compared with direct runs.

mbsync pipelines, reads capabilities from the greeting and the LOGIN reply, syncs every folder
(including the modified-UTF-7 one) and pushes flags back; curl authenticates with SASL-IR.  What
they see through the gateway must be byte-identical to what they see directly on Dovecot.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from gateway.secret import Secret
from tests.fixtures.gateway import FULL_RIGHTS, GatewayHarness, ldap_directory, office_policy, upstream_table
from tests.fixtures.programs import program



@pytest.fixture
def gw(tmp_path, pki, slapd, dovecot, pec_mailbox):
    h = GatewayHarness(tmp_path / "gw", pki)
    h.vault.set("ldap/bind", Secret(slapd.service_password))
    h.vault.set("mailbox/protocollo", Secret(pec_mailbox.password))
    h.enroll("alice")
    tables = h.base_tables(
        directory=ldap_directory(slapd),
        policy=office_policy({"legale": {"groups": ["legale"]}}, {"protocollo": ["legale"]}, rights=FULL_RIGHTS),
        mailboxes={"protocollo": {"address": pec_mailbox.address,
                                  "imap": upstream_table(dovecot, pki, pec_mailbox.address)}},
    )
    h.mailbox = pec_mailbox
    h.start(tables)
    yield h
    h.stop()


def mbsync_config(path: Path, *, port: int, user: str, password: str, ca: Path, local: Path) -> Path:
    local.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""
IMAPAccount remote
Host localhost
Port {port}
User "{user}"
Pass "{password}"
SSLType IMAPS
CertificateFile {ca}
PipelineDepth 30

IMAPStore remote
Account remote

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns *
Create Near
Sync All
Expunge None
SyncState *
""")
    return path


def run_mbsync(config: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([program("mbsync"), "-c", str(config), *args, "sync"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def _without_tuid(content: bytes) -> bytes:
    """mbsync writes a random ``X-TUID:`` header into every local copy (its own bookkeeping)."""
    return re.sub(rb"(?m)^X-TUID: [A-Za-z0-9+/]+\n", b"", content, count=1)


def maildir_snapshot(root: Path) -> dict[str, list[tuple[bytes, str]]]:
    """folder → sorted (content, flags) of every message; file names hold mbsync's own ids."""
    out: dict[str, list[tuple[bytes, str]]] = {}
    for cur in sorted(root.rglob("cur")):
        folder = str(cur.parent.relative_to(root))
        msgs = []
        for sub in ("cur", "new"):
            for f in (cur.parent / sub).iterdir():
                flags = f.name.split(":2,")[1] if ":2," in f.name else ""
                msgs.append((_without_tuid(f.read_bytes()), flags))
        out[folder] = sorted(msgs)
    return out


def test_mbsync_through_gateway_is_byte_identical_to_direct(gw, dovecot, pki, tmp_path):
    mailbox = gw.mailbox
    direct_cfg = mbsync_config(tmp_path / "direct.rc", port=dovecot.port, user=mailbox.address,
                               password=mailbox.password, ca=pki.ca_cert, local=tmp_path / "direct")
    via_cfg = mbsync_config(tmp_path / "via.rc", port=gw.ports["implicit"], user="alice",
                            password=gw.credential("alice", "alice-password"), ca=pki.ca_cert,
                            local=tmp_path / "via")
    run_mbsync(direct_cfg, "--pull")
    run_mbsync(via_cfg, "--pull")
    direct, via = maildir_snapshot(tmp_path / "direct"), maildir_snapshot(tmp_path / "via")
    assert set(via) == set(direct)
    assert "Contabilit&AOA-" in via  # the non-ASCII folder, kept in modified UTF-7 by isync 1.4
    assert sum(len(v) for v in via.values()) == sum(len(v) for v in mailbox.folders.values())
    assert via == direct

    # Flag a message locally in the gateway copy, push it through the gateway, see it directly.
    inbox = tmp_path / "via" / "INBOX"
    victim = sorted((inbox / "new").iterdir())[0]
    base, _, flags = victim.name.partition(":2,")
    content = _without_tuid(victim.read_bytes())
    victim.rename(inbox / "cur" / f"{base}:2,{''.join(sorted(set(flags + 'F')))}")
    run_mbsync(via_cfg, "--push")
    d = dovecot.connect(mailbox.address, mailbox.password)
    d.select("INBOX", readonly=True)
    _, data = d.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
    flagged = [item for item in data if isinstance(item, tuple) and b"\\Flagged" in item[0]]
    assert [item[1].replace(b"\r\n", b"\n") for item in flagged] == [content]  # maildir keeps LF
    d.logout()


def test_curl_fetch_through_gateway_equals_direct(gw, dovecot, pki):
    mailbox = gw.mailbox

    def curl(port: int, user: str, password: str, url_path: str) -> bytes:
        proc = subprocess.run(
            [program("curl"), "--silent", "--show-error", "--cacert", str(pki.ca_cert), "--user", f"{user}:{password}",
             f"imaps://localhost:{port}/{url_path}"],
            capture_output=True, timeout=60, env={**os.environ, "LC_ALL": "C"})
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout

    cred = gw.credential("alice", "alice-password")
    for path in ("INBOX/;UID=1", "INBOX/;UID=3", "Contabilit%26AOA-/;UID=1"):
        via = curl(gw.ports["implicit"], "alice", cred, path)
        direct = curl(dovecot.port, mailbox.address, mailbox.password, path)
        assert via == direct and len(via) > 500
    listing = curl(gw.ports["implicit"], "alice", cred, "")
    assert listing == curl(dovecot.port, mailbox.address, mailbox.password, "")
