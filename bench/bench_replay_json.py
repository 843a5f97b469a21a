"""Replay's JSON output in bounded memory (issue 28 item 18): `beiand replay --json --workers 1` beside
`--no-connections` on the 1M-packet mixed capture with every server hosted.

    python bench/bench_replay_json.py [--packets N] [--keep DIR] [--repeat R] [--tree DIR] [--workers-too] [--suricata]

Every server of bench/gen_capture.py's mixed capture is in the inventory it writes (``OUT.inventory.csv``:
198.51.100.0/24 and 2001:db8:100::/48), so every flow into them gets a decision or a connection record.
The runs alternate (connections on, off; R times); each prints its wall and CPU seconds, the peak RSS of
the process tree and the load average beside it (the machine may be shared), then the medians and the
bar: peak RSS <= 200 MiB, wall <= 1.5x `--no-connections`. The JSON output is checked to be in time
order. ``--tree``: run beiand from that source tree (PYTHONPATH), e.g. a checkout of an older commit for
a before/after; default: the tree this bench belongs to. ``--workers-too``: also `--json --workers 2`
(its RSS summed over the workers: the merge of their outputs streams). ``--suricata``: Suricata 7
``--runmode single`` with no rules on the same capture in the same rounds (issue 33's peer:
``../shared/tools/install-peers``; config ``../shared/notes/suricata-min.yaml`` or ``--suricata-yaml``),
and the bar: ``--json --workers 1`` with connection records at least 5x as fast, peak RSS <= 200 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _rss import PeakSampler

HERE = Path(__file__).parent
PY = sys.executable


def run(cmd: list[str], out: Path, env: dict[str, str], cwd: str) -> tuple[float, float, float, float]:
    """Wall seconds, CPU seconds (user + system, the tree), peak RSS (MiB, the tree) and the 1-minute load before."""
    load = os.getloadavg()[0]
    with out.open("wb") as f:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.PIPE, env=env, cwd=cwd)
        with PeakSampler(p.pid) as sampler:
            assert p.stderr is not None
            err = p.stderr.read()
            _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed: {status}\n{err.decode(errors='replace')}")
    return wall, ru.ru_utime + ru.ru_stime, max(sampler.peak_kib, ru.ru_maxrss) / 1024, load


def in_time_order(path: Path) -> tuple[int, bool]:
    """Lines of a JSON output and whether their times never go back."""
    n, last, ordered = 0, float("-inf"), True
    with path.open("rb") as f:
        for line in f:
            ts = json.loads(line)["ts"]
            ordered = ordered and ts >= last
            last = ts
            n += 1
    return n, ordered


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--keep", help="directory for the capture and the outputs (the capture is reused if present)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tree", default=str(HERE.parent), help="the beiand source tree to run (PYTHONPATH)")
    ap.add_argument("--workers-too", action="store_true", help="also --json --workers 2")
    ap.add_argument("--suricata", action="store_true", help="also Suricata --runmode single, no rules (issue 33's bar)")
    ap.add_argument("--suricata-yaml", default=str(HERE.parent.parent / "shared" / "notes" / "suricata-min.yaml"))
    a = ap.parse_args()
    d = Path(a.keep or tempfile.mkdtemp(prefix="beiand-bench-"))
    d.mkdir(parents=True, exist_ok=True)
    pcap = d / "mix.pcap"
    gen_env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    if not pcap.exists():
        subprocess.run([PY, str(HERE / "gen_capture.py"), str(pcap), "--packets", str(a.packets)], check=True, env=gen_env)
    tree = str(Path(a.tree).resolve())  # `python -m` puts the working directory first on the path: run from the tree
    env = {**os.environ, "PYTHONPATH": tree}
    base = [PY, "-m", "beiand.cli", "replay", str(pcap), "--records", f"{pcap}.records.csv",
            "--inventory", f"{pcap}.inventory.csv", "--json"]
    hot = subprocess.run([PY, "-m", "beiand.cli", "--version"], env=env, cwd=tree, capture_output=True,
                         text=True).stdout.strip()
    print(f"capture: {a.packets:,} packets ({pcap.stat().st_size / 1e6:.0f} MB), {d}; tree {a.tree}; "
          f"{hot.splitlines()[-1] if hot else '?'}")
    cases = {"--json --workers 1": [*base, "--workers", "1"],
             "--json --workers 1 --no-connections": [*base, "--workers", "1", "--no-connections"]}
    if a.workers_too:
        cases["--json --workers 2"] = [*base, "--workers", "2"]
    suricata = "suricata --runmode single"
    if a.suricata:
        logs = d / "suricata-logs"
        logs.mkdir(exist_ok=True)
        cases[suricata] = ["suricata", "-c", a.suricata_yaml, "-r", str(pcap), "-k", "none", "--disable-detection",
                           "--runmode", "single", "-l", str(logs)]
    got: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in cases}
    for i in range(a.repeat):
        for k, cmd in cases.items():
            out = d / f"out{list(cases).index(k)}.jsonl"
            wall, cpu, rss, load = run(cmd, out, env, tree)
            got[k].append((wall, cpu, rss, load))
            lines, ordered = in_time_order(out) if i == 0 and k != suricata else (0, True)
            print(f"  {k:38s} {wall:6.2f} s wall {cpu:6.2f} s CPU  peak RSS {rss:6.0f} MiB  load {load:4.2f}"
                  + (f"  {lines:,} lines{'' if ordered else ' NOT IN TIME ORDER'}" if i == 0 and k != suricata else ""),
                  flush=True)
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v), max(r[2] for r in v)) for k, v in got.items()}
    on, off = med["--json --workers 1"], med["--json --workers 1 --no-connections"]
    for k, (wall, cpu, rss) in med.items():
        print(f"{k:40s} median {wall:6.2f} s wall {cpu:6.2f} s CPU  peak RSS (max) {rss:6.0f} MiB")
    print(f"connections on / off: {on[0] / off[0]:.2f}x wall, {on[1] / off[1]:.2f}x CPU (bar <= 1.5x); "
          f"peak RSS {on[2]:.0f} MiB (bar <= 200 MiB)")
    if a.suricata:
        su = med[suricata]
        print(f"beiand --json --workers 1 (connections on) against Suricata --runmode single: {su[0] / on[0]:.2f}x as fast "
              f"by wall, {su[1] / on[1]:.2f}x by CPU (bar >= 5x); Suricata peak RSS {su[2]:.0f} MiB, beiand {on[2]:.0f} MiB "
              "(bar <= 200 MiB)")


if __name__ == "__main__":
    main()
