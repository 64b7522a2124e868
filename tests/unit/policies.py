"""Policies for driving the pure session: one that lets alice do everything, and a builder."""

from __future__ import annotations

from gateway.live_policy import LivePolicy
from policy import parse_policy


def fixed_policy(mailboxes: dict, offices: dict | None = None) -> LivePolicy:
    """A :class:`LivePolicy` built in memory from TOML-shaped tables."""
    data = {"offices": offices or {"legale": {"groups": ["legale"]}}, "mailboxes": mailboxes}
    return LivePolicy.fixed(parse_policy(data, "<test policy>"))


#: Office "legale" (group legale) may do everything on every folder of "protocollo".
OPEN = fixed_policy({"protocollo": {"rules": [{"office": "legale", "folders": "*", "rights": "lrswipkxtea"}]}})
