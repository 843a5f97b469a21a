"""Connection-record bar (issue 19): new connections per second into the access log, and the name
pipeline's replay rate against another tree (A/B, alternated).

    python bench/bench_conns.py [--packets N] [--keep DIR] [--workers N] [--runs K]
    python bench/bench_conns.py --ab OTHER_SRC [--packets N] [--keep DIR] [--runs K]
    python bench/bench_conns.py --scan [--packets N] [--runs K]

Rate: ``beiand replay`` of a capture where every packet opens a new flow into or out of hosted space on
any port (``gen_capture.py --conn-flows``: TCP SYNs and first UDP datagrams, 20% IPv6, 10% outbound),
with ``--log-dir``: the clock runs from start to exit (every record durable, the log closed), and the
figure is records written per second (bar >= 100,000/s), and per CPU-second of the replay's
processes (what the cores would give if the machine were not shared). The load average is printed beside it.

A/B: ``beiand replay --json`` of the mixed capture (``gen_capture.py``, the one bench_replay.py uses)
by this tree and by ``OTHER_SRC`` (a checkout of another commit, e.g. ``git archive main``), alternated
``--runs`` times: packets per second of each (bar: this tree within 10% of the other).

Scan (issue 32): the decoder alone (in this process, frames in memory) on a SYN flood: ``--packets``
SYNs from one scanner with random source ports to random ports of five hosted addresses, a third
answered by the server's RST; ``attempts = "summarise"`` against ``"each"``, alternated ``--runs``
times: packets per second and the connection records written.
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


def scan_frames(n: int) -> list[tuple[float, bytes]]:
    """A SYN scan: ``n`` SYNs (random source ports, random ports of five hosted addresses) over
    n / 58,000 seconds (the issue's rate), a third refused by the server's RST+ACK."""
    import random
    import struct

    rng = random.Random(32)
    mac = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
    scanner = bytes([203, 0, 113, 66])
    hosted = [bytes([198, 51, 100, 20 + i]) for i in range(5)]

    def frame(src: bytes, dst: bytes, sport: int, dport: int, flags: int) -> bytes:
        return (mac + struct.pack("!BBHHHBBH", 0x45, 0, 40, 0, 0x4000, 64, 6, 0) + src + dst
                + struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 65535, 0, 0))

    out = []
    ts = 1_790_000_000.0
    for i in range(n):
        dst, cport, sport = hosted[rng.randrange(5)], rng.randrange(1024, 65536), rng.randrange(1, 65536)
        ts += 1 / 58_000
        out.append((ts, frame(scanner, dst, cport, sport, 0x02)))
        if i % 3 == 0:
            out.append((ts, frame(dst, scanner, sport, cport, 0x14)))
    return out


def scan(n: int, runs: int) -> None:
    from beiand.model import Kind
    from beiand.net.decoder import Decoder, DecoderConfig

    frames = scan_frames(n)
    print(f"SYN scan: {n:,} SYNs, {len(frames):,} packets ({load()})", flush=True)
    rates: dict[str, list[float]] = {"summarise": [], "each": []}
    for k in range(runs):
        for mode in ("summarise", "each") if k % 2 == 0 else ("each", "summarise"):
            d = Decoder(DecoderConfig(conns=True, conn_attempts=mode))
            feed = d.feed
            records = 0
            t = time.perf_counter()
            for ts, f in frames:
                out = feed(ts, f)
                if out:  # records written as their windows close
                    records += sum(1 for o in out if o.kind is Kind.CONN)
            records += sum(1 for o in d.flush() if o.kind is Kind.CONN)
            wall = time.perf_counter() - t
            rates[mode].append(len(frames) / wall)
            print(f"run {k + 1} {mode:9s} {len(frames) / wall:>10,.0f} packets/s  {wall:6.2f} s  "
                  f"{records:>8,} records written  ({load()})", flush=True)
    for mode, rs in rates.items():
        print(f"{mode:9s} median {sorted(rs)[len(rs) // 2]:>10,.0f} packets/s  range {min(rs):,.0f}..{max(rs):,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--keep", help="directory for the captures (reused if present)")
    ap.add_argument("--workers", type=int, default=0, help="replay workers (0: its default, one per core)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ab", metavar="OTHER_SRC", help="compare the name pipeline with this source tree")
    ap.add_argument("--scan", action="store_true", help="the decoder on a SYN flood: attempts summarised or each")
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
    if a.scan:
        scan(a.packets, a.runs)
        return
    flood = d / "connflows.pcap"
    if not flood.exists():
        subprocess.run([PY, str(HERE / "gen_capture.py"), str(flood), "--packets", str(a.packets), "--conn-flows"], check=True)
    print(f"capture: {a.packets:,} packets, each opening a flow ({flood.stat().st_size / 1e6:.0f} MB), {d}")
    for k in range(a.runs):
        log = d / f"log{k}"
        subprocess.run(["rm", "-rf", str(log)], check=True)
        before = load()
        # each: a SYN flood's flows are attempts, summarised by default (issue 32); the bar counts records
        wall, out = replay(None, flood, "--log-dir", str(log), "--attempts", "each",
                           *(["--workers", str(a.workers)] if a.workers else []))
        m = re.search(r"access log: (\d+) record", out)
        written = int(m.group(1)) if m else 0
        print(f"run {k + 1}: {written:,} records in {wall:.2f} s: {written / wall:>10,.0f} connection records/s "
              f"(bar >= 100,000/s); {CPU[0]:.1f} CPU-s: {written / CPU[0]:,.0f} records per CPU-second  "
              f"{before} -> {load()}", flush=True)
        subprocess.run(["rm", "-rf", str(log)], check=True)


if __name__ == "__main__":
    main()
