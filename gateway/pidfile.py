"""The pid file through which ``pecgw reload`` finds the running ``pecgw serve``.

``serve`` writes its pid once its signal handlers are in place (a SIGHUP before that would take
the default action and end the process) and removes the file when it exits.  A pid in the file
only counts when that process is alive *and* its ``/proc/PID/cmdline`` is a gateway's: after a
crash or a reboot the number may belong to an unrelated process, which must neither block a new
gateway nor receive its SIGHUP (which ends most programs).  "A gateway's" is checked per argument,
not as a substring of the whole line: ``tail -f /var/log/pecgw/audit.jsonl`` mentions pecgw too.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["read_pid", "is_gateway", "is_gateway_cmdline", "running_gateway", "write_pid", "remove_pid"]


def read_pid(path: Path) -> int | None:
    """The pid written in ``path``; None when there is no file or it holds no positive number."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isascii() and text.isdigit() and int(text) > 0 else None


def is_gateway_cmdline(argv: list[str]) -> bool:
    """True for ``pecgw serve ...``, ``python -m gateway.cli serve ...`` and the like."""
    def starts_gateway(arg: str) -> bool:
        return os.path.basename(arg) == "pecgw" or arg == "gateway.cli" or arg.endswith("gateway/cli.py")
    return any(starts_gateway(arg) for arg in argv) and "serve" in argv


def is_gateway(pid: int) -> bool:
    """True when ``pid`` is a live process whose command line is a running ``pecgw serve``.

    A zombie (exited, not yet reaped) has an empty command line, so it does not count.
    """
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # no such process (or /proc hides it): nothing to signal
        return False
    return is_gateway_cmdline(raw.decode("utf-8", "replace").split("\0"))


def running_gateway(path: Path) -> int | None:
    """The pid of the running gateway named by ``path``, or None (no file, stale pid)."""
    pid = read_pid(path)
    return pid if pid is not None and pid != os.getpid() and is_gateway(pid) else None


def write_pid(path: Path, pid: int | None = None) -> None:
    """Write ``pid`` (default: this process) atomically, mode 0644: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{pid or os.getpid()}\n".encode("ascii"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove_pid(path: Path, pid: int | None = None) -> None:
    """Remove ``path`` if it still names ``pid`` (default: this process); leave anyone else's."""
    if read_pid(path) == (pid or os.getpid()):
        try:
            Path(path).unlink()
        except FileNotFoundError:
            pass
