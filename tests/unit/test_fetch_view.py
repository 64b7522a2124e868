"""FETCH responses read for the audit trail, and the sequence-number → UID view, byte by byte."""

from __future__ import annotations

import pytest

from gateway.imap_proxy.framing import NEED_DATA, Framer
from gateway.imap_proxy.fetch_response import FetchData, is_header_section, parse_fetch
from gateway.imap_proxy.mailbox_view import MailboxView
from gateway.imap_proxy.sequence_set import SequenceSet, format_numbers


def frames(data: bytes, *, bytewise: bool = False):
    framer = Framer(announce_literals=False)
    out = []
    for chunk in ([data[i:i + 1] for i in range(len(data))] if bytewise else [data]):
        framer.receive_data(chunk)
        while (event := framer.next_event()) is not NEED_DATA:
            out.append(event)
    return out


@pytest.mark.parametrize("bytewise", [False, True])
def test_body_fetch_with_literal_and_uid(bytewise):
    (frame,) = frames(b"* 12 FETCH (UID 4827 FLAGS (\\Seen $Inoltrato) BODY[] {5}\r\nhello)\r\n", bytewise=bytewise)
    assert parse_fetch(frame) == FetchData(12, 4827, ("\\Seen", "$Inoltrato"), ("BODY[]",), (), ())


@pytest.mark.parametrize("response,content,headers,other", [
    (b'* 1 FETCH (BODY[HEADER.FIELDS (FROM SUBJECT)] {4}\r\nab\r\n)\r\n', (), ("BODY[HEADER.FIELDS (FROM SUBJECT)]",), ()),
    (b'* 1 FETCH (RFC822.HEADER {2}\r\nab RFC822.SIZE 44)\r\n', (), ("RFC822.HEADER",), ("RFC822.SIZE",)),
    (b'* 1 FETCH (RFC822 {2}\r\nab)\r\n', ("RFC822",), (), ()),
    (b'* 1 FETCH (BODY[TEXT] "x" BODY[1.MIME] "y")\r\n', ("BODY[TEXT]",), ("BODY[1.MIME]",), ()),
    (b'* 1 FETCH (BODY[2]<0> {1}\r\nz BINARY[3] ~{1}\r\nq)\r\n', ("BODY[2]<0>", "BINARY[3]"), (), ()),
    (b'* 1 FETCH (BODY[] NIL ENVELOPE NIL BODYSTRUCTURE ("TEXT" "PLAIN" NIL NIL NIL "7BIT" 0 0))\r\n',
     (), (), ("BODY[]", "ENVELOPE", "BODYSTRUCTURE")),
])
def test_content_and_header_items(response, content, headers, other):
    (frame,) = frames(response)
    data = parse_fetch(frame)
    assert (data.content, data.headers, data.other) == (content, headers, other)
    assert data.body is bool(content)


def test_flags_only_and_modseq():
    (frame,) = frames(b"* 3 FETCH (FLAGS (\\Deleted) MODSEQ (912) UID 9)\r\n")
    data = parse_fetch(frame)
    assert (data.seq, data.uid, data.flags, data.modseq, data.body) == (3, 9, ("\\Deleted",), 912, False)


@pytest.mark.parametrize("response", [b"* 3 EXISTS\r\n", b"* 3 FETCH UID\r\n", b"* x FETCH (UID 1)\r\n",
                                      b'* 3 FETCH ("UID" 1)\r\n', b"* 3 FETCH (UID 1 FLAGS)\r\n"])
def test_unreadable_responses_give_none(response):
    (frame,) = frames(response)
    assert parse_fetch(frame) is None


@pytest.mark.parametrize("name,header", [("BODY[HEADER]", True), ("BODY[1.2.HEADER.FIELDS.NOT (X)]", True),
                                         ("BODY[]", False), ("BODY[1]", False), ("BINARY[2]", False),
                                         ("BODY[TEXT]", False), ("BODY[1.MIME]", True)])
def test_is_header_section(name, header):
    assert is_header_section(name) is header


def test_view_follows_exists_fetch_and_expunge():
    view = MailboxView(uidvalidity=77, exists=3)
    assert view.unknown() == [1, 2, 3]
    for seq, uid in ((1, 10), (2, 11), (3, 15)):
        view.learn(seq, uid)
    view.exists(5)
    view.learn(5, 21)
    assert view.unknown() == [4]
    assert view.expunge(2) == 11  # RFC 3501: later messages move down by one
    assert [view.uid_of(n) for n in range(1, 5)] == [10, 15, None, 21]
    assert view.expunge(9) is None and len(view) == 4
    assert view.vanished([15, 99]) == [15] and view.seq_of(21) == 3


@pytest.mark.parametrize("text,uids", [("1:3,7", [1, 2, 3, 7]), ("5:3", [3, 4, 5]), ("42", [42]),
                                       ("7,1:3,2", [1, 2, 3, 7])])
def test_sequence_sets(text, uids):
    assert list(SequenceSet.parse(text)) == uids
    assert format_numbers(uids) == ",".join(
        {"7,1:3,2": "1:3,7", "5:3": "3:5"}.get(text, text).split(","))


@pytest.mark.parametrize("text", ["0", "1:*", "a", "1:4294967296", "", "1,,2", "-1", "1:2:3"])
def test_bad_sequence_sets_are_refused(text):
    with pytest.raises(ValueError):
        SequenceSet.parse(text)


def test_a_huge_set_is_never_expanded():
    """``1:*`` in a folder of 4 billion UIDs answers membership without listing its numbers."""
    huge = SequenceSet.parse("1:*,5", last=4_294_967_295)
    assert len(huge) == 4_294_967_295
    assert 4_000_000_000 in huge and 0 not in huge and 4_294_967_296 not in huge
    assert huge.among([None, 3, 4_294_967_295]) == [3, 4_294_967_295]
    gaps = SequenceSet.parse("10:20,30,25:26")
    assert [n for n in range(9, 32) if n in gaps] == [*range(10, 21), 25, 26, 30]
    assert SequenceSet.parse("*:7", last=3) is not None and 5 in SequenceSet.parse("*:7", last=3)
