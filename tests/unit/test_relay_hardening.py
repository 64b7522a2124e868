"""Hardening of the IMAP relay core: command smuggling, deadlocks, limits, state by identity.

Each test pins one way a client or provider could break the relay: bytes that a lenient provider
would read as a second command, flow-control deadlocks, memory that could grow without bound,
timers that could be dodged.  Session and framer tests feed bytes and assert on actions, like
``test_session.py`` and ``test_framing.py``; the few cases that live in ``server.py`` are driven
with an in-memory ``asyncio.StreamReader`` and a fake writer for the client, and a real
``ProviderLink`` on a fake transport for the provider: no sockets, no TLS, no provider.
"""

import asyncio
import contextlib
from types import SimpleNamespace

import pytest

from gateway.imap_proxy import actions as act
from gateway.imap_proxy import server as server_mod
from tests.unit.policies import OPEN
from gateway.imap_proxy.framing import NEED_DATA, Frame, Framer, LiteralRefused
from gateway.imap_proxy.session import SessionLimits, SessionState
from gateway.login import Failure, LoginResult
from tests.unit.fake_provider import provider_link, provider_sends
from tests.unit.transcript import UPSTREAM_CAPS, closes, feed, logged_in, new_session, sent, selected



# ================================================================ 1. command smuggling (HIGH, security)
# The gateway's tokeniser accepts bytes the RFC 3501 grammar forbids, and relays them verbatim.
# A lenient provider ends the line at the bare LF, answers the first part BAD and then executes
# the rest as a command the gateway never parsed (checked against Dovecot 2.3: "a2 OK Delete
# completed").  Policy and the command allowlist are bypassed.

@pytest.mark.parametrize("line", [
    b'a1 SELECT "x\na2 DELETE Legale\na3 NOOP "\r\n',   # bare LF inside a quoted string
    b"a1 FETCH 1 BODY[\na2 DELETE Legale\n]\r\n",        # bare LF inside a section [...]
    b'a1 SELECT "x\x00y"\r\n',                           # NUL is not a TEXT-CHAR either
], ids=["quoted-LF", "section-LF", "quoted-NUL"])
def test_forbidden_octets_in_quoted_or_section_are_not_relayed(line):
    s = logged_in()
    out = s.client_data(line)
    assert sent(out, act.SendToUpstream) == b""
    assert b"a1 BAD" in sent(out) or closes(out)


@pytest.mark.parametrize("caps", [UPSTREAM_CAPS, ["IMAP4rev1", "LITERAL-"]], ids=["LITERAL+", "LITERAL-"])
def test_minus_literal_marker_never_reaches_the_provider(caps):
    """RFC 7888 has no ``{N-}`` syntax: LITERAL- uses ``{N+}`` too.  The framer treats ``{N-}`` as a
    non-synchronising literal and the pacer forwards it unchanged, so the provider sees a bad
    APPEND line followed by the "literal" as a new command (Dovecot executes it)."""
    s = logged_in(caps)
    inner = b"a2 DELETE Legale\r\n"
    out = s.client_data(b"a1 APPEND INBOX {%d-}\r\n%s\r\n" % (len(inner), inner))
    assert b"{%d-}" % len(inner) not in sent(out, act.SendToUpstream)


# ================================================================ 2. IDLE (HIGH / MEDIUM)

def test_command_pipelined_right_after_done_is_relayed(bytewise):
    """RFC 2177 only asks the client to wait for "+" before DONE; after DONE it may send its next
    command at once.  ``_idle_tag`` stays set until the provider's tagged OK, so the next command
    is taken for a second IDLE line and the session is killed with ``* BYE Expected DONE``."""
    s = logged_in()
    s.client_data(b"I1 IDLE\r\n")
    s.upstream_data(b"+ idling\r\n")
    out = feed(s, b"DONE\r\nA2 NOOP\r\n", bytewise=bytewise)
    out += s.upstream_data(b"I1 OK Idle completed\r\n")
    assert not closes(out)
    assert sent(out, act.SendToUpstream) == b"DONE\r\nA2 NOOP\r\n"


def test_idle_can_be_ended_when_it_fills_the_inflight_limit():
    """With ``max_in_flight = 1`` (the config allows it) the IDLE entry fills the table, the server
    stops reading the client, and the DONE that would free it is never read: deadlock."""
    s = logged_in(limits=SessionLimits(max_in_flight=1))
    s.client_data(b"I1 IDLE\r\n")
    s.upstream_data(b"+ idling\r\n")
    assert not s.reading_paused
    assert sent(s.client_data(b"DONE\r\n"), act.SendToUpstream) == b"DONE\r\n"


# ================================================================ 3. provider responses

def test_provider_search_result_longer_than_64k_is_relayed():
    """The upstream framer reuses the *client* ``max_line`` (64 KiB).  ``* SEARCH``/``* THREAD``/
    ``* VANISHED`` lines of a mailbox with ~11k+ messages are longer, and the session dies with
    ``* BYE [UNAVAILABLE] The PEC provider sent something the gateway cannot relay``."""
    s = selected()
    s.client_data(b"A1 UID SEARCH ALL\r\n")
    line = b"* SEARCH " + b" ".join(b"%d" % i for i in range(1, 15001)) + b"\r\n"  # ~84 KB
    out = s.upstream_data(line + b"A1 OK Search completed\r\n")
    assert sent(out) == line + b"A1 OK Search completed\r\n"


def test_oversized_provider_literal_ends_the_session_with_bye_not_an_exception():
    """The upstream framer returns ``LiteralRefused`` for a ``{N}`` above ``max_response_literal``;
    the session passes it to ``classify`` and raises AttributeError (no BYE, traceback in the log).
    Had it not crashed, the literal's octets would then be framed as provider responses."""
    s = logged_in(limits=SessionLimits(max_response_literal=1000))
    s.client_data(b"A1 FETCH 1 BODY[]\r\n")
    out = s.upstream_data(b"* 1 FETCH (BODY[] {5000}\r\n" + b"x" * 100)
    assert sent(out).startswith(b"* BYE [UNAVAILABLE]")
    assert isinstance(out[-1], act.Close)


def test_capability_code_is_filtered_whatever_the_tag_length():
    """``_rewrite_capability_code`` only looks for ``[CAPABILITY `` in the first 64 octets; behind a
    long (client-chosen) tag the provider's unfiltered list reaches the client."""
    s = logged_in()
    tag = b"T" * 60
    s.client_data(tag + b" NOOP\r\n")
    out = s.upstream_data(tag + b" OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE AUTH=PLAIN] done\r\n")
    assert b"COMPRESS" not in sent(out) and b"AUTH=PLAIN" not in sent(out)


def test_enable_cannot_switch_on_what_the_gateway_filtered_out():
    """Capability filtering is advisory only: ENABLE is relayed with any argument, so a client can
    turn on UTF8=ACCEPT / IMAP4rev2 (changed mailbox-name and response syntax) at the provider."""
    s = logged_in(UPSTREAM_CAPS + ["UTF8=ACCEPT", "IMAP4rev2"])
    up = sent(s.client_data(b"e1 ENABLE UTF8=ACCEPT IMAP4rev2\r\n"), act.SendToUpstream)
    assert b"UTF8=ACCEPT" not in up and b"IMAP4rev2" not in up


# ================================================================ 4. parser robustness

@pytest.mark.parametrize("authenticated", [False, True], ids=["preauth", "postauth"])
def test_deeply_nested_list_is_a_syntax_error_not_a_recursion_error(authenticated):
    """``Reader._read_list`` recurses once per "(": ~500 of them (well inside max_line) raise
    RecursionError, which is outside the ImapProtocolError tree; the server logs a traceback and
    drops the connection without a reply.  Reachable before login."""
    s = logged_in() if authenticated else new_session()
    out = s.client_data(b"a1 ID " + b"(" * 3000 + b"\r\n")
    assert b"a1 BAD" in sent(out) or b"* BYE" in sent(out)
    assert sent(out, act.SendToUpstream) == b""


# ================================================================ 5. framing limits

def test_line_of_exactly_max_line_is_accepted_bytewise_too():
    """Fed whole, a line of ``max_line`` octets + CRLF is accepted; fed so that the CR arrives
    alone, ``len(buf) > max_line`` fires on the CR and the connection is closed."""
    data = b"a" * 1024 + b"\r\n"
    f = Framer(max_line=1024)
    events = []
    for i in range(len(data)):
        f.receive_data(data[i:i + 1])
        while (ev := f.next_event()) is not NEED_DATA:
            events.append(ev)
    assert events == [Frame((data,))]


def test_sync_literal_that_would_exceed_max_message_is_refused_not_fatal():
    """A synchronising literal can always be refused (the client waits for "+"), yet one that would
    push the message over ``max_message`` is a fatal FramingError (``* BYE``) rather than a
    ``LiteralRefused`` (tagged ``NO [TOOBIG]``)."""
    f = Framer(max_literal=100, max_message=250)
    f.receive_data(b"a X {90+}\r\n" + b"x" * 90 + b" {90+}\r\n" + b"y" * 90 + b" {90}\r\n")
    events = []
    while (ev := f.next_event()) is not NEED_DATA:
        events.append(ev)
    assert isinstance(events[-1], LiteralRefused)
    f.receive_data(b"b NOOP\r\n")
    assert f.next_event() == Frame((b"b NOOP\r\n",))


def test_commands_queued_behind_a_waiting_literal_stop_client_reads():
    """Without LITERAL+ at the provider (or with LITERAL- and literals > 4096), every command after
    a literal waiting for the provider's "+" sits in the pacer with its whole literal in memory,
    while the client keeps being read: up to max_in_flight x max_literal (128 x 100 MiB)."""
    s = logged_in(upstream_caps=["IMAP4rev1"])
    s.client_data(b"A1 APPEND INBOX {5+}\r\nhello\r\n")  # waits for the provider's "+"
    s.client_data(b"A2 APPEND INBOX {1048576+}\r\n" + b"x" * 1048576 + b"\r\n")  # queued in the pacer
    assert s.reading_paused


# ================================================================ 6. state bookkeeping by tag

def test_reply_to_an_earlier_command_with_the_logout_tag_does_not_end_the_session():
    """A LOGOUT reusing the tag of a command still in flight is refused, so the earlier command's
    reply can never be taken for the LOGOUT's and close the session early."""
    s = logged_in()
    out = s.client_data(b"z NOOP\r\nz LOGOUT\r\n")
    assert sent(out, act.SendToUpstream) == b"z NOOP\r\n"
    out = s.upstream_data(b"z OK NOOP completed\r\n")
    assert not closes(out) and s.state is SessionState.AUTHENTICATED
    assert sent(out) == b"z OK NOOP completed\r\nz BAD Tag already in use by a command in progress\r\n"
    s.client_data(b"z LOGOUT\r\n")  # once the tag is free again, it is a LOGOUT like any other
    out = s.upstream_data(b"* BYE Logging out\r\nz OK Logout completed\r\n")
    assert isinstance(out[-1], act.Close)


def test_login_result_arriving_after_shutdown_is_ignored():
    """``ImapFront.stop()`` can close a connection whose login is still running; the result then
    hits ``_set_state``'s assertion (AssertionError), and the provider connection that
    ``_open_upstream`` just opened is never closed (``_close`` already ran)."""
    s = new_session()
    s.client_data(b"a1 LOGIN alice pw123456\r\n")
    s.shutting_down()
    out = s.login_finished(LoginResult(True, person="alice", mailbox="protocollo", groups=("legale",)), UPSTREAM_CAPS)
    assert s.state is SessionState.LOGOUT
    assert sent(out) == b""


# ================================================================ 7. server.py, with in-memory fakes

class FakeWriter:
    """Enough of asyncio.StreamWriter for Connection; ``drain`` blocks above ``high_water``."""

    def __init__(self, high_water: int | None = None) -> None:
        self.data = bytearray()
        self.pending = 0  # octets written and not yet taken by the peer
        self.high_water = high_water
        self.closed = False
        self.tls_started = 0
        self.transport = SimpleNamespace(abort=lambda: None, get_write_buffer_size=lambda: self.pending,
                                         get_write_buffer_limits=lambda: (0, self.high_water or 64 * 1024))

    def get_extra_info(self, name, default=None):
        return ("192.0.2.7", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.data += data
        self.pending += len(data)

    async def drain(self) -> None:
        if self.high_water is not None and self.pending > self.high_water:
            await asyncio.Event().wait()  # the peer is not reading

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None

    async def start_tls(self, ctx, **kw) -> None:
        self.tls_started += 1


class FakeLogin:
    def __init__(self) -> None:
        self.requests = []

    async def login(self, request):
        self.requests.append((request.login, request.credential.reveal()))
        return LoginResult(False, failure=Failure.AUTHENTICATION, client_text="Authentication failed")


def make_conn(*, tls="implicit", login=None, limits=SessionLimits(), preauth_timeout_s=30.0, idle_timeout_s=30.0):
    imap = SimpleNamespace(limits=limits, plaintext_login=False, preauth_timeout_s=preauth_timeout_s,
                           idle_timeout_s=idle_timeout_s, cert_file=None, key_file=None, tls_min_version="TLSv1.2")
    services = server_mod.Services(config=SimpleNamespace(imap=imap), login_service=login or FakeLogin(),
                                   vault=None, audit=SimpleNamespace(emit=lambda event: None), policy=OPEN)
    reader, writer = asyncio.StreamReader(), FakeWriter()
    return server_mod.Connection(services, SimpleNamespace(tls=tls), reader, writer), reader, writer


async def _cancel(*tasks) -> None:
    for t in tasks:
        if t is not None and not t.done():
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def test_cleartext_already_in_the_stream_reader_is_not_used_after_starttls(monkeypatch):
    """``Framer.clear()`` drops what the *framer* holds, but octets already read from the socket
    into the StreamReader beyond the one ``read(_READ_SIZE)`` stay there: asyncio's ``start_tls``
    does not touch the reader, so they are handed to the session as if they came over TLS
    (CVE-2011-0411 pattern).  Here a MITM's ``LOGIN`` sent in clear reaches the login service."""
    monkeypatch.setattr(server_mod, "server_tls_context", lambda *a, **k: None)
    login = FakeLogin()
    conn, reader, writer = make_conn(tls="starttls", login=login)
    first = b"a1 STARTTLS\r\n"
    padding = b"x" * (server_mod._READ_SIZE - len(first) - 2) + b"\r\n"
    reader.feed_data(first + padding + b"a2 LOGIN mallory injected123456\r\n")
    reader.feed_eof()
    await asyncio.wait_for(conn.run(), 5)
    assert login.requests == []  # closing the connection, as Dovecot and Postfix do, is a fine fix


async def test_provider_output_keeps_flowing_while_an_upload_waits_for_the_provider():
    """The provider reader task drained *both* writers after every chunk.  With a large APPEND
    pending toward the provider (upstream buffer above its high-water mark) and the provider
    busy writing an earlier FETCH (Dovecot does not read input while its output is blocked), the
    task waits for the provider to read while the provider waits for the gateway to read:
    deadlock, with no timer to end it.  Reproduced through the real gateway + Dovecot with a
    pipelined ``UID FETCH 1:* BODY.PEEK[]`` (60 MB) + ``APPEND {20000000+}`` (timing-dependent).
    With the provider link, provider bytes are handled in its callback: they must neither wait
    for the provider to drain nor pause reading the provider."""
    conn, reader, writer = make_conn()
    conn.session = logged_in()
    link = provider_link()
    conn.up = SimpleNamespace(link=link)
    link.attach(conn._on_upstream_data)
    link.write(b"A2 APPEND INBOX {1000000+}\r\n" + b"y" * 1_000_000 + b"\r\n")  # not yet read by the provider
    link.pause_writing()  # ... so its transport is above the high-water mark
    provider_sends(link, b"* 1 FETCH (UID 1 FLAGS ())\r\n")
    await asyncio.sleep(0.05)
    provider_sends(link, b"* 2 FETCH (UID 2 FLAGS ())\r\n")
    await asyncio.sleep(0.05)
    assert b"* 2 FETCH" in writer.data
    assert link.transport.reading


async def test_provider_is_paused_while_the_client_is_not_reading_and_resumed_when_it_drains():
    """Back-pressure: provider bytes go to the client in the link's callback, with no task that
    could wait; above the client's high-water mark the provider must stop being read, or a
    client that does not read would make the gateway buffer a whole mailbox."""
    conn, reader, writer = make_conn()
    conn.session = logged_in()
    writer.high_water = 1000
    link = provider_link()
    conn.up = SimpleNamespace(link=link)
    link.attach(conn._on_upstream_data)
    conn.session.client_data(b"A1 FETCH 1:* BODY[]\r\n")
    provider_sends(link, b"* 1 FETCH (BODY[] {2000}\r\n" + b"x" * 2000 + b")\r\n")
    assert not link.transport.reading and b"* 1 FETCH" in writer.data
    await asyncio.sleep(0.05)
    assert not link.transport.reading  # drain() still blocked: the client has not read
    writer.pending, writer.high_water = 0, None
    drain = conn._client_drain
    drain.cancel()  # FakeWriter.drain never wakes up by itself; a real one would return now
    with contextlib.suppress(asyncio.CancelledError):
        await drain
    assert link.transport.reading and conn._client_drain is None


async def test_preauth_timeout_bounds_the_whole_unauthenticated_phase():
    """``preauth_timeout`` is applied per read: a client that never logs in but sends a NOOP now
    and then keeps an unauthenticated connection (and a slot) forever."""
    conn, reader, writer = make_conn(preauth_timeout_s=0.3)
    task = asyncio.create_task(conn.run())
    try:
        for i in range(12):  # a NOOP every 0.1 s for 1.2 s, four times the pre-auth limit
            if task.done():
                break
            reader.feed_data(b"n%d NOOP\r\n" % i)
            await asyncio.sleep(0.1)
        finished = task.done()
    finally:
        reader.feed_eof()
        await asyncio.wait_for(task, 5)
    assert finished and b"* BYE" in writer.data


async def test_client_gone_while_reading_is_paused_is_noticed():
    """While ``reading_paused`` the run loop waits on ``_resume`` with no timer and does not read the
    client, so if the provider stays silent (blackholed NAT state, hung backend) a client that
    has gone away is never noticed: the session and its provider connection live forever."""
    limits = SessionLimits(max_in_flight=1)
    conn, reader, writer = make_conn(limits=limits, idle_timeout_s=0.3)
    conn.session = logged_in(limits=limits)
    link = provider_link()
    conn.up = SimpleNamespace(link=link)
    link.attach(conn._on_upstream_data)
    reader.feed_data(b"a1 NOOP\r\n")  # relayed; the provider never answers
    reader.feed_eof()  # and the client goes away
    run = asyncio.create_task(conn.run())
    try:
        await asyncio.sleep(1.5)  # five idle timeouts
        finished = run.done() and link.transport.closed
    finally:
        provider_sends(link, b"")  # let the test end: the provider finally closes
        await asyncio.wait_for(run, 5)
    assert finished


@pytest.mark.timeout(20)
async def test_a_session_ended_with_its_close_still_pending_does_not_spin_on_the_clients_eof():
    """Was: a session already in LOGOUT whose Close still waited in a task (spawned from provider
    data) answered the client's EOF with no action; StreamReader.read returns b"" at EOF without
    yielding, so the run loop spun for ever without letting that task (or anything else on the
    event loop) run, allocating a timer per turn: the whole gateway froze and its memory grew
    by tens of MB a second."""
    conn, reader, writer = make_conn()
    conn.session.state = SessionState.LOGOUT  # ended; its Close not run yet
    reader.feed_eof()
    await asyncio.wait_for(conn.run(), 5)
    assert writer.closed
