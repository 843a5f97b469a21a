"""Records bars (issue 2): load 1,000,000 filings from CSV; verdicts per second on one core.

    python bench/bench_records.py [--filings N] [--verdicts N]

Prints the load time, peak RSS (this process and the parse workers), and the verdict rate of
the whole ``Observation → Decision`` step for a mix of hits, misses and deep subdomains, with
the decision cache cold (every observation new) and warm (real traffic repeats names).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import sys
import tempfile
import time

from _rss import PeakSampler

import beiand.policy.verdict as verdict_module
from beiand import extensions
from beiand.model import Kind, Observation, Transport
from beiand.policy import Policy, PolicyConfig
from beiand.policy.inventory import load_inventory
from beiand.records import build_index, load_file
from beiand.records.generate import OUR_PROVIDER, GenConfig, write_csv, write_inventory


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filings", type=int, default=1_000_000)
    ap.add_argument("--verdicts", type=int, default=1_000_000)
    ap.add_argument("--population", type=int, default=100_000, help="distinct (name, server) pairs in the traffic")
    ap.add_argument("--servers", type=int, default=5_000, help="distinct hosted server addresses in the traffic")
    ap.add_argument("--file", help="reuse an existing export instead of generating one")
    ap.add_argument("--range-share", type=float, default=0.3,
                    help="share of IP cells written as ranges or CIDR prefixes (interval index; default 0.3)")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="beiand-bench-")
    cfg = GenConfig(filings=a.filings, bad_rows=a.filings // 10000, hosted_v4="10.0.0.0/8", ip_share=0.15, range_share=a.range_share)
    path = a.file or os.path.join(tmp, "records.csv")
    if not a.file:
        t = time.perf_counter()
        write_csv(path, cfg)
        print(f"generated {a.filings} filings ({os.path.getsize(path) / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    inv_path = os.path.join(tmp, "inventory.csv")
    write_inventory(inv_path, cfg)

    with PeakSampler() as sampler:
        t0 = time.perf_counter()
        result = load_file(path)
        t1 = time.perf_counter()
        index = build_index(result)
        t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    st = index.stats()
    print(f"load: {st.filings} filings, {st.domains} domains, {st.ips} IPs, {st.ip_ranges} IP ranges/prefixes, "
          f"{len(result.errors)} rejected rows")
    print(f"load: parse {t1 - t0:.2f} s + index {t2 - t1:.2f} s = {t2 - t0:.2f} s (bar <= 20 s)")
    print(f"load: peak RSS {rss:.0f} MiB, parse worker {rss_child:.0f} MiB; both together at most "
          f"{sampler.peak_kib / 1024:.0f} MiB (bar <= 1536 MiB)")

    inventory = load_inventory(inv_path)
    # As in the daemon's workers: the loaded index is millions of long-lived objects the cyclic
    # GC must not walk again and again while verdicts allocate (runtime.worker.worker_main).
    gc.freeze()
    rng = random.Random(7)
    names = [d for f in rng.sample(result.filings, min(50_000, len(result.filings))) for d in f.domains]

    # The hosted servers in use: a gateway sees thousands of server addresses, not millions.
    servers = [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(a.servers)]

    def observation(i: int) -> Observation:
        r = rng.random()
        if r < 0.4:
            name = rng.choice(names)  # hit
        elif r < 0.7:  # deep subdomain of a filed name
            name = ".".join(f"l{rng.randrange(100)}" for _ in range(rng.randrange(1, 5))) + "." + rng.choice(names)
        elif r < 0.95:
            name = f"unfiled{i}.example-miss.com"  # miss
        else:
            name = ""  # ip-only
        server = rng.choice(servers) if rng.random() < 0.9 else "192.0.2.1"  # 10%: not hosted
        return Observation(0.0, "192.0.2.9", 50000, server, 443, Transport.TCP, Kind.TLS_SNI, name, name)

    # Traffic repeats services: draw a.verdicts observations from a population of distinct
    # (name, server) pairs with a heavy-tailed popularity, as a gateway sees them.
    population = [observation(i) for i in range(a.population)]
    weights = [1.0 / (k + 1) ** 0.8 for k in range(len(population))]
    traffic = rng.choices(population, weights, k=a.verdicts)
    distinct = [observation(i + a.population) for i in range(min(a.verdicts, 300_000))]

    def run(obs: list[Observation]) -> float:
        policy = Policy(index, inventory, PolicyConfig(provider=OUR_PROVIDER))
        inventory._cache.clear()
        decide = policy.decide
        t = time.perf_counter()
        for o in obs:
            decide(o)
        return time.perf_counter() - t

    run(traffic)  # warm-up: touch memory once
    mixed = run(traffic)
    worst = run(distinct)
    print(f"verdicts (mixed traffic: {len(traffic):,} observations of {a.population:,} distinct services, a new "
          f"policy whose cache starts empty): {len(traffic) / mixed:,.0f}/s ({mixed / len(traffic) * 1e9:.0f} ns each) "
          "(bar, issue 33: >= 2,000,000/s)")
    pairs = len({(o.server_ip, o.name) for o in distinct})
    print(f"verdicts (every observation new: {len(distinct):,} observations, {pairs:,} distinct (server, name), no cache help): "
          f"{len(distinct) / worst:,.0f}/s ({worst / len(distinct) * 1e9:.0f} ns each) (bar, issue 33: >= 500,000/s)")
    load = os.getloadavg()
    print(f"one core; {'compiled' if extensions.is_compiled(verdict_module) else 'pure Python'} policy; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs (figures taken on a busy machine are low)")


if __name__ == "__main__":
    main()
