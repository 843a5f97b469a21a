"""ISMS bars (issue 20).

    python bench/bench_isms.py [--rules 50000] [--packets 200000] [--records 1000000] [--keep DIR]

1. A 50,000-rule filter command through idc_command's path (AES-CBC + ZIP + MD5 envelope, XSD
   validation, apply, save) and compiled by a worker (CommandRules.reload): bar <= 5 s.
2. Verdicts (policy + enforcer) and replay (decoder + policy + enforcer over a generated capture)
   with and without those rules loaded: bar within 10%.
3. DT 8 and DT 9 over one day of 1,000,000 access-log records: bar <= 60 s.
"""

from __future__ import annotations

import argparse
import logging
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from beiand.accesslog import AccessLog, LogConfig  # noqa: E402
from beiand.capture.pcap import read_capture  # noqa: E402
from beiand.enforce import Enforcer, EnforceSettings  # noqa: E402
from beiand.isms.reports import Reporter, Spool  # noqa: E402
from beiand.isms.service import CommandService  # noqa: E402
from beiand.isms.store import CommandRules, CommandStore  # noqa: E402
from beiand.isms.wire.envelope import Keys  # noqa: E402
from beiand.isms.wire.model import parse_time  # noqa: E402
from beiand.isms.wire.profile import Profile  # noqa: E402
from beiand.model import AccessRecord, Kind, Observation, Transport  # noqa: E402
from beiand.net.decoder import Decoder, DecoderConfig  # noqa: E402
from beiand.policy import Decider, Policy, PolicyConfig  # noqa: E402
from beiand.policy.inventory import load_inventory  # noqa: E402
from beiand.records import build_index, load_files  # noqa: E402
from beiand.records.generate import OUR_PROVIDER  # noqa: E402
from beiand.runtime.pipeline import Pipeline  # noqa: E402
from tests import isms_double as dbl  # noqa: E402


def bar(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=50_000)
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--keep", help="directory to reuse (capture, access log)")
    a = ap.parse_args()
    d = Path(a.keep or tempfile.mkdtemp(prefix="beiand-isms-bench-"))
    d.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="beiand-isms-state-"))

    # 1. apply a 50,000-rule command
    rules = [(1, f"blocked{i}.example-{i % 97}.cn", "") for i in range(a.rules)]
    xml = dbl.command_xml(1, 2, rules).encode()
    smms = dbl.Smms("")
    params = {k: str(v) for k, v in smms.params(xml, 2, enc=1, alg=1, comp=1).items()}
    store = CommandStore(state)
    svc = CommandService(dbl.IDC_ID, Keys(dbl.USER_KEY, dbl.ENC_KEY, dbl.IV, dbl.AUTH_KEY), Profile(), store)
    t0 = time.perf_counter()
    ans = svc.handle(params)
    t1 = time.perf_counter()
    cr = CommandRules(state)
    t2 = time.perf_counter()
    assert ans.code == 0 and cr.matcher.count == 1, ans
    print(f"apply: {a.rules:,}-rule command ({len(xml) / 1e6:.1f} MB XML): endpoint path {t1 - t0:.2f} s "
          f"+ worker compile {t2 - t1:.2f} s = {t2 - t0:.2f} s (bar <= 5 s) {bar(t2 - t0 <= 5)}")

    # 2. verdicts and replay, with and without the rules
    pcap = d / "mix.pcap"
    if not pcap.exists():
        subprocess.run([sys.executable, str(HERE / "gen_capture.py"), str(pcap), "--packets", str(a.packets)], check=True,
                       stdout=subprocess.DEVNULL)
    index = build_index(load_files([str(Path(str(pcap) + ".records.csv"))]))
    inventory = load_inventory(Path(str(pcap) + ".inventory.csv"))
    frames = list(read_capture(pcap))
    names = [n.strip() for n in Path(str(pcap) + ".names").read_text().split() if n.strip()]
    rng = random.Random(3)
    obs = [Observation(0.0, "192.0.2.9", 50000 + i % 1000, f"198.51.100.{rng.randrange(1, 250)}", 443, Transport.TCP,
                       Kind.TLS_SNI, n, n) for i, n in enumerate(rng.choices(names or ["x.example"], k=300_000))]

    def verdicts(with_rules: bool) -> float:
        policy = Policy(index, inventory, PolicyConfig(provider=OUR_PROVIDER))
        enf = Enforcer(EnforceSettings(), None, None)
        decide = Decider(policy, [CommandRules(state)] if with_rules else []).decide  # the overlay decides, the enforcer acts
        t = time.perf_counter()
        for o in obs:
            enf(o, decide(o))
        return len(obs) / (time.perf_counter() - t)

    def replay(with_rules: bool) -> float:
        policy = Policy(index, inventory, PolicyConfig(provider=OUR_PROVIDER))
        enf = Enforcer(EnforceSettings(), None, None)
        pipe = Pipeline(Decoder(DecoderConfig()), Decider(policy, [CommandRules(state)] if with_rules else []), [], actor=enf)
        t = time.perf_counter()
        pipe.run(frames)
        return len(frames) / (time.perf_counter() - t)

    logging.getLogger("beiand.enforce.actor").setLevel(logging.CRITICAL)  # the breaker's complaints: not the figure
    for what, fn in (("verdicts (policy + enforcer)", verdicts), ("replay (decode + policy + enforcer)", replay)):
        base = loaded = 0.0
        for _ in range(9):  # interleaved, best of nine: the other load on the machine moves both alike
            base = max(base, fn(False))
            loaded = max(loaded, fn(True))
        drop = 1 - loaded / base
        print(f"{what}: {base:,.0f}/s without, {loaded:,.0f}/s with {a.rules:,} rules: {drop:+.1%} slower "
              f"(bar within 10%) {bar(drop <= 0.10)}")

    # 3. DT 8 and DT 9 over one day of access-log records
    logdir = d / "log"
    day0 = int(parse_time("2026-11-29 00:00:00") * 1000)
    if not logdir.exists():
        t = time.perf_counter()
        verdicts_ = ["filed"] * 7 + ["unfiled", "mismatch", "inactive"]
        with AccessLog(LogConfig(logdir, commit_records=65536)) as log:
            for i in range(a.records):
                v = verdicts_[i % 10]
                log.append(AccessRecord(day0 + i * 86_400_000 // a.records, "acct", f"192.0.2.{i % 250}", 40000 + i % 20000,
                                        f"198.51.100.{i % 200}", 443 if i % 3 else 80, "tcp", "tls-sni" if i % 3 else "http-host",
                                        f"s{i % 20000}.site{i % 3000}.example.cn", v, "block" if v == "unfiled" else "log",
                                        "", "gw"))
        print(f"(wrote {a.records:,} access-log records in {time.perf_counter() - t:.1f} s)", file=sys.stderr)
    spool = Spool(d / "spool", dbl.IDC_ID, Keys(dbl.USER_KEY, dbl.ENC_KEY, dbl.IV, dbl.AUTH_KEY), Profile())
    rep = Reporter(spool, logdir, "H1")
    t = time.perf_counter()
    f9, f8 = rep.resources(day0, day0 + 86_400_000)
    took = time.perf_counter() - t
    print(f"reports over {a.records:,} records (one day, open partition): DT 9 ({len(f9)} files) and DT 8 ({len(f8)} files) "
          f"in {took:.1f} s (bar <= 60 s) {bar(took <= 60)}")

if __name__ == "__main__":
    main()
