"""ISMI data files from a real access log (beiand/isms/reports.py): DT 9, 8, 7, 4/5, 3,
checked against the XSDs and unpacked as SMMS would (the double's own envelope code)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from beiand.accesslog import AccessLog, LogConfig
from beiand.isms.reports import Reporter, ReportError, Spool
from beiand.isms.wire import fields
from beiand.isms.wire.codes import DataType
from beiand.isms.wire.envelope import Keys
from beiand.isms.wire.model import LogQuery, parse_time
from beiand.isms.wire.profile import Profile
from beiand.model import AccessRecord
from tests import isms_double as dbl

KEYS = Keys(dbl.USER_KEY, dbl.ENC_KEY, dbl.IV, dbl.AUTH_KEY)
T0 = int(parse_time("2026-11-29 10:00:00") * 1000)


def rec(i: int, name: str, verdict: str, action: str = "flag", order: str = "", kind: str = "tls-sni", port: int = 443,
        server: str = "203.0.113.5", reason: str = "") -> AccessRecord:
    return AccessRecord(T0 + i * 1000, "acct", "198.51.100.7", 40000 + i, server, port, "udp" if kind == "quic-sni" else "tcp",
                        kind, name, verdict, action, "京ICP备12345678号-1" if verdict in ("filed", "mismatch") else "", "gw",
                        reason, "", "", order)


@pytest.fixture
def reporter(tmp_path: Path) -> Reporter:
    logdir = tmp_path / "log"
    with AccessLog(LogConfig(logdir)) as log:
        for i, r in enumerate([
            rec(0, "bad.example", "unfiled", "block", "isms:11"),
            rec(1, "bad.example", "unfiled", "block", "isms:11"),
            rec(2, "www.bad.example", "unfiled"),
            rec(3, "other.example", "mismatch", kind="quic-sni"),
            rec(4, "filed.example", "filed", "flag", "isms-monitor:12"),
            rec(5, "filed.example", "filed", kind="http-host", port=80)._replace(method="GET", url="/x?page=2"),
            rec(6, "allow.example", "exempt"),
            rec(7, "drift.example", "mismatch", reason="ip-not-listed", server="203.0.113.9"),
            rec(8, "mon.example", "filed", "flag", "isms-monitor:12", kind="http-host", port=80)._replace(url="/watched"),
        ]):
            assert i >= 0
            log.append(r)
    spool = Spool(tmp_path / "spool", dbl.IDC_ID, KEYS, Profile(max_records_per_file=2), clock=lambda: T0 / 1000 + 3600)
    return Reporter(spool, logdir, "H1")


def rows(path: Path, tag: str) -> tuple[ET.Element, list[dict[str, str]]]:
    root = ET.fromstring(dbl.unpack_file(path.read_bytes()))
    return root, [{c.tag: c.text or "" for c in r} for r in root.iter(tag)]


def test_illegal_web(reporter: Reporter) -> None:
    files = reporter.illegal_web(T0, T0 + 86400_000)
    assert len(files) == 2  # 4 rows, 2 per file
    assert files[0].parent.parent.name == "9" and files[0].parent.name == "2026-11-29"
    assert len(files[0].name) == len("1795928400") + 10 + 4 and not list(files[0].parent.glob("*.tmp"))
    got = [r for f in files for r in rows(f, "record")[1]]
    by = {r["domain"]: r for r in got}
    assert set(by) == {"bad.example", "www.bad.example", "other.example", "drift.example"}
    b = by["bad.example"]
    assert (b["illegalType"], b["block"], b["currentState"], b["visitCount"], b["protocol"]) == ("1", "1", "1", "2", "1")
    assert (b["firstFound"], b["lastFound"]) == ("2026-11-29 10:00:00", "2026-11-29 10:00:01")
    o = by["other.example"]
    # no records index wired: the filed name is unknown, never the filing number (issue 28, 16)
    assert (o["illegalType"], o["protocol"], o["trueDomain"], o["regDomain"]) == ("999", "2", "other.example", "")


def test_dt9_and_dt2_name_the_filed_domain_and_the_one_seen(reporter: Reporter) -> None:
    """Issue 28 (16): ISMS.md §6: regDomain = the filed name, trueDomain = the name seen (it was the
    filing number). The filing lists the parent; the name seen is below it."""
    from beiand.isms.reports import filed_domain
    from beiand.model import Filing, FilingStatus, ServiceType
    from beiand.records.index import RecordIndex

    index = RecordIndex([Filing("京ICP备12345678号-1", "主办", ServiceType.WEBSITE, ("other.example", "drift.example"), (), "别家",
                                FilingStatus.ACTIVE, "2024-01-01")])
    assert filed_domain(index, "京ICP备12345678号-1", "www.other.example") == "other.example"
    reporter.filed_name = lambda number, name: filed_domain(index, number, name)
    reporter.spool.profile = Profile(max_records_per_file=100)
    got = {r["domain"]: r for f in reporter.illegal_web(T0, T0 + 86400_000) for r in rows(f, "record")[1]}
    assert (got["drift.example"]["regDomain"], got["drift.example"]["trueDomain"]) == ("drift.example", "drift.example")
    assert filed_domain(index, "京ICP备12345678号-1", "a.drift.example") == "drift.example"
    assert filed_domain(index, "京ICP备99999999号-1", "drift.example") == ""
    f9, _ = reporter.resources(T0, T0 + 86400_000)
    (f2,) = [f for f in f9 if f.parent.parent.name == "2"]
    assert [(r["regDomain"], r["trueDomain"]) for r in rows(f2, "record")[1]] == [("drift.example", "drift.example")]


def test_active_resources(reporter: Reporter) -> None:
    reporter.spool.profile = Profile(max_records_per_file=100)
    (f,) = reporter.active_resources(T0, T0 + 86400_000)
    _, got = rows(f, "record")
    doms = {r["domain"]: r for r in got if "domain" in r}
    assert "allow.example" not in doms and doms["www.bad.example"]["topDomain"] == "bad.example"
    assert doms["www.bad.example"]["topDomainFlag"] == "1" and doms["bad.example"]["topDomainFlag"] == "0"
    ip_rows = [r for r in got if "domain" not in r]
    assert {(r["ip"], r["port"], r["protocol"]) for r in ip_rows} == {("203.0.113.5", "443", "1"), ("203.0.113.5", "443", "2"),
                                                                      ("203.0.113.5", "80", "1"), ("203.0.113.9", "443", "1")}


def test_command_results_and_heartbeat(reporter: Reporter) -> None:
    files = reporter.command_results(T0, T0 + 86400_000)
    kinds = {f.parent.parent.name for f in files}
    assert kinds == {"4", "5"}
    mon = [r for f in files if f.parent.parent.name == "4" for r in rows(f, "log")[1]]
    fil = [r for f in files if f.parent.parent.name == "5" for r in rows(f, "log")[1]]
    assert [r["commandId"] for r in mon] == ["12", "12"] and [r["commandId"] for r in fil] == ["11", "11"]
    # url: the HTTP request's URL on HTTP records (ISMS.md §4; it was always empty: issue 28, 15)
    assert [r["url"] for r in mon] == ["", "http://mon.example/watched"] and [r["url"] for r in fil] == ["", ""]
    quiet = reporter.command_results(T0, T0 + 86400_000, frozenset({"11"}))  # command 11 has action/report 0
    assert not [r for f in quiet if f.parent.parent.name == "5" for r in rows(f, "log")[1]]
    (hb,) = reporter.heartbeat()
    root, _ = rows(hb, "x")
    assert root.tag == "activeState" and root.findtext("houseAmount") == "1" and root.findtext("errHouseAmount") == "0"
    (hb,) = reporter.heartbeat(("H1",))  # capture down: the house is reported faulty
    root, _ = rows(hb, "x")
    assert root.findtext("errHouseAmount") == "1" and root.findtext("errHouseId") == "H1"


def test_log_query(reporter: Reporter) -> None:
    q = LogQuery(77, T0 / 1000, T0 / 1000 + 7200, ("H1",), ("", ""), ("203.0.113.5", "203.0.113.5"), 0, 80, 1,
                 "http://filed.example/x")
    (f,) = reporter.log_query(q)
    root, got = rows(f, "log")
    assert root.findtext("commandId") == "77" and root.findtext("result/logAmount") == "1"
    # ISMS.md §4: url is the HTTP request's URL (issue 28, 14), not the host name
    assert got[0]["url"] == "http://filed.example/x?page=2" and got[0]["destPort"] == "80"


def test_a_row_that_fails_the_xsd_is_not_written(reporter: Reporter) -> None:
    with pytest.raises(ReportError, match="XSD"):
        reporter.spool.write(DataType.ILLEGAL_WEB, [{"port": "not-a-port"}])
    assert reporter.spool.rejected[DataType.ILLEGAL_WEB] == 1


def test_fields_table_and_xsd_agree() -> None:
    xsd = (Path(fields.__file__).parent / "xsd" / "data.xsd").read_text()
    basic = (Path(fields.__file__).parent / "xsd" / "basic_info.xsd").read_text()  # DT 1: paths below <basicInfo>
    for f in fields.FIELDS:
        if f.dt == 1:
            assert f'name="{f.element.rpartition("/")[2]}"' in basic, f"DT 1: {f.element} has no XSD element"
        else:
            assert f'name="{f.element}"' in xsd, f"DT {f.dt}: {f.element} has no XSD element"
        assert f.mark in ("2+", "1", "≠")
    for dt in (3, 4, 5, 8, 9):
        assert fields.row_elements(dt)


def test_a_claimed_field_without_a_row_fails() -> None:
    from beiand.isms.reports import _row

    with pytest.raises(KeyError, match=r"not in fields\.FIELDS"):
        _row(9, {"invented": 1})


@settings(max_examples=200, deadline=None)
@example(next(f for f in fields.FIELDS if f.dt == 10 and f.element == "msgInfo"), "²")
@given(st.sampled_from([f for f in fields.FIELDS if f.dt in (2, 3, 8, 9, 10)]),
       st.one_of(st.text(max_size=30), st.integers(-5, 70000).map(str), st.just("2026-11-29 10:00:00"), st.just("")))
def test_fast_row_checks_agree_with_the_xsd(f: fields.Field, value: str) -> None:
    from beiand.isms.reports import ROOTS, ROW_TAG, check_rows
    from beiand.isms.wire.codec import Codec

    codec = Codec()
    dt = DataType(f.dt)
    if dt is DataType.LOG_QUERY_RESULT:
        return  # its rows sit under <result>: covered by test_log_query
    value = "".join(ch for ch in value if ch.isprintable())
    xml = codec.data_file(ROOTS[dt], "IDC", (), [{f.element: value}], ROW_TAG[dt], "2026-11-29 12:00:00")
    fast_ok, xsd_ok = check_rows(f.dt, [{f.element: value}]) == [], codec.check_data(xml) == []
    # sound: what the fast checks pass, the XSD passes; they agree on every value beiand writes
    # (ASCII numbers, times, text); the XSD alone also takes e.g. " 5" (whitespace collapse)
    assert not fast_ok or xsd_ok, (f, value)
    if value == value.strip() and not value.startswith("+") and not value.startswith("-0"):
        assert fast_ok == xsd_ok, (f, value)


def test_acks_for_the_cu(reporter: Reporter) -> None:
    from beiand.isms.service import Ack
    from beiand.isms.wire.codes import AckResult, AckType

    (f,) = reporter.acks([Ack(7, AckType.FILTER, AckResult.NONE, "unsupported: subtype 3 关键字 (no content inspection)", "H1")])
    root, got = rows(f, "ack")
    assert root.tag == "commandAck" and f.parent.parent.name == "10"
    assert got == [{"houseId": "H1", "commandId": "7", "type": "2", "resultCode": "2",
                    "msgInfo": "unsupported: subtype 3 关键字 (no content inspection)"}]


def test_idc_monitor_dt2(reporter: Reporter) -> None:
    f9, _ = reporter.resources(T0, T0 + 86400_000)
    (f2,) = [f for f in f9 if f.parent.parent.name == "2"]
    root, got = rows(f2, "record")
    assert root.tag == "idcMonitor"
    assert [(r["domain"], r["ip"], r["regError"], r["regDomain"]) for r in got] == [
        ("drift.example", "203.0.113.9", "2", "")]  # the filed name unknown without the index (issue 28, 16)
    # DT 9's shape (ISMS.md §4; issue 28, 17)
    assert [(r["url"], r["serviceType"], r["illegalType"], r["currentState"]) for r in got] == [("", "24", "999", "0")]


def test_reports_read_the_records_source_the_wiring_gives(reporter: Reporter, tmp_path: Path) -> None:
    """Issue 27: with the fleet's copy configured the reports read it (``Reporter.records``),
    never the local directory: here a source holding another gateway's records too."""
    from collections.abc import Collection

    from beiand.accesslog.reader import Query, SummaryKey
    from beiand.accesslog.source import Activity, LocalRecords, activity_of, only

    class Fleet:
        """A stand-in for beiand.sinks.fleet.FleetRecords: this gateway's log, and gw-2's records."""

        fleet = True
        where = "the fleet's copy (a stand-in)"

        def __init__(self) -> None:
            self.local = LocalRecords(reporter.log_dir)
            self.other = [rec(20, "far.example", "unfiled", "block", "isms:11")._replace(gateway="gw-2")]

        def query(self, q: Query):  # type: ignore[no-untyped-def]
            yield from self.local.query(q)
            yield from (r for r in self.other if q.match(r))

        def summaries(self, since_ms: int, until_ms: int, verdicts: Collection[str] | None = None
                      ) -> dict[SummaryKey, list[int]]:
            s = self.local.summaries(since_ms, until_ms)
            for r in self.other:
                s[(r.name, r.server_ip, r.server_port, r.account, r.verdict, r.kind, r.action, r.reason, r.filing_number)] = \
                    [r.ts_ms, r.ts_ms, 1]
            return only(s, verdicts)

        def activity(self, since_ms: int, until_ms: int) -> Activity:
            return activity_of(self.summaries(since_ms, until_ms))

    reporter.records = Fleet()
    assert reporter.source() is reporter.records
    got = [r for f in reporter.illegal_web(T0, T0 + 86400_000) for r in rows(f, "record")[1]]
    assert "far.example" in {r["domain"] for r in got}
    files = reporter.command_results(T0, T0 + 86400_000)
    fil = [r for f in files if f.parent.parent.name == "5" for r in rows(f, "log")[1]]
    assert sum(r["domain"] == "far.example" for r in fil) == 1
    reporter.records = None
    assert isinstance(reporter.source(), LocalRecords)
    assert "far.example" not in {r["domain"] for f in reporter.illegal_web(T0, T0 + 86400_000) for r in rows(f, "record")[1]}
