"""``pecgw demo``: the real gateway in front of an embedded sandbox PEC provider.

Everything the demo needs is made on the spot inside ``--state-dir``: a private CA and a
``localhost`` certificate, a vault with a key file, the sandbox's mailbox passwords, two demo
people in a static directory (scrypt-hashed passwords) with TOTP secrets, and a ``gateway.toml``
that is an ordinary configuration with ``demo = true``.  The gateway that runs is the production
code path — only the provider and the directory are stand-ins.  The sandbox keeps mail in memory,
so every run starts from the same seeded PEC messages; OTP secrets and the CA persist across
runs so an authenticator app and an imported CA keep working.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
import shutil
import sys
from pathlib import Path

from cryptography import x509

from gateway.auth.otp import OtpVerifier
from gateway.auth.passwords import hash_password
from gateway.demo.pec_samples import make_gestore, sample_mailbox
from gateway.demo.pki import Pki, make_pki
from gateway.secret import Secret
from gateway.vault import Vault, create_key_file, otp_key, read_key_file

__all__ = ["run_demo", "prepare_demo", "DEMO_PEOPLE", "DEMO_MAILBOXES"]

#: username -> (password, office, display name)
DEMO_PEOPLE = {
    "alice": ("alice-demo", "legale", "Alice Rossi (Ufficio Legale)"),
    "bruno": ("bruno-demo", "acquisti", "Bruno Bianchi (Ufficio Acquisti)"),
}
#: mailbox -> (PEC address, offices allowed: what DEMO_POLICY grants, for the banner and tests)
DEMO_MAILBOXES = {
    "protocollo": ("protocollo@pec.demo.example.it", ("legale", "acquisti")),
    "acquisti": ("acquisti@pec.demo.example.it", ("acquisti",)),
}


def _pki(tls_dir: Path) -> Pki:
    pki = Pki(tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server.key")
    if pki.server_cert.exists() and pki.ca_cert.exists() and pki.server_key.exists():
        cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
        if cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) > dt.timedelta(days=2):
            return pki
    return make_pki(tls_dir, days=365)


def _vault(state: Path) -> Vault:
    key_file = state / "vault.key"
    if not key_file.exists():
        create_key_file(key_file)
    return Vault(state / "vault.json", read_key_file(key_file))


def _users_file(state: Path) -> Path:
    lines = []
    for user, (password, office, name) in DEMO_PEOPLE.items():
        lines += [f"[users.{user}]", f'password = "{hash_password(Secret(password))}"',
                  f'display_name = "{name}"', f'groups = ["{office}"]', ""]
    path = state / "users.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _config_text(state: Path, pki: Pki, provider_port: int, imap_port: int, starttls_port: int,
                 http_port: int = 9925) -> str:
    out = [
        "# Written by `pecgw demo`: an ordinary gateway configuration pointing at the sandbox provider.",
        "demo = true", 'log_level = "INFO"', "",
        "[imap]", f'listen_tls = ["127.0.0.1:{imap_port}"]', f'listen_starttls = ["127.0.0.1:{starttls_port}"]',
        f'cert_file = "{pki.server_cert}"', f'key_file = "{pki.server_key}"', "",
        "[auth]", 'backend = "static"', f'users_file = "{state / "users.toml"}"', 'otp_issuer = "PEC Gateway demo"',
        "failure_delay = 0.5", "",
        "[vault]", f'path = "{state / "vault.json"}"', f'key_file = "{state / "vault.key"}"', "",
        "[audit]", f'jsonl_path = "{state / "audit.jsonl"}"', "",
        "[admin]", f'http_listen = "127.0.0.1:{http_port}"', "",
    ]
    out += ["[policy]", f'file = "{state / "policy.toml"}"', ""]
    for name, (address, _offices) in DEMO_MAILBOXES.items():
        out += [f"[mailboxes.{name}]", f'address = "{address}"', "",
                f"[mailboxes.{name}.imap]", 'host = "localhost"', f"port = {provider_port}", 'tls = "implicit"',
                f'username = "{address}"', f'ca_file = "{pki.ca_cert}"', ""]
    return "\n".join(out)


#: The demo's office folder policy, per mailbox: (office, folder pattern, RFC 4314 rights).
#: legale and acquisti share 'protocollo', each with its own folders; acquisti reads INBOX without
#: marking anything read (no 's'); nobody may erase a PEC (no x, t, e anywhere).
DEMO_RULES = {
    "protocollo": [("legale", "INBOX", "lrs"), ("legale", "Ricevute", "lr"), ("legale", "Ufficio Legale", "lrswik"),
                   ("acquisti", "INBOX", "lr"), ("acquisti", "Ricevute", "lr"), ("acquisti", "Acquisti", "lrswik"),
                   ("acquisti", "Acquisti/*", "lrswik"), ("acquisti", "Contabilità", "lr")],
    "acquisti": [("acquisti", "*", "lrswik")],
}


def _policy_text() -> str:
    """The demo's policy.toml: offices named after the demo people's groups, DEMO_RULES, send rights."""
    out = ["# Written by `pecgw demo`.  See config/policy.example.toml for every key.", ""]
    for office in sorted({o for _, o, _ in DEMO_PEOPLE.values()}):
        out += [f"[offices.{office}]", f'groups = ["{office}"]', ""]
    for name, (_address, offices) in DEMO_MAILBOXES.items():
        out += [f"[mailboxes.{name}]", "send = [" + ", ".join(f'"{o}"' for o in offices) + "]", ""]
        for office, folders, rights in DEMO_RULES[name]:
            out += [f"[[mailboxes.{name}.rules]]", f'office = "{office}"', f'folders = "{folders}"',
                    f'rights = "{rights}"', ""]
    return "\n".join(out)


def prepare_demo(state: Path, imap_port: int, starttls_port: int, http_port: int = 9925):
    """Create the demo's files and start the sandbox provider; return (config path, provider)."""
    from gateway.demo.sandbox import SandboxAccount, SandboxProvider

    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    pki = _pki(state / "tls")
    vault = _vault(state)
    gestore = make_gestore("posta-certificata@pec.demo.example.it", "Gestore Demo S.p.A.")
    accounts = {}
    for name, (address, _) in DEMO_MAILBOXES.items():
        password = secrets.token_urlsafe(18)  # the gateway's vault is the only place it exists
        vault.set(f"mailbox/{name}", Secret(password))
        accounts[address] = SandboxAccount(password=password, folders=sample_mailbox(address, gestore=gestore))
    for user in DEMO_PEOPLE:
        if vault.get(otp_key(user)) is None:
            vault.set(otp_key(user), OtpVerifier.enroll_secret())
    _users_file(state)
    provider = SandboxProvider(accounts, pki.server_cert, pki.server_key)
    provider_port = provider.start()
    (state / "policy.toml").write_text(_policy_text(), encoding="utf-8")
    config = state / "gateway.toml"
    config.write_text(_config_text(state, pki, provider_port, imap_port, starttls_port, http_port), encoding="utf-8")
    return config, provider


def _banner(config_path: Path, ports: dict[str, int], provider_port: int, http_port: int | None = None) -> str:
    state = config_path.parent
    me = sys.argv[0] if Path(sys.argv[0]).name == "pecgw" else "pecgw"
    if shutil.which("pecgw") and Path(shutil.which("pecgw")).resolve() == Path(me).resolve():
        me = "pecgw"
    code = f"{me} otp code --config {config_path}"
    people = "\n".join(
        f"    {user:6} office {office:9} password {password}" for user, (password, office, _) in DEMO_PEOPLE.items())
    return f"""
PEC Gateway demo is running (Ctrl-C stops it).

  IMAP, implicit TLS : localhost:{ports.get('implicit')}
  IMAP, STARTTLS     : localhost:{ports.get('starttls')}
  CA certificate     : {state / 'tls' / 'ca.pem'}  (clients must trust it; the name is 'localhost')
  Sandbox provider   : localhost:{provider_port}  (2 PEC mailboxes seeded with PEC messages and receipts)
  Audit trail        : {state / 'audit.jsonl'}
  Metrics            : http://127.0.0.1:{http_port}/metrics  (Prometheus text format; see README "Metrics")

  Demo people — the password field is the password immediately followed by the current 6-digit code:
{people}
    alice may use mailbox 'protocollo'; bruno may use 'protocollo' and 'acquisti',
    so he picks one by logging in as  bruno#protocollo  or  bruno#acquisti

  Current code (demo only):  {code} alice

  Try it:
    curl --cacert {state / 'tls' / 'ca.pem'} --user "alice:alice-demo$({code} alice)" \\
         "imaps://localhost:{ports.get('implicit')}/INBOX" --request "FETCH 1:* (FLAGS)"
"""


def run_demo(state_dir: Path, *, imap_port: int = 9993, starttls_port: int = 9143, http_port: int = 9925) -> int:
    from gateway.app import Gateway
    from gateway.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config_path, provider = prepare_demo(state_dir, imap_port, starttls_port, http_port)
    try:
        config = load_config(config_path)

        async def main() -> None:
            gw = Gateway(config)
            try:
                await gw.start()
            except OSError as exc:
                raise SystemExit(f"pecgw demo: cannot listen ({exc.strerror}); choose other ports with "
                                 "--imap-port, --starttls-port and --http-port") from None
            http_port = gw.http.bound_port() if gw.http is not None else None
            print(_banner(config_path, gw.imap.bound_ports(), provider.port, http_port), flush=True)
            await gw.serve_forever()

        asyncio.run(main())
    finally:
        provider.stop()
    return 0
