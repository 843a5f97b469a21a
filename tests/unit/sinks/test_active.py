"""The active-resource aggregate reports its own counters only (decisions are the pipeline's to
count: ``Pipeline.decisions``) and hands its latency samples over once. Its rows and their
plumbing to the main process: tests/unit/runtime/test_supervisor.py."""

from __future__ import annotations

import pytest

from beiand.model import Action, Decision, Kind, MetricKey, Mode, Observation, Transport, Verdict, VerdictKind
from beiand.sinks import active
from beiand.sinks.active import ActiveResourceAggregate

UNFILED = Decision(Verdict(VerdictKind.UNFILED, None, "no-filing"), Action.FLAG, "monitor:unfiled", Mode.MONITOR, "cust-1", "bj")


def obs(i: int) -> Observation:
    name = f"n{i}.example.com"
    return Observation(1_790_000_000.0, "10.0.0.1", 40000, "198.51.100.7", 443, Transport.TCP, Kind.TLS_SNI, name, name)


def test_metrics_count_the_rows_left_out_of_the_view_not_the_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(active, "MAX_CHANGED_ROWS", 3)
    agg = ActiveResourceAggregate()
    for i in range(5):
        agg.on_decision(obs(i), UNFILED)
    assert agg.metrics() == {MetricKey("beiand_active_view_dropped"): 2}
    assert not hasattr(agg, "counts")


def test_latency_samples_are_taken_once() -> None:
    agg = ActiveResourceAggregate()
    agg.on_decision(obs(1), UNFILED)
    agg.on_decision(obs(2), UNFILED)
    first = agg.take_latency()
    assert len(first) == 2 and all(s > 0 for s in first)
    assert agg.take_latency() == []
