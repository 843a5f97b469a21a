"""Every reload of a running daemon goes through the records guard (issue 14).

``records.max_loss`` against the index in service: a truncated export sent by SIGHUP or by
``POST /api/v1/reload`` is refused, the old index keeps serving (the verdicts do not change),
and the refusal is logged, counted and shown in ``/readyz`` and ``/api/v1/status``.
``records.max_age_hours``: records loaded from an old export are flagged stale.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.nsdaemon import NsDaemon, metric, require_root, write_records

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsDaemon]:
    require_root()
    # watch_interval = 0: only the signal and the API reload here, never a file change by itself.
    d = NsDaemon(tmp_path_factory.mktemp("reload"), records=100, daemon_extra="watch_interval = 0",
                 records_extra="max_age_hours = 24")
    try:
        d.start()
        yield d
    finally:
        d.close()


def reloads(m: str) -> float:
    return metric(m, "beiand_reloads_total")


def test_a_truncated_export_is_refused_on_sighup_and_on_the_api_and_verdicts_stay(daemon: NsDaemon) -> None:
    names = [f"site{i}.example.cn" for i in (0, 9, 10, 50, 99)]
    before = {n: daemon.verdict(n) for n in names}
    assert set(before.values()) == {"filed"}
    m0 = daemon.metrics()
    assert metric(m0, "beiand_records_filings") == 100
    assert metric(m0, "beiand_records_reload_refused_total") == 0

    write_records(daemon.records, 10)  # 90% of the filings gone
    daemon.hup()
    m1 = daemon.wait_metric("beiand_reloads_total", reloads(m0))
    assert reloads(m1) == reloads(m0) + 1
    assert {n: daemon.verdict(n) for n in names} == before  # site10..99 are still filed
    assert metric(m1, "beiand_records_reload_refused_total") == 1
    assert metric(m1, "beiand_records_filings") == 100
    assert metric(m1, "beiand_last_reload_successful") == 0
    code, body = daemon.get("/readyz")
    ready = daemon.json("/readyz")
    assert code == 200 and ready["ready"], body  # the old index serves: still ready, with the why in the details
    refused = ready["details"]["records"]["reload_refused"]
    assert refused["count"] == 1 and str(daemon.records) in refused["reason"] and "max_loss" in refused["reason"]
    assert refused["filings_offered"] == 10 and refused["filings_in_service"] == 100
    st = daemon.json("/api/v1/status")
    assert st["records"]["reload_refused"]["reason"] == refused["reason"] and st["filings"] == 100
    assert "refused" in daemon.log() and str(daemon.records) in daemon.log()

    # The workers decide with the old index too: live traffic after the refusal is still "filed".
    daemon.dns_answers(["site50.example.cn", "site77.example.cn"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = {r["name"]: r["verdict"] for r in daemon.json("/api/v1/observations")}
        if {"site50.example.cn", "site77.example.cn"} <= set(seen):
            break
        time.sleep(0.2)
    assert seen == {"site50.example.cn": "filed", "site77.example.cn": "filed"}

    assert daemon.post("/api/v1/reload") == 202
    m2 = daemon.wait_metric("beiand_reloads_total", reloads(m1))
    assert metric(m2, "beiand_records_reload_refused_total") == 2
    assert {n: daemon.verdict(n) for n in names} == before
    assert daemon.json("/api/v1/status")["records"]["reload_refused"]["count"] == 2

    # A loss within max_loss (5% < 20%) is accepted: the guard is a bound, not a freeze.
    write_records(daemon.records, 95)
    daemon.hup()
    m3 = daemon.wait_metric("beiand_reloads_total", reloads(m2))
    assert metric(m3, 'beiand_reloads_total{result="success"}') == metric(m2, 'beiand_reloads_total{result="success"}') + 1
    assert metric(m3, "beiand_records_filings") == 95 and metric(m3, "beiand_last_reload_successful") == 1
    assert metric(m3, "beiand_records_reload_refused_total") == 2
    assert daemon.verdict("site50.example.cn") == "filed" and daemon.verdict("site99.example.cn") == "unfiled"
    assert daemon.json("/readyz")["details"]["records"]["reload_refused"] is None


def test_records_from_an_old_export_are_flagged_stale(daemon: NsDaemon) -> None:
    m0 = daemon.metrics()
    assert metric(m0, "beiand_records_stale") == 0
    assert metric(m0, "beiand_records_max_age_seconds") == 24 * 3600  # records.max_age_hours = 24 reaches the daemon
    write_records(daemon.records, 95)
    old = time.time() - 3 * 86400
    os.utime(daemon.records, (old, old))
    daemon.hup()
    m1 = daemon.wait_metric("beiand_reloads_total", reloads(m0))
    assert metric(m1, "beiand_records_stale") == 1
    assert metric(m1, "beiand_records_age_seconds") >= 3 * 86400 - 60
    rec = daemon.json("/readyz")["details"]["records"]
    assert rec["stale"] and rec["age_seconds"] >= 3 * 86400 - 60 and rec["max_age_seconds"] == 86400
    assert daemon.json("/api/v1/status")["records"]["stale"]
    # A fresh export clears it.
    write_records(Path(daemon.records), 95)
    daemon.hup()
    m2 = daemon.wait_metric("beiand_reloads_total", reloads(m1))
    assert metric(m2, "beiand_records_stale") == 0


def test_a_truncated_export_noticed_on_disk_is_refused_too(tmp_path: Path) -> None:
    require_root()
    d = NsDaemon(tmp_path, records=100, daemon_extra="watch_interval = 0.2")
    try:
        d.start()
        m0 = d.metrics()
        write_records(d.records, 50)  # half gone: more than max_loss = 0.2
        m1 = d.wait_metric("beiand_records_reload_refused_total", 0)
        assert metric(m1, "beiand_records_reload_refused_total") == 1 and reloads(m1) == reloads(m0) + 1
        assert d.verdict("site80.example.cn") == "filed"
        assert d.json("/api/v1/status")["records"]["reload_refused"]["trigger"] == "file change"
    finally:
        d.close()
