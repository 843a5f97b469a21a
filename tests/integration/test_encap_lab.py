"""The live daemon sees what replay sees (issue 15): frames inside every encapsulation the decoder
walks, nested up to two deep, sent over a veth to ``beiand run``; every name they carry shows up
in ``/api/v1/observations``, so the kernel filter let each of them through."""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import pytest

from beiand.lab import encap
from beiand.lab import traffic as t
from beiand.lab.demo import build
from beiand.lab.labdemo import http_get, wait_ready, write_config
from beiand.lab.netns import Lab, in_netns

pytestmark = pytest.mark.integration

C4, S4, C6, S6 = "192.0.2.10", "198.51.100.10", "2001:db8:1::10", "2001:db8:100::10"
D29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")  # draft-ietf-quic-tls-29 section 5.2


def frames() -> dict[str, bytes]:
    """name → one Ethernet frame that names it; every encapsulation once, some nested two deep."""
    out: dict[str, bytes] = {}
    port = 41000

    def tls(name: str, v6: bool = False) -> bytes:
        nonlocal port
        port += 1
        c, s = (C6, S6) if v6 else (C4, S4)
        return t.tcp(c, s, port, 443, 1, payload=t.client_hello(name))[14:]

    for step in sorted(encap.STEPS):
        name = f"{step}.encap.example.com"
        out[name] = encap.wrap(tls(name), [step])
        name6 = f"{step}.v6.encap.example.com"
        out[name6] = encap.wrap(tls(name6, v6=True), [step], [True])
    for steps in (["vxlan", "qinq"], ["gre", "mpls"], ["gtpu-ext", "vlan"], ["geneve", "pppoe-compressed"], ["erspan", "gtpu"],
                  ["ipip", "vxlan"], ["mpls-pw", "gre-key-seq"]):
        name = "-".join(steps) + ".nested.example.com"
        out[name] = encap.wrap(tls(name), steps, [False, True])
    out["http.encap.example.com"] = encap.wrap(
        t.tcp(C4, S4, 42000, 80, 1, payload=b"GET / HTTP/1.1\r\nHost: http.encap.example.com\r\n\r\n")[14:], ["vxlan", "vlan"])
    dns = t.dns_response("dns.encap.example.com", ["198.51.100.11"])
    out["dns.encap.example.com"] = encap.wrap(t.udp("198.51.100.53", C4, 53, 5353, dns)[14:], ["gtpu", "qinq"])
    quic = t.quic_initial_datagrams("quic.encap.example.com")[0]
    out["quic.encap.example.com"] = encap.wrap(t.udp(C4, S4, 50001, 443, quic)[14:], ["geneve", "mpls"])
    draft = t.quic_initial("draft29.encap.example.com", 0xFF00001D, D29, dcid=b"\x07" * 8)
    out["draft29.encap.example.com"] = encap.wrap(t.udp(C4, S4, 50002, 443, draft)[14:], ["gre"])
    gq = t.gquic_chlo("gquic.encap.example.com", b"Q043")
    out["gquic.encap.example.com"] = encap.wrap(t.udp(C4, S4, 50003, 443, gq)[14:], ["vlan"])
    # bulk inside the same tunnels, which the kernel should keep: it must not crowd anything out
    for step in ("vxlan", "gre", "gtpu"):
        for i in range(50):
            out[f"bulk-{step}-{i}"] = encap.wrap(t.tcp(S4, C4, 443, 40000, i, payload=b"x" * 1000)[14:], [step])
    return out


def test_every_name_inside_every_encapsulation_reaches_the_daemon(tmp_path) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    files = build(tmp_path / "samples")
    cfg = write_config(tmp_path, files, workers=1)
    todo = frames()
    want = {n for n in todo if not n.startswith("bulk-")}
    with Lab("be") as lab:
        with open(tmp_path / "beiand.log", "ab") as logf:
            daemon = lab.spawn(lab.gw, [sys.executable, "-m", "beiand.cli", "run", "--config", str(cfg)], stdout=logf, stderr=logf)
        wait_ready(lab, daemon)

        def send() -> None:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            s.bind(("cl0", 0))
            for f in todo.values():
                s.send(f)
                time.sleep(0.001)
            s.close()

        in_netns(lab.cli, send)
        seen: set[str] = set()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            rows = json.loads(http_get(lab, "/api/v1/observations?limit=10000")[1])
            seen = {r["name"] for r in rows}
            if want <= seen:
                break
            time.sleep(0.5)
        metrics = http_get(lab, "/metrics")[1].decode()
    missing = sorted(want - seen)
    assert not missing, f"{len(missing)} of {len(want)} names never reached the daemon: {missing}"
    passed = sum(float(line.rpartition(" ")[2]) for line in metrics.splitlines()
                 if line.startswith("beiand_capture_kernel_packets_total"))
    assert passed < len(want) + 60, f"the kernel passed {passed} frames for {len(want)} names (+150 bulk frames sent)"
