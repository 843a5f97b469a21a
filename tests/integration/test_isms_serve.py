"""One CU for the licence (issue 30): ``beiand isms serve`` answers the SMMS double for three
gateways, each ``beiand run`` in ``enforce`` in its own network namespace, all following one
PostgreSQL (the decision store) and copying their logs to one ClickHouse, both in a namespace of
their own beside the CU and the SMMS double.

- a filter command reaches and blocks on all three, and its ack (idc_commandack, unpacked with
  the double's own code) says so once all three applied it;
- a gateway stopped during a command is counted as not yet applied in the ack (resultCode 1), DT 7
  reports its house faulty; restarted, it applies the command, a second ack says so and DT 7 no
  longer names the house;
- a DT 3 log query returns records seen on different gateways (from the copy);
- DT 1, DT 7 per house and DT 8/9 decode with the double's envelope code and validate.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from beiand.isms.wire.codec import XSD_DIR, schema
from beiand.isms.wire.model import format_time
from beiand.lab.netns import in_netns, setns
from tests import isms_double as dbl
from tests.integration.clickhouse import ClickHouse, free_port
from tests.integration.postgres import Postgres
from tests.integration.test_fleet_decisions import judged

pytestmark = pytest.mark.integration
H1, H2 = "H1", "H2"
SERVER = {H1: "198.51.100.10", H2: "198.51.100.200"}


def wait_for(cond: Callable[[], Any], what: str, timeout: float = 45.0, state: Callable[[], object] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {state()}" if state is not None else ""))
        time.sleep(0.1)


class CuFleet:
    """PostgreSQL, ClickHouse, the CU and the SMMS double in one namespace; three gateways linked to it."""

    def __init__(self, wd: Path) -> None:
        from pyroute2 import NetNS, netns

        from tests.integration.nsdaemon import NsDaemon, link, write_records

        self.tag = uuid.uuid4().hex[:6]
        self.ns = f"bcu{self.tag}"
        self.wd = wd
        self.cu_proc: subprocess.Popen[bytes] | None = None
        netns.create(self.ns)
        with NetNS(self.ns) as h:
            h.link("set", index=h.link_lookup(ifname="lo")[0], state="up")
        self.pg = Postgres(wd / "pg", listen="0.0.0.0", netns=self.ns)
        self.pg.start()
        self.db = f"cu{self.tag}"
        in_netns(self.ns, lambda: self.pg.create_db(self.db))
        self.ch = ClickHouse(wd / "clickhouse", netns=self.ns, listen="0.0.0.0")
        self.ch.start()
        self.daemons: list[NsDaemon] = []
        for i, house in enumerate((H1, H1, H2)):
            extra = (f'\n[accesslog.clickhouse]\nurl = "http://10.26.{i}.1:{self.ch.http}"\nbatch_records = 1\n'
                     f'\n[store]\nurl = "postgresql://postgres@10.26.{i}.1:{self.pg.port}/{self.db}"\n'
                     'poll_interval = 0.2\nheartbeat_interval = 1\nconnect_timeout = 2\n\n'
                     f'[isms]\nenabled = true\nmode = "fleet"\nhouse_id = "{house}"\n')
            d = NsDaemon(wd / f"gw{i}", gateway=f"gw-{i}-{self.tag}", extra=extra)
            inv = d.wd / "inventory.csv"
            inv.write_text(inv.read_text().replace(",monitor", ",enforce"), encoding="utf-8")
            self.daemons.append(d)
            link(self.ns, d.ns, f"uc{self.tag}{i}", f"ug{self.tag}{i}", f"10.26.{i}.1", f"10.26.{i}.2")
        # the CU: the SMMS double's endpoints, the secrets, the licence's inventory naming each prefix's house
        self.acks = in_netns(self.ns, dbl.AckServer)
        self.isms_port, self.metrics_port = free_port(), free_port()
        self.smms = dbl.Smms(f"http://127.0.0.1:{self.isms_port}/isms/idc_command")
        cu = wd / "cu"
        cu.mkdir()
        sec = dbl.write_secrets(cu / "secrets")
        write_records(cu / "records.csv", 100)
        (cu / "inventory.csv").write_text("prefix,account,site,state,mode,house\n198.51.100.0/25,cust-0001,bj-1,active,enforce,H1\n"
                                          "198.51.100.128/25,cust-0002,bj-2,active,enforce,H2\n", encoding="utf-8")
        (cu / "token").write_text("cu-token\n")
        (cu / "token").chmod(0o600)
        from beiand.records.generate import OUR_PROVIDER

        self.cu_config = cu / "beiand.toml"
        self.cu_config.write_text(f"""
[daemon]
gateway = "cu-{self.tag}"
state_dir = "{cu / 'state'}"

[records]
files = ["{cu / 'records.csv'}"]
provider = "{OUR_PROVIDER}"

[inventory]
file = "{cu / 'inventory.csv'}"

[accesslog]
directory = "{cu / 'log'}"

[accesslog.clickhouse]
url = "http://127.0.0.1:{self.ch.http}"

[store]
url = "postgresql://postgres@127.0.0.1:{self.pg.port}/{self.db}"
poll_interval = 0.2

[server]
token_file = "{cu / 'token'}"

[isms]
enabled = true
idc_id = "{dbl.IDC_ID}"
listen = "127.0.0.1:{self.isms_port}"
metrics_listen = "127.0.0.1:{self.metrics_port}"
secrets_dir = "{sec}"
ack_url = "{self.acks.url}"
ack_wait = 8
gateway_down_after = 5
heartbeat_interval = 600
report_lag = 0
""", encoding="utf-8")
        self.spool = cu / "state" / "isms" / "spool"

    def start_cu(self) -> None:
        with open(self.wd / "cu.log", "ab") as f:
            self.cu_proc = subprocess.Popen([sys.executable, "-m", "beiand.cli", "isms", "serve", "--config", str(self.cu_config),
                                             "--log-format", "text"], preexec_fn=lambda: setns(self.ns), stdout=f,
                                            stderr=subprocess.STDOUT)
        wait_for(lambda: self.cu_status() is not None, "the CU", 60, self.cu_log)

    def cu_log(self) -> str:
        return (self.wd / "cu.log").read_text(errors="replace")[-4000:]

    def cu_get(self, path: str, data: bytes | None = None) -> Any:
        def get() -> Any:
            req = urllib.request.Request(f"http://127.0.0.1:{self.metrics_port}{path}", data=data,
                                         headers={"Authorization": "Bearer cu-token"})
            with urllib.request.urlopen(req, timeout=5) as r:
                body = r.read()
            return json.loads(body) if path.startswith("/api") else body.decode()

        return in_netns(self.ns, get)

    def cu_status(self) -> dict[str, Any] | None:
        assert self.cu_proc is not None
        if self.cu_proc.poll() is not None:
            raise AssertionError(f"beiand isms serve exited {self.cu_proc.returncode}: {self.cu_log()}")
        try:
            return dict(self.cu_get("/api/v1/isms/status"))
        except OSError:
            return None

    def send(self, xml: str, ctype: int = 2) -> tuple[int, str]:
        return in_netns(self.ns, lambda: self.smms.send(xml, ctype))  # type: ignore[no-any-return]

    def acks_of(self, cid: int) -> list[dict[str, str]]:
        return [a for a in self.acks.acks if a.get("commandId") == str(cid)]

    def report_now(self, dt: int) -> list[ET.Element]:
        """POST /api/v1/isms/report, then the roots of the DT ``dt`` files written after it."""
        before = set(self.files(dt))
        self.cu_get("/api/v1/isms/report", b"")
        new = wait_for(lambda: sorted(set(self.files(dt)) - before), f"a DT {dt} file", 60, self.cu_log)
        return [self.root(f) for f in new]

    def files(self, dt: int) -> list[Path]:
        return sorted((self.spool / str(dt)).glob("*/*.xml")) + sorted((self.spool / "sent" / str(dt)).glob("*/*.xml"))

    @staticmethod
    def root(f: Path) -> ET.Element:
        """A data file: the double's own envelope code unpacks it; the XSD validates it."""
        xml = dbl.unpack_file(f.read_bytes())
        root = ET.fromstring(xml)
        xsd = "basic_info.xsd" if root.tag == "basicInfo" else "data.xsd"
        errors = list(schema(str(XSD_DIR / xsd)).iter_errors(xml.decode()))
        assert not errors, f"{f}: {errors[0]}"
        return root

    def close(self) -> None:
        from pyroute2 import netns

        if self.cu_proc is not None and self.cu_proc.poll() is None:
            self.cu_proc.send_signal(signal.SIGTERM)
            try:
                self.cu_proc.wait(30)
            except subprocess.TimeoutExpired:
                self.cu_proc.kill()
        for d in self.daemons:
            d.close()
        self.acks.close()
        self.ch.stop()
        self.pg.stop()
        try:
            netns.remove(self.ns)
        except OSError:
            pass


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CuFleet]:
    from tests.integration.nsdaemon import require_root

    require_root()
    if not Postgres.available():
        pytest.fail("PostgreSQL 15 is not installed (scripts/system-deps installs postgresql)")
    if not ClickHouse.available():
        pytest.fail("clickhouse-server is not installed (scripts/system-deps installs it)")
    f = CuFleet(tmp_path_factory.mktemp("isms-serve"))
    try:
        f.start_cu()
        for d in f.daemons:
            d.start()
        wait_for(lambda: len([g for g in (f.cu_status() or {}).get("gateways", []) if g["up"]]) == 3, "three gateways up",
                 60, lambda: f.cu_status())
        yield f
    finally:
        f.close()


def blocked_on(f: CuFleet, ds: list[Any], name: str, cid: int) -> Callable[[], bool]:
    def check() -> bool:
        return all((r := judged(d, name, SERVER[H1])).action == "block" and r.order == f"isms:{cid}" for d in ds)

    return check


def test_a_filter_command_blocks_on_all_three_and_the_ack_says_so(fleet: CuFleet) -> None:
    f = fleet
    for d in f.daemons:
        assert judged(d, "site7.example.cn", SERVER[H1]).action != "block"  # filed: served
    assert f.send(dbl.command_xml(101, 2, [(1, "site7.example.cn", "")])) == (0, "filter in force")
    wait_for(blocked_on(f, f.daemons, "site7.example.cn", 101), "the filter on all three gateways", 30)
    (ack,) = wait_for(lambda: f.acks_of(101), "the ack of command 101", 30, f.cu_log)
    assert ack["resultCode"] == "0" and ack["type"] == "2", ack
    assert ack["msgInfo"].endswith("fleet: applied on 3 of 3 gateway(s)"), ack


def test_a_stopped_gateway_is_counted_in_the_ack_and_dt7_then_applies_on_restart(fleet: CuFleet) -> None:
    f = fleet
    gone = f.daemons[2]  # the only gateway of house H2
    assert gone.proc is not None
    gone.proc.send_signal(signal.SIGTERM)
    gone.proc.wait(60)
    wait_for(lambda: any(not g["up"] for g in (f.cu_status() or {})["gateways"]), "the CU to see the gateway stopped", 30)
    (dt7,) = f.report_now(7)
    assert dt7.findtext("houseAmount") == "2" and [e.text for e in dt7.iter("errHouseId")] == [H2], ET.tostring(dt7)
    assert f.send(dbl.command_xml(102, 2, [(1, "site8.example.cn", "")])) == (0, "filter in force")
    wait_for(blocked_on(f, f.daemons[:2], "site8.example.cn", 102), "the filter on the two gateways up", 30)
    (ack,) = wait_for(lambda: f.acks_of(102), "the first ack of command 102", 30, f.cu_log)
    assert ack["resultCode"] == "1", ack
    assert f"applied on 2 of 3 gateway(s); not yet: gw-2-{f.tag} (stopped)" in ack["msgInfo"], ack
    status = f.cu_status() or {}
    assert [p["not_applied"] for p in status["acks_pending"] if p["commandId"] == 102] == [[f"gw-2-{f.tag}"]]
    gone.start()  # applies what it missed from the store, before its workers start
    wait_for(blocked_on(f, [gone], "site8.example.cn", 102), "the restarted gateway to block", 30)
    acks = wait_for(lambda: f.acks_of(102)[1:], "the second ack of command 102", 30, f.cu_log)
    assert acks[0]["resultCode"] == "0" and acks[0]["msgInfo"].endswith(f"applied on all 3 gateway(s) (late: gw-2-{f.tag})")
    wait_for(lambda: not (f.cu_status() or {}).get("faulty_houses"), "house H2 no longer faulty", 30)
    (dt7,) = f.report_now(7)
    assert dt7.findtext("errHouseAmount") == "0" and not list(dt7.iter("errHouseId"))


def _copied(f: CuFleet, n: int) -> bool:
    text = f.ch.query("SELECT gateway, count() FROM beiand.access_log GROUP BY gateway FORMAT TabSeparated")
    got = {g: int(c) for g, c in (ln.split("\t") for ln in text.splitlines())}
    return len(got) == 3 and min(got.values()) >= n


def test_dt3_returns_records_seen_on_different_gateways(fleet: CuFleet) -> None:
    f = fleet
    start = time.time() - 5
    ports = {judged(d, "site9.example.cn", SERVER[H1]).client_port for d in f.daemons}
    wait_for(lambda: _copied(f, 2), "the copy of every gateway's records", 60)
    q = (f"<logQuery><commandId>301</commandId><idcId>{dbl.IDC_ID}</idcId><timeStamp>{format_time(time.time())}</timeStamp>"
         f"<commandInfo><startTime>{format_time(start)}</startTime><endTime>{format_time(time.time() + 5)}</endTime>"
         f"<destIp><startIp>{SERVER[H1]}</startIp><endIp>{SERVER[H1]}</endIp></destIp></commandInfo></logQuery>")
    before = set(f.files(3))
    assert f.send(q, 1)[0] == 0
    new = wait_for(lambda: sorted(set(f.files(3)) - before), "the DT 3 file", 60, f.cu_log)
    rows = [{c.tag: c.text or "" for c in r} for f_ in new for r in f.root(f_).iter("log")]
    seen = {int(r["srcPort"]) for r in rows}
    assert ports <= seen, (ports, seen)  # one flow per gateway, all three in the one answer
    assert {r["houseId"] for r in rows} == {H1}  # the inventory's house of 198.51.100.0/25


def test_dt1_dt8_dt9_per_house_decode_and_validate(fleet: CuFleet) -> None:
    f = fleet
    judged(f.daemons[0], "unfiled-a.example.xyz", SERVER[H1])
    judged(f.daemons[2], "unfiled-b.example.xyz", SERVER[H2])
    judged(f.daemons[1], "site11.example.cn", SERVER[H1])
    wait_for(lambda: _copied(f, 4), "the copy", 60)
    before9 = set(f.files(9))
    roots8 = f.report_now(8)
    rows8 = [{c.tag: c.text or "" for c in r} for root in roots8 for r in root.iter("record")]
    assert {(r["ip"], r["houseId"]) for r in rows8 if "domain" not in r} >= {(SERVER[H1], H1), (SERVER[H2], H2)}
    assert any(r.get("domain") == "site11.example.cn" and r["houseId"] == H1 for r in rows8)
    new9 = wait_for(lambda: sorted(set(f.files(9)) - before9), "the DT 9 file", 30)
    rows9 = [{c.tag: c.text or "" for c in r} for f_ in new9 for r in f.root(f_).iter("record")]
    got = {(r["domain"], r["houseId"], r["illegalType"], r["block"]) for r in rows9}
    assert {("unfiled-a.example.xyz", H1, "1", "1"), ("unfiled-b.example.xyz", H2, "1", "1")} <= got, got
    (basic,) = [r for r in (f.root(p) for p in f.files(1)) if r.tag == "basicInfo"][-1:]
    assert basic.findtext("idcId") == dbl.IDC_ID
    segs = {h.findtext("houseId"): [(g.findtext("startIp"), g.findtext("endIp")) for g in h.iter("ipSegInfo")]
            for h in basic.iter("houseInfo")}
    assert segs == {H1: [("198.51.100.0", "198.51.100.127")], H2: [("198.51.100.128", "198.51.100.255")]}
    assert basic.findtext("houseCount") == "2" and len(list(basic.iter("userInfo"))) == 2


def test_isms_status_shows_the_fleet(fleet: CuFleet, capsys: pytest.CaptureFixture[str]) -> None:
    from beiand.cli import main

    capsys.readouterr()
    assert in_netns(fleet.ns, lambda: main(["isms", "status", "--json", "--config", str(fleet.cu_config)])) == 0
    res = json.loads(capsys.readouterr().out)
    gws = {g["gateway"]: g for g in res["fleet"]["gateways"]}
    assert set(gws) == {d.wd.name.replace("gw", "gw-") + f"-{fleet.tag}" for d in fleet.daemons}
    assert res["fleet"]["houses"] == [H1, H2] and res["fleet"]["cu"] is not None
    text = fleet.cu_get("/metrics")
    assert 'beiand_isms_fleet_gateways{state="up"} 3.0' in text and "beiand_isms_houses" in text
