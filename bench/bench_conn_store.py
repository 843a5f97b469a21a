"""Connection records in the access log (issue 19): disk per sealed record, and a query by server
address and port over 60 days × 10M records.

    python bench/bench_conn_store.py [--per-day 10000000] [--days 60] [--dir /tmp/h19b/bench] [--reuse]
    python bench/bench_conn_store.py --seal-only [--per-day 2000000] --dir DIR

``--seal-only`` writes one partition of ``--per-day`` records (default: ``accesslog.partition_records``,
the size at which a worker's partition is closed and sealed) and seals it in a fresh child process,
printing its peak RSS (``ru_maxrss``: what sealing one full partition needs, the interpreter's
own ~40 MB included, printed too) and its rate.

One day of ``--per-day`` realistic connection records (bench/conn_records.py: many clients,
ports and accounts, a minute's coalescing, 10 % written up to 60 s late) is written through
``AccessLog`` (the real writer: frames, chain, commit marks) and sealed by ``seal_partition`` (the
real sealing code: columnar blocks, index, summary). Bytes per record are the sealed file's size
over its records (blocks, index, summary and meta included). The sealed file is then copied to
the other days (same contents: a query reads each partition's index and blocks as it would for
60 distinct days; the copies are not chained, so ``logs verify`` of this directory fails by
design), and ``beiand logs query --server IP --port P --since`` (a subprocess, JSON lines to a
pipe that is read and counted) is timed for a typical endpoint and a busy one. Each query runs
three times; the first after dropping nothing (the files were just written: page cache warm
as far as it holds them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conn_records import records

from beiand.accesslog import AccessLog, LogConfig
from beiand.accesslog.store import DAY_MS, day_of, partition_paths, read_sealed_meta, seal_partition
from beiand.runtime.settings import AccessLogSection

DAY0 = 1_790_000_000_000 // DAY_MS * DAY_MS  # a UTC midnight (2026-09-21)


def load() -> str:
    return os.getloadavg().__repr__()


def build_day(directory: Path, per_day: int, block_records: int) -> Path:
    cfg = LogConfig(directory, gateway="gw-bj-1", block_records=block_records)
    t0 = time.perf_counter()
    with AccessLog(cfg) as log:
        app = log.append
        for r in records(per_day, DAY0 + 120_000):
            app(r)
        log.flush()
    t1 = time.perf_counter()
    open_part = next(p for p in partition_paths(directory) if p.suffix == ".open")
    sealed = seal_partition(open_part, cfg)
    t2 = time.perf_counter()
    print(f"wrote {per_day:,} records in {t1 - t0:.1f} s (generation included), sealed in {t2 - t1:.1f} s "
          f"({per_day / (t2 - t1):,.0f} records/s); load {load()}", flush=True)
    return sealed


SEAL_CHILD = """
import json, resource, sys, time
from pathlib import Path
from beiand.accesslog import LogConfig
from beiand.accesslog.store import seal_partition
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
seal_partition(Path(sys.argv[1]), LogConfig(Path(sys.argv[2]), gateway="gw-bj-1", block_records=int(sys.argv[3])))
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "base_kb": base, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def seal_only(directory: Path, n: int, block_records: int) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    cfg = LogConfig(directory, gateway="gw-bj-1", block_records=block_records, seal=False)
    with AccessLog(cfg) as log:
        app = log.append
        for r in records(n, DAY0 + 120_000):
            app(r)
        log.flush()
    part = next(p for p in partition_paths(directory) if p.suffix == ".open")
    size = part.stat().st_size
    out = subprocess.run([sys.executable, "-c", SEAL_CHILD, str(part), str(directory), str(block_records)],
                         capture_output=True, check=True, text=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    sealed = part.with_suffix(".sealed")
    print(f"sealed one partition of {n:,} records ({size / 2**20:,.0f} MiB open, {sealed.stat().st_size / n:.2f} bytes per "
          f"sealed record) in {got['seconds']:.1f} s ({n / got['seconds']:,.0f} records/s); peak RSS of the sealing process "
          f"{got['peak_kb'] / 1024:,.0f} MiB (interpreter and imports before sealing {got['base_kb'] / 1024:,.0f} MiB: "
          f"{(got['peak_kb'] - got['base_kb']) * 1024 / n:,.0f} bytes per record); load {load()}", flush=True)


def sizes(sealed: Path) -> None:
    meta = read_sealed_meta(sealed)
    n = meta["count"]
    size = sealed.stat().st_size
    blocks = sum(b[1] for b in meta["blocks"])
    index = sum(v[1] for v in meta["index_kinds"].values())
    summ = meta["summary"][1]
    columnar = 0
    with open(sealed, "rb") as f:
        for b in meta["blocks"]:
            f.seek(b[0])
            columnar += f.read(1) == b"C"
    print(f"sealed: {size:,} bytes for {n:,} records = {size / n:.2f} bytes per record "
          f"(blocks {blocks / n:.2f}, index {index / n:.2f} [{', '.join(f'{k} {v[1] / n:.2f}' for k, v in meta['index_kinds'].items())}], "
          f"summary {summ / n:.2f}, meta+header {(size - blocks - index - summ) / n:.2f}); "
          f"{columnar} of {len(meta['blocks'])} blocks columnar", flush=True)


def replicate(directory: Path, sealed: Path, days: int) -> None:
    t0 = time.perf_counter()
    for d in range(1, days):
        dst = directory / day_of(DAY0 + d * DAY_MS) / sealed.name
        dst.parent.mkdir(exist_ok=True)
        if not dst.exists():
            shutil.copyfile(sealed, dst)
    print(f"copied to {days} days in {time.perf_counter() - t0:.1f} s", flush=True)


def timed_query(directory: Path, server: str, port: int, days: int) -> None:
    since = (DAY0 - DAY_MS) // 1000
    until = (DAY0 + (days + 1) * DAY_MS) // 1000
    argv = [sys.executable, "-m", "beiand.cli", "logs", "query", "--log-dir", str(directory), "--server", server,
            "--port", str(port), "--since", str(since), "--until", str(until), "--format", "jsonl"]
    for run in range(3):
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, check=True)
        dt = time.perf_counter() - t0
        n = p.stdout.count(b"\n")
        print(f"query --server {server} --port {port} over {days} days: {n:,} records in {dt:.2f} s (run {run + 1}; "
              f"{p.stderr.decode().strip().splitlines()[0]}); load {load()}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-day", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--dir", default="/tmp/h19b/bench")
    ap.add_argument("--reuse", action="store_true", help="keep a sealed day already in --dir")
    ap.add_argument("--block-records", type=int, default=LogConfig(Path()).block_records)
    ap.add_argument("--no-query", action="store_true")
    ap.add_argument("--query-only", action="store_true", help="only the queries, over the partitions already in --dir")
    ap.add_argument("--seal-only", action="store_true", help="peak RSS and rate sealing one full partition")
    args = ap.parse_args()
    d = Path(args.dir)
    if args.seal_only:
        n = args.per_day if "--per-day" in sys.argv else AccessLogSection().partition_records
        seal_only(d, n, args.block_records)
        return
    if args.query_only:
        for server, port in (("198.51.108.0", 22), ("198.51.100.7", 22)):
            timed_query(d, server, port, args.days)
        return
    first = d / day_of(DAY0) / "w0.sealed"
    if not (args.reuse and first.exists()):
        shutil.rmtree(d, ignore_errors=True)
        first = build_day(d, args.per_day, args.block_records)
    sizes(first)
    if args.no_query:
        return
    replicate(d, first, args.days)
    for server, port in (("198.51.108.0", 22), ("198.51.100.7", 22)):
        timed_query(d, server, port, args.days)


if __name__ == "__main__":
    main()
