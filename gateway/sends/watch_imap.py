"""The receipt watcher's IMAP commands on its own provider session: EXAMINE, UID SEARCH,
UID FETCH, IDLE (RFC 3501, RFC 2177).

Each function writes one command on a
:class:`~gateway.imap_proxy.upstream.ProviderConversation` and reads until its tagged reply,
collecting what it asked for; callers bound each with :func:`asyncio.timeout`.  ``state`` is
the watcher's note of untagged ``EXISTS`` seen meanwhile (``state["news"]``): a message that
arrived while the watcher was busy is then looked for at once instead of after the next IDLE.

Everything is read-only: the folder is EXAMINEd, bodies are fetched with ``BODY.PEEK``, so no
message is ever marked ``\\Seen`` by the gateway (the mailbox is a legal record, PEC.md
section 5).  Replies are read frame by frame, bounded by the conversation's framer (lines of
64 KiB, literals of 1 MiB); the watcher asks for at most 16 KiB of headers and
``MAX_PART_OCTETS`` of a daticert per message.
"""

from __future__ import annotations

import asyncio
import datetime as _dt

from gateway.imap_proxy.fetch_response import read_fetch
from gateway.imap_proxy.framing import Frame
from gateway.imap_proxy.responses import Head, Kind, classify, parse_status
from gateway.imap_proxy.sequence_set import format_chunks
from gateway.imap_proxy.syntax import Atom, String, quote_string
from gateway.imap_proxy.upstream import ProviderConversation, UpstreamError

__all__ = ["IDLE_RENEW_S", "POLL_S", "examine", "search_uids", "fetch_items", "item_uid", "part_octets",
           "since_text", "wait_for_news"]

#: RFC 2177: "clients using IDLE are advised to terminate the IDLE and re-issue it at least
#: every 29 minutes to avoid being logged off."
IDLE_RENEW_S = 25 * 60.0
#: Without IDLE at the provider: how often to ask (NOOP) for new messages.
POLL_S = 60.0
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _noting(state: dict, collect=None):
    """An ``on_untagged`` that notes EXISTS in ``state`` and hands the rest to ``collect``."""
    def on_untagged(head: Head, frame: Frame) -> None:
        if head.name == "EXISTS":
            state["news"] = True
        elif collect is not None:
            collect(head, frame)
    return on_untagged


async def _command(conv: ProviderConversation, text: bytes, state: dict, collect=None) -> None:
    tag = conv.next_tag()
    conv.link.write(b"%s %s\r\n" % (tag.encode(), text))
    status = await conv.tagged(tag, on_untagged=_noting(state, collect))
    if status.status != "OK":
        verb = text.split(b" ", 2)[:2]
        raise UpstreamError("protocol", f"{b' '.join(verb).decode('latin-1')} refused by the provider: "
                                        f"{status.text[:200]}")


async def examine(conv: ProviderConversation, folder: bytes, state: dict) -> tuple[int, int | None]:
    """EXAMINE ``folder`` (a wire name): ``(UIDVALIDITY, UIDNEXT or None)``."""
    codes: dict[str, int] = {}

    def collect(head: Head, frame: Frame) -> None:
        if head.name == "OK":
            status = parse_status(frame)
            if status.code in ("UIDVALIDITY", "UIDNEXT") and status.code_data.strip().isdigit():
                codes[status.code] = int(status.code_data.strip())

    await _command(conv, b"EXAMINE " + quote_string(folder), state, collect)
    if "UIDVALIDITY" not in codes:
        raise UpstreamError("protocol", "the provider gave no UIDVALIDITY for the folder")
    return codes["UIDVALIDITY"], codes.get("UIDNEXT")


async def search_uids(conv: ProviderConversation, criteria: bytes, state: dict) -> list[int]:
    """``UID SEARCH <criteria>``, ascending."""
    found: list[int] = []

    def collect(head: Head, frame: Frame) -> None:
        if head.name == "SEARCH":
            found.extend(int(w) for w in frame.lines[0].split()[2:] if w.isdigit())

    await _command(conv, b"UID SEARCH " + criteria, state, collect)
    return sorted(set(found))


async def fetch_items(conv: ProviderConversation, uids: list[int], items: str, state: dict) -> list[list]:
    """The item lists of ``UID FETCH <uids> <items>`` (one per ``* n FETCH`` reply, unchecked:
    unsolicited flag updates come too, see :func:`item_uid`)."""
    replies: list[list] = []

    def collect(head: Head, frame: Frame) -> None:
        if head.name == "FETCH":
            read = read_fetch(frame)
            if read is not None and isinstance(read[2], list):
                replies.append(read[2])

    for chunk in format_chunks(sorted(uids)):
        await _command(conv, f"UID FETCH {chunk} {items}".encode(), state, collect)
    return replies


def item_uid(items: list) -> int | None:
    return next((int(v) for k, v in zip(items[::2], items[1::2])
                 if isinstance(k, Atom) and k.upper() == "UID" and isinstance(v, Atom) and v.isdigit()), None)


def part_octets(items: list, section: str) -> bytes | None:
    """The octets of ``BODY[section]<0>`` in an item list; None when absent or NIL."""
    wanted = f"BODY[{section}]<0>"
    return next((bytes(v) for k, v in zip(items[::2], items[1::2])
                 if isinstance(k, Atom) and k.upper() == wanted and isinstance(v, String)), None)


def since_text(when: _dt.datetime) -> bytes:
    """RFC 3501 ``date`` for SEARCH SINCE: ``3-Mar-2026`` (the day of ``when``, UTC)."""
    day = when.astimezone(_dt.timezone.utc)
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year}".encode()


async def wait_for_news(conv: ProviderConversation, state: dict, *, renew_s: float = IDLE_RENEW_S,
                        poll_s: float = POLL_S, timeout_s: float = 120.0) -> None:
    """Return when the folder may hold new messages: at once if an EXISTS came meanwhile, else
    after IDLE hears one (RFC 2177; DONE, then the tagged reply), or after ``renew_s`` — or,
    without IDLE at the provider, after a NOOP every ``poll_s``."""
    if state.pop("news", False):
        return
    if not conv.has_capability("IDLE"):
        await asyncio.sleep(poll_s)
        async with asyncio.timeout(timeout_s):
            await _command(conv, b"NOOP", state)
        state.pop("news", None)  # the caller looks for new messages now either way
        return
    tag = conv.next_tag()
    conv.link.write(b"%s IDLE\r\n" % tag.encode())
    async with asyncio.timeout(timeout_s):
        while True:  # until "+ idling" (or a refusal)
            frame = await conv.frame()
            head = classify(frame)
            if head.kind is Kind.CONTINUATION:
                break
            if _ended(head, frame, tag, state):
                return
    try:
        async with asyncio.timeout(renew_s):
            while not state.get("news"):
                frame = await conv.frame()
                if _ended(classify(frame), frame, tag, state):
                    return
    except TimeoutError:
        pass  # renew: DONE, then IDLE again from the caller's loop
    conv.link.write(b"DONE\r\n")
    async with asyncio.timeout(timeout_s):
        status = await conv.tagged(tag, on_untagged=_noting(state))
    if status.status != "OK":
        raise UpstreamError("protocol", f"IDLE ended with {status.status}: {status.text[:200]}")
    state.pop("news", None)


def _ended(head: Head, frame: Frame, tag: str, state: dict) -> bool:
    """While in IDLE: note EXISTS; True when the provider ended the command itself."""
    if head.kind is Kind.UNTAGGED:
        if head.name == "BYE":
            raise UpstreamError("protocol", f"the provider said BYE: {parse_status(frame).text[:200]}")
        if head.name == "EXISTS":
            state["news"] = True
        return False
    if head.kind is Kind.TAGGED and head.tag == tag:
        status = parse_status(frame)
        if status.status != "OK":
            raise UpstreamError("protocol", f"IDLE refused by the provider: {status.text[:200]}")
        state.pop("news", None)
        return True
    return False
