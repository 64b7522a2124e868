"""Rights: RFC 4314 letters, canonical order, union, the send flag, and what is refused."""

import pytest

from policy.model import PEC_PROTECTED, MailboxPolicy, Right, Rights, toml_key


@pytest.mark.parametrize("text,rendered", [
    ("", ""),
    ("lr", "lr"),
    ("rl", "lr"),
    ("wsrl", "lrsw"),
    ("aetxkpiwsrl", "lrswipkxtea"),
    ("llr", "lr"),
])
def test_parse_renders_in_rfc_order(text, rendered):
    assert Rights.parse(text).render() == rendered


@pytest.mark.parametrize("text,message", [
    ("lrz", "unknown right 'z' (RFC 4314 letters: lrswipkxtea)"),
    ("LR", "unknown right 'L' (RFC 4314 letters: lrswipkxtea)"),
    ("lr s", "unknown right ' ' (RFC 4314 letters: lrswipkxtea)"),
    ("all", "'all' is not a shorthand: list the RFC 4314 letters you mean (lrswipkxtea)"),
    ("*", "'*' is not a shorthand: list the RFC 4314 letters you mean (lrswipkxtea)"),
    ("lr send", "'send' is not an RFC 4314 right: list the office in the mailbox's send"),
    ("lrd", "'d' is the obsolete RFC 2086 right; RFC 4314 split it into 'x', 't' and 'e'"),
    ("lc", "'c' is the obsolete RFC 2086 right; RFC 4314 split it into 'k' (create) and 'x' (delete mailbox)"),
])
def test_parse_refuses(text, message):
    with pytest.raises(ValueError) as exc:
        Rights.parse(text)
    assert str(exc.value) == message


def test_union_has_and_send():
    a, b = Rights.parse("lr"), Rights.parse("si", send=True)
    u = a | b
    assert u.render() == "lrsi" and u.send and str(u) == "lrsi+send"
    assert u.has("l") and u.has(Right.INSERT) and u.has("send") and not u.has("e")
    assert "r" in u and "w" not in u
    assert a.union(b) == u
    assert not Rights() and Rights(send=True) and not Rights().has("send")
    assert Rights.parse("lrxte").protected == PEC_PROTECTED


def test_values_are_frozen_and_hashable():
    r = Rights.parse("lr")
    with pytest.raises(AttributeError):
        r.send = True  # type: ignore[misc]
    assert hash(r) == hash(Rights.parse("rl"))


def test_send_rule_and_keys():
    mb = MailboxPolicy("pec.legale", send_offices=("legale", "acquisti"))
    rule = mb.send_rule("acquisti")
    assert rule is not None and rule.is_send_grant and rule.rights == Rights(send=True)
    assert rule.source_key == 'mailboxes."pec.legale".send[1]'
    assert mb.send_rule("segreteria") is None
    assert mb.default_key == 'mailboxes."pec.legale".default_rights'
    assert toml_key("offices", "ufficio legale") == 'offices."ufficio legale"'
