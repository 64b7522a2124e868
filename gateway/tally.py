"""Counters for the pure layers: plain dictionaries that :mod:`gateway.metrics` exports.

What: a process-wide :data:`TALLY` of counters, each a ``dict`` from label values to a count,
that the IMAP session (a pure state machine, DESIGN.md: it imports no I/O or service library,
prometheus_client included) and the SMTP handler add to.  :mod:`gateway.metrics` turns them into
Prometheus counter families at each scrape, under the names registered here.

Why plain dictionaries: an IMAP command, a chunk of bytes relayed, is the hot path; one dict
update is all it costs (no lock: everything that adds runs on the gateway's event loop).
"""

from __future__ import annotations

__all__ = ["TALLY", "Tally"]


class Tally:
    """Named counters; :meth:`counter` hands out the dict itself, for the hot path to update."""

    def __init__(self) -> None:
        self._counters: dict[str, dict[tuple[str, ...], float]] = {}

    def counter(self, name: str) -> dict[tuple[str, ...], float]:
        """The counter ``name`` (created empty): label values -> count."""
        return self._counters.setdefault(name, {})

    def add(self, name: str, labels: tuple[str, ...], amount: float = 1) -> None:
        series = self.counter(name)
        series[labels] = series.get(labels, 0) + amount

    def snapshot(self, name: str) -> dict[tuple[str, ...], float]:
        """A copy of the counter ``name``'s series, for an exporter."""
        return dict(self._counters.get(name, {}))


#: The gateway's counters (see :mod:`gateway.metrics` for their names, labels and meaning).
TALLY = Tally()
