"""The provider's submission server, one SMTP transaction step at a time, off the event loop.

Each client connection gets one provider connection, opened at its first MAIL FROM with the
vaulted mailbox password (the client never sees it).  The client's MAIL FROM, each RCPT TO and
DATA are passed on as they come, so the client gets the provider's own answer to each
recipient — never "250 to everyone" when the provider refused some (DESIGN.md: this is why
aiosmtpd's blocking ``handlers.Proxy`` is not used).  smtplib does the protocol; every call runs
in a worker thread (:func:`asyncio.to_thread`) so a slow provider never blocks other sessions.

TLS toward the provider is always verified (``ca_file`` or the system store, the name checked
against ``server_name`` or the host), implicit (465) or STARTTLS (587).  A provider that cannot
be reached gives ``451 4.4.1`` (the client retries later); one that refuses the mailbox password
gives ``454 4.7.0`` and says so in the log — never a retry loop that would lock the mailbox (the
handler reports the refusal to :class:`~gateway.mailbox_credentials.MailboxCredentials`, which
keeps later MAIL FROMs from trying that password again).
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl

from gateway.config import SubmissionConfig
from gateway.mailbox_credentials import CLIENT_TEXT as REFUSED_TEXT
from gateway.secret import Secret

__all__ = ["ProviderError", "ProviderSubmission", "Reply"]

Reply = tuple[int, str]


class ProviderError(Exception):
    """The provider could not be used: ``reply`` is what the client is told, ``log`` why, and
    ``kind`` classifies it: ``login_refused`` (the provider refused the vaulted password: the
    mailbox is marked, see :mod:`gateway.mailbox_credentials`), ``password_refused`` (refused
    before and unchanged since: the provider was not asked), or ``provider`` (anything else)."""

    def __init__(self, reply: Reply, log: str, *, kind: str = "provider") -> None:
        super().__init__(log)
        self.reply, self.log, self.kind = reply, log, kind


def _connect(host: str, port: int, timeout: float, source_address) -> socket.socket:
    """smtplib's connection, without Nagle's algorithm: asyncio sets TCP_NODELAY on the sockets it
    opens, smtplib does not, and SMTP's short command/reply turns would otherwise wait on
    delayed ACKs."""
    sock = socket.create_connection((host, port), timeout, source_address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _VerifiedSMTP(smtplib.SMTP_SSL):
    """SMTP_SSL that verifies the certificate for ``server_name`` (smtplib would use the host)."""

    def __init__(self, host: str, port: int, *, server_name: str, context: ssl.SSLContext, timeout: float) -> None:
        self._server_name = server_name
        super().__init__(host, port, context=context, timeout=timeout)

    def _get_socket(self, host, port, timeout):
        sock = _connect(host, port, timeout, self.source_address)
        return self.context.wrap_socket(sock, server_hostname=self._server_name)


class _VerifiedStartTLS(smtplib.SMTP):
    """Plain SMTP whose STARTTLS verifies the certificate for ``server_name``."""

    def __init__(self, host: str, port: int, *, server_name: str, timeout: float) -> None:
        self._server_name = server_name
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host, port, timeout):
        return _connect(host, port, timeout, self.source_address)

    def starttls(self, *, context: ssl.SSLContext):  # type: ignore[override]
        saved, self._host = self._host, self._server_name  # smtplib passes _host as the TLS name
        try:
            return super().starttls(context=context)
        finally:
            self._host = saved


def _reply(code: int, text: bytes | str) -> Reply:
    return code, text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def _login_once(smtp: smtplib.SMTP, username: str, password: Secret) -> None:
    """AUTH with one mechanism (PLAIN, else LOGIN, else CRAM-MD5): one refusal is one wrong try
    at the provider.

    smtplib's own ``login`` tries every mechanism it knows in turn, so a wrong password would
    count two or three times toward the provider's lockout.  Raises SMTPAuthenticationError
    (refused) or another SMTPException (no usable mechanism)."""
    smtp.ehlo_or_helo_if_needed()
    if not smtp.has_extn("auth"):
        raise smtplib.SMTPNotSupportedError("the provider offers no AUTH")
    offered = smtp.esmtp_features["auth"].upper().split()
    mechanism = next((m for m in ("PLAIN", "LOGIN", "CRAM-MD5") if m in offered), None)
    if mechanism is None:
        raise smtplib.SMTPException(f"no usable AUTH mechanism among {' '.join(offered)[:100]}")
    smtp.user, smtp.password = username, password.reveal()
    try:
        smtp.auth(mechanism, getattr(smtp, "auth_" + mechanism.lower().replace("-", "_")))  # raises when refused
    finally:
        smtp.password = ""


class ProviderSubmission:
    """One connection to a mailbox's provider submission server."""

    def __init__(self, config: SubmissionConfig, password: Secret, *, local_name: str = "pec-gateway") -> None:
        self.config = config
        self._password = password
        self._local_name = local_name
        self._smtp: smtplib.SMTP | None = None

    @property
    def connected(self) -> bool:
        return self._smtp is not None

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.config.upstream.ca_file) if self.config.upstream.ca_file
                                         else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def _open(self) -> None:
        up = self.config.upstream
        name = up.server_name or up.host
        timeout = up.connect_timeout_s
        try:
            if up.tls == "implicit":
                smtp: smtplib.SMTP = _VerifiedSMTP(up.host, up.port, server_name=name, context=self._context(),
                                                   timeout=timeout)
                smtp.ehlo(self._local_name)
            else:
                smtp = _VerifiedStartTLS(up.host, up.port, server_name=name, timeout=timeout)
                smtp.ehlo(self._local_name)
                smtp.starttls(context=self._context())
                smtp.ehlo(self._local_name)
        except (OSError, smtplib.SMTPException) as exc:
            raise ProviderError((451, "4.4.1 The PEC provider cannot be reached now; try again later"),
                                f"provider {up.host}:{up.port}: {type(exc).__name__}: {exc}") from None
        smtp.sock.settimeout(self.config.timeout_s)
        try:
            _login_once(smtp, up.username, self._password)
        except smtplib.SMTPAuthenticationError as exc:
            smtp.close()
            raise ProviderError((454, f"4.7.0 {REFUSED_TEXT}"),
                                f"provider {up.host}:{up.port} refused the vaulted password for {up.username}: "
                                f"{exc.smtp_code}", kind="login_refused") from None
        except (OSError, smtplib.SMTPException) as exc:
            smtp.close()
            raise ProviderError((451, "4.4.2 The connection to the PEC provider failed; try again later"),
                                f"provider {up.host}:{up.port} at login: {type(exc).__name__}: {exc}") from None
        self._smtp = smtp

    async def open(self) -> None:
        if self._smtp is None:
            await asyncio.to_thread(self._open)

    async def _step(self, call, *args) -> Reply:
        """One SMTP command; a broken connection becomes ``451 4.4.2`` and is dropped."""
        assert self._smtp is not None
        try:
            return await asyncio.to_thread(call, *args)
        except smtplib.SMTPResponseException as exc:
            return _reply(exc.smtp_code, exc.smtp_error)
        except (OSError, smtplib.SMTPException) as exc:
            await self.close()
            raise ProviderError((451, "4.4.2 The connection to the PEC provider was lost; try again later"),
                                f"provider {self.config.upstream.host}: {type(exc).__name__}: {exc}") from None

    async def mail(self, address: str, size: int) -> Reply:
        assert self._smtp is not None
        options = [f"SIZE={size}"] if self._smtp.has_extn("size") else []
        code, text = await self._step(self._smtp.mail, address, options)
        return _reply(code, text)

    async def rcpt(self, address: str) -> Reply:
        assert self._smtp is not None
        code, text = await self._step(self._smtp.rcpt, address)
        return _reply(code, text)

    async def data(self, message: bytes) -> Reply:
        assert self._smtp is not None
        code, text = await self._step(self._smtp.data, message)
        return _reply(code, text)

    async def rset(self) -> None:
        if self._smtp is not None:
            try:
                await self._step(self._smtp.rset)
            except ProviderError:
                pass

    async def close(self) -> None:
        """QUIT when possible; the connection is gone either way."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return

        def quit_quietly() -> None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()

        await asyncio.to_thread(quit_quietly)
