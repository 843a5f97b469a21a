"""The ClickHouse sink against a real server: stop it mid-stream, start it again, count."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from beiand.accesslog import AccessLog, LogConfig, Query, query, verify
from beiand.accesslog.copy import verify_copy
from beiand.accesslog.format import DAY_MS
from beiand.sinks.clickhouse import CHAINED, COLUMNS, ClickHouseReader, ClickHouseSink
from tests.integration.clickhouse import ClickHouse, started
from tests.unit.accesslog.helpers import DAY0, rec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouse]:
    yield from started(tmp_path_factory)


def logged(d: Path, sink: ClickHouseSink, gateway: str = "gw-test", worker: int = 0, **kw: Any) -> AccessLog:
    """The local log, copying what it commits to ``sink`` (as the daemon's wiring does)."""
    return AccessLog(LogConfig(d, gateway=gateway, worker=worker, **kw), on_commit=sink.committed, on_checkpoint=sink.anchor)


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def local_records(d: Path) -> int:
    return sum(1 for _ in query(d, Query(0, 2**62)))


def test_records_survive_a_server_outage_without_loss_or_duplicates(server: ClickHouse, tmp_path: Path) -> None:
    """Issue 27: ClickHouse stopped during traffic until records spill, then started again:
    ClickHouse holds every record of the local log once, and both verify clean."""
    sink = ClickHouseSink(server.url, tmp_path / "spill", table="outage", batch_records=500, interval=0.05, max_backoff=0.5)
    log = logged(tmp_path / "log", sink, commit_interval=0.05)
    n = 0

    def traffic(k: int) -> None:
        nonlocal n
        for _ in range(k):
            log.append(rec(n))
            n += 1

    traffic(3000)
    log.flush()
    sink.flush()
    assert server.query("SELECT count() FROM beiand.outage").strip() == str(n)
    # Stop the server mid-stream (SIGKILL: no graceful goodbye) and keep writing until records spill.
    server.stop(kill=True)
    while sink.stats.spilled < 5000:
        traffic(300)
        log.flush()
        sink.flush()  # durable in the spill
    assert sink.spilling
    server.start()
    traffic(1500)  # new records while the spill waits
    log.flush()
    wait_for(lambda: not sink.spilling and (sink.flush() or True) and not sink.spilling, "the spill replayed")
    log.close()
    sink.close()
    assert sink.stats.replayed == sink.stats.spilled
    total, distinct = server.query("SELECT count(), uniqExact(gateway, worker, seq) FROM beiand.outage").split()
    assert int(total) == int(distinct) == n == local_records(tmp_path / "log")
    assert verify(tmp_path / "log").ok
    assert not list((tmp_path / "spill").glob("*/w0.open"))  # the spill is gone
    rep = verify_copy(ClickHouseReader(server.url, table="outage").rows())
    assert rep.ok and rep.workers[("gw-test", 0)].rows == n and rep.duplicates == 0, rep.problems


def test_a_replay_cut_short_is_not_sent_twice(server: ClickHouse, tmp_path: Path) -> None:
    # A spill left by a process that could not reach ClickHouse.
    spill = tmp_path / "spill"
    first = ClickHouseSink("http://127.0.0.1:1", spill, table="crash", batch_records=100, interval=0.05, max_backoff=0.2)
    with logged(tmp_path / "log", first) as log:
        for i in range(1000):
            log.append(rec(i))
    first.close()
    assert first.stats.spilled == 1000
    shutil.copytree(spill, tmp_path / "spill-copy")
    sink = ClickHouseSink(server.url, spill, table="crash", batch_records=100, interval=0.05)
    wait_for(lambda: not sink.spilling, "the spill replayed", 30)
    sink.close()
    assert server.query("SELECT count() FROM beiand.crash").strip() == "1000"
    # The same spill again (as if the process died before deleting it): lookups, no duplicates.
    shutil.rmtree(spill)
    shutil.copytree(tmp_path / "spill-copy", spill)
    (spill / "uncertain-w0.ids").unlink(missing_ok=True)
    sink = ClickHouseSink(server.url, spill, table="crash", batch_records=100, interval=0.05, max_backoff=0.2)
    sink._uncertain |= set(_spill_ids(sink))  # every batch is in doubt
    wait_for(lambda: not sink.spilling, "the spill replayed", 30)
    sink.close()
    assert sink.stats.skipped_duplicates == 1000
    assert server.query("SELECT count(), uniqExact(gateway, worker, seq) FROM beiand.crash").split() == ["1000", "1000"]


def test_a_spill_of_the_previous_version_is_sent_after_the_upgrade(server: ClickHouse, tmp_path: Path) -> None:
    """Issue 35: rows of the copy spilled by the beiand before records_version (28 fields) are
    inserted by the upgraded one with their own columns, records_version left empty."""
    spill = tmp_path / "spill"
    first = ClickHouseSink("http://127.0.0.1:1", spill, table="upgraded", batch_records=100, interval=0.05, max_backoff=0.2)
    with logged(tmp_path / "log", first) as log:
        for i in range(300):
            log.append(rec(i))
    first.close()
    assert first.stats.spilled == 300
    at = COLUMNS.index("records_version")
    frames = [[b"\t".join(f[:at] + f[at + 1:]) for f in (ln.split(b"\t") for ln in p.splitlines(keepends=True))]
              for _, _, p in first._spill_frames()]
    shutil.rmtree(spill)
    old = AccessLog(LogConfig(spill, worker=0, seal=False, anchors=False), start=False)
    for lines in frames:
        assert {ln.count(b"\t") + 1 for ln in lines} == {len(CHAINED) - 1}
        old.write_lines(lines)
    old.flush()
    old.close()
    sink = ClickHouseSink(server.url, spill, table="upgraded", batch_records=100, interval=0.05, max_backoff=0.2)
    wait_for(lambda: not sink.spilling, "the spill replayed", 30)
    sink.close()
    assert sink.stats.replayed == 300
    assert server.query("SELECT count(), uniqExact(gateway, worker, seq), countIf(records_version = '') "
                        "FROM beiand.upgraded").split() == ["300", "300", "300"]


def _spill_ids(sink: ClickHouseSink) -> list[str]:
    from beiand.sinks.clickhouse import batch_id

    return [batch_id(p.splitlines(keepends=True)) for _, _, p in sink._spill_frames()]


def test_retention_drops_only_whole_old_days(server: ClickHouse, tmp_path: Path) -> None:
    sink = ClickHouseSink(server.url, tmp_path / "spill", table="retention", interval=0.05)
    with logged(tmp_path / "log", sink) as log:
        for day in range(4):
            for i in range(10):
                log.append(rec(i, day))
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
    while time.monotonic() < deadline and server.query("SELECT count() FROM beiand.access_log_anchors WHERE gateway = 'gw-ch'").strip() != "2":
        time.sleep(0.1)
    sink.close()
    rows = server.query("SELECT * FROM beiand.access_log_anchors WHERE gateway = 'gw-ch' ORDER BY ts_ms, `count` "
                        "FORMAT JSONEachRow")
    f = tmp_path / "anchors.jsonl"
    f.write_text(rows)
    anchors = read_anchors(f)
    assert [(a.partition, a.count) for a in anchors] == [("2026-09-21/w0", 0), ("2026-09-21/w0", 100)]
    assert verify(d, anchors=anchors).ok


# The table as issue 14 made it (before the columns of issues 19 and 27, ordered by name and client).
TABLE_BEFORE_19 = """CREATE TABLE beiand.{t} (
    ts_ms UInt64, account String, client_ip String, client_port UInt16, server_ip String, server_port UInt16,
    transport String, kind String, name String, verdict String, action String, filing_number String,
    gateway String, reason String, nat String, calling_number String, order_no String,
    batch String, worker UInt16,
    day Date DEFAULT toDate(toDateTime(intDiv(ts_ms, 1000)), 'UTC')
) ENGINE = MergeTree PARTITION BY day ORDER BY (day, name, client_ip, ts_ms)"""


def test_an_older_table_is_upgraded_in_place_and_old_spill_still_lands(server: ClickHouse, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Issues 19 and 27: the columns an older table lacks are added (the chain fields too); its sort
    key cannot change in place: the sink says so (what the operator does is in docs/access-log.md)."""
    from beiand.accesslog.format import encode
    from beiand.sinks.clickhouse import COLUMNS_V1

    server.query("CREATE DATABASE IF NOT EXISTS beiand")
    server.query(TABLE_BEFORE_19.format(t="before19"))
    assert "direction" not in server.query("SELECT name FROM system.columns WHERE database = 'beiand' AND table = 'before19'")
    sink = ClickHouseSink(server.url, tmp_path / "spill", table="before19", batch_records=10, interval=0.05)
    # A batch written by the version before: 17 fields a line, as a spill from before an upgrade holds.
    v1 = [b"\t".join(encode(rec(i)).split(b"\t")[:len(COLUMNS_V1)]) + b"\n" for i in range(3)]
    assert all(ln.count(b"\t") == len(COLUMNS_V1) - 1 and ln.endswith(b"\n") for ln in v1)
    new = rec(3)._replace(direction="in", method="GET", url="/a", packets=4, octets=900)
    with logged(tmp_path / "log", sink) as log:
        log.append(new)
    sink.flush()
    import asyncio

    asyncio.run(_insert_v1(sink, v1))
    sink.close()
    cols = server.query("SELECT name FROM system.columns WHERE database = 'beiand' AND table = 'before19'").split()
    assert {"direction", "outcome", "partition", "seq", "pos", "link"} <= set(cols)
    rows = server.query("SELECT ts_ms, direction, method, url, packets, octets, seq FROM beiand.before19 ORDER BY ts_ms").splitlines()
    assert len(rows) == 4
    assert rows[-1].split("\t")[1:] == ["in", "GET", "/a", "4", "900", "1"]
    assert all(r.split("\t")[1:] == ["", "", "", "0", "0", "0"] for r in rows[:3])
    assert sink.outdated.startswith("is MergeTree ORDER BY (day, name, client_ip, ts_ms)")
    assert any("sort key cannot change in place" in r.getMessage() for r in caplog.records)


def test_a_new_table_is_ordered_for_the_lawful_request(server: ClickHouse, tmp_path: Path) -> None:
    sink = ClickHouseSink(server.url, tmp_path / "spill", table="fresh", interval=0.05)
    with logged(tmp_path / "log", sink) as log:
        log.append(rec(1))
    sink.close()
    engine, key = server.query("SELECT engine, sorting_key FROM system.tables WHERE database = 'beiand' "
                               "AND name = 'fresh'").rstrip("\n").split("\t")
    assert (engine, key) == ("ReplacingMergeTree", "server_ip, server_port, ts_ms, gateway, worker, seq")
    assert sink.outdated == ""


async def _insert_v1(sink: ClickHouseSink, lines: list[bytes]) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        sink._session = session
        await sink._insert(lines, "v1batch")


def _mutate(server: ClickHouse, sql: str) -> None:
    """An ALTER … DELETE/UPDATE, waited for (18.16 has no mutations_sync)."""
    server.query(sql)
    wait_for(lambda: server.query("SELECT count() FROM system.mutations WHERE is_done = 0").strip() == "0", "the mutation")


@pytest.mark.parametrize("edit", ["delete", "alter"])
def test_verify_clickhouse_recomputes_each_gateway_chain_and_names_an_edited_row(
        server: ClickHouse, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: str) -> None:
    """Issue 27: `logs verify --clickhouse` is clean on the copy of two gateways (two workers one
    of them, partitions rolled), then names the row (gateway, worker, partition, seq) deleted or
    altered in ClickHouse."""
    from beiand.cli import main

    table = f"verify_{edit}"
    sinks = []
    for gw, worker in (("gw-a", 0), ("gw-a", 1), ("gw-b", 0)):
        sink = ClickHouseSink(server.url, tmp_path / f"spill-{gw}-{worker}", table=table, worker=worker, interval=0.05)
        with logged(tmp_path / gw, sink, gateway=gw, worker=worker, partition_records=400) as log:
            for i in range(1000):
                log.append(rec(i, gateway=gw))
                if i in (250, 700):
                    log.flush()
                    log.checkpoint()
        sinks.append(sink)
    for sink in sinks:
        sink.close()
    args = ["logs", "verify", "--clickhouse", server.url, "--table", table]
    assert main(args) == 0, capsys.readouterr().out
    text = capsys.readouterr().out
    assert "verify --clickhouse: ok" in text and "gw-b" in text
    # One gateway, one day (the bench's gateway-day): only its rows and its anchors.
    assert main([*args, "--gateway", "gw-b", "--since", "2026-09-21T00:00Z", "--until", "2026-09-21T00:00Z", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert [(w["gateway"], w["rows"]) for w in one["workers"]] == [("gw-b", 1000)] and one["anchors_checked"] >= 2
    assert main([*args, "--since", "2026-09-22T00:00Z", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["workers"] == []
    # Record 501 of gw-a's worker 1 is record 101 of its second partition (w1.p1).
    where = "gateway = 'gw-a' AND worker = 1 AND seq = 501"
    if edit == "delete":
        _mutate(server, f"ALTER TABLE beiand.{table} DELETE WHERE {where}")
    else:
        _mutate(server, f"ALTER TABLE beiand.{table} UPDATE account = 'someone-else' WHERE {where}")
    assert main(args) == 1
    text = capsys.readouterr().out
    failed = [ln for ln in text.splitlines() if ln.startswith("FAILED")]
    if edit == "delete":
        assert failed == ["FAILED: gateway gw-a worker 1 seq 501 (partition 2026-09-21/w1.p1 record(s) 101-101): missing: "
                          "deleted from the copy"], text
    else:
        assert failed == ["FAILED: gateway gw-a worker 1 partition 2026-09-21/w1.p1 seq 501 (record 101 of the partition): "
                          "altered: the record and its link do not follow from seq 500"], text


def test_the_cluster_table_on_one_node_replicated_and_distributed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The cluster DDL of docs/access-log.md on a one-node cluster (ZooKeeper for replication):
    the copy goes through the Distributed table into the replicated one and verifies."""
    from beiand.cli import main
    from tests.integration.clickhouse import ZooKeeper

    if not ZooKeeper.available():
        pytest.fail("zookeeper is not installed (scripts/system-deps installs it)")
    zk = ZooKeeper(tmp_path / "zk")
    zk.start()
    ch = ClickHouse(tmp_path / "ch", zookeeper=zk.port)
    try:
        ch.start()
        sink = ClickHouseSink(ch.url, tmp_path / "spill", cluster="beiand_test", interval=0.05)
        with logged(tmp_path / "log", sink, gateway="gw-c") as log:
            for i in range(500):
                log.append(rec(i, gateway="gw-c"))
            log.flush()
            log.checkpoint()
        sink.close()
        engines = ch.query("SELECT name, engine FROM system.tables WHERE database = 'beiand' AND name LIKE 'access_log%' "
                           "ORDER BY name").split()
        assert engines == ["access_log", "Distributed", "access_log_anchors", "MergeTree", "access_log_by_client_local",
                           "ReplicatedReplacingMergeTree", "access_log_by_client_mv", "MaterializedView",
                           "access_log_by_name_local", "ReplicatedReplacingMergeTree", "access_log_by_name_mv",
                           "MaterializedView", "access_log_local", "ReplicatedReplacingMergeTree"]
        assert ch.query("SELECT count() FROM beiand.access_log_local").strip() == "500"
        # Each node's lookup tables are filled from its rows (the Distributed insert lands there).
        assert ch.query("SELECT count() FROM beiand.access_log_by_name_local").strip() == "500"
        assert sink.outdated == ""
        assert main(["logs", "verify", "--clickhouse", ch.url]) == 0, capsys.readouterr().out
    finally:
        ch.stop()
        zk.stop()


def test_records_committed_before_a_crash_but_not_copied_are_copied_at_the_next_start(server: ClickHouse, tmp_path: Path) -> None:
    """Issue 27: the process stops between the log's commit and the copy's (kill -9): the next
    start queues what the copy missed, from the local log, and looks up what may have arrived."""
    d, spill = tmp_path / "log", tmp_path / "spill"

    def start() -> tuple[AccessLog, ClickHouseSink]:
        sink = ClickHouseSink(server.url, spill, table="backfill", batch_records=100, interval=0.05)
        log = logged(d, sink, partition_records=250)
        sink.backfill(d, log.sequence)
        return log, sink

    log, sink = start()
    for i in range(300):
        log.append(rec(i))
    log.close()
    sink.close()
    with AccessLog(LogConfig(d, gateway="gw-test", partition_records=250)) as crashed:  # commits, copies nothing
        for i in range(300, 700):
            crashed.append(rec(i))
    (spill / "copied-w0.seq").write_text("280\n")  # …and the last 20 copied were never noted
    log, sink = start()
    for i in range(700, 750):
        log.append(rec(i))
    log.close()
    sink.close()
    assert server.query("SELECT count(), uniqExact(seq), min(seq), max(seq) FROM beiand.backfill").split() == \
        ["750", "750", "1", "750"]
    assert sink.stats.checked >= 1  # the backfilled batches were looked up (20 rows had arrived)
    rep = verify_copy(ClickHouseReader(server.url, table="backfill").rows())
    assert rep.ok and rep.duplicates == 0, rep.problems


def test_the_lookup_tables_are_filled_on_insert_and_answer_a_name_or_client_by_the_primary_key(
        server: ClickHouse, tmp_path: Path) -> None:
    """Issue 27: the lookup tables by name and by client (materialized views TO them) get a row
    for every row the sink inserts; a name or a client looked up there and read back through the
    table's primary key gives what a scan of the table gives."""
    sink = ClickHouseSink(server.url, tmp_path / "spill", table="looked", interval=0.05, batch_records=100)
    with logged(tmp_path / "log", sink) as log:
        for i in range(1000):
            log.append(rec(i))
    sink.close()
    tables = server.query("SELECT name, engine FROM system.tables WHERE database = 'beiand' AND name LIKE 'looked%' "
                          "ORDER BY name FORMAT TabSeparated").split()
    assert tables == ["looked", "ReplacingMergeTree", "looked_by_client", "ReplacingMergeTree", "looked_by_client_mv",
                      "MaterializedView", "looked_by_name", "ReplacingMergeTree", "looked_by_name_mv", "MaterializedView"]
    assert server.query("SELECT sorting_key FROM system.tables WHERE database = 'beiand' AND name = 'looked_by_name'").strip() \
        == "name, ts_ms, server_ip, server_port, gateway, worker, seq"
    for t in ("looked_by_name", "looked_by_client"):
        assert server.query(f"SELECT count(), uniqExact(seq), min(day) FROM beiand.{t}").split() == ["1000", "1000", "2026-09-21"]
    for col, value in (("name", "www3.example2.cn"), ("client_ip", "10.0.3.10")):
        lt = "looked_by_name" if col == "name" else "looked_by_client"
        scan = server.query(f"SELECT seq FROM beiand.looked WHERE {col} = '{value}' ORDER BY seq").split()
        via = server.query(f"SELECT seq FROM beiand.looked WHERE {col} = '{value}' AND (server_ip, server_port, ts_ms) IN "
                           f"(SELECT server_ip, server_port, ts_ms FROM beiand.{lt} WHERE {col} = '{value}') ORDER BY seq").split()
        assert via == scan and len(scan) >= (5 if col == "name" else 1)
    # `logs query --name` on the copy (beiand.sinks.fleet) reads through the lookup table (a client is scanned).
    import ipaddress

    from beiand.sinks.fleet import FleetRecords

    fleet = FleetRecords(ClickHouseReader(server.url, table="looked"))
    assert fleet.lookups() == {"name": "beiand.looked_by_name", "client_ip": "beiand.looked_by_client"}
    for q in (Query(0, 2**62, name="www3.example2.cn"), Query(0, 2**62, client=ipaddress.ip_network("10.0.3.10"))):
        got = [r.seq for r in fleet.rows(q)]
        assert sorted(got) == [i + 1 for i in range(1000) if q.match(rec(i))], q


def test_a_table_made_before_its_lookup_tables_gets_them_with_its_rows(server: ClickHouse, tmp_path: Path) -> None:
    """Upgrading in place: the documented table without lookup tables (as part A made it) holding
    rows: at start the sink creates them and puts the rows already there into them, day by day."""
    from beiand.sinks.clickhouse import ddl

    server.query("CREATE DATABASE IF NOT EXISTS beiand")
    server.query(ddl("beiand", "partA")[1])  # the table alone
    sink = ClickHouseSink(server.url, tmp_path / "spill1", table="partA_tmp", interval=0.05)
    with logged(tmp_path / "log1", sink) as log:
        for i in range(300):
            log.append(rec(i, day=i % 3))
    sink.close()
    server.query("INSERT INTO beiand.partA SELECT * FROM beiand.partA_tmp")
    assert "partA_by_name" not in server.query("SHOW TABLES FROM beiand").split()
    sink = ClickHouseSink(server.url, tmp_path / "spill2", table="partA", interval=0.05)
    with logged(tmp_path / "log2", sink, gateway="gw-new") as log:
        log.append(rec(0, day=4))
    sink.close()
    for t in ("partA_by_name", "partA_by_client"):
        assert server.query(f"SELECT day, count() FROM beiand.{t} GROUP BY day ORDER BY day FORMAT TabSeparated").split() == \
            ["2026-09-21", "100", "2026-09-22", "100", "2026-09-23", "100", "2026-09-25", "1"]
    # A start when they are complete puts nothing in twice.
    sink = ClickHouseSink(server.url, tmp_path / "spill2", table="partA", interval=0.05)
    sink.flush()
    sink.close()
    assert server.query("SELECT count() FROM beiand.partA_by_name").strip() == "301"


def test_verify_reads_records_with_escaped_bytes_apart_in_their_place(server: ClickHouse, tmp_path: Path) -> None:
    """A record whose fields hold a tab, a newline, a backslash or a quote is not a plain join of
    its fields: the reader takes it apart from the fast stream, in its place in the chain."""
    sink = ClickHouseSink(server.url, tmp_path / "spill", table="escaped", interval=0.05)
    odd = {3: {"url": "/a\\b"}, 4: {"name": "x'y.cn"}, 5: {"url": "/t\tab\nnl\rcr"}, 9: {"account": "\\"}}
    with logged(tmp_path / "log", sink) as log:
        for i in range(20):
            log.append(rec(i, **odd.get(i, {})))
    sink.close()
    rep = verify_copy(ClickHouseReader(server.url, table="escaped").rows())
    assert rep.ok and rep.workers[("gw-test", 0)].rows == 20, rep.problems
    _mutate(server, "ALTER TABLE beiand.escaped UPDATE url = '/a\\\\c' WHERE seq = 3")
    rep = verify_copy(ClickHouseReader(server.url, table="escaped").rows())
    assert rep.problems == ["gateway gw-test worker 0 partition 2026-09-21/w0 seq 3 (record 3 of the partition): altered: "
                            "the record and its link do not follow from seq 2"]
