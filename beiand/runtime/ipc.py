"""Worker ↔ supervisor messages: typed NamedTuples, pickled over each worker's pipe (DESIGN.md).

Counters and gauges travel as ``MetricKey`` (``beiand.model``: the Prometheus name and its label
values), the way prometheus client_python's multiprocess mode keys its files: each component of a
worker reports its own (``metrics()``), the worker merges them, and the supervisor folds any of them
in with one generic loop (``Metrics.worker_snapshot``), so a new metric needs no decoding branch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from beiand.model import MetricKey
from beiand.sinks.active import ViewRow

__all__ = ["CloseBreaker", "Go", "MetricKey", "Prepared", "Ready", "Rows", "Snapshot", "ViewRow"]


class Ready(NamedTuple):
    """The worker's pipeline is built and capturing."""

    pid: int


class Prepared(NamedTuple):
    """A replacement worker (a reload) is built and waits for :class:`Go`: it opens the access log
    partition and reads the inline queue only once the worker it replaces has stopped."""

    pid: int


class Rows(NamedTuple):
    """Rows of the active-resource view sent between snapshots (small, often)."""

    rows: list[ViewRow]


class Snapshot(NamedTuple):
    """A worker's state, a few times a second. Counters are cumulative since the worker started
    (the supervisor turns them into deltas per process)."""

    metrics: dict[MetricKey, float]  # counters and gauges by series (``Metrics`` knows which is which)
    fsync: list[float]  # access-log group-commit fsync latencies, seconds
    latency: list[float]  # packet → decision, seconds
    enforce_latency: list[float]  # packet → enforcement on the wire, seconds
    rows: list[ViewRow]
    log_failing: str = ""  # why the access log cannot write, while it cannot
    breaker: str = ""  # why the circuit breaker is open, while it is
    accesslog: dict[str, Any] | None = None  # the log's position (full chain head)
    died: str = ""  # the exception that killed the capture loop (the last snapshot of a dying worker)


class CloseBreaker(NamedTuple):
    """Supervisor → worker: the operator closed the circuit breaker."""


class Go(NamedTuple):
    """Supervisor → a prepared replacement worker: the worker before it has stopped."""


WorkerMessage = Ready | Prepared | Rows | Snapshot
SupervisorCommand = CloseBreaker | Go
