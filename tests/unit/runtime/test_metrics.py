"""Worker snapshots → Prometheus: counters stay monotonic when a worker is replaced."""

from __future__ import annotations

from prometheus_client import generate_latest

from beiand.runtime.ipc import MetricKey as K
from beiand.runtime.ipc import Snapshot
from beiand.runtime.metrics import Metrics


def snap(counters=None, gauges=None, fsync=(), latency=()) -> Snapshot:
    return Snapshot({**(counters or {}), **(gauges or {})}, list(fsync), list(latency), [], [])


def value(m: Metrics, line_start: str) -> float:
    for line in generate_latest(m.registry).decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(line_start)


def test_counters_sum_worker_deltas_and_survive_a_restart() -> None:
    m = Metrics()
    m.worker_snapshot(0, 100, snap({K("beiand_observations", ("tls-sni",)): 5, K("beiand_verdicts", ("unfiled",)): 2,
                                 K("beiand_verdict_actions", ("unfiled", "flag")): 2, K("beiand_capture_kernel_drops", ("0",)): 0}))
    m.worker_snapshot(0, 100, snap({K("beiand_observations", ("tls-sni",)): 8, K("beiand_verdicts", ("unfiled",)): 2}))
    m.worker_snapshot(1, 101, snap({K("beiand_observations", ("tls-sni",)): 1}))
    assert value(m, 'beiand_observations_total{kind="tls-sni"}') == 9
    # worker 0 replaced by pid 102: its counters start again from zero, the metric does not go down
    m.forget(100)
    m.worker_snapshot(0, 102, snap({K("beiand_observations", ("tls-sni",)): 3}))
    assert value(m, 'beiand_observations_total{kind="tls-sni"}') == 12
    assert value(m, 'beiand_verdict_actions_total{action="flag",verdict="unfiled"}') == 2
    assert value(m, 'beiand_capture_kernel_drops_total{worker="0"}') == 0  # exported even with no drops


def test_gauges_and_histograms() -> None:
    m = Metrics(["lo"])
    m.worker_snapshot(0, 1, snap(gauges={K("beiand_flows", ("0",)): 7, K("beiand_accesslog_pending_records", ("0",)): 3,
                                      K("beiand_accesslog_chain_head_prefix", ("0",)): 123}, fsync=[0.002], latency=[0.0004]))
    text = generate_latest(m.registry).decode()
    assert 'beiand_flows{worker="0"} 7.0' in text and "beiand_accesslog_fsync_seconds_count 1.0" in text
    assert 'beiand_interface_packets_total{direction="rx",interface="lo"}' in text


def test_clickhouse_sink_counters_are_exported_in_base_units() -> None:
    m = Metrics()
    text = generate_latest(m.registry).decode()
    for name in ("beiand_clickhouse_records_written_total", "beiand_clickhouse_records_spilled_total",
                 "beiand_clickhouse_records_replayed_total", "beiand_clickhouse_write_errors_total",
                 "beiand_clickhouse_lost_records_total"):
        assert f"\n{name} 0.0" in text  # 0 even without ClickHouse: "no errors" is an answer
    m.worker_snapshot(0, 100, snap({K("beiand_clickhouse_records_written"): 10, K("beiand_clickhouse_records_spilled"): 4,
                                 K("beiand_clickhouse_write_errors"): 2}, {K("beiand_clickhouse_spilling", ("0",)): 1}))
    m.worker_snapshot(0, 100, snap({K("beiand_clickhouse_records_written"): 14, K("beiand_clickhouse_records_spilled"): 4,
                                 K("beiand_clickhouse_records_replayed"): 4, K("beiand_clickhouse_write_errors"): 2,
                                 K("beiand_clickhouse_lost_records"): 0}, {K("beiand_clickhouse_spilling", ("0",)): 0}))
    m.worker_snapshot(1, 101, snap({K("beiand_clickhouse_records_written"): 1, K("beiand_clickhouse_lost_records"): 3}))
    assert value(m, "beiand_clickhouse_records_written_total") == 15
    assert value(m, "beiand_clickhouse_records_spilled_total") == 4
    assert value(m, "beiand_clickhouse_records_replayed_total") == 4
    assert value(m, "beiand_clickhouse_write_errors_total") == 2
    assert value(m, "beiand_clickhouse_lost_records_total") == 3
    assert value(m, 'beiand_clickhouse_spilling{worker="0"}') == 0


def test_reassembly_evictions_and_worker_crashes_are_exported() -> None:
    from prometheus_client import generate_latest

    from beiand.runtime.metrics import Metrics

    m = Metrics()
    m.worker_snapshot(0, 11, snap({K("beiand_reassembly_evicted", ("tcp",)): 5, K("beiand_worker_crashes"): 1,
                              K("beiand_worker_crash_lost_records"): 3}))
    m.worker_snapshot(0, 11, snap({K("beiand_reassembly_evicted", ("tcp",)): 7}))
    text = generate_latest(m.registry).decode()
    assert 'beiand_reassembly_evicted_total{kind="tcp"} 7.0' in text
    assert 'beiand_reassembly_evicted_total{kind="fragment"} 0.0' in text  # exported before the first eviction
    assert "beiand_worker_crashes_total 1.0" in text and "beiand_worker_crash_lost_records_total 3.0" in text


def test_every_metric_a_component_reports_is_declared() -> None:
    """Components spell their metrics by name (model.MetricKey) in their own modules; a name the
    supervisor does not know would fail there."""
    import re
    from pathlib import Path

    import beiand

    m = Metrics()
    sent = {name for p in Path(beiand.__file__).parent.rglob("*.py")
            for name in re.findall(r'MetricKey\("(beiand_\w+)"', p.read_text(encoding="utf-8"))}
    assert {"beiand_decode_errors", "beiand_capture_kernel_packets", "beiand_accesslog_records", "beiand_observations",
            "beiand_inline_seconds", "beiand_clickhouse_records_written", "beiand_active_view_dropped"} <= sent
    assert not sent - set(m._counters) - set(m._gauges)


def test_the_series_labelled_by_worker_are_those_the_worker_labels() -> None:
    """metrics.PER_WORKER (the worker adds its number to these) against the declarations."""
    from beiand.runtime.metrics import PER_WORKER

    m = Metrics()
    declared = {name for name, metric in {**m._counters, **m._gauges}.items() if metric._labelnames[:1] == ("worker",)}
    assert declared == PER_WORKER
    assert all((m._counters | m._gauges)[name]._labelnames[0] == "worker" for name in PER_WORKER)  # the worker first


def test_a_snapshot_sets_gauges_and_adds_counter_deltas_from_one_mapping() -> None:
    m = Metrics()
    m.worker_snapshot(0, 7, Snapshot({K("beiand_flows", ("0",)): 9, K("beiand_accesslog_records"): 4}, [], [], [], []))
    m.worker_snapshot(0, 7, Snapshot({K("beiand_flows", ("0",)): 2, K("beiand_accesslog_records"): 6}, [], [], [], []))
    assert value(m, 'beiand_flows{worker="0"}') == 2  # a gauge: the last value
    assert value(m, "beiand_accesslog_records_total") == 6  # a counter: cumulative, not 4 + 6
