"""Decision store bars (issue 29).

    python bench/bench_decisions.py latency [--orders 50]
        Three ``beiand run`` (enforce), each in its network namespace, following one real
        PostgreSQL 15 in a namespace of its own (tests/integration/test_fleet_decisions.Fleet).
        For each of N orders: every gateway is sent a QUIC Initial for a filed name every 5 ms;
        ``beiand block add NAME`` runs; the figure is, per gateway, the capture time of the first
        flow its access log records as blocked under that order, minus the time ``block add``
        returned. Prints p50/p99/max over every (order, gateway). Bar: p99 <= 1 s.

    python bench/bench_decisions.py scale [--orders 50000 --commands 50000]
        An SQLite store holding N closure orders (names, addresses, prefixes) and M regulator
        commands (domain filters). Prints: the follower's fold and snapshot write for one more
        order, a worker's reload of the snapshot, the worst case with the poll intervals added
        (bar: a new version applied in <= 1 s); and the verdict rate of the decider (records,
        then every overlay) with those rules in force against empty overlays, A/B alternated
        (bar: changes by <= 5%).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


# -- latency: three gateways, one PostgreSQL ---------------------------------------------------------


def lo_socket(ns: str) -> socket.socket:
    """A raw socket on the loopback of namespace ``ns`` (where a lab gateway captures)."""
    from beiand.lab.netns import in_netns

    def make() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind(("lo", 0))
        return s

    return in_netns(ns, make)


def first_blocks(daemons: list[Any], socks: list[socket.socket], server: str, payload: bytes, order: str, port: list[int],
                 act: Any) -> list[float]:
    """While every gateway is sent ``payload`` (a QUIC Initial) to ``server``:443 every 5 ms, each
    flow on a new client port (``port``: the last one used; a flow already named is not judged
    again), run ``act`` (it returns True when it did what it should); then, per gateway, the
    seconds from ``act`` returning to the capture time of the first flow its access log records
    as blocked under ``order``."""
    from beiand.accesslog import Query, query
    from beiand.lab.traffic import udp

    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            port[0] = port[0] + 1 if port[0] < 65535 else 1024
            frame = udp(f"10.9.{port[0] % 200}.2", server, port[0], 443, payload)
            for s in socks:
                s.send(frame)
            time.sleep(0.005)

    t = threading.Thread(target=send)
    t.start()
    try:
        time.sleep(0.05)
        assert act(), f"{order}: the action failed"
        returned = time.time()
        firsts: dict[int, float] = {}
        deadline = time.monotonic() + 30
        while len(firsts) < len(daemons) and time.monotonic() < deadline:
            time.sleep(0.1)
            for k, d in enumerate(daemons):
                if k in firsts:
                    continue
                hits = [r.ts_ms for r in query(d.wd / "log", Query(since_ms=int((returned - 10) * 1000)))
                        if r.order == order and r.action == "block"]
                if hits:
                    firsts[k] = min(hits) / 1000
    finally:
        stop.set()
        t.join()
    if len(firsts) < len(daemons):
        raise SystemExit(f"{order}: not applied on every gateway within 30 s: {firsts}")
    return [firsts[k] - returned for k in sorted(firsts)]


def latency(n: int) -> None:
    from beiand.lab.traffic import quic_initial_datagrams
    from tests.integration.test_fleet_decisions import Fleet

    wd = Path(tempfile.mkdtemp(prefix="beiand-bench-decisions-"))
    f = Fleet(wd)
    try:
        for d in f.daemons:
            d.start()

        socks = [lo_socket(d.ns) for d in f.daemons]
        payloads = {i: quic_initial_datagrams(f"site{i}.example.cn")[0] for i in range(n)}
        figures: list[float] = []
        port = [1024]  # every flow a new one, across orders (a flow already named is not judged again)
        for i in range(n):
            order = f"京通管〔2026〕{1000 + i}号"
            lat = first_blocks(f.daemons, socks, "198.51.100.10", payloads[i], order, port,
                               lambda i=i, order=order: f.cli(["block", "add", f"site{i}.example.cn", "--order", order]) == 0)
            figures += lat
            print(f"order {i + 1:3d}: " + "  ".join(f"gw{k} {x * 1000:6.0f} ms" for k, x in enumerate(lat)), flush=True)
        print(f"orders applied on all three gateways: {n} orders x 3 gateways, from `block add` returning to the first "
              f"blocked flow: p50 {pct(figures, 50) * 1000:.0f} ms, p99 {pct(figures, 99) * 1000:.0f} ms, "
              f"max {max(figures) * 1000:.0f} ms (bar: p99 <= 1000 ms); flows sent every 5 ms per gateway")
        print(f"load average during the run: {os.getloadavg()}")
    finally:
        f.close()


# -- scale: 100,000 orders and commands --------------------------------------------------------------


def scale(orders: int, commands: int, verdicts: int, a_trials: int = 30, rounds: int = 3, hit_share: float = 0.0) -> None:
    from beiand.isms.store import CommandRules, _cmd_to_json
    from beiand.isms.wire.model import Rule, SecurityCommand
    from beiand.policy.orders import set_entry
    from beiand.policy.overlays import ExemptionLayer, OrderLayer
    from beiand.records.generate import GenConfig, write_csv, write_inventory
    from beiand.runtime.decisions import Follower, open_decisions
    from beiand.runtime.settings import Config, DaemonSection, IsmsSection
    from beiand.store import Entry

    tmp = Path(tempfile.mkdtemp(prefix="beiand-bench-scale-"))
    cfg = Config(daemon=DaemonSection(gateway="bench", state_dir=tmp / "state"), isms=IsmsSection(enabled=True))
    store = open_decisions(cfg)
    rng = random.Random(29)
    t = time.perf_counter()
    entries = []
    hit_net = "10.0"  # 1/256 of the traffic's space: the orders that hit traffic

    for i in range(orders):
        r = i % 50
        net = hit_net if rng.random() < hit_share else "172.16"  # the traffic goes to 10.0.0.0/8
        target = (f"{net}.{rng.randrange(256)}.0/24" if r == 0 else
                  f"{net}.{rng.randrange(256)}.{rng.randrange(1, 255)}" if r < 5 else f"closed{i}.example.org")
        entries.append(set_entry("order", target, f"京通管〔2026〕{i}号", "bench", 0.0, "bench", now=1_700_000_000.0 + i))
    for i in range(commands):
        c = SecurityCommand(command_id=i + 1, type=1, operation=0, rules=(Rule(1, f"cmd{i}.example.net", ""),), block=1, log=1,
                            report=1, reason="", effect_time=0.0, expired_time=0.0, house_ids=(), owner="", time_stamp="")
        entries.append(Entry("isms-command", str(i + 1), "set", _cmd_to_json(c), 1_700_000_000.0 + i, "isms"))
    for k in range(0, len(entries), 20_000):
        store.append(entries[k:k + 20_000])
    print(f"store: {orders:,} orders + {commands:,} commands written in {time.perf_counter() - t:.1f} s (version {store.head()})")
    fol = Follower(cfg)
    t = time.perf_counter()
    fol.first_sync()
    print(f"follower: first fold and snapshots of {store.head():,} rows: {time.perf_counter() - t:.2f} s")
    state = tmp / "state"
    t = time.perf_counter()
    ol, cr = OrderLayer.from_state_dir(state), CommandRules(state, live=True)
    ExemptionLayer.from_state_dir(state)
    print(f"worker: reads the snapshots at start: {time.perf_counter() - t:.2f} s "
          f"({len(ol.store.orders):,} orders, {cr.metrics()['rules']:,.0f} commands)")
    applies, reloads, swaps = [], [], []
    for k in range(5):
        store.append([set_entry("order", f"new{k}.example.org", f"N{k}", "", 0.0, "bench")])
        t0 = time.perf_counter()
        fol.sync()
        t1 = time.perf_counter()
        ol.prepare()  # as a worker does, outside its lock
        t2 = time.perf_counter()
        assert ol.reload()  # under the lock: the swap
        t3 = time.perf_counter()
        applies.append(t1 - t0)
        reloads.append(t2 - t1)
        swaps.append(t3 - t2)
    print(f"a new version with {orders:,} orders and {commands:,} commands in force: follower fold + snapshot "
          f"{statistics.median(applies) * 1000:.0f} ms (max {max(applies) * 1000:.0f}), a worker reads it beside the "
          f"rules in force in {statistics.median(reloads) * 1000:.0f} ms (max {max(reloads) * 1000:.0f}) and swaps it in "
          f"under its lock in {statistics.median(swaps) * 1e6:.0f} µs (max {max(swaps) * 1e6:.0f}): what the inline queue waits")
    # End to end: the follower's own thread (its 0.1 s SQLite poll), a worker process reloading
    # every 0.25 s as the daemon's do; from the commit of `block add` to the worker holding it.

    fol.start()
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()

    def worker() -> None:
        layer = OrderLayer.from_state_dir(state)
        while True:
            layer.prepare()
            if layer.reload():
                child.send((layer.store.version, time.time()))
            if child.poll(0.25):
                return

    wp = ctx.Process(target=worker)
    wp.start()
    e2e = []
    for k in range(a_trials):
        time.sleep(rng.uniform(0.3, 0.8))
        v = store.append([set_entry("order", f"e2e{k}.example.org", f"E{k}", "", 0.0, "bench")])
        t0 = time.time()
        while True:
            got, at = parent.recv()
            if got >= v:
                e2e.append(at - t0)
                break
    parent.send("stop")
    wp.join(10)
    fol.stop()
    print(f"a new version applied by a worker, end to end ({a_trials} orders, {orders:,} orders and {commands:,} commands "
          f"in force): p50 {pct(e2e, 50) * 1000:.0f} ms, p99 {pct(e2e, 99) * 1000:.0f} ms, max {max(e2e) * 1000:.0f} ms "
          f"(bar <= 1000 ms)")
    store.close()

    # Verdicts with those rules in force (B) against empty overlays (A): each side in a process of
    # its own (no cache or heap shared), started alternately A B A B …, the same stream each time;
    # CPU time, so a neighbour taking the core counts against neither.

    gcfg = GenConfig(filings=100_000, bad_rows=0, hosted_v4="10.0.0.0/8", ip_share=0.15, range_share=0.3)
    write_csv(str(tmp / "records.csv"), gcfg)
    write_inventory(str(tmp / "inventory.csv"), gcfg)
    (tmp / "empty").mkdir()
    ctx = multiprocessing.get_context("spawn")
    times: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    for _ in range(rounds):
        for side in ("A", "B"):
            q = ctx.Queue()
            p = ctx.Process(target=_verdict_child, args=(str(tmp), side, verdicts, q))
            p.start()
            times[side].append(q.get(timeout=900))
            p.join(60)
    for k, label, n in ((0, "mixed traffic", verdicts), (1, "every observation new", min(verdicts, 200_000))):
        a = [t[k] for t in times["A"]]
        b = [t[k] for t in times["B"]]
        ra, rb = n / statistics.median(a), n / statistics.median(b)
        pairs = [x / y - 1 for x, y in zip(a, b, strict=True)]
        print(f"verdicts ({label}, {n:,} per run, {rounds} runs a side, alternated, each in its own process, CPU time): "
              f"empty overlays {ra:,.0f}/s, {orders:,} orders + {commands:,} commands in force {rb:,.0f}/s: "
              f"{100 * (rb - ra) / ra:+.1f}% (bar: within 5%), median of the pairs {100 * statistics.median(pairs):+.1f}%; "
              f"pair by pair {', '.join(f'{100 * x:+.1f}%' for x in pairs)}")
    print(f"load average: {os.getloadavg()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    lp = sub.add_parser("latency")
    lp.add_argument("--orders", type=int, default=50)
    sp = sub.add_parser("scale")
    sp.add_argument("--orders", type=int, default=50_000)
    sp.add_argument("--commands", type=int, default=50_000)
    sp.add_argument("--verdicts", type=int, default=1_000_000)
    sp.add_argument("--rounds", type=int, default=3, help="A/B rounds, alternated")
    sp.add_argument("--hit-share", type=float, default=0.0, help="share of the address orders placed where the traffic "
                    "goes (10.0.0.0/16; the rest in 172.16.0.0/16): flows under an order cost the overlays' walk")
    a = ap.parse_args()
    if a.what == "latency":
        latency(a.orders)
    else:
        scale(a.orders, a.commands, a.verdicts, rounds=a.rounds, hit_share=a.hit_share)


def _verdict_child(tmp: str, side: str, verdicts: int, q: Any) -> None:
    """One side of the verdict A/B: the records, the inventory, the overlays (B: the snapshots of
    the store above; A: none), a fixed stream; the CPU time of the mixed and the all-new run."""
    from beiand.isms.store import CommandRules
    from beiand.model import Kind, Observation, Transport
    from beiand.policy import Policy, PolicyConfig
    from beiand.policy.inventory import load_inventory
    from beiand.policy.overlays import Decider, ExemptionLayer, OrderLayer
    from beiand.records import build_index, load_file
    from beiand.records.generate import OUR_PROVIDER

    d = Path(tmp)
    result = load_file(str(d / "records.csv"))
    index = build_index(result)
    inventory = load_inventory(str(d / "inventory.csv"))
    rng = random.Random(7)
    names = [n for fl in rng.sample(result.filings, 20_000) for n in fl.domains]
    servers = [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(5000)]

    def observation(i: int) -> Observation:
        r = rng.random()
        name = rng.choice(names) if r < 0.5 else (f"a{i % 97}." + rng.choice(names) if r < 0.7 else
                                                   f"unfiled{i}.example-miss.com" if r < 0.95 else "")
        return Observation(1_800_000_000.0, "192.0.2.9", 50000, rng.choice(servers), 443, Transport.TCP, Kind.TLS_SNI, name, name)

    population = [observation(i) for i in range(100_000)]
    weights = [1.0 / (k + 1) ** 0.8 for k in range(len(population))]
    traffic = rng.choices(population, weights, k=verdicts)
    distinct = [observation(i + 10**6) for i in range(min(verdicts, 200_000))]
    state = d / ("state" if side == "B" else "empty")
    layers = [OrderLayer.from_state_dir(state), ExemptionLayer.from_state_dir(state), CommandRules(state, live=True)]
    gc.freeze()  # as a worker does once loaded
    out = []
    for obs in (traffic, distinct):
        inventory._cache.clear()
        decide = Decider(Policy(index, inventory, PolicyConfig(provider=OUR_PROVIDER)), layers).decide
        t = time.process_time()
        for o in obs:
            decide(o)
        out.append(time.process_time() - t)
    q.put(tuple(out))


if __name__ == "__main__":
    main()
