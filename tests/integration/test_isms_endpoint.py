"""The ``idc_command`` endpoint over real HTTP, driven by the SMMS double (tests/isms_double.py):
every command type, every envelope combination, every failure code of ISMS.md §2."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from beiand.isms.service import CommandService
from beiand.isms.store import CommandRules, CommandStore
from beiand.isms.transport.endpoint import serve
from beiand.isms.wire.envelope import Keys
from beiand.isms.wire.model import LogQuery, Query
from beiand.isms.wire.profile import Profile
from beiand.model import Kind, Observation, Transport
from beiand.policy.overlays import Hit
from tests import isms_double as dbl

pytestmark = pytest.mark.integration


class Server:
    def __init__(self, state: Path) -> None:
        self.queries: list[LogQuery | Query] = []
        self.store = CommandStore(state, house_id="H1")
        self.svc = CommandService(dbl.IDC_ID, Keys(dbl.USER_KEY, dbl.ENC_KEY, dbl.IV, dbl.AUTH_KEY), Profile(), self.store,
                                  on_query=self.queries.append)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.port = 0

        async def start() -> None:
            runner = await serve(self.svc, "127.0.0.1", 0)
            self.port = runner.addresses[0][1]
            started.set()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.create_task(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)
        self.smms = dbl.Smms(f"http://127.0.0.1:{self.port}/isms/idc_command")

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    s.close()


def obs(name: str, server: str = "203.0.113.5", port: int = 443, transport: Transport = Transport.TCP,
        client: str = "198.51.100.7", detail: str = "") -> Observation:
    """An observation now: after every command the test applied (the overlay judges at obs.ts)."""
    kind = Kind.TLS_SNI if name else Kind.IP_ONLY
    return Observation(time.time() + 1, client, 40000, server, port, transport, kind, name, name, (), detail)


def hit(h: Hit | None) -> str | None:
    """What decided: ``<overlay>:<commandId>``."""
    return None if h is None else f"{h.by}:{h.ref}"


@pytest.mark.parametrize("enc", [0, 1])
@pytest.mark.parametrize("alg", [0, 1, 2])
@pytest.mark.parametrize("comp", [0, 1, 2])
def test_every_envelope_combination_is_received(srv: Server, enc: int, alg: int, comp: int) -> None:
    xml = dbl.command_xml(10 + enc * 9 + alg * 3 + comp, 2, [(1, "bad.example", "")])
    assert srv.smms.send(xml, 2, enc=enc, alg=alg, comp=comp)[0] == 0


def test_failure_codes(srv: Server) -> None:
    s = srv.smms
    xml = dbl.command_xml(1, 2, [(1, "x.example", "")]).encode()
    assert s.post(s.params(xml, 2, idcId="OTHER"))[0] == 999
    assert s.post(s.params(xml, 2, randVal="r" * 21))[0] == 999
    assert s.post(s.params(xml, 2, pwdHash=base64.b64encode(b"0" * 32).decode()))[0] == 1
    p = s.params(xml, 2)
    p["command"] = base64.b64encode(b"\x00" * 33).decode()  # not whole AES blocks
    assert s.post(p)[0] == 2
    p = s.params(xml, 2)
    p["commandHash"] = base64.b64encode(b"f" * 32).decode()
    assert s.post(p)[0] == 3
    p = s.params(b"PK\x03\x04 not a zip", 2, comp=1)
    p2 = s.params(xml, 2)
    p2["command"], p2["commandHash"] = s.pack(b"PK\x03\x04 not a zip", 1, 1, 0)
    p2["compressionFormat"] = 1
    assert s.post(p2)[0] == 4
    assert s.send(b"<command><commandId>", 2)[0] == 5  # not well-formed
    assert s.send(b"<logQuery/>", 2)[0] == 5  # wrong root for the type
    assert s.send(b"<!DOCTYPE x [<!ENTITY a 'b'>]><command>&a;</command>", 2)[0] == 5  # no DTDs
    assert s.send(b"<command><commandId>x</commandId><type>2</type><operationType>0</operationType></command>", 2)[0] == 6
    assert s.send(xml, 2, version="9.9")[0] == 999  # unknown version: never a guess
    assert s.send(xml, 77)[0] == 999  # unknown type
    assert s.send(xml, 30, version="3.0")[0] == 999  # a v3.0 type beiand does not carry out
    code, msg = s.send(xml, 2)
    assert code == 0
    assert s.send(xml, 2)[0] == 999 and "duplicate commandId" in s.send(xml, 2)[1]
    p = s.params(dbl.command_xml(2, 2, [(1, "y.example", "")]).encode(), 2)
    assert s.post(p)[0] == 0
    p3 = s.params(dbl.command_xml(3, 2, [(1, "z.example", "")]).encode(), 2)
    p3["commandSequence"] = p["commandSequence"]
    code, msg = s.post(p3)
    assert code == 999 and "duplicate commandSequence" in msg
    assert srv.svc.counts["refused:999"] >= 6


def test_every_command_type(srv: Server) -> None:
    s = srv.smms
    assert s.send(dbl.command_xml(1, 2, [(1, "bad.example", ""), (7, "443", "")]), 2)[0] == 0
    assert s.send(dbl.command_xml(2, 1, [(5, "203.0.113.0", "203.0.113.255")]), 2)[0] == 0
    bl = ("<blacklist><commandId>3</commandId><idcId>{}</idcId><type>1</type><contents>evil.example</contents>"
          "<level>1</level><operationType>0</operationType><timeStamp>2026-11-29 12:00:00</timeStamp></blacklist>")
    assert s.send(bl.format(dbl.IDC_ID), 2)[0] == 0
    nf = bl.replace("blacklist", "noFilter").replace("evil.example", "good.example").replace(">3<", ">4<")
    assert s.send(nf.format(dbl.IDC_ID), 2)[0] == 0
    lq = ("<logQuery><commandId>5</commandId><idcId>x</idcId><timeStamp>2026-11-29 12:00:00</timeStamp><commandInfo>"
          "<houseId>H1</houseId><startTime>2026-11-29 10:00:00</startTime><destIp><startIp>203.0.113.5</startIp>"
          f"<endIp>203.0.113.5</endIp></destIp><dstPort>443</dstPort><protocolType>1</protocolType>"
          f"<url>{base64.b64encode(b'http://a.example/').decode()}</url></commandInfo></logQuery>")
    assert s.send(lq, 1)[0] == 0
    assert s.send("<commandQuery><commandId>6</commandId><houseId>H1</houseId></commandQuery>", 3)[0] == 0
    cl = ("<codeList><gzlx><gzlxXx><id>1</id><mc>域名</mc><bz/><sfyx>1</sfyx></gzlxXx></gzlx>"
          "<wfwgqk><wfwgqkXx><id>1</id><mc>未备案</mc></wfwgqkXx></wfwgqk></codeList>")
    assert s.send(cl, 4)[0] == 0
    assert s.send("<activeResourcesPeriod><commandId>7</commandId><period>3600</period></activeResourcesPeriod>", 5)[0] == 0
    assert s.send("<queryView><commandId>8</commandId><type>1</type><content>bad.example</content></queryView>", 6)[0] == 0
    assert s.send("<commandRecord><commandId>9</commandId><controlsId>1</controlsId></commandRecord>", 6)[0] == 0
    assert s.send("<idcInfoManage><x/></idcInfoManage>", 0)[0] == 6  # basic data: validated (xsd/basic.xsd)
    bd = ("<idcInfoManage><commandId>10</commandId><monitor>1</monitor><house><houseId>H2</houseId>"
          "<ipSegment><startIp>198.51.100.0</startIp><endIp>198.51.100.255</endIp></ipSegment></house></idcInfoManage>")
    assert s.send(bd, 0)[0] == 0
    st = srv.store.state
    assert set(st.commands) == {1, 2}
    assert set(st.lists) == {"blacklist:3", "noFilter:4"}
    assert st.code_lists["gzlx"][0]["mc"] == "域名" and st.active_period_s == 3600
    q = srv.queries[0]
    assert isinstance(q, LogQuery) and q.dst_ip == ("203.0.113.5", "203.0.113.5") and q.end - q.start == 7200
    assert q.url == "http://a.example/"
    assert [type(x).__name__ for x in srv.queries] == ["LogQuery", "Query", "Query", "Query"]
    assert [x.root for x in srv.queries[1:]] == ["commandQuery", "queryView", "commandRecord"]  # type: ignore[union-attr]
    # queries are answered (tests/integration/test_isms_answers.py); basic data is stored
    assert not [a for a in srv.svc.acks if a.msg.startswith("unsupported: <")]
    assert st.houses == {"H2": [["198.51.100.0", "198.51.100.255", False]]} and st.dt2 is True
    assert srv.store.house_of("198.51.100.7") == "H2" and srv.store.house_of("192.0.2.1") == "H1"
    # applied through the matcher every worker uses
    rules = CommandRules(srv.store.dir.parent)
    assert hit(rules.match(obs("www.bad.example"))) == "isms-filter:1"
    assert hit(rules.match(obs("www.bad.example", server="192.0.2.1", port=8443))) is None  # AND with the port rule
    assert hit(rules.match(obs("filed.example"))) == "isms-monitor:2"
    assert hit(rules.match(obs("evil.example", server="192.0.2.1"))) == "isms-blacklist:3"
    assert hit(rules.match(obs("good.example", server="192.0.2.1"))) == "isms-nofilter:4"
    # delete
    assert s.send(dbl.command_xml(1, 2, [], op=1), 2)[0] == 0
    assert rules.reload()
    assert hit(rules.match(obs("www.bad.example", server="192.0.2.1"))) is None
    assert srv.svc.acks[-1].result == 0


def test_unsupported_keyword_rule_is_refused_not_ignored(srv: Server) -> None:
    code, msg = srv.smms.send(dbl.command_xml(40, 2, [(1, "k.example", ""), (3, "赌博", "")]), 2)
    assert code == 0 and msg.startswith("unsupported: subtype 3 关键字")
    ack = srv.svc.acks[-1]
    assert (ack.command_id, int(ack.result)) == (40, 2)
    assert 40 not in srv.store.state.commands
    assert srv.store.state.refused[-1]["commandId"] == 40
    assert srv.svc.unsupported["unsupported-subtype"] == 1


def test_commands_persist_across_restart(srv: Server, tmp_path: Path) -> None:
    assert srv.smms.send(dbl.command_xml(50, 2, [(1, "p.example", "")]), 2)[0] == 0
    again = CommandStore(tmp_path)
    assert 50 in again.state.commands
    assert again.seen_sequence(srv.smms.seq)


def test_tls_endpoint(tmp_path: Path) -> None:
    import ssl
    import subprocess

    from beiand.isms.transport.endpoint import tls_context

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True,
                   capture_output=True)
    srv = Server.__new__(Server)
    srv.queries = []
    srv.store = CommandStore(tmp_path, house_id="H1")
    srv.svc = CommandService(dbl.IDC_ID, Keys(dbl.USER_KEY, dbl.ENC_KEY, dbl.IV, dbl.AUTH_KEY), Profile(), srv.store)
    srv.loop = asyncio.new_event_loop()
    started = threading.Event()

    async def start() -> None:
        runner = await serve(srv.svc, "127.0.0.1", 0, tls_context(cert, key))
        srv.port = runner.addresses[0][1]
        started.set()

    def run() -> None:
        asyncio.set_event_loop(srv.loop)
        srv.loop.create_task(start())
        srv.loop.run_forever()

    srv.thread = threading.Thread(target=run, daemon=True)
    srv.thread.start()
    assert started.wait(10)
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        smms = dbl.Smms(f"https://127.0.0.1:{srv.port}/isms/idc_command", tls=ctx)
        assert smms.send(dbl.command_xml(1, 2, [(1, "tls.example", "")]), 2)[0] == 0
        plain = dbl.Smms(f"http://127.0.0.1:{srv.port}/isms/idc_command")
        with pytest.raises(OSError):
            plain.send(dbl.command_xml(2, 2, [(1, "x.example", "")]), 2)
    finally:
        srv.close()


def test_through_a_cu_that_forwards_types_2_and_4(srv: Server) -> None:
    cu = dbl.Cu([srv.smms.url])
    try:
        smms = dbl.Smms(cu.url)
        assert smms.send(dbl.command_xml(70, 2, [(1, "cu.example", "")]), 2)[0] == 0
        assert smms.send("<codeList><basx><basxXx><id>1</id><mc>经营性</mc></basxXx></basx></codeList>", 4)[0] == 0
        assert smms.send("<commandQuery><commandId>71</commandId></commandQuery>", 3)[0] == 0  # the CU's own
        assert [(t, c) for t, _, c in cu.forwarded] == [(2, 0), (4, 0)] and cu.kept == [3]
        assert 70 in srv.store.state.commands and "basx" in srv.store.state.code_lists
        bad = smms.params(dbl.command_xml(72, 2, [(1, "x.example", "")]).encode(), 2, pwdHash="AAAA")
        assert smms.post(bad)[0] == 1  # the EU's refusal comes back through the CU
    finally:
        cu.close()
