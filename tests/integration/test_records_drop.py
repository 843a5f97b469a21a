"""The drop directory with ``records.source = "store"`` (issue 35): one gateway on its SQLite store
imports its watched export as a version of the register and judges with it; a changed export that
loses 90% of the filings is refused (counted, shown in ``/readyz``) and the version in force keeps
judging; a good change is imported and applied; the access log says which version decided."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.nsdaemon import NsDaemon, metric, require_root, write_records

pytestmark = pytest.mark.integration


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[NsDaemon]:
    require_root()
    d = NsDaemon(tmp_path, records=100, daemon_extra="watch_interval = 0.5", records_extra='source = "store"')
    try:
        d.start()
        yield d
    finally:
        d.close()


def test_the_drop_is_imported_guarded_and_applied(daemon: NsDaemon) -> None:
    d = daemon
    m = d.wait_for(lambda m: metric(m, "beiand_register_applied_version") == 2, 30, "records v1 and inventory v2 applied")
    assert metric(m, "beiand_records_filings") == 100
    assert d.verdict("site99.example.cn") == "filed"
    st = d.json("/api/v1/status")["records"]
    assert st["source"] == "store" and st["register_version"] == 2 and not st["register"]["fails_static"]

    time.sleep(1.1)  # a new mtime
    write_records(d.records, 10)  # 90% of the filings gone
    d.wait_for(lambda m: metric(m, "beiand_records_reload_refused_total") == 1, 30, "the drop refused")
    assert d.verdict("site99.example.cn") == "filed"  # the version in force keeps judging
    assert "max_loss" in d.json("/readyz")["details"]["records"]["reload_refused"]["reason"]
    assert metric(d.metrics(), "beiand_register_applied_version") == 2

    time.sleep(1.1)
    write_records(d.records, 99)  # site99 removed: a change the guard lets through
    d.wait_for(lambda m: metric(m, "beiand_register_applied_version") == 3, 30, "records v3 applied")
    assert d.verdict("site99.example.cn") == "unfiled" and d.verdict("site50.example.cn") == "filed"
    # the workers' records carry the version that decided them (every worker has it once the metric says so)
    from beiand.accesslog import Query, query

    d.dns_answers(["site50.example.cn"])
    deadline = time.monotonic() + 15
    got: list[str] = []
    while time.monotonic() < deadline and not got:
        time.sleep(0.2)
        got = [r.records_version for r in query(d.wd / "log", Query()) if r.name == "site50.example.cn"]
    assert got and set(got) == {"3"}
