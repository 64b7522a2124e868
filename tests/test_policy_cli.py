"""``pecgw policy check``, ``pecgw policy explain`` and ``pecgw reload``, run as an operator runs them.

Every command is a real subprocess.  ``explain`` asks the session's real slapd for a person's
groups; ``reload`` signals a real ``pecgw serve`` process through its pid file, and the serve log
shows whether the gateway reloaded (``policy reloaded from ... (generation N)``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from gateway.pidfile import is_gateway_cmdline
from gateway.secret import Secret
from tests.fixtures.gateway import GatewayHarness, ldap_directory, office_policy, upstream_table, write_gateway_config
from tests.fixtures.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_POLICY = ROOT / "config" / "policy.example.toml"
PECGW = [sys.executable, "-m", "gateway.cli"]
#: One office, 'legale', with lrswik on every folder of 'protocollo' and the right to send from it.
LEGALE_ONLY = office_policy({"legale": {"groups": ["legale"]}}, {"protocollo": ["legale"]})


def pecgw(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*PECGW, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def offline_mailbox(name: str) -> dict:
    """A configured mailbox nobody connects to in these tests."""
    return {"address": f"{name}@pec.example.it", "imap": {"host": "localhost", "username": name}}


def static_gateway(tmp_path, pki, policy: dict, mailboxes=("protocollo",), **extra) -> tuple[GatewayHarness, Path]:
    """gateway.toml (+ policy.toml) with an empty static directory and offline mailboxes."""
    h = GatewayHarness(tmp_path / "gw", pki)
    users = tmp_path / "users.toml"
    users.write_text("")
    tables = h.base_tables(directory={"backend": "static", "users_file": str(users)}, policy=policy,
                           mailboxes={m: offline_mailbox(m) for m in mailboxes}, **extra)
    return h, write_gateway_config(tmp_path / "gateway.toml", tables)


def report_rows(stdout: str, first_cell: str) -> list[list[str]]:
    """The cells of every line of the report that starts with ``first_cell`` (columns are
    separated by at least two spaces; no cell holds two spaces in a row)."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines() if line.strip()]
    return [cells for cells in rows if cells[0] == first_cell]


def explain_row(stdout: str, first_cell: str) -> list[str]:
    """The first line of the report starting with ``first_cell``, as cells."""
    rows = report_rows(stdout, first_cell)
    assert rows, f"no row {first_cell!r} in:\n{stdout}"
    return rows[0]


# -- policy check ------------------------------------------------------------------------------
def test_check_example_policy_is_ok_and_warnings_are_printed(tmp_path):
    proc = pecgw("policy", "check", "--config", "config/policy.example.toml")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "config/policy.example.toml: OK (4 offices, 1 mailbox, 13 rules)\n"

    # the example itself is warning-free; two known mistakes appended to a copy are reported
    copy = tmp_path / "policy.toml"
    copy.write_text(EXAMPLE_POLICY.read_text(encoding="utf-8") + (
        '\n[offices.vuoto]\ngroups = []\n'
        '\n[[mailboxes.protocollo.rules]]\noffice = "archivio"\nfolders = "Archivio/*"\nrights = "lrte"\n'),
        encoding="utf-8")
    proc = pecgw("policy", "check", "--config", str(copy))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"warning: {copy}: offices.vuoto: no members and no groups: nobody is in this office" in lines
    assert any(line.startswith(f"warning: {copy}: mailboxes.protocollo.rules[13].rights: the wildcard "
                               "'Archivio/*' grants 'te'") for line in lines), proc.stdout
    assert lines[-1] == f"{copy}: OK (5 offices, 1 mailbox, 14 rules)"


def test_check_broken_policy_names_the_key(tmp_path):
    broken = tmp_path / "policy.toml"
    broken.write_text(EXAMPLE_POLICY.read_text(encoding="utf-8").replace(
        'rights = "lrs"                   # reads incoming', 'rights = "lrsd"                  # reads incoming', 1),
        encoding="utf-8")
    proc = pecgw("policy", "check", "--config", str(broken))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (f"pecgw: {broken}: mailboxes.protocollo.rules[0].rights: 'd' is the obsolete "
                           "RFC 2086 right; RFC 4314 split it into 'x', 't' and 'e'\n")

    missing = pecgw("policy", "check", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and missing.stderr == f"pecgw: {tmp_path / 'nope.toml'}: file not found\n"


def test_check_through_gateway_config(tmp_path, pki):
    # a policy rule for a mailbox gateway.toml does not configure: refused, as the gateway would
    _, cfg = static_gateway(tmp_path, pki, office_policy({"legale": {"groups": ["legale"]}},
                                                         {"protocollo": ["legale"], "fantasma": ["legale"]}))
    proc = pecgw("policy", "check", "--config", str(cfg))
    assert proc.returncode == 2
    policy_file = tmp_path / "gw" / "policy.toml"
    assert proc.stderr == (f"pecgw: {policy_file}: mailboxes.fantasma: no mailbox 'fantasma' in the gateway "
                           "configuration (mailboxes: protocollo)\n")

    # a configured mailbox the policy does not name: allowed, with a warning
    _, cfg = static_gateway(tmp_path, pki, LEGALE_ONLY, mailboxes=("protocollo", "nuova"))
    proc = pecgw("policy", "check", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"warning: {cfg}: mailboxes.nuova: the policy {policy_file} has no [mailboxes.nuova]: "
        "nobody can use this mailbox",
        f"{policy_file}: OK (1 office, 1 mailbox, 1 rule)"]
    check_config = pecgw("check-config", "--config", str(cfg))
    assert check_config.returncode == 0, check_config.stderr
    assert f"warning: {cfg}: mailboxes.nuova: the policy {policy_file} has no [mailboxes.nuova]" in check_config.stdout


# -- policy explain ----------------------------------------------------------------------------
def test_explain_with_groups_on_the_example_policy():
    proc = pecgw("policy", "explain", "--config", "config/policy.example.toml", "--groups", "legale,acquisti",
                 "carla", "protocollo", "Contabilità")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("person   carla\ngroups   acquisti, legale\n")
    assert explain_row(out, "offices") == ["offices", "acquisti", "group 'acquisti' (offices.acquisti.groups)"]
    # Contabilità: acquisti's exact rule grants lr; legale has no rule there, so the default ("")
    assert explain_row(out, "Contabilità") == ["Contabilità", "lr", "acquisti", "lr",
                                               "mailboxes.protocollo.rules[8]", "Contabilità"]
    assert report_rows(out, "legale") == [["legale", "group 'legale' (offices.legale.groups)"],  # offices
                                          ["legale", "-", "mailboxes.protocollo.default_rights"]]  # folder
    assert "send PEC: yes — acquisti (mailboxes.protocollo.send[1]), legale (mailboxes.protocollo.send[0])" in out

    # without a folder: the rules that apply, most specific first
    rules = pecgw("policy", "explain", "-c", "config/policy.example.toml", "--groups", "legale,acquisti",
                  "carla", "protocollo")
    assert rules.returncode == 0, rules.stderr
    assert report_rows(rules.stdout, "legale")[1:] == [
        ["legale", "Ufficio Legale", "lrswik", "mailboxes.protocollo.rules[2]"],
        ["legale", "Ricevute", "lr", "mailboxes.protocollo.rules[1]"],
        ["legale", "INBOX", "lrs", "mailboxes.protocollo.rules[0]"],
        ["legale", "Ufficio Legale/*", "lrswik", "mailboxes.protocollo.rules[3]"]]


def test_readme_shows_the_real_explain_output():
    """The README's ``$ pecgw policy explain ...`` blocks are what the command prints today."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```\n\$ pecgw (policy explain [^\n]*)\n(.*?)^```$", readme, re.M | re.S)
    assert len(blocks) == 2
    for command, shown in blocks:
        proc = pecgw(*command.split())
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == shown, f"README out of date for: pecgw {command}"


def test_explain_errors():
    bare = pecgw("policy", "explain", "--config", "config/policy.example.toml", "carla")
    assert bare.returncode == 2 and "--groups" in bare.stderr and bare.stdout == ""
    assert bare.stderr.startswith("pecgw: config/policy.example.toml is a policy file, not a gateway configuration")

    unknown = pecgw("policy", "explain", "--config", "config/policy.example.toml", "--groups", "legale",
                    "carla", "nessuna")
    assert unknown.returncode == 2
    assert unknown.stderr == "pecgw: unknown mailbox 'nessuna' (mailboxes: protocollo)\n"


@pytest.fixture
def ldap_gateway(tmp_path, pki, slapd):
    """gateway.toml for the real slapd, the example policy, and the LDAP service password vaulted."""
    h = GatewayHarness(tmp_path / "gw", pki)
    h.vault.set("ldap/bind", Secret(slapd.service_password))
    example = {}  # the policy is the example file itself, copied next to gateway.toml
    tables = h.base_tables(directory=ldap_directory(slapd), policy=example,
                           mailboxes={"protocollo": offline_mailbox("protocollo")})
    (tmp_path / "gw" / "policy.toml").write_text(EXAMPLE_POLICY.read_text(encoding="utf-8"), encoding="utf-8")
    return h, tables


def test_explain_asks_the_real_directory(tmp_path, ldap_gateway, slapd):
    h, tables = ldap_gateway
    cfg = write_gateway_config(tmp_path / "gateway.toml", tables)
    proc = pecgw("policy", "explain", "--config", str(cfg), "carla")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("person   carla\ngroups   acquisti, legale\n")  # from slapd's groupOfNames
    assert explain_row(out, "offices") == ["offices", "acquisti", "group 'acquisti' (offices.acquisti.groups)"]
    assert explain_row(out, "legale") == ["legale", "group 'legale' (offices.legale.groups)"]
    assert "mailbox protocollo  (delimiter '/')" in out
    assert slapd.service_password not in out + proc.stderr

    alice = pecgw("policy", "explain", "--config", str(cfg), "alice", "protocollo", "Acquisti")
    assert alice.returncode == 0, alice.stderr
    assert explain_row(alice.stdout, "Acquisti") == ["Acquisti", "-", "legale", "-",
                                                     "mailboxes.protocollo.default_rights"]

    disabled = pecgw("policy", "explain", "--config", str(cfg), "dario")
    assert disabled.returncode == 2
    assert disabled.stderr.startswith("pecgw: 'dario': not in the directory, or the account is disabled")
    nobody = pecgw("policy", "explain", "--config", str(cfg), "zeno")
    assert nobody.returncode == 2 and "'zeno': not in the directory" in nobody.stderr


def test_explain_with_the_directory_down(tmp_path, ldap_gateway, slapd):
    h, tables = ldap_gateway
    tables["auth"]["ldap"] = {**tables["auth"]["ldap"], "url": f"ldap://127.0.0.1:{free_port()}", "timeout": 1}
    cfg = write_gateway_config(tmp_path / "gateway.toml", tables)
    proc = pecgw("policy", "explain", "--config", str(cfg), "carla")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("pecgw: cannot ask the directory for 'carla': LDAP directory ldap://127.0.0.1:")
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert slapd.service_password not in proc.stderr

    # --groups skips the directory
    proc = pecgw("policy", "explain", "--config", str(cfg), "--groups", "acquisti", "carla", "protocollo", "INBOX")
    assert proc.returncode == 0, proc.stderr
    assert explain_row(proc.stdout, "INBOX") == ["INBOX", "lrs", "acquisti", "lrs", "mailboxes.protocollo.rules[4]",
                                                 "INBOX"]


# -- pid_file ----------------------------------------------------------------------------------
def _config_tables(**over) -> dict:
    data = {"imap": {"listen_tls": ["127.0.0.1:993"], "cert_file": "c.pem", "key_file": "k.pem"},
            "auth": {"backend": "static", "users_file": "users.toml"},
            "vault": {"path": "state/vault.json", "key_file": "vault.key"},
            "audit": {"jsonl_path": "audit.jsonl"}, "policy": {"file": "policy.toml"},
            "mailboxes": {"protocollo": offline_mailbox("protocollo")}}
    data.update(over)
    return data


def test_pid_file_defaults_to_the_vault_folder(tmp_path):
    assert parse_config(_config_tables(), tmp_path / "gw.toml").pid_file == tmp_path / "state" / "pecgw.pid"
    explicit = parse_config(_config_tables(pid_file="run/gw.pid"), tmp_path / "gw.toml")
    assert explicit.pid_file == tmp_path / "run" / "gw.pid"  # relative: against the config's folder
    with pytest.raises(ConfigError) as info:
        parse_config(_config_tables(pid_file=""), tmp_path / "gw.toml")
    assert info.value.key == "pid_file"


@pytest.mark.parametrize("argv,gateway", [
    (["/usr/bin/python3", "/usr/local/bin/pecgw", "serve", "--config", "/etc/pecgw/gateway.toml"], True),
    ([sys.executable, "-m", "gateway.cli", "serve", "--config", "gw.toml"], True),
    (["tail", "-f", "/var/log/pecgw/audit.jsonl"], False),  # mentions pecgw, is not one
    (["vim", "/etc/pecgw/gateway.toml"], False),
    (["/usr/local/bin/pecgw", "reload"], False),
    ([""], False),  # a zombie's empty command line
])
def test_which_processes_count_as_a_running_gateway(argv, gateway):
    assert is_gateway_cmdline(argv) is gateway


# -- reload ------------------------------------------------------------------------------------
def wait_for(predicate, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def reloads(log: Path) -> list[str]:
    """The serve log's lines about policy reloads (done or refused)."""
    return [line for line in log.read_text().splitlines() if "policy reload" in line]


@pytest.fixture
def serving(tmp_path, pki):
    """A real ``pecgw serve`` process (static directory, one offline mailbox), found by its pid file."""
    port = free_port()
    h, cfg = static_gateway(tmp_path, pki, LEGALE_ONLY,
                            imap={"listen_tls": [f"127.0.0.1:{port}"], "listen_starttls": []})
    pid_file = h.workdir / "pecgw.pid"  # default: next to the vault
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen([*PECGW, "serve", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for(lambda: pid_file.exists() or proc.poll() is not None, what="the pid file")
        assert proc.poll() is None, log_path.read_text()
        assert pid_file.read_text() == f"{proc.pid}\n"
        yield h, proc, log_path, cfg
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        log.close()


def test_reload_asks_the_running_gateway(serving):
    h, proc, log_path, cfg = serving
    policy_file = h.workdir / "policy.toml"

    # a valid change: checked, asked over the admin channel, reloaded by the gateway
    h.write_policy(office_policy({"legale": {"groups": ["legale"]}, "acquisti": {"groups": ["acquisti"]}},
                                 {"protocollo": ["legale", "acquisti"]}))
    ok = pecgw("reload", "--config", str(cfg))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == [
        f"{policy_file}: OK (2 offices, 1 mailbox, 2 rules)",
        f"the gateway reloaded {policy_file}"]
    assert reloads(log_path), "the reload was done before the answer came"
    assert reloads(log_path)[0].endswith(f"policy reloaded from {policy_file} (generation 2): offices 2, mailboxes 1")

    # a broken change: refused at the terminal, nothing signalled
    policy_file.write_text('[offices.legale]\ngroups = ["legale"]\n[mailboxes.protocollo]\nsend = ["legale"]\n'
                           '[[mailboxes.protocollo.rules]]\noffice = "legal"\nfolders = "*"\nrights = "lr"\n')
    bad = pecgw("reload", "--config", str(cfg))
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith(f"pecgw: {policy_file}: mailboxes.protocollo.rules[0].office: ")
    assert bad.stderr.endswith("; nothing was signalled: the running gateway keeps its current policy\n")

    # proof that no SIGHUP went out: the next valid reload is generation 3, with no refusal before it
    h.write_policy(office_policy({"legale": {"groups": ["legale"]}}, {"protocollo": ["legale"]}))
    assert pecgw("reload", "--config", str(cfg)).returncode == 0
    wait_for(lambda: len(reloads(log_path)) >= 2, what="the second reload in the serve log")
    time.sleep(0.3)  # a stray extra signal would have been logged by now
    lines = reloads(log_path)
    assert len(lines) == 2, lines
    assert lines[1].endswith(f"policy reloaded from {policy_file} (generation 3): offices 1, mailboxes 1")
    assert proc.poll() is None


def test_reload_falls_back_to_sighup_without_the_admin_channel(serving):
    h, proc, log_path, cfg = serving
    policy_file = h.workdir / "policy.toml"
    (h.workdir / "admin.sock").unlink()  # the gateway still listens, but nobody can reach it
    h.write_policy(office_policy({"legale": {"groups": ["legale"]}}, {"protocollo": ["legale"]}))
    ok = pecgw("reload", "--config", str(cfg))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[1] == (f"sent SIGHUP to the gateway (pid {proc.pid}): it reloads {policy_file} "
                                         "and logs 'policy reloaded from ...', or why it refused")
    wait_for(lambda: reloads(log_path), what="the reload in the serve log")
    assert reloads(log_path)[0].endswith(f"policy reloaded from {policy_file} (generation 2): offices 1, mailboxes 1")


def test_serve_refuses_a_second_gateway_and_removes_its_pid_file(serving):
    h, proc, log_path, cfg = serving
    pid_file = h.workdir / "pecgw.pid"
    second = pecgw("serve", "--config", str(cfg))
    assert second.returncode == 2
    assert second.stderr == (f"pecgw: {pid_file}: a gateway is already running (pid {proc.pid}); stop it first, "
                             "or make it reload its policy with 'pecgw reload'\n")
    assert pid_file.read_text() == f"{proc.pid}\n"  # the refused one left it alone

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert not pid_file.exists()
    gone = pecgw("reload", "--config", str(cfg))
    assert gone.returncode == 2 and gone.stderr.startswith(f"pecgw: no running gateway: no pid file {pid_file}")


def test_reload_without_a_running_gateway(tmp_path, pki):
    h, cfg = static_gateway(tmp_path, pki, LEGALE_ONLY)
    pid_file = h.workdir / "pecgw.pid"
    proc = pecgw("reload", "--config", str(cfg))
    assert proc.returncode == 2
    assert proc.stderr == (f"pecgw: no running gateway: no pid file {pid_file} "
                           f"(is 'pecgw serve --config {cfg}' running?)\n")

    # a stale pid file naming a process that is not a gateway (though its argv mentions pecgw):
    # never signalled
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "/etc/pecgw/gateway.toml"])
    try:
        pid_file.write_text(f"{other.pid}\n")
        proc = pecgw("reload", "--config", str(cfg))
        assert proc.returncode == 2
        assert proc.stderr == (f"pecgw: no running gateway: {pid_file} names pid {other.pid}, which is not a "
                               "running pecgw (left over from a crash?)\n")
        assert other.poll() is None  # SIGHUP would have ended it
    finally:
        other.kill()
        other.wait()

    # reload needs gateway.toml, not the policy file
    bare = pecgw("reload", "--config", str(h.workdir / "policy.toml"))
    assert bare.returncode == 2 and "is not a gateway configuration (no [imap] table)" in bare.stderr
    assert os.path.exists(pid_file)  # untouched


def test_explain_lists_the_rights_on_every_folder_the_provider_has(tmp_path, pki, slapd, dovecot, pec_mailbox):
    """With gateway.toml and a mailbox, explain asks the provider for the folders (real Dovecot)."""
    h = GatewayHarness(tmp_path / "gw", pki)
    h.vault.set("ldap/bind", Secret(slapd.service_password))
    h.vault.set("mailbox/protocollo", Secret(pec_mailbox.password))
    tables = h.base_tables(directory=ldap_directory(slapd), policy={}, mailboxes={
        "protocollo": {"address": pec_mailbox.address,
                       "imap": upstream_table(dovecot, pki, pec_mailbox.address)}})
    (tmp_path / "gw" / "policy.toml").write_text(EXAMPLE_POLICY.read_text(encoding="utf-8"), encoding="utf-8")
    cfg = write_gateway_config(tmp_path / "gateway.toml", tables)
    proc = pecgw("policy", "explain", "--config", str(cfg), "bruno", "protocollo")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    rows = {explain_row(proc.stdout, name)[0]: explain_row(proc.stdout, name)
            for name in pec_mailbox.folders}
    assert set(rows) == set(pec_mailbox.folders)  # every folder, in human names
    assert rows["Contabilità"] == ["Contabilità", "lr", "acquisti", "lr", "mailboxes.protocollo.rules[8]",
                                   "Contabilità"]
    assert rows["Ufficio Legale"][:4] == ["Ufficio Legale", "-", "acquisti", "-"]
    assert rows["Acquisti/Fornitori"][:2] == ["Acquisti/Fornitori", "lrswik"]
    assert pec_mailbox.password not in proc.stdout + proc.stderr

    rules = pecgw("policy", "explain", "--config", str(cfg), "--rules", "bruno", "protocollo")
    assert rules.returncode == 0 and "(no rule matches)" in rules.stdout and rules.stderr == ""

    h.vault.set("mailbox/protocollo", Secret("wrong-password"))
    fallback = pecgw("policy", "explain", "--config", str(cfg), "bruno", "protocollo")
    assert fallback.returncode == 0 and "(no rule matches)" in fallback.stdout
    assert fallback.stderr.startswith("note: the folder list of protocollo could not be read from the provider")
    assert "wrong-password" not in fallback.stdout + fallback.stderr
