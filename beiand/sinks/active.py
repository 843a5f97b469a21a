"""The active-resource aggregate: per (name, server, account, verdict) first/last seen and hits,
passed on to the supervisor's view in small batches (``take``). Decisions are counted once, by
the pipeline (``Pipeline.metrics``); the aggregate keeps only what its rows need."""

from __future__ import annotations

import time
from collections.abc import Iterable

from beiand.model import Decision, MetricKey, MetricValues, Observation, Outcome

# Rows of the active-resource view go to the main process in small messages between snapshots:
# gathering 128 rows takes about 0.3 ms of the capture loop (5,000 at once stalled it for 14 ms,
# the whole p99 of the decision latency).
ROWS_PER_MESSAGE = 128
MAX_CHANGED_ROWS = 100_000  # rows waiting to be sent; beyond this the view drops (and counts) them

# A row of the active-resource view: name, server ip, server port, account, verdict, kind,
# action, first seen, last seen, hits since the last take.
ViewRow = tuple[str, str, int, str, str, str, str, float, float, float]


class ActiveResourceAggregate:
    """Sink: per-(name, server, account, verdict) summaries for the active-resource view."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, int, str, str, str, str], list[float]] = {}
        self.changed: set[tuple[str, str, int, str, str, str, str]] = set()
        self.latency: list[float] = []  # packet → decision, seconds (taken by take_latency)
        self.view_dropped = 0  # rows the view could not keep up with (the access log has them all)

    def on_decision(self, obs: Observation, d: Decision, outcome: Outcome = Outcome.NONE) -> None:
        # Plain strings (an enum member's _value_), not the members: cheaper to pickle and compare.
        # The action as done (the access log's): a block not carried out is a flag.
        v, kind = d.verdict.verdict._value_, obs.kind._value_
        action = "flag" if outcome and outcome is not Outcome.DONE else d.action._value_
        key = (obs.name, obs.server_ip, obs.server_port, d.account, v, kind, action)
        row = self.rows.get(key)
        if row is None:
            self.rows[key] = [obs.ts, obs.ts, 1]  # first seen, last seen, hits since the last take()
        else:
            row[1] = obs.ts
            row[2] += 1
        changed = self.changed
        if key not in changed:
            if len(changed) >= MAX_CHANGED_ROWS:
                self.view_dropped += 1
            else:
                changed.add(key)
        if len(self.latency) < 10_000:
            self.latency.append(time.time() - obs.ts)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def metrics(self) -> MetricValues:
        """The decisions left out of the view (rows it could not keep up with)."""
        return {MetricKey("beiand_active_view_dropped"): self.view_dropped}

    def take_latency(self) -> list[float]:
        """Packet → decision latencies measured since the last call (for the histogram)."""
        taken, self.latency = self.latency, []
        return taken

    def take(self, limit: int = ROWS_PER_MESSAGE) -> list[ViewRow]:
        """The rows touched since the last call, with the hits since then (the main process adds
        them up); at most ``limit`` per call so one message stays small."""
        changed = self.changed
        if len(changed) <= limit:
            keys: Iterable[tuple[str, str, int, str, str, str, str]] = changed
            self.changed = set()
        else:
            keys = [changed.pop() for _ in range(limit)]
        rows = self.rows
        out: list[ViewRow] = []
        for k in keys:
            row = rows[k]
            out.append((*k, row[0], row[1], row[2]))
            row[2] = 0
        if len(rows) > 200_000:  # bounded: forget rows with nothing left to send
            self.rows = {k: self.rows[k] for k in self.changed}
        return out
