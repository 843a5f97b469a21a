"""Idle CPU of the capture workers after a link flap (issue 28, item 19), in the lab:

    python bench/bench_link_flap.py [--seconds 5]

Starts ``beiand run`` (2 workers) on the lab's gateway, measures each worker's CPU over SECONDS
while idle, takes the capture interface down for 3 s and up again, and measures again. Before the
fix every worker spun at a whole core after the flap. Bar: ≤ 5 % of a core per worker.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from beiand.lab.demo import build
from beiand.lab.labdemo import http_get, wait_ready, write_config
from beiand.lab.netns import Lab

TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def measure(pids: list[int], seconds: float) -> list[float]:
    before = [cpu(p) for p in pids]
    time.sleep(seconds)
    return [(cpu(p) - b) / seconds * 100 for p, b in zip(pids, before, strict=True)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    wd = Path(tempfile.mkdtemp(prefix="beiand-flap-"))
    files = build(wd / "samples")
    cfg = write_config(wd, files)
    with Lab() as lb:
        with open(wd / "beiand.log", "ab") as logf:
            daemon = lb.spawn(lb.gw, [sys.executable, "-m", "beiand.cli", "run", "--config", str(cfg)], stdout=logf, stderr=logf)
        wait_ready(lb, daemon)
        workers = children(daemon.pid)  # the capture worker processes
        print(f"load {os.getloadavg()[0]:.2f}; workers {workers}")
        print("idle, before the flap: " + ", ".join(f"{x:.1f} %" for x in measure(workers, a.seconds)))
        lb.run(lb.gw, ["ip", "link", "set", lb.gw_if, "down"], check=True)
        time.sleep(3)
        lb.run(lb.gw, ["ip", "link", "set", lb.gw_if, "up"], check=True)
        time.sleep(1)
        print("idle, after the flap:  " + ", ".join(f"{x:.1f} %" for x in measure(workers, a.seconds)) + " (of one core)")
        text = http_get(lb, "/metrics")[1].decode()
        print("\n".join(line for line in text.splitlines() if line.startswith("beiand_capture_link_errors_total")))
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
