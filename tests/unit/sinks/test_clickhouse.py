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
