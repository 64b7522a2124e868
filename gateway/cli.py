"""``pecgw``: the gateway's command line.

Secrets are never taken from argv (it is visible to every user in ``ps``): ``vault set`` and
``hash-password`` read the value from standard input when it is not a terminal, or prompt twice
without echo when it is.  Errors print one line naming what is wrong and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import time
from pathlib import Path

from gateway.cli_error import CliError
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.secret import Secret

__all__ = ["main"]

DEFAULT_CONFIG = os.environ.get("PECGW_CONFIG", "/etc/pecgw/gateway.toml")
DEMO_CONFIG = Path("demo-state") / "gateway.toml"


def _read_secret(what: str) -> Secret:
    if not sys.stdin.isatty():
        value = sys.stdin.readline().rstrip("\r\n")
    else:
        value = getpass.getpass(f"{what}: ")
        if getpass.getpass(f"{what} (again): ") != value:
            raise CliError("the two entries differ; nothing was changed")
    if not value:
        raise CliError(f"empty {what.lower()}; nothing was changed")
    return Secret(value)


def _config(args) -> GatewayConfig:
    return load_config(args.config)


# -- serve ------------------------------------------------------------------------------------
def cmd_serve(args) -> int:
    config = _config(args)
    from gateway.logs import setup_logging

    setup_logging(config.log_level, config.log_format)
    from gateway.app import Gateway
    from gateway.pidfile import remove_pid, running_gateway, write_pid

    pid_file = config.pid_file
    other = running_gateway(pid_file)
    if other is not None:
        raise CliError(f"{pid_file}: a gateway is already running (pid {other}); stop it first, "
                       "or make it reload its policy with 'pecgw reload'")
    if not os.access(pid_file.parent, os.W_OK):
        raise CliError(f"{config.source}: pid_file: cannot write {pid_file} (its folder is missing "
                       "or not writable for this user)")

    def claim() -> None:  # called once SIGHUP reloads instead of ending the process
        try:
            write_pid(pid_file)
        except OSError as exc:
            raise CliError(f"{config.source}: pid_file: cannot write {pid_file}: {exc.strerror or exc}") from None

    async def run() -> None:
        gw = Gateway(config)
        await gw.start()
        try:
            await gw.serve_forever(ready=claim)
        except CliError:
            await gw.stop()
            raise

    try:
        asyncio.run(run())
    finally:
        remove_pid(pid_file)
    return 0


def cmd_check_config(args) -> int:
    config = _config(args)
    from gateway.app import build_directory, open_vault

    vault = open_vault(config)
    build_directory(config, vault)
    from gateway.app import open_policy

    policy = open_policy(config).current
    missing = [m.name for m in config.mailboxes.values() if vault.get(m.password_vault_key) is None]
    for name in missing:
        print(f"warning: mailbox {name}: no password in the vault (pecgw vault set {name})")
    from gateway.policy_cli import unused_mailboxes

    for line in unused_mailboxes(config, policy):
        print(f"warning: {line}")
    from gateway.audit.check import check_audit

    audit_lines, audit_warnings = check_audit(config, vault)
    for line in audit_lines:
        print(line)
    for line in audit_warnings:
        print(f"warning: {line}")
    print(f"{config.source}: OK ({len(config.mailboxes)} mailboxes, {len(policy.offices)} offices)")
    return 0


# -- vault ------------------------------------------------------------------------------------
def cmd_vault_init(args) -> int:
    from gateway.vault import create_key_file

    config = _config(args)
    if config.vault.key_file is None:
        raise CliError(f"{config.source}: vault.key_file: not set; with ${config.vault.key_env} "
                       "generate the key yourself (32 random bytes, urlsafe base64)")
    create_key_file(config.vault.key_file)
    print(f"created {config.vault.key_file} (mode 0600); keep a copy offline: without it the vault is lost")
    return 0


def _vault_entry(args, config: GatewayConfig) -> str:
    if args.entry:
        return args.entry
    if not args.mailbox:
        raise CliError("name a mailbox or give --entry NAME")
    mailbox = config.mailboxes.get(args.mailbox)
    if mailbox is None:
        known = ", ".join(sorted(config.mailboxes)) or "none"
        raise CliError(f"{config.source}: no mailbox {args.mailbox!r} (configured: {known})")
    return mailbox.password_vault_key


def cmd_vault_set(args) -> int:
    from gateway.app import open_vault

    config = _config(args)
    entry = _vault_entry(args, config)
    value = _read_secret("Password")
    open_vault(config).set(entry, value)
    print(f"stored {entry} in {config.vault.path}")
    return 0


def cmd_vault_list(args) -> int:
    from gateway.app import open_vault

    for name in open_vault(_config(args)).names():
        print(name)
    return 0


def cmd_hash_password(args) -> int:
    from gateway.auth.passwords import hash_password

    print(hash_password(_read_secret("Password")))
    return 0


# -- otp --------------------------------------------------------------------------------------
def cmd_otp_enroll(args) -> int:
    from gateway.app import open_vault
    from gateway.auth.otp import OtpVerifier, png_qr, terminal_qr
    from gateway.vault import otp_key

    config = _config(args)
    vault = open_vault(config)
    key = otp_key(args.user)
    if vault.get(key) is not None and not args.force:
        raise CliError(f"{args.user} already has an OTP secret; use --force to replace it")
    if args.png and Path(args.png).is_symlink():
        raise CliError(f"--png: {args.png} is a symbolic link; the QR code holds the secret, so it is not "
                       "written through one (remove the link or choose another path); nothing was changed")
    secret = OtpVerifier.enroll_secret()
    vault.set(key, secret)
    verifier = OtpVerifier(lambda _u: secret, digits=config.auth.otp_digits)
    uri = verifier.provisioning_uri(secret, args.user, config.auth.otp_issuer)
    print(f"OTP secret for {args.user} stored in the vault. Scan this with an authenticator app:\n")
    print(terminal_qr(uri))
    print(uri)
    if args.png:
        print(f"QR code written to {_write_qr_file(uri, Path(args.png), png_qr)}")
    _otp_changed(config, args.user, "enrolled")
    return 0


def _write_qr_file(uri: str, path: Path, png_qr) -> Path:
    """Write the QR code picture to ``path`` without ever following a link planted there.

    The picture is made in a fresh private folder beside ``path`` and then renamed onto it:
    a rename replaces a symbolic link instead of writing through it, so one planted after the
    check in :func:`cmd_otp_enroll` (say in a shared /tmp) cannot make ``pecgw``, often run as
    root, overwrite the file it points to."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=".pecgw-qr-", dir=path.parent))
    try:
        written = png_qr(uri, folder / path.name)
        target = path.parent / written.name  # png_qr says what it wrote
        os.replace(written, target)
        return target
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _otp_changed(config: GatewayConfig, user: str, change: str) -> None:
    """Tell the running gateway (audit row, old trust windows dropped), or write the row here.

    The vault has already changed, so the change is audited even when a running gateway does
    not answer; the operator is then told its trust windows for ``user`` may still be open."""
    from gateway.admin.client import AdminUnavailable, call, local_operator
    from gateway.admin_cli import append_admin_row
    from gateway.audit.events import Action

    action = Action.OTP_ENROLLED if change == "enrolled" else Action.OTP_RESET
    try:
        call(config, "otp-changed", person=user, change=change)
    except AdminUnavailable:
        append_admin_row(config, action, user, by=local_operator(), detail={"gateway_running": False})
    except CliError as exc:
        append_admin_row(config, action, user, by=local_operator(),
                         detail={"gateway_running": True, "gateway_answered": False})
        raise CliError(f"the OTP secret of {user} was {'stored' if change == 'enrolled' else 'removed'}, but "
                       f"the running gateway did not confirm it ({exc}): trust windows it holds for {user} "
                       "stay open until they expire or the gateway restarts") from None


def cmd_otp_reset(args) -> int:
    from gateway.app import open_vault
    from gateway.vault import otp_key

    config = _config(args)
    if not open_vault(config).delete(otp_key(args.user)):
        raise CliError(f"{args.user} has no OTP secret; nothing was changed")
    _otp_changed(config, args.user, "reset")
    print(f"removed the OTP secret of {args.user}: their logins are refused (and saved credentials stop "
          f"working) until 'pecgw otp enroll {args.user}'")
    return 0


def cmd_otp_status(args) -> int:
    from gateway.app import open_vault
    from gateway.vault import OTP_PREFIX

    config = _config(args)
    enrolled = sorted(name[len(OTP_PREFIX):] for name in open_vault(config).names() if name.startswith(OTP_PREFIX))
    if args.user:  # login names are case-insensitive (LDAP), so "Alice" is alice
        found = [u for u in enrolled if u.casefold() == args.user.casefold()]
        spelled = f" (as {', '.join(found)})" if found and found != [args.user] else ""
        print(f"{args.user}: {'enrolled' + spelled if found else 'not enrolled'}")
        return 0 if found else 1
    for user in enrolled:
        print(f"{user}: enrolled")
    if not enrolled:
        print("nobody is enrolled")
    return 0


def cmd_otp_code(args) -> int:
    from gateway.app import open_vault
    from gateway.auth.otp import OtpVerifier
    from gateway.vault import otp_key

    config = _config(args)
    if not config.demo:
        raise CliError(f"{config.source}: 'pecgw otp code' only works on a demo configuration (demo = true)")
    secret = open_vault(config).get(otp_key(args.user))
    if secret is None:
        raise CliError(f"{args.user} has no OTP secret")
    print(OtpVerifier(lambda _u: secret, digits=config.auth.otp_digits).current_code(secret, time.time()))
    return 0


# -- policy, reload (gateway/policy_cli.py) ------------------------------------------------------
def cmd_policy_check(args) -> int:
    from gateway.policy_cli import cmd_policy_check as run

    return run(args)


def cmd_policy_explain(args) -> int:
    from gateway.policy_cli import cmd_policy_explain as run

    return run(args)


def cmd_reload(args) -> int:
    from gateway.policy_cli import cmd_reload as run

    return run(args)


# -- demo -------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from gateway.demo.runner import run_demo

    return run_demo(Path(args.state_dir), imap_port=args.imap_port, starttls_port=args.starttls_port,
                    http_port=args.http_port)


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pecgw", description="PEC gateway: IMAP/SMTP proxy for PEC mailboxes")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp, default=DEFAULT_CONFIG):
        sp.add_argument("--config", "-c", default=default, help=f"config file (default {default})")
        return sp

    with_config(sub.add_parser("serve", help="run the gateway")).set_defaults(func=cmd_serve)
    with_config(sub.add_parser("check-config", help="validate a config file and its vault")).set_defaults(
        func=cmd_check_config)
    sub.add_parser("hash-password", help="scrypt-hash a password for the static users file").set_defaults(
        func=cmd_hash_password)

    vault = sub.add_parser("vault", help="manage the secrets vault").add_subparsers(dest="vault_cmd", required=True)
    with_config(vault.add_parser("init", help="create the vault key file")).set_defaults(func=cmd_vault_init)
    vs = with_config(vault.add_parser("set", help="store a mailbox password (read from stdin or a prompt)"))
    vs.add_argument("mailbox", nargs="?", help="mailbox name from the config")
    vs.add_argument("--entry", help="a raw vault entry name instead, e.g. ldap/bind")
    vs.set_defaults(func=cmd_vault_set)
    with_config(vault.add_parser("list", help="list entry names (never values)")).set_defaults(func=cmd_vault_list)

    otp = sub.add_parser("otp", help="manage OTP enrolment").add_subparsers(dest="otp_cmd", required=True)
    oe = with_config(otp.add_parser("enroll", help="create a TOTP secret and show its QR code"))
    oe.add_argument("user")
    oe.add_argument("--png", help="also write the QR code to this file")
    oe.add_argument("--force", action="store_true", help="replace an existing secret")
    oe.set_defaults(func=cmd_otp_enroll)
    orr = with_config(otp.add_parser("reset", help="remove a person's TOTP secret (lost phone); they enrol again"))
    orr.add_argument("user")
    orr.set_defaults(func=cmd_otp_reset)
    ost = with_config(otp.add_parser("status", help="who has a TOTP secret (exit 1 when USER has none)"))
    ost.add_argument("user", nargs="?")
    ost.set_defaults(func=cmd_otp_status)
    oc = with_config(otp.add_parser("code", help="print the current code (demo configurations only)"),
                     default=str(DEMO_CONFIG))
    oc.add_argument("user")
    oc.set_defaults(func=cmd_otp_code)

    pol = sub.add_parser("policy", help="check the office folder policy, or explain what a person gets")
    pol_sub = pol.add_subparsers(dest="policy_cmd", required=True)
    with_config(pol_sub.add_parser(
        "check", help="validate the policy file (--config: gateway.toml, or the policy file itself)",
        description="Validate the policy: errors exit 2, warnings are printed and exit 0.")).set_defaults(
        func=cmd_policy_check)
    pe = with_config(pol_sub.add_parser(
        "explain", help="a person's offices, and their rights per mailbox and folder, with the deciding rules",
        description="The person's groups come from the directory of the gateway configuration, or from "
                    "--groups (required when --config names a bare policy file)."))
    pe.add_argument("--groups", metavar="A,B", help="the person's directory groups, comma-separated; "
                                                    "skips the directory")
    pe.add_argument("user", help="the login name, e.g. carla")
    pe.add_argument("mailbox", nargs="?", help="only this mailbox (default: every mailbox the person can use)")
    pe.add_argument("folder", nargs="?", help="the rights on this folder (its human name, e.g. Contabilità)")
    pe.add_argument("--rules", action="store_true",
                    help="with a gateway.toml and a MAILBOX, list the rules instead of asking the "
                         "provider for the folders and showing the rights on each")
    pe.set_defaults(func=cmd_policy_explain)
    with_config(sub.add_parser(
        "reload", help="check the policy, then make the running gateway reload it (SIGHUP)",
        description="Validates like 'policy check'; only a valid policy is signalled to the gateway "
                    "whose pid is in pid_file.")).set_defaults(func=cmd_reload)

    from gateway.audit_cli import add_parsers as add_audit_parsers

    add_audit_parsers(sub, with_config)

    from gateway.admin_cli import add_parsers as add_admin_parsers

    add_admin_parsers(sub, with_config)

    from gateway.sends.cli import add_parser as add_sends_parser

    add_sends_parser(sub, with_config)

    from gateway.census_cli import add_parser as add_census_parser

    add_census_parser(sub, with_config)

    demo = sub.add_parser("demo", help="run the gateway in front of an embedded sandbox PEC provider")
    demo.add_argument("--state-dir", default="demo-state", help="where the demo keeps its files")
    demo.add_argument("--imap-port", type=int, default=9993, help="implicit-TLS IMAP port (default 9993)")
    demo.add_argument("--starttls-port", type=int, default=9143, help="STARTTLS IMAP port (default 9143)")
    demo.add_argument("--http-port", type=int, default=9925, help="metrics and health HTTP port (default 9925)")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CliError) as exc:
        print(f"pecgw: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence, no traceback with secrets
        from gateway.auth.static_directory import StaticDirectoryError
        from gateway.vault import VaultError

        if isinstance(exc, (VaultError, OSError, StaticDirectoryError)):
            print(f"pecgw: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
