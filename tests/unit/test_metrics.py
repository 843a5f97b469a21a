"""Worker snapshots → Prometheus: counters stay monotonic when a worker is replaced."""

from __future__ import annotations

from prometheus_client import generate_latest

from beiand.runtime.metrics import Metrics


def value(m: Metrics, line_start: str) -> float:
    for line in generate_latest(m.registry).decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(line_start)


def test_counters_sum_worker_deltas_and_survive_a_restart() -> None:
    m = Metrics()
    m.worker_snapshot(0, 100, {"counters": {"obs:tls-sni": 5, "verdict:unfiled": 2, "va:unfiled/flag": 2, "kernel_drops": 0}})
    m.worker_snapshot(0, 100, {"counters": {"obs:tls-sni": 8, "verdict:unfiled": 2}})
    m.worker_snapshot(1, 101, {"counters": {"obs:tls-sni": 1}})
    assert value(m, 'beiand_observations_total{kind="tls-sni"}') == 9
    # worker 0 replaced by pid 102: its counters start again from zero, the metric does not go down
    m.forget(100)
    m.worker_snapshot(0, 102, {"counters": {"obs:tls-sni": 3}})
    assert value(m, 'beiand_observations_total{kind="tls-sni"}') == 12
    assert value(m, 'beiand_verdict_actions_total{action="flag",verdict="unfiled"}') == 2
    assert value(m, 'beiand_capture_kernel_drops_total{worker="0"}') == 0  # exported even with no drops


def test_gauges_and_histograms() -> None:
    m = Metrics(["lo"])
    m.worker_snapshot(0, 1, {"gauges": {"flows": 7, "log_pending": 3, "chain_head": 123}, "fsync": [0.002], "latency": [0.0004]})
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
    m.worker_snapshot(0, 100, {"counters": {"ch_written": 10, "ch_spilled": 4, "ch_write_errors": 2}, "gauges": {"ch_spilling": 1}})
    m.worker_snapshot(0, 100, {"counters": {"ch_written": 14, "ch_spilled": 4, "ch_replayed": 4, "ch_write_errors": 2, "ch_lost": 0},
                               "gauges": {"ch_spilling": 0}})
    m.worker_snapshot(1, 101, {"counters": {"ch_written": 1, "ch_lost": 3}})
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
    m.worker_snapshot(0, 11, {"counters": {"reassembly_evicted:tcp": 5, "worker_crashes": 1, "worker_crash_lost_records": 3}})
    m.worker_snapshot(0, 11, {"counters": {"reassembly_evicted:tcp": 7}})
    text = generate_latest(m.registry).decode()
    assert 'beiand_reassembly_evicted_total{kind="tcp"} 7.0' in text
    assert 'beiand_reassembly_evicted_total{kind="fragment"} 0.0' in text  # exported before the first eviction
    assert "beiand_worker_crashes_total 1.0" in text and "beiand_worker_crash_lost_records_total 3.0" in text
