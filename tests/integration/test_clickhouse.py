"""The ClickHouse sink against a real server: stop it mid-stream, start it again, count."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from beiand.accesslog.format import DAY_MS
from beiand.sinks.clickhouse import ClickHouseSink
from tests.integration.clickhouse import ClickHouse
from tests.unit.accesslog.helpers import DAY0, rec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if not ClickHouse.available():
        pytest.fail("clickhouse-server is not installed (scripts/system-deps installs it)")
    ch = ClickHouse(tmp_path_factory.mktemp("clickhouse"))
    ch.start()
    yield ch
    ch.stop()


def test_records_survive_a_server_outage_without_loss_or_duplicates(server: ClickHouse, tmp_path: Path) -> None:
    sink = ClickHouseSink(server.url, tmp_path / "spill", table="outage", batch_records=500, interval=0.05, max_backoff=0.5)
    n = 0
    for _ in range(10):
        for _ in range(300):
            sink.append(rec(n))
            n += 1
        time.sleep(0.02)
    sink.flush()
    assert server.query("SELECT count() FROM beiand.outage").strip() == str(n)
    # Stop the server mid-stream (SIGKILL: no graceful goodbye) and keep writing.
    server.stop(kill=True)
    for _ in range(20):
        for _ in range(300):
            sink.append(rec(n))
            n += 1
        time.sleep(0.02)
    sink.flush()  # durable in the spill
    assert sink.spilling and sink.stats.spilled > 0
    server.start()
    for _ in range(5):
        for _ in range(300):
            sink.append(rec(n))
            n += 1
    deadline = time.monotonic() + 60
    while sink.spilling and time.monotonic() < deadline:
        sink.flush()
        time.sleep(0.1)
    sink.close()
    assert not sink.spilling
    total, distinct = server.query("SELECT count(), uniqExact(ts_ms) FROM beiand.outage").split()
    assert int(total) == n and int(distinct) == n
    # In order within each worker: ClickHouse has them all; the spill is gone.
    assert not list((tmp_path / "spill").glob("*/w0.open"))


def test_a_replay_cut_short_is_not_sent_twice(server: ClickHouse, tmp_path: Path) -> None:
    # A spill left by a previous process, half of which had already reached ClickHouse.
    spill = tmp_path / "spill"
    first = ClickHouseSink("http://127.0.0.1:1", spill, table="crash", batch_records=100, interval=0.05, max_backoff=0.2)
    for i in range(1000):
        first.append(rec(i))
    first.flush()
    first.close()
    assert first.stats.spilled == 1000
    sink = ClickHouseSink(server.url, spill, table="crash", batch_records=100, interval=0.05)
    deadline = time.monotonic() + 30
    while sink.spilling and time.monotonic() < deadline:
        time.sleep(0.05)
    sink.close()
    assert server.query("SELECT count() FROM beiand.crash").strip() == "1000"
    # The same spill again (as if the process died before deleting it): lookups, no duplicates.
    again = ClickHouseSink("http://127.0.0.1:1", spill, table="crash", batch_records=100, interval=0.05, max_backoff=0.2)
    for i in range(1000):
        again.append(rec(i))
    again.flush()
    again.close()
    uncertain = spill / "uncertain-w0.ids"
    uncertain.write_text("".join(sorted(set(uncertain.read_text().split()) if uncertain.exists() else set())))
    sink = ClickHouseSink(server.url, spill, table="crash", batch_records=100, interval=0.05)
    sink._uncertain |= set(_spill_ids(sink))  # every batch is in doubt
    deadline = time.monotonic() + 30
    while sink.spilling and time.monotonic() < deadline:
        time.sleep(0.05)
    sink.close()
    assert sink.stats.skipped_duplicates == 1000
    assert server.query("SELECT count() FROM beiand.crash").strip() == "1000"


def _spill_ids(sink: ClickHouseSink) -> list[str]:
    from beiand.sinks.clickhouse import batch_id

    return [batch_id(p.splitlines(keepends=True)) for _, _, p in sink._spill_frames()]


def test_retention_drops_only_whole_old_days(server: ClickHouse, tmp_path: Path) -> None:
    sink = ClickHouseSink(server.url, tmp_path / "spill", table="retention", interval=0.05)
    for day in range(4):
        for i in range(10):
            sink.append(rec(i, day))
    sink.flush()
    dropped = sink.retire(now_ms=DAY0 + 61 * DAY_MS + 1)
    assert dropped == ["2026-09-21"]
    assert server.query("SELECT count() FROM beiand.retention").strip() == "30"
    sink.close()
    with pytest.raises(ValueError, match="Order 292"):
        ClickHouseSink(server.url, tmp_path / "s2", retention_days=30)


def test_a_daemon_exports_the_sink_counters_through_a_clickhouse_outage(tmp_path: Path) -> None:
    """``beiand run`` writing to a real ClickHouse that is killed and started again: the written,
    spilled, replayed and write-error counters move on /metrics (the alerts in rules/ watch them),
    nothing is lost, and ClickHouse ends with one row per decision."""
    from tests.integration.nsdaemon import NsDaemon, metric, require_root

    require_root()
    if not ClickHouse.available():
        pytest.fail("clickhouse-server is not installed (scripts/system-deps installs it)")
    ch = ClickHouse(tmp_path / "clickhouse")
    d = NsDaemon(tmp_path / "daemon", extra=f'\n[accesslog.clickhouse]\nurl = "{ch.url}"\nbatch_records = 20\n')
    ch.netns = d.ns  # the daemon reaches it on the namespace's loopback
    W, S, R = ("beiand_clickhouse_records_written_total", "beiand_clickhouse_records_spilled_total",
               "beiand_clickhouse_records_replayed_total")
    E, L = "beiand_clickhouse_write_errors_total", "beiand_clickhouse_lost_records_total"

    def decided(m: str) -> float:
        return metric(m, "beiand_verdicts_total")

    try:
        ch.start()
        d.start()
        d.dns_answers([f"site{i}.example.cn" for i in range(20)])
        m = d.wait_for(lambda m: decided(m) > 0 and metric(m, W) == decided(m), what="records written to ClickHouse")
        assert metric(m, S) == metric(m, E) == metric(m, L) == 0
        ch.stop(kill=True)
        d.dns_answers([f"site{i}.example.cn" for i in range(20, 40)])
        m = d.wait_for(lambda m: metric(m, S) > 0 and metric(m, W) + metric(m, S) == decided(m) and metric(m, E) > 0,
                       what="records spilled while ClickHouse is down")
        assert metric(m, 'beiand_clickhouse_spilling{worker="0"}') == 1
        spilled = metric(m, S)
        ch.start()
        d.dns_answers([f"site{i}.example.cn" for i in range(40, 60)])  # new records while the spill waits
        m = d.wait_for(lambda m: metric(m, R) >= spilled and metric(m, W) == decided(m)
                       and metric(m, 'beiand_clickhouse_spilling{worker="0"}') == 0, timeout=45, what="spill replayed")
        assert metric(m, L) == 0
        assert metric(m, R) == metric(m, S)  # every spilled record was replayed
        rows, names = ch.query("SELECT count(), uniqExact(name) FROM beiand.access_log").split()
        assert int(rows) == decided(m) and int(names) == 60
    finally:
        d.close()
        ch.stop()


def test_checkpoints_land_in_the_anchors_table_and_verify_reads_them(server: ClickHouse, tmp_path: Path) -> None:
    """Issue 14: anchors off the machine; `SELECT … FORMAT JSONEachRow` is an anchors file."""
    from beiand.accesslog import AccessLog, LogConfig, verify
    from beiand.accesslog.reader import read_anchors

    sink = ClickHouseSink(server.url, tmp_path / "spill", table="anchored", interval=0.05)
    d = tmp_path / "log"
    with AccessLog(LogConfig(d, gateway="gw-ch"), on_checkpoint=sink.anchor) as log:
        for i in range(100):
            log.append(rec(i))
        log.flush()
        log.checkpoint()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.query("EXISTS TABLE beiand.access_log_anchors").strip() != "1":
        time.sleep(0.1)
    while time.monotonic() < deadline and server.query("SELECT count() FROM beiand.access_log_anchors").strip() != "2":
        time.sleep(0.1)
    sink.close()
    rows = server.query("SELECT * FROM beiand.access_log_anchors ORDER BY ts_ms, `count` FORMAT JSONEachRow")
    f = tmp_path / "anchors.jsonl"
    f.write_text(rows)
    anchors = read_anchors(f)
    assert [(a.partition, a.count) for a in anchors] == [("2026-09-21/w0", 0), ("2026-09-21/w0", 100)]
    assert verify(d, anchors=anchors).ok


def test_a_table_made_before_connection_records_gets_their_columns_and_old_spill_still_lands(server: ClickHouse, tmp_path: Path) -> None:
    from beiand.accesslog.format import encode
    from beiand.sinks.clickhouse import COLUMNS_V1, ddl

    old = ddl("beiand", "before19")[1]
    for col in ("direction String, method String, url String, packets UInt64, octets UInt64,",):
        old = old.replace(col, "")
    server.query(old)
    assert "direction" not in server.query("SELECT name FROM system.columns WHERE database = 'beiand' AND table = 'before19'")
    sink = ClickHouseSink(server.url, tmp_path / "spill", table="before19", batch_records=10, interval=0.05)
    # A batch written by the version before: 17 fields a line, as a spill from before an upgrade holds.
    v1 = [b"\t".join(encode(rec(i)).split(b"\t")[:len(COLUMNS_V1)]) + b"\n" for i in range(3)]
    assert all(ln.count(b"\t") == len(COLUMNS_V1) - 1 and ln.endswith(b"\n") for ln in v1)
    new = rec(3)._replace(direction="in", method="GET", url="/a", packets=4, octets=900)
    sink.append(new)
    sink.flush()
    import asyncio

    asyncio.run(_insert_v1(sink, v1))
    sink.close()
    rows = server.query("SELECT ts_ms, direction, method, url, packets, octets FROM beiand.before19 ORDER BY ts_ms").splitlines()
    assert len(rows) == 4
    assert rows[-1].split("\t")[1:] == ["in", "GET", "/a", "4", "900"]
    assert all(r.split("\t")[1:] == ["", "", "", "0", "0"] for r in rows[:3])


async def _insert_v1(sink: ClickHouseSink, lines: list[bytes]) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        sink._session = session
        await sink._insert(lines, "v1batch")
