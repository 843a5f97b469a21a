"""Access-log benchmarks (issue 4): sustained append rate, query time over 60 daily partitions
of 1,000,000 records, disk per 1,000,000 records.

    python bench/bench_accesslog.py [--append N] [--days 60] [--per-day 1000000] [--dir DIR] [--append-only]
                                    [--clickhouse URL]

Append: a producer appends records (cycled from a pool of 100,000 distinct ones, as the
pipeline would hand them over) to an AccessLog with the default group commit (1 s), and the
clock stops when ``flush()`` returns (everything on disk). With ``--clickhouse URL`` the log also
hands what it commits to a ClickHouse sink (issue 27: the copy with its chain fields), as the
daemon does with ``[accesslog.clickhouse]``; the copy's own catch-up time is printed apart.

Query: one real day of ``--per-day`` records with a Zipf-like spread of names and clients is
written through the store and sealed; the sealed file is copied to the other days (same
contents: the query reads every partition's index and blocks as it would for 60 distinct
days), and ``logs query --name`` / ``--client`` time the whole 60-day search.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from beiand.accesslog import AccessLog, LogConfig, Query, query
from beiand.accesslog.store import DAY_MS, day_of, partition_paths
from beiand.model import AccessRecord

DAY0 = 1_790_000_000_000 // DAY_MS * DAY_MS  # a UTC midnight


def make_pool(n: int, day_ms: int, rng: random.Random, names: list[str], clients: list[str]) -> list[AccessRecord]:
    pool = []
    for i in range(n):
        # Zipf-like: a few names and clients are very frequent, most are rare.
        name = names[min(int(rng.paretovariate(1.1)) - 1, len(names) - 1)]
        client = clients[min(int(rng.paretovariate(1.05)) - 1, len(clients) - 1)]
        pool.append(AccessRecord(day_ms + i * (DAY_MS // n), f"cust-{hash(name) % 500:04d}", client, 30000 + i % 30000,
                                 f"198.51.{(hash(name) >> 8) % 100}.{hash(name) % 250}", 443, "tcp", "tls-sni", name,
                                 "filed" if i % 7 else "unfiled", "log", "京ICP备12345678号-1" if i % 7 else "", "gw-bj-01",
                                 "filed" if i % 7 else "no-filing"))
    return pool


def bench_append(n: int, directory: Path, clickhouse: str = "") -> None:
    rng = random.Random(1)
    names = [f"www.site{i}.example.cn" for i in range(50_000)]
    clients = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(100_000)]
    pool = make_pool(100_000, DAY0, rng, names, clients)
    sink = None
    if clickhouse:
        from beiand.sinks.clickhouse import ClickHouseSink

        sink = ClickHouseSink(clickhouse, directory / "spill", table=f"bench_{int(time.time())}")
    log = AccessLog(LogConfig(directory / "append", gateway="gw-bj-01"), on_commit=sink.committed if sink else None,
                    on_checkpoint=sink.anchor if sink else None)
    app = log.append
    t0 = time.perf_counter()
    for _ in range(n // len(pool)):
        for r in pool:
            app(r)
    log.flush()
    dt = time.perf_counter() - t0
    log.close()
    size = sum(p.stat().st_size for p in partition_paths(directory / "append"))
    fs = sorted(log.stats.fsync_seconds)
    print(f"append: {n:,} records in {dt:.2f} s = {n / dt:,.0f} records/s "
          f"(group commit 1 s, {log.stats.commits} commits; fsync p50 {fs[len(fs) // 2] * 1e3:.1f} ms); "
          f"open partition {size / n * 1e6 / 2**20:.1f} MiB per 1M records")
    if sink is not None:
        t1 = time.perf_counter()
        sink.flush(timeout=600)
        sink.close()
        m = sink.metrics()
        lost = sum(v for k, v in m.items() if k.metric == "beiand_clickhouse_lost_records")
        print(f"clickhouse copy: {sink.stats.inserted:,} rows inserted, {sink.stats.spilled:,} spilled "
              f"({sink.stats.overflows} overflow(s) of the memory queue, at most {sink.stats.queued_peak:,} records held, "
              f"bound {sink.max_queued:,}), {lost} lost; caught up "
              f"{time.perf_counter() - t1:.2f} s after the local log ({n / (time.perf_counter() - t0):,.0f} records/s "
              "end to end)")
    if log.stats.lost:  # the committer fell max_buffer behind (a stalled disk): the rate is not sustained
        print(f"append: INVALID: {log.stats.lost:,} records lost (buffer full); the figure above does not count")


def bench_query(days: int, per_day: int, directory: Path) -> None:
    rng = random.Random(2)
    names = [f"www.site{i}.example.cn" for i in range(200_000)]
    clients = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(300_000)]
    qdir = directory / "query"
    pool = make_pool(per_day, DAY0, rng, names, clients)
    t0 = time.perf_counter()
    with AccessLog(LogConfig(qdir)) as log:
        for r in pool:
            log.append(r)
        log.flush()
        # Next day's first record rotates the partition and seals day 0.
        log.append(pool[0]._replace(ts_ms=DAY0 + DAY_MS))
    t_write = time.perf_counter() - t0
    sealed = qdir / day_of(DAY0) / "w0.sealed"
    size = sealed.stat().st_size
    print(f"seal: {per_day:,} records written and sealed in {t_write:.1f} s; sealed partition {size / 2**20:.1f} MiB "
          f"= {size / per_day * 1e6 / 2**20:.1f} MiB per 1,000,000 records (bar < 60 MB)")
    for d in range(1, days):
        dst = qdir / day_of(DAY0 - d * DAY_MS)
        dst.mkdir(exist_ok=True)
        shutil.copyfile(sealed, dst / "w0.sealed")
    since, until = DAY0 - days * DAY_MS, DAY0 + 2 * DAY_MS
    # A mid-frequency name and client (rank ~100) and a rare one.
    counts: dict[str, int] = {}
    for r in pool:
        counts[r.name] = counts.get(r.name, 0) + 1
    ranked = sorted(counts, key=lambda k: -counts[k])
    ccounts: dict[str, int] = {}
    for r in pool:
        ccounts[r.client_ip] = ccounts.get(r.client_ip, 0) + 1
    cranked = sorted(ccounts, key=lambda k: -ccounts[k])
    import ipaddress

    for label, q in (
        (f"--name {ranked[100]} ({counts[ranked[100]]}/day)", Query(since, until, name=ranked[100])),
        (f"--name {ranked[-1]} ({counts[ranked[-1]]}/day)", Query(since, until, name=ranked[-1])),
        (f"--name {ranked[10]} (rank 10, {counts[ranked[10]]}/day)", Query(since, until, name=ranked[10])),
        (f"--client {cranked[100]} ({ccounts[cranked[100]]}/day)", Query(since, until, client=ipaddress.ip_network(cranked[100]))),
        (f"--client {cranked[-1]} ({ccounts[cranked[-1]]}/day)", Query(since, until, client=ipaddress.ip_network(cranked[-1]))),
    ):
        # A fresh process per query: no warm Python caches (the OS page cache is warm, as on a gateway).
        code = ("import sys,time,ipaddress;from beiand.accesslog import *;"
                f"q={q!r};".replace("IPv4Network", "ipaddress.IPv4Network") +
                f"t=time.perf_counter();st=QueryStats();n=sum(1 for _ in query(__import__('pathlib').Path({str(qdir)!r}),q,st));"
                "print(n, time.perf_counter()-t, st.partitions_opened, st.blocks_read, st.blocks_total)")
        outp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        n, dt, po, br, bt = int(outp[0]), float(outp[1]), outp[2], outp[3], outp[4]
        print(f"query {label} over {days} partitions x {per_day:,}: {n:,} records in {dt:.2f} s "
              f"({po} partitions opened, {br} of {bt} blocks read; bar <= 2 s)")
    _ = query  # the subprocess runs the same function


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--append", type=int, default=3_000_000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--per-day", type=int, default=1_000_000)
    ap.add_argument("--dir", help="work directory (default: a temporary one, removed)")
    ap.add_argument("--append-only", action="store_true", help="only the sustained append figure")
    ap.add_argument("--clickhouse", metavar="URL", default="", help="also copy to this ClickHouse (issue 27)")
    args = ap.parse_args()
    directory = Path(args.dir or tempfile.mkdtemp(prefix="beiand-bench-log-"))
    try:
        bench_append(args.append, directory, args.clickhouse)
        if not args.append_only:
            bench_query(args.days, args.per_day, directory)
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
