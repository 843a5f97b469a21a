"""Replay bar (issue 3): beiand replay beside tshark and ndpiReader on the same 1M-packet capture.

    python bench/bench_replay.py [--packets N] [--keep DIR]

Prints packets/s and peak RSS (summed over a tool's processes) of each tool, beiand with one worker
per core (its default for a capture this size) and with one, the ratios, whether beiand found every name
tshark found, and the peak RSS of beiand on a capture where every packet opens a new flow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _rss import PeakSampler

HERE = Path(__file__).parent
PY = sys.executable


def timed(cmd: list[str], stdout: int | object = subprocess.DEVNULL) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process with all its descendants, summed."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.DEVNULL)  # type: ignore[arg-type]
    with PeakSampler(p.pid) as sampler:
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"{cmd[0]} failed: {status}")
    return wall, max(sampler.peak_kib, ru.ru_maxrss) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--keep", help="directory for the captures (reused if present)")
    a = ap.parse_args()
    d = Path(a.keep or tempfile.mkdtemp(prefix="beiand-bench-"))
    d.mkdir(parents=True, exist_ok=True)
    pcap, flood = d / "mix.pcap", d / "newflows.pcap"
    if not pcap.exists():
        subprocess.run([PY, str(HERE / "gen_capture.py"), str(pcap), "--packets", str(a.packets)], check=True)
    if not flood.exists():
        subprocess.run([PY, str(HERE / "gen_capture.py"), str(flood), "--packets", str(a.packets), "--new-flows"], check=True)
    n = a.packets
    beiand = [shutil.which("beiand") or str(Path(PY).parent / "beiand"), "replay", str(pcap), "--records", f"{pcap}.records.csv",
              "--inventory", f"{pcap}.inventory.csv", "--json"]
    out = d / "beiand.jsonl"
    with out.open("wb") as f:  # one worker process per core (the default for a capture this size)
        b_wall, b_rss = timed(beiand, f)
    ours = {json.loads(line)["name"] for line in out.open(encoding="utf-8")}
    cores = len(os.sched_getaffinity(0))
    one_wall, one_rss = timed([*beiand, "--workers", "1"])
    rows = [(f"beiand replay ({cores} workers)", b_wall, b_rss), ("beiand replay (1 worker)", one_wall, one_rss)]
    theirs: set[str] = set()
    if shutil.which("tshark"):
        tout = d / "tshark.txt"
        with tout.open("wb") as f:
            t_wall, t_rss = timed(["tshark", "-n", "-r", str(pcap), "-T", "fields", "-e", "tls.handshake.extensions_server_name",
                                   "-e", "http.host", "-e", "dns.qry.name", "-Y",
                                   "tls.handshake.type == 1 || http.request || (dns.flags.response == 1 && (dns.a || dns.aaaa))"], f)
        theirs = {x.split(":")[0].lower() for line in tout.open(encoding="utf-8") for x in line.rstrip("\n").split("\t") if x}
        rows.append(("tshark -T fields", t_wall, t_rss))
    if shutil.which("ndpiReader"):
        n_wall, n_rss = timed(["ndpiReader", "-i", str(pcap), "-q"])
        rows.append(("ndpiReader", n_wall, n_rss))
    print(f"capture: {n:,} packets ({pcap.stat().st_size / 1e6:.0f} MB), {d}")
    for name, wall, rss in rows:
        print(f"{name:18s} {n / wall:>10,.0f} packets/s  {wall:6.2f} s  peak RSS {rss:6.0f} MiB   "
              f"beiand is {wall / b_wall:4.1f}x faster" if not name.startswith("beiand") else
              f"{name:18s} {n / wall:>10,.0f} packets/s  {wall:6.2f} s  peak RSS {rss:6.0f} MiB   (bar >= 300,000/s, <= 200 MiB)")
    if theirs:
        missed = theirs - ours
        print(f"names: tshark found {len(theirs)}, beiand {len(ours)}; beiand missed {len(missed)} of tshark's"
              + (f": {sorted(missed)[:10]}" if missed else ""))
    f_wall, f_rss = timed([*beiand[:2], str(flood), *beiand[3:]])  # all workers: the RSS is their sum
    print(f"new-flow flood: {n:,} packets each opening a flow: {n / f_wall:,.0f} packets/s, peak RSS {f_rss:.0f} MiB (bounded flow table)")


if __name__ == "__main__":
    main()
