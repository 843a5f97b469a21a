"""Every sink has the same lifecycle: on_decision, flush, close, metrics."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from beiand.accesslog import AccessLog, LogConfig
from beiand.model import Action, Decision, Kind, MetricKey, Mode, Observation, Transport, Verdict, VerdictKind
from beiand.sinks import Sink
from beiand.sinks.accesslog import AccessLogSink
from beiand.sinks.active import ActiveResourceAggregate
from beiand.sinks.clickhouse import ClickHouseSink
from beiand.sinks.jsonlines import JsonLines

D = Decision(Verdict(VerdictKind.UNFILED, None, "no-filing"), Action.FLAG, "monitor:unfiled", Mode.MONITOR, "cust-1", "bj")
OBS = Observation(1_790_000_000.0, "10.0.0.1", 40000, "198.51.100.7", 443, Transport.TCP, Kind.TLS_SNI, "a.example.com", "a.example.com")


@pytest.mark.parametrize("cls", [AccessLogSink, ActiveResourceAggregate, JsonLines])
def test_the_sink_protocol(cls: type) -> None:
    for member in ("on_decision", "flush", "close", "metrics"):
        assert callable(getattr(cls, member)), f"{cls.__name__}.{member}"


def test_lifecycle_of_the_access_log_and_the_aggregate(tmp_path: Path) -> None:
    alog = AccessLog(LogConfig(tmp_path))
    sinks: list[Sink] = [AccessLogSink(alog, "gw"), ActiveResourceAggregate(), JsonLines(io.BytesIO())]
    for s in sinks:
        s.on_decision(OBS, D)
        s.flush()
    assert alog.stats.written == 1
    # A sink reports its own counters only: the aggregate its view's drops (decisions are the
    # pipeline's to count), the access-log sink none (its writer, the log, reports what it wrote).
    assert [s.metrics() for s in sinks] == [{}, {MetricKey("beiand_active_view_dropped"): 0}, {}]
    for s in sinks:
        s.close()
    assert alog.pending == 0


def test_clickhouse_copies_what_the_access_log_commits() -> None:
    """Issue 27: ClickHouse is no record writer beside the log (it took the log's place): it is
    handed what the log committed (``on_commit``) and its checkpoints (``on_checkpoint``)."""
    for member in ("committed", "anchor", "flush", "close", "metrics"):
        assert callable(getattr(ClickHouseSink, member))
    assert not hasattr(ClickHouseSink, "append")


def test_the_access_log_sink_writes_the_nat_side_of_a_mapping(tmp_path: Path) -> None:
    """MPS Order 82 art. 8 (issue 19): the record carries the public endpoint of a NAT mapping."""
    from beiand.accesslog import Query, query
    from beiand.policy.nat import load_nat

    feed = tmp_path / "nat.csv"
    feed.write_text("public,internal,account,valid_from,valid_to\n203.0.113.5:10443,198.51.100.7:443,cust-1,,\n")
    alog = AccessLog(LogConfig(tmp_path / "log"))
    sink = AccessLogSink(alog, "gw", nat=load_nat(feed))
    sink.on_decision(OBS, D)
    sink.on_decision(OBS._replace(server_ip="198.51.100.8"), D)
    sink.flush()
    sink.close()
    got = list(query(tmp_path / "log", Query()))
    assert [r.nat for r in got] == ["203.0.113.5:10443", ""]


def test_a_connection_record_gets_the_nat_side_too(tmp_path: Path) -> None:
    """A flow no name came for is traced through the mapping like a named one (issue 19)."""
    from beiand.accesslog import Query, query
    from beiand.accesslog.format import NFIELDS
    from beiand.model import UNNAMED, AccessRecord
    from beiand.policy.nat import load_nat

    feed = tmp_path / "nat.csv"
    feed.write_text("public,internal,account,valid_from,valid_to\n203.0.113.5:10022,198.51.100.7:22,cust-1,,\n")
    alog = AccessLog(LogConfig(tmp_path / "log"))
    sink = AccessLogSink(alog, "gw", nat=load_nat(feed))
    base = AccessRecord(*([0] * NFIELDS))._replace(
        ts_ms=1_764_000_000_000, account="cust-1", client_ip="192.0.2.1", client_port=50000, server_ip="198.51.100.7",
        server_port=22, transport="tcp", kind="conn", name="", verdict=UNNAMED, action="log", filing_number="", gateway="gw",
        reason="no-data", nat="", calling_number="", order="", direction="in", method="", url="", packets=1, octets=60)
    sink.on_connection(base)
    sink.on_connection(base._replace(server_port=23))
    sink.flush()
    sink.close()
    assert [r.nat for r in query(tmp_path / "log", Query())] == ["203.0.113.5:10022", ""]
