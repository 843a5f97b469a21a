"""The register's bars (issue 35): one export published and applied by three gateways; 184 daily
exports kept as history, its size against one export, and ``records lookup --at`` on any day.

    python bench/bench_records_versions.py apply [--filings 1000000] [--postgres]
    python bench/bench_records_versions.py history [--filings 1000000] [--days 184] [--change 0.005] [--lookups 20]

``apply``: a generated export is imported (validated, guarded, published) as version 1, then a
second export (0.5% changed) as version 2, by an importer in this process. Three gateways, each a
process of its own started before the first import with its own state directory, follow the
register as a running gateway does (NOTIFY on PostgreSQL, the poll besides): each fetches the
version by content into its copy and builds the new state to the side, then swaps it in and
replaces its worker (a process forked with the state, judging paced) by one forked with the new
state, as the supervisor does: the old worker serves verdicts from the old version until the swap.
Printed: import time; the time from the import's start until the last gateway judges with the
new version (the bar); each gateway's time after the import returned and its CPU for the fetch
and build; the verdicts the old worker served during the step that fetched version 2, with the
longest gap between two batches. ``--postgres`` runs a PostgreSQL 15 of its own (Debian's
binaries, as the tests do; run as root); else the store is SQLite.

``history``: ``--days`` daily exports, each changing ``--change`` of the filings (status flips,
renamed domains, changed addresses, removed filings replaced by new ones), published day after
day into an SQLite store (PostgreSQL would hold the same rows; SQLite's file size is exact and
the run shorter). Printed: the store's size after day 1 and after the last day, their ratio (bar
≤ 3x), publish time per day, and ``records lookup --at`` latency (the CLI, in process) on random
days (bar ≤ 5 s).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from beiand.model import Filing, FilingStatus
from beiand.records import load_file
from beiand.records.generate import OUR_PROVIDER, GenConfig, write_csv
from beiand.records.versions import publish_filings
from beiand.runtime.decisions import open_decisions
from beiand.runtime.register import Applier, import_files
from beiand.runtime.settings import Config, parse_config
from beiand.store import register as reg


def _config(state: Path, url: str = "", gateway: str = "ops") -> Config:
    store = f'[store]\nurl = "{url}"\npoll_interval = 0.2\n' if url else ""
    return parse_config(f'[daemon]\ngateway = "{gateway}"\nstate_dir = "{state}"\n[records]\nsource = "store"\n'
                        f'max_loss = 0.2\n{store}', "bench.toml")


@contextlib.contextmanager
def _postgres(tmp: Path) -> Iterator[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.integration.postgres import Postgres

    tmp.chmod(0o755)
    pg = Postgres(tmp / "pg")
    pg.start()
    try:
        yield pg.create_db("bench")
    finally:
        pg.stop()


def _changed(filings: list[Filing], share: float, rng: random.Random, day: int) -> list[Filing]:
    """The next day's export: ``share`` of the filings changed (a quarter each: status, domains,
    addresses, removed and replaced by a new filing)."""
    out = list(filings)
    for i in rng.sample(range(len(out)), int(len(out) * share)):
        f = out[i]
        what = rng.randrange(4)
        if what == 0:
            out[i] = f._replace(status=FilingStatus.CANCELLED if f.status is FilingStatus.ACTIVE else FilingStatus.ACTIVE)
        elif what == 1:
            out[i] = f._replace(domains=(f"d{day}x{i}.example.cn", *f.domains[1:]))
        elif what == 2:
            out[i] = f._replace(ips=(f"10.{day % 250}.{i % 250}.{(i // 250) % 250}",))
        else:
            # a 10-digit sponsor number, one per (day, row): two replaced rows of a day never share one
            out[i] = f._replace(number=f"京ICP备{9_000_000_000 + day * 10_000_000 + i}号-1",
                                domains=(f"n{day}x{i}.example.cn",))
    return out


# A worker's verdicts per 10 ms: enough to show service through the apply, little enough that three
# workers do not take the 2 cores the importer, PostgreSQL and the three gateways share here (on a
# gateway, the workers judge on cores of their own).
PACE = 100


def _judge(st: Any, names: tuple[str, str], served: Any, wrong: Any, gap: Any, stop: Any) -> None:
    """A worker: judges, paced, a name of version 1 only and a name of version 2 only with the state
    it was forked with, until told to stop; counts the verdicts, those not as that version says,
    and the longest gap between two batches (``gap``, reset by the gateway)."""
    old, new = names
    v2 = st.register_version >= 2
    last = time.perf_counter()
    while not stop.is_set():
        bad = 0
        for _ in range(PACE):
            bad += (st.index.covering(old) is not None, st.index.covering(new) is not None) != (not v2, v2)
        served.value += PACE
        wrong.value += bad
        time.sleep(0.01)
        now = time.perf_counter()
        gap.value = max(gap.value, now - last)
        last = now


def _gateway(g: Config, names: tuple[str, str], news: Any, ready: Any) -> None:
    """One gateway, a process of its own (as a machine of its own would be): its ``Applier``
    follows the register (NOTIFY, and the poll besides) and each version it fetches is built to
    the side into a new state, as the supervisor's reload does (``wiring._state_from_register``);
    then its worker is replaced by one forked with the new state, as the supervisor replaces its
    workers. Until then the worker forked with the old state keeps judging (``_judge``, paced:
    here it would take the cores the three gateways share). Each swap is sent to ``news``:
    (gateway, version, filings, wall time, the CPU seconds of the step that fetched and built it,
    the verdicts the old worker served during that step and the longest gap between two batches,
    the verdicts not as the version in service says)."""
    from beiand.runtime.wiring import _state_from_register

    ctx = multiprocessing.get_context("fork")
    served, wrong, gap = ctx.Value("q", 0), ctx.Value("q", 0), ctx.Value("d", 0.0)
    worker: list[Any] = [None, None]  # the process, its stop event
    holder: list[Any] = [None]
    step = [0.0, 0]  # this thread's CPU clock and the verdicts served when the current step began

    def reload(why: str) -> None:
        st = _state_from_register(str(g.daemon.state_dir / "beiand.toml"), g, holder[0])
        cpu = time.thread_time() - step[0]
        during, longest = served.value - step[1], gap.value
        holder[0] = st
        if worker[0] is not None:  # the old worker stops once the new state is in place
            worker[1].set()
            worker[0].join()
        stop = ctx.Event()
        worker[:] = [ctx.Process(target=_judge, args=(st, names, served, wrong, gap, stop)), stop]
        worker[0].start()
        news.put((g.gateway, st.register_version, len(st.index.filings), time.time(), cpu, during, longest, wrong.value))

    ap = Applier(g, lambda: open_decisions(g), reload)
    ready.put(g.gateway)
    while not (holder[0] is not None and holder[0].register_version >= 2):
        step[0], step[1], gap.value = time.thread_time(), served.value, 0.0
        ap.step(g.store.poll_interval)
    worker[1].set()
    worker[0].join()
    ap.stop()


def apply(a: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="beiand-bench-reg-"))
    try:
        with (_postgres(tmp) if a.postgres else contextlib.nullcontext("")) as url:
            store_url = url or str(tmp / "fleet.sqlite")
            gen = GenConfig(filings=a.filings, hosted_v4="10.0.0.0/8", ip_share=0.15)
            e1, e2 = tmp / "day1.csv", tmp / "day2.csv"
            t = time.perf_counter()
            write_csv(str(e1), gen)
            first = load_file(e1).filings
            rng = random.Random(2)
            second = _changed(first, 0.005, rng, 2)
            with e2.open("w", encoding="utf-8") as f:  # the next day's export, 0.5% changed
                f.write("备案号,主办单位,服务类型,网站名称,域名,IP,接入商,状态,审核时间\n")
                for x in second:
                    f.write(f"{x.number},{x.sponsor},{x.service_type.value},{x.service_name},{'、'.join(x.domains)},"
                            f"{'、'.join(x.ips)},{x.access_provider},{x.status.value},{x.reviewed}\n")
            # a name version 1 lists and version 2 does not, and one the other way round
            now = {d for x in second for d in x.domains}
            was = {d for x in first for d in x.domains}
            names = (next(d for x in first for d in x.domains if d not in now),
                     next(d for x in second for d in x.domains if d not in was))
            del first, second, now, was
            print(f"generated {a.filings} filings ({e1.stat().st_size / 1e6:.0f} MB) and the next day's in "
                  f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
            ops = _config(tmp / "ops", store_url)
            gws = [_config(tmp / f"gw{i}", store_url, f"gw{i}") for i in range(3)]
            store = open_decisions(ops)  # the schema, before the gateways follow it
            store.close()
            print(f"store: {'PostgreSQL ' + url.rsplit('@', 1)[-1] if url else 'SQLite ' + store_url}; "
                  f"{os.cpu_count()} cores for the importer and the three gateways; load {os.getloadavg()[0]:.2f}")
            ctx = multiprocessing.get_context("fork")
            news, ready = ctx.Queue(), ctx.Queue()
            procs = [ctx.Process(target=_gateway, args=(g, names, news, ready)) for g in gws]
            for p in procs:
                p.start()
            for _ in procs:
                ready.get(timeout=120)
            for n, export in ((1, e1), (2, e2)):
                store = open_decisions(ops)
                t0 = time.time()
                done, _ = import_files(ops, store, [str(export)], actor="bench")
                t1 = time.time()
                store.close()
                v = done[0].version
                print(f"version {v.version}: import (parse, validate, guard, publish) {t1 - t0:.1f} s, {v.rows} rows, "
                      f"{v.summary.get('added')} added, {v.summary.get('removed')} removed, {v.summary.get('changed')} changed")
                got = [news.get(timeout=600) for _ in gws]
                assert all(x[1] == v.version for x in got), got
                print(f"  import + applied on all three: {max(x[3] for x in got) - t0:.1f} s (bar ≤ 60 s)")
                for gw, version, n_filings, when, cpu, during, longest, wrong in sorted(got):
                    print(f"  {gw}: version {version} ({n_filings} filings) in service {when - t1:.1f} s after the import "
                          f"returned; its fetch and build {cpu:.1f} s of CPU" +
                          (f"; meanwhile its worker served {during} verdicts from version 1, at most {longest * 1000:.0f} ms "
                           f"between two batches (10 ms paced), {wrong} not as the version in service says" if n == 2 else ""))
                    assert not wrong
            for p in procs:
                p.join(timeout=60)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def history(a: argparse.Namespace) -> None:
    from beiand.cli.main import main as cli

    tmp = Path(tempfile.mkdtemp(prefix="beiand-bench-hist-"))
    try:
        path = tmp / "day1.csv"
        write_csv(str(path), GenConfig(filings=a.filings, hosted_v4="10.0.0.0/8", ip_share=0.15))
        filings = load_file(path).filings
        cfg = _config(tmp / "state")
        store = open_decisions(cfg)
        db = tmp / "state" / "decisions.sqlite"
        rng = random.Random(1)
        times: list[float] = []
        at: list[float] = []
        sizes: list[int] = []
        day_s = 86_400.0
        start = time.time() - a.days * day_s
        for day in range(a.days):
            if day:
                filings = _changed(filings, a.change, rng, day)
            t = time.perf_counter()
            publish_filings(store, filings, sources=[path], max_loss=None, at=start + day * day_s)
            times.append(time.perf_counter() - t)
            at.append(start + day * day_s)
            if day == 0 or day == a.days - 1:
                with store._read() as cur:  # the bench measures the file: the WAL folded in first
                    cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                sizes.append(db.stat().st_size + (os.stat(f"{db}-wal").st_size if Path(f"{db}-wal").exists() else 0))
            if day % 10 == 0:
                print(f"day {day + 1}: published in {times[-1]:.1f} s", file=sys.stderr)
        counts = reg.size(store)
        store.close()
        print(f"history: {a.days} daily exports of {a.filings} filings, {a.change:.1%} changed a day (SQLite)")
        print(f"  store after day 1: {sizes[0] / 1e6:.1f} MB; after day {a.days}: {sizes[-1] / 1e6:.1f} MB: "
              f"{sizes[-1] / sizes[0]:.2f}x (bar ≤ 3x); rows {counts}")
        print(f"  (the export file itself: {path.stat().st_size / 1e6:.1f} MB; the store after day {a.days} is "
              f"{sizes[-1] / path.stat().st_size:.2f}x it: rows, hashes, lookup keys and their indexes)")
        times.sort()
        print(f"  publish per day: median {times[len(times) // 2]:.1f} s, max {times[-1]:.1f} s")
        lat = []
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            for _ in range(a.lookups):
                day = rng.randrange(a.days)
                name = rng.choice(filings).domains[0] if filings[0].domains else "a.example.cn"
                t = time.perf_counter()
                cli(["records", "lookup", name, "--at", f"{at[day] + 3600:.0f}", "--state-dir", str(tmp / "state"),
                     "--no-overlays", "--provider", OUR_PROVIDER, "--json"])
                lat.append(time.perf_counter() - t)
        lat.sort()
        print(f"  records lookup --at a random day ({a.lookups} lookups, the CLI in process): median {lat[len(lat) // 2]:.3f} s, "
              f"max {lat[-1]:.3f} s (bar ≤ 5 s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("apply")
    p.add_argument("--filings", type=int, default=1_000_000)
    p.add_argument("--postgres", action="store_true", help="a PostgreSQL of its own (root; Debian's postgresql)")
    h = sub.add_parser("history")
    h.add_argument("--filings", type=int, default=1_000_000)
    h.add_argument("--days", type=int, default=184)
    h.add_argument("--change", type=float, default=0.005)
    h.add_argument("--lookups", type=int, default=20)
    a = ap.parse_args()
    apply(a) if a.what == "apply" else history(a)


if __name__ == "__main__":
    main()
