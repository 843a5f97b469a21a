"""Live capture benchmark (issue 5): ``beiand run`` on the lab's gateway while tcpreplay sends a
pre-built mixed capture (ClientHellos, HTTP requests, DNS answers and QUIC Initials mixed into
bulk traffic) from the client namespace at rising rates.

    python bench/bench_live.py [--packets 400000] [--rates 20000,50000,100000,200000] [--workers 1,2]

For each worker count and rate it prints the packets and names per second offered, the names
beiand decided, the kernel drops (PACKET_STATISTICS), and the time from the packet carrying a
name to its decision (p50, p99; the kernel's packet timestamp to the decision). The sender
shares the 2 cores with beiand (``--timer gtod``, tcpreplay's default, busy-waits on one of them).
Also ``--rss``: resident memory with 1,000,000 filings loaded and 100,000 live flows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from beiand.lab.labdemo import http_get, wait_ready
from beiand.lab.netns import Lab

HERE = Path(__file__).parent


def metric(text: str, name: str) -> float:
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith(name) and (line[len(name)] in " {"))


RING = 2
TIMER = "gtod"
REALTIME = 0


def config(wd: Path, records: str, inventory: str, workers: int) -> Path:
    cfg = wd / f"bench-{workers}.toml"
    cfg.write_text(f"""[daemon]
workers = {workers}
watch_interval = 0
[capture]
interfaces = ["gw0"]
ring_version = {RING}
realtime_priority = {REALTIME}
[records]
files = ["{records}"]
[inventory]
file = "{inventory}"
[accesslog]
directory = "{wd / f'log-{workers}'}"
[server]
listen = "127.0.0.1:9640"
""")
    return cfg


def rss_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB of a process and its children."""
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    rss = pss = 0
    for p in pids:
        try:
            txt = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        rss += int(re.search(r"^Rss:\s+(\d+)", txt, re.M).group(1))  # type: ignore[union-attr]
        pss += int(re.search(r"^Pss:\s+(\d+)", txt, re.M).group(1))  # type: ignore[union-attr]
    return rss, pss


def run_rates(lab: Lab, wd: Path, pcap: Path, names_in_pcap: int, packets: int, records: str, inventory: str,
              workers: int, rates: list[int], dense: bool) -> None:
    cfg = config(wd, records, inventory, workers)
    with open(wd / f"beiand-{workers}.log", "ab") as logf:
        d = lab.spawn(lab.gw, [sys.executable, "-m", "beiand.cli", "run", "--config", str(cfg)], stdout=logf, stderr=logf)
    try:
        wait_ready(lab, d, timeout=120)
        for k, rate in enumerate(rates):
            if dense:
                write_dense(pcap, packets, 20 * workers + k)
            before = http_get(lab, "/metrics")[1].decode()
            t0 = time.monotonic()
            send = ["tcpreplay", "-q", f"--timer={TIMER}", "-i", "cl0", f"--pps={rate}", str(pcap)]
            r = lab.run(lab.cli, send, capture_output=True, timeout=600)
            sent_time = time.monotonic() - t0
            time.sleep(2.5)
            after = http_get(lab, "/metrics")[1].decode()
            st = json.loads(http_get(lab, "/api/v1/status")[1])
            drops = metric(after, "beiand_capture_kernel_drops_total") - metric(before, "beiand_capture_kernel_drops_total")
            kpk = metric(after, "beiand_capture_kernel_packets_total") - metric(before, "beiand_capture_kernel_packets_total")
            obs = metric(after, "beiand_observations_total") - metric(before, "beiand_observations_total")
            cpu = metric(after, "beiand_worker_cpu_seconds_total") - metric(before, "beiand_worker_cpu_seconds_total")
            lat = st["decision_latency_seconds"]
            achieved = packets / sent_time
            print(f"workers={workers} offered {rate:>7,} pps (achieved {achieved:>9,.0f} pps, "
                  f"{names_in_pcap / sent_time:>8,.0f} names/s): kernel passed {kpk:,.0f}, drops {drops:,.0f}, "
                  f"decisions {obs:,.0f}; decision latency p50 {lat.get('p50', 0) * 1e3:.2f} ms p99 {lat.get('p99', 0) * 1e3:.2f} ms; "
                  f"workers' CPU {cpu:.2f} s, {cpu / obs * 1e6 if obs else 0:.1f} µs a decision (the daemon's counters)"
                  + (f"  [tcpreplay rc {r.returncode}]" if r.returncode else ""))
    finally:
        d.terminate()
        d.wait(60)


def bench_rss(lab: Lab, wd: Path) -> None:
    from beiand.lab import traffic as t
    from beiand.records.generate import GenConfig, write_csv, write_inventory

    rec, inv = wd / "1m.csv", wd / "1m-inv.csv"
    gc = GenConfig(filings=1_000_000)
    write_csv(str(rec), gc)
    write_inventory(str(inv), gc)
    # 100,000 flows that stay open: a SYN and the first part of a ClientHello split in two.
    hello = t.client_hello("www.pending-flow.example.cn")
    frames = []
    for i in range(100_000):
        c = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        frames.append(t.tcp(c, "198.51.100.10", 20000 + i % 40000, 443, 1000, flags=0x02))
        frames.append(t.tcp(c, "198.51.100.10", 20000 + i % 40000, 443, 1001, payload=hello[:60]))
    pcap = wd / "flows.pcap"
    t.write_pcap(pcap, frames)
    cfg = config(wd, str(rec), str(inv), 2)
    with open(wd / "beiand-rss.log", "ab") as logf:
        d = lab.spawn(lab.gw, [sys.executable, "-m", "beiand.cli", "run", "--config", str(cfg)], stdout=logf, stderr=logf)
    try:
        t0 = time.monotonic()
        wait_ready(lab, d, timeout=600)
        print(f"rss: 1,000,000 filings loaded, daemon ready in {time.monotonic() - t0:.0f} s")
        lab.run(lab.cli, ["tcpreplay", "-q", "-i", "cl0", "--pps=50000", str(pcap)], capture_output=True, timeout=600)
        time.sleep(2.5)
        m = http_get(lab, "/metrics")[1].decode()
        rss, pss = rss_kib(d.pid)
        print(f"rss: {metric(m, 'beiand_flows'):,.0f} live flows; main + 2 workers: RSS {rss / 1024:,.0f} MiB "
              f"(shared pages counted in each), PSS {pss / 1024:,.0f} MiB (shared pages split)")
    finally:
        d.terminate()
        d.wait(120)


def write_dense(pcap: Path, n: int, round_: int = 0) -> None:
    """Every packet carries a name: ClientHellos (each a new flow) and DNS answers, 4:1.
    Each round uses other client addresses, so no flow repeats one beiand already decided."""
    from beiand.lab import traffic as t

    names = [x for x in Path(f"{pcap}.names").read_text().split() if x][:500]
    hellos = [t.client_hello(nm) for nm in names]
    answers = [t.dns_response(nm, [f"198.51.100.{i % 200 + 1}"]) for i, nm in enumerate(names)]
    frames = []
    for i in range(n):
        c = f"{10 + round_}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        if i % 5 == 4:
            frames.append(t.udp("192.0.2.53", c, 53, 10000 + i % 50000, answers[i % len(answers)]))
        else:
            frames.append(t.tcp(c, f"198.51.100.{i % 200 + 1}", 10000 + i % 50000, 443, 1000, payload=hellos[i % len(hellos)]))
    t.write_pcap(pcap, frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=400_000)
    ap.add_argument("--rates", default="20000,50000,100000,200000")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--rss", action="store_true", help="also measure memory with 1M filings and 100k live flows")
    ap.add_argument("--ring", type=int, choices=[2, 3], default=2, help="TPACKET version of the capture ring")
    ap.add_argument("--realtime", type=int, default=0, metavar="PRIO",
                    help="capture.realtime_priority of the workers (SCHED_FIFO; 0: normal scheduling)")
    ap.add_argument("--timer", choices=["gtod", "nano"], default="gtod",
                    help="tcpreplay's pacing: gtod busy-waits (a whole core, steady spacing), nano sleeps (bursts)")
    ap.add_argument("--dense", action="store_true",
                    help="names only: every packet a ClientHello of a new flow or a DNS answer (the names/s ceiling)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    global RING, TIMER, REALTIME
    RING, TIMER, REALTIME = args.ring, args.timer, args.realtime
    wd = Path(tempfile.mkdtemp(prefix="beiand-bench-live-"))
    pcap = wd / "mix.pcap"
    subprocess.run([sys.executable, str(HERE / "gen_capture.py"), str(pcap), "--packets", str(args.packets)], check=True,
                   stdout=subprocess.DEVNULL)
    if args.dense:
        write_dense(pcap, args.packets, 0)
    names_in_pcap = int(subprocess.run(["sh", "-c", f"echo $(( $(wc -l < {pcap}.names) ))"], capture_output=True, text=True).stdout)
    # Every name-carrying packet (not distinct names): count ClientHellos, requests, DNS answers, QUIC Initials.
    from beiand.capture import CaptureReader
    from beiand.net.decoder import Decoder

    dec = Decoder()
    n_obs = sum(len(dec.feed(ts, fr, lt)) for ts, lt, fr in CaptureReader(pcap)) + len(dec.flush())
    print(f"capture: {args.packets:,} packets, {n_obs:,} name-carrying observations ({names_in_pcap:,} distinct names)")
    with Lab() as lab:
        for w in [int(x) for x in args.workers.split(",")]:
            run_rates(lab, wd, pcap, n_obs, args.packets, f"{pcap}.records.csv", f"{pcap}.inventory.csv", w,
                      [int(x) for x in args.rates.split(",")], args.dense)
        if args.rss:
            bench_rss(lab, wd)


if __name__ == "__main__":
    main()
