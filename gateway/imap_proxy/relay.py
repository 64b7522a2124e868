"""Pure helpers of the relay: the ordered in-flight table and literal pacing toward the provider.

:class:`InFlightTable` keeps every client tag still waiting for its tagged reply, oldest first.
Commands the gateway answers itself (a refusal, a syntax error) take a place in the same table, so
their reply is released only after the replies of the commands the client sent before them:
pipelined replies stay in the order the client sent its commands (mbsync keeps ~26 in flight).

:class:`UpstreamPacer` writes whole client commands to the provider.  The gateway answers the
client's synchronising literals itself (so the client's upload is never stalled by a provider
round trip it cannot see), and then forwards every literal to the provider as a synchronising
``{N}``, waiting for its ``+`` — even when the provider offers LITERAL+.  A provider that finds an
error in a command *before* one of its literals answers BAD and goes on reading at the next line:
with ``{N+}`` it would read the literal's octets as commands nobody checked (Dovecot 2.3 does
exactly that for ``APPEND box "bad-date" {N+}``).  With ``{N}`` it says BAD instead of ``+`` and
the literal is never sent.  Only one command may be mid-literal toward the provider; later
commands queue behind it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gateway.imap_proxy.commands import Command
from gateway.imap_proxy.framing import Frame, LiteralKind

__all__ = ["InFlightEntry", "InFlightTable", "UpstreamPacer"]


@dataclass
class InFlightEntry:
    """One client command awaiting its tagged reply."""

    tag: str
    command: Command | None
    local_reply: bytes | None = None  # set when the gateway answers this command itself


class InFlightTable:
    """Client tags in flight, oldest first."""

    def __init__(self) -> None:
        self._entries: list[InFlightEntry] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self):
        return iter(self._entries)

    def add_relayed(self, command: Command) -> InFlightEntry:
        entry = InFlightEntry(command.tag, command)
        self._entries.append(entry)
        return entry

    def add_local(self, tag: str | None, reply: bytes, command: Command | None = None) -> bytes:
        """Queue a gateway reply; return the bytes that may be sent right away (maybe none)."""
        if not any(e.local_reply is None for e in self._entries):
            return reply
        self._entries.append(InFlightEntry(tag or "*", command, reply))
        return b""

    def answer(self, entry: InFlightEntry, reply: bytes) -> bytes:
        """The gateway answers a relayed-in-waiting ``entry`` after all; return the bytes now due."""
        entry.local_reply = reply
        return self._release()

    def oldest_relayed(self) -> InFlightEntry | None:
        """The oldest entry still waiting for the provider's reply."""
        return next((e for e in self._entries if e.local_reply is None), None)

    def complete(self, tag: str) -> tuple[InFlightEntry | None, bytes]:
        """Remove the oldest relayed entry with ``tag``; return it and the gateway replies now due."""
        found = None
        for i, entry in enumerate(self._entries):
            if entry.local_reply is None and entry.tag == tag:
                found = self._entries.pop(i)
                break
        return found, self._release()

    def _release(self) -> bytes:
        out = bytearray()
        while self._entries and self._entries[0].local_reply is not None:
            out += self._entries.pop(0).local_reply  # type: ignore[operator]
        return bytes(out)

    def find(self, tag: str) -> InFlightEntry | None:
        for entry in self._entries:
            if entry.tag == tag and entry.local_reply is None:
                return entry
        return None


@dataclass(frozen=True)
class _Chunk:
    data: bytes
    wait: str | None  # "literal" or "idle": nothing more is written until that is settled


class UpstreamPacer:
    """Serialises writes to the provider, and knows whom each ``+`` is for.

    The provider answers ``+`` both to a synchronising literal and to IDLE (RFC 2177).  A ``+``
    taken for the wrong command would send a literal the provider never asked for — if it then
    refuses the command, it reads the literal's octets as commands the gateway never checked.
    So every write that makes the provider owe a ``+`` is noted, in order, with its tag
    (:attr:`owed`); each ``+`` is matched to the oldest one, and a tagged reply cancels what its
    command was still owed.

    Nothing is written while the provider is asked for a literal or is idling: after IDLE, the
    next thing it may read is ``DONE``, and ``DONE`` only once its ``+ idling`` has come (before
    that, or after IDLE's tagged reply, a DONE would be read as a command).  The gateway's own
    commands wait in the same queue.
    """

    def __init__(self) -> None:
        self._queue: deque[tuple[str, deque[_Chunk]]] = deque()
        self._blocked: tuple[str, str] | None = None  # (tag, "literal" | "idle") the writes wait on
        self._idle_plus = False  # the provider said "+ idling": DONE may be written
        self._done: str | None = None  # the IDLE tag whose DONE the client sent before "+ idling"
        self.owed: deque[tuple[str, str]] = deque()  # (tag, "literal" | "idle"), oldest first

    @property
    def waiting_tag(self) -> str | None:
        """The tag of the command whose literal waits for the provider's ``+``."""
        return self._blocked[0] if self._blocked and self._blocked[1] == "literal" else None

    @property
    def idle(self) -> bool:
        return self._blocked is None and not self._queue

    @property
    def blocked(self) -> bool:
        """True while nothing may be written: a literal or IDLE waits for the provider."""
        return self._blocked is not None

    def chunks_for(self, frame: Frame, *, idle: bool = False) -> deque[_Chunk]:
        if idle and frame.literals:
            raise ValueError("IDLE takes no arguments")  # the session refuses it before
        if not frame.literals:
            return deque([_Chunk(frame.lines[0], "idle" if idle else None)])
        chunks: deque[_Chunk] = deque()
        current = bytearray()
        for line, literal, marker in zip(frame.lines, frame.literals, frame.markers):
            prefix = b"~" if marker.binary else b""
            if marker.kind is not LiteralKind.SYNC:
                line = line[: marker.start] + prefix + b"{%d}\r\n" % marker.size
            current += line
            chunks.append(_Chunk(bytes(current), "literal"))
            current = bytearray(literal)
        current += frame.lines[-1]
        chunks.append(_Chunk(bytes(current), None))
        return chunks

    def submit(self, tag: str, frame: Frame, *, idle: bool = False) -> list[bytes]:
        """Queue a command (``idle``: it is IDLE); return what may be written to the provider now."""
        self._queue.append((tag, self.chunks_for(frame, idle=idle)))
        return self._pump()

    def done(self, tag: str) -> list[bytes]:
        """The client ended the IDLE tagged ``tag``: DONE goes now, after its ``+ idling``, or
        never (the provider already answered that IDLE)."""
        if self._blocked != (tag, "idle"):
            return []
        if not self._idle_plus:
            self._done = tag
            return []
        self._blocked, self._idle_plus = None, False
        return [b"DONE\r\n"] + self._pump()

    def continuation(self) -> tuple[str | None, list[bytes]]:
        """The provider sent ``+``: whom it was for (``"literal"``, ``"idle"``, or None when
        nothing was owed — the provider is out of step) and what to write next."""
        if not self.owed:
            return None, []
        tag, kind = self.owed.popleft()
        if self._blocked != (tag, kind):
            return None, []
        if kind == "literal":
            self._blocked = None
            return kind, self._pump()
        self._idle_plus = True
        if self._done is None:
            return kind, []
        done, self._done = self._done, None
        return kind, self.done(done)

    def completed(self, tag: str) -> list[bytes]:
        """The tagged reply for ``tag`` arrived: it is owed nothing more; a literal of it still
        held is dropped (the provider refused the command instead of asking for it), and so is
        a DONE held for it (the provider ended IDLE itself)."""
        if any(t == tag for t, _ in self.owed):
            self.owed = deque((t, k) for t, k in self.owed if t != tag)
        if self._blocked is not None and self._blocked[0] == tag:
            if self._blocked[1] == "literal" and self._queue and self._queue[0][0] == tag:
                self._queue.popleft()
            self._blocked, self._idle_plus, self._done = None, False, None
        return self._pump()

    def _pump(self) -> list[bytes]:
        out: list[bytes] = []
        while self._blocked is None and self._queue:
            tag, chunks = self._queue[0]
            chunk = chunks.popleft()
            out.append(chunk.data)
            if not chunks:
                self._queue.popleft()
            if chunk.wait is not None:
                self.owed.append((tag, chunk.wait))
                self._blocked = (tag, chunk.wait)
        return out
