"""Types 3 and 6 answered, type 0 basic data used (issue 20): sent over real HTTP by the SMMS
double through the endpoint, answered by beiand.isms.answers from a real access log."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from beiand.accesslog import AccessLog, LogConfig
from beiand.isms.answers import answer
from beiand.isms.reports import Reporter, Spool
from beiand.isms.wire.codes import AckType, DataType
from beiand.isms.wire.model import Query, parse_time
from beiand.isms.wire.profile import Profile
from beiand.model import AccessRecord
from tests import isms_double as dbl
from tests.integration.test_isms_endpoint import Server

pytestmark = pytest.mark.integration
T0 = int(parse_time("2026-11-29 10:00:00") * 1000)
NOW = T0 / 1000 + 3600


def rec(i: int, name: str, verdict: str, server: str, action: str = "flag", order: str = "") -> AccessRecord:
    return AccessRecord(T0 + i * 1000, "acct", "198.51.100.7", 40000 + i, server, 443, "tcp", "tls-sni", name, verdict,
                        action, "", "gw", "", "", "", order)


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[tuple[Server, Reporter]]:
    logdir = tmp_path / "log"
    with AccessLog(LogConfig(logdir)) as log:
        for r in (rec(0, "bad.example", "unfiled", "203.0.113.5", "block", "isms:1"),
                  rec(1, "www.bad.example", "unfiled", "203.0.113.5", "block", "isms:1"),
                  rec(2, "ok.example", "filed", "203.0.113.200"),  # reserved segment in H2: regError 1
                  rec(3, "stray.example", "filed", "192.0.2.77")):  # in no house: regError 3
            log.append(r)
    s = Server(tmp_path / "state")
    s.svc.clock = lambda: NOW
    spool = Spool(tmp_path / "spool", dbl.IDC_ID, s.svc.keys, Profile(), clock=lambda: NOW)
    yield s, Reporter(spool, logdir, "H1", store=s.store)
    s.close()


def rows(path: Path, tag: str) -> tuple[ET.Element, list[dict[str, str]]]:
    root = ET.fromstring(dbl.unpack_file(path.read_bytes()))
    return root, [{c.tag: c.text or "" for c in r} for r in root.iter(tag)]


def run(s: Server, rep: Reporter) -> tuple[dict[DataType, list[Path]], list[object]]:
    files: dict[DataType, list[Path]] = {}
    acks: list[object] = []
    for q in s.queries:
        f, a = answer(rep, s.store, q, NOW)
        for dt, ps in f:
            files.setdefault(dt, []).extend(ps)
        acks += a
    s.queries.clear()
    return files, acks


def test_command_query_answered_with_dt6(srv: tuple[Server, Reporter]) -> None:
    s, rep = srv
    assert s.smms.send(dbl.command_xml(1, 2, [(1, "bad.example", ""), (7, "443", "")]), 2)[0] == 0
    assert s.smms.send(dbl.command_xml(2, 1, [(5, "203.0.113.0", "203.0.113.255")]), 2)[0] == 0
    bl = (f"<blacklist><commandId>3</commandId><idcId>{dbl.IDC_ID}</idcId><type>1</type><contents>evil.example,evil2.example"
          "</contents><operationType>0</operationType></blacklist>")
    assert s.smms.send(bl, 2)[0] == 0
    code, msg = s.smms.send("<commandQuery><commandId>40</commandId><houseId>H1</houseId></commandQuery>", 3)
    assert (code, msg) == (0, "answered in a DT 6 file")
    assert s.smms.send("<commandQuery><commandId>41</commandId></commandQuery>", 6)[0] == 0  # type 6's commandQuery
    files, _ = run(s, rep)
    f1, f2 = files[DataType.COMMAND_QUERY_RESULT]
    assert f1.parent.parent.name == "6"
    root, got = rows(f1, "command")
    assert root.tag == "commandQueryResult" and root.findtext("commandId") == "40"
    assert [(r["commandId"], r["type"], r["ruleAmount"], r["rules"], r["state"]) for r in got] == [
        ("1", "2", "2", "1:bad.example;7:443", "1"), ("2", "1", "1", "5:203.0.113.0-203.0.113.255", "1"),
        ("3", "6", "2", "1:evil.example;1:evil2.example", "1")]
    root2, got2 = rows(f2, "command")
    assert root2.findtext("commandId") == "41" and len(got2) == 3
    # ISMS.md §3 gives a query of the commands no ack type: the DT 6 file is the answer, no ack
    # (it was acked as type 7 queryView: issue 28, 13)
    assert not [a for a in s.svc.acks if a.command_id in (40, 41)]


def test_query_view_and_command_record_answered_in_the_ack(srv: tuple[Server, Reporter]) -> None:
    s, rep = srv
    assert s.smms.send(dbl.command_xml(1, 2, [(1, "bad.example", "")]), 2)[0] == 0
    code, msg = s.smms.send("<queryView><commandId>50</commandId><type>1</type><content>bad.example</content>"
                            "<queryTime>2026-11-29 11:00:00</queryTime></queryView>", 6)
    assert code == 0 and "answered in the ack" in msg
    assert s.smms.send("<queryView><commandId>51</commandId><type>2</type><content>203.0.113.0/24</content></queryView>", 6)[0] == 0
    assert s.smms.send("<queryView><commandId>52</commandId><type>1</type><content>nothing.example</content></queryView>", 6)[0] == 0
    assert s.smms.send("<commandRecord><commandId>53</commandId><controlsId>1</controlsId><controlsId>77</controlsId>"
                       "</commandRecord>", 6)[0] == 0
    _, acks = run(s, rep)
    by = {a.command_id: a for a in acks}  # type: ignore[attr-defined]
    assert by[50].type == AckType.QUERY_VIEW and by[50].result == 0
    assert by[50].msg == ("bad.example: visits 2, firstFound 2026-11-29 10:00:00, lastFound 2026-11-29 10:00:01, "
                          "blocked 2, verdicts unfiled:2")
    assert by[51].msg.startswith("203.0.113.0/24: visits 3,")
    assert by[52].msg.startswith("nothing.example: no access in")
    assert by[53].type == AckType.COMMAND_RECORD and by[53].msg == "1: in force, records 2; 77: unknown, records 0"


def test_basic_data_gives_house_per_prefix_and_dt2_codes(srv: tuple[Server, Reporter]) -> None:
    s, rep = srv
    bd = ("<idcInfoManage><commandId>60</commandId><house><houseId>H2</houseId><houseName>二号机房</houseName>"
          "<ipSegment><startIp>203.0.113.0</startIp><endIp>203.0.113.127</endIp></ipSegment>"
          "<ipSegment><startIp>203.0.113.128</startIp><endIp>203.0.113.255</endIp><type>1</type></ipSegment>"
          "</house></idcInfoManage>")
    assert s.smms.send(bd, 0) == (0, "basic data stored: 1 house(s), 2 IP segment(s)")
    assert s.svc.acks[-1].type == AckType.BASIC_DATA and s.svc.acks[-1].result == 0
    f9, f8 = rep.resources(T0, T0 + 86400_000)
    _, res = rows(f8[0], "record")
    assert {(r["ip"], r["houseId"]) for r in res} == {("203.0.113.5", "H2"), ("203.0.113.200", "H2"), ("192.0.2.77", "H1")}
    (f2,) = [f for f in f9 if f.parent.parent.name == "2"]
    _, dt2 = rows(f2, "record")
    assert sorted((r["ip"], r["regError"], r["houseId"]) for r in dt2) == [("192.0.2.77", "3", "H1"), ("203.0.113.200", "1", "H2")]
    # type 2 turns DT 2 off (ISMS.md §4: the type element; issue 28), and a delete drops the house
    assert s.smms.send("<idcInfoManage><commandId>61</commandId><type>2</type></idcInfoManage>", 0)[0] == 0
    f9, _ = rep.resources(T0, T0 + 86400_000)
    assert not [f for f in f9 if f.parent.parent.name == "2"]
    assert s.smms.send("<idcInfoManage><commandId>62</commandId><operationType>1</operationType><house><houseId>H2</houseId>"
                       "</house></idcInfoManage>", 0)[0] == 0
    assert s.store.state.houses == {} and s.store.house_of("203.0.113.5") == "H1"
    # refused with ISMS.md's code 6: not an address range
    bad = bd.replace("203.0.113.127", "203.0.112.1")
    assert s.smms.send(bad.replace("<commandId>60<", "<commandId>63<"), 0)[0] == 6


def test_unknown_query_root_is_not_dropped(srv: tuple[Server, Reporter]) -> None:
    s, rep = srv
    _, acks = answer(rep, s.store, Query("somethingElse", 9), NOW)
    assert acks[0].result == 2 and acks[0].msg.startswith("unsupported")


def test_commands_for_a_house_apply_to_its_prefixes(srv: tuple[Server, Reporter]) -> None:
    from beiand.isms.store import CommandRules
    from tests.integration.test_isms_endpoint import hit, obs

    s, _ = srv
    bd = ("<idcInfoManage><commandId>70</commandId><house><houseId>H2</houseId><ipSegment><startIp>198.51.100.0</startIp>"
          "<endIp>198.51.100.255</endIp></ipSegment></house></idcInfoManage>")
    assert s.smms.send(bd, 0)[0] == 0
    assert s.smms.send(dbl.command_xml(1, 2, [(1, "bad.example", "")], houses=("H2",)), 2)[0] == 0
    assert s.smms.send(dbl.command_xml(2, 2, [(1, "own.example", "")], houses=("H1",)), 2)[0] == 0  # the gateway's house
    code, msg = s.smms.send(dbl.command_xml(3, 2, [(1, "x.example", "")], houses=("H7",)), 2)
    assert code == 0 and msg.startswith("not for this house (H1, H2)") and 3 not in s.store.state.commands
    rules = CommandRules(s.store.dir.parent, house_id="H1")  # a worker's view
    assert hit(rules.match(obs("bad.example", server="198.51.100.9"))) == "isms-filter:1"
    assert hit(rules.match(obs("bad.example", server="203.0.113.5"))) is None  # another house's prefix
    assert hit(rules.match(obs("own.example", server="203.0.113.5"))) == "isms-filter:2"
    # H2 leaves the basic data: its command applies nowhere
    assert s.smms.send("<idcInfoManage><commandId>71</commandId><operationType>1</operationType><house><houseId>H2</houseId>"
                       "</house></idcInfoManage>", 0)[0] == 0
    assert rules.reload()
    assert hit(rules.match(obs("bad.example", server="198.51.100.9"))) is None
    assert hit(rules.match(obs("own.example", server="203.0.113.5"))) == "isms-filter:2"


def test_a_log_query_is_answered_by_its_dt3_file_not_by_an_ack(srv: tuple[Server, Reporter]) -> None:
    """Issue 28 (13): ISMS.md §3's ack types have none for a log query; it was acked as type 7
    (queryView). The DT 3 file is the answer."""
    s, rep = srv
    lq = (f"<logQuery><commandId>70</commandId><idcId>{dbl.IDC_ID}</idcId><commandInfo><houseId>H1</houseId>"
          "<startTime>2026-11-29 09:00:00</startTime></commandInfo></logQuery>")
    assert s.smms.send(lq, 1) == (0, "answered in a DT 3 file")
    files, acks = run(s, rep)
    assert files[DataType.LOG_QUERY_RESULT] and not acks
    assert not [a for a in s.svc.acks if a.command_id == 70]
