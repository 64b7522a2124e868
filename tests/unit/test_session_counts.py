"""What the pure IMAP session counts for the metrics (gateway/tally.py): commands by name and
tagged result, bytes each way, denials — with labels that never come from the client's text."""

from gateway.tally import TALLY
from tests.unit.policies import OPEN
from tests.unit.transcript import logged_in, new_session, selected, sent


class Counts:
    """The change of the tally's counters since construction."""

    def __init__(self) -> None:
        self.start = {name: TALLY.snapshot(name) for name in
                      ("pecgw_imap_commands_total", "pecgw_denials_total", "pecgw_relayed_bytes_total")}

    def __call__(self, name: str) -> dict:
        before = self.start[name]
        now = TALLY.snapshot(name)
        return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}


def test_relayed_and_local_replies_are_counted_by_name_and_result():
    s = logged_in(policy=OPEN)
    counts = Counts()
    s.client_data(b"a1 SELECT INBOX\r\na2 UID FETCH 1:* (FLAGS)\r\na3 NOSUCH x\r\n")
    s.client_data(b"a4\r\n")  # no command at all
    s.upstream_data(b"* 0 EXISTS\r\na1 OK [READ-WRITE] done\r\na2 NO [SERVERBUG] failed\r\n")
    assert counts("pecgw_imap_commands_total") == {
        ("SELECT", "OK"): 1, ("UID FETCH", "NO"): 1, ("other", "BAD"): 1, ("unparsed", "BAD"): 1}


def test_commands_still_running_when_the_session_ends_count_as_none():
    s = selected(policy=OPEN)
    counts = Counts()
    s.client_data(b"a1 SEARCH ALL\r\na2 NOOP\r\n")
    s.client_closed()
    assert counts("pecgw_imap_commands_total") == {("SEARCH", "none"): 1, ("NOOP", "none"): 1}


def test_nothing_is_counted_before_login_but_bytes():
    s = new_session()
    counts = Counts()
    data = b"a1 CAPABILITY\r\na2 NOOP\r\n"
    out = s.client_data(data)
    assert counts("pecgw_imap_commands_total") == {}
    assert counts("pecgw_relayed_bytes_total") == {("imap", "from_client"): len(data),
                                                    ("imap", "to_client"): len(sent(out))}


def test_bytes_each_way_match_the_session_own_count():
    s = logged_in(policy=OPEN)
    counts = Counts()
    before_in, before_out = s.bytes_from_client, s.bytes_to_client
    s.client_data(b"a1 NOOP\r\n")
    s.upstream_data(b"* 3 EXISTS\r\na1 OK NOOP completed\r\n")
    assert counts("pecgw_relayed_bytes_total") == {
        ("imap", "from_client"): s.bytes_from_client - before_in, ("imap", "to_client"): s.bytes_to_client - before_out}
    assert s.bytes_to_client - before_out == len(b"* 3 EXISTS\r\na1 OK NOOP completed\r\n")
