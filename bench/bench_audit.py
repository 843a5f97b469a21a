"""Audit benchmarks (issue 7).

    python bench/bench_audit.py passive [--days 60] [--per-day 1000000]
    python bench/bench_audit.py active [--names 10000] [--concurrency 200]

passive: one day of PER_DAY records is written through the store and sealed (the sealed
partition carries its summary); it is copied to DAYS days, then ``beiand audit`` over the whole
window is timed (a fresh process: load records and inventory, read the summaries, findings,
report as JSON).

active: a loopback lab (authoritative DNS for NAMES names, HTTPS/HTTP servers on 50 hosted
addresses, in a separate process), then ``beiand audit --probe`` is timed with its
concurrency and peak memory.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from bench_accesslog import DAY0, make_pool  # noqa: E402

from beiand.accesslog import AccessLog, LogConfig  # noqa: E402
from beiand.accesslog.store import DAY_MS, day_of  # noqa: E402
from beiand.records.generate import OUR_PROVIDER  # noqa: E402


def passive(days: int, per_day: int) -> None:
    wd = Path(tempfile.mkdtemp(prefix="beiand-bench-audit-"))
    try:
        rng = random.Random(3)
        names = [f"www.site{i}.example.cn" for i in range(200_000)]
        clients = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(300_000)]
        pool = make_pool(per_day, DAY0 + DAY_MS * (days - 1), rng, names, clients)
        log = wd / "log"
        with AccessLog(LogConfig(log)) as al:
            for r in pool:
                al.append(r)
            al.flush()
            al.append(pool[0]._replace(ts_ms=DAY0 + days * DAY_MS))
        sealed = log / day_of(DAY0 + DAY_MS * (days - 1)) / "w0.sealed"
        for d in range(days - 1):
            dst = log / day_of(DAY0 + d * DAY_MS)
            dst.mkdir(exist_ok=True)
            shutil.copyfile(sealed, dst / "w0.sealed")
        rec = wd / "records.csv"
        with rec.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["备案号", "主办单位", "服务类型", "域名", "接入商", "状态"])
            for i in range(0, 200_000, 2):
                w.writerow([f"京ICP备{10000000 + i}号-1", f"公司{i}", "网站", names[i], OUR_PROVIDER, "正常"])
        inv = wd / "inventory.csv"
        inv.write_text("prefix,account,site,state,mode\n198.51.0.0/16,cust-1,bj,active,monitor\n")
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "beiand.cli", "audit", "--records", str(rec), "--inventory", str(inv),
                            "--provider", OUR_PROVIDER, "--log-dir", str(log), "--since", str((DAY0 - DAY_MS) // 1000),
                            "--until", str((DAY0 + days * DAY_MS + DAY_MS) // 1000), "--format", "json", "--out", str(wd / "r.json")],
                           capture_output=True, text=True)
        dt = time.perf_counter() - t0
        rep = json.loads((wd / "r.json").read_text())
        print(f"passive audit over {days} days x {per_day:,} records ({days * per_day:,}): {dt:.1f} s "
              f"(bar <= 60 s); {rep['summary']['resources']:,} services, {rep['summary']['findings']:,} findings; rc {r.returncode}")
    finally:
        shutil.rmtree(wd, ignore_errors=True)


SERVERS = """
import asyncio, ssl, sys
from pathlib import Path
from aiohttp import web
import dns.message, dns.rrset, dns.flags, dns.rdatatype, dns.rcode
from beiand.lab.labservers import make_cert
wd, n = Path(sys.argv[1]), int(sys.argv[2])
def ip(i): return f"127.0.9.{10 + i % 50}"
class D(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, data, addr):
        q = dns.message.from_wire(data); r = dns.message.make_response(q); r.flags |= dns.flags.AA
        qn = q.question[0].name.to_text().rstrip(".")
        if qn.startswith("n") and qn.endswith(".bench.test") and q.question[0].rdtype == dns.rdatatype.A:
            r.answer.append(dns.rrset.from_text(qn + ".", 60, "IN", "A", ip(int(qn[1:].split(".")[0]))))
        self.t.sendto(r.to_wire(), addr)
async def page(req):
    num = 20000000 + int(req.host[1:].split(".")[0])
    return web.Response(text=f'<footer><a href="https://beian.miit.gov.cn/">京ICP备{num}号-1</a></footer>', content_type="text/html")
async def main():
    app = web.Application(); app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None); await runner.setup()
    c, k = make_cert(wd, ["bench.test", "*.bench.test"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH); ctx.load_cert_chain(c, k)
    for i in range(50):
        await web.TCPSite(runner, ip(i), 443, ssl_context=ctx, backlog=1024).start()
        await web.TCPSite(runner, ip(i), 80, backlog=1024).start()
    await asyncio.get_running_loop().create_datagram_endpoint(D, local_addr=("127.0.9.53", 53))
    (wd / "ready").write_text("ok")
    await asyncio.Event().wait()
asyncio.run(main())
"""


def active(n: int, concurrency: int) -> None:
    wd = Path(tempfile.mkdtemp(prefix="beiand-bench-probe-"))
    srv = subprocess.Popen([sys.executable, "-c", SERVERS, str(wd), str(n)])
    try:
        while not (wd / "ready").exists():
            if srv.poll() is not None:
                sys.exit("lab servers failed")
            time.sleep(0.1)
        rec = wd / "records.csv"
        with rec.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["备案号", "主办单位", "服务类型", "域名", "接入商", "状态"])
            for i in range(n):
                w.writerow([f"京ICP备{20000000 + i}号-1", f"公司{i}", "网站", f"n{i}.bench.test", OUR_PROVIDER, "正常"])
        inv = wd / "inventory.csv"
        inv.write_text("prefix,account,site,state,mode\n127.0.9.0/24,cust-1,bj,active,monitor\n")
        empty = wd / "empty.pcap"
        from beiand.lab.traffic import write_pcap

        write_pcap(empty, [])
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "beiand.cli", "audit", "--records", str(rec), "--inventory", str(inv),
                            "--provider", OUR_PROVIDER, "--pcap", str(empty), "--probe", "--resolver", "127.0.9.53:53",
                            "--concurrency", str(concurrency), "--per-host", "64", "--timeout", "10", "--quiet", "--format", "json",
                            "--out", str(wd / "r.json")], capture_output=True, text=True)
        dt = time.perf_counter() - t0
        rep = json.loads((wd / "r.json").read_text())
        p = rep["probe"]
        kinds: dict[str, int] = {}
        for f in rep["findings"]:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
        print(f"active probe findings by kind: {kinds}")
        print(f"active probe of {n:,} names: {dt:.1f} s (bar <= 60 s); {p['dns_queries']:,} DNS queries, {p['tls_handshakes']:,} "
              f"TLS handshakes, {p['http_fetches']:,} homepage fetches, {p['errors']} errors; concurrency {concurrency} "
              f"(peak {p['peak_concurrency']}), peak RSS {p['peak_rss_mib']} MiB; findings {rep['summary']['findings']}; rc {r.returncode}")
    finally:
        srv.terminate()
        srv.wait()
        shutil.rmtree(wd, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["passive", "active", "both"], nargs="?", default="both")
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--per-day", type=int, default=1_000_000)
    ap.add_argument("--names", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=200)
    a = ap.parse_args()
    if a.what in ("passive", "both"):
        passive(a.days, a.per_day)
    if a.what in ("active", "both"):
        active(a.names, a.concurrency)


if __name__ == "__main__":
    main()
