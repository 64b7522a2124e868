"""Client commands: the table of what the gateway knows, and the parser.

An explicit table rather than reflection (DESIGN.md style 4): every command the gateway will
handle or relay is listed with where it is allowed and which arguments are mailbox names.  A
command missing from the table is answered ``BAD`` by the gateway and never reaches the provider —
the relay only forwards what it can parse (the allowlist principle of duesee/imap-proxy).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from gateway.imap_proxy.errors import CommandSyntaxError
from gateway.imap_proxy.framing import Frame
from gateway.imap_proxy.syntax import Atom, Reader, TokenError

__all__ = ["Handling", "CommandSpec", "COMMANDS", "Command", "parse_command", "parse_tag"]


class Handling(Enum):
    """Who answers a command."""

    GATEWAY = "gateway"  # answered by the gateway itself (pre-auth verbs, ACL commands after login)
    RELAY = "relay"  # forwarded to the provider after login
    REFUSED = "refused"  # never forwarded: answered NO/BAD by the gateway after login


@dataclass(frozen=True)
class CommandSpec:
    """How one command is treated before and after login."""

    name: str
    preauth: Handling  # before login
    postauth: Handling  # after login
    mailbox_args: tuple[int, ...] = ()  # argument positions holding mailbox names
    uid_variant: bool = False  # may follow "UID "

    def takes_arguments(self, uid: bool = False) -> bool:
        """False for the commands RFC 3501/2177/2342/3691 define without arguments (UID EXPUNGE
        takes a sequence set, RFC 4315)."""
        return self.name not in NO_ARGUMENTS or (uid and self.name == "EXPUNGE")


def _spec(name, pre, post, mailbox_args=(), uid=False) -> tuple[str, CommandSpec]:
    return name, CommandSpec(name, pre, post, tuple(mailbox_args), uid)


G, R, X = Handling.GATEWAY, Handling.RELAY, Handling.REFUSED

#: Commands whose syntax has no arguments at all.
NO_ARGUMENTS = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "IDLE", "NAMESPACE", "CHECK", "CLOSE",
                          "UNSELECT", "EXPUNGE", "UNAUTHENTICATE"})

#: Every command the gateway understands (RFC 3501 and the extensions it relays).
COMMANDS: dict[str, CommandSpec] = dict(
    [
        # any state
        _spec("CAPABILITY", G, R),
        _spec("NOOP", G, R),
        _spec("LOGOUT", G, R),
        _spec("ID", G, R),  # RFC 2971
        # not authenticated
        _spec("STARTTLS", G, X),
        _spec("LOGIN", G, X),
        _spec("AUTHENTICATE", G, X),
        # authenticated
        _spec("ENABLE", X, R),  # RFC 5161
        _spec("SELECT", X, R, [0]),
        _spec("EXAMINE", X, R, [0]),
        _spec("CREATE", X, R, [0]),
        _spec("DELETE", X, R, [0]),
        _spec("RENAME", X, R, [0, 1]),
        _spec("SUBSCRIBE", X, R, [0]),
        _spec("UNSUBSCRIBE", X, R, [0]),
        _spec("LIST", X, R),  # reference + pattern; LIST-EXTENDED options vary in position
        _spec("LSUB", X, R),
        _spec("STATUS", X, R, [0]),
        _spec("APPEND", X, R, [0]),
        _spec("NAMESPACE", X, R),  # RFC 2342
        _spec("IDLE", X, R),  # RFC 2177
        _spec("GETQUOTA", X, R),  # RFC 9208
        _spec("GETQUOTAROOT", X, R, [0]),
        # selected
        _spec("CHECK", X, R),
        _spec("CLOSE", X, R),
        _spec("UNSELECT", X, R),  # RFC 3691
        _spec("EXPUNGE", X, R, uid=True),  # UID EXPUNGE: RFC 4315
        _spec("SEARCH", X, R, uid=True),
        _spec("SORT", X, R, uid=True),  # RFC 5256
        _spec("THREAD", X, R, uid=True),
        _spec("FETCH", X, R, uid=True),
        _spec("STORE", X, R, uid=True),
        _spec("COPY", X, R, [1], uid=True),
        _spec("MOVE", X, R, [1], uid=True),  # RFC 6851
        # answered by the gateway from the policy, never forwarded (RFC 4314; see acl.py)
        _spec("SETACL", X, G, [0]),
        _spec("DELETEACL", X, G, [0]),
        _spec("GETACL", X, G, [0]),
        _spec("LISTRIGHTS", X, G, [0]),
        _spec("MYRIGHTS", X, G, [0]),
        # never forwarded
        _spec("SETQUOTA", X, X),
        _spec("COMPRESS", X, X),  # never: the gateway must see every byte
        _spec("NOTIFY", X, X),
        _spec("SETMETADATA", X, X, [0]),
        _spec("GETMETADATA", X, X, [0]),
        _spec("UNAUTHENTICATE", X, X),
    ]
)


@dataclass(frozen=True)
class Command:
    """One parsed client command; ``frame`` keeps the exact bytes for relaying."""

    tag: str
    name: str  # upper-case; for UID commands the sub-command, with ``uid`` set
    args: tuple
    frame: Frame
    uid: bool = False

    @property
    def spec(self) -> CommandSpec | None:
        return COMMANDS.get(self.name)

    @property
    def display_name(self) -> str:
        return f"UID {self.name}" if self.uid else self.name


_TAG_FORBIDDEN = frozenset(b"(){ %*\"\\]+")


def parse_tag(line: bytes) -> str | None:
    """Return the tag at the start of a command line, or None if there is no valid tag."""
    end = line.find(b" ")
    tag = line if end < 0 else line[:end]
    if not tag or any(c in _TAG_FORBIDDEN or c < 0x21 or c > 0x7E for c in tag):
        return None
    return tag.decode("ascii")


def parse_command(frame: Frame) -> Command:
    """Parse a complete command frame.  Raises :class:`CommandSyntaxError` with the tag if known."""
    first = frame.first_line
    tag = parse_tag(first)
    if tag is None:
        raise CommandSyntaxError("Missing or invalid tag")
    reader = Reader(frame, start=len(tag))
    try:
        if reader.at_end():
            raise CommandSyntaxError("Missing command", tag)
        name = reader.read()
        if not isinstance(name, Atom):
            raise CommandSyntaxError("Command name must be an atom", tag)
        name = Atom(name.upper())
        uid = False
        if name == "UID":
            if reader.at_end():
                raise CommandSyntaxError("UID needs a command", tag)
            sub = reader.read()
            if not isinstance(sub, Atom):
                raise CommandSyntaxError("UID needs a command", tag)
            name = Atom(sub.upper())
            spec = COMMANDS.get(name)
            if spec is None or not spec.uid_variant:
                raise CommandSyntaxError(f"UID {name} is not a command", tag)
            uid = True
        args = tuple(reader.read_all())
    except TokenError as exc:
        raise CommandSyntaxError(exc.message, tag) from None
    return Command(tag=tag, name=str(name), args=args, frame=frame, uid=uid)
