"""One register, every gateway (issue 35): three ``beiand run`` with ``records.source = "store"``,
each in its network namespace, following one real PostgreSQL in a namespace of its own.

- ``beiand records import`` on one machine is applied by all three at the same version (the
  metric, the heartbeat in ``fleet status``), fetched by content;
- a second import that loses 90% of the rows is refused (exit 1, nothing published) and the old
  version keeps judging everywhere;
- a name filed in version 1 and removed in version 2 is ``filed`` by ``records lookup --at`` a time
  of version 1 and ``unfiled`` now; ``replay --at`` over a capture of that time agrees with the
  access log the gateway wrote then;
- the store away: the gateways keep judging with their copy; one restarted starts from it.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from beiand.accesslog import Query, query
from beiand.lab.traffic import quic_initial_datagrams, udp
from beiand.records.generate import OUR_PROVIDER
from tests.integration.nsdaemon import metric, write_records
from tests.integration.test_fleet_decisions import Fleet, fleet, judged, wait_for

pytestmark = pytest.mark.integration
__all__ = ["fleet"]  # the fixture, shared with the decisions' lab

GONE = "site99.example.cn"  # filed in version 1, removed in version 2
KEPT = "site50.example.cn"


def _store_mode(f: Fleet) -> None:
    """Every gateway judges with the register: no records file of its own (the import is the CLI's)."""
    for d in f.daemons:
        text = d.config.read_text(encoding="utf-8")
        text = text.replace(f'files = ["{d.records}"]', 'source = "store"')
        text = text.replace(f'file = "{d.wd / "inventory.csv"}"', "")
        d.config.write_text(text, encoding="utf-8")


def _pcap(path: Path, frames: list[tuple[float, bytes]]) -> None:
    """A classic pcap (Ethernet) of ``frames`` at their times."""
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ts, frame in frames:
            f.write(struct.pack("<IIII", int(ts), int((ts % 1) * 1_000_000), len(frame), len(frame)))
            f.write(frame)


def _applied(f: Fleet, version: int) -> bool:
    return all(metric(d.metrics(), "beiand_register_applied_version") == version for d in f.daemons)


def test_one_register_every_gateway_any_day(fleet: Fleet, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = fleet
    _store_mode(f)
    v1, v2, v3 = tmp_path / "v1.csv", tmp_path / "v2.csv", tmp_path / "v3.csv"
    write_records(v1, 100)  # site0 … site99
    write_records(v2, 99)  # site99 removed
    write_records(v3, 10)  # 90% lost
    inv = f.daemons[0].wd / "inventory.csv"
    assert f.cli(["records", "import", str(v1), "--inventory", str(inv), "--by", "ops", "--why", "day 1"]) == 0
    for d in f.daemons:
        d.start()
    wait_for(lambda: _applied(f, 2), "register version 2 (records v1, inventory) on all three")
    for d in f.daemons:
        assert judged(d, GONE).verdict == "filed"
    # traffic of version 1's time, captured: the replay below judges it again
    t_v1 = time.time()
    frame = udp("10.9.0.2", "198.51.100.10", 31999, 443, quic_initial_datagrams(GONE)[0])
    logged = judged(f.daemons[0], GONE)
    assert logged.verdict == "filed" and logged.records_version == "2"  # the register version that decided it
    time.sleep(0.2)

    assert f.cli(["records", "import", str(v2), "--by", "ops", "--why", "day 2"]) == 0
    wait_for(lambda: _applied(f, 3), "register version 3 on all three")
    for d in f.daemons:
        r = judged(d, GONE)
        assert (r.verdict, r.records_version) == ("unfiled", "3")
        assert judged(d, KEPT).verdict == "filed"

    capsys.readouterr()
    assert f.cli(["records", "import", str(v3)]) == 1  # the reload guard: nothing published
    assert "refused" in capsys.readouterr().err
    time.sleep(1.5)  # two polls: nothing new reaches a gateway
    assert _applied(f, 3)
    for d in f.daemons:
        assert judged(d, KEPT).verdict == "filed"

    capsys.readouterr()
    f.cli(["fleet", "status", "--json"])
    status = json.loads(capsys.readouterr().out)
    assert sorted(g["register"] for g in status["gateways"]) == [3, 3, 3]

    capsys.readouterr()
    f.cli(["records", "log", "--json"])
    log = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(v["version"], v["kind"], v["rows"]) for v in log] == [(3, "records", 99), (2, "inventory", 1), (1, "records", 100)]
    assert f.cli(["records", "diff", "1", "3", "--kind", "records", "--json"]) == 1
    assert [json.loads(x)["change"] for x in capsys.readouterr().out.splitlines()] == ["removed"]

    look = ["records", "lookup", GONE, "--server", "198.51.100.10", "--provider", OUR_PROVIDER, "--json"]
    assert f.cli([*look, "--at", f"{t_v1:.3f}"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "filed"
    assert f.cli([*look, "--at", f"{time.time():.3f}"]) == 1
    assert json.loads(capsys.readouterr().out)["verdict"] == "unfiled"

    # logs query shows which version decided each record
    from beiand.cli import main

    capsys.readouterr()
    assert main(["logs", "query", "--log-dir", str(f.daemons[0].wd / "log"), "--name", GONE, "--format", "jsonl"]) == 0
    shown = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert {(r["verdict"], r["records_version"]) for r in shown} == {("filed", "2"), ("unfiled", "3")}

    cap = tmp_path / "then.pcap"
    _pcap(cap, [(logged.ts_ms / 1000, frame)])
    replay = ["replay", str(cap), "--provider", OUR_PROVIDER, "--json", "--no-connections"]
    f.cli([*replay, "--at", f"{logged.ts_ms / 1000:.3f}", "--log-dir", str(tmp_path / "replayed")])
    then = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [(r["name"], r["verdict"]) for r in then] == [(GONE, logged.verdict)]
    # the replay's own access log says it judged with the version the gateway judged with then
    again = [r for r in query(tmp_path / "replayed", Query()) if r.kind == "quic-sni"]
    assert [(r.name, r.verdict, r.records_version) for r in again] == [(GONE, "filed", logged.records_version)]
    f.cli([*replay, "--at", f"{time.time():.3f}"])
    now = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [(r["name"], r["verdict"]) for r in now] == [(GONE, "unfiled")]

    # The store away: each gateway judges with its copy; one restarted starts from it.
    f.pg.stop()
    for d in f.daemons:
        try:
            d.wait_for(lambda m: metric(m, "beiand_register_store_up") == 0, 30, "beiand_register_store_up 0")
        except AssertionError:
            print(d.log()[-6000:])
            raise
    d0 = f.daemons[0]
    assert d0.proc is not None
    d0.proc.terminate()
    d0.proc.wait(30)
    d0.start()
    assert judged(d0, KEPT).verdict == "filed" and judged(d0, GONE).verdict == "unfiled"
    assert metric(d0.metrics(), "beiand_register_applied_version") == 3
