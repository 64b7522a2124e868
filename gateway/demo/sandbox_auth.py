"""Logging in to the demo sandbox IMAP provider: who may (a password checker and a realm for
twisted's ``Portal``) and how (LOGIN, and AUTHENTICATE with a SASL-IR initial response).

What it is: :class:`PasswordChecker` and :class:`Realm` map a user name and password to that
user's :class:`~gateway.demo.sandbox_store.Account`; :class:`LoginCommands` is the part of
:class:`~gateway.demo.sandbox_server.SandboxIMAPServer` that answers LOGIN and AUTHENTICATE.

Why not twisted's own commands: its AUTHENTICATE refuses the initial response of SASL-IR
(RFC 4959), its login reply carries no ``[CAPABILITY ...]`` code, and on an unexpected error it
sends and logs the failure's text, which could quote what the client sent.  Passwords are
compared in constant time and never logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import IRealm
from twisted.internet import defer
from twisted.mail import imap4
from zope.interface import implementer

from gateway.demo.sandbox_store import Account

__all__ = ["LoginCommands", "PasswordChecker", "Realm"]

log = logging.getLogger("gateway.demo.sandbox")  # one logger for the whole provider


class LoginCommands:
    """LOGIN and AUTHENTICATE for :class:`~gateway.demo.sandbox_server.SandboxIMAPServer`, which
    mixes this in ahead of twisted's ``IMAP4Server`` and registers the commands in its tables."""

    def do_LOGIN(self, tag, user, passwd):
        defer.maybeDeferred(self.authenticateLogin, user, passwd).addCallbacks(
            self._loggedIn, self._loginFailed, callbackArgs=(tag,), errbackArgs=(tag,))

    def do_AUTHENTICATE(self, tag, line):
        """AUTHENTICATE, with the initial response of SASL-IR (RFC 4959) that twisted refuses."""
        mechanism, _, initial = (line or b"").strip().partition(b" ")
        factory = self.challengers.get(mechanism.upper())
        if factory is None:
            self.sendNegativeResponse(tag, b"Unsupported authentication mechanism")
        elif initial:
            self._saslStep(initial, factory(), tag)
        else:
            self._saslChallenge(factory(), tag)

    def _saslChallenge(self, chal, tag) -> None:
        self.sendLine(b"+ " + base64.b64encode(chal.getChallenge()))
        self.parseState = "pending"
        self._pendingLiteral = defer.Deferred()
        self._pendingLiteral.addCallback(self._saslStep, chal, tag)

    def _saslStep(self, line, chal, tag) -> None:
        line = line.strip()
        if line == b"*":
            self.sendBadResponse(tag, b"AUTHENTICATE cancelled")
            return
        try:
            chal.setResponse(b"" if line == b"=" else base64.b64decode(line, validate=True))
        except (binascii.Error, imap4.IllegalClientResponse):
            self.sendBadResponse(tag, b"Malformed SASL response")
            return
        if chal.moreChallenges():
            self._saslChallenge(chal, tag)
            return
        self.portal.login(chal, None, imap4.IAccount).addCallbacks(
            self._loggedIn, self._loginFailed, callbackArgs=(tag,), errbackArgs=(tag,))

    def _loggedIn(self, result, tag) -> None:
        _iface, avatar, logout = result
        self.account, self._onLogout, self.state = avatar, logout, "auth"
        self.setTimeout(self.POSTAUTH_TIMEOUT)
        caps = b" ".join(self.listCapabilities())
        self.sendPositiveResponse(tag, b"[CAPABILITY " + caps + b"] Logged in")

    def _loginFailed(self, failure, tag) -> None:
        if failure.check(UnauthorizedLogin, UnhandledCredentials):
            self.sendNegativeResponse(tag, b"[AUTHENTICATIONFAILED] Authentication failed.")
        else:  # the type only: a failure's text could quote what the client sent
            log.error("sandbox login failed unexpectedly: %s", failure.type.__name__)
            self.sendBadResponse(tag, b"Server error")


@implementer(ICredentialsChecker)
class PasswordChecker:
    """User name (any case) and password against the sandbox accounts' passwords."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, passwords: dict[str, bytes]) -> None:
        self._passwords = passwords

    def requestAvatarId(self, credentials):
        user, given = credentials.username, credentials.password
        user = (user.decode("utf-8", "replace") if isinstance(user, bytes) else user).lower()
        given = given if isinstance(given, bytes) else given.encode("utf-8")
        expected = self._passwords.get(user)
        if expected is not None and hmac.compare_digest(given, expected):
            return defer.succeed(user)
        return defer.fail(UnauthorizedLogin())


@implementer(IRealm)
class Realm:
    """The logged-in user's :class:`~gateway.demo.sandbox_store.Account`, with nothing to do at
    logout."""

    def __init__(self, accounts: dict[str, Account]) -> None:
        self._accounts = accounts

    def requestAvatar(self, avatarId, mind, *interfaces):
        if imap4.IAccount not in interfaces:
            raise NotImplementedError("the sandbox serves IMAP accounts only")
        return imap4.IAccount, self._accounts[avatarId], lambda: None
