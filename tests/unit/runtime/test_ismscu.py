"""The licence's CU (``beiand isms serve``, issue 30) on a real SQLite decision store: commands
from the SMMS double are written to the store, their acks wait for the gateways' heartbeats, DT 7
counts houses from the inventory and the fleet, type 0 is checked against the inventory, and the
HTTP side wants the token to write reports."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from beiand.isms.wire.codes import AckResult
from beiand.policy import Policy
from beiand.policy.inventory import load_inventory
from beiand.policy.verdict import PolicyConfig
from beiand.records.index import RecordIndex
from beiand.runtime.decisions import store_settings
from beiand.runtime.ismscu import CuRuntime, _app
from beiand.runtime.settings import load_config
from beiand.runtime.wiring import State
from beiand.store import open_store
from tests import isms_double as dbl


@pytest.fixture
def cu(tmp_path: Path) -> Iterator[CuRuntime]:
    sec = dbl.write_secrets(tmp_path / "secrets")
    inv = tmp_path / "inventory.csv"
    inv.write_text("prefix,account,house\n198.51.100.0/25,a,H1\n198.51.100.128/25,b,H2\n", encoding="utf-8")
    cfgp = tmp_path / "beiand.toml"
    cfgp.write_text(f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
[accesslog]
directory = "{tmp_path / 'log'}"
[inventory]
file = "{inv}"
[isms]
enabled = true
idc_id = "{dbl.IDC_ID}"
secrets_dir = "{sec}"
ack_url = "http://127.0.0.1:9/none"
ack_wait = 5
gateway_down_after = 10
""", encoding="utf-8")
    cfg = load_config(str(cfgp))
    index = RecordIndex([])
    inventory = load_inventory(inv)
    now = [1_800_000_000.0]
    registry = CollectorRegistry()
    rt = CuRuntime(State(cfg, index, inventory, Policy(index, inventory, PolicyConfig()), now[0]), registry,
                   clock=lambda: now[0])
    rt.now = now  # type: ignore[attr-defined]
    rt.registry = registry  # type: ignore[attr-defined]
    try:
        yield rt
    finally:
        assert rt.store.decisions is not None
        rt.store.decisions.close()


def beat(cu: CuRuntime, gateway: str, version: int, houses: list[str], at: float, **state: Any) -> None:
    """A gateway's heartbeat, written by a store opened as that gateway (what its follower does)."""
    s = open_store(store_settings(cu.cfg), cu.cfg.daemon.state_dir, gateway)
    try:
        s.heartbeat(version, at, "host", "x", {"houses": houses, "healthy": True, "heartbeat_interval": 1.0, **state})
    finally:
        s.close()
    with cu.store.decisions._locked() as cur:  # type: ignore[union-attr]
        cur.execute("UPDATE beiand_gateways SET heartbeat_at = ? WHERE gateway = ?", (at, gateway))


def send(cu: CuRuntime, smms: dbl.Smms, xml: str, ctype: int = 2) -> tuple[int, str]:
    ans = cu.service.handle({k: str(v) for k, v in smms.params(xml.encode(), ctype).items()})
    return int(ans.code), ans.msg


def test_an_ack_waits_for_the_gateways_then_counts_the_stopped_one_and_acks_again(cu: CuRuntime) -> None:
    now = cu.now  # type: ignore[attr-defined]
    smms = dbl.Smms("http://unused")
    beat(cu, "gw-a", 0, ["H1"], now[0])
    beat(cu, "gw-b", 0, ["H2"], now[0])
    assert send(cu, smms, dbl.command_xml(7, 2, [(1, "bad.example", "")])) == (0, "filter in force")
    version = cu.store.version
    assert version > 0 and cu.store.decisions is not None and cu.store.decisions.head() == version  # in the store
    cu.sync()
    cu.settle()
    assert cu.outbox == [] and [g.name for g in cu.fleet] == ["gw-a", "gw-b"]  # both up, neither applied it yet
    beat(cu, "gw-a", version, ["H1"], now[0])
    beat(cu, "gw-b", version - 1, ["H2"], now[0], stopped=True)  # stopped before it applied it
    cu.sync()
    cu.settle()
    (ack,) = cu.outbox
    assert ack.result == AckResult.SOME and ack.msg.endswith("applied on 1 of 2 gateway(s); not yet: gw-b (stopped)")
    assert cu.status()["acks_pending"][0]["not_applied"] == ["gw-b"]
    text = generate_latest(cu.registry).decode()  # type: ignore[attr-defined]
    assert 'beiand_isms_fleet_gateways{state="down"} 1.0' in text and "beiand_isms_gateways_behind 0.0" in text
    assert 'beiand_isms_fleet_acks_total{result="some"} 1.0' in text
    cu.outbox.clear()
    now[0] += 30
    beat(cu, "gw-b", version, ["H2"], now[0])  # restarted: caught up
    beat(cu, "gw-a", version, ["H1"], now[0])
    cu.sync()
    cu.settle()
    (again,) = cu.outbox
    assert again.result == AckResult.ALL and again.msg.endswith("applied on all 2 gateway(s) (late: gw-b)")


def test_dt7_counts_the_inventorys_houses_and_a_house_whose_gateway_is_down(cu: CuRuntime) -> None:
    now = cu.now  # type: ignore[attr-defined]
    beat(cu, "gw-a", 0, ["H1"], now[0])
    beat(cu, "gw-b", 0, ["H2"], now[0] - 60)  # silent for a minute: down
    cu.sync()
    assert cu.houses() == (2, ["H2"])
    assert [g.why for g in cu.fleet] == ["", "silent 60 s"]


def test_type0_is_checked_against_the_inventory_in_its_ack(cu: CuRuntime) -> None:
    smms = dbl.Smms("http://unused")
    bd = ("<idcInfoManage><commandId>60</commandId><house><houseId>H1</houseId><ipSegment><startIp>198.51.100.0</startIp>"
          "<endIp>198.51.100.255</endIp></ipSegment></house></idcInfoManage>")
    assert send(cu, smms, bd, 0)[0] == 0
    cu.settle()
    (ack,) = cu.outbox
    assert ack.result == AckResult.ALL and "inventory: 1 mismatch(es): 198.51.100.128/25: the inventory names house H2, " \
        "the basic data H1" in ack.msg
    assert cu.mismatches == ["198.51.100.128/25: the inventory names house H2, the basic data H1"]


def test_reports_over_http_need_the_token(cu: CuRuntime) -> None:
    """POST /api/v1/isms/report writes DT 1, 7, 8, 9 at the next round; without the bearer token: 401."""
    registry = CollectorRegistry()
    ready = threading.Event()
    box: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            from aiohttp import web

            runner = web.AppRunner(_app(cu, registry, "tok"))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            box["port"] = runner.addresses[0][1]
            box["stop"] = asyncio.Event()
            ready.set()
            await box["stop"].wait()
            await runner.cleanup()

        box["loop"] = asyncio.new_event_loop()
        box["loop"].run_until_complete(main())

    t = threading.Thread(target=serve)
    t.start()
    assert ready.wait(10)
    url = f"http://127.0.0.1:{box['port']}"
    try:
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(urllib.request.Request(url + "/api/v1/isms/report", data=b""), timeout=5)
        assert exc.value.code == 401 and cu.forced == []
        req = urllib.request.Request(url + "/api/v1/isms/report", data=b"", headers={"Authorization": "Bearer tok"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 202
        assert sorted(cu.forced) == ["basic", "heartbeat", "report"]
        with urllib.request.urlopen(url + "/api/v1/isms/status", timeout=5) as r:
            st = json.loads(r.read())
        assert st["cu"] is True and st["idc_id"] == dbl.IDC_ID
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        t.join(10)


def test_the_fleet_read_waits_for_a_command_being_written_on_the_same_connection(cu: CuRuntime) -> None:
    """Review of issue 30, F1: the endpoint's thread writes a command in a transaction on the store's
    connection; the CU's read of the fleet in another thread waits for it, and neither fails."""
    inside, release, done = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with cu.store.lock, cu.store.writing():
                cu.store.note_sequence(99)
                inside.set()
                release.wait(10)
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        cu.sync()
        done.set()

    tw = threading.Thread(target=write)
    tw.start()
    assert inside.wait(10)
    tr = threading.Thread(target=read)
    tr.start()
    assert not done.wait(0.3)  # waits for the write's transaction, does not read inside it
    release.set()
    tw.join(10)
    tr.join(10)
    assert done.is_set() and not errors and cu.store_error == ""
    assert cu.store.decisions is not None and cu.store.decisions.head() == cu.store.version > 0


def test_acks_survive_a_restart_of_the_cu(cu: CuRuntime, tmp_path: Path) -> None:
    """Review of issue 30, F7: the acks SMMS has not taken (to send, or waiting for the fleet) are
    kept on disk and sent by the next CU."""
    now = cu.now  # type: ignore[attr-defined]
    smms = dbl.Smms("http://unused")
    beat(cu, "gw-a", 0, ["H1"], now[0])
    assert send(cu, smms, dbl.command_xml(8, 2, [(1, "bad.example", "")]))[0] == 0
    assert send(cu, smms, "<codeList><gzlx><gzlxXx><id>1</id><mc>域名</mc></gzlxXx></gzlx></codeList>", 4)[0] == 0
    cu.sync()
    cu.settle()
    cu.save_acks()
    assert cu.acks_file.exists()
    again = CuRuntime(cu.state, CollectorRegistry(), clock=lambda: now[0])
    try:
        assert [a.command_id for a in again.outbox] == [a.command_id for a in cu.outbox]
        assert [p.ack.command_id for p in again.tracker.pending] == [8]
        assert again.tracker.pending[0].ack.version == cu.tracker.pending[0].ack.version > 0
    finally:
        assert again.store.decisions is not None
        again.store.decisions.close()


def test_acks_back_off_while_smms_is_away_and_one_refused_ack_does_not_hold_the_others(cu: CuRuntime) -> None:
    """Review of issue 30, F7: a failed idc_commandack is tried again after 5 s, 10 s, …; an ack SMMS
    refuses is found (one at a time) and dropped, the others reach it."""
    import dataclasses

    from beiand.isms.service import Ack
    from beiand.isms.wire.codes import AckType

    now = cu.now  # type: ignore[attr-defined]
    cu.cfg = dataclasses.replace(cu.cfg, isms=dataclasses.replace(cu.cfg.isms, ack_url="http://127.0.0.1:9/down"))
    cu.outbox += [Ack(i, AckType.FILTER, AckResult.ALL, "ok") for i in (1, 2, 3)]
    cu.send_acks()  # nothing listens on port 9
    assert len(cu.outbox) == 3 and cu._ack_retry_at == now[0] + 5
    cu.send_acks()
    assert cu._ack_failures == 1  # not tried again before its time
    smms = dbl.AckServer()
    smms.refuse = {"2"}
    try:
        cu.cfg = dataclasses.replace(cu.cfg, isms=dataclasses.replace(cu.cfg.isms, ack_url=smms.url))
        now[0] += 5
        cu.send_acks()  # the batch is refused (one of them is bad): one at a time from now on
        assert len(cu.outbox) == 3 and cu._ack_batch == 1 and smms.acks == []
        for _ in range(3):
            cu.send_acks()
        assert cu.outbox == [] and [a["commandId"] for a in smms.acks] == ["1", "3"]
    finally:
        smms.close()


def test_dt1_after_a_reload_only_when_the_basic_data_changed(cu: CuRuntime, tmp_path: Path) -> None:
    """Review of issue 30, F11: a reload (an hourly records refresh) does not send the whole basic
    data again when nothing in it changed; the daily timer does."""
    from beiand.isms.wire.codes import DataType

    assert cu.due(cu.clock()) == ["basic", "heartbeat"]  # at start
    assert cu.run_due(["basic"]) == {str(int(DataType.BASIC_INFO)): 1}
    cu.reload(cu.cfg)
    assert "basic-changed" in cu.due(cu.clock())
    assert cu.run_due(["basic-changed"]) == {}  # the same inventory and records: nothing sent
    inv = Path(str(cu.cfg.inventory.file))
    inv.write_text(inv.read_text() + "203.0.113.0/24,c,H3\n", encoding="utf-8")
    cu._bind(State(cu.cfg, cu.state.index, load_inventory(inv), cu.state.policy, 0.0))
    assert cu.run_due(["basic-changed"]) == {str(int(DataType.BASIC_INFO)): 1}  # a new house: sent
