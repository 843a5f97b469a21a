"""Everything that acts on decisions, behind one ``Sink``: the access log (local or ClickHouse),
JSON lines, the active-resource aggregate.

A sink has a lifecycle (fail2ban's actions): ``on_decision`` per decision, ``flush`` to make what
it holds durable or visible, ``close`` once at the end, ``metrics`` for its own counters (the
worker exports every sink's). The pipeline calls ``on_decision`` and ``flush``; one sink failing
never stops the others (it is counted).
"""

from __future__ import annotations

from typing import Protocol

from beiand.errors import BeiandError
from beiand.model import AccessRecord, Decision, MetricValues, Observation, Outcome


class OutputClosed(BeiandError):
    """Raised by a sink whose reader went away (``beiand replay --json | head``): the run stops
    there, quietly. Any other sink error is logged and counted, and the run goes on."""


class Sink(Protocol):
    """What acts on decisions: the access log, ClickHouse, JSON lines, the active-resource view."""

    def on_decision(self, obs: Observation, decision: Decision, outcome: Outcome = Outcome.NONE) -> None:
        """One decision, and what the enforcer did with it (``Outcome.NONE`` without an enforcer)."""
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def metrics(self) -> MetricValues:
        """The sink's own counters and gauges by Prometheus series (``runtime/metrics.py``); what a
        writer behind it counts, the writer reports itself."""
        ...


class ConnectionSink(Protocol):
    """A sink that also keeps connection records (issue 19): the access log, JSON lines. The
    pipeline builds the record: it knows the inventory (and is given the gateway)."""

    def on_connection(self, rec: AccessRecord) -> None: ...


__all__ = ["ConnectionSink", "OutputClosed", "Sink"]
