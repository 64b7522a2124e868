"""One error tree for the IMAP layers, each error carrying what to tell the peer.

``ImapProtocolError`` splits into the client's fault and the upstream's fault, because the
gateway reacts differently: a client's malformed command gets a ``BAD`` for that tag (or, when the
stream can no longer be trusted, ``* BYE`` and the connection closes), while an upstream that
breaks the protocol ends the session with ``* BYE [UNAVAILABLE]`` — never with its raw bytes.
"""

from __future__ import annotations

__all__ = [
    "ImapProtocolError",
    "ClientProtocolError",
    "UpstreamProtocolError",
    "FramingError",
    "CommandSyntaxError",
]


class ImapProtocolError(Exception):
    """Base of every IMAP parsing and framing error."""

    #: True when the byte stream can no longer be framed and the connection must close.
    fatal: bool = False

    def __init__(self, message: str, *, fatal: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if fatal is not None:
            self.fatal = fatal


class ClientProtocolError(ImapProtocolError):
    """The client sent something the gateway will not accept."""


class UpstreamProtocolError(ImapProtocolError):
    """The provider sent something the gateway cannot parse."""

    fatal = True


class FramingError(ImapProtocolError):
    """A line or literal broke a limit, or a literal marker was malformed.

    Framing errors are fatal: after an over-long line or a refused non-synchronising literal the
    stream position is unknown, so the only safe answer is to close the connection.
    """

    fatal = True


class CommandSyntaxError(ClientProtocolError):
    """A complete command could not be parsed; answered with ``<tag> BAD <message>``."""

    def __init__(self, message: str, tag: str | None = None) -> None:
        super().__init__(message, fatal=False)
        self.tag = tag
