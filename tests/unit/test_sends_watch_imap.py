"""The receipt watcher's IMAP dialogue (gateway/sends/watch_imap.py), byte for byte, against a
scripted provider: EXAMINE codes, UID SEARCH, UID FETCH with literals, IDLE (RFC 2177) ended by
EXISTS, renewed after its time, refused or cut by BYE, and NOOP polling without IDLE."""

from __future__ import annotations

import asyncio

import pytest

from gateway.imap_proxy.session import GATEWAY_TAG_PREFIX as P
from gateway.imap_proxy.upstream import ProviderConversation, UpstreamError
from gateway.sends.watch_imap import (examine, fetch_items, item_uid, part_octets, search_uids, since_text,
                                      wait_for_news)


class ScriptedLink:
    """Answers each command line the watcher writes with the scripted bytes (``{tag}`` filled in)."""

    def __init__(self, script: dict[bytes, bytes]) -> None:
        self.script, self.sent = script, []
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()

    def write(self, data: bytes) -> None:
        self.sent.append(data)
        line = data.rstrip(b"\r\n")
        tag, _, rest = line.partition(b" ")
        key = rest if tag.startswith(P.encode()) else line
        reply = self.script.get(key)
        if reply is not None:
            self.incoming.put_nowait(reply.replace(b"{tag}", tag))

    async def read(self) -> bytes:
        return await self.incoming.get()

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def conversation(script: dict[bytes, bytes], caps=("IMAP4rev1", "IDLE")) -> tuple[ProviderConversation, ScriptedLink]:
    link = ScriptedLink(script)
    conv = ProviderConversation(link)
    conv.capabilities = list(caps)
    return conv, link


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 5))


def test_examine_reads_uidvalidity_and_uidnext_and_notes_exists():
    async def go():
        conv, link = conversation({b'EXAMINE "INBOX"': b"* 9 EXISTS\r\n* OK [UIDVALIDITY 1700] v\r\n"
                                                        b"* OK [UIDNEXT 42] n\r\n{tag} OK [READ-ONLY] done\r\n"})
        state = {}
        assert await examine(conv, b"INBOX", state) == (1700, 42)
        assert link.sent == [P.encode() + b'1 EXAMINE "INBOX"\r\n'] and state == {"news": True}
    run(go())


def test_examine_without_uidvalidity_is_a_provider_error():
    async def go():
        conv, _ = conversation({b'EXAMINE "INBOX"': b"{tag} OK done\r\n"})
        with pytest.raises(UpstreamError, match="UIDVALIDITY"):
            await examine(conv, b"INBOX", {})
    run(go())


def test_search_and_fetch_with_literals():
    header = b"X-Ricevuta: accettazione\r\n\r\n"
    async def go():
        conv, link = conversation({
            b"UID SEARCH UID 5:*": b"* SEARCH 7 5 6\r\n{tag} OK done\r\n",
            b"UID FETCH 5:7 (UID BODY.PEEK[1.2]<0.100>)":
                b"* 1 FETCH (UID 5 BODY[1.2]<0> {%d}\r\n%s)\r\n* 2 FETCH (FLAGS (\\Seen))\r\n"
                b"* 3 FETCH (UID 7 BODY[1.2]<0> NIL)\r\n{tag} OK done\r\n" % (len(header), header)})
        assert await search_uids(conv, b"UID 5:*", {}) == [5, 6, 7]
        items = await fetch_items(conv, [7, 5, 6], "(UID BODY.PEEK[1.2]<0.100>)", {})
        assert [item_uid(i) for i in items] == [5, None, 7]
        assert part_octets(items[0], "1.2") == header and part_octets(items[2], "1.2") is None
        assert link.sent[-1].endswith(b" UID FETCH 5:7 (UID BODY.PEEK[1.2]<0.100>)\r\n")
    run(go())


def test_a_refused_command_says_which():
    async def go():
        conv, _ = conversation({b"UID SEARCH SINCE 3-Mar-2026": b"{tag} BAD no\r\n"})
        with pytest.raises(UpstreamError, match="UID SEARCH refused by the provider: no"):
            await search_uids(conv, b"SINCE 3-Mar-2026", {})
    run(go())


def test_idle_until_exists_then_done():
    async def go():
        conv, link = conversation({b"IDLE": b"+ idling\r\n* 4 EXPUNGE\r\n* 12 EXISTS\r\n",
                                   b"DONE": b"%s1 OK IDLE done\r\n" % P.encode()})
        state = {}
        await wait_for_news(conv, state)
        assert link.sent == [P.encode() + b"1 IDLE\r\n", b"DONE\r\n"] and state == {}
    run(go())


def test_news_seen_meanwhile_skips_idle():
    async def go():
        conv, link = conversation({})
        await wait_for_news(conv, {"news": True})
        assert link.sent == []
    run(go())


def test_idle_is_renewed():
    async def go():
        conv, link = conversation({b"IDLE": b"+ idling\r\n", b"DONE": b"%s1 OK done\r\n" % P.encode()})
        await wait_for_news(conv, {}, renew_s=0.05)
        assert link.sent == [P.encode() + b"1 IDLE\r\n", b"DONE\r\n"]
    run(go())


@pytest.mark.parametrize("reply,error", [
    (b"{tag} NO not now\r\n", "IDLE refused by the provider: not now"),
    (b"+ idling\r\n* BYE shutting down\r\n", "BYE: shutting down"),
])
def test_idle_refused_or_cut(reply, error):
    async def go():
        conv, _ = conversation({b"IDLE": reply})
        with pytest.raises(UpstreamError, match=error):
            await wait_for_news(conv, {}, renew_s=1)
    run(go())


def test_without_idle_the_watcher_polls_with_noop():
    async def go():
        conv, link = conversation({b"NOOP": b"* 3 EXISTS\r\n{tag} OK done\r\n"}, caps=("IMAP4rev1",))
        state = {}
        await wait_for_news(conv, state, poll_s=0.01)
        assert link.sent == [P.encode() + b"1 NOOP\r\n"] and state == {}
    run(go())


def test_since_text_is_an_rfc3501_date_in_utc():
    import datetime as dt
    assert since_text(dt.datetime(2026, 3, 3, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))) == b"2-Mar-2026"
