"""One CU for the licence (issue 30): the two bars of ``beiand isms serve``.

    python bench/bench_isms_cu.py latency [--commands 20]
        The integration test's fleet (tests/integration/test_isms_serve.CuFleet): three ``beiand
        run`` in ``enforce``, each in its namespace, following one PostgreSQL; the CU (``beiand
        isms serve``) and the SMMS double beside it. For each of N filter commands (a domain rule
        for a filed name): every gateway is sent a QUIC Initial for that name every 5 ms; SMMS
        calls ``idc_command``; the figure is the time from the call returning to the capture time
        of the first flow recorded as blocked under that command, on the last of the three
        gateways (blocked on all three). Prints p50/p99/max over the commands, and when each ack
        reached SMMS. Bar: p99 <= 2 s.

    python bench/bench_isms_cu.py reports [--per-day 10000000] [--dir /var/tmp/cubench] [--reuse]
        A day of records across three gateways in a ClickHouse table made by the project's own
        DDL (generated inside ClickHouse as bench/bench_clickhouse_fleet.py does: 1M names on
        100k servers, Zipf-like), then the CU's DT 8 + DT 9 (and DT 2) for that day: the
        summaries' GROUP BY in ClickHouse, the rows, the XSD check, packing, encrypting and
        writing the files. Prints the time of each part and of the whole, rows and files, peak RSS,
        the load. Bar: <= 60 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


from bench_decisions import first_blocks, lo_socket, pct


def latency(n: int) -> None:
    from beiand.lab.traffic import quic_initial_datagrams
    from tests import isms_double as dbl
    from tests.integration.test_isms_serve import SERVER, CuFleet, wait_for

    wd = Path(tempfile.mkdtemp(prefix="beiand-bench-cu-"))
    f = CuFleet(wd)
    try:
        f.start_cu()
        for d in f.daemons:
            d.start()
        wait_for(lambda: len([g for g in (f.cu_status() or {}).get("gateways", []) if g["up"]]) == 3, "three gateways", 60)

        socks = [lo_socket(d.ns) for d in f.daemons]
        figures: list[float] = []
        ack_lat: list[float] = []
        port = [1024]  # every flow a new one: a flow already named is not judged again
        for i in range(n):
            cid = 5000 + i
            name = f"site{20 + i}.example.cn"
            sent: list[float] = []

            def command(cid: int = cid, name: str = name, sent: list[float] = sent) -> bool:
                code, msg = f.send(dbl.command_xml(cid, 2, [(1, name, "")]))
                sent.append(time.time())
                if code:
                    print(f"command {cid}: idc_command answered {code}: {msg}")
                return code == 0

            lat = first_blocks(f.daemons, socks, SERVER["H1"], quic_initial_datagrams(name)[0], f"isms:{cid}", port, command)
            returned = sent[0]
            wait_for(lambda cid=cid: f.acks_of(cid), f"the ack of {cid}", 30)
            acked = time.time()
            figures.append(max(lat))
            ack_lat.append(acked - returned)
            print(f"command {i + 1:3d}: " + "  ".join(f"gw{k} {x * 1000:6.0f} ms" for k, x in enumerate(lat))
                  + f"   ack seen after <= {(acked - returned) * 1000:.0f} ms", flush=True)
        print(f"filter command to blocked on all three gateways: {n} commands, from idc_command returning to the first "
              f"blocked flow on the last gateway: p50 {pct(figures, 50) * 1000:.0f} ms, p99 {pct(figures, 99) * 1000:.0f} ms, "
              f"max {max(figures) * 1000:.0f} ms (bar: p99 <= 2000 ms); flows every 5 ms per gateway")
        print(f"ack (resultCode 0, applied on 3 of 3) at SMMS: p50 {pct(ack_lat, 50) * 1000:.0f} ms, "
              f"max {max(ack_lat) * 1000:.0f} ms (polled every 100 ms)")
        print(f"load average: {os.getloadavg()}")
    finally:
        f.close()
        shutil.rmtree(wd, ignore_errors=True)


def reports(per_day: int, dirpath: Path, reuse: bool, runs: int) -> None:
    import bench_clickhouse_fleet as chb

    from beiand.accesslog.reader import DAY_MS
    from beiand.isms.wire.codes import DataType
    from beiand.isms.wire.fields import REPORTED_VERDICTS
    from beiand.model import PrefixState
    from beiand.policy.inventory import HostedPrefix, Inventory
    from beiand.runtime.settings import load_config
    from beiand.sinks.clickhouse import ddl, parse_version
    from tests import isms_double as dbl

    srv = chb.Server(dirpath / "clickhouse", 18923)
    srv.start()
    try:
        if not reuse:
            version = parse_version(srv.query("SELECT version()"))
            srv.query(f"DROP TABLE IF EXISTS {chb.DB}.{chb.TABLE}")
            for stmt in ddl(chb.DB, chb.TABLE, version, retention_days=184):
                srv.query(stmt)
            t0 = time.perf_counter()
            for g in (1, 2, 3):
                srv.query(chb.synthetic_sql(0, g, per_day // 3))
            print(f"loaded {per_day:,} records of one day over 3 gateways in {time.perf_counter() - t0:.0f} s", flush=True)
        rows = int(srv.query(f"SELECT count() FROM {chb.DB}.{chb.TABLE}").strip())
        print(f"table {chb.DB}.{chb.TABLE}: {rows:,} rows; load {chb.load()}", flush=True)
        wd = Path(tempfile.mkdtemp(prefix="beiand-bench-cu-reports-"))
        sec = dbl.write_secrets(wd / "secrets")
        cfgp = wd / "beiand.toml"
        cfgp.write_text(f"""
[daemon]
state_dir = "{wd / 'state'}"
[accesslog]
directory = "{wd / 'log'}"
[accesslog.clickhouse]
url = "http://127.0.0.1:{srv.http}"
[isms]
enabled = true
idc_id = "{dbl.IDC_ID}"
secrets_dir = "{sec}"
ack_url = "http://127.0.0.1:9/none"
""", encoding="utf-8")
        cfg = load_config(str(cfgp))
        from prometheus_client import CollectorRegistry

        from beiand.policy import Policy
        from beiand.policy.verdict import PolicyConfig
        from beiand.records.index import RecordIndex
        from beiand.runtime.ismscu import CuRuntime
        from beiand.runtime.wiring import State

        # the licence's inventory: 203.0.0.0/16 .. 203.1.0.0/16 (the generated servers), one house per /17
        inv = Inventory([HostedPrefix(f"203.{a}.{b}.0/17", f"cust-{a}-{b}", "", PrefixState.ACTIVE, None, "", f"H{a}{b // 128}")
                         for a in range(2) for b in (0, 128)])
        index = RecordIndex([])
        state = State(cfg, index, inv, Policy(index, inv, PolicyConfig()), time.time())
        cu = CuRuntime(state, CollectorRegistry())
        since, until = chb.DAY0, chb.DAY0 + DAY_MS
        for run in range(runs):
            shutil.rmtree(cu.spool.directory, ignore_errors=True)
            cu.spool.directory.mkdir(parents=True)
            src = cu.reporter.source()
            t0 = time.perf_counter()
            f9, f8 = cu.reporter.resources(since, until)  # what the CU's report timer runs
            total = time.perf_counter() - t0
            # the parts, again, one at a time
            t0 = time.perf_counter()
            summary = src.summaries(since, until, REPORTED_VERDICTS)
            t1 = time.perf_counter()
            act = src.activity(since, until)
            t2 = time.perf_counter()
            n8 = len(act.ips) + len(act.names)
            del act
            print(f"run {run + 1}: DT 8 + DT 9 for {rows:,} records (one day, 3 gateways) from ClickHouse: {total:.1f} s "
                  f"(bar: <= 60 s); of which ClickHouse and parsing: DT 9's summaries {t1 - t0:.1f} s ({len(summary):,}), "
                  f"DT 8's aggregates {t2 - t1:.1f} s ({n8:,} rows); files: DT 9 {len(f9)}, DT 8 {len(f8)}; spool "
                  f"{sum(p.stat().st_size for p in cu.spool.directory.rglob('*.xml')) / 2**20:.0f} MiB; "
                  f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; load {chb.load()}",
                  flush=True)
            del summary
        print(f"files by data type: {dict(sorted((int(k), v) for k, v in cu.spool.written.items()))} "
              f"({DataType.ACTIVE_RESOURCES.name} = 8, {DataType.ILLEGAL_WEB.name} = 9)")
        if cu.store.decisions is not None:
            cu.store.decisions.close()
        shutil.rmtree(wd, ignore_errors=True)
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    lp = sub.add_parser("latency")
    lp.add_argument("--commands", type=int, default=20)
    rp = sub.add_parser("reports")
    rp.add_argument("--per-day", type=int, default=10_000_000)
    rp.add_argument("--dir", type=Path, default=Path("/var/tmp/cubench"))
    rp.add_argument("--reuse", action="store_true", help="the table of an earlier run (--dir): only the reports")
    rp.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if a.what == "latency":
        latency(a.commands)
    else:
        reports(a.per_day, a.dir, a.reuse, a.runs)


if __name__ == "__main__":
    main()
