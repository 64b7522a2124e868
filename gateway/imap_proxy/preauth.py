"""The verbs the gateway answers itself before login: CAPABILITY, NOOP, LOGOUT, ID, STARTTLS,
LOGIN and AUTHENTICATE PLAIN (with and without SASL-IR).

A mixin of :class:`~gateway.imap_proxy.session.ImapSession`, kept apart so the session module
holds the relay and this one the pre-login dialogue (RFC 3501 §6.1–6.2, RFC 4616, RFC 4959).
Nothing here reaches the provider: a login becomes a :class:`~gateway.login.LoginRequest`
action for the login service, and only its result opens the provider session.
"""

from __future__ import annotations

import base64
import binascii

from gateway.imap_proxy import actions as act
from gateway.imap_proxy.commands import Command
from gateway.imap_proxy.framing import Frame
from gateway.imap_proxy.states import SessionState
from gateway.imap_proxy.syntax import Atom, String
from gateway.login import LoginRequest
from gateway.secret import Secret

__all__ = ["PreauthVerbs", "PREAUTH_VERBS", "SERVER_NAME"]

SERVER_NAME = b"PEC-Gateway"


class PreauthVerbs:
    """Handlers of the pre-login verbs, each returning the session's actions."""

    def _pre_capability(self, cmd: Command) -> list:
        caps = " ".join(self._preauth_caps()).encode()
        return [act.SendToClient(b"* CAPABILITY %s\r\n%s OK CAPABILITY completed\r\n" % (caps, cmd.tag.encode()))]

    def _pre_noop(self, cmd: Command) -> list:
        return [act.SendToClient(b"%s OK NOOP completed\r\n" % cmd.tag.encode())]

    def _pre_logout(self, cmd: Command) -> list:
        out = [act.SendToClient(b"* BYE Logging out\r\n%s OK LOGOUT completed\r\n" % cmd.tag.encode())]
        return out + self._finish("logout", send_bye=False)

    def _pre_id(self, cmd: Command) -> list:
        self._record_client_id(cmd)
        reply = b'* ID ("name" "%s" "version" "%s")\r\n%s OK ID completed\r\n' % (
            SERVER_NAME, self._version.encode(), cmd.tag.encode())
        return [act.SendToClient(reply)]

    def _pre_starttls(self, cmd: Command) -> list:
        if self.tls_active or not self.starttls_available:
            return [act.SendToClient(b"%s BAD TLS is already active\r\n" % cmd.tag.encode())]
        leftover = self.client_framer.clear()
        if leftover:
            # RFC 2595 §3.1 / CVE-2011-0411: bytes sent in clear after STARTTLS must never be acted
            # upon over TLS.  A client that pipelines there is broken or under attack: hang up.
            return self._bye(b"Commands after STARTTLS must wait for the TLS handshake",
                             reason="starttls_pipelining", log=f"{len(leftover)} octets pipelined after STARTTLS")
        return [act.SendToClient(b"%s OK Begin TLS negotiation now\r\n" % cmd.tag.encode()), act.StartTls()]

    def _login_allowed(self, cmd: Command) -> list | None:
        if self.tls_active or self.plaintext_login:
            return None
        return [act.SendToClient(b"%s NO [PRIVACYREQUIRED] Use STARTTLS before logging in\r\n" % cmd.tag.encode())]

    def _pre_login(self, cmd: Command) -> list:
        refused = self._login_allowed(cmd)
        if refused:
            return refused
        if len(cmd.args) != 2 or not all(isinstance(a, (Atom, String)) for a in cmd.args):
            return [act.SendToClient(b"%s BAD LOGIN needs a user name and a password\r\n" % cmd.tag.encode())]
        user, password = (bytes(a) if isinstance(a, String) else a.encode("latin-1") for a in cmd.args)
        return self._start_login(cmd.tag, user, password, None)

    def _pre_authenticate(self, cmd: Command) -> list:
        refused = self._login_allowed(cmd)
        if refused:
            return refused
        if not cmd.args or not isinstance(cmd.args[0], Atom) or len(cmd.args) > 2:
            return [act.SendToClient(b"%s BAD AUTHENTICATE needs a mechanism\r\n" % cmd.tag.encode())]
        if cmd.args[0].upper() != "PLAIN":
            return [act.SendToClient(b"%s NO [CANNOT] Only the PLAIN mechanism is offered\r\n" % cmd.tag.encode())]
        if len(cmd.args) == 2:  # SASL-IR, RFC 4959: "=" is an empty initial response
            initial = cmd.args[1]
            return self._sasl_plain(cmd.tag, b"" if initial == "=" else str(initial).encode("latin-1"))
        self._sasl_tag = cmd.tag
        return [act.SendToClient(b"+ \r\n")]

    def _on_sasl_response(self, frame: Frame) -> list:
        tag, self._sasl_tag = self._sasl_tag, None
        line = frame.first_line.strip()
        if line == b"*":  # RFC 3501 §6.2.2: the client cancels
            return [act.SendToClient(b"%s BAD Authentication cancelled\r\n" % tag.encode())]
        return self._sasl_plain(tag, line)

    def _sasl_plain(self, tag: str, b64: bytes) -> list:
        try:
            decoded = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            return [act.SendToClient(b"%s BAD Invalid base64 in AUTHENTICATE\r\n" % tag.encode())]
        parts = decoded.split(b"\0")
        if len(parts) != 3:  # RFC 4616: [authzid] NUL authcid NUL passwd
            return [act.SendToClient(b"%s BAD Malformed PLAIN response\r\n" % tag.encode())]
        authzid, authcid, password = parts
        hint = authzid if authzid and authzid != authcid else None
        return self._start_login(tag, authcid, password, hint)

    def _start_login(self, tag: str, user: bytes, password: bytes, hint: bytes | None) -> list:
        if not self.audit_accepting():  # a session that could not be audited is not opened
            return [act.SendToClient(b"%s NO [UNAVAILABLE] The audit trail cannot be written now; "
                                     b"try again later\r\n" % tag.encode())]
        try:
            login = user.decode("utf-8")
            credential = Secret(password.decode("utf-8"))
            mailbox_hint = hint.decode("utf-8") if hint else None
        except UnicodeDecodeError:
            return [act.SendToClient(b"%s NO [AUTHENTICATIONFAILED] Authentication failed\r\n" % tag.encode())]
        self._login_tag = tag
        self._attempted_user = login.partition("#")[0][:128]
        self._set_state(SessionState.AUTHENTICATING)
        return [act.Login(LoginRequest(login, credential, self.client_ip, "imap", mailbox_hint,
                                       session_id=self.session_id))]


#: The verbs the gateway answers itself before login (``Handling.GATEWAY`` in the command table).
PREAUTH_VERBS = {
    "CAPABILITY": PreauthVerbs._pre_capability,
    "NOOP": PreauthVerbs._pre_noop,
    "LOGOUT": PreauthVerbs._pre_logout,
    "ID": PreauthVerbs._pre_id,
    "STARTTLS": PreauthVerbs._pre_starttls,
    "LOGIN": PreauthVerbs._pre_login,
    "AUTHENTICATE": PreauthVerbs._pre_authenticate,
}
