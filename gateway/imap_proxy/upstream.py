"""Opening the provider session: TLS (verified), greeting, LOGIN with the vaulted password.

The gateway's own dialogue with the provider, before the relay starts.  The mailbox user name and
password are sent as synchronising literals (``{N}`` then wait for ``+``) — or non-synchronising
ones when the provider offers LITERAL+ — so no quoting rule can ever mangle or leak them, and
they never appear in a log line or an exception: errors say what failed, with the provider's own
text at most.

Upstream TLS is always verified (hostname and chain), against the mailbox's ``ca_file`` or the
system trust store; there is deliberately no switch to turn verification off.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from gateway.config import UpstreamConfig
from gateway.imap_proxy.framing import NEED_DATA, EndOfStream, Frame, Framer
from gateway.imap_proxy.mailbox import MailboxNameError, decode_mutf7
from gateway.imap_proxy.provider_link import ProviderLink
from gateway.imap_proxy.responses import Kind, classify, parse_status
from gateway.imap_proxy.session import GATEWAY_TAG_PREFIX
from gateway.imap_proxy.syntax import Reader, TokenError, astring_octets, quote_string
from gateway.secret import Secret

__all__ = ["UpstreamError", "UpstreamSession", "open_upstream", "client_tls_context", "provider_folders",
           "provider_search"]


class UpstreamError(Exception):
    """The provider session could not be opened; ``kind`` classifies why (for logs and metrics)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # unreachable | tls | timeout | protocol | login_refused


@dataclass
class UpstreamSession:
    """An authenticated provider connection, ready to relay."""

    link: ProviderLink
    capabilities: list[str]
    leftover: bytes  # what the login framer held after the last reply: ``link.attach(first=...)``


def client_tls_context(ca_file) -> ssl.SSLContext:
    """A verifying client context (TLS 1.2+), with ``ca_file`` or the system store."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class _Conversation:
    """Reads provider responses frame by frame for the gateway's own commands."""

    def __init__(self, link: ProviderLink) -> None:
        self.link = link
        self.framer = Framer(max_line=65536, max_literal=1024 * 1024, announce_literals=False)
        self.capabilities: list[str] | None = None
        self._n = 0

    def next_tag(self) -> str:
        self._n += 1
        return f"{GATEWAY_TAG_PREFIX}{self._n}"

    async def frame(self) -> Frame:
        while True:
            event = self.framer.next_event()
            if isinstance(event, Frame):
                self._note_capabilities(event)
                return event
            if isinstance(event, EndOfStream):
                raise UpstreamError("protocol", "the provider closed the connection")
            assert event is NEED_DATA
            data = await self.link.read()
            self.framer.receive_data(data)

    def _note_capabilities(self, frame: Frame) -> None:
        head = classify(frame)
        if head.kind is Kind.UNTAGGED and head.name == "CAPABILITY":
            self.capabilities = frame.first_line.decode("latin-1").split()[2:]
        elif head.kind is not Kind.CONTINUATION and head.name in ("OK", "PREAUTH", "BYE", "NO", "BAD"):
            status = parse_status(frame)
            if status.code == "CAPABILITY":
                self.capabilities = status.code_data.split()

    async def tagged(self, tag: str, *, on_continuation=None, on_untagged=None):
        """Read until the tagged reply for ``tag``; call ``on_continuation`` for each ``+`` and
        ``on_untagged(head, frame)`` for each untagged response other than BYE."""
        while True:
            frame = await self.frame()
            head = classify(frame)
            if head.kind is Kind.CONTINUATION:
                if on_continuation is None:
                    raise UpstreamError("protocol", "unexpected continuation request from the provider")
                await on_continuation()
                continue
            if head.kind is Kind.UNTAGGED:
                if head.name == "BYE":
                    raise UpstreamError("protocol", f"the provider said BYE: {parse_status(frame).text[:200]}")
                if on_untagged is not None:
                    on_untagged(head, frame)
                continue
            if head.tag == tag:
                return parse_status(frame)

    async def simple(self, command: str) -> None:
        tag = self.next_tag()
        self.link.write(f"{tag} {command}\r\n".encode())
        status = await self.tagged(tag)
        if status.status != "OK":
            raise UpstreamError("protocol", f"{command} refused by the provider: {status.text[:200]}")


async def _login(conv: _Conversation, username: str, password: Secret) -> None:
    user = username.encode("utf-8")
    secret = password.reveal_bytes()
    tag = conv.next_tag()
    plus = any(c.upper() == "LITERAL+" for c in conv.capabilities or ())
    if plus:
        conv.link.write(b"%s LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (tag.encode(), len(user), user, len(secret), secret))
        pending: list[bytes] = []
    else:
        conv.link.write(b"%s LOGIN {%d}\r\n" % (tag.encode(), len(user)))
        pending = [user + b" {%d}\r\n" % len(secret), secret + b"\r\n"]

    async def send_next() -> None:
        if not pending:
            raise UpstreamError("protocol", "unexpected continuation request during LOGIN")
        conv.link.write(pending.pop(0))

    del secret
    status = await conv.tagged(tag, on_continuation=send_next)
    if status.status != "OK":
        code = f"[{status.code}] " if status.code else ""
        raise UpstreamError("login_refused", f"the provider refused the mailbox login: {code}{status.text[:200]}")


async def open_upstream(cfg: UpstreamConfig, password: Secret) -> UpstreamSession:
    """Connect, verify TLS, log in; raises :class:`UpstreamError` (never with the password)."""
    ctx = client_tls_context(cfg.ca_file)
    server_name = cfg.server_name or cfg.host
    loop = asyncio.get_running_loop()
    link = ProviderLink()
    tls = {"ssl": ctx, "server_hostname": server_name} if cfg.tls == "implicit" else {}
    try:
        async with asyncio.timeout(cfg.connect_timeout_s):
            await loop.create_connection(lambda: link, cfg.host, cfg.port, **tls)
    except TimeoutError:
        raise UpstreamError("timeout", f"connecting to {cfg.host}:{cfg.port} timed out") from None
    except ssl.SSLError as exc:
        raise UpstreamError("tls", f"TLS with {cfg.host}:{cfg.port} failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise UpstreamError("unreachable", f"cannot connect to {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
    conv = _Conversation(link)
    try:
        async with asyncio.timeout(cfg.login_timeout_s):
            greeting = parse_status(await conv.frame())
            if greeting.status != "OK":
                raise UpstreamError("protocol", f"unexpected greeting {greeting.status} {greeting.text[:200]}")
            if cfg.tls == "starttls":
                await conv.simple("STARTTLS")
                # Anything the provider sent after its OK came in clear: refuse to go on with it.
                if conv.framer.clear() or link.buffered:
                    raise UpstreamError("protocol", "the provider sent data in clear after STARTTLS")
                await link.start_tls(ctx, server_hostname=server_name)
                conv.capabilities = None
            if conv.capabilities is None:
                await conv.simple("CAPABILITY")
            await _login(conv, cfg.username, password)
            if conv.capabilities is None or any(c.upper().startswith("AUTH=") for c in conv.capabilities):
                # RFC 3501 §6.2.3: capabilities may change after login; ask again if not told
                conv.capabilities = None
                await conv.simple("CAPABILITY")
    except TimeoutError:
        link.close()
        raise UpstreamError("timeout", f"login at {cfg.host}:{cfg.port} timed out") from None
    except ssl.SSLError as exc:
        link.close()
        raise UpstreamError("tls", f"TLS with {cfg.host}:{cfg.port} failed: {exc.reason or exc}") from None
    except OSError as exc:
        link.close()
        raise UpstreamError("unreachable", f"connection to {cfg.host}:{cfg.port} failed: {exc}") from None
    except UpstreamError:
        link.close()
        raise
    except Exception as exc:  # a parse error in what the provider sent
        link.close()
        raise UpstreamError("protocol", f"unexpected reply from {cfg.host}:{cfg.port}: {type(exc).__name__}") from None
    leftover = conv.framer.clear()
    return UpstreamSession(link, list(conv.capabilities or ()), leftover)


async def provider_folders(cfg: UpstreamConfig, password: Secret) -> list[str]:
    """The mailbox's folders as the provider lists them (``LIST "" "*"``), human Unicode names.

    For ``pecgw policy explain``: a separate short session of the gateway's own, closed with
    LOGOUT.  ``\\NonExistent`` entries (LIST-EXTENDED placeholders) are left out; a name that is
    not valid modified UTF-7 is shown as it came, so it is still visible in the report.
    """
    up = await open_upstream(cfg, password)
    conv = _Conversation(up.link)
    if up.leftover:  # b"" would mean end of stream
        conv.framer.receive_data(up.leftover)
    names: list[str] = []

    def on_list(head, frame: Frame) -> None:
        if head.name != "LIST":
            return
        try:
            reader = Reader(frame, start=1)
            reader.read()  # LIST
            flags = reader.read()
            reader.read()  # the hierarchy delimiter
            name = reader.read()
        except TokenError:
            return
        if isinstance(flags, list) and any(str(f).upper() == "\\NONEXISTENT" for f in flags):
            return
        wire = astring_octets(name) or b""
        try:
            names.append(decode_mutf7(wire))
        except MailboxNameError:
            names.append(wire.decode("latin-1"))

    try:
        async with asyncio.timeout(cfg.login_timeout_s):
            tag = conv.next_tag()
            up.link.write(b'%s LIST "" "*"\r\n' % tag.encode())
            status = await conv.tagged(tag, on_untagged=on_list)
            if status.status != "OK":
                raise UpstreamError("protocol", f"LIST refused by the provider: {status.text[:200]}")
            up.link.write(b"%s LOGOUT\r\n" % conv.next_tag().encode())  # its BYE is not waited for
    except TimeoutError:
        raise UpstreamError("timeout", f"LIST at {cfg.host}:{cfg.port} timed out") from None
    finally:
        up.link.close()
    return names


async def provider_search(cfg: UpstreamConfig, password: Secret, folder: bytes, criteria: bytes) -> list[int]:
    """The UIDs ``UID SEARCH <criteria>`` finds in ``folder`` (a wire name, EXAMINEd: nothing
    is changed), on a short session of the gateway's own closed with LOGOUT.  For questions the
    gateway asks on nobody's behalf (was this PEC accepted?), so no client is affected."""
    up = await open_upstream(cfg, password)
    conv = _Conversation(up.link)
    if up.leftover:
        conv.framer.receive_data(up.leftover)
    found: list[int] = []

    def on_search(head, frame: Frame) -> None:
        if head.name == "SEARCH":
            found.extend(int(w) for w in frame.lines[0].split()[2:] if w.isdigit())

    try:
        async with asyncio.timeout(cfg.login_timeout_s):
            await conv.simple(f"EXAMINE {quote_string(folder).decode('latin-1')}")
            tag = conv.next_tag()
            up.link.write(b"%s UID SEARCH %s\r\n" % (tag.encode(), criteria))
            status = await conv.tagged(tag, on_untagged=on_search)
            if status.status != "OK":
                raise UpstreamError("protocol", f"SEARCH refused by the provider: {status.text[:200]}")
            up.link.write(b"%s LOGOUT\r\n" % conv.next_tag().encode())
    except TimeoutError:
        raise UpstreamError("timeout", f"SEARCH at {cfg.host}:{cfg.port} timed out") from None
    finally:
        up.link.close()
    return found


class ProviderConversation(_Conversation):
    """A long-lived session of the gateway's own with the provider (the receipt watcher's):
    :func:`open_upstream`, then the same frame-by-frame reading the gateway's short questions
    use, and room for commands such as IDLE that wait on the provider."""

    @classmethod
    async def open(cls, cfg: UpstreamConfig, password: Secret) -> "ProviderConversation":
        """Connect, verify TLS and log in; raises :class:`UpstreamError` like :func:`open_upstream`."""
        up = await open_upstream(cfg, password)
        conv = cls(up.link)
        conv.capabilities = up.capabilities
        if up.leftover:  # b"" would mean end of stream
            conv.framer.receive_data(up.leftover)
        return conv

    def has_capability(self, name: str) -> bool:
        return any(c.upper() == name.upper() for c in self.capabilities or ())

    def close(self) -> None:
        """LOGOUT (its BYE is not waited for), then close the connection."""
        if not self.link.is_closing():
            self.link.write(b"%s LOGOUT\r\n" % self.next_tag().encode())
        self.link.close()
