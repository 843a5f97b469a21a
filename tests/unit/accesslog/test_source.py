"""The records-source seam (issue 27, part B): the local log behind it answers as the reader does."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from beiand.accesslog import AccessLog, LogConfig, Query, query
from beiand.accesslog.reader import summaries
from beiand.accesslog.source import LocalRecords, RecordSource
from tests.unit.accesslog.helpers import DAY0, rec


def test_the_local_log_as_a_records_source(tmp_path: Path) -> None:
    d = tmp_path / "log"
    with AccessLog(LogConfig(d, gateway="gw-test")) as log:
        for i in range(200):
            log.append(rec(i))
    src: RecordSource = LocalRecords(d)
    assert not src.fleet and str(d) in src.where
    q = Query(DAY0 + 10_000, DAY0 + 150_000, server=ipaddress.ip_network("198.51.100.2/32"), port=443)
    got = list(src.query(q))
    assert got == list(query(d, q)) and got and all(q.match(r) for r in got)
    assert src.summaries(DAY0, DAY0 + 86_400_000) == summaries(d, DAY0, DAY0 + 86_400_000)


def test_a_key_with_a_backslash_or_tab_is_found_as_the_line_holds_it(tmp_path: Path) -> None:
    """The local query's cheap pre-filter looked for the key's raw bytes, but the line holds a
    backslash, tab or newline escaped: ``logs query --account 'it''s \\ odd'`` found nothing
    (found comparing the local answers with the fleet's copy's, issue 27)."""
    d = tmp_path / "log"
    odd = ["it's \\ odd", "tab\there", "new\nline"]
    with AccessLog(LogConfig(d, gateway="gw-test")) as log:
        for i in range(30):
            log.append(rec(i, account=odd[i % 3]))
    for a in odd:
        assert len(list(query(d, Query(account=a)))) == 10
