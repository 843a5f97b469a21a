"""Compare with a peer: every SNI / Host / DNS name tshark finds in a capture, beiand finds too."""

import random
import shutil
import subprocess

import pytest

from beiand.capture import read_capture
from beiand.capture.bpf import build, run
from beiand.lab import encap
from beiand.lab import traffic as t
from beiand.net.decoder import Decoder

pytestmark = [pytest.mark.integration, pytest.mark.peer]


def build_capture(path, steps=()):
    rng = random.Random(4)
    frames = []
    c, s = "192.0.2.10", "198.51.100.10"
    port = 30000
    for i in range(30):
        port += 1
        kind = i % 6
        if kind == 0:
            frames += t.tcp_session(c, s, port, 443, t.client_hello(f"tls{i}.example.com", ["h2"]))
        elif kind == 1:
            data = t.client_hello(f"big{i}.example.cn", ["h2"], big=True)
            order = list(range(3))
            rng.shuffle(order)
            frames += t.tcp_session(c, s, port, 443, data, segment=1000, order=order)
        elif kind == 2:
            frames += t.tcp_session(c, s, port, 80, f"GET / HTTP/1.1\r\nHost: http{i}.example.org\r\n\r\n".encode())
        elif kind == 3:
            frames.append(t.udp("192.0.2.53", c, 53, port, t.dns_response(f"dns{i}.example.net", [s], cnames=[f"c{i}.cdn.example"])))
        elif kind == 4:
            for dg in t.quic_initial_datagrams(f"quic{i}.example.com", 1 if i % 12 == 4 else 0x6B3343CF):
                frames.append(t.udp(c, s, port, 443, dg))
        else:
            v6c, v6s = "2001:db8:1::10", "2001:db8:100::10"
            frames += t.tcp_session(v6c, v6s, port, 8443, t.client_hello(f"v6-{i}.example.com"))
    if steps:  # the same traffic as a mirror port or an overlay carries it (issue 15)
        frames = [encap.wrap(f[14:], steps) for f in frames]
    t.write_pcap(path, frames)


@pytest.mark.parametrize("steps", [(), ("vxlan", "qinq"), ("gtpu-ext",), ("gre", "pppoe-compressed"), ("geneve", "mpls")],
                         ids=["plain", "vxlan-qinq", "gtpu", "gre-pppoe", "geneve-mpls"])
def test_beiand_finds_every_name_tshark_finds(tmp_path, steps):
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed: scripts/system-deps installs it (Debian package tshark)")
    pcap = tmp_path / "peer.pcap"
    build_capture(pcap, steps)
    res = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "-o", "tcp.desegment_tcp_streams:TRUE", "-d", "tcp.port==8443,tls",
         "-T", "fields", "-e", "tls.handshake.extensions_server_name", "-e", "http.host", "-e", "dns.qry.name",
         "-Y", "tls.handshake.type == 1 || http.request || (dns.flags.response == 1 && (dns.a || dns.aaaa))"],
        capture_output=True, text=True, timeout=120, check=True)
    theirs = {x.split(":")[0].lower() for line in res.stdout.splitlines() for x in line.split("\t") if x}
    d = Decoder()
    prog = build([80, 443, 8080, 8443], [443])
    ours = set()
    for ts, lt, frame in read_capture(pcap):
        if run(prog, frame):  # what the live daemon's kernel filter passes: live sees what replay sees
            ours |= {o.name for o in d.feed(ts, frame, lt)}
    ours |= {o.name for o in d.flush()}
    assert len(theirs) >= 25, theirs  # tshark sees the capture too: the comparison means something
    assert theirs <= ours, f"tshark found names beiand missed: {sorted(theirs - ours)}"
