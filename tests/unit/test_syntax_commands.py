"""Tokeniser and command parser."""

import pytest

from gateway.imap_proxy.commands import COMMANDS, Handling, parse_command, parse_tag
from gateway.imap_proxy.errors import CommandSyntaxError
from gateway.imap_proxy.framing import NEED_DATA, Frame, Framer
from gateway.imap_proxy.syntax import Atom, String, quote_string


def frame_of(data: bytes) -> Frame:
    f = Framer()
    f.receive_data(data)
    while True:
        ev = f.next_event()
        assert ev is not NEED_DATA
        if isinstance(ev, Frame):
            return ev


def test_login_quoted_atom_literal():
    cmd = parse_command(frame_of(b'a1 login "al\\"ice" {5}\r\nse cr\r\n'))
    assert cmd.tag == "a1" and cmd.name == "LOGIN"
    assert cmd.args == (b'al"ice', b"se cr")
    assert isinstance(cmd.args[0], String) and not cmd.args[0].literal
    assert cmd.args[1].literal


def test_uid_fetch_with_sections():
    cmd = parse_command(frame_of(b"A7 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)]<0.512> UID)\r\n"))
    assert cmd.uid and cmd.name == "FETCH" and cmd.display_name == "UID FETCH"
    assert cmd.args[0] == "1:*"
    assert cmd.args[1] == ["FLAGS", "BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)]<0.512>", "UID"]


def test_store_flags_list():
    cmd = parse_command(frame_of(b"t STORE 2 +FLAGS.SILENT (\\Seen $Label1)\r\n"))
    assert cmd.args == ("2", "+FLAGS.SILENT", ["\\Seen", "$Label1"])
    assert all(isinstance(a, Atom) for a in cmd.args[2])


def test_append_with_literal_and_flags():
    cmd = parse_command(frame_of(b"a APPEND \"Uffici/Legale\" (\\Seen) {5+}\r\nhello\r\n"))
    assert cmd.args == (b"Uffici/Legale", ["\\Seen"], b"hello")


@pytest.mark.parametrize("line,message", [
    (b"\r\n", "tag"),
    (b"a1\r\n", "Missing command"),
    (b"a1 UID\r\n", "UID needs"),
    (b"a1 UID SELECT INBOX\r\n", "not a command"),
    (b'a1 LOGIN "unterminated\r\n', "unterminated"),
    (b"a1 FETCH 1 (FLAGS\r\n", "unbalanced"),
    (b"a1 FETCH 1 BODY[HEADER\r\n", "unbalanced"),
])
def test_syntax_errors_name_the_problem(line, message):
    with pytest.raises(CommandSyntaxError, match=message):
        parse_command(frame_of(line))


def test_syntax_error_keeps_tag():
    with pytest.raises(CommandSyntaxError) as info:
        parse_command(frame_of(b'x9 LOGIN "oops\r\n'))
    assert info.value.tag == "x9"


@pytest.mark.parametrize("line,tag", [(b"a1 NOOP", "a1"), (b"+ x", None), (b"* OK", None), (b"", None),
                                      (b"a{1 NOOP", None), (b"A.001 X", "A.001")])
def test_parse_tag(line, tag):
    assert parse_tag(line) == tag


def test_command_table_allowlist():
    assert COMMANDS["COMPRESS"].postauth is Handling.REFUSED
    assert COMMANDS["SETACL"].postauth is Handling.GATEWAY  # answered from the policy, never relayed
    assert COMMANDS["LOGIN"].preauth is Handling.GATEWAY and COMMANDS["LOGIN"].postauth is Handling.REFUSED
    assert COMMANDS["MOVE"].mailbox_args == (1,) and COMMANDS["MOVE"].uid_variant
    assert COMMANDS["SELECT"].preauth is Handling.REFUSED


def test_quote_string():
    assert quote_string(b'a"b\\c') == b'"a\\"b\\\\c"'
    assert quote_string("Contabilità".encode()) == b"{12}\r\nContabilit\xc3\xa0"


def test_every_preauth_gateway_verb_has_a_handler():
    from gateway.imap_proxy.preauth import PREAUTH_VERBS

    assert {n for n, spec in COMMANDS.items() if spec.preauth is Handling.GATEWAY} == set(PREAUTH_VERBS)
