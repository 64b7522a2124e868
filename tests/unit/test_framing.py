"""The framer: lines, literals of every kind, limits — fed whole and one octet at a time."""

import pytest

from gateway.imap_proxy.errors import FramingError
from gateway.imap_proxy.framing import (NEED_DATA, EndOfStream, Frame, Framer, LiteralAnnounced, LiteralKind,
                                        LiteralRefused, find_literal_marker)


def events(data: bytes, *, bytewise: bool, **kw) -> list:
    """Feed ``data`` whole or octet by octet; return every event (h11's tr() idea)."""
    f = Framer(**kw)
    out = []
    chunks = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks + [b""]:
        f.receive_data(chunk)
        while (ev := f.next_event()) is not NEED_DATA:
            out.append(ev)
    return out


@pytest.fixture(params=[False, True], ids=["whole", "bytewise"])
def bytewise(request):
    return request.param


def test_simple_lines(bytewise):
    evs = events(b"a1 NOOP\r\na2 CAPABILITY\r\n", bytewise=bytewise)
    assert evs == [Frame((b"a1 NOOP\r\n",)), Frame((b"a2 CAPABILITY\r\n",)), EndOfStream(partial=False)]


def test_sync_literal_announced_then_completed(bytewise):
    data = b"a1 LOGIN {5}\r\nalice {6}\r\nsecret\r\n"
    evs = events(data, bytewise=bytewise)
    assert isinstance(evs[0], LiteralAnnounced) and evs[0].marker.size == 5
    assert evs[0].marker.kind is LiteralKind.SYNC and evs[0].line_so_far == b"a1 LOGIN {5}"
    assert isinstance(evs[1], LiteralAnnounced) and evs[1].marker.size == 6
    frame = evs[2]
    assert frame.lines == (b"a1 LOGIN {5}\r\n", b" {6}\r\n", b"\r\n")
    assert frame.literals == (b"alice", b"secret")
    assert frame.raw == data
    assert evs[3] == EndOfStream(partial=False)


@pytest.mark.parametrize("marker,kind,binary", [
    (b"{3+}", LiteralKind.PLUS, False), (b"~{3}", LiteralKind.SYNC, True), (b"~{3+}", LiteralKind.PLUS, True)])
def test_literal_kinds(marker, kind, binary, bytewise):
    data = b"a APPEND INBOX " + marker + b"\r\nabc\r\n"
    evs = events(data, bytewise=bytewise)
    assert evs[0].marker.kind is kind and evs[0].marker.binary is binary
    assert evs[1].raw == data and evs[1].literals == (b"abc",)


def test_literal_may_contain_crlf_and_braces(bytewise):
    body = b"Subject: x {3}\r\n\r\nline\r\n"
    data = b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(body), body)
    evs = events(data, bytewise=bytewise)
    assert isinstance(evs[0], LiteralAnnounced)
    assert evs[1].literals == (body,) and evs[1].raw == data


def test_zero_length_literal(bytewise):
    data = b"a LOGIN {0}\r\n {0}\r\n\r\n"
    evs = events(data, bytewise=bytewise)
    frame = [e for e in evs if isinstance(e, Frame)][0]
    assert frame.literals == (b"", b"") and frame.raw == data


def test_line_too_long_is_fatal():
    f = Framer(max_line=1024)
    f.receive_data(b"a" * 2000)
    with pytest.raises(FramingError, match="line exceeds"):
        f.next_event()


def test_long_line_with_crlf_beyond_limit_is_fatal():
    f = Framer(max_line=1024)
    f.receive_data(b"a" * 1500 + b"\r\n")
    with pytest.raises(FramingError):
        f.next_event()


def test_oversized_sync_literal_is_refused_and_stream_continues(bytewise):
    evs = events(b"a1 APPEND INBOX {999999}\r\na2 NOOP\r\n", bytewise=bytewise, max_literal=1000)
    assert isinstance(evs[0], LiteralRefused) and evs[0].marker.size == 999999
    assert evs[0].line_so_far == b"a1 APPEND INBOX {999999}"
    assert evs[1] == Frame((b"a2 NOOP\r\n",))


def test_oversized_non_sync_literal_is_fatal():
    f = Framer(max_literal=1000)
    f.receive_data(b"a1 APPEND INBOX {999999+}\r\n")
    with pytest.raises(FramingError, match="literal of 999999 octets exceeds 1000"):
        f.next_event()


def test_message_size_cap_counts_all_literals():
    f = Framer(max_literal=100, max_message=250)
    f.receive_data(b"a X {90+}\r\n" + b"x" * 90 + b" {90+}\r\n" + b"y" * 90 + b" {90+}\r\n")
    with pytest.raises(FramingError, match="message exceeds"):
        while f.next_event() is not NEED_DATA:
            pass


def test_eof_mid_literal_is_partial(bytewise):
    evs = events(b"a1 APPEND INBOX {10}\r\nabc", bytewise=bytewise)
    assert evs[-1] == EndOfStream(partial=True)


def test_clear_returns_unprocessed_bytes():
    f = Framer()
    f.receive_data(b"a1 STARTTLS\r\na2 LOGIN x y\r\n")
    assert f.next_event() == Frame((b"a1 STARTTLS\r\n",))
    assert f.clear() == b"a2 LOGIN x y\r\n"
    assert f.next_event() is NEED_DATA


def test_garbage_bytes_frame_as_lines():
    evs = events(b"\x00\xff\xfe garbage\r\n", bytewise=False)
    assert evs[0] == Frame((b"\x00\xff\xfe garbage\r\n",))


@pytest.mark.parametrize("line,expected", [
    (b"a LOGIN {5}", (5, LiteralKind.SYNC, False)),
    (b"a LOGIN {5+}", (5, LiteralKind.PLUS, False)),
    (b"x ~{12+}", (12, LiteralKind.PLUS, True)),
    (b"x {12-}", None),  # RFC 7888 has no {N-}
    (b"a LOGIN {}", None),
    (b"a LOGIN {5a}", None),
    (b"a LOGIN 5}", None),
    (b"a {" + b"9" * 30 + b"}", None),
])
def test_find_literal_marker(line, expected):
    m = find_literal_marker(line)
    assert (m and (m.size, m.kind, m.binary)) == expected
