"""Every sink has the same lifecycle: on_decision, flush, close, stats."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from beiand.accesslog import AccessLog, LogConfig
from beiand.model import Action, Decision, Kind, Mode, Observation, Transport, Verdict, VerdictKind
from beiand.sinks import Sink
from beiand.sinks.accesslog import AccessLogSink
from beiand.sinks.active import ActiveResourceAggregate
from beiand.sinks.clickhouse import ClickHouseSink
from beiand.sinks.jsonlines import JsonLines

D = Decision(Verdict(VerdictKind.UNFILED, None, "no-filing"), Action.FLAG, "monitor:unfiled", Mode.MONITOR, "cust-1", "bj")
OBS = Observation(1_790_000_000.0, "10.0.0.1", 40000, "198.51.100.7", 443, Transport.TCP, Kind.TLS_SNI, "a.example.com", "a.example.com")


@pytest.mark.parametrize("cls", [AccessLogSink, ActiveResourceAggregate, JsonLines])
def test_the_sink_protocol(cls: type) -> None:
    for member in ("on_decision", "flush", "close", "stats"):
        assert callable(getattr(cls, member)), f"{cls.__name__}.{member}"


def test_lifecycle_of_the_access_log_and_the_aggregate(tmp_path: Path) -> None:
    alog = AccessLog(LogConfig(tmp_path))
    sinks: list[Sink] = [AccessLogSink(alog, "gw"), ActiveResourceAggregate(), JsonLines(io.BytesIO())]
    for s in sinks:
        s.on_decision(OBS, D)
        s.flush()
    assert alog.stats.written == 1
    assert sinks[1].stats() == {"tls-sni/unfiled/flag": 1, "view_dropped": 0}
    for s in sinks:
        s.close()
    assert alog.pending == 0


def test_clickhouse_is_a_record_writer_behind_the_access_log_sink() -> None:
    for member in ("append", "flush", "close", "counters"):
        assert callable(getattr(ClickHouseSink, member))


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
