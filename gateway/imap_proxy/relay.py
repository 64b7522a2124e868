"""Pure helpers of the relay: the ordered in-flight table and literal pacing toward the provider.

:class:`InFlightTable` keeps every client tag still waiting for its tagged reply, oldest first.
Commands the gateway answers itself (a refusal, a syntax error) take a place in the same table, so
their reply is released only after the replies of the commands the client sent before them:
pipelined replies stay in the order the client sent its commands (mbsync keeps ~26 in flight).

:class:`UpstreamPacer` writes whole client commands to the provider.  The gateway answers the
client's synchronising literals itself (so the client's upload is never stalled by a provider
round trip it cannot see), and then forwards each literal to the provider in the form the provider
accepts: exact bytes where possible — ``{N}`` waits for the provider's ``+`` as the client would
have — and ``{N+}`` rewritten to ``{N}`` only when the provider lacks LITERAL+ (RFC 7888).
Only one command may be mid-literal toward the provider; later commands queue behind it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gateway.imap_proxy.commands import Command
from gateway.imap_proxy.framing import Frame, LiteralKind

__all__ = ["InFlightEntry", "InFlightTable", "UpstreamPacer", "LITERAL_MINUS_MAX"]

#: RFC 7888 §3: with LITERAL- only literals of at most 4096 octets may be non-synchronising.
LITERAL_MINUS_MAX = 4096


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
    wait: bool  # True when the provider's "+" must arrive before the next chunk


class UpstreamPacer:
    """Serialises client commands toward the provider, honouring synchronising literals."""

    def __init__(self, *, literal_plus: bool, literal_minus: bool = False) -> None:
        self.literal_plus = literal_plus
        self.literal_minus = literal_minus
        self._queue: deque[tuple[str, deque[_Chunk]]] = deque()
        self._waiting_tag: str | None = None

    @property
    def waiting_tag(self) -> str | None:
        """The tag of the command whose literal waits for the provider's ``+``."""
        return self._waiting_tag

    @property
    def idle(self) -> bool:
        return self._waiting_tag is None and not self._queue

    def _non_sync_ok(self, size: int) -> bool:
        return self.literal_plus or (self.literal_minus and size <= LITERAL_MINUS_MAX)

    def chunks_for(self, frame: Frame) -> deque[_Chunk]:
        if not frame.literals:
            return deque([_Chunk(frame.lines[0], False)])
        chunks: deque[_Chunk] = deque()
        current = bytearray()
        for line, literal, marker in zip(frame.lines, frame.literals, frame.markers):
            if marker.kind is not LiteralKind.SYNC and self._non_sync_ok(marker.size):
                current += line
                current += literal
                continue
            if marker.kind is not LiteralKind.SYNC:
                prefix = b"~" if marker.binary else b""
                line = line[: marker.start] + prefix + b"{%d}\r\n" % marker.size
            current += line
            chunks.append(_Chunk(bytes(current), True))
            current = bytearray(literal)
        current += frame.lines[-1]
        chunks.append(_Chunk(bytes(current), False))
        return chunks

    def submit(self, tag: str, frame: Frame) -> list[bytes]:
        """Queue a command; return what may be written to the provider now."""
        self._queue.append((tag, self.chunks_for(frame)))
        return self._pump()

    def continuation(self) -> list[bytes]:
        """The provider sent ``+`` for the waiting literal; return what to write next."""
        self._waiting_tag = None
        return self._pump()

    def refused(self, tag: str) -> list[bytes]:
        """The provider answered the waiting command with a tagged reply instead of ``+``."""
        if self._waiting_tag == tag:
            self._waiting_tag = None
            if self._queue and self._queue[0][0] == tag:
                self._queue.popleft()
        return self._pump()

    def _pump(self) -> list[bytes]:
        out: list[bytes] = []
        while self._waiting_tag is None and self._queue:
            tag, chunks = self._queue[0]
            chunk = chunks.popleft()
            out.append(chunk.data)
            if not chunks:
                self._queue.popleft()
            if chunk.wait:
                self._waiting_tag = tag
        return out
