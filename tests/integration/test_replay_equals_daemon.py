"""Replay = daemon (issue 26): the gateway's own capture, replayed with the same config and state
directory, gives flow for flow the daemon's verdict, action and order or command.

A lab run of ``beiand run`` in enforce (inline and passive) under every overlay: a closure order
on a name, one on a CIDR prefix, the regulator's filter on a domain, a monitor command, a noFilter
entry, and an order lifted mid-run. Traffic is sent only once every worker has applied a change
(``beiand_overlay_rules``): the daemon applies a change when its workers re-read the files, replay
at the time the change was made; traffic sent between the two is the one case they may differ.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest

from beiand.accesslog import Query, query
from beiand.cli import main
from beiand.lab.browsers import Sniffer
from beiand.lab.demo import build
from beiand.lab.labdemo import http_get, wait_ready, write_config
from beiand.lab.netns import DNS_IP, Lab, in_netns
from beiand.lab.traffic import PcapWriter
from tests import isms_double as dbl
from tests.integration.test_enforce_lab import INVENTORY, curl

pytestmark = pytest.mark.integration
NAMED = {"tls-sni", "http-host", "quic-sni", "dns-answer", "ip-only"}


def overlay_rules(lb: Lab) -> dict[tuple[str, str], float]:
    """(overlay, worker) → rules in force, as each worker reports it."""
    out = {}
    for line in http_get(lb, "/metrics")[1].decode().splitlines():
        if line.startswith("beiand_overlay_rules{"):
            labels, _, value = line.rpartition(" ")
            d = dict(kv.split("=", 1) for kv in labels[len("beiand_overlay_rules{"):-1].split(","))
            out[d["overlay"].strip('"'), d["worker"].strip('"')] = float(value)
    return out


def wait_applied(lb: Lab, workers: int, **want: int) -> None:
    """Until every worker reports ``want`` rules in force per overlay (orders, isms)."""
    deadline = time.time() + 20
    got: dict[tuple[str, str], float] = {}
    while time.time() < deadline:
        got = overlay_rules(lb)
        if all(got.get((k, str(w))) == v for k, v in want.items() for w in range(workers)):
            return
        time.sleep(0.05)
    raise AssertionError(f"the workers did not apply {want}: {got}")


def send(lb: Lab, smms: dbl.Smms, xml: str) -> None:
    code, msg = in_netns(lb.gw, lambda: smms.send(xml, 2))
    assert code == 0, msg


def decided(records: list[Any]) -> collections.Counter[tuple[Any, ...]]:
    """Named decisions, flow for flow: what was decided (a block the enforcer could not carry out
    is logged ``flag`` with its outcome beside it: the decision was ``block``)."""
    out: collections.Counter[tuple[Any, ...]] = collections.Counter()
    for r in records:
        if r.kind not in NAMED or r.direction == "out":
            continue
        action = "block" if r.outcome in ("breaker-open", "failed") else r.action
        out[(r.client_ip, r.client_port, r.server_ip, r.server_port, r.transport, r.kind, r.name, r.verdict, action,
             r.order)] += 1
    return out


@pytest.mark.parametrize("mode", ["inline", "passive"])
def test_replay_of_the_gateways_capture_decides_exactly_as_the_daemon_did(mode: str, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    wd = tmp_path
    files = build(wd / "samples")
    Path(files["inventory"]).write_text(INVENTORY)
    sec = dbl.write_secrets(wd / "secrets")
    port = 9700 + (os.getpid() % 200)
    inline = "inline = true\n" if mode == "inline" else ""
    cfg = write_config(wd, files, extra=f'\n[enforce]\n{inline}max_blocks_per_minute = 100000\nmin_verdicts_for_share = 1000000\n'
                       f'\n[isms]\nenabled = true\nidc_id = "{dbl.IDC_ID}"\nhouse_id = "H1"\nlisten = "127.0.0.1:{port}"\n'
                       f'secrets_dir = "{sec}"\nheartbeat_interval = 3600\n')
    smms = dbl.Smms(f"http://127.0.0.1:{port}/isms/idc_command")
    state = ["--state-dir", str(wd / "state")]
    with Lab() as lb:
        lb.start_servers(wd)
        with open(wd / "beiand.log", "ab") as logf:
            daemon = lb.spawn(lb.gw, [sys.executable, "-m", "beiand.cli", "run", "--config", str(cfg)], stdout=logf, stderr=logf)
        sniff = None
        try:
            wait_ready(lb, daemon)
            sniff = Sniffer(lb.gw, lb.gw_if)  # the gateway's own capture: its client side, both directions
            wait_applied(lb, 2, order=0, isms=0)
            # the regulator: a filter on a filed domain, a monitor on another, a noFilter entry on an unfiled one
            send(lb, smms, dbl.command_xml(8101, 2, [(1, "api.shapp.cn", "")]))
            send(lb, smms, dbl.command_xml(8102, 1, [(1, "www.example.com.cn", "")], block=0))
            nf = (f"<noFilter><commandId>8103</commandId><idcId>{dbl.IDC_ID}</idcId><type>1</type>"
                  "<contents>unfiled.example.xyz</contents><level>1</level><operationType>0</operationType>"
                  "<timeStamp>2026-11-29 12:00:00</timeStamp></noFilter>")
            send(lb, smms, nf)
            wait_applied(lb, 2, order=0, isms=3)
            # what the client sees: inline, exactly; passive, a block is a race with the server (the
            # decisions compared below are what must agree)
            raced = mode == "passive"
            assert curl(lb, "api.shapp.cn", "198.51.100.20")[0] in (35, 56) or raced  # filtered (a dry-run prefix)
            assert curl(lb, "www.example.com.cn", "198.51.100.10")[0] == 0  # monitored: served
            assert curl(lb, "unfiled.example.xyz", "198.51.100.11")[2] == "200"  # noFilter: exempt, served
            assert curl(lb, "shop.example.net", "198.51.100.12", "http")[2] == "451" or raced  # the records: mismatch
            # closure orders: a name, and a prefix (its addresses cut in nftables; a DNS answer into it is flagged)
            assert main(["block", "add", "xn--fsqu00a.xn--fiqs8s", "--order", "京通管〔2026〕71号", *state]) == 0
            assert main(["block", "add", "198.51.100.12/31", "--order", "京通管〔2026〕72号", *state]) == 0
            wait_applied(lb, 2, order=2, isms=3)
            assert curl(lb, "xn--fsqu00a.xn--fiqs8s", "198.51.100.10")[0] in (35, 56) or raced
            answer = in_netns(lb.cli, lambda: dns.query.udp(dns.message.make_query("shop.example.net", "A"), DNS_IP, timeout=3))
            assert "198.51.100.12" in answer.to_text()  # an answer into the ordered prefix: flagged, never blocked
            assert curl(lb, "www.example.com.cn", "198.51.100.10", "http")[2] == "200"
            # the name order lifted mid-run: served again
            assert main(["block", "remove", "xn--fsqu00a.xn--fiqs8s", "--reason", "lifted", *state]) == 0
            wait_applied(lb, 2, order=1, isms=3)
            assert curl(lb, "xn--fsqu00a.xn--fiqs8s", "198.51.100.10")[0] == 0
            assert curl(lb, "unfiled.example.xyz", "198.51.100.11", "http")[2] == "200"
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
            frames = sniff.stop() if sniff is not None else []
    pcap = wd / "gateway.pcap"
    with PcapWriter(pcap, 1) as w:
        for ts, _ptype, frame in sorted(frames, key=lambda f: f[0]):
            w.write(ts, frame)
    assert main(["replay", "--config", str(cfg), "--log-dir", str(wd / "replayed"), str(pcap)]) == 1  # 1: names not filed seen
    daemon_log = decided(list(query(wd / "log", Query())))
    replayed = decided(list(query(wd / "replayed", Query())))
    orders = {k[9] for k in daemon_log}
    # every overlay decided something in the daemon (the test covers what it says)
    assert {"isms:8101", "isms-monitor:8102", "isms-nofilter:8103", "京通管〔2026〕71号", "京通管〔2026〕72号"} <= orders, orders
    assert sum(daemon_log.values()) >= 9, daemon_log
    assert replayed == daemon_log, (f"only the daemon: {daemon_log - replayed}\nonly replay: {replayed - daemon_log}")
