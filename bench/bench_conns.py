"""Connection-record bar (issue 19): new connections per second into the access log, and the name
pipeline's replay rate against another tree (A/B, alternated).

    python bench/bench_conns.py [--packets N] [--keep DIR] [--workers N] [--runs K]
    python bench/bench_conns.py --ab OTHER_SRC [--packets N] [--keep DIR] [--runs K]

Rate: ``beiand replay`` of a capture where every packet opens a new flow into or out of hosted space on
any port (``gen_capture.py --conn-flows``: TCP SYNs and first UDP datagrams, 20% IPv6, 10% outbound),
with ``--log-dir``: the clock runs from start to exit (every record durable, the log closed), and the
figure is records written per second (bar >= 100,000/s), and per CPU-second of the replay's
processes (what the cores would give if the machine were not shared). The load average is printed beside it.

A/B: ``beiand replay --json`` of the mixed capture (``gen_capture.py``, the one bench_replay.py uses)
by this tree and by ``OTHER_SRC`` (a checkout of another commit, e.g. ``git archive main``), alternated
``--runs`` times: packets per second of each (bar: this tree within 10% of the other).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
PY = sys.executable
CPU = [0.0]  # CPU seconds (user + system) of the last replay and its workers


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def replay(src: Path | None, pcap: Path, *extra: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(src)} if src else dict(os.environ)
    cmd = [PY, "-m", "beiand.cli", "replay", str(pcap), "--records", f"{pcap}.records.csv", "--inventory",
           f"{pcap}.inventory.csv", *extra]
    t = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL if "--json" in extra else subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[0] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if p.returncode not in (0, 1):
        raise SystemExit(f"replay failed ({p.returncode}): {p.stderr[-2000:]}")
    return wall, (p.stdout or "") + p.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--keep", help="directory for the captures (reused if present)")
    ap.add_argument("--workers", type=int, default=0, help="replay workers (0: its default, one per core)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ab", metavar="OTHER_SRC", help="compare the name pipeline with this source tree")
    a = ap.parse_args()
    d = Path(a.keep or tempfile.mkdtemp(prefix="beiand-bench-conns-"))
    d.mkdir(parents=True, exist_ok=True)
    if a.ab:
        mix = d / "mix.pcap"
        if not mix.exists():
            subprocess.run([PY, str(HERE / "gen_capture.py"), str(mix), "--packets", str(a.packets)], check=True)
        other = Path(a.ab).resolve()
        rates: dict[str, list[float]] = {"this": [], "other": []}
        cpu: dict[str, list[float]] = {"this": [], "other": []}
        for k in range(a.runs):
            for label, src in (("this", None), ("other", other)) if k % 2 == 0 else (("other", other), ("this", None)):
                wall, _ = replay(src, mix, "--json", "--workers", "1")
                rates[label].append(a.packets / wall)
                cpu[label].append(a.packets / CPU[0])
                print(f"run {k + 1} {label:5s} {a.packets / wall:>10,.0f} packets/s  {wall:6.2f} s  "
                      f"{a.packets / CPU[0]:>10,.0f} packets/CPU-s  ({load()})", flush=True)
        for label, rs in rates.items():
            print(f"{label:5s} median {sorted(rs)[len(rs) // 2]:>10,.0f} packets/s  range {min(rs):,.0f}..{max(rs):,.0f}")
        for label, rs in cpu.items():
            print(f"{label:5s} median {sorted(rs)[len(rs) // 2]:>10,.0f} packets/CPU-s  range {min(rs):,.0f}..{max(rs):,.0f}")
        ratio = sorted(rates["this"])[a.runs // 2] / sorted(rates["other"])[a.runs // 2]
        cratio = sorted(cpu["this"])[a.runs // 2] / sorted(cpu["other"])[a.runs // 2]
        print(f"this / other (medians): {ratio:.3f} wall, {cratio:.3f} CPU  (bar: >= 0.90)")
        return
    flood = d / "connflows.pcap"
    if not flood.exists():
        subprocess.run([PY, str(HERE / "gen_capture.py"), str(flood), "--packets", str(a.packets), "--conn-flows"], check=True)
    print(f"capture: {a.packets:,} packets, each opening a flow ({flood.stat().st_size / 1e6:.0f} MB), {d}")
    for k in range(a.runs):
        log = d / f"log{k}"
        subprocess.run(["rm", "-rf", str(log)], check=True)
        before = load()
        wall, out = replay(None, flood, "--log-dir", str(log), *(["--workers", str(a.workers)] if a.workers else []))
        m = re.search(r"access log: (\d+) record", out)
        written = int(m.group(1)) if m else 0
        print(f"run {k + 1}: {written:,} records in {wall:.2f} s: {written / wall:>10,.0f} connection records/s "
              f"(bar >= 100,000/s); {CPU[0]:.1f} CPU-s: {written / CPU[0]:,.0f} records per CPU-second  "
              f"{before} -> {load()}", flush=True)
        subprocess.run(["rm", "-rf", str(log)], check=True)


if __name__ == "__main__":
    main()
