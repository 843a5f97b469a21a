"""Sponsor cases bars (issue 31): the periodic pass over 10,000 open cases; the verdict path with
the case overlay in place (A/B).

    python bench/bench_cases.py [--cases 10000] [--filings 200000] [--verdicts 600000] [--rounds 3]

1. The verdict path: ``Decider.decide`` over the same mixed traffic (bench_records' mix: filed
   names, deep subdomains, unfiled names, ip-only; 10% not hosted) with the daemon's overlays
   before issue 31 (orders, exemptions: A), with the case overlay empty (B0: every daemon now) and
   with ``--cases`` cases escalated, their names among the traffic's unfiled ones (B). Rounds
   alternate A, B0, B; the median of each is printed with B0's and B's difference to A (bar: <= 2%
   for opening cases, which happens in the supervisor, off the verdict path: B0).
2. The keeper's pass (``CaseKeeper.step``) on a SQLite decision store holding ``--cases`` open and
   notified cases: cold (the first fold of every row), steady (nothing new), with 2,000 findings of
   open cases (evidence rows written), and with every case past its deadline (that many escalations
   written in one pass). Bar: a pass <= 1 s.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from beiand.model import Kind, Observation, Transport
from beiand.policy import Policy, PolicyConfig
from beiand.policy.cases import CaseSnapshot, event
from beiand.policy.inventory import load_inventory
from beiand.policy.orders import ExemptionStore, OrderStore
from beiand.policy.overlays import CaseLayer, Decider, ExemptionLayer, OrderLayer
from beiand.records import build_index, load_file
from beiand.records.generate import OUR_PROVIDER, GenConfig, write_csv, write_inventory
from beiand.runtime.casekeeper import CaseKeeper
from beiand.runtime.decisions import open_decisions
from beiand.runtime.settings import CasesSection, Config, DaemonSection

DAY = 86400.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--filings", type=int, default=200_000)
    ap.add_argument("--verdicts", type=int, default=600_000)
    ap.add_argument("--population", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="beiand-bench-cases-"))
    gen = GenConfig(filings=a.filings, bad_rows=0, hosted_v4="10.0.0.0/8", ip_share=0.15, range_share=0.3)
    write_csv(str(tmp / "records.csv"), gen)
    write_inventory(str(tmp / "inventory.csv"), gen)
    result = load_file(str(tmp / "records.csv"))
    index = build_index(result)
    inventory = load_inventory(tmp / "inventory.csv")
    gc.freeze()
    print(f"load avg {os.getloadavg()[0]:.2f} before; {index.stats().filings} filings, {len(inventory.prefixes)} hosted prefixes")
    rng = random.Random(31)
    names = [d for f in rng.sample(result.filings, min(50_000, len(result.filings))) for d in f.domains]
    servers = [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(5_000)]

    def observation(i: int) -> Observation:
        r = rng.random()
        if r < 0.4:
            name = rng.choice(names)
        elif r < 0.7:
            name = ".".join(f"l{rng.randrange(100)}" for _ in range(rng.randrange(1, 5))) + "." + rng.choice(names)
        elif r < 0.95:
            name = f"unfiled{i}.example-miss.com"
        else:
            name = ""
        server = rng.choice(servers) if rng.random() < 0.9 else "192.0.2.1"
        return Observation(0.0, "192.0.2.9", 50000, server, 443, Transport.TCP, Kind.TLS_SNI, name, name)

    population = [observation(i) for i in range(a.population)]
    weights = [1.0 / (k + 1) ** 0.8 for k in range(len(population))]
    traffic = rng.choices(population, weights, k=a.verdicts)
    policy = Policy(index, inventory, PolicyConfig(provider=OUR_PROVIDER))

    # The escalated cases: unfiled names of the traffic drawn at random, each on its server's account.
    unfiled = [o for o in population if o.name.startswith("unfiled") and inventory.lookup(o.server_ip) is not None]
    snap = CaseSnapshot(None)
    for o in rng.sample(unfiled, min(a.cases, len(unfiled))):  # sites of every popularity, not only the busiest
        account = policy.decide(o).account
        snap.escalated[f"{account}|unfiled|{o.name}"] = (account, (o.name,))
    print(f"verdict path: {len(traffic):,} observations, {len(snap.escalated):,} cases escalated in B")

    def decider(kind: str) -> Decider:
        layers = [OrderLayer(OrderStore(None, load=False)), ExemptionLayer(ExemptionStore(None, load=False))]
        if kind == "B0":
            layers.append(CaseLayer(CaseSnapshot(None)))
        elif kind == "B":
            layers.append(CaseLayer(snap))
        return Decider(Policy(index, inventory, PolicyConfig(provider=OUR_PROVIDER)), layers)  # type: ignore[arg-type]

    def run(kind: str) -> float:
        d = decider(kind)
        inventory._cache.clear()
        decide = d.decide
        t = time.perf_counter()
        for o in traffic:
            decide(o)
        return len(traffic) / (time.perf_counter() - t)

    run("A")  # warm-up
    rates: dict[str, list[float]] = {"A": [], "B0": [], "B": []}
    for _ in range(a.rounds):
        for k in ("A", "B0", "B"):
            rates[k].append(run(k))
    med = {k: statistics.median(v) for k, v in rates.items()}
    for k, label in (("A", "orders + exemptions (before issue 31)"), ("B0", "+ the case overlay, no case escalated"),
                     ("B", f"+ {len(snap.escalated):,} cases escalated")):
        diff = "" if k == "A" else f" ({(med[k] - med['A']) / med['A'] * 100:+.1f}% vs A)"
        print(f"verdicts {k:2} {label}: {med[k]:,.0f}/s median of {a.rounds} [{', '.join(f'{r:,.0f}' for r in rates[k])}]{diff}")
    print("bar: B0 (opening cases: off the verdict path) within 2% of A")

    # -- the keeper's pass --------------------------------------------------------------------
    state = tmp / "state"
    cfg = Config(daemon=DaemonSection(gateway="bench", state_dir=state), cases=CasesSection(evidence_interval=60.0))
    now = time.time()
    store = open_decisions(cfg)
    rows = []
    keys = []
    for i in range(a.cases):
        key = f"cust-{i % 500}|unfiled|case{i}.example-miss.com"
        keys.append(key)
        rows.append(event(key, "open", "bench", "", now - 3600, names=[f"case{i}.example-miss.com"], servers=[rng.choice(servers)],
                          first_seen=now - 3600, last_seen=now - 60, hits=5))
        rows.append(event(key, "notify", "bench", "", now - 3000, deadline=now + 10 * DAY))
    t = time.perf_counter()
    for k in range(0, len(rows), 5000):
        store.append(rows[k:k + 5000])
    print(f"keeper: {a.cases:,} open cases written ({len(rows):,} rows) in {time.perf_counter() - t:.1f} s")
    store.close()
    clock = [now]
    k = CaseKeeper(cfg, lambda: open_decisions(cfg), lambda: policy, clock=lambda: clock[0])

    def step(label: str) -> None:
        r = k.step()
        print(f"keeper pass, {label}: {r.seconds * 1000:.0f} ms (opened {r.opened}, evidence {r.evidence}, resolved {r.resolved}, "
              f"escalated {r.escalated}) (bar <= 1000 ms)")

    step("cold (folds every row)")
    step("steady, nothing new")
    clock[0] += 120
    k.observe([(f"case{i}.example-miss.com", "10.1.1.1", 443, f"cust-{i % 500}", "unfiled", "tls-sni", "flag", clock[0] - 5,
                clock[0], 3) for i in range(0, min(a.cases, 2000))])
    step("2,000 findings of open cases (evidence rows)")
    clock[0] += 11 * DAY
    step(f"every case past its deadline ({a.cases:,} escalations written)")
    step("steady after, every case escalated")
    k.stop()
    print(f"load avg {os.getloadavg()[0]:.2f} after", file=sys.stderr)


if __name__ == "__main__":
    main()
