"""Attack bar (issue 17): a capture worker under the issue's attacks stays within its reassembly
budgets, and keeps >= 80% of its throughput on a mixed capture with 10% attack traffic.

    python bench/bench_attack.py [--packets N] [--keep DIR] [--skip-throughput]

Part 1, one child process per attack: a worker's decoder with the default budgets
(``[reassembly]``: TCP 32 MiB, QUIC 16 MiB, fragments 8 MiB) is fed the attack's frames as they
are generated; printed are the frames, the time, the peak RSS of the process and its growth
over the process at rest, the bytes each budget held at most and the evictions.

Part 2: ``beiand replay --workers 1`` on a clean mixed capture (bench/gen_capture.py) and on the
same capture with attack frames put in as every tenth packet: packets/s of each and the ratio.
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
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
PY = sys.executable

# name: (what it is, the generator call)
ATTACKS = {
    "half-open": "20 half-open flows, SYN then 1,400-byte segments at offsets 1..3000, never 0 (issue item 1)",
    "half-open-wide": "6,000 half-open flows, 12 segments 1,400 bytes apart each (16 KiB held per flow: the TCP budget)",
    "reverse-bytes": "16,383 one-byte segments, highest offset first (issue item 2)",
    "reverse-fragments": "8,191 eight-byte IPv4 fragments, last one first (issue item 2)",
    "fragment-holes": "2,000 UDP datagrams, 50 fragments of 1,000 bytes each, the first never sent",
    "quic-scatter": "3,000 QUIC connections, Initials with CRYPTO frames one byte every other offset",
    "quic-holes": "1,000 QUIC connections, 30 Initials each with 1,000 CRYPTO bytes after a hole (the QUIC budget)",
}


def attack_frames(name: str) -> Iterator[bytes]:
    sys.path.insert(0, str(ROOT))  # tests.fuzz.hostile from this tree, even with --tree
    from tests.fuzz import hostile

    if name == "half-open":
        return hostile.half_open(20, 3000)
    if name == "half-open-wide":
        return hostile.half_open(6000, 12, step=1400)
    if name == "reverse-bytes":
        return hostile.reverse_bytes(16383)
    if name == "reverse-fragments":
        return hostile.reverse_fragments(8191)
    if name == "fragment-holes":
        return hostile.fragment_holes(2000, per=50)
    if name == "quic-scatter":
        return hostile.quic_scatter(3000, datagrams=4)
    if name == "quic-holes":
        return hostile.quic_holes(1000, per=30)
    raise SystemExit(f"unknown attack {name}")


def _status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def child(name: str) -> None:
    """One attack against one worker's decoder, in this process."""
    from beiand.net.decoder import Decoder

    frames = list(attack_frames(name))  # generated first: their cost is not the decoder's
    Decoder().feed(0.0, frames[0])  # imports and first calls warmed up, on a decoder of its own
    d = Decoder()
    base = _status_kib("VmRSS")  # at rest, with the frames in memory
    t0 = time.perf_counter()
    ts = 1_750_000_000.0
    for f in frames:
        ts += 1e-5  # 100,000 frames/s: the attack lasts its frames / 1e5 seconds of capture time
        d.feed(ts, f)
    wall = time.perf_counter() - t0
    budgets = getattr(d, "budgets", {})  # absent before issue 17 (--tree)
    out = {"attack": name, "frames": len(frames), "seconds": wall, "base_kib": base, "peak_kib": _status_kib("VmHWM"),
           "budgets": {k: {"limit": b.limit, "peak": b.peak, "evicted": b.evicted} for k, b in budgets.items()},
           "frame_errors": sum(v for k, v in d.drops.items() if k.startswith("frame:"))}
    print(json.dumps(out))


def run_attacks(tree: str | None, timeout: float) -> None:
    print("part 1: one worker's decoder (default budgets) under each attack; RSS growth = peak - at rest"
          + (f"; beiand from {tree}" if tree else ""))
    env = dict(os.environ)
    if tree:  # another source tree (e.g. the code before issue 17), with this tree's generators
        env["PYTHONPATH"] = tree
    for name, what in ATTACKS.items():
        try:
            r = subprocess.run([PY, __file__, "--child", name], capture_output=True, text=True, check=True, env=env,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"  {name:18s} did not finish within {timeout:.0f} s")
            continue
        o = json.loads(r.stdout)
        grow = (o["peak_kib"] - o["base_kib"]) / 1024
        held = ", ".join(f"{k} {b['peak'] / 2**20:.1f}/{b['limit'] / 2**20:.0f} MiB"
                         + (f" ({b['evicted']:,} evicted)" if b["evicted"] else "") for k, b in o["budgets"].items() if b["peak"])
        print(f"  {name:18s} {o['frames']:>9,} frames {o['seconds']:6.2f} s ({o['frames'] / o['seconds']:>9,.0f}/s)  "
              f"peak RSS {o['peak_kib'] / 1024:5.0f} MiB (+{grow:5.1f})  held: {held or 'nothing'}")
        print(f"  {'':18s} {what}")
        if o["frame_errors"]:
            print(f"  {'':18s} !! {o['frame_errors']} frames reached the catch-all")


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t


def mix(clean: Path, out: Path, share: float = 0.1) -> int:
    """The clean capture with attack frames put in as every tenth packet (all attacks in turn)."""
    from beiand.capture.pcap import read_capture
    from beiand.lab import traffic as t

    every = round(1 / share)
    gens = [attack_frames(n) for n in ("half-open-wide", "reverse-bytes", "reverse-fragments", "fragment-holes", "quic-scatter",
                                       "quic-holes", "half-open")]
    k = n = 0
    with t.PcapWriter(out) as w:
        for i, (ts, _lt, frame) in enumerate(read_capture(clean)):
            w.write(ts, frame)
            n += 1
            if i % (every - 1) == every - 2:
                while gens:
                    g = gens[k % len(gens)]
                    f = next(g, None)
                    k += 1
                    if f is None:
                        gens.remove(g)
                        continue
                    w.write(ts, f)
                    n += 1
                    break
    return n


def run_throughput(packets: int, d: Path, repeat: int) -> None:
    clean, mixed = d / "clean.pcap", d / "mixed10.pcap"
    if not clean.exists():
        subprocess.run([PY, str(HERE / "gen_capture.py"), str(clean), "--packets", str(packets)], check=True,
                       stdout=subprocess.DEVNULL)
    n_mixed = mix(clean, mixed) if not mixed.exists() else sum(1 for _ in __import__("beiand.capture.pcap",
                                                                                         fromlist=["x"]).read_capture(mixed))
    beiand = shutil.which("beiand") or str(Path(PY).parent / "beiand")

    def cmd(p: Path) -> list[str]:
        return [beiand, "replay", str(p), "--records", f"{clean}.records.csv", "--inventory", f"{clean}.inventory.csv",
                "--workers", "1", "--json"]

    best_clean = min(timed(cmd(clean)) for _ in range(repeat))
    best_mixed = min(timed(cmd(mixed)) for _ in range(repeat))
    pc, pm = packets / best_clean, n_mixed / best_mixed
    print(f"part 2: beiand replay --workers 1, best of {repeat} ({d})")
    print(f"  clean        {packets:>9,} packets  {best_clean:6.2f} s  {pc:>9,.0f} packets/s")
    print(f"  10% attack   {n_mixed:>9,} packets  {best_mixed:6.2f} s  {pm:>9,.0f} packets/s")
    print(f"  ratio {pm / pc:.2f} (bar >= 0.80)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--packets", type=int, default=300_000, help="packets of the clean capture (default 300,000)")
    ap.add_argument("--keep", help="directory for the captures (reused if present)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--tree", help="run part 1 against the beiand package of another source tree (PYTHONPATH)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per attack (default 300)")
    a = ap.parse_args()
    if a.child:
        child(a.child)
        return
    print(f"cores: {len(os.sched_getaffinity(0))}, python {sys.version.split()[0]}")
    run_attacks(a.tree, a.timeout)
    if not a.skip_throughput:
        d = Path(a.keep or tempfile.mkdtemp(prefix="beiand-attack-"))
        d.mkdir(parents=True, exist_ok=True)
        run_throughput(a.packets, d, a.repeat)


if __name__ == "__main__":
    main()
