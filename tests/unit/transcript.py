"""Helpers for driving the pure IMAP session with transcripts: bytes in, actions out."""

from __future__ import annotations

from gateway.imap_proxy import actions as act
from gateway.imap_proxy.session import ImapSession
from gateway.login import LoginResult
from tests.unit.policies import OPEN

#: What a Dovecot-like provider advertises after login (before the gateway filters it).
UPSTREAM_CAPS = ["IMAP4rev1", "SASL-IR", "LITERAL+", "IDLE", "MOVE", "UIDPLUS", "ENABLE", "COMPRESS=DEFLATE",
                 "AUTH=PLAIN"]


def sent(actions, kind=act.SendToClient) -> bytes:
    """The bytes of every action of ``kind`` (client or provider writes), concatenated."""
    return b"".join(a.data for a in actions if isinstance(a, kind))


def audits(actions) -> list:
    return [a.event for a in actions if isinstance(a, act.Audit)]


def closes(actions) -> list:
    return [a for a in actions if isinstance(a, act.Close)]


def new_session(tls=True, starttls=False, policy=OPEN, **kw) -> ImapSession:
    s = ImapSession(session_id="s1", client_ip="192.0.2.7", tls_active=tls, starttls_available=starttls,
                    policy=policy, **kw)
    s.connection_made()
    return s


def logged_in(upstream_caps=UPSTREAM_CAPS, *, groups=("legale",), person="alice", **kw) -> ImapSession:
    """A session for ``person`` (default alice, office legale) on mailbox protocollo, relaying to a
    provider with ``upstream_caps``; the policy (default: everything allowed) is ``policy=``."""
    s = new_session(**kw)
    s.client_data(b"a0 LOGIN %s pw123456\r\n" % person.encode())
    s.login_finished(LoginResult(True, person=person, offices=("legale",), mailbox="protocollo", reason="ok",
                                 groups=tuple(groups)), upstream_caps)
    return s


def feed(session: ImapSession, data: bytes, *, bytewise: bool) -> list:
    """Feed ``data`` whole, or one octet at a time (h11's tr() idea)."""
    if not bytewise:
        return session.client_data(data)
    out = []
    for i in range(len(data)):
        out += session.client_data(data[i:i + 1])
    return out


def selected(folder: bytes = b"INBOX", **kw) -> ImapSession:
    """:func:`logged_in`, then ``folder`` selected (the provider's replies consumed)."""
    s = logged_in(**kw)
    s.client_data(b"s0 SELECT %s\r\n" % folder)
    s.upstream_data(b"* 0 EXISTS\r\ns0 OK [READ-WRITE] SELECT completed\r\n")
    return s


def answer_lookups(session: ImapSession, out: list, replies: bytes = b"") -> list:
    """Answer the gateway's identity lookups found in ``out`` (``replies``: their ``* FETCH``
    data, none by default); return the actions that follows."""
    tags = [line.split(b" ", 1)[0] for line in sent(out, act.SendToUpstream).split(b"\r\n")
            if line.startswith(b"PECGW.i")]
    if not tags:
        return []
    return session.upstream_data(replies + b"".join(b"%s OK Fetch completed\r\n" % t for t in tags))
