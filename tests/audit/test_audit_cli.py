"""``pecgw audit verify|query|message|prune`` as subprocesses, on a SQLite trail filled with events."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging

import pytest

from gateway.audit.setup import ChainKeyMissing, chain_key, open_store, open_trail
from tests.audit.conftest import T0, Trail, event, swap

PEC = dict(uidvalidity=1700000000, uid=7, message_id="<opec1@pec.example.it>",
           subject="POSTA CERTIFICATA: Udienza del 3 marzo", sender="posta-certificata@pec.example.it",
           date="Tue, 3 Mar 2026 10:00:00 +0100", pec_kind="posta-certificata",
           pec_id="opec1.20260303100000.12345.01.1.1@pec.example.it", pec_ref="<abc@tribunale.example.it>")
RECEIPT = dict(uidvalidity=1700000000, uid=9, message_id="<ricevuta1@pec.example.it>",
               subject="ACCETTAZIONE: Risposta", pec_kind="accettazione", pec_id="ric1@pec.example.it",
               pec_ref="<opec1@pec.example.it>")
OTHER = dict(uidvalidity=1700000000, uid=8, message_id="<other@x>", subject="Altro")

EVENTS = [
    event(1, action="login", message=None),
    event(2, action="fetch", message=PEC, detail={"body": True}),
    event(3, action="flags", message=PEC, detail={"added": ["\\Seen"]}),
    event(4, action="move", person="bob", offices=("ragioneria",), message=PEC, detail={"to": "Tribunale"}),
    event(5, action="fetch", person="bob", offices=("ragioneria",), message=OTHER),
    event(6, action="fetch", message=RECEIPT),
    event(7, action="logout", message=None),
]


@pytest.fixture
def trail(tmp_path):
    t = Trail(tmp_path)
    t.fill(EVENTS)
    return t


def jsonl(proc) -> list[dict]:
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def seqs(proc) -> list[int]:
    return [r["seq"] for r in jsonl(proc)]


def test_the_gateway_creates_the_chain_key_once_and_logs_it(tmp_path, caplog):
    t = Trail(tmp_path)
    with pytest.raises(ChainKeyMissing):
        chain_key(t.config, t.vault)
    caplog.set_level(logging.INFO)
    open_trail(t.config, t.vault).close()
    key = chain_key(t.config, t.vault)
    assert len(key) == 32 and "audit/chain-key" in t.vault.names()
    assert any("created the audit chain key" in r.getMessage() for r in caplog.records)
    caplog.clear()
    open_trail(t.config, t.vault).close()
    assert chain_key(t.config, t.vault) == key
    assert not caplog.records


def test_no_new_chain_key_for_a_store_that_already_holds_rows(tmp_path):
    """A vault restored without its chain key (or the wrong vault): the gateway refuses to start
    rather than extend the chain with a key that cannot check the rows already there."""
    t = Trail(tmp_path)
    t.fill([event(1)])
    t.vault.delete("audit/chain-key")
    with pytest.raises(ChainKeyMissing, match="already holds rows but the vault .* restore the vault"):
        open_trail(t.config, t.vault)
    assert "audit/chain-key" not in t.vault.names()


def test_verify_ok(trail):
    proc = trail.run("verify")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: 7 rows, seq 1..7, chain intact; last hash ")


def test_verify_names_each_altered_deleted_and_swapped_row(trail):
    trail.sql("UPDATE audit SET subject = 'Altro oggetto' WHERE seq = 2",
              "DELETE FROM audit WHERE seq = 3",
              "UPDATE audit SET seq = -1 WHERE seq = 5", "UPDATE audit SET seq = 5 WHERE seq = 6",
              "UPDATE audit SET seq = 6 WHERE seq = -1")
    proc = trail.run("verify")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("4 problem(s) in 6 rows")
    assert lines[1:] == ["seq 2: altered (HMAC does not match the content)",
                         "seq 3: missing (rows deleted)",
                         "seq 5: moved (this row was written as seq 6)",
                         "seq 6: moved (this row was written as seq 5)"]


@pytest.fixture
def any_trail(backend, tmp_path):
    """The trail of :data:`EVENTS` in each store, SQLite and PostgreSQL."""
    t = Trail(tmp_path, backend.audit_table())
    t.fill(EVENTS)
    return t


def test_verify_names_a_swap_of_the_last_two_rows_like_any_other(any_trail, backend):
    backend.sql("UPDATE audit SET subject = 'Altro oggetto' WHERE seq = 1", "DELETE FROM audit WHERE seq = 2",
                *swap(4, 5), *swap(6, 7))
    proc = any_trail.run("verify")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == ["6 problem(s) in 6 rows, seq 1..7:",
                                        "seq 1: altered (HMAC does not match the content)",
                                        "seq 2: missing (rows deleted)",
                                        "seq 4: moved (this row was written as seq 5)",
                                        "seq 5: moved (this row was written as seq 4)",
                                        "seq 6: moved (this row was written as seq 7)",
                                        "seq 7: moved (this row was written as seq 6)"]


def test_verify_prints_the_head_and_checks_it_later(any_trail, backend):
    """Rows cut off the end leave an intact chain: only the head kept from an earlier run shows
    them."""
    first = any_trail.run("verify")
    assert first.returncode == 0, first.stderr
    ok, keep = first.stdout.splitlines()
    head = ok.rsplit(" ", 1)[1]
    assert keep == ("keep the head to prove later that no row was cut off the end: "
                    f"--expect-head 7:{head}")
    again = any_trail.run("verify", "--expect-head", f"7:{head}")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[2] == "checkpoint seq 7 matches: no row up to it was cut off the end"

    backend.sql("DELETE FROM audit WHERE seq = 7")
    cut = any_trail.run("verify")
    assert cut.returncode == 0 and cut.stdout.startswith("OK: 6 rows, seq 1..6, chain intact")
    cut = any_trail.run("verify", "--expect-head", f"7:{head}")
    assert cut.returncode == 1, cut.stderr
    assert cut.stdout.splitlines() == ["1 problem(s) in 6 rows, seq 1..6:",
                                       "seq 7: missing (rows cut off the end: the checkpoint names seq 7)"]


@pytest.mark.parametrize("head", ["7", "7:abc", "x:" + "00" * 32, "0:" + "00" * 32, "7:" + "zz" * 32])
def test_a_bad_expect_head_is_one_line(trail, head):
    proc = trail.run("verify", "--expect-head", head)
    assert proc.returncode == 2
    assert proc.stderr == (f"pecgw: --expect-head: {head!r} is not SEQ:HASH (a seq and its 64-hex-digit hash, "
                           "as 'pecgw audit verify' prints them)\n")


def test_verify_says_when_the_chain_key_is_missing(trail):
    trail.vault.delete("audit/chain-key")
    proc = trail.run("verify")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "audit.chain_key_vault_key" in proc.stderr and "no entry 'audit/chain-key'" in proc.stderr


def test_a_missing_store_is_one_line(tmp_path):
    t = Trail(tmp_path)
    proc = t.run("query")
    assert proc.returncode == 2 and "audit.sqlite_path" in proc.stderr and "does not exist" in proc.stderr
    assert not t.db.exists()


def test_query_filters(trail):
    assert seqs(trail.run("query", "--format", "jsonl")) == [1, 2, 3, 4, 5, 6, 7]
    assert seqs(trail.run("query", "--person", "bob", "--format", "jsonl")) == [4, 5]
    assert seqs(trail.run("query", "--office", "protocollo", "--format", "jsonl")) == [1, 2, 3, 6, 7]
    assert seqs(trail.run("query", "--action", "fetch", "--format", "jsonl")) == [2, 5, 6]
    assert seqs(trail.run("query", "--mailbox", "ufficio@pec.example.it", "--folder", "INBOX",
                          "--action", "move", "--format", "jsonl")) == [4]
    assert seqs(trail.run("query", "--message-id", "<opec1@pec.example.it>", "--format", "jsonl")) == [2, 3, 4]
    assert seqs(trail.run("query", "--pec-id", RECEIPT["pec_id"], "--format", "jsonl")) == [6]
    # IDs match with or without their angle brackets (a daticert gives the identificativo bare)
    assert seqs(trail.run("query", "--message-id", "opec1@pec.example.it", "--format", "jsonl")) == [2, 3, 4]
    assert seqs(trail.run("query", "--pec-id", f"<{RECEIPT['pec_id']}>", "--format", "jsonl")) == [6]
    assert seqs(trail.run("query", "--message-id", " opec1@pec.example.it", "--limit", "2",
                          "--format", "jsonl")) == [2, 3]
    # --since inclusive, --until exclusive; without an offset a time is UTC
    assert seqs(trail.run("query", "--since", "2026-03-03T09:03", "--until", "2026-03-03T10:05:00+01:00",
                          "--format", "jsonl")) == [3, 4]
    assert seqs(trail.run("query", "--since", "2026-03-04", "--format", "jsonl")) == []
    assert seqs(trail.run("query", "--limit", "2", "--format", "jsonl")) == [1, 2]
    row = jsonl(trail.run("query", "--action", "flags", "--format", "jsonl"))[0]
    assert row["detail"] == {"added": ["\\Seen"]} and row["offices"] == ["protocollo"]
    assert row["subject"] == PEC["subject"] and row["when"] == "2026-03-03T09:03:00.000000+00:00"


def test_query_rejects_a_bad_time_in_one_line(trail):
    proc = trail.run("query", "--since", "3 marzo")
    assert proc.returncode == 2
    assert proc.stderr == "pecgw: --since: '3 marzo' is not an ISO date or time (e.g. 2026-03-03 or " \
                          "2026-03-03T10:00:00+01:00)\n"


def test_query_csv(trail):
    proc = trail.run("query", "--person", "bob", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["seq"] for r in rows] == ["4", "5"]
    assert rows[0]["message_id"] == PEC["message_id"] and rows[0]["offices"] == "ragioneria"
    assert json.loads(rows[0]["detail"]) == {"to": "Tribunale"} and rows[1]["pec_id"] == ""
    assert proc.stdout.splitlines()[0].startswith("seq,when,session_id,protocol,action,")


def test_query_table_is_aligned_and_names_the_message(trail):
    proc = trail.run("query", "--action", "fetch")
    assert proc.returncode == 0, proc.stderr
    head, *lines = proc.stdout.splitlines()
    assert head.split() == ["seq", "when", "(UTC)", "person", "action", "decision", "mailbox", "folder",
                            "uid", "message-id", "subject"]
    assert len(lines) == 3
    for column, values in (("person", ["alice", "bob", "alice"]),
                           ("message-id", [PEC["message_id"], OTHER["message_id"], RECEIPT["message_id"]]),
                           ("subject", [PEC["subject"], OTHER["subject"], RECEIPT["subject"]])):
        at = head.index(column)
        assert [line[at:].split("  ")[0] for line in lines] == values
    assert "2026-03-03 09:02:00.000000" in lines[0]


def test_message_history_in_time_order(trail):
    proc = trail.run("message", "opec1@pec.example.it")  # without the angle brackets
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert f"Subject:       {PEC['subject']}" in text and f"PEC id:        {PEC['pec_id']}" in text
    table = text[text.index("when (UTC)"):].splitlines()
    assert [line.split()[2] for line in table[1:]] == ["alice", "alice", "bob", "alice"]
    assert [line.split()[3] for line in table[1:]] == ["fetch", "flags", "move", "fetch"]  # the receipt
    assert "added=[\"\\\\Seen\"]" in table[2] and "to=Tribunale" in table[3]
    # by PEC identificativo and by the receipt's reference, as JSON lines
    assert seqs(trail.run("message", PEC["pec_id"], "--format", "jsonl")) == [2, 3, 4]
    assert seqs(trail.run("message", "<opec1@pec.example.it>", "--format", "jsonl")) == [2, 3, 4, 6]
    none = trail.run("message", "<nobody@x>")
    assert none.returncode == 0 and "no audit row names" in none.stderr


def test_prune(trail):
    refused = trail.run("prune", "--before", "2026-03-03T09:04")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert seqs(trail.run("query", "--format", "jsonl")) == [1, 2, 3, 4, 5, 6, 7]
    bad = trail.run("prune", "--before", "yesterday", "--yes")
    assert bad.returncode == 2 and "--before" in bad.stderr

    proc = trail.run("prune", "--before", "2026-03-03T09:04", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pruned 3 rows written before 2026-03-03T09:04:00+00:00")
    rows = jsonl(trail.run("query", "--format", "jsonl"))
    assert [r["seq"] for r in rows] == [4, 5, 6, 7, 8] and rows[-1]["action"] == "anchor"
    verify = trail.run("verify")
    assert verify.returncode == 0 and verify.stdout.startswith("OK: 5 rows, seq 4..8"), verify.stdout
    again = trail.run("prune", "--before", "2026-03-03T09:04", "--yes")
    assert again.returncode == 0 and again.stdout.startswith("nothing to prune")


def test_the_key_written_by_the_cli_setup_is_the_gateways(trail):
    """The store the gateway would open with the same config verifies with the same key."""
    store = open_store(trail.config, trail.vault, chain_key(trail.config, trail.vault))
    try:
        assert store.verify().ok and store.verify().rows == 7
        assert store.query(since=T0 + dt.timedelta(minutes=7))[0]["action"] == "logout"
    finally:
        store.close()
