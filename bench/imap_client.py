"""The benchmark's measuring IMAP client, run in its own process (standard library only).

Why not imaplib: it parses every response in Python and copies each literal several times, so
it would be the bottleneck and hide the gateway's cost.  This client is a raw ``ssl`` socket that
reads with a 1 MiB buffer and only follows line ends and literal sizes (``{N}``), never copying
literal data, until the tagged reply it waits for.

Why a separate process: the gateway under test runs in a thread of the benchmark's main process;
a client in the same process would compete with it for the GIL.  :class:`Worker` spawns the
process and runs jobs in it (open a connection, time a bulk FETCH, time NOOPs, close) over a pipe,
so only the timed part of each job is measured, inside the worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import signal
import socket
import ssl
import time

__all__ = ["Worker"]

_BUF_SIZE = 1 << 20


class _Reader:
    """Reads IMAP responses off an SSL socket, skipping literal data without copying it."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.buf = bytearray(_BUF_SIZE)
        self.view = memoryview(self.buf)
        self.rest = b""  # bytes read past the end of the last response (should stay empty)

    def until_tagged(self, tag: bytes, keep: bytearray | None = None) -> tuple[int, bytes, int, int]:
        """Read until the tagged response for ``tag``.

        Returns (octets received including the tagged line, the tagged line, literal octets,
        number of literals).  With ``keep``, every received octet is appended to it.
        """
        prefix = tag + b" "
        buf, view, sock = self.buf, self.view, self.sock
        skip = 0  # literal octets still to come
        carry = b""  # start of a line cut by a read
        total = lit_bytes = lit_count = 0
        pending = self.rest
        self.rest = b""
        while True:
            if pending:
                n = len(pending)
                buf[:n] = pending
                pending = b""
            else:
                n = sock.recv_into(buf)
                if n == 0:
                    raise ConnectionError("server closed the connection")
            total += n
            if keep is not None:
                keep += view[:n]
            pos = 0
            if skip:
                if skip >= n:
                    skip -= n
                    continue
                pos, skip = skip, 0
            while pos < n:
                nl = buf.find(b"\n", pos, n)
                if nl < 0:
                    carry += buf[pos:n]
                    break
                line = carry + buf[pos:nl + 1] if carry else bytes(buf[pos:nl + 1])
                carry = b""
                pos = nl + 1
                if line.startswith(prefix):
                    if pos < n:  # nothing should follow a tagged reply we wait for
                        self.rest = bytes(buf[pos:n])
                        total -= n - pos
                        if keep is not None:
                            del keep[len(keep) - (n - pos):]
                    return total, line, lit_bytes, lit_count
                if line.endswith(b"}\r\n"):
                    brace = line.rfind(b"{")
                    size = int(line[brace + 1:-3].rstrip(b"+-"))
                    lit_bytes += size
                    lit_count += 1
                    avail = n - pos
                    if size <= avail:
                        pos += size
                    else:
                        skip = size - avail
                        pos = n


class _Client:
    """A logged-in IMAP connection over TLS."""

    def __init__(self, port: int, ca_file: str, user: str, password: str) -> None:
        ctx = ssl.create_default_context(cafile=ca_file)
        raw = socket.create_connection(("127.0.0.1", port), timeout=120)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.reader = _Reader(self.sock)
        self.n = 0
        greeting = self._line()
        if not greeting.startswith(b"* OK"):
            raise RuntimeError(f"unexpected greeting {greeting[:100]!r}")
        self.command(b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
        self.command(b"EXAMINE INBOX")

    def _line(self) -> bytes:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
        return data

    def next_tag(self) -> bytes:
        self.n += 1
        return b"b%d" % self.n

    def command(self, text: bytes, keep: bytearray | None = None) -> tuple[int, bytes, int, int]:
        tag = self.next_tag()
        self.sock.sendall(tag + b" " + text + b"\r\n")
        result = self.reader.until_tagged(tag, keep)
        if not result[1].startswith(tag + b" OK"):
            raise RuntimeError(f"{text[:20]!r} failed: {result[1][:200]!r}")
        return result

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, ConnectionError):
            self.command(b"LOGOUT")
        with contextlib.suppress(OSError):
            self.sock.close()


_OPEN: dict[int, _Client] = {}


def job_open(port: int, ca_file: str, user: str, password: str) -> int:
    """Connect, LOGIN and EXAMINE INBOX; the connection stays open under the returned id."""
    c = _Client(port, ca_file, user, password)
    _OPEN[id(c)] = c
    return id(c)


def job_close(conn: int) -> None:
    _OPEN.pop(conn).close()


def job_verify(conn: int) -> dict:
    """One untimed bulk fetch keeping every octet: its digest, sizes and literal count."""
    keep = bytearray()
    total, tagged, lit_bytes, lit_count = _OPEN[conn].command(b"UID FETCH 1:* BODY.PEEK[]", keep)
    payload = bytes(keep[:len(keep) - len(tagged)])
    return {"payload": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
            "literal_bytes": lit_bytes, "literals": lit_count}


def job_fetch(conn: int) -> dict:
    """Timed ``UID FETCH 1:* BODY.PEEK[]``: from sending the command to its tagged OK."""
    c = _OPEN[conn]
    tag = c.next_tag()
    cpu0 = time.process_time_ns()
    t0 = time.perf_counter_ns()
    c.sock.sendall(tag + b" UID FETCH 1:* BODY.PEEK[]\r\n")
    total, tagged, lit_bytes, lit_count = c.reader.until_tagged(tag)
    elapsed = time.perf_counter_ns() - t0
    cpu = time.process_time_ns() - cpu0
    if not tagged.startswith(tag + b" OK"):
        raise RuntimeError(f"FETCH failed: {tagged[:200]!r}")
    return {"ns": elapsed, "payload": total - len(tagged), "literal_bytes": lit_bytes,
            "literals": lit_count, "cpu_ns": cpu}


def job_noops(conn: int, count: int, warmup: int) -> dict:
    """``count`` sequential NOOP round trips (after ``warmup`` untimed ones), in nanoseconds."""
    c = _OPEN[conn]
    for _ in range(warmup):
        c.command(b"NOOP")
    samples = []
    perf = time.perf_counter_ns
    sendall, until = c.sock.sendall, c.reader.until_tagged
    for _ in range(count):
        tag = c.next_tag()
        t0 = perf()
        sendall(tag + b" NOOP\r\n")
        _, tagged, _, _ = until(tag)
        samples.append(perf() - t0)
        if not tagged.startswith(tag + b" OK"):
            raise RuntimeError(f"NOOP failed: {tagged[:200]!r}")
    return {"ns": samples}


_JOBS = {"open": job_open, "close": job_close, "verify": job_verify, "fetch": job_fetch,
         "noops": job_noops}


def _worker_main(conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        name, kwargs = request
        try:
            conn.send(("ok", _JOBS[name](**kwargs)))
        except Exception as exc:  # reported by the parent
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class Worker:
    """The measuring client's process (spawned, so it shares nothing with the gateway's loop)."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child,), name="bench-client", daemon=True)
        self.proc.start()
        child.close()

    def run(self, name: str, **kwargs) -> dict:
        self.conn.send((name, kwargs))
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"client job {name} failed: {value}")
        return value

    def measure(self, name: str, target: dict, **kwargs) -> dict:
        """Open a connection to ``target``, run one job on it, close it."""
        conn = self.run("open", **target)
        try:
            return self.run(name, conn=conn, **kwargs)
        finally:
            self.run("close", conn=conn)

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(None)
        self.proc.join(2)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
