"""The office folder policy applied to every IMAP command and to the responses that name folders.

Pure, like the session that uses it: :class:`FolderGuard` takes parsed commands and provider
frames and says what to relay, what to rewrite and what to refuse.  The rights each command
needs follow RFC 4314 §4, with the PEC reading of them:

=====================================  ===========================================================
command                                needs (else)
=====================================  ===========================================================
SELECT / EXAMINE f                     ``l`` (NONEXISTENT), ``r`` (NOPERM); SELECT without any of
                                       ``s w t e`` runs as EXAMINE: the client sees READ-ONLY
STATUS f, GETQUOTAROOT f               ``l`` (NONEXISTENT); STATUS also ``r``
LIST / LSUB / NAMESPACE                relayed; folders without ``l`` are removed from the replies
SUBSCRIBE / UNSUBSCRIBE f              ``l`` (NONEXISTENT); UNSUBSCRIBE of a hidden name is
                                       answered OK and not relayed, as the provider would
CREATE f                               ``k`` on the parent (on ``f`` itself at the top level) and
                                       ``l`` on ``f`` (NOPERM: nobody creates what they cannot see)
DELETE f                               ``l`` (NONEXISTENT), ``x``
RENAME f g                             ``l`` + ``x`` on ``f``; as CREATE for ``g``; and, since the
                                       subfolders move too, ``l x`` on each of them and ``l`` on
                                       its new name (the gateway LISTs them first)
APPEND f                               ``l`` (TRYCREATE), ``i``, and per flag: ``\\Seen`` ``s``,
                                       ``\\Deleted`` ``t``, others ``w``; refused before the upload
FETCH / SEARCH / SORT / THREAD         ``r`` on the selected folder; without ``s`` every FETCH that
                                       would set ``\\Seen`` is rewritten to its PEEK form
STORE                                  per flag as APPEND; ``FLAGS`` (replace) needs ``s w t``
EXPUNGE / UID EXPUNGE                  ``e``
CLOSE                                  ``e`` to expunge; without it, UNSELECT (expunges nothing)
COPY / MOVE f                          ``r`` on the selected folder, ``l`` (TRYCREATE) and ``i``
                                       on ``f``; MOVE also ``t`` and ``e`` on the selected folder
ACL commands                           answered from the policy (:mod:`gateway.imap_proxy.acl`)
=====================================  ===========================================================

Refusals are ``NO [NOPERM]`` naming the missing right, or — when the folder is invisible — the
same reply a folder that does not exist gets, so a person cannot probe for names; the provider's
own "does not exist" replies are given that same text (:meth:`FolderGuard.tagged_reply`).

The selected folder is tracked from the client's commands, in the order they are relayed: a
command pipelined after SELECT is judged by the folder it will run in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from policy import Decision, Right, Rights

from gateway.imap_proxy.acl import ACL_COMMANDS, answer_acl
from gateway.imap_proxy.commands import Command
from gateway.imap_proxy.folder_access import FolderAccess
from gateway.imap_proxy.framing import Frame
from gateway.imap_proxy.responses import parse_status
from gateway.imap_proxy.rewrite import peek_fetch, plain_sections, replace_command_name, rfc822_names, with_lines
from gateway.imap_proxy.syntax import Atom, Reader, String, TokenError, astring_octets, quote_string

__all__ = ["FolderGuard", "Verdict", "Denial", "NO_SUCH_FOLDER"]

NO_SUCH_FOLDER = b"No such folder"
_WRITE = (Right.SEEN, Right.WRITE, Right.DELETE_MESSAGES, Right.EXPUNGE)
_NEEDS_SELECTED = frozenset({"FETCH", "STORE", "SEARCH", "SORT", "THREAD", "EXPUNGE", "COPY", "MOVE",
                             "CLOSE", "UNSELECT", "CHECK"})
_FILTERED = frozenset({"LIST", "LSUB", "STATUS", "NAMESPACE"})
#: Commands whose "no such folder" replies all get one text: the provider's own wording (Dovecot:
#: "Mailbox doesn't exist: X", no response code) would tell a missing folder from a hidden one.
_NAMES_A_FOLDER = {"SELECT": "NONEXISTENT", "EXAMINE": "NONEXISTENT", "STATUS": "NONEXISTENT",
                   "SUBSCRIBE": "NONEXISTENT", "UNSUBSCRIBE": "NONEXISTENT", "DELETE": "NONEXISTENT",
                   "RENAME": "NONEXISTENT", "GETQUOTAROOT": "NONEXISTENT", "APPEND": "TRYCREATE",
                   "COPY": "TRYCREATE", "MOVE": "TRYCREATE"}
_MISSING_TEXT = re.compile(rb"doesn'?t exist|does not exist|no such (mailbox|folder)|not found|unknown mailbox",
                           re.IGNORECASE)
_HAS_CHILDREN = re.compile(rb"\\HasChildren", re.IGNORECASE)


@dataclass(frozen=True)
class Denial:
    """Why a command was refused, for the reply and the audit row."""

    command: str
    code: str  # NOPERM, NONEXISTENT, TRYCREATE, CANNOT
    folder: str | None  # human name; None when the folder is hidden (it is not named back)
    missing: str  # the RFC 4314 letters lacking
    decision: Decision | None = None

    @property
    def rules(self) -> list[str]:
        return list(self.decision.sources) if self.decision is not None else []


@dataclass
class Verdict:
    """What to do with one client command.

    ``reply`` set: answer the client with it (and relay nothing).  Otherwise relay ``frame``
    (the original, or a rewrite).  ``upstream`` are the gateway's own commands to send first
    (a deselect), ``notes`` untagged lines for the client, ``withdrawn`` the folder whose access
    ended with a reload.
    """

    frame: Frame | None = None
    reply: bytes | None = None
    denial: Denial | None = None
    upstream: list[bytes] = field(default_factory=list)
    notes: bytes = b""
    withdrawn: str | None = None
    end_session: bool = False
    hold: bytes | None = None  # relay nothing yet: first send this gateway command (RENAME's LIST)
    expunges: bool = False  # a CLOSE that will expunge (read-write folder, 'e' right)


def _appended_messages(cmd: Command) -> int:
    """How many messages an APPEND uploads: its literals, less the mailbox name if it is one."""
    first = cmd.frame.lines[0].split()
    mailbox_literal = len(first) == 3 and first[2].startswith(b"{")
    return len(cmd.frame.literals) - (1 if mailbox_literal else 0)


def _flag_rights(flags: list) -> list[Right] | None:
    """The rights needed to set or clear these flags (RFC 4314 §4 STORE); None when one of them
    is not a flag at all (a flag is an atom: a quoted or nested one might be read differently by
    the provider, so it is refused rather than guessed at)."""
    needed = []
    for flag in flags:
        if not isinstance(flag, Atom):
            return None
        text = str(flag).upper()
        right = Right.SEEN if text == "\\SEEN" else Right.DELETE_MESSAGES if text == "\\DELETED" else Right.WRITE
        if right not in needed:
            needed.append(right)
    return needed


class FolderGuard:
    """The policy of one session: checks commands, filters responses, tracks the selected folder."""

    def __init__(self, access: FolderAccess, *, unselect: bool) -> None:
        self.access = access
        self.unselect = unselect  # the provider has UNSELECT (RFC 3691)
        self.selected: bytes | None = None  # wire name, as the client's commands leave it
        self.read_only = False
        self._select_tag: str | None = None
        self._renaming: set[str] = set()  # FETCH tags whose RFC822 items were turned into BODY
        self._folder_tags: dict[str, str] = {}  # tag -> command name, for folder commands in flight
        self._rename: tuple[str, bytes, bytes, list] | None = None  # held RENAME: LIST tag, old, new, children
        self._own_tags = 0

    # ------------------------------------------------------------------ per command
    def check(self, cmd: Command) -> Verdict:
        """The verdict on one client command (call in the order commands are relayed)."""
        verdict = self._reloaded()
        if verdict.end_session:
            return verdict
        inner = self._check(cmd)
        if inner.reply is None and cmd.name in _NAMES_A_FOLDER:
            self._folder_tags[cmd.tag] = cmd.name
        inner.upstream[:0] = verdict.upstream
        inner.notes = verdict.notes + inner.notes
        inner.withdrawn = verdict.withdrawn
        return inner

    def _reloaded(self) -> Verdict:
        """After a policy reload: end the session or close the selected folder if access ended."""
        if not self.access.refresh():
            return Verdict()
        if not self.access.mailbox_usable:
            return Verdict(end_session=True)
        sel = self.selected
        if sel is None:
            return Verdict()
        rights = self.access.rights(sel)
        if rights.has(Right.LOOKUP) and rights.has(Right.READ):
            return Verdict()
        name = self.access.human(sel)
        return Verdict(upstream=self._deselect(), withdrawn=name,
                       notes=b"* OK [CLOSED] Access to the selected folder was withdrawn\r\n")

    def _check(self, cmd: Command) -> Verdict:
        name = cmd.name
        if name in ACL_COMMANDS:
            return self._acl(cmd)
        if name in ("SELECT", "EXAMINE"):
            return self._select(cmd)
        if name in _NEEDS_SELECTED:
            if self.selected is None:
                return Verdict(reply=b"%s BAD No mailbox selected\r\n" % cmd.tag.encode())
            return self._selected_command(cmd)
        spec = cmd.spec
        if spec is None or not spec.mailbox_args:
            return Verdict()
        folder = self._mailbox_arg(cmd, spec.mailbox_args[0])
        if folder is None:
            return Verdict(reply=b"%s BAD %s needs a mailbox name\r\n" % (cmd.tag.encode(), name.encode()))
        if name == "STATUS":
            return self._need(cmd, folder, Right.LOOKUP, Right.READ)
        if name == "UNSUBSCRIBE" and not self.access.visible(folder):
            # Providers accept UNSUBSCRIBE of any name (Dovecot: OK): so does the gateway, without
            # touching the subscriptions the other people of this mailbox share.
            return Verdict(reply=b"%s OK UNSUBSCRIBE completed\r\n" % cmd.tag.encode())
        if name in ("SUBSCRIBE", "UNSUBSCRIBE", "GETQUOTAROOT"):
            return self._need(cmd, folder, Right.LOOKUP)
        if name == "CREATE":
            return self._create(cmd, folder)
        if name == "DELETE":
            return self._need(cmd, folder, Right.LOOKUP, Right.DELETE_MAILBOX)
        if name == "RENAME":
            new = self._mailbox_arg(cmd, 1)
            if new is None:
                return Verdict(reply=b"%s BAD RENAME needs two mailbox names\r\n" % cmd.tag.encode())
            first = self._need(cmd, folder, Right.LOOKUP, Right.DELETE_MAILBOX)
            verdict = first if first.reply else self._create(cmd, new)
            return verdict if verdict.reply else self._list_subfolders(cmd, folder, new)
        if name == "APPEND":
            return self._append(cmd, folder)
        return Verdict()

    # ------------------------------------------------------------------ folders by name
    def _mailbox_arg(self, cmd: Command, position: int) -> bytes | None:
        return astring_octets(cmd.args[position]) if position < len(cmd.args) else None

    def _deny(self, cmd: Command, folder: bytes | None, code: str, missing: str,
              decision: Decision | None, text: bytes) -> Verdict:
        hidden = code in ("NONEXISTENT", "TRYCREATE")
        human = None if folder is None or hidden else self.access.human(folder)
        denial = Denial(cmd.display_name, code, human, missing, decision)
        return Verdict(reply=b"%s NO [%s] %s\r\n" % (cmd.tag.encode(), code.encode(), text), denial=denial)

    def _missing(self, cmd: Command, folder: bytes, decision: Decision, rights: tuple[Right, ...],
                 what: bytes = b"") -> Verdict | None:
        lacking = "".join(r.value for r in rights if not decision.has(r))
        if not lacking:
            return None
        where = b" on this folder" if not what else what
        text = b"%s needs the '%s' right%s" % (cmd.display_name.encode(), lacking.encode(), where)
        return self._deny(cmd, folder, "NOPERM", lacking, decision, text)

    def _need(self, cmd: Command, folder: bytes, *rights: Right, hidden_code: str = "NONEXISTENT") -> Verdict:
        decision = self.access.decide(folder)
        if not decision.has(Right.LOOKUP):
            return self._deny(cmd, folder, hidden_code, "l", decision, NO_SUCH_FOLDER)
        return self._missing(cmd, folder, decision, rights) or Verdict()

    def _create(self, cmd: Command, folder: bytes) -> Verdict:
        """CREATE (and RENAME's new name): ``k`` on the parent, ``l`` on the new folder."""
        parent = self.access.parent(folder)
        where = parent if parent is not None else folder
        decision = self.access.decide(where)
        if not decision.has(Right.CREATE):
            text = b"%s needs the 'k' right on %s" % (
                cmd.display_name.encode(), b"the parent folder" if parent is not None else b"this name")
            return self._deny(cmd, folder, "NOPERM", "k", decision, text)
        own = self.access.decide(folder)
        if not own.has(Right.LOOKUP):
            return self._deny(cmd, None, "NOPERM", "l", own,
                              b"The policy would hide a folder of that name from you")
        return Verdict()

    def _list_subfolders(self, cmd: Command, old: bytes, new: bytes) -> Verdict:
        """RENAME moves the whole subtree: hold it until the gateway has listed the subfolders."""
        self._own_tags += 1
        tag = b"PECGW.r%d" % self._own_tags
        pattern = quote_string(old.rstrip(self.access.delimiter.encode()) + self.access.delimiter.encode() + b"*")
        self._rename = (tag.decode(), old, new, [])
        return Verdict(hold=b'%s LIST "" %s\r\n' % (tag, pattern))

    def collect(self, frame: Frame) -> None:
        """One ``* LIST`` reply to the gateway's subfolder LIST."""
        assert self._rename is not None
        try:
            reader = Reader(frame, start=1)
            for _ in range(3):
                reader.read()
            wire = astring_octets(reader.read())
        except TokenError:
            wire = None
        self._rename[3].append(wire)

    def rename_listed(self, cmd: Command, ok: bool) -> Verdict:
        """The subfolder LIST is complete (``ok``: the provider answered OK): relay the held
        RENAME, or refuse it."""
        assert self._rename is not None
        _tag, old, new, children = self._rename
        self._rename = None
        if not ok:
            self._folder_tags.pop(cmd.tag, None)
            return Verdict(reply=b"%s NO [UNAVAILABLE] The subfolders could not be listed; nothing was "
                                 b"renamed\r\n" % cmd.tag.encode())
        delim = self.access.delimiter.encode()
        old_prefix, new_prefix = old.rstrip(delim) + delim, new.rstrip(delim) + delim
        for child in children:
            moved = None if child is None or not child.startswith(old_prefix) else new_prefix + child[len(old_prefix):]
            if moved is None or not (self.access.decide(child).has(Right.LOOKUP)
                                     and self.access.decide(child).has(Right.DELETE_MAILBOX)
                                     and self.access.decide(moved).has(Right.LOOKUP)):
                self._folder_tags.pop(cmd.tag, None)
                return self._deny(cmd, old, "NOPERM", "x", self.access.decide(old),
                                  b"RENAME would also move subfolders you may not move")
        return Verdict()

    def _append(self, cmd: Command, folder: bytes) -> Verdict:
        refused = self._need(cmd, folder, Right.INSERT, hidden_code="TRYCREATE")
        if refused.reply:
            return refused
        if _appended_messages(cmd) > 1:  # MULTIAPPEND (RFC 3502): one audit row per message needs one each
            return Verdict(reply=b"%s NO [CANNOT] One message per APPEND through the gateway\r\n" % cmd.tag.encode())
        flags: list = []
        for arg in cmd.args[1:]:
            if isinstance(arg, list):
                flags += arg
            elif isinstance(arg, Atom) and arg.upper() in ("CATENATE", "UTF8"):
                return Verdict(reply=b"%s NO [CANNOT] APPEND %s is not available through the gateway\r\n"
                               % (cmd.tag.encode(), arg.upper().encode()))
        needed = _flag_rights(flags)
        if needed is None:
            return Verdict(reply=b"%s BAD Flags must be atoms\r\n" % cmd.tag.encode())
        decision = self.access.decide(folder)
        return self._missing(cmd, folder, decision, tuple(needed), b" for these flags") or Verdict()

    def check_announced(self, cmd: Command) -> Verdict:
        """APPEND whose first literal is announced: refuse now, before the client uploads it.

        ``cmd`` is parsed from the text before the literal (mailbox, flags, date).  A mailbox
        name sent as a literal itself is judged when the command is complete.
        """
        if cmd.name != "APPEND" or not cmd.args or self.access.stale:
            return Verdict()  # after a reload the complete command applies it, in order
        folder = astring_octets(cmd.args[0])
        return Verdict() if folder is None else self._append(cmd, folder)

    # ------------------------------------------------------------------ the selected folder
    def _select(self, cmd: Command) -> Verdict:
        folder = self._mailbox_arg(cmd, 0)
        if folder is None:
            return Verdict(reply=b"%s BAD %s needs a mailbox name\r\n" % (cmd.tag.encode(), cmd.name.encode()))
        verdict = self._need(cmd, folder, Right.READ)
        if verdict.reply:
            # the client now believes nothing is selected (RFC 3501 §6.3.1): make it so upstream
            if self.selected is not None:
                verdict.upstream = self._deselect()
            return verdict
        rights = self.access.rights(folder)
        frame = None
        if cmd.name == "SELECT" and not any(rights.has(r) for r in _WRITE):
            frame = replace_command_name(cmd.frame, cmd.tag, b"SELECT", b"EXAMINE")
        self.selected, self._select_tag = folder, cmd.tag
        self.read_only = cmd.name == "EXAMINE" or frame is not None
        return Verdict(frame=frame)

    def _deselect(self) -> list[bytes]:
        """The gateway's own command leaving the selected folder without expunging anything."""
        self.selected, self._select_tag, self.read_only = None, None, False
        self._own_tags += 1
        tag = b"PECGW.d%d" % self._own_tags
        if self.unselect:
            return [b"%s UNSELECT\r\n" % tag]
        # RFC 3501 §6.3.1: a failed SELECT leaves no mailbox selected, and EXAMINE never expunges
        return [b'%s EXAMINE "PECGW no such folder %d"\r\n' % (tag, self._own_tags)]

    def _selected_command(self, cmd: Command) -> Verdict:
        sel = self.selected
        assert sel is not None
        decision = self.access.decide(sel)
        name = cmd.name
        if name in ("UNSELECT", "CHECK"):
            if name == "UNSELECT":
                self.selected = None
            return Verdict()
        if name == "CLOSE":
            return self._close(cmd, decision)
        refused = self._missing(cmd, sel, decision, (Right.READ,))
        if refused is not None:
            return refused
        if name == "FETCH":
            return self._fetch(cmd, decision)
        if name == "STORE":
            return self._store(cmd, sel, decision)
        if name == "EXPUNGE":
            return self._missing(cmd, sel, decision, (Right.EXPUNGE,)) or Verdict()
        if name in ("COPY", "MOVE"):
            return self._copy(cmd, sel, decision)
        return Verdict()  # SEARCH, SORT, THREAD: r is enough

    def _close(self, cmd: Command, decision: Decision) -> Verdict:
        expunges = not self.read_only
        self.selected, self._select_tag, self.read_only = None, None, False
        if not expunges or decision.has(Right.EXPUNGE):
            return Verdict(expunges=expunges)
        if self.unselect:
            return Verdict(frame=Frame((b"%s UNSELECT\r\n" % cmd.tag.encode(),)))
        return Verdict(reply=b"%s OK CLOSE completed; nothing expunged (no 'e' right)\r\n" % cmd.tag.encode(),
                       upstream=self._deselect())

    def _fetch(self, cmd: Command, decision: Decision) -> Verdict:
        if not plain_sections(cmd.frame):
            return Verdict(reply=b"%s BAD FETCH sections may not contain quotes, brackets or literals "
                                 b"through the gateway\r\n" % cmd.tag.encode())
        if decision.has(Right.SEEN):
            return Verdict()
        line = cmd.frame.lines[0]
        start = line.upper().find(b"FETCH") + len(b"FETCH")
        frame, renamed = peek_fetch(cmd.frame, start)
        if renamed:
            self._renaming.add(cmd.tag)
        return Verdict(frame=None if frame is cmd.frame else frame)

    def _store(self, cmd: Command, sel: bytes, decision: Decision) -> Verdict:
        args = list(cmd.args[1:])
        if args and isinstance(args[0], list):  # RFC 7162 (UNCHANGEDSINCE n)
            args.pop(0)
        if not args or not isinstance(args[0], Atom):
            return Verdict(reply=b"%s BAD STORE needs FLAGS, +FLAGS or -FLAGS\r\n" % cmd.tag.encode())
        item = args[0].upper().removesuffix(".SILENT")
        if item not in ("FLAGS", "+FLAGS", "-FLAGS"):
            return Verdict(reply=b"%s BAD STORE needs FLAGS, +FLAGS or -FLAGS\r\n" % cmd.tag.encode())
        rest = args[1:]
        if any(isinstance(a, list) for a in rest) and not (len(rest) == 1 and isinstance(rest[0], list)):
            # "(\Seen) $X": a provider reads only the list, so the list is all there may be
            return Verdict(reply=b"%s BAD STORE takes one flag list, or flags without parentheses\r\n"
                           % cmd.tag.encode())
        flags = rest[0] if rest and isinstance(rest[0], list) else rest
        rights = _flag_rights(flags)
        if rights is None:
            return Verdict(reply=b"%s BAD Flags must be atoms\r\n" % cmd.tag.encode())
        if item == "FLAGS":  # replaces every flag: \Seen, \Deleted and the others all change
            needed: tuple[Right, ...] = (Right.SEEN, Right.WRITE, Right.DELETE_MESSAGES)
        else:
            needed = tuple(rights)
        return self._missing(cmd, sel, decision, needed, b" for these flags") or Verdict()

    def _copy(self, cmd: Command, sel: bytes, decision: Decision) -> Verdict:
        if cmd.name == "MOVE":
            refused = self._missing(cmd, sel, decision, (Right.DELETE_MESSAGES, Right.EXPUNGE),
                                    b" on the source folder")
            if refused is not None:
                return refused
        dest = self._mailbox_arg(cmd, 1)
        if dest is None:
            return Verdict(reply=b"%s BAD %s needs a destination folder\r\n"
                           % (cmd.tag.encode(), cmd.display_name.encode()))
        return self._need(cmd, dest, Right.INSERT, hidden_code="TRYCREATE")

    def _acl(self, cmd: Command) -> Verdict:
        folder = self._mailbox_arg(cmd, 0)
        if folder is None:
            return Verdict(reply=b"%s BAD %s needs a mailbox name\r\n" % (cmd.tag.encode(), cmd.name.encode()))
        ident = self._mailbox_arg(cmd, 1)
        answer = answer_acl(cmd.name, cmd.tag, folder, ident, self.access)
        denial = None
        if answer.denied is not None:
            code, missing = answer.denied
            hidden = code == "NONEXISTENT"
            denial = Denial(cmd.name, code, None if hidden else self.access.human(folder), missing,
                            self.access.decide(folder))
        return Verdict(reply=answer.data + answer.status, denial=denial)

    # ------------------------------------------------------------------ provider replies
    @property
    def renaming(self) -> bool:
        return bool(self._renaming)

    def tagged_reply(self, tag: str, frame: Frame) -> tuple[Frame, list[bytes]]:
        """Note a command's completion: the reply to relay (a uniform "no such folder"), and the
        gateway's own commands to send (a deselect after a failed SELECT)."""
        line = frame.lines[0]
        ok = line[len(tag) + 1:len(tag) + 3].upper() == b"OK"
        upstream: list[bytes] = []
        if tag == self._select_tag:
            self._select_tag = None
            if not ok:
                # NO leaves nothing selected (RFC 3501 §6.3.1) but a parse-level BAD may leave the
                # old folder selected at the provider: make sure both sides agree on "none"
                upstream = self._deselect()
        self._renaming.discard(tag)
        command = self._folder_tags.pop(tag, None)
        if ok or command is None or line[len(tag) + 1:len(tag) + 3].upper() != b"NO":
            return frame, upstream
        status = parse_status(frame)
        code = _NAMES_A_FOLDER[command]
        if status.code in ("NONEXISTENT", "TRYCREATE") or (status.code is None and _MISSING_TEXT.search(line)):
            frame = Frame((b"%s NO [%s] %s\r\n" % (tag.encode(), code.encode(), NO_SUCH_FOLDER),))
        return frame, upstream

    def filter_untagged(self, name: str, frame: Frame) -> Frame | None:
        """The untagged response to relay, rewritten, or None to drop it."""
        if name == "FETCH":
            return rfc822_names(frame) if self._renaming else frame
        if name not in _FILTERED:
            return frame
        try:
            reader = Reader(frame, start=1)
            reader.read()  # the response name
            if name == "NAMESPACE":
                return self._namespace(frame, [reader.read() for _ in range(3)])
            if name == "STATUS":
                wire = astring_octets(reader.read())
                wanted: tuple[Right, ...] = (Right.LOOKUP, Right.READ)
            else:  # LIST, LSUB: (flags) delimiter name [extended data]
                reader.read()
                reader.read()
                wire = astring_octets(reader.read())
                wanted = (Right.LOOKUP,)
        except TokenError:
            return None  # a folder response the gateway cannot read is not relayed
        if wire is None:
            return None
        if wire == b"" and name == "LIST":
            return frame  # LIST "" "": the hierarchy delimiter, not a folder (RFC 3501 §6.3.8)
        rights: Rights = self.access.rights(wire)
        if not all(rights.has(r) for r in wanted):
            return None
        return self._children_flag(frame, wire) if name in ("LIST", "LSUB") else frame

    def _children_flag(self, frame: Frame, wire: bytes) -> Frame:
        """``\\HasChildren`` only where the policy could show the person a child (RFC 3348).

        Otherwise every child is hidden, and the flag alone would tell that one exists.
        """
        line = frame.lines[0]
        end = line.find(b")")
        if end < 0 or not _HAS_CHILDREN.search(line, 0, end):
            return frame
        human = self.access.human(wire) or ""
        if self.access.may_see_under(human + self.access.delimiter):
            return frame
        new = _HAS_CHILDREN.sub(rb"\\HasNoChildren", line[:end]) + line[end:]
        return with_lines(frame, [new, *frame.lines[1:]])

    def _namespace(self, frame: Frame, groups: list) -> Frame | None:
        """NAMESPACE (RFC 2342): drop the namespaces under which no folder can be visible."""
        rendered = []
        changed = False
        for group in groups:
            if not isinstance(group, list):
                rendered.append(b"NIL")
                continue
            kept = []
            for entry in group:
                prefix = astring_octets(entry[0]) if isinstance(entry, list) and entry else None
                human = self.access.human(prefix) if prefix is not None else None
                if human is not None and self.access.may_see_under(human):
                    kept.append(entry)
                else:
                    changed = True
            rendered.append(_render(kept) if kept else b"NIL")
        if not changed:
            return frame
        return Frame((b"* NAMESPACE %s\r\n" % b" ".join(rendered),))


def _render(value) -> bytes:
    """Render a parsed value back to IMAP syntax (for the rebuilt NAMESPACE response)."""
    if isinstance(value, list):
        return b"(" + b" ".join(_render(v) for v in value) + b")"
    if isinstance(value, String):
        return quote_string(bytes(value))
    return str(value).encode("latin-1")
