"""Checkpoints of the embedded log go to a small ClickHouse table (issue 14): a fake server
over HTTP, as ClickHouse's interface is; the real server is in tests/integration."""

from __future__ import annotations

import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from beiand.accesslog import AccessLog, LogConfig
from beiand.accesslog.reader import parse_anchor_line
from beiand.model import MetricKey
from beiand.sinks.clickhouse import ClickHouseSink
from tests.unit.accesslog.helpers import rec


def test_checkpoints_reach_the_anchors_table(tmp_path: Path) -> None:
    seen: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("query", [""])[0]
            seen.append((q or body.decode(errors="replace"), body if q else b""))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        ch = ClickHouseSink(f"http://127.0.0.1:{srv.server_address[1]}", tmp_path / "spill", interval=0.05)
        with AccessLog(LogConfig(tmp_path / "log", gateway="gw-1"), on_checkpoint=ch.anchor) as log:
            for i in range(10):
                log.append(rec(i))
            log.flush()
            log.checkpoint()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(b"\n" in b for q, b in seen if "access_log_anchors FORMAT" in q) < 1:
            time.sleep(0.05)
        ch.close()
    finally:
        srv.shutdown()
    assert any(q.startswith("CREATE TABLE IF NOT EXISTS beiand.access_log_anchors") for q, _ in seen)
    rows = [ln for q, b in seen if "INSERT INTO beiand.access_log_anchors" in q for ln in b.decode().splitlines()]
    anchors = [parse_anchor_line(ln, "ch") for ln in rows]
    assert [(a.partition, a.count) for a in anchors if a] == [("2026-09-21/w0", 0), ("2026-09-21/w0", 10)]
    assert all('"gateway": "gw-1"' in ln for ln in rows)


def test_metrics_report_the_sinks_own_counters_and_the_spilling_gauge(tmp_path: Path) -> None:
    """Issue 26: the sink reports its own counters under the exported names; ClickHouse
    unreachable: the records spill, the errors are counted, the gauge says so."""
    from beiand.model import MetricKey as K

    srv = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = srv.server_address[1]
    srv.server_close()  # nothing listens there now
    ch = ClickHouseSink(f"http://127.0.0.1:{port}", tmp_path / "spill", interval=0.05, max_backoff=0.1)
    try:
        assert ch.metrics() == {K("beiand_clickhouse_records_written"): 0, K("beiand_clickhouse_records_spilled"): 0,
                                K("beiand_clickhouse_records_replayed"): 0, K("beiand_clickhouse_write_errors"): 0,
                                K("beiand_clickhouse_lost_records"): 0, K("beiand_clickhouse_spilling"): 0}
        with AccessLog(LogConfig(tmp_path / "log"), on_commit=ch.committed) as log:
            for i in range(3):
                log.append(rec(i))
        ch.flush()
        m = ch.metrics()
    finally:
        ch.close()
    assert m[K("beiand_clickhouse_records_spilled")] == 3 and m[K("beiand_clickhouse_records_written")] == 0
    assert m[K("beiand_clickhouse_write_errors")] >= 1 and m[K("beiand_clickhouse_lost_records")] == 0
    assert m[K("beiand_clickhouse_spilling")] == 1


def test_the_ddl_makes_the_lookup_tables_by_name_and_client_filled_by_views_on_every_version() -> None:
    """Issue 27 (the bar: a name over 60 days in <= 2 s): a table ordered by (name | client,
    time) beside the access log, holding the rows' keys, filled by a materialized view on insert;
    on 18.16 too (no projections there, skipping indexes experimental). The version gates stay."""
    from beiand.sinks.clickhouse import cluster_ddl, ddl, lookup_backfill, lookup_tables

    assert lookup_tables("access_log") == {"name": "access_log_by_name", "client_ip": "access_log_by_client"}
    for version, gated in (((18, 16), False), ((20, 1), True)):
        stmts = ddl("beiand", "access_log", version, retention_days=184)
        text = "\n".join(stmts)
        assert ("INDEX name_idx" in text) is gated and ("TTL day + INTERVAL 184 DAY" in text) is gated
        by_name = next(s for s in stmts if "TABLE IF NOT EXISTS beiand.access_log_by_name " in s)
        assert "ENGINE = ReplacingMergeTree PARTITION BY day ORDER BY (name, ts_ms, server_ip, server_port, gateway, worker, seq)" \
            in by_name
        assert ("TTL day + INTERVAL 184 DAY" in by_name) is gated
        assert "CREATE MATERIALIZED VIEW IF NOT EXISTS beiand.access_log_by_client_mv TO beiand.access_log_by_client AS " \
            "SELECT client_ip, ts_ms, server_ip, server_port, gateway, worker, seq, " in text
        assert text.index("beiand.access_log (") < text.index("_mv TO")  # the table before the views that read it
    cl = "\n".join(cluster_ddl("beiand", "access_log", "c1"))
    assert "CREATE TABLE IF NOT EXISTS beiand.access_log_by_name_local" in cl
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/beiand/access_log_by_name', '{replica}')" in cl
    assert "beiand.access_log_by_name_mv TO beiand.access_log_by_name_local AS SELECT name" in cl
    assert "FROM beiand.access_log_local" in cl
    fill = lookup_backfill("beiand", "access_log", "2026-11-23")
    assert fill[0] == ("INSERT INTO beiand.access_log_by_name (name, ts_ms, server_ip, server_port, gateway, worker, seq, day) "
                       "SELECT name, ts_ms, server_ip, server_port, gateway, worker, seq, day FROM beiand.access_log "
                       "WHERE day = toDate('2026-11-23')")


def test_the_queue_is_bounded_a_slow_server_makes_the_copy_spill_without_loss(tmp_path: Path) -> None:
    """Issue 27: ClickHouse slower than the log (each insert takes 50 ms): the records waiting in
    memory stay near ``max_queued`` (plus what the log commits while one drain syncs): the rest
    spills, in order, and is replayed; ClickHouse ends with every record once."""
    import re
    from collections import Counter

    from beiand.sinks.clickhouse import CHAINED

    seq_at = CHAINED.index("seq")
    got: Counter[int] = Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("query", [""])[0] or body.decode()
            answer = b""
            if q.startswith("SELECT version()"):
                answer = b"18.16.1\n"
            elif q.startswith("SELECT") and "seq BETWEEN" in q:
                m = re.search(r"seq BETWEEN (\d+) AND (\d+)", q)
                assert m is not None
                with lock:
                    answer = b"%d\n" % sum(1 for s in range(int(m[1]), int(m[2]) + 1) if got[s])
            elif q.startswith("INSERT INTO beiand.slow ("):
                time.sleep(0.05)
                with lock:
                    got.update(int(ln.split(b"\t")[seq_at]) for ln in body.splitlines())
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    n, bound = 60_000, 3_000
    try:
        ch = ClickHouseSink(f"http://127.0.0.1:{srv.server_address[1]}", tmp_path / "spill", table="slow",
                            batch_records=250, interval=0.02, max_queued=bound)
        with AccessLog(LogConfig(tmp_path / "log", commit_interval=0.01, commit_records=500), on_commit=ch.committed) as log:
            for i in range(n):
                log.append(rec(i))
                if i % 500 == 0:
                    time.sleep(0.002)  # a gateway's pace, not a loop's
        ch.flush(timeout=120)
        ch.close()
    finally:
        srv.shutdown()
    assert ch.stats.overflows >= 1 and ch.stats.spilled > 0
    # The bound, and what the log commits while the sender moves the queue to disk (one sync):
    # far from every record (~all of them before the bound: the log outruns the server 20-fold).
    assert ch.stats.queued_peak <= bound + n // 3, ch.stats
    assert sorted(got) == list(range(1, n + 1)) and set(got.values()) == {1}
    assert ch.metrics()[MetricKey("beiand_clickhouse_lost_records")] == 0
