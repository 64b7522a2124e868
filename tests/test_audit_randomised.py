"""Seeded random interleavings of a person's commands through the gateway and a colleague's
directly on Dovecot, checked against the audit trail.

Alice works through the gateway with imaplib (SELECT, FETCH and STORE by number and by UID,
COPY, UID COPY, UID MOVE, EXPUNGE, UID EXPUNGE, CLOSE, NOOP) on INBOX and "Ufficio Legale"; a
colleague works on the same mailbox directly on Dovecot (flag changes, UID EXPUNGE of what they
marked themselves, APPENDs, MOVEs), unseen by the gateway.  The test keeps its own ground truth:

* an **observer** connection, directly on Dovecot, snapshots a folder's UIDs and flags (and
  every new message's Message-ID) after each colleague step and before and after each of
  alice's steps that change something.  Only one party acts at a time, so what changed between
  the snapshots around one of alice's commands is what that command did;
* alice's client records every line it reads, in order, and keeps a **mirror** of her session's
  sequence numbers (EXISTS, EXPUNGE, FETCH … UID, and ``UID SEARCH ALL`` to resynchronise), so
  a command by number can be turned into the UIDs it addressed;
* [COPYUID] of her COPY and MOVE, the FETCH replies of her FETCH and STORE.

The invariants, on alice's rows only, are listed in :func:`check_rows`.  A failure prints the
seed and the step log; ``PECGW_AUDIT_SEEDS=5,6 pytest tests/test_audit_randomised.py`` replays
chosen seeds (``PECGW_AUDIT_STEPS`` changes the length, ``PECGW_AUDIT_FOLLOW`` how often alice
fetches new mail's UIDs at once).  Runs are deterministic: one actor at a time, fresh mailbox.

What the randomised runs found is kept, at the end of this file, as fixed sequences whose
docstrings start with "Was:" (a message arriving after SELECT was never mapped to its UID; a
colleague's expunge of a message alice saw marked was written as hers; an empty folder's select
row lacked its UIDVALIDITY).
"""

from __future__ import annotations

import imaplib
import os
import random
import re
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest

from gateway.secret import Secret
from tests.audit.conftest import Backend
from tests.fixtures.gateway import FULL_RIGHTS, GatewayHarness, ldap_directory, office_policy, upstream_table
from tests.test_audit_e2e import direct_identities, rows, store_matches_jsonl

SEEDS = [int(s) for s in os.environ.get("PECGW_AUDIT_SEEDS", "1,2,3,4,5,6,10,17,18,35,83").split(",") if s.strip()]
STEPS = int(os.environ.get("PECGW_AUDIT_STEPS", "40"))
#: How often alice, after a reply announcing new messages, asks for their UIDs and flags at once,
#: as mail clients do (the rest of the time the new messages stay unnamed until touched).
FOLLOW = float(os.environ.get("PECGW_AUDIT_FOLLOW", "0.3"))
FOLDERS = ("INBOX", "Ufficio Legale")
FLAGS = ("\\Seen", "\\Flagged", "\\Deleted")
#: Copies appended to each folder before the run (the seeded mailbox holds 7 and 1 messages).
EXTRA = {"INBOX": 14, "Ufficio Legale": 8}


# ------------------------------------------------------------------------------------ fixture
@pytest.fixture
def gw(tmp_path, pki, slapd, dovecot, pec_mailbox):
    """tests.test_audit_e2e's ``gw``, with the SQLite store only (fast; the relay is the same)."""
    backend = Backend("sqlite", tmp_path)
    h = GatewayHarness(tmp_path / "gw", pki)
    h.vault.set("ldap/bind", Secret(slapd.service_password))
    h.vault.set("mailbox/protocollo", Secret(pec_mailbox.password))
    h.enroll("alice")
    tables = h.base_tables(
        directory=ldap_directory(slapd),
        policy=office_policy({"legale": {"groups": ["legale"]}}, {"protocollo": ["legale"]}, rights=FULL_RIGHTS),
        mailboxes={"protocollo": {"address": pec_mailbox.address,
                                  "imap": upstream_table(dovecot, pki, pec_mailbox.address)}})
    tables["audit"].update(store="sqlite", sqlite_path=str(backend.path))
    h.start(tables)
    h.mailbox, h.backend = pec_mailbox, backend
    yield h
    h.stop()
    store_matches_jsonl(h)
    backend.cleanup()


def wire(folder: str) -> str:
    return f'"{folder}"' if " " in folder else folder


def other(folder: str) -> str:
    return FOLDERS[1] if folder == FOLDERS[0] else FOLDERS[0]


def with_message_id(raw: bytes, message_id: str) -> bytes:
    """``raw`` with its (first) Message-ID header replaced, so every copy is told apart."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    new, n = re.subn(rb"(?im)^Message-ID:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*", b"Message-ID: " + message_id.encode(),
                     head, count=1)
    if not n:
        new = b"Message-ID: " + message_id.encode() + b"\r\n" + head
    return new + sep + body


def note(n: int, tag: str) -> bytes:
    return (f"Message-ID: <{tag}.{n}@studio.example.it>\r\nSubject: Nota {tag} {n}\r\n"
            f"From: collega@studio.example.it\r\nTo: protocollo@pec.example.it\r\n"
            f"Date: Tue, 03 Mar 2026 10:{n % 60:02d}:00 +0100\r\n\r\nTesto {n}\r\n").encode()


# ------------------------------------------------------------------------------------ clients
class LoggedIMAP(imaplib.IMAP4_SSL):
    """imaplib, recording every line it reads (literals excepted), in order."""

    def __init__(self, *args, **kw):
        self.lines: list[bytes] = []
        super().__init__(*args, **kw)

    def _get_line(self):
        line = super()._get_line()
        self.lines.append(line)
        return line


_LITERAL_END = re.compile(rb"\{\d+\}$")


def untagged_responses(lines: list[bytes]) -> list[bytes]:
    """The untagged responses among ``lines``, each with its trailers after literals joined."""
    out: list[bytes] = []
    cont = False
    for line in lines:
        if cont and out:
            out[-1] += b" " + line
        elif line.startswith(b"* "):
            out.append(line)
        cont = bool(_LITERAL_END.search(line)) and (cont or line.startswith(b"* "))
    return out


class Inconsistent(Exception):
    """The mirror of alice's sequence numbers cannot follow what she was sent."""


@dataclass
class Reply:
    seq: int
    uid: int | None
    text: bytes


class Alice:
    """Alice's client and the mirror of her session's sequence numbers."""

    def __init__(self, conn: LoggedIMAP) -> None:
        self.c = conn
        self.folder: str | None = None
        self.mirror: list[int | None] = []

    def command(self, fn, *, selecting: bool = False, searching: bool = False):
        """Run one imaplib call (imaplib itself refuses a tagged reply to a command it did not
        send); return its result, the untagged responses it read and the FETCH replies among them
        (with the UID each is about, when known)."""
        start = len(self.c.lines)
        result = fn()
        responses = untagged_responses(self.c.lines[start:])
        for line in self.c.lines[start:]:
            assert b"PECGW" not in line.upper(), f"alice saw the gateway's own reply: {line!r}"
        for r in responses:
            # the gateway's own questions (SEARCH DELETED, identity headers, BODYSTRUCTURE) are
            # answered with untagged replies: none of them may reach her
            assert searching or not r.upper().startswith(b"* SEARCH"), f"a SEARCH reply alice did not ask for: {r!r}"
            assert not re.search(rb"HEADER\.FIELDS|BODYSTRUCTURE", r, re.IGNORECASE), \
                f"a FETCH item alice did not ask for: {r!r}"
        return result, responses, self._apply(responses, selecting)

    def _apply(self, responses: list[bytes], selecting: bool) -> list[Reply]:
        replies = []
        for r in responses:
            if selecting and r.startswith(b"* FLAGS"):
                self.mirror = []  # the new folder's data starts here
            if r.upper().startswith(b"* SEARCH"):
                self.mirror = sorted(int(x) for x in r.split()[2:])
                continue
            m = re.match(rb"\* (\d+) (EXISTS|EXPUNGE|FETCH)\b", r, re.IGNORECASE)
            if m is None:
                continue
            n, kind = int(m.group(1)), m.group(2).upper()
            if kind == b"EXISTS":
                if n < len(self.mirror):
                    raise Inconsistent(f"EXISTS {n} below the {len(self.mirror)} messages known")
                self.mirror += [None] * (n - len(self.mirror))
            elif kind == b"EXPUNGE":
                if not 0 < n <= len(self.mirror):
                    raise Inconsistent(f"EXPUNGE {n} of {len(self.mirror)}")
                self.mirror.pop(n - 1)
            else:
                if not 0 < n <= len(self.mirror):
                    raise Inconsistent(f"FETCH {n} of {len(self.mirror)}")
                uid = re.search(rb"\bUID (\d+)", r)
                if uid is not None:
                    self.mirror[n - 1] = int(uid.group(1))
                replies.append(Reply(n, self.mirror[n - 1], r))
        return replies

    def resync(self) -> bool:
        """``UID SEARCH ALL`` until one reply carries no EXISTS/EXPUNGE: the mirror is then exact."""
        for _ in range(5):
            (typ, _data), responses, _ = self.command(lambda: self.c.uid("SEARCH", "ALL"), searching=True)
            assert typ == "OK"
            if not any(re.match(rb"\* \d+ (EXISTS|EXPUNGE)", r) for r in responses):
                return True
        return False


class World:
    """Dovecot's truth, read by the observer's own connection: per folder the UIDs and their
    flags now, every UID ever seen, and every message's Message-ID."""

    def __init__(self, obs: imaplib.IMAP4) -> None:
        self.obs = obs
        self.validity: dict[str, int] = {}
        self.flags: dict[str, dict[int, frozenset]] = {}
        self.ever: dict[str, set[int]] = defaultdict(set)
        self.ident: dict[tuple[str, int], str | None] = {}

    def refresh(self, folder: str) -> dict[int, frozenset]:
        typ, _ = self.obs.select(wire(folder), readonly=True)
        assert typ == "OK"
        validity = int(self.obs.response("UIDVALIDITY")[1][-1])
        assert self.validity.setdefault(folder, validity) == validity
        typ, data = self.obs.uid("FETCH", "1:*", "(FLAGS)")
        assert typ == "OK", data
        flags = {}
        for item in data:
            if item is None:
                continue
            text = item[0] if isinstance(item, tuple) else item
            uid = int(re.search(rb"UID (\d+)", text).group(1))
            listed = re.search(rb"FLAGS \(([^)]*)\)", text).group(1).decode().split()
            flags[uid] = frozenset(f for f in listed if f != "\\Recent")  # \Recent is per session
        new = [u for u in flags if (folder, u) not in self.ident]
        if new:
            typ, data = self.obs.uid("FETCH", ",".join(map(str, new)), "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            assert typ == "OK"
            for item in data:
                if isinstance(item, tuple):
                    uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                    m = re.search(r"(?im)^message-id:\s*(.*)$", item[1].decode().replace("\r\n ", " "))
                    self.ident[(folder, uid)] = m.group(1).strip() if m else None
        self.flags[folder] = flags
        self.ever[folder] |= set(flags)
        return flags


# ------------------------------------------------------------------------------------ ground truth
@dataclass
class Cmd:
    """One of alice's FETCH or STORE commands: which messages it may have addressed and how
    many rows it may (``capacity``) and must (``required``) have written about each."""

    step: int
    kind: str  # "fetch" or "flags"
    folder: str
    possible: set[int]  # UIDs the command's set named at that time (sequence numbers mapped)
    replies: Counter = field(default_factory=Counter)  # UID -> FETCH replies about it
    wild_replies: int = 0  # replies about a number whose UID the mirror did not know
    silent: bool = False
    required: set[int] = field(default_factory=set)

    def capacity(self, uid: int) -> int:
        if uid not in self.possible:
            return 0
        return (1 if self.silent else 0) + self.replies[uid] + self.wild_replies


@dataclass
class Truth:
    cmds: list[Cmd] = field(default_factory=list)
    removed: dict[tuple[str, int], str] = field(default_factory=dict)  # alice's expunges: (folder, uid) -> by
    colleague_removed: set[tuple[str, int]] = field(default_factory=set)
    copies: Counter = field(default_factory=Counter)  # (folder, uid, to, to_uid)
    moves: Counter = field(default_factory=Counter)
    seen: list[tuple[int, int]] = field(default_factory=list)  # (step, rows written by then)
    skipped: list[str] = field(default_factory=list)  # steps whose checks were left out, and why


def expand(text: str) -> list[int]:
    """A UID set's numbers, in the order written (COPYUID pairs up in that order)."""
    out = []
    for part in text.split(","):
        a, _, b = part.partition(":")
        lo, hi = sorted((int(a), int(b or a)))  # 5:3 is 3, 4, 5 (as the gateway reads it)
        out += list(range(lo, hi + 1))
    return out


def copyuid_pairs(text: str) -> list[tuple[int, int]]:
    m = re.search(r"\[COPYUID \d+ ([\d:,]+) ([\d:,]+)\]", text)
    if m is None:
        return []
    src, dst = expand(m.group(1)), expand(m.group(2))
    assert len(src) == len(dst), text
    return list(zip(src, dst))


def set_text(rnd: random.Random, pool: list[int]) -> tuple[str, set[int]]:
    """A random set over ``pool`` (sequence numbers or UIDs): one, a list, or a range."""
    pool = sorted(pool)
    shape = rnd.choice(("one", "one", "list", "range"))
    if shape == "one" or len(pool) < 2:
        x = rnd.choice(pool)
        return str(x), {x}
    if shape == "list":
        xs = sorted(rnd.sample(pool, min(len(pool), rnd.randint(2, 3))))
        return ",".join(map(str, xs)), set(xs)
    i = rnd.randrange(len(pool) - 1)
    j = min(len(pool) - 1, i + rnd.randint(1, 3))
    return f"{pool[i]}:{pool[j]}", set(range(pool[i], pool[j] + 1))


# ------------------------------------------------------------------------------------ the run
class Run:
    def __init__(self, gw, dovecot, seed: int) -> None:
        self.gw, self.dovecot, self.seed = gw, dovecot, seed
        self.rnd = random.Random(seed)
        self.log: list[str] = []
        self.truth = Truth()
        self.step = 0
        self.notes = 0

    def say(self, text: str) -> None:
        self.log.append(f"{self.step:02d} {text}")

    # -- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        mb = self.gw.mailbox
        self.obs = self.dovecot.connect(mb.address, mb.password)
        self.col = self.dovecot.connect(mb.address, mb.password)
        self.col_folder: str | None = None
        for folder, count in EXTRA.items():
            originals = mb.folders[folder]
            for n in range(count):
                message_id = f"<copia.{folder[:3].lower()}.{n}@studio.example.it>"
                raw = with_message_id(originals[n % len(originals)], message_id)
                assert self.obs.append(wire(folder), None, None, raw)[0] == "OK"
        self.world = World(self.obs)
        for folder in FOLDERS:
            self.world.refresh(folder)
        conn = LoggedIMAP("localhost", self.gw.ports["implicit"], ssl_context=self.gw.client_context(), timeout=10)
        conn.login("alice", self.gw.credential("alice", "alice-password"))
        self.alice = Alice(conn)

    # -- alice -------------------------------------------------------------------------------
    def alice_step(self) -> None:
        a, rnd = self.alice, self.rnd
        if a.folder is None:
            return self.a_select(rnd.choice(FOLDERS))
        ops = [("fetch_seq", 2), ("fetch_uid", 2), ("store_seq", 2), ("store_uid", 3), ("copy_seq", 1),
               ("copy_uid", 1), ("move_uid", 1.5), ("expunge", 1.5), ("uid_expunge", 1.5), ("close", 0.7),
               ("noop", 1), ("select", 0.8)]
        op = rnd.choices([o for o, _ in ops], [w for _, w in ops])[0]
        if op == "select":
            return self.a_select(rnd.choice(FOLDERS))
        getattr(self, "a_" + op)()

    def follow_new_mail(self) -> None:
        """``FETCH a:b (UID FLAGS)`` of the messages alice was told of but not their UID."""
        a = self.alice
        unknown = [n for n, u in enumerate(a.mirror, 1) if u is None]
        if a.folder is None or not unknown:
            return
        text = f"{unknown[0]}:{unknown[-1]}"
        possible = self.possible(range(unknown[0], unknown[-1] + 1))
        (typ, _), _, replies = self.alice.command(lambda: self.alice.c.fetch(text, "(UID FLAGS)"))
        self.say(f"alice FETCH {text} (UID FLAGS) (new mail) -> {typ} uids {sorted(r.uid or 0 for r in replies)}")
        self._record("fetch", possible, replies, b"FLAGS", typ)

    def a_select(self, folder: str) -> None:
        (typ, data), _, _ = self.alice.command(lambda: self.alice.c.select(wire(folder)), selecting=True)
        self.say(f"alice SELECT {folder} -> {typ} {data}")
        assert typ == "OK", data
        self.alice.folder = folder
        if self.rnd.random() < 0.5:
            self.say(f"alice UID SEARCH ALL (resync) -> {self.alice.resync()}")

    def a_noop(self) -> None:
        (typ, _), responses, _ = self.alice.command(self.alice.c.noop)
        self.say(f"alice NOOP -> {typ} {len(responses)} untagged")

    def uid_pool(self, folder: str) -> list[int]:
        """UIDs to name: those in the folder now, sometimes one that is gone or never was."""
        pool = sorted(self.world.flags[folder])
        if len(pool) > 3 and self.rnd.random() < 0.3:
            pool = pool[-3:]  # the newest: what arrived (or was moved in) lately
        gone = sorted(self.world.ever[folder] - set(pool))
        if gone and self.rnd.random() < 0.2:
            pool.append(self.rnd.choice(gone))
        if self.rnd.random() < 0.1:
            pool.append(max(self.world.ever[folder], default=0) + 3)
        return pool

    def seqs(self) -> tuple[str, set[int], set[int]] | None:
        """A sequence set within alice's mirror, the numbers and the UIDs they may name now."""
        a = self.alice
        if self.rnd.random() < 0.6:
            self.say(f"alice UID SEARCH ALL (resync) -> {a.resync()}")
        if not a.mirror:
            return None
        text, numbers = set_text(self.rnd, list(range(1, len(a.mirror) + 1)))
        return text, numbers, self.possible(numbers)

    def possible(self, numbers) -> set[int]:
        """The UIDs sequence numbers of alice's may name now."""
        a = self.alice
        known = {a.mirror[n - 1] for n in numbers if a.mirror[n - 1] is not None}
        if any(a.mirror[n - 1] is None for n in numbers):
            # a number whose UID alice was never told: it may be any message not otherwise known
            known |= self.world.ever[a.folder] - {u for u in a.mirror if u is not None}
        return known

    def _fetch_items(self) -> tuple[str, bytes]:
        return self.rnd.choice((("(FLAGS)", b"FLAGS"), ("(UID FLAGS)", b"FLAGS"),
                                ("(BODY.PEEK[])", b"BODY["), ("(BODY[HEADER])", b"BODY[")))

    def a_fetch_seq(self) -> None:
        picked = self.seqs()
        if picked is None:
            return self.a_noop()
        text, _numbers, possible = picked
        items, marker = self._fetch_items()
        (typ, _), _, replies = self.alice.command(lambda: self.alice.c.fetch(text, items))
        self.say(f"alice FETCH {text} {items} -> {typ} uids {sorted(r.uid or 0 for r in replies)}")
        self._record("fetch", possible, replies, marker, typ)

    def a_fetch_uid(self) -> None:
        folder = self.alice.folder
        text, uids = set_text(self.rnd, self.uid_pool(folder) or [1])
        items, marker = self._fetch_items()
        (typ, _), _, replies = self.alice.command(lambda: self.alice.c.uid("FETCH", text, items))
        self.say(f"alice UID FETCH {text} {items} -> {typ} uids {sorted(r.uid or 0 for r in replies)}")
        self._record("fetch", uids, replies, marker, typ)

    def _record(self, kind: str, possible: set[int], replies: list[Reply], marker: bytes | None, typ: str,
                silent: bool = False) -> Cmd:
        """Note a FETCH or STORE.  Every FETCH reply about a message the set named counts towards
        the rows allowed: an unsolicited flag update of such a message (a colleague's change
        reported in this reply) cannot be told apart from the answer, so it is not held against
        the gateway.  A row is required only for a message whose reply carried the item asked
        for (``marker``)."""
        cmd = Cmd(self.step, kind, self.alice.folder, set(possible), silent=silent)
        for r in replies:
            if r.uid is None:
                cmd.wild_replies += 1
            else:
                cmd.replies[r.uid] += 1
                if typ == "OK" and marker is not None and marker in r.text.upper() and r.uid in possible:
                    cmd.required.add(r.uid)
        self.truth.cmds.append(cmd)
        return cmd

    def _store(self, by_uid: bool) -> None:
        folder = self.alice.folder
        before = self.world.refresh(folder)
        if by_uid:
            text, possible = set_text(self.rnd, self.uid_pool(folder) or [1])
        else:
            picked = self.seqs()
            if picked is None:
                return self.a_noop()
            text, _numbers, possible = picked
        flag = self.rnd.choice(FLAGS + ("\\Deleted",))  # \Deleted twice as often: expunges need it
        op = self.rnd.choice(("+FLAGS", "+FLAGS", "-FLAGS")) + self.rnd.choice(("", ".SILENT"))
        c = self.alice.c
        call = (lambda: c.uid("STORE", text, op, f"({flag})")) if by_uid else (lambda: c.store(text, op, f"({flag})"))
        (typ, _), _, replies = self.alice.command(call)
        after = self.world.refresh(folder)
        changed = {u for u in before if u in after and before[u] != after[u]}
        self.say(f"alice {'UID ' if by_uid else ''}STORE {text} {op} ({flag}) -> {typ}; changed {sorted(changed)}")
        cmd = self._record("flags", possible, replies, None, typ, silent=op.endswith(".SILENT"))
        if not changed <= possible:
            # nobody else acted between the snapshots, so this would mean the test's idea of
            # what the set named is wrong (the mirror): no row is then required of this step
            # (rows are still checked against ``possible``, which the failure would show)
            self.truth.skipped.append(f"step {self.step}: changed {sorted(changed)} outside {sorted(possible)}")
        elif typ == "OK":
            # required: a row for each message whose flags really changed.  Not for every
            # message named: a non-silent STORE gets FETCH replies only where Dovecot sends them
            # (the gateway writes one row per reply), and the set may name messages that are gone
            cmd.required |= changed

    def a_store_seq(self) -> None:
        self._store(by_uid=False)

    def a_store_uid(self) -> None:
        self._store(by_uid=True)

    def _copy(self, by_uid: bool, move: bool = False) -> None:
        folder, to = self.alice.folder, other(self.alice.folder)
        before = self.world.refresh(to)
        if by_uid:
            text, possible = set_text(self.rnd, self.uid_pool(folder) or [1])
        else:
            picked = self.seqs()
            if picked is None:
                return self.a_noop()
            text, _numbers, possible = picked
        c = self.alice.c
        verb = "MOVE" if move else "COPY"
        call = (lambda: c._simple_command("UID", verb, text, wire(to))) if by_uid else (
            lambda: c._simple_command(verb, text, wire(to)))
        (typ, data), responses, _ = self.alice.command(call)
        if move:
            pairs = [p for r in responses for p in copyuid_pairs(r.decode("latin-1"))]
        else:
            pairs = copyuid_pairs(b" ".join(d for d in data if isinstance(d, bytes)).decode("latin-1"))
        after = self.world.refresh(to)
        self.world.refresh(folder)
        self.say(f"alice {'UID ' if by_uid else ''}{verb} {text} {to} -> {typ} pairs {pairs}")
        if typ != "OK":
            pairs = []
        if {d for _s, d in pairs} != set(after) - set(before) or not {s for s, _d in pairs} <= possible:
            # [COPYUID] is Dovecot's own account and what the gateway has to go by, so the rows
            # are still expected to match it; the mismatch is listed as a doubt about the truth
            self.truth.skipped.append(f"step {self.step}: {verb} pairs {pairs} do not match Dovecot "
                                      f"(new there {sorted(set(after) - set(before))}, named {sorted(possible)})")
        target = self.truth.moves if move else self.truth.copies
        for s, d in pairs:
            target[(folder, s, to, d)] += 1

    def a_copy_seq(self) -> None:
        self._copy(by_uid=False)

    def a_copy_uid(self) -> None:
        self._copy(by_uid=True)

    def a_move_uid(self) -> None:
        self._copy(by_uid=True, move=True)

    def _expunge(self, kind: str) -> None:
        folder, c = self.alice.folder, self.alice.c
        before = self.world.refresh(folder)
        deleted = sorted(u for u, f in before.items() if "\\Deleted" in f)
        named: set[int] | None = None
        if kind == "UID EXPUNGE":
            pool = deleted if deleted and self.rnd.random() < 0.85 else self.uid_pool(folder) or [1]
            text, named = set_text(self.rnd, pool)
            call, label = (lambda: c.uid("EXPUNGE", text)), f"UID EXPUNGE {text}"
        elif kind == "EXPUNGE":
            call, label = c.expunge, "EXPUNGE"
        else:
            call, label = c.close, "CLOSE"
        (typ, _), responses, _ = self.alice.command(call)
        after = self.world.refresh(folder)
        removed = set(before) - set(after)
        self.say(f"alice {label} -> {typ}; marked {deleted}; removed {sorted(removed)}")
        if kind == "CLOSE":
            self.alice.folder, self.alice.mirror = None, []
            expunges = [r for r in responses if re.match(rb"\* \d+ EXPUNGE", r)]
            assert not expunges, f"CLOSE reported expunges to alice: {expunges}"
        if not removed <= set(deleted) or (named is not None and not removed <= named):
            # cannot happen with only alice acting; listed as a doubt, the rows still expected
            self.truth.skipped.append(f"step {self.step}: {label} removed {sorted(removed)}, not all marked")
        for uid in removed:
            self.truth.removed[(folder, uid)] = "CLOSE" if kind == "CLOSE" else "EXPUNGE"

    def a_expunge(self) -> None:
        self._expunge("EXPUNGE")

    def a_uid_expunge(self) -> None:
        self._expunge("UID EXPUNGE")

    def a_close(self) -> None:
        self._expunge("CLOSE")

    # -- the colleague -----------------------------------------------------------------------
    def colleague_step(self) -> None:
        rnd = self.rnd
        folder = rnd.choice(FOLDERS)
        op = rnd.choices(("flag", "expunge", "append", "move"), (4, 2, 2, 1.5))[0]
        present = sorted(self.world.flags[folder])
        if not present:
            op = "append"
        if self.col_folder != folder and op != "append":
            assert self.col.select(wire(folder))[0] == "OK"
            self.col_folder = folder
        if op == "flag":
            uid, flag = rnd.choice(present), rnd.choice(FLAGS + ("\\Deleted",))
            how = rnd.choice(("+FLAGS.SILENT", "-FLAGS.SILENT", "+FLAGS"))
            typ, _ = self.col.uid("STORE", str(uid), how, f"({flag})")
            self.say(f"colleague {folder}: UID STORE {uid} {how} ({flag}) -> {typ}")
        elif op == "expunge":
            uid = rnd.choice(present)
            assert self.col.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
            typ, _ = self.col.uid("EXPUNGE", str(uid))
            self.truth.colleague_removed.add((folder, uid))
            self.say(f"colleague {folder}: UID STORE {uid} +FLAGS.SILENT (\\Deleted); UID EXPUNGE {uid} -> {typ}")
        elif op == "append":
            self.notes += 1
            flags = rnd.choice((None, "(\\Seen)", "(\\Deleted)"))
            typ, data = self.col.append(wire(folder), flags, None, note(self.notes, f"nota{self.seed}"))
            self.say(f"colleague {folder}: APPEND {flags} -> {typ} {data}")
        else:
            uid = rnd.choice(present)
            typ, data = self.col._simple_command("UID", "MOVE", str(uid), wire(other(folder)))
            self.truth.colleague_removed.add((folder, uid))
            self.say(f"colleague {folder}: UID MOVE {uid} {other(folder)} -> {typ} {data}")
            self.world.refresh(other(folder))
        assert typ == "OK"
        self.world.refresh(folder)

    # -- the whole run -----------------------------------------------------------------------
    def run(self, steps: int) -> list[dict]:
        self.setup()
        start = self.start = len(self.gw.audit_events(wait_for=1))
        for self.step in range(1, steps + 1):
            if self.rnd.random() < 0.3:
                self.colleague_step()
            else:
                self.alice_step()
                if self.rnd.random() < FOLLOW:
                    self.follow_new_mail()
                self.truth.seen.append((self.step, len(self.gw.audit_events())))
        self.step += 1
        self.alice.c.logout()
        self.say("alice LOGOUT")
        self.col.logout()
        self.obs.logout()
        deadline = time.monotonic() + 8
        while True:
            got = self.gw.audit_events()[start:]
            if any(r["action"] == "logout" for r in got) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return got


# ------------------------------------------------------------------------------------ checks
def check_rows(run: Run, got: list[dict]) -> list[str]:
    """The invariants, on alice's rows:

    1. every message her EXPUNGE, UID EXPUNGE or CLOSE removed has exactly one ``expunge`` row,
       naming its UID and UIDVALIDITY, ``by`` the command; no other ``expunge`` row exists (in
       particular none for what the colleague removed);
    2. every ``fetch`` and ``flags`` row names a message one of her FETCH/STORE commands
       addressed, in that folder, no more often than the replies she got about it allow (one
       per message for a .SILENT STORE); each message such a command fetched (a reply carrying
       the item asked for) or whose flags it changed (Dovecot's flags before and after) has a
       row; ``copy`` and ``move`` rows are exactly the pairs of her commands' [COPYUID];
    3. every row naming a message has the Message-ID Dovecot holds for that UID, and the
       folder's UIDVALIDITY (``select`` rows too);
    (4. no protocol error, no tagged or untagged reply to the gateway's own commands reached
    her, CLOSE showed her no EXPUNGE: checked as the run goes.)

    Rows are not tied to one command: a row waiting for its message's identity is written
    after later commands ran.  A row is therefore matched to any of alice's commands of its
    kind, in its folder, run no later than the step after which the row had been written
    (``truth.seen``); per message, the rows written by each step may not outnumber what those
    commands allow.  Which command's row it is, is left undecided.
    """
    truth, world = run.truth, run.world
    problems: list[str] = []
    mine = [r for r in got if r["person"] == "alice"]
    first_seen = {}
    for i, r in enumerate(got):
        first_seen[id(r)] = next((s for s, n in truth.seen if n > run.start + i), 10 ** 6)

    def where(r) -> str:
        m = r.get("message") or {}
        return f"{r['action']} {r['folder']!r} uid={m.get('uid')} detail={r.get('detail')}"

    # 3. identity (and UIDVALIDITY) of every row naming a message
    for r in mine:
        m = r.get("message")
        if not m:
            continue
        if m.get("uid") is None:
            problems.append(f"row names no UID: {where(r)}")
            continue
        if m.get("uidvalidity") != world.validity.get(r["folder"]):
            problems.append(f"wrong UIDVALIDITY {m.get('uidvalidity')}: {where(r)}")
        expected = world.ident.get((r["folder"], m["uid"]), "<never seen in this folder>")
        if m.get("message_id") != expected:
            problems.append(f"Message-ID {m.get('message_id')!r}, Dovecot holds {expected!r}: {where(r)}")

    for r in mine:
        if r["action"] in ("select", "examine") and r["detail"].get("uidvalidity") != world.validity.get(r["folder"]):
            problems.append(f"{r['action']} row with UIDVALIDITY {r['detail'].get('uidvalidity')}: {where(r)}")

    # 1. expunges
    rows = Counter()
    for r in mine:
        if r["action"] == "expunge":
            uid = (r.get("message") or {}).get("uid")
            rows[(r["folder"], uid)] += 1
            by = truth.removed.get((r["folder"], uid))
            if by is None:
                whose = "the colleague's" if (r["folder"], uid) in truth.colleague_removed else "nobody's"
                problems.append(f"expunge row for a message alice did not expunge ({whose}): {where(r)}")
            elif r["detail"].get("by") != by:
                problems.append(f"expunge by {r['detail'].get('by')!r}, expected {by!r}: {where(r)}")
    for key, by in sorted(truth.removed.items()):
        if rows[key] != 1:
            problems.append(f"{rows[key]} expunge rows for {key} (alice's {by} removed it)")

    # 2. copy and move: exactly their [COPYUID] pairs
    for action, expected in (("copy", truth.copies), ("move", truth.moves)):
        written = Counter((r["folder"], (r.get("message") or {}).get("uid"), r["detail"].get("to"),
                           r["detail"].get("to_uid")) for r in mine if r["action"] == action)
        for key in sorted(set(written) | set(expected), key=str):
            if written[key] != expected[key]:
                problems.append(f"{action} (folder, uid, to, to_uid)={key}: {written[key]} rows, "
                                f"{expected[key]} expected")

    # 2. fetch and flags: addressed, no more than the replies allow, none missing
    for kind in ("fetch", "flags"):
        by_message: dict[tuple[str, int], list[dict]] = defaultdict(list)
        for r in mine:
            if r["action"] == kind and (r.get("message") or {}).get("uid") is not None:
                by_message[(r["folder"], r["message"]["uid"])].append(r)
        cmds = [c for c in truth.cmds if c.kind == kind]
        keys = set(by_message) | {(c.folder, u) for c in cmds for u in c.required}
        for folder, uid in sorted(keys):
            relevant = [c for c in cmds if c.folder == folder]
            seen_steps = sorted(first_seen[id(r)] for r in by_message[(folder, uid)])
            for k, step in enumerate(seen_steps, 1):
                capacity = sum(c.capacity(uid) for c in relevant if c.step <= step)
                if k > capacity:
                    problems.append(f"{kind} row #{k} for {folder!r} uid {uid} (written by step {step}): "
                                    f"alice's commands so far account for {capacity}")
                    break
            required = sum(1 for c in relevant if uid in c.required)
            if len(seen_steps) < required:
                steps = [c.step for c in relevant if uid in c.required]
                did = "fetched" if kind == "fetch" else "changed"
                problems.append(f"{kind}: {len(seen_steps)} rows for {folder!r} uid {uid}, "
                                f"but alice's commands at steps {steps} {did} it")
    return problems


@pytest.mark.parametrize("seed", SEEDS)
def test_randomised_interleavings_leave_exactly_alices_rows(gw, dovecot, seed):
    run = Run(gw, dovecot, seed)
    try:
        got = run.run(STEPS)
    except Exception:  # noqa: BLE001 - any error, with what led to it
        pytest.fail(f"seed {seed}: the run failed\n{traceback.format_exc()}\nsteps:\n" + "\n".join(run.log),
                    pytrace=False)
    problems = check_rows(run, got)
    if problems:
        pytest.fail(f"seed {seed}: {len(problems)} invariant(s) violated\n  " + "\n  ".join(problems)
                    + "\nground truth left out:\n  " + "\n  ".join(run.truth.skipped or ["none"])
                    + "\nsteps:\n" + "\n".join(run.log), pytrace=False)


# ------------------------------------------------------------------------------------ reductions
def _alice(gw) -> imaplib.IMAP4_SSL:
    c = gw.imap()
    c.login("alice", gw.credential("alice", "alice-password"))
    return c


def _summary(got: list[dict]) -> list[tuple]:
    return [(r["action"], (r.get("message") or {}).get("uid"), (r.get("message") or {}).get("message_id"))
            for r in got]


def test_rows_about_a_message_that_arrived_after_select_name_it(gw, dovecot):
    """Was: a message that arrives while alice has the folder selected (a colleague's APPEND,
    announced to her by ``* n EXISTS``) is never mapped to its UID by the gateway unless alice
    fetches it with its UID first.  Then a ``UID STORE … .SILENT`` of it writes no ``flags`` row
    at all, a ``UID COPY`` of it writes a ``copy`` row without its Message-ID, and a ``UID
    EXPUNGE`` of it writes an ``expunge`` row naming no UID and no Message-ID.  (Found by the
    randomised test; the same happens with a colleague's MOVE into the folder.)"""
    c = _alice(gw)
    start = len(gw.audit_events(wait_for=1))
    colleague = dovecot.connect(gw.mailbox.address, gw.mailbox.password)
    try:
        assert c.select("INBOX")[0] == "OK"
        typ, data = colleague.append("INBOX", None, None, note(1, "arrivata"))
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
        assert c.noop()[0] == "OK"  # alice is told: * n EXISTS
        assert c.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Seen)")[0] == "OK"
        assert c._simple_command("UID", "COPY", str(uid), '"Ufficio Legale"')[0] == "OK"
        assert c.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        assert c.uid("EXPUNGE", str(uid))[0] == "OK"
    finally:
        colleague.logout()
        c.logout()
    got = rows(gw, since=start, wait_for=6)
    mid = "<arrivata.1@studio.example.it>"
    expected = [("select", None, None), ("flags", uid, mid), ("copy", uid, mid),
                ("flags", uid, mid), ("expunge", uid, mid), ("logout", None, None)]
    assert _summary(got) == expected, f"rows written: {_summary(got)}"


@pytest.mark.parametrize("command", ["EXPUNGE", "CLOSE"])
def test_a_colleagues_expunge_of_a_message_alice_saw_marked_is_not_hers(gw, dovecot, command):
    """Was: the colleague marks a message \\Deleted, alice's session is told (her NOOP), then
    the colleague expunges it (here with UID EXPUNGE; a MOVE does the same).  Alice's next
    EXPUNGE (or CLOSE) is preceded by the gateway's ``SEARCH DELETED``, which still finds the
    colleague's message in her session's view, not yet told it left; the gateway's
    ``UID EXPUNGE`` then names it, Dovecot reports its (earlier) expunge in that command's reply
    and the gateway writes it as alice's ``expunge`` row."""
    validity, inbox = direct_identities(gw, dovecot, "INBOX")
    mine, theirs = sorted(inbox)[:2]
    c = _alice(gw)
    start = len(gw.audit_events(wait_for=1))
    colleague = dovecot.connect(gw.mailbox.address, gw.mailbox.password)
    try:
        assert c.select("INBOX")[0] == "OK"
        assert c.uid("STORE", str(mine), "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        assert colleague.select("INBOX")[0] == "OK"
        assert colleague.uid("STORE", str(theirs), "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        assert c.noop()[0] == "OK"  # alice's session sees the colleague's message marked
        assert colleague.uid("EXPUNGE", str(theirs))[0] == "OK"  # the colleague's own expunge
        assert (c.expunge() if command == "EXPUNGE" else c.close())[0] == "OK"
    finally:
        colleague.logout()
        c.logout()
    got = [r for r in rows(gw, since=start, wait_for=4) if r["action"] == "expunge"]
    assert [(r["message"]["uid"], r["detail"]["by"]) for r in got] == [(mine, command)]
    assert got[0]["message"]["uidvalidity"] == validity


def test_selecting_an_empty_folder_writes_its_uidvalidity_and_zero_messages(gw, dovecot):
    """Was: the ``select`` row of a folder holding no message has ``uidvalidity`` and
    ``messages`` None: ``AuditTrail._completed`` tests ``if self.view`` and a
    :class:`MailboxView` of 0 messages is false (it has ``__len__``).  (Found by the randomised
    test once alice and the colleague had emptied "Ufficio Legale".)"""
    d = dovecot.connect(gw.mailbox.address, gw.mailbox.password)
    try:
        assert d.create('"Ufficio Legale/Vuota"')[0] == "OK"
        d.select('"Ufficio Legale/Vuota"', readonly=True)
        validity = int(d.response("UIDVALIDITY")[1][0])
    finally:
        d.logout()
    c = _alice(gw)
    start = len(gw.audit_events(wait_for=1))
    try:
        typ, data = c.select('"Ufficio Legale/Vuota"')
        assert (typ, data) == ("OK", [b"0"])
    finally:
        c.logout()
    select = rows(gw, since=start, wait_for=2)[0]
    assert select["action"] == "select"
    assert select["detail"] == {"uidvalidity": validity, "messages": 0}
