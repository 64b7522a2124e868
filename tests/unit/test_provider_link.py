"""The provider link: the login phase reads like a StreamReader, the hand-over to the relay loses
no byte, and the consumer's back-pressure and the provider's own reach the transport."""

import asyncio

import pytest

from tests.unit.fake_provider import provider_link, provider_sends


async def test_login_phase_reads_what_arrived_then_eof():
    link = provider_link()
    reader = asyncio.create_task(link.read())
    await asyncio.sleep(0)
    provider_sends(link, b"* OK ready\r\n")
    provider_sends(link, b"A1 OK done\r\n")
    assert await reader == b"* OK ready\r\nA1 OK done\r\n"  # both: the reader had not run yet
    provider_sends(link, b"")
    assert await link.read() == b""


async def test_login_phase_read_raises_why_the_connection_was_lost():
    link = provider_link()
    provider_sends(link, b"* OK ready\r\n")
    link.connection_lost(ConnectionResetError("reset"))
    assert await link.read() == b"* OK ready\r\n"  # what came before the loss first
    with pytest.raises(ConnectionResetError):
        await link.read()


async def test_hand_over_delivers_the_framer_leftover_then_what_arrived_meanwhile_then_eof():
    link = provider_link()
    provider_sends(link, b"* 2 EXISTS\r\n")  # after the login dialogue ended, before attach()
    provider_sends(link, b"")
    got = []
    link.attach(got.append, first=b"* 1 EXISTS\r\n")
    assert got == [b"* 1 EXISTS\r\n* 2 EXISTS\r\n", b""]


async def test_a_flooding_provider_is_paused_in_the_login_phase_until_read():
    link = provider_link()
    provider_sends(link, b"x" * (300 * 1024))
    assert not link.transport.reading
    assert len(await link.read()) == 300 * 1024
    assert link.transport.reading


async def test_consumer_pause_and_resume_reach_the_transport():
    link = provider_link()
    got = []
    link.attach(got.append)
    provider_sends(link, b"* 1 EXISTS\r\n")
    link.pause_reading()
    assert not link.transport.reading and got == [b"* 1 EXISTS\r\n"]
    link.resume_reading()
    assert link.transport.reading


async def test_drain_waits_for_the_provider_and_fails_once_the_connection_is_lost():
    link = provider_link()
    link.pause_writing()
    drain = asyncio.create_task(link.drain())
    await asyncio.sleep(0.01)
    assert not drain.done()
    link.resume_writing()
    await asyncio.wait_for(drain, 1)
    link.pause_writing()
    drain = asyncio.create_task(link.drain())
    await asyncio.sleep(0)
    link.connection_lost(None)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(drain, 1)
    await asyncio.wait_for(link.wait_closed(), 1)
