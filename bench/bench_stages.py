"""Where a worker's time goes, per stage, with and without the compiled hot path (issue 21).

    python bench/bench_stages.py [CAPTURE.pcap] [--rounds N] [--packets N] [--no-connections]

CAPTURE is a ``bench/gen_capture.py`` capture (its ``.records.csv`` and ``.inventory.csv`` beside it);
without one, one of ``--packets`` packets (default 1,000,000) is made in a temporary directory.
Both implementations run in this one process, alternating round by round (the machine is shared:
alternation spreads its noise over both): ``compiled`` is the modules as imported (the Cython
extensions when built), ``pure`` their ``.py`` twins (``beiand.extensions.pure_twins``).

Stages, each timed alone over the whole capture (the input of each made once, outside the timing):
  read     pcap records → frames, with the user-space prefilter replay uses (capture/pcap.py)
  decode   frames → observations (net/decoder.py with the TLS/HTTP/DNS/QUIC parsers), with connection
           records on as replay and the daemon have them (issue 33: their cost is measured here);
           ``--no-connections``: off
  decide   observations → decisions (policy/verdict.py, records/index.py), decision cache as in a replay
  encode   decisions → access-log lines (accesslog/format.py)
Prints per stage the best and worst seconds, the packets/s of the best, and the speed-up.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from beiand import extensions
from beiand.model import Kind


def stages(mods: dict[str, ModuleType], pcap: Path, conns: bool = True) -> dict[str, Any]:
    """Build the stage functions of one implementation; each returns its output for the next."""
    pcapmod = mods["beiand.capture.pcap"]
    dec = mods["beiand.net.decoder"]
    verdict = mods["beiand.policy.verdict"]
    index_mod = mods["beiand.records.index"]
    fmt = mods["beiand.accesslog.format"]
    from beiand.policy.inventory import load_inventory
    from beiand.records.importer import load_file

    records = load_file(str(pcap) + ".records.csv")
    index = index_mod.build_index(records)
    inventory = load_inventory(Path(str(pcap) + ".inventory.csv"))
    ports = dec.DecoderConfig().tcp_ports

    def read(_: Any) -> list[tuple[float, int, bytes]]:
        with pcapmod.CaptureReader(pcap, skip_tcp_from=ports) as r:
            return list(r)

    def decode(frames: list[tuple[float, int, bytes]]) -> list[Any]:
        d = dec.Decoder(dec.DecoderConfig(conns=conns))
        feed = d.feed
        out: list[Any] = []
        for ts, lt, frame in frames:
            o = feed(ts, frame, lt)
            if o:
                out += o
        out += d.flush()
        return out

    def decide(obs: list[Any]) -> list[tuple[Any, Any]]:
        policy = verdict.Policy(index, inventory, verdict.PolicyConfig(provider="示例云计算有限公司"))
        out = []
        for o in obs:
            if o.kind is Kind.CONN:  # a connection record: not decided (runtime/pipeline.py writes it as it is)
                continue
            if o.kind is Kind.DNS_ANSWER:
                hosted = [a for a in o.answers if inventory.lookup(a) is not None]
                if not hosted:
                    continue
                o = o._replace(server_ip=hosted[0], server_port=0)
            out.append((o, policy.decide(o)))
        return out

    def encode(decided: list[tuple[Any, Any]]) -> int:
        from beiand.sinks.accesslog import to_record

        lines = fmt.encode_batch([to_record(o, d, "gw1") for o, d in decided])
        fmt.chain(b"\0" * 32, lines)
        return len(lines)

    return {"read": read, "decode": decode, "decide": decide, "encode": encode}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("capture", type=Path, nargs="?")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--no-connections", dest="conns", action="store_false", help="decode without connection records")
    a = ap.parse_args()
    if a.capture is None:
        import subprocess
        import sys
        import tempfile

        a.capture = Path(tempfile.mkdtemp(prefix="beiand-bench-")) / "mix.pcap"
        subprocess.run([sys.executable, str(Path(__file__).parent / "gen_capture.py"), str(a.capture), "--packets", str(a.packets)],
                       check=True, stdout=subprocess.DEVNULL)
    impls = extensions.implementations()
    if extensions.disabled():
        impls.pop("compiled")
    fns = {name: stages(mods, a.capture, a.conns) for name, mods in impls.items()}
    times: dict[tuple[str, str], list[float]] = {}
    packets = 0
    for _ in range(a.rounds):
        for name, st in fns.items():
            data: Any = None
            for stage in ("read", "decode", "decide", "encode"):
                gc.collect()
                t = time.perf_counter()
                data = st[stage](data)
                times.setdefault((name, stage), []).append(time.perf_counter() - t)
                if stage == "read":
                    packets = len(data)
    load = os.getloadavg()[0]
    print(f"{a.capture}: {packets:,} frames past the prefilter; connection records {'on' if a.conns else 'off'}; "
          f"{a.rounds} rounds alternating; load {load:.2f}")
    print(f"{'stage':8s} " + "  ".join(f"{n + ' s (best-worst)':>24s}" for n in fns) + "   speed-up (best)")
    total = {n: 0.0 for n in fns}
    for stage in ("read", "decode", "decide", "encode"):
        cells = []
        for n in fns:
            ts = times[(n, stage)]
            total[n] += min(ts)
            cells.append(f"{min(ts):10.3f}-{max(ts):<8.3f}     ")
        ratio = (min(times[("pure", stage)]) / min(times[("compiled", stage)])) if "compiled" in fns else 1.0
        print(f"{stage:8s} " + "  ".join(f"{c:>24s}" for c in cells) + f"   {ratio:5.2f}x")
    print(f"{'total':8s} " + "  ".join(f"{total[n]:10.3f}{'':14s}" for n in fns)
          + (f"   {total['pure'] / total['compiled']:5.2f}x" if "compiled" in fns else ""))


if __name__ == "__main__":
    main()
