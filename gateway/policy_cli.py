"""``pecgw policy check``, ``pecgw policy explain`` and ``pecgw reload``: the policy from a terminal.

``--config`` may name the gateway configuration or a policy file itself.  A gateway
configuration is recognised by its top-level ``[imap]`` table (a policy file never has one);
its ``[policy] file`` is then loaded the way the running gateway loads it
(:func:`gateway.live_policy.load_gateway_policy`), so a rule naming a mailbox that gateway.toml
does not configure is an error here too, and the person's groups for ``explain`` can be asked
from the configured directory.  A bare policy file is checked on its own, and ``explain`` then
needs the groups on the command line (``--groups``).

``reload`` validates exactly as ``check`` does and only then asks the running gateway to
reload, so a broken file is reported at the terminal instead of in the gateway's log, and the
running gateway keeps its current policy.  It asks over the admin channel, which answers with
the outcome (the gateway loads the file again itself: it may have changed in between); when
the channel cannot be reached it falls back to SIGHUP to the gateway named by the pid file,
which logs ``policy reloaded from ...`` or why it refused.

Nothing here prints a secret: the directory is asked with the service account from the vault,
and only group names and the directory's error text (URL and failing step) are shown.
"""

from __future__ import annotations

import os
import signal
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from gateway.cli_error import CliError
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.live_policy import load_gateway_policy
from gateway.pidfile import read_pid, running_gateway
from policy import Policy, PolicyError, explain, load_policy, warnings
from policy.model import toml_key

__all__ = ["PolicyTarget", "open_target", "findings", "summary", "unused_mailboxes",
           "cmd_policy_check", "cmd_policy_explain", "cmd_reload"]

KEEPS = "the running gateway keeps its current policy"


@dataclass(frozen=True)
class PolicyTarget:
    """What ``--config`` named: the loaded policy and, for a gateway configuration, the config."""

    policy: Policy
    config: GatewayConfig | None  # None: --config named a bare policy file


def _toml(path: Path) -> dict | None:
    """The parsed file, or None when it cannot be read or is not TOML (the loader says why)."""
    try:
        return tomllib.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def is_gateway_config(path: Path) -> bool:
    """True when ``path`` is TOML with a top-level ``[imap]`` table; anything else is a policy file
    (whose loader then reports a missing file or bad TOML with the file's name)."""
    data = _toml(path)
    return data is not None and isinstance(data.get("imap"), dict)


def open_target(path: str | Path) -> PolicyTarget:
    """Load the policy ``--config`` leads to; raises ConfigError or PolicyError."""
    if is_gateway_config(Path(path)):
        config = load_config(path)
        return PolicyTarget(load_gateway_policy(config.policy_file, config.mailboxes), config)
    return PolicyTarget(load_policy(path), None)


def unused_mailboxes(config: GatewayConfig, policy: Policy) -> list[str]:
    """A warning per mailbox gateway.toml configures but the policy does not name (allowed: the
    mailbox is being set up — but until a rule grants access nobody can log in to it)."""
    out = []
    for name in config.mailboxes:
        if name not in policy.mailboxes:
            key = toml_key("mailboxes", name)
            out.append(f"{config.source}: {key}: the policy {policy.source} has no [{key}]: "
                       "nobody can use this mailbox")
    return out


def findings(target: PolicyTarget) -> list[str]:
    """:func:`policy.warnings`, plus each configured mailbox the policy does not name."""
    out = list(warnings(target.policy))
    if target.config is not None:
        out += unused_mailboxes(target.config, target.policy)
    return out


def _count(n: int, word: str) -> str:
    return f"{n} {word if n == 1 else word + ('es' if word.endswith('x') else 's')}"


def summary(policy: Policy) -> str:
    """``<policy file>: OK (4 offices, 1 mailbox, 13 rules)``."""
    rules = sum(len(mb.rules) for mb in policy.mailboxes.values())
    return (f"{policy.source}: OK ({_count(len(policy.offices), 'office')}, "
            f"{_count(len(policy.mailboxes), 'mailbox')}, {_count(rules, 'rule')})")


def _check(path: str, *, after_error: str = "") -> PolicyTarget:
    """Load, print the warnings and the OK line; a PolicyError becomes one CliError line."""
    try:
        target = open_target(path)
    except (PolicyError, ConfigError) as exc:
        raise CliError(f"{exc}{after_error}") from None
    for line in findings(target):
        print(f"warning: {line}")
    print(summary(target.policy))
    return target


# -- policy check ------------------------------------------------------------------------------
def cmd_policy_check(args) -> int:
    _check(args.config)
    return 0


# -- policy explain ----------------------------------------------------------------------------
def parse_groups(text: str) -> list[str]:
    """``"legale, acquisti"`` → ``["legale", "acquisti"]``; ``""`` is a person in no group."""
    return [g.strip() for g in text.split(",") if g.strip()]


def directory_groups(config: GatewayConfig, username: str) -> list[str]:
    """The groups of the enabled person ``username``, asked from the configured directory."""
    from gateway.app import build_directory, open_vault
    from gateway.auth.directory import DirectoryUnavailable
    from gateway.auth.static_directory import StaticDirectoryError

    hint = " (or give the groups with --groups A,B)"
    try:
        person = build_directory(config, open_vault(config)).lookup(username)
    except (DirectoryUnavailable, StaticDirectoryError) as exc:
        raise CliError(f"cannot ask the directory for {username!r}: {exc}{hint}") from None
    if person is None:
        raise CliError(f"{username!r}: not in the directory, or the account is disabled{hint}")
    return sorted(person.groups, key=str.casefold)


def cmd_policy_explain(args) -> int:
    try:
        target = open_target(args.config)
    except PolicyError as exc:
        raise CliError(str(exc)) from None
    if args.groups is not None:
        groups = parse_groups(args.groups)
    elif target.config is None:
        raise CliError(f"{args.config} is a policy file, not a gateway configuration: give the "
                       "person's directory groups with --groups A,B, or use --config gateway.toml "
                       "to ask the directory")
    else:
        groups = directory_groups(target.config, args.user)
    folders = None
    if target.config is not None and args.mailbox and args.folder is None and not args.rules:
        folders = folders_at_provider(target.config, args.mailbox)
    try:
        print(explain(target.policy, args.user, groups, mailbox=args.mailbox, folder=args.folder,
                      folders=folders), end="")
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return 0


def folders_at_provider(config: GatewayConfig, mailbox: str) -> list[str] | None:
    """The mailbox's folder list from its provider, for a per-folder report; None (and a note on
    stderr) when the provider cannot be asked — the report then lists the rules instead."""
    import asyncio

    from gateway.app import open_vault
    from gateway.imap_proxy.upstream import UpstreamError, provider_folders

    mb = config.mailboxes.get(mailbox)
    if mb is None:
        return None  # explain() names the unknown mailbox
    password = open_vault(config).get(mb.password_vault_key)
    why = f"no password in the vault (pecgw vault set {mailbox})" if password is None else ""
    if password is not None:
        try:
            return asyncio.run(provider_folders(mb.imap, password))
        except UpstreamError as exc:
            why = str(exc)
    print(f"note: the folder list of {mailbox} could not be read from the provider ({why}); "
          "showing the rules instead", file=sys.stderr)
    return None


# -- reload ------------------------------------------------------------------------------------
def cmd_reload(args) -> int:
    nothing = f"; nothing was signalled: {KEEPS}"
    if not is_gateway_config(Path(args.config)):
        if _toml(Path(args.config)) is not None:
            raise CliError(f"{args.config} is not a gateway configuration (no [imap] table): reload "
                           "needs gateway.toml, which names the policy file and the pid file")
        try:  # missing, unreadable or not TOML: the config loader says which
            load_config(args.config)
        except ConfigError as exc:
            raise CliError(f"{exc}{nothing}") from None
    target = _check(args.config, after_error=nothing)
    config = target.config
    if config is None:  # not reached: only a gateway configuration gets here
        raise CliError(f"{args.config} is not a gateway configuration")
    from gateway.admin.client import AdminUnavailable, call

    try:  # the admin channel answers with the outcome; SIGHUP (below) can only be sent
        call(config, "reload")
        print(f"the gateway reloaded {config.policy_file}")
        return 0
    except AdminUnavailable:
        pass
    pid = running_gateway(config.pid_file)
    if pid is None:
        written = read_pid(config.pid_file)
        if written is None:
            raise CliError(f"no running gateway: no pid file {config.pid_file} "
                           f"(is 'pecgw serve --config {config.source}' running?)")
        raise CliError(f"no running gateway: {config.pid_file} names pid {written}, which is not a "
                       "running pecgw (left over from a crash?)")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise CliError(f"no running gateway: pid {pid} (from {config.pid_file}) has just exited") from None
    except PermissionError:
        raise CliError(f"not allowed to signal the gateway (pid {pid}): run 'pecgw reload' as the "
                       "user that runs 'pecgw serve'") from None
    print(f"sent SIGHUP to the gateway (pid {pid}): it reloads {config.policy_file} and logs "
          "'policy reloaded from ...', or why it refused")
    return 0
