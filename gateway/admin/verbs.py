"""The admin verbs of a running gateway: what each ``pecgw`` command asks of it.

Each verb is ``async (args, operator) -> JSON-ready result``; bad arguments raise
:class:`~gateway.admin.server.AdminError` with a line for the operator.
"""

from __future__ import annotations

import asyncio
import os

from gateway.admin.server import AdminError, Handler
from gateway.audit.events import Action, AuditEvent, Decision, utc_now

__all__ = ["MAX_REASON", "admin_verbs"]

MAX_REASON = 500  # characters of a revocation's reason (the CLI checks it too, also with no gateway)
CENSUS_WAIT_S = 20.0  # at most this long for probes before ``census`` answers with what it has
_OTP_CHANGES = {"enrolled": Action.OTP_ENROLLED, "reset": Action.OTP_RESET}


def _name(args: dict, key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value or len(value) > 256 or not value.isprintable():
        raise AdminError(f"{key}: a name is required")
    return value


def admin_verbs(gateway) -> dict[str, Handler]:
    """The verbs, bound to ``gateway`` (a :class:`gateway.app.Gateway`)."""
    access = gateway.access

    async def ping(args: dict, operator: str) -> dict:
        return {"pid": os.getpid(), "version": gateway.services.version, "sessions": len(gateway.services.live)}

    async def sessions(args: dict, operator: str) -> list[dict]:
        return sorted((s.as_dict() for s in gateway.services.live), key=lambda d: (d["since"], d["session"]))

    async def revoke(args: dict, operator: str) -> dict:
        reason = args.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            raise AdminError(f"reason: at most {MAX_REASON} characters of text")
        return await access.revoke(_name(args, "person"), by=operator, reason=reason or None)

    async def lift(args: dict, operator: str) -> dict:
        return await access.lift(_name(args, "person"), by=operator)

    async def revocations(args: dict, operator: str) -> list[dict]:
        return access.revoked_people()

    async def kick(args: dict, operator: str) -> dict:
        return await access.kick(_name(args, "session"), by=operator)

    async def reload(args: dict, operator: str) -> dict:
        error = gateway.reload()
        if error is not None:
            raise AdminError(f"the policy was not reloaded (the one in force stays): {error}")
        return {"policy": str(gateway.config.policy_file)}

    async def otp_changed(args: dict, operator: str) -> dict:
        """``pecgw otp enroll`` / ``reset`` changed the vault: audit it, drop old trust windows."""
        person, change = _name(args, "person"), args.get("change")
        if change not in _OTP_CHANGES:
            raise AdminError(f"change: one of {', '.join(_OTP_CHANGES)}")
        windows = gateway.trust.forget(person)
        gateway.audit.emit(AuditEvent(when=utc_now(), session_id="admin", protocol="admin",
                                      action=_OTP_CHANGES[change], decision=Decision.ALLOW, person=person,
                                      detail={"by": operator, "trust_windows_dropped": windows}))
        return {"person": person, "trust_windows_dropped": windows}

    async def census(args: dict, operator: str) -> dict:
        """``pecgw mailboxes``: the latest probe of each mailbox (``refresh``: probe them now)."""
        from gateway.mailbox_census import census_row

        watch, cfg = gateway.census, gateway.config.census
        wait_s = min(cfg.probe_timeout_s, CENSUS_WAIT_S)  # the CLI waits 30 s for an answer
        if args.get("refresh") is True:
            try:
                async with asyncio.timeout(wait_s):
                    await watch.refresh()  # a round that takes longer goes on; the latest results are sent
            except TimeoutError:
                pass
        else:
            await watch.wait_first(wait_s)  # just started: the first round is under way
        rows = [census_row(m, gateway.policy.current, watch.latest(name), gateway.credentials.last_accepted.get(name),
                           cfg.quota_warn) for name, m in sorted(gateway.config.mailboxes.items())]
        return {"quota_warn": cfg.quota_warn, "unhandled_age_s": cfg.unhandled_age_s, "mailboxes": rows}

    return {"ping": ping, "sessions": sessions, "revoke": revoke, "lift": lift, "revocations": revocations,
            "kick": kick, "reload": reload, "otp-changed": otp_changed, "census": census}
