"""The login service: person (directory + OTP), offices (policy), mailbox — one answer per request.

Shared by the IMAP and SMTP fronts.  Opening the provider session is the front's business (it is
protocol-specific); this service answers *who* is logging in and *which mailbox* they get.
"""

from __future__ import annotations

import logging

from gateway.access import choose_mailbox, usable_mailboxes
from gateway.config import MailboxConfig
from gateway.login import Failure, LoginRequest, LoginResult
from policy import offices_of

__all__ = ["LoginService", "AUTH_FAILED_TEXT"]

log = logging.getLogger(__name__)

#: The one text every credential failure gets, whatever the cause (no user enumeration).
AUTH_FAILED_TEXT = "Authentication failed"


class LoginService:
    """Authenticates a :class:`LoginRequest` and picks the mailbox it opens."""

    def __init__(self, authenticator, policy, mailboxes: dict[str, MailboxConfig]) -> None:
        self.authenticator = authenticator
        self.policy = policy  # a LivePolicy: read at every login, so a reload counts at once
        self.mailboxes = mailboxes

    async def login(self, request: LoginRequest) -> LoginResult:
        outcome = await self.authenticator.authenticate(request.username, request.credential,
                                                        client_ip=request.client_ip, protocol=request.protocol,
                                                        session_id=request.session_id)
        person = outcome.person
        if person is None:
            if outcome.reason == "directory_unavailable":
                return LoginResult(False, person=request.username, failure=Failure.UNAVAILABLE,
                                   client_text="The directory is unavailable; try again later",
                                   reason=outcome.reason)
            return LoginResult(False, person=request.username, failure=Failure.AUTHENTICATION,
                               client_text=AUTH_FAILED_TEXT, reason=outcome.reason)
        policy = self.policy.current
        offices = offices_of(person.username, person.groups, policy)
        choice = choose_mailbox(usable_mailboxes(policy, offices, self.mailboxes), request.mailbox)
        groups = tuple(sorted(person.groups))
        if choice.mailbox is None:
            return LoginResult(False, person=person.username, offices=offices, mailbox=request.mailbox,
                               failure=Failure.AUTHORIZATION, client_text=choice.error, reason="no_mailbox",
                               groups=groups)
        return LoginResult(True, person=person.username, offices=offices, mailbox=choice.mailbox.name,
                           reason=outcome.reason, groups=groups)
