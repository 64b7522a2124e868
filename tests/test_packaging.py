"""The Dockerfile and the systemd unit, checked without Docker or a running systemd.

The image cannot be built on this machine, so the Dockerfile is read: it must install with the
README's own command, copy only files that exist (and everything that command needs), run as a
non-root user, and have a HEALTHCHECK — whose exact command is run here against a real gateway's
/healthz.  The unit is checked by ``systemd-analyze verify`` and ``systemd-analyze security``, and
its hardening keys are read one by one.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.config import AdminConfig, GatewayConfig
from tests.fixtures.gateway import GatewayHarness, offline_tables
from tests.fixtures.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
UNIT = ROOT / "config" / "pecgw.service"


# ------------------------------------------------------------------------------------ Dockerfile
def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        name, _, args = text.partition(" ")
        out.append((name.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def readme_install_command() -> list[str]:
    """The first command of the README's "Running it" block: how the project is installed."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Running it", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    first = block.splitlines()[0].split("#", 1)[0]
    return shlex.split(first)


def test_the_image_installs_with_the_readmes_command():
    command = readme_install_command()
    assert command[:2] == ["pip", "install"], command
    runs = [(i, shlex.split(args)) for i, (name, args) in enumerate(instructions()) if name == "RUN"]
    # the README's words, in order, with only options (--no-cache-dir) in between, in one RUN
    installs = [i for i, words in runs if _contains_in_order(words, command)]
    assert installs, f"no RUN does {' '.join(command)!r}"
    # everything that command builds from is copied in before it runs
    copied_before = {src for i, (name, args) in enumerate(instructions())
                     if name == "COPY" and i < installs[0] for src in _copy_sources(args)}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"]}
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    needed |= {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()
               and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)}
    assert {"gateway", "policy"} <= needed
    assert needed <= copied_before, f"not copied before the install: {needed - copied_before}"


def _contains_in_order(words: list[str], wanted: list[str]) -> bool:
    at = 0
    for word in words:
        if at < len(wanted) and word == wanted[at]:
            at += 1
        elif 0 < at < len(wanted) and not word.startswith("-"):
            at = 0  # another command, not options of this one
    return at == len(wanted)


def _copy_sources(args: str) -> list[str]:
    words = [w for w in shlex.split(args) if not w.startswith("--")]
    return [w.rstrip("/") for w in words[:-1]]


def test_every_copied_file_exists_and_is_in_the_build_context():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    copies = [args for name, args in instructions() if name in ("COPY", "ADD")]
    assert copies
    for args in copies:
        for src in _copy_sources(args):
            assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
            assert not any(fnmatch.fnmatch(src, pat) or src.startswith(pat + "/") for pat in ignored), \
                f"COPY {src}: excluded by .dockerignore"


def test_the_image_is_slim_runs_unprivileged_and_serves_the_config_volume():
    steps = instructions()
    names = [n for n, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [args for name, args in steps if name == "USER"]
    assert users, "no USER: the gateway would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user.strip()
    # the last USER comes after every RUN: nothing after it runs as root, the gateway neither
    assert max(i for i, n in enumerate(names) if n == "RUN") < max(i for i, n in enumerate(names) if n == "USER")
    (volume,) = [json.loads(args) for name, args in steps if name == "VOLUME"]
    assert {"/etc/pecgw", "/var/lib/pecgw"} <= set(volume)
    exposed = {int(p) for name, args in steps if name == "EXPOSE" for p in args.split()}
    assert exposed == {993, 143, 465, 587}
    (cmd,) = [json.loads(args) for name, args in steps if name == "CMD"]
    assert cmd == ["pecgw", "serve", "--config", "/etc/pecgw/gateway.toml"]


def healthcheck_command() -> list[str]:
    (args,) = [args for name, args in instructions() if name == "HEALTHCHECK"]
    options, _, cmd = args.partition("CMD ")
    assert cmd, "HEALTHCHECK without CMD"
    assert re.fullmatch(r"(--[a-z-]+=\S+\s*)*", options), options
    return json.loads(cmd)


def test_the_healthcheck_asks_the_default_healthz_and_works(tmp_path, pki):
    command = healthcheck_command()
    assert command[0] == "python"  # the image's Python: slim has no curl
    default = f"http://{AdminConfig(socket=None).http_host}:{AdminConfig(socket=None).http_port}/healthz"
    assert default in command[-1]

    # the same command against a real gateway's endpoint (on a free port instead of the default)
    h = GatewayHarness(tmp_path / "gw", pki)
    tables = offline_tables(h, tmp_path)
    h.start(tables)
    try:
        assert h.http_port
        here = [sys.executable, *command[1:-1],
                command[-1].replace(default, f"http://127.0.0.1:{h.http_port}/healthz")]
        ok = subprocess.run(here, capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
    finally:
        h.stop()
    nobody = [sys.executable, *command[1:-1], command[-1].replace(default, f"http://127.0.0.1:{free_port()}/healthz")]
    assert subprocess.run(nobody, capture_output=True, timeout=30).returncode != 0  # unhealthy when down


# ---------------------------------------------------------------------------------- systemd unit
def unit_keys(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value given (a key may repeat, e.g. SystemCallFilter)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, line
        current.setdefault(key, []).append(value)
    return sections


@pytest.fixture
def unit_copy(tmp_path) -> Path:
    """The unit with ExecStart pointing at this checkout's pecgw (verify wants an executable)."""
    pecgw = Path(sys.executable).parent / "pecgw"
    assert pecgw.exists(), "install the project in the venv: pip install -e ."
    copy = tmp_path / "pecgw.service"
    copy.write_text(UNIT.read_text().replace("/opt/pecgw/bin/pecgw", str(pecgw)))
    return copy


def test_systemd_analyze_verify_accepts_the_unit(unit_copy):
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: scripts/test installs the systemd package"
    proc = subprocess.run([tool, "verify", str(unit_copy)], capture_output=True, text=True, timeout=60)
    # an unknown key or a bad value is only a warning: any output at all is a failure here
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stdout + proc.stderr


def test_systemd_rates_the_unit_well_hardened(unit_copy):
    proc = subprocess.run([shutil.which("systemd-analyze"), "security", "--offline=yes", str(unit_copy)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", proc.stdout)
    assert m, proc.stdout[-500:]
    assert float(m.group(1)) <= 2.0 and m.group(2) == "OK", m.group(0)


def test_the_unit_has_the_hardening_and_lifecycle_keys():
    service = unit_keys()["Service"]

    def one(key: str) -> str:
        assert key in service, f"{key} missing"
        return service[key][-1]

    assert one("Type") == "simple" and one("User") == "pecgw"
    assert one("ExecStart").split()[1:] == ["serve", "--config", "/etc/pecgw/gateway.toml"]
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"  # the policy reload, as `pecgw reload` does
    assert one("KillSignal") == "SIGTERM"
    assert int(one("TimeoutStopSec")) > GatewayConfig.__dataclass_fields__["shutdown_grace_s"].default
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "StateDirectory": "pecgw", "ConfigurationDirectory": "pecgw",
                       "RuntimeDirectory": "pecgw", "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
                       "AmbientCapabilities": "CAP_NET_BIND_SERVICE"}.items():
        assert one(key) == value, key
    assert set(one("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in service["SystemCallFilter"]
    assert unit_keys()["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_units_system_call_filter_leaves_what_the_gateway_calls():
    """The deny list of SystemCallFilter must not take away a call the gateway makes: fchown/chown
    for [admin] socket_group (a ~@privileged filter did, and the gateway could not start)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd"
    def calls(group: str) -> set[str]:
        """The system calls of a group, nested groups (``@chown`` inside ``@privileged``) expanded."""
        listing = subprocess.run([analyze, "syscall-filter", group], capture_output=True, text=True,
                                 check=True).stdout.splitlines()[1:]
        names = {w.strip() for w in listing if w.strip() and not w.strip().startswith("#")}
        return set().union(*(calls(n) if n.startswith("@") else {n} for n in names))

    denied: set[str] = set()
    for line in UNIT.read_text().splitlines():
        if line.startswith("SystemCallFilter=~"):
            for group in line.split("=", 1)[1][1:].split():
                denied |= calls(group)
    assert denied, "the unit denies no system call group"
    for needed in ("chown", "fchown", "fchownat", "chmod", "fchmod", "socket", "bind", "listen", "accept4"):
        assert needed not in denied, needed
