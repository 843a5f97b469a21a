"""The wiring of the access log: the local chained log is the evidence of record whatever else
is configured (DESIGN.md, Fleet; issue 27)."""

from __future__ import annotations

import socket
from pathlib import Path

from beiand.accesslog import query, verify
from beiand.accesslog.reader import Query
from beiand.runtime.settings import parse_config
from beiand.runtime.wiring import access_log_sinks
from tests.unit.accesslog.helpers import rec


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once closed


def test_with_clickhouse_configured_every_record_is_in_the_local_log(tmp_path: Path) -> None:
    """Issue 27, defect 1: with [accesslog.clickhouse] the sink wrote to ClickHouse *instead of*
    the local log, whose chain then held no record."""
    cfg = parse_config(f'[daemon]\ngateway = "gw-a"\n[accesslog]\ndirectory = "{tmp_path / "log"}"\n'
                       f'[accesslog.clickhouse]\nurl = "http://127.0.0.1:{_closed_port()}"\n', "t.toml")
    alog, ch, sinks = access_log_sinks(cfg, 0)
    assert ch is not None
    try:
        for i in range(50):
            sinks[0].on_connection(rec(i))  # type: ignore[attr-defined]
        for s in sinks:
            s.flush()
    finally:
        for s in sinks:
            s.close()
        alog.close()  # hands the last committed records to the copy
        ch.close()
    got = list(query(tmp_path / "log", Query(0, 2**62)))
    assert len(got) == 50
    assert verify(tmp_path / "log").ok
    # ClickHouse unreachable: its copy waits in the spill, each row with its chain fields.
    assert ch.stats.spilled == 50
    from beiand.accesslog.format import read_open
    from beiand.accesslog.store import partition_paths

    rows = [ln for p in partition_paths(tmp_path / "log" / "spill") for fr in read_open(p).frames
            for ln in fr.payload.splitlines()]
    assert [r.split(b"\t")[-5:-2] for r in rows[:2]] == [[b"2026-09-21/w0", b"1", b"1"], [b"2026-09-21/w0", b"2", b"2"]]
