"""Names beiand finds beside those tshark finds, per kind (issue 15), on the best offline stand-in
for real captures: traffic of real clients (curl with OpenSSL, Python ssl, aioquic, dnspython)
against real servers in the lab's namespaces, captured on the gateway, then the same frames
re-encapsulated as a mirror port or an overlay would carry them.

    sudo python bench/bench_peer_recall.py [--keep DIR] [--rounds 3]

Per capture and kind (DNS answers, TLS SNI, QUIC SNI, HTTP Host) it prints tshark's names, how
many of them beiand found (recall), and the names beiand found that tshark did not.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from beiand.capture import bpf, read_capture
from beiand.capture.bpf import RET, K, pack
from beiand.lab import encap
from beiand.lab import traffic as t
from beiand.lab.demo import build
from beiand.lab.labdemo import QUIC_CLIENT, curl, drive
from beiand.lab.netns import DNS_IP, ZONE, Lab, in_netns
from beiand.model import Kind
from beiand.net.decoder import Decoder

TCP, UDP = (80, 443, 8080, 8443), (443,)  # the daemon's defaults (capture.tcp_ports, capture.udp_ports)
KINDS = ("dns-answer", "tls-sni", "quic-sni", "http-host")
VARIANTS = {"plain": [], "vlan": ["vlan"], "qinq": ["qinq"], "vxlan": ["vxlan"], "geneve": ["geneve"], "gre": ["gre"],
            "erspan": ["erspan"], "gtpu": ["gtpu"], "mpls": ["mpls"], "pppoe": ["pppoe"], "vxlan+qinq": ["qinq", "vxlan"],
            "gtpu+gre": ["gre", "gtpu"]}


def capture(lab: Lab, out: list[tuple[float, bytes]], stop: threading.Event) -> threading.Thread:
    def run() -> None:
        def open_sock() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            prog = [(RET | K, 0, 0, 262144)]
            buf = ctypes.create_string_buffer(pack(prog))
            s.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HL", 1, ctypes.addressof(buf)))
            s.bind((lab.gw_if, 3))
            s.settimeout(0.2)
            return s

        s = in_netns(lab.gw, open_sock)
        while not stop.is_set():
            try:
                frame = s.recv(65536)
            except TimeoutError:
                continue
            out.append((time.time(), frame))  # bound to one interface: both directions, each once
        s.close()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def traffic(lab: Lab, rounds: int) -> None:
    names = list(ZONE) + [f"extra{i}.example.com.cn" for i in range(8)]
    for r in range(rounds):
        drive(lab)
        for n in names:
            ip = ZONE.get(n, "198.51.100.10")
            curl(lab, f"https://{n}/", n, ip, "--http2" if r % 2 else "--http1.1")
            curl(lab, f"http://{n}/", n, ip, "--http1.0" if r % 2 else "--http1.1")
        py = ("import socket, ssl, sys\nctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
              "for n in sys.argv[2:]:\n  s = socket.create_connection((sys.argv[1], 443), 3)\n"
              "  try:\n    ctx.wrap_socket(s, server_hostname=n).close()\n  except Exception:\n    s.close()\n")
        lab.run(lab.cli, [sys.executable, "-c", py, "198.51.100.10", *[f"py{r}-{i}.example.com.cn" for i in range(5)]],
                capture_output=True)
        for n in ("quic-unfiled.example.top", "www.example.com.cn"):
            lab.run(lab.cli, [sys.executable, "-c", QUIC_CLIENT, n, ZONE.get(n, "198.51.100.10")], capture_output=True)

        def dns_queries(r: int = r) -> None:
            import dns.message
            import dns.query

            for n in ZONE:
                for rdtype in ("A", "AAAA"):
                    q = dns.message.make_query(n, rdtype)
                    try:
                        (dns.query.tcp if r % 2 else dns.query.udp)(q, DNS_IP, timeout=2)
                    except Exception:  # a lost answer is part of the sample
                        pass

        in_netns(lab.cli, dns_queries)


def tshark_names(pcap: Path) -> dict[str, set[str]]:
    fields = ["-e", "frame.protocols", "-e", "tls.handshake.extensions_server_name", "-e", "http.host", "-e", "dns.qry.name"]
    res = subprocess.run(["tshark", "-n", "-r", str(pcap), "-o", "tcp.desegment_tcp_streams:TRUE", "-T", "fields", *fields,
                          "-Y", "tls.handshake.type == 1 || http.request || (dns.flags.response == 1 && (dns.a || dns.aaaa))"],
                         capture_output=True, text=True, timeout=300, check=True)
    out: dict[str, set[str]] = {k: set() for k in KINDS}
    for line in res.stdout.splitlines():
        protos, sni, host, qry = [*line.split("\t"), "", "", ""][:4]
        layers = protos.split(":")
        if sni:
            out["quic-sni" if "quic" in layers else "tls-sni"] |= {x.lower() for x in sni.split(",") if x}
        if host:
            out["http-host"] |= {h.split(":")[0].lower() for h in host.split(",") if h}
        if qry and "dns" in layers:
            out["dns-answer"] |= {x.lower().rstrip(".") for x in qry.split(",") if x}
    return out


def beiand_names(pcap: Path, live: bool) -> dict[str, set[str]]:
    """Names from the decoder; ``live``: only on the frames the kernel filter passes."""
    d = Decoder()
    obs = []
    prog = bpf.build(TCP, UDP)
    for ts, lt, frame in read_capture(pcap):
        if live and bpf.run(prog, frame) == 0:
            continue
        obs += d.feed(ts, frame, lt)
    obs += d.flush()
    out: dict[str, set[str]] = {k: set() for k in KINDS}
    for o in obs:
        if o.kind is not Kind.IP_ONLY:
            out[o.kind.value].add(o.name_seen.lower().rstrip("."))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="directory for the captures")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    wd = Path(a.keep or tempfile.mkdtemp(prefix="beiand-recall-"))
    wd.mkdir(parents=True, exist_ok=True)
    plain = wd / "plain.pcap"
    if not plain.exists():
        build(wd / "samples")
        frames: list[tuple[float, bytes]] = []
        stop = threading.Event()
        with Lab("br") as lab:
            lab.start_servers(wd)
            th = capture(lab, frames, stop)
            time.sleep(0.5)
            traffic(lab, a.rounds)
            time.sleep(0.5)
            stop.set()
            th.join()
        with t.PcapWriter(plain) as w:
            for ts, f in frames:
                w.write(ts, f)
    frames2 = list(read_capture(plain))
    print(f"{plain}: {len(frames2)} frames from real clients (curl/OpenSSL, Python ssl, aioquic, dnspython)")
    totals = {k: [0, 0] for k in KINDS}
    print("replay = the decoder on every frame; live = only on the frames the kernel filter (bpf.run) passes")
    print(f"{'capture':<18} " + " ".join(f"{k:>22}" for k in KINDS) + "   beiand-only")
    for name, steps in VARIANTS.items():
        pcap = wd / f"{name}.pcap"
        if not pcap.exists():
            with t.PcapWriter(pcap) as w:
                for ts, _lt, f in frames2:
                    w.write(ts, encap.wrap(f[14:], steps) if steps and f[12:14] in (b"\x08\x00", b"\x86\xdd") else f)
        theirs = tshark_names(pcap)
        for mode in ("replay", "live"):
            ours = beiand_names(pcap, mode == "live")
            cells = []
            extra = 0
            for k in KINDS:
                found = len(theirs[k] & ours[k])
                if mode == "live":
                    totals[k][0] += found
                    totals[k][1] += len(theirs[k])
                cells.append(f"{found:>4}/{len(theirs[k]):<4} {100 * found / max(len(theirs[k]), 1):6.1f}%".rjust(22))
                extra += len(ours[k] - theirs[k])
            print(f"{name + ' ' + mode:<18} " + " ".join(cells) + f"   {extra}")
    print(f"{'all, live':<18} " + " ".join(f"{v[0]:>5}/{v[1]:<5} {100 * v[0] / max(v[1], 1):6.1f}%".rjust(22) for v in totals.values()))


if __name__ == "__main__":
    main()
