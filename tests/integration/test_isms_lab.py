"""The regulator's commands in the lab (issue 20): the SMMS double calls the daemon's
``idc_command`` inside the gateway namespace; curl in the client namespace shows what is blocked."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from beiand.accesslog import Query, query
from beiand.cli import main
from beiand.isms.wire.model import format_time
from beiand.lab.demo import build
from beiand.lab.labdemo import http_get, wait_ready, write_config
from beiand.lab.netns import Lab, in_netns
from tests import isms_double as dbl
from tests.integration.test_enforce_lab import INVENTORY, curl
from tests.integration.test_nft_address_rules import LISTENER, TRIES, completed

pytestmark = pytest.mark.integration
ISMS_PORT = 9641


@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    wd = tmp_path_factory.mktemp("isms")
    files = build(wd / "samples")
    Path(files["inventory"]).write_text(INVENTORY)
    sec = dbl.write_secrets(wd / "secrets")
    cfg = write_config(wd, files, extra=f'\n[enforce]\ninline = true\n\n[isms]\nenabled = true\nidc_id = "{dbl.IDC_ID}"\n'
                       f'house_id = "H1"\nlisten = "127.0.0.1:{ISMS_PORT}"\nsecrets_dir = "{sec}"\nheartbeat_interval = 10\n')
    with Lab() as lb:
        lb.start_servers(wd)
        with open(wd / "beiand.log", "ab") as logf:
            daemon = lb.spawn(lb.gw, [sys.executable, "-m", "beiand.cli", "run", "--config", str(cfg)], stdout=logf, stderr=logf)
        wait_ready(lb, daemon)
        smms = dbl.Smms(f"http://127.0.0.1:{ISMS_PORT}/isms/idc_command")
        yield {"lab": lb, "daemon": daemon, "wd": wd, "cfg": cfg, "smms": smms}
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)


def send(lab: dict[str, Any], xml: str, ctype: int = 2) -> tuple[int, str]:
    return in_netns(lab["lab"].gw, lambda: lab["smms"].send(xml, ctype))  # type: ignore[no-any-return]


def spool_rows(wd: Path, dt: int, tag: str) -> list[dict[str, str]]:
    out = []
    for f in sorted((wd / "state" / "isms" / "spool" / str(dt)).glob("*/*.xml")):
        root = ET.fromstring(dbl.unpack_file(f.read_bytes()))
        out += [{c.tag: c.text or "" for c in r} for r in root.iter(tag)]
    return out


def test_filter_command_blocks_a_filed_name_within_a_second_and_is_reported(lab, capsys) -> None:  # type: ignore[no-untyped-def]
    lb = lab["lab"]
    assert curl(lb, "www.example.com.cn", "198.51.100.10")[0] == 0  # filed: works
    assert send(lab, dbl.command_xml(9001, 2, [(1, "example.com.cn", "")]))[0] == 0
    time.sleep(1.0)  # every worker re-reads the commands four times a second
    rc, body, _ = curl(lb, "www.example.com.cn", "198.51.100.10")
    assert rc in (35, 56) and body == b""
    time.sleep(0.5)
    recs = [r for r in query(lab["wd"] / "log", Query(name="www.example.com.cn")) if r.order == "isms:9001"]
    assert recs and all(r.action == "block" for r in recs)
    assert main(["isms", "report", "--now", "--config", str(lab["cfg"]), "--window", "600"]) == 0
    capsys.readouterr()
    rows = spool_rows(lab["wd"], 5, "log")
    assert any(r["commandId"] == "9001" and r["domain"] == "www.example.com.cn" for r in rows)
    assert send(lab, dbl.command_xml(9001, 2, [], op=1))[0] == 0  # delete: access opens again
    time.sleep(1.0)
    assert curl(lb, "www.example.com.cn", "198.51.100.10")[0] == 0


def test_monitor_command_only_flags(lab) -> None:  # type: ignore[no-untyped-def]
    lb = lab["lab"]
    assert send(lab, dbl.command_xml(9002, 1, [(1, "api.shapp.cn", "")], block=0))[0] == 0
    time.sleep(1.0)
    rc, _body, code = curl(lb, "api.shapp.cn", "198.51.100.20")
    assert rc == 0 and code == "200"
    time.sleep(0.5)
    recs = [r for r in query(lab["wd"] / "log", Query(name="api.shapp.cn")) if r.order == "isms-monitor:9002"]
    assert recs and all(r.action == "flag" for r in recs)


def test_an_expired_command_stops_applying(lab) -> None:  # type: ignore[no-untyped-def]
    lb = lab["lab"]
    until = format_time(time.time() + 3)
    assert send(lab, dbl.command_xml(9003, 2, [(1, "xn--fsqu00a.xn--fiqs8s", "")], expired=until))[0] == 0
    time.sleep(1.0)
    assert curl(lb, "xn--fsqu00a.xn--fiqs8s", "198.51.100.10")[0] in (35, 56)
    time.sleep(3.0)
    assert curl(lb, "xn--fsqu00a.xn--fiqs8s", "198.51.100.10")[0] == 0


def test_a_keyword_rule_is_refused_with_its_code(lab, capsys) -> None:  # type: ignore[no-untyped-def]
    code, msg = send(lab, dbl.command_xml(9004, 2, [(3, "赌博", "")]))
    assert code == 0 and msg.startswith("unsupported: subtype 3 关键字")
    assert main(["isms", "status", "--config", str(lab["cfg"]), "--json"]) == 0
    assert '"commandId": 9004' in capsys.readouterr().out
    deadline = time.time() + 3
    acks: list[dict[str, str]] = []
    while time.time() < deadline and not any(a["commandId"] == "9004" for a in acks):
        time.sleep(0.2)
        acks = spool_rows(lab["wd"], 10, "ack")  # DT 10 for the CU (EU mode)
    assert [(a["resultCode"], a["msgInfo"][:14]) for a in acks if a["commandId"] == "9004"] == [("2", "unsupported: s")]
    deadline = time.time() + 3
    m = ""
    while time.time() < deadline and "beiand_isms_unsupported_total{" not in m:
        time.sleep(0.2)
        m = http_get(lab["lab"], "/metrics")[1].decode()
    assert 'beiand_isms_unsupported_total{reason="unsupported-subtype"} 1.0' in m
    st = json.loads(http_get(lab["lab"], "/api/v1/status")[1])["isms"]
    assert st["idc_id"] == dbl.IDC_ID and st["refused"] >= 1 and st["counts"]["applied"] >= 1
    assert "beiand_isms_commands_total{result=\"applied\"}" in m and "beiand_isms_last_command_timestamp_seconds" in m


def test_a_log_query_returns_the_records_of_the_window(lab) -> None:  # type: ignore[no-untyped-def]
    lb = lab["lab"]
    assert curl(lb, "www.example.com.cn", "198.51.100.10", "http")[0] == 0
    time.sleep(0.6)
    start = format_time(time.time() - 600)
    lq = (f"<logQuery><commandId>9005</commandId><idcId>{dbl.IDC_ID}</idcId><commandInfo><houseId>H1</houseId>"
          f"<startTime>{start}</startTime><destIp><startIp>198.51.100.10</startIp><endIp>198.51.100.10</endIp></destIp>"
          "<dstPort>80</dstPort></commandInfo></logQuery>")
    assert send(lab, lq, 1)[0] == 0
    deadline = time.time() + 5
    rows: list[dict[str, str]] = []
    while time.time() < deadline and not rows:
        time.sleep(0.3)
        rows = spool_rows(lab["wd"], 3, "log")
    assert rows and all(r["destIp"] == "198.51.100.10" and r["destPort"] == "80" for r in rows)
    assert any(r["url"] == "http://www.example.com.cn/" for r in rows)  # the request's URL (issue 28, 14)
    assert spool_rows(lab["wd"], 7, "x") == [] and list((lab["wd"] / "state" / "isms" / "spool" / "7").glob("*/*.xml"))


def test_an_address_and_port_filter_cuts_that_port_whatever_it_is_and_is_acked_executed(lab) -> None:  # type: ignore[no-untyped-def]
    """Issue 26 (2): an ISMS filter on a hosted address and TCP 22 (a port beiand never names) was
    acked executed while SSH still connected. Now it is an nftables cut: 0 of 20 connections
    complete, in a monitor prefix too; the same for a closure order on the address."""
    lb = lab["lab"]
    ip = "198.51.100.30"  # a monitor prefix: a regulator's filter acts in every mode
    p = lb.spawn(lb.srv, [sys.executable, "-c", LISTENER, ip, "22"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    q = lb.spawn(lb.srv, [sys.executable, "-c", LISTENER, "198.51.100.31", "22"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert q.stdout is not None and q.stdout.readline() == b"listening\n"
    assert p.stdout is not None and p.stdout.readline() == b"listening\n"
    try:
        assert completed(lb, 22, server=ip) == TRIES and completed(lb, 80, server=ip) == TRIES
        code, msg = send(lab, dbl.command_xml(9010, 2, [(5, ip, ""), (7, "22", ""), (8, "1", "")]))
        assert code == 0 and "every port" in msg, msg  # executed, and said how
        wait_for_cut(lb, "port4", ip)
        assert completed(lb, 22, server=ip) == 0 and completed(lb, 80, server=ip) == TRIES
        assert send(lab, dbl.command_xml(9010, 2, [], op=1))[0] == 0
        wait_for_cut(lb, "port4", ip, present=False)
        assert completed(lb, 22, server=ip) == TRIES
        state = ["--state-dir", str(lab["wd"] / "state")]
        assert main(["block", "add", "198.51.100.31", "--order", "京通管〔2026〕22号", *state]) == 0
        wait_for_cut(lb, "ip4", "198.51.100.31")
        assert completed(lb, 22, server="198.51.100.31") == 0
        assert main(["block", "remove", "198.51.100.31", *state]) == 0
        wait_for_cut(lb, "ip4", "198.51.100.31", present=False)
        # a filter nftables cannot carry (a source port) is acked partial, never executed
        code, msg = send(lab, dbl.command_xml(9011, 2, [(5, ip, ""), (6, "5000", "")]))
        assert code == 0 and msg.startswith("partial"), msg
        assert send(lab, dbl.command_xml(9011, 2, [], op=1))[0] == 0
        deadline = time.time() + 5
        acks: list[dict[str, str]] = []
        while time.time() < deadline and not any(a["commandId"] == "9011" for a in acks):
            time.sleep(0.2)
            acks = spool_rows(lab["wd"], 10, "ack")
        assert {(a["commandId"], a["resultCode"]) for a in acks} >= {("9010", "0"), ("9011", "1")}
    finally:
        for proc in (p, q):
            assert proc.stdin is not None
            proc.stdin.close()


def test_a_filter_with_a_later_effect_time_is_cut_when_it_starts(lab) -> None:  # type: ignore[no-untyped-def]
    """Issue 26: the supervisor wrote a later effectTime into nftables at its next periodic resync,
    up to 10 s late; it now syncs at the start itself (one tick of its loop, 0.2 s)."""
    lb, ip = lab["lab"], "198.51.100.32"
    start = float(math.ceil(time.time()) + 3)  # effectTime has whole seconds
    code, msg = send(lab, dbl.command_xml(9012, 2, [(5, ip, ""), (7, "22", ""), (8, "1", "")], effect=format_time(start)))
    assert code == 0 and "every port" in msg, msg
    assert ip not in lb.run(lb.gw, ["nft", "list", "set", "inet", "beiand", "port4"], capture_output=True, text=True).stdout
    wait_for_cut(lb, "port4", ip)
    seen = time.time()
    try:
        assert start <= seen < start + 2, seen - start
    finally:
        assert send(lab, dbl.command_xml(9012, 2, [], op=1))[0] == 0
        wait_for_cut(lb, "port4", ip, present=False)


def wait_for_cut(lb: Lab, set_name: str, ip: str, present: bool = True) -> None:
    """Until beiand's nftables set holds (or no longer holds) ``ip``: the supervisor's sync."""
    deadline = time.time() + 10
    while time.time() < deadline:
        out = lb.run(lb.gw, ["nft", "list", "set", "inet", "beiand", set_name], capture_output=True, text=True).stdout
        if (ip in out) == present:
            return
        time.sleep(0.05)
    raise AssertionError(f"{set_name}: {ip} {'never came' if present else 'never left'}")
