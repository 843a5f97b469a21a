"""Enforcement benchmark (issue 6, issue 22), in the lab:

    python bench/bench_enforce.py [--count 1000] [--rounds 3] [--filed-count 1000] [--no-passive]

- Effectiveness: COUNT HTTPS and COUNT HTTP connections to unfiled names on an enforce prefix:
  how many received any byte from the server (TLS ServerHello / the server's page); and COUNT
  to filed names: how many were disturbed. Inline (NFQUEUE) and passive (AF_PACKET + injection).
- Latency from the ClientHello on the wire to the RST on the wire, seen from the client's
  interface (p50, p99), inline and passive.
- Inline cost for filed flows: first-byte latency with and without beiand in the path (p50,
  p99), and connections per second with the queue's verdict rate. ``--rounds N`` alternates
  N runs without beiand and N with beiand inline (a daemon started and stopped for each) in one
  window, so that the machine's load is shared by both; figures per round and pooled.
- Queued packets per connection, and where the time goes per queued packet (netlink receive,
  decode, decision, verdict: ``beiand_inline_seconds_total``, per ``beiand_inline_packets_total``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from beiand.lab.demo import build
from beiand.lab.labdemo import http_get, wait_ready, write_config
from beiand.lab.netns import Lab, setns

HERE = Path(__file__).parent
ROOT = HERE.parent
INVENTORY = "prefix,account,site,state,mode\n198.51.100.0/24,cust-enf,bj,active,enforce\n"


def client(lab: Lab, mode: str, name: str, ip: str, count: int, conc: int = 16) -> dict:  # type: ignore[type-arg]
    r = lab.run(lab.cli, [sys.executable, str(HERE / "enforce_client.py"), mode, name, ip, str(count), str(conc), str(ROOT)],
                capture_output=True, timeout=900)
    return json.loads(r.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


class Sniffer:
    """Timestamps of ClientHellos sent and RSTs received on the client's interface."""

    def __init__(self, ns: str, iface: str) -> None:
        self.hello: dict[int, float] = {}
        self.rst: dict[int, float] = {}
        self.stop = False
        ready = threading.Event()

        def run() -> None:
            setns(ns)
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            s.bind((iface, 0))
            s.settimeout(0.2)
            ready.set()
            while not self.stop:
                try:
                    data = s.recv(65536)
                except TimeoutError:
                    continue
                t = time.perf_counter()
                if len(data) < 54 or data[12:14] != b"\x08\x00" or data[23] != 6:
                    continue
                ihl = (data[14] & 15) * 4
                l4 = 14 + ihl
                sport, dport = struct.unpack_from("!HH", data, l4)
                doff = (data[l4 + 12] >> 4) * 4
                flags = data[l4 + 13]
                if dport == 443 and len(data) > l4 + doff and data[l4 + doff] == 0x16:
                    self.hello.setdefault(sport, t)
                elif sport == 443 and flags & 4:
                    self.rst.setdefault(dport, t)
            s.close()

        self.t = threading.Thread(target=run, daemon=True)
        self.t.start()
        ready.wait()

    def close(self) -> list[float]:
        self.stop = True
        self.t.join()
        return sorted(self.rst[p] - self.hello[p] for p in self.rst if p in self.hello)


def pct(v: list[float], q: float) -> float:
    return v[min(len(v) - 1, int(len(v) * q))] * 1e3 if v else float("nan")


FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n = int(sys.argv[1]); payload = b"\\x40" + b"\\0" * 60  # a QUIC short-header-like datagram: decoded, not an Initial
t0 = time.perf_counter()
socks = []
for i in range(n):
    if i % 8 == 0:
        s.close(); s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a new source port: a new flow, queued again
    s.sendto(payload, ("198.51.100.10", 443))
print(time.perf_counter() - t0)
"""


def _queue_stats(lab: Lab) -> tuple[int, int, int]:
    """(packets queued so far, dropped by the queue, dropped for the user) over all queues."""
    q = lab.run(lab.gw, ["cat", "/proc/net/netfilter/nfnetlink_queue"], capture_output=True, text=True).stdout
    ids = qd = ud = 0
    for line in q.splitlines():
        f = line.split()
        if len(f) >= 8:
            qd, ud, ids = qd + int(f[5]), ud + int(f[6]), ids + int(f[7])
    return ids, qd, ud


def verdict_rate(lab: Lab, n: int = 200_000) -> None:
    """Verdicts per second through NFQUEUE: a UDP flood on the queued port, each datagram its own verdict."""
    ids0, qd0, ud0 = _queue_stats(lab)
    t0 = time.perf_counter()
    r = lab.run(lab.cli, [sys.executable, "-c", FLOOD, str(n)], capture_output=True, text=True, timeout=600)
    send_s = float(r.stdout.strip() or "nan")
    time.sleep(0.5)
    ids1, qd1, ud1 = _queue_stats(lab)
    total = time.perf_counter() - t0 - 0.5
    queued = ids1 - ids0
    print(f"inline: NFQUEUE verdicts: {queued:,} packets queued in {total:.2f} s = {queued / total:,.0f} verdicts/s "
          f"(sender {n / send_s:,.0f} pps; fail-open past a full queue {qd1 - qd0:,}, lost to the reader {ud1 - ud0:,})")


REALTIME = 0  # --realtime: capture.realtime_priority of the daemon's workers


def start_daemon(lab: Lab, wd: Path, files: dict[str, str], inline: bool) -> subprocess.Popen[bytes]:
    label = "inline" if inline else "passive"
    cfg = write_config(wd, files, extra=f"\n[enforce]\ninline = {'true' if inline else 'false'}\nmax_blocks_per_minute = 1000000\n"
                       "max_unfiled_share = 1.0\n", capture_extra=f"realtime_priority = {REALTIME}\n")
    cfg = cfg.rename(wd / f"{label}.toml")
    with open(wd / f"beiand-{label}.log", "ab") as logf:
        d = lab.spawn(lab.gw, [sys.executable, "-m", "beiand.cli", "run", "--config", str(cfg)], stdout=logf, stderr=logf)
    wait_ready(lab, d)
    return d


STAGES = ("receive", "decode", "decide", "verdict", "record")


def stage_totals(lab: Lab) -> dict[str, float]:
    """The daemon's cumulative inline counters: packets, and seconds per stage."""
    time.sleep(0.6)  # the workers' next snapshot (every 0.25 s)
    text = http_get(lab, "/metrics")[1].decode()
    out = dict.fromkeys(("packets", *STAGES), 0.0)
    for line in text.splitlines():
        if line.startswith("beiand_inline_packets_total{"):
            out["packets"] += float(line.split()[-1])
        elif line.startswith("beiand_inline_seconds_total{"):
            out[line.split('stage="')[1].split('"')[0]] += float(line.split()[-1])
    return out


def stage_report(label: str, a: dict[str, float], b: dict[str, float]) -> str:
    n = b["packets"] - a["packets"]
    if n <= 0:
        return f"{label}: no queued packets"
    per = {s: (b[s] - a[s]) / n * 1e6 for s in STAGES}
    return (f"{label}: per queued packet ({n:,.0f} packets) in beiand's queue thread: "
            + ", ".join(f"{s} {per[s]:.1f} µs" for s in STAGES)
            + f"; to the verdict {sum(per[s] for s in STAGES[:4]):.1f} µs, total {sum(per.values()):.1f} µs")


def load() -> str:
    return os.getloadavg().__repr__()


def ab_rounds(lab: Lab, wd: Path, files: dict[str, str], rounds: int, count: int, conc: int = 16,
              protos: tuple[str, ...] = ("https", "http")) -> None:
    """Filed first byte without and with beiand inline, alternated in one window. ``protos`` may add
    ``https-big`` (a ClientHello past one MTU in one write) and ``https-split`` (two writes, issue 36)."""
    pooled: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for mode in ("none", "inline"):
            d = start_daemon(lab, wd, files, True) if mode == "inline" else None
            try:
                q0 = _queue_stats(lab)[0]
                s0 = stage_totals(lab) if d is not None else None
                res = {proto: client(lab, proto, "www.example.com.cn", "198.51.100.10", count, conc) for proto in protos}
                q1 = _queue_stats(lab)[0]
                extra = ""
                if d is not None and s0 is not None:
                    extra = (f"; queued per connection {(q1 - q0) / (len(protos) * count):.2f}\n  "
                             + stage_report("inline", s0, stage_totals(lab)))
            finally:
                if d is not None:
                    d.terminate()
                    d.wait(60)
            for proto, x in res.items():
                pooled.setdefault((mode, proto), []).extend(x.get("lat_ms", []))
            print(f"round {r + 1} {'no beiand' if mode == 'none' else 'inline   '} ({conc} at a time; load {load()}): "
                  + "; ".join(f"{p.upper()} p50 {x.get('first_byte_p50_ms', 0):.3f} ms p99 {x.get('first_byte_p99_ms', 0):.3f} ms "
                              f"(served {x.get('server-bytes', 0)}/{count})" for p, x in res.items()) + extra, flush=True)
    for proto in protos:
        a = sorted(pooled.get(("none", proto), []))
        b = sorted(pooled.get(("inline", proto), []))
        if a and b:
            p50a, p99a = a[len(a) // 2], a[min(len(a) - 1, len(a) * 99 // 100)]
            p50b, p99b = b[len(b) // 2], b[min(len(b) - 1, len(b) * 99 // 100)]
            print(f"pooled {rounds} rounds ({conc} at a time), {proto.upper()} filed first byte: "
                  f"no beiand p50 {p50a:.3f} ms p99 {p99a:.3f} ms "
                  f"({len(a)}); inline p50 {p50b:.3f} ms p99 {p99b:.3f} ms ({len(b)}); difference p50 {p50b - p50a:+.3f} ms, "
                  f"p99 {p99b - p99a:+.3f} ms", flush=True)


def run_mode(lab: Lab, wd: Path, files: dict[str, str], inline: bool, count: int) -> None:
    label = "inline" if inline else "passive"
    d = start_daemon(lab, wd, files, inline)
    try:
        s0 = stage_totals(lab)
        sn = Sniffer(lab.cli, "cl0")
        https = client(lab, "https", "u{i}.unfiled.example.xyz", "198.51.100.11", count)
        lat = sn.close()
        sn = Sniffer(lab.cli, "cl0")
        client(lab, "https", "l{i}.unfiled.example.xyz", "198.51.100.11", count, conc=1)
        lat1 = sn.close()
        http = client(lab, "http", "u{i}.unfiled.example.xyz", "198.51.100.11", count)
        q0 = _queue_stats(lab)[0]
        f_https = client(lab, "https", "www.example.com.cn", "198.51.100.10", count)
        q1 = _queue_stats(lab)[0]
        f_http = client(lab, "http", "www.example.com.cn", "198.51.100.10", count)
        q2 = _queue_stats(lab)[0]
        print(f"{label}: unfiled HTTPS {count}: received a server byte {https.get('server-bytes', 0)}, reset "
              f"{https.get('reset', 0) + https.get('no-bytes', 0)}, other {https.get('error', 0) + https.get('other', 0)}")
        print(f"{label}: unfiled HTTP  {count}: received a server byte {http.get('server-bytes', 0)}, block page "
              f"{http.get('block-page', 0)}, other {count - http.get('server-bytes', 0) - http.get('block-page', 0)}")
        print(f"{label}: filed HTTPS {count}: disturbed {count - f_https.get('server-bytes', 0)}; "
              f"filed HTTP {count}: disturbed {count - f_http.get('server-bytes', 0)}")
        print(f"{label}: ClientHello → RST on the wire (client side, {len(lat)} flows, 16 at a time): p50 {pct(lat, 0.5):.3f} ms, "
              f"p99 {pct(lat, 0.99):.3f} ms; one at a time ({len(lat1)} flows): p50 {pct(lat1, 0.5):.3f} ms, "
              f"p99 {pct(lat1, 0.99):.3f} ms")
        print(f"{label}: filed first byte: HTTPS p50 {f_https.get('first_byte_p50_ms', 0):.2f} ms p99 "
              f"{f_https.get('first_byte_p99_ms', 0):.2f} ms; HTTP p50 {f_http.get('first_byte_p50_ms', 0):.2f} ms p99 "
              f"{f_http.get('first_byte_p99_ms', 0):.2f} ms; {count / f_http['seconds']:.0f} connections/s")
        if inline:
            # Packets that waited for a verdict per filed connection (TCP: the SYN and each early
            # packet with payload; bare ACK/FIN/RST are not queued).
            print(f"{label}: queued packets per filed connection: HTTPS {(q1 - q0) / count:.2f}, HTTP {(q2 - q1) / count:.2f}")
            print(stage_report(label, s0, stage_totals(lab)))
            verdict_rate(lab)
            q = lab.run(lab.gw, ["cat", "/proc/net/netfilter/nfnetlink_queue"], capture_output=True, text=True).stdout
            print(f"{label}: /proc/net/netfilter/nfnetlink_queue (queue, portid, waiting, mode, range, queue_dropped, "
                  f"user_dropped, last id, 1):\n  " + q.strip().replace("\n", "\n  "))
    finally:
        d.terminate()
        d.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=0, help="alternated rounds without/with beiand (filed first byte)")
    ap.add_argument("--filed-count", type=int, default=500, help="connections per protocol and round")
    ap.add_argument("--conc", type=int, default=16, help="connections at a time in the rounds")
    ap.add_argument("--no-passive", action="store_true", help="skip the passive mode's run")
    ap.add_argument("--protos", default="https,http", help="the rounds' clients: https, http, https-big, https-split, "
                    "http-keepalive (20 requests a connection: the later ones' latency, issue 32)")
    ap.add_argument("--no-effectiveness", action="store_true", help="only the alternated rounds")
    ap.add_argument("--realtime", type=int, default=0, help="capture.realtime_priority of the workers (SCHED_FIFO; 0: normal)")
    args = ap.parse_args()
    global REALTIME
    REALTIME = args.realtime
    if os.geteuid() != 0:
        sys.exit("needs root")
    wd = Path(tempfile.mkdtemp(prefix="beiand-bench-enforce-"))
    files = build(wd / "samples")
    Path(files["inventory"]).write_text(INVENTORY)
    with Lab() as lab:
        lab.start_servers(wd)
        print(f"load before: {load()}", flush=True)
        if args.rounds:
            ab_rounds(lab, wd, files, args.rounds, args.filed_count, args.conc, tuple(args.protos.split(",")))
        if args.no_effectiveness:
            return
        base = client(lab, "http", "www.example.com.cn", "198.51.100.10", args.count)
        base_s = client(lab, "https", "www.example.com.cn", "198.51.100.10", args.count)
        print(f"no beiand: filed first byte: HTTPS p50 {base_s.get('first_byte_p50_ms', 0):.2f} ms p99 "
              f"{base_s.get('first_byte_p99_ms', 0):.2f} ms; HTTP p50 {base.get('first_byte_p50_ms', 0):.2f} ms p99 "
              f"{base.get('first_byte_p99_ms', 0):.2f} ms; {args.count / base['seconds']:.0f} connections/s")
        for inline in (True, False) if not args.no_passive else (True,):
            run_mode(lab, wd, files, inline, args.count)
        print(f"load after: {load()}", flush=True)


if __name__ == "__main__":
    main()
