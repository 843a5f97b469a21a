"""The fleet's copy in ClickHouse at scale (issue 27, the Bar): 60 days x 10M records over 3
gateways (600M rows) in a table made by the project's own DDL, then the lawful request, a name
over 60 days, and `logs verify --clickhouse` over one gateway-day of 10M records.

    python bench/bench_clickhouse_fleet.py [--dir /var/tmp/chbench] [--days 60] [--per-day 10000000]
        [--gateways 3] [--verify-records 10000000] [--runs 5] [--keep | --reuse] [--no-cold] [--no-scan]

- A ``clickhouse-server`` (Debian's 18.16) is started on loopback with its data in ``--dir``
  (default /var/tmp/chbench). ``--keep`` leaves the data there; ``--reuse`` starts on it and only
  runs the queries (no load): the lead re-runs the figures on a quiet machine that way.
- The tables are ``beiand.sinks.clickhouse.ddl()``'s: the access log table and its lookup tables
  by name and by client, filled by their materialized views on insert, as the sink makes them.
- Load: every (day, gateway) but one is generated inside ClickHouse (``INSERT … SELECT FROM
  numbers(N)``): ~100k server addresses (a name lives on one), ports 443/80/22/8080/8443, 1M names
  and 10M clients both Zipf-like (log-uniform rank), timestamps uniform over the day, 4 workers
  per gateway with their own record numbers; their links are random hex (not a chain). The one
  gateway-day that is verified (gateway gw-1, the second day, ``--verify-records``) is made in
  Python through the real path: records → ``encode_batch`` → ``chain_links`` → the sink's rows
  (``chain_rows``), partitions of 2M records, with anchors in ``access_log_anchors``.
  Before loading, and after the first day, the free disk is checked: the load stops when the
  projection passes 70 % of the disk (``--days`` scales it down).
- Queries are the SQL ``logs query`` sends (``beiand.sinks.fleet.select_records``, as
  ``--server X --port P --at T --window 5m``, ``--name N --since 60d``, ``--client C``): the
  lawful request by the primary key (and its NAT side), a name or client by its lookup table
  (``IN``) then the primary key. Each is timed client-side (request to the last row
  read), cold (OS page cache and ClickHouse's mark cache dropped) then warm ``--runs`` times:
  median and max, rows returned, rows ClickHouse read (``system.query_log``), load average.
- ``logs verify --clickhouse --gateway gw-1 --since D --until D`` runs as a subprocess (the
  CLI as an operator runs it), cold then warm; ``--profile`` runs it once under cProfile.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

from beiand.accesslog.format import DAY_MS, GENESIS, chain_links, encode_batch
from beiand.accesslog.reader import Query
from beiand.accesslog.store import Committed
from beiand.model import AccessRecord
from beiand.sinks.clickhouse import ANCHORS_TABLE, CHAINED, anchors_ddl, chain_rows, ddl, lookup_tables, parse_version
from beiand.sinks.fleet import select_records

DAY0 = 1_790_000_000_000 // DAY_MS * DAY_MS - 60 * DAY_MS  # a UTC midnight; the data ends before "now"
DB, TABLE = "beiand", "access_log"
NAMES, SERVERS, CLIENTS = 1_000_000, 100_000, 10_000_000
VERIFY_GW, VERIFY_WORKER = "gw-1", 0
PARTITION_RECORDS = 2_000_000  # the verified day's log partitions (w0, w0.p1, …)
SEQ_PER_DAY = 100_000_000  # a worker's record numbers of day d start at d * SEQ_PER_DAY + 1

CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog></logger>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>2147483648</mark_cache_size>{compression}
    <query_log><database>system</database><table>query_log</table><flush_interval_milliseconds>500</flush_interval_milliseconds></query_log>
</yandex>
"""
# zstd instead of lz4 (``--zstd``): the link column (64 random hex digits) does not shrink under lz4
# and is most of the disk; zstd halves it. A server setting, not the table's.
ZSTD = """
    <compression><case><min_part_size>0</min_part_size><min_part_size_ratio>0</min_part_size_ratio>
        <method>zstd</method></case></compression>"""
USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>12000000000</max_memory_usage><log_queries>1</log_queries>
        <max_bytes_before_external_sort>6000000000</max_bytes_before_external_sort></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip></networks>
        <profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"""


# -- the server ----------------------------------------------------------------------------------


class Server:
    def __init__(self, directory: Path, port: int, zstd: bool = False) -> None:
        self.dir = directory
        self.zstd = zstd
        self.http, self.tcp = port, port + 1
        self.url = f"http://127.0.0.1:{self.http}/"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.xml").write_text(CONFIG.format(http=self.http, tcp=self.tcp, d=self.dir,
                                                                compression=ZSTD if self.zstd else ""))
        (self.dir / "users.xml").write_text(USERS)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", self.http)) == 0:
                raise SystemExit(f"port {self.http} is taken (another server on {self.dir}?): --port")
        with open(self.dir / "stdout.log", "ab") as f:
            self.proc = subprocess.Popen(["clickhouse-server", f"--config-file={self.dir / 'config.xml'}"], stdout=f,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300  # a large data directory takes a while to attach
        while time.monotonic() < deadline:
            try:
                self.query("SELECT 1")
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"clickhouse-server exited: {(self.dir / 'server.err.log').read_text()[-2000:]}") from None
                time.sleep(0.3)
        raise SystemExit("clickhouse-server did not answer within 300 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
            self.proc = None

    def query(self, sql: str, body: bytes | None = None, query_id: str = "", timeout: float = 3600) -> str:
        return self.read(sql, body, query_id, timeout).decode()

    def read(self, sql: str, body: bytes | None = None, query_id: str = "", timeout: float = 3600) -> bytes:
        params = {"query_id": query_id} if query_id else {}
        if body is None:
            req = urllib.request.Request(self.url + "?" + urllib.parse.urlencode(params), data=sql.encode())
        else:
            req = urllib.request.Request(self.url + "?" + urllib.parse.urlencode({**params, "query": sql}), data=body)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return bytes(r.read())
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"ClickHouse: HTTP {exc.code}: {exc.read().decode(errors='replace')[:1000]}\n{sql[:500]}") from None


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def df(path: Path) -> tuple[int, int, int]:
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    used = total - st.f_bfree * st.f_frsize
    return total, used, free


def disk_line(path: Path) -> str:
    total, used, free = df(path)
    return f"disk {used / 2**30:.0f} GiB used of {total / 2**30:.0f} GiB ({100 * used / (used + free):.0f} % as df counts), " \
           f"{free / 2**30:.0f} GiB free"


def use_pct(path: Path, extra: int = 0) -> float:
    _total, used, free = df(path)
    return 100 * (used + extra) / (used + free)


# -- generating the fleet's rows inside ClickHouse ----------------------------------------------------


def day_name(d: int) -> str:
    return datetime.fromtimestamp((DAY0 + d * DAY_MS) / 1000, UTC).strftime("%Y-%m-%d")


def synthetic_sql(d: int, gw: int, n: int) -> str:
    """``n`` records of gateway ``gw-<gw>`` on day ``d``, made by ClickHouse from ``numbers(n)``."""
    day_ms = DAY0 + d * DAY_MS
    ip = "concat('{p}', toString(intDiv({v}, 65536) % 256), '.', toString(intDiv({v}, 256) % 256), '.', toString({v} % 256))"
    named = "(h % 100 >= 8)"  # 8 % of the records carry no name (ip-only)
    # Log-uniform ranks: P(rank r) ~ 1/r, a Zipf-like spread of names and clients.
    nrank = f"toUInt64(floor(exp(((h2 % 1000003) / 1000003.0) * {math.log(NAMES)})))"
    crank = f"toUInt64(floor(exp(((bitShiftRight(h2, 20) % 1000003) / 1000003.0) * {math.log(CLIENTS)})))"
    sid = f"if({named}, cityHash64(nrank) % {SERVERS}, bitShiftRight(h2, 40) % {SERVERS})"
    cols = {
        "ts_ms": f"{day_ms} + h % {DAY_MS}",
        "account": "concat('cust-', toString(sid % 5000))",
        "client_ip": ip.format(p="10.", v="crank"),
        "client_port": "toUInt16(1024 + bitShiftRight(h, 16) % 64000)",
        "server_ip": ip.format(p="203.", v="sid"),
        "server_port": "toUInt16(port)",
        "transport": "if(port = 443 AND bitShiftRight(h, 50) % 10 = 0, 'udp', 'tcp')",
        "kind": "multiIf(NOT named, 'ip-only', port = 80 OR port = 8080, 'http-host', "
                "port = 443 AND bitShiftRight(h, 50) % 10 = 0, 'quic-sni', 'tls-sni')",
        "name": "if(named, concat('www.site', toString(nrank), '.example.cn'), '')",
        "verdict": "multiIf(v < 90, 'filed', v < 97, 'unfiled', 'not-hosted')",
        "action": "if(v >= 90 AND v < 97, 'flag', 'log')",
        "filing_number": "if(v < 90, concat('京ICP备', toString(10000000 + sid), '号-1'), '')",
        "gateway": f"'gw-{gw}'",
        "reason": "multiIf(v < 90, 'filed', v < 97, 'no-filing', 'not-hosted')",
        "nat": "''", "calling_number": "''", "order_no": "''",
        "direction": "'in'",
        "method": "if(port = 80 OR port = 8080, 'GET', '')",
        "url": "if(port = 80 OR port = 8080, concat('/p/', toString(h % 997)), '')",
        "packets": "1 + bitShiftRight(h, 40) % 20",
        "octets": "(1 + bitShiftRight(h, 40) % 20) * (60 + bitShiftRight(h, 8) % 1400)",
        "outcome": "''",
        "`partition`": f"concat('{day_name(d)}/w', toString(number % 4))",
        "seq": f"{d * SEQ_PER_DAY} + intDiv(number, 4) + 1",
        "pos": "intDiv(number, 4) + 1",
        # 64 hex digits, random (a real link is a SHA-256): four hashes, cheaper to make than one SHA256().
        "link": "lower(concat(hex(cityHash64(h, 1)), hex(cityHash64(h, 2)), hex(cityHash64(h, 3)), hex(cityHash64(h, 4))))",
        "worker": "toUInt16(number % 4)",
    }
    assert tuple(cols) == CHAINED
    return (f"INSERT INTO {DB}.{TABLE} ({', '.join(CHAINED)}) SELECT {', '.join(f'{v} AS {k}' for k, v in cols.items())} "
            f"FROM (SELECT number, h, h2, v, {named} AS named, {nrank} AS nrank, {crank} AS crank, {sid} AS sid, "
            "[443, 443, 443, 443, 443, 443, 443, 80, 80, 22, 8080, 8443][bitShiftRight(h, 8) % 12 + 1] AS port "
            f"FROM (SELECT number, cityHash64(number, {d}, {gw}) AS h, cityHash64(h, 7) AS h2, bitShiftRight(h, 24) % 100 AS v "
            f"FROM system.numbers LIMIT {n}))")


# -- the verified gateway-day, through the real path ------------------------------------------------


def verified_records(rng: random.Random, d: int, ts: list[int]) -> list[AccessRecord]:
    """The same spread as :func:`synthetic_sql`, made in Python, at the times ``ts`` of day ``d``."""
    day_ms = DAY0 + d * DAY_MS
    ln_names, ln_clients = math.log(NAMES), math.log(CLIENTS)
    ports = [443] * 7 + [80, 80, 22, 8080, 8443]
    out = []
    rand, randrange = rng.random, rng.randrange
    for t in ts:
        named = rand() >= 0.08
        nrank = int(math.exp(rand() * ln_names))
        sid = hash(nrank) * 2654435761 % SERVERS if named else randrange(SERVERS)
        crank = int(math.exp(rand() * ln_clients))
        port = ports[randrange(12)]
        quic = port == 443 and randrange(10) == 0
        v = randrange(100)
        pk = 1 + randrange(20)
        http = port in (80, 8080)
        out.append(AccessRecord(
            day_ms + t, f"cust-{sid % 5000}", f"10.{crank >> 16 & 255}.{crank >> 8 & 255}.{crank & 255}", 1024 + randrange(64000),
            f"203.{sid >> 16 & 3}.{sid >> 8 & 255}.{sid & 255}", port, "udp" if quic else "tcp",
            "ip-only" if not named else "http-host" if http else "quic-sni" if quic else "tls-sni",
            f"www.site{nrank}.example.cn" if named else "", "filed" if v < 90 else "unfiled" if v < 97 else "not-hosted",
            "flag" if 90 <= v < 97 else "log", f"京ICP备{10000000 + sid}号-1" if v < 90 else "", VERIFY_GW,
            "filed" if v < 90 else "no-filing" if v < 97 else "not-hosted", "", "", "", "in", "GET" if http else "",
            f"/p/{randrange(997)}" if http else "", pk, pk * (60 + randrange(1400)), ""))
    return out


def load_verified_day(srv: Server, d: int, n: int) -> float:
    """``n`` records of gw-1 on day ``d``: encoded and chained as the log does, sent as the sink's rows."""
    t0 = time.perf_counter()
    rng = random.Random(27)
    ts = sorted(rng.randrange(DAY_MS) for _ in range(n))  # a log is in time order
    head, seq, part_no, pos = GENESIS, d * SEQ_PER_DAY + 1, 0, 1
    anchors = []
    chunk = 500_000
    t_gen = t_chain = t_send = 0.0
    for i in range(0, n, chunk):
        t1 = time.perf_counter()
        batch = verified_records(rng, d, ts[i:i + chunk])
        t_gen += time.perf_counter() - t1
        t1 = time.perf_counter()
        body = []
        j = 0
        while j < len(batch):
            room = PARTITION_RECORDS - (pos - 1)
            part_recs = batch[j:j + room]
            lines = encode_batch(part_recs)
            links = chain_links(head, lines)
            part = f"{day_name(d)}/w{VERIFY_WORKER}" + (f".p{part_no}" if part_no else "")
            body += chain_rows(Committed(VERIFY_GW, VERIFY_WORKER, part, seq, pos, lines, links))
            head, seq, pos, j = links[-1], seq + len(lines), pos + len(lines), j + len(lines)
            if pos - 1 == PARTITION_RECORDS or (i + j >= n):
                anchors.append((part, pos - 1, head.hex(), part_recs[-1].ts_ms))
            if pos - 1 == PARTITION_RECORDS:
                part_no, pos = part_no + 1, 1
        t2 = time.perf_counter()
        srv.read(f"INSERT INTO {DB}.{TABLE} ({','.join(CHAINED)}) FORMAT TabSeparated", b"".join(body))
        t_chain += t2 - t1
        t_send += time.perf_counter() - t2
    srv.query(anchors_ddl(DB))
    rows = "".join(f'{{"ts_ms": {ts}, "gateway": "{VERIFY_GW}", "worker": {VERIFY_WORKER}, "partition": "{p}", '
                   f'"count": {c}, "head": "{h}"}}\n' for p, c, h, ts in anchors)
    srv.read(f"INSERT INTO {DB}.{ANCHORS_TABLE} FORMAT JSONEachRow", rows.encode())
    print(f"  verified day {day_name(d)} {VERIFY_GW}: {n:,} records made in {t_gen:.1f} s, encoded+chained+rows "
          f"{t_chain:.1f} s, sent {t_send:.1f} s; {len(anchors)} anchors", flush=True)
    return time.perf_counter() - t0


def parts_bytes(srv: Server) -> dict[str, tuple[int, int]]:
    out = {}
    for line in srv.query(f"SELECT table, sum(rows), sum(bytes_on_disk) FROM system.parts WHERE database = '{DB}' AND active "
                          "GROUP BY table FORMAT TabSeparated").splitlines():
        t, r, b = line.split("\t")
        out[t] = (int(r), int(b))
    return out


def wait_merges(srv: Server, limit: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        n = int(srv.query(f"SELECT count() FROM system.merges WHERE database = '{DB}'"))
        if n == 0:
            break
        time.sleep(5)
    parts = srv.query(f"SELECT table, count() FROM system.parts WHERE database = '{DB}' AND active GROUP BY table "
                      "FORMAT TabSeparated").replace("\n", "; ").replace("\t", " ")
    print(f"  merges: waited {time.monotonic() - t0:.0f} s; active parts: {parts}", flush=True)


def verified_day(days: int) -> int:
    """The verified gateway-day: the second day (loaded early, whatever the disk allows)."""
    return min(1, days - 1)


def load_all(srv: Server, args: argparse.Namespace, dirpath: Path) -> None:
    version = parse_version(srv.query("SELECT version()"))
    for stmt in ddl(DB, TABLE, version, retention_days=184):
        srv.query(stmt)
    print(f"tables: {DB}.{TABLE} and its lookup tables {', '.join(lookup_tables(TABLE).values())} "
          f"(beiand.sinks.clickhouse.ddl, ClickHouse {srv.query('SELECT version()').strip()})", flush=True)
    per_gw = args.per_day // args.gateways
    vday = verified_day(args.days)
    t0 = time.perf_counter()
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(args.parallel)
    step = 2  # days loaded at once (3 gateways a day on 2 at a time: keep both busy)
    for d0 in range(0, args.days, step):
        td = time.perf_counter()
        jobs = [pool.submit(load_verified_day, srv, d, args.verify_records) if (d, g) == (vday, 1)
                else pool.submit(srv.query, synthetic_sql(d, g, per_gw))
                for d in range(d0, min(d0 + step, args.days)) for g in range(1, args.gateways + 1)]
        for j in jobs:
            j.result()
        d = min(d0 + step, args.days) - 1
        b = sum(v[1] for v in parts_bytes(srv).values())
        rows = sum(v[0] for t, v in parts_bytes(srv).items() if t == TABLE)
        proj = b / (d + 1) * (args.days - d - 1)
        print(f"  day {d + 1}/{args.days} {day_name(d)}: {time.perf_counter() - td:.1f} s; {rows:,} rows, "
              f"{b / 2**30:.1f} GiB on disk; load {load()}", flush=True)
        if args.load_minutes and time.perf_counter() - t0 > args.load_minutes * 60 and d + 1 < args.days:
            print(f"STOP: --load-minutes {args.load_minutes} spent; loaded {d + 1} of {args.days} days", flush=True)
            args.days = d + 1
            break
        if use_pct(dirpath, int(proj)) > 70:
            print(f"STOP: {args.days} days would take ~{(b + proj) / 2**30:.0f} GiB: the disk would pass 70 % "
                  f"({disk_line(dirpath)}); loaded {d + 1} days (run with --days {d + 1} to query them)", flush=True)
            args.days = d + 1
            break
    pool.shutdown()
    print(f"load: {time.perf_counter() - t0:.0f} s for {args.days} days; load {load()}", flush=True)
    (dirpath / "loaded.txt").write_text(f"{args.days} {args.per_day} {args.gateways} {args.verify_records}\n")


# -- the SQL the tools send ---------------------------------------------------------------------
# ``beiand logs query`` on the copy builds its SELECT with beiand.sinks.fleet.select_records (h-chq,
# merged): the bench sends exactly that SQL.

LOOKUPS = {col: f"{DB}.{t}" for col, t in lookup_tables(TABLE).items()}


def server_port_sql(server: str, port: int, at_ms: int, window_ms: int = 300_000) -> str:
    """``logs query --server S --port P --at T --window 5m``: the primary key (server, port, time),
    and the NAT side (a second SELECT, ``UNION ALL``)."""
    q = Query(at_ms - window_ms, at_ms + window_ms, server=ipaddress.ip_network(server), port=port)
    return select_records(q, f"{DB}.{TABLE}", lookups=LOOKUPS)


def name_sql(name: str, since_ms: int, until_ms: int, lookup: bool = True) -> str:
    """``logs query --name N --since 60d``: the lookup table by name gives the rows' keys (an index
    read), the table is read by its primary key through them. ``lookup=False``: the scan the table
    alone allows (what 18.16 does without the lookup table)."""
    return select_records(Query(since_ms, until_ms, name=name), f"{DB}.{TABLE}", lookups=LOOKUPS if lookup else {})


def client_sql(client: str, since_ms: int, until_ms: int) -> str:
    """``logs query --client C --since 60d`` (a scan: select_records does not use the lookup table
    by client, whose rows would each need a granule of the table)."""
    return select_records(Query(since_ms, until_ms, client=ipaddress.ip_network(client)), f"{DB}.{TABLE}", lookups=LOOKUPS)


# -- timing --------------------------------------------------------------------------------------


def drop_caches(srv: Server) -> None:
    srv.query("SYSTEM DROP MARK CACHE")
    srv.query("SYSTEM DROP UNCOMPRESSED CACHE")
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as exc:
        print(f"  (cannot drop the OS page cache: {exc.strerror}: 'cold' is ClickHouse's caches only)")


def read_rows(srv: Server, qid: str) -> str:
    srv.query("SYSTEM FLUSH LOGS")
    r = srv.query(f"SELECT read_rows, read_bytes FROM system.query_log WHERE query_id = '{qid}' AND type = 2 "
                  "FORMAT TabSeparated").split()
    return f"{int(r[0]):,} rows / {int(r[1]) / 2**20:.0f} MiB read" if r else "read ?"


def timed(srv: Server, label: str, sql: str, runs: int, cold: bool, bar: float) -> None:
    figures = []
    rows = 0
    first_qid = ""
    for i in range(runs + (1 if cold else 0)):
        if cold and i == 0:
            drop_caches(srv)
        qid = uuid.uuid4().hex
        first_qid = first_qid or qid
        t0 = time.perf_counter()
        body = srv.read(sql, query_id=qid)
        figures.append(time.perf_counter() - t0)
        rows = body.count(b"\n")
    c = f"cold {figures[0]:.3f} s; " if cold else ""
    warm = figures[1:] if cold else figures
    ok = "meets" if max(warm) <= bar and (not cold or figures[0] <= bar) else "MISSES"
    print(f"{label}: {rows:,} rows; {c}warm median {statistics.median(warm):.3f} s, max {max(warm):.3f} s "
          f"({len(warm)} runs; {read_rows(srv, first_qid)} cold); bar <= {bar:g} s: {ok}; load {load()}", flush=True)


def pick(srv: Server, sql: str) -> list[str]:
    return srv.query(sql + " FORMAT TabSeparated").strip().split("\t")


def run_queries(srv: Server, args: argparse.Namespace) -> None:
    days, vday = args.days, verified_day(args.days)
    since, until = DAY0, DAY0 + days * DAY_MS - 1
    print(f"queries over {days} days ({day_name(0)} … {day_name(days - 1)}); load {load()}", flush=True)
    sizes = parts_bytes(srv)
    for t, (r, b) in sorted(sizes.items()):
        print(f"  {t}: {r:,} rows, {b / 2**30:.2f} GiB on disk ({b / max(r, 1):.1f} bytes/row)")
    cols = srv.query(f"SELECT name, data_compressed_bytes FROM system.columns WHERE database = '{DB}' AND table = '{TABLE}' "
                     "ORDER BY data_compressed_bytes DESC LIMIT 6 FORMAT TabSeparated").splitlines()
    print("  largest columns: " + ", ".join(f"{c.split()[0]} {int(c.split()[1]) / 2**30:.1f} GiB" for c in cols))
    # The lawful request: a busy server address (rank ~10 of the day's) and a quiet one, at noon.
    at = DAY0 + vday * DAY_MS + DAY_MS // 2
    busy = pick(srv, f"SELECT server_ip, server_port, count() AS c FROM {DB}.{TABLE} WHERE day = toDate('{day_name(vday)}') "
                     "GROUP BY server_ip, server_port ORDER BY c DESC LIMIT 9, 1")
    quiet = pick(srv, f"SELECT server_ip, server_port, count() AS c FROM {DB}.{TABLE} WHERE day = toDate('{day_name(vday)}') "
                      "GROUP BY server_ip, server_port HAVING c BETWEEN 100 AND 1000 LIMIT 1")
    for lab, (ip, port, c) in (("busy", busy), ("typical", quiet)):
        timed(srv, f"server+port {ip}:{port} ({lab}: {int(c):,} rows that day) at {day_name(vday)} 12:00 ± 5 min",
              server_port_sql(ip, int(port), at), args.runs, not args.no_cold, 1.0)
    # A name over the whole range: a popular one (rank 100), a mid one (rank 10,000), a rare one.
    for rank in (100, 10_000, 500_000):
        name = f"www.site{rank}.example.cn"
        timed(srv, f"name {name} (rank {rank:,}) over {days} days", name_sql(name, since, until), args.runs,
              not args.no_cold, 2.0)
    if not args.no_scan:
        name = "www.site10000.example.cn"
        timed(srv, f"name {name} over {days} days WITHOUT the lookup table (the scan, for comparison)",
              name_sql(name, since, until, lookup=False), 1, False, 2.0)
    client = "10.0.39.16"  # rank 10,000
    if not args.no_scan:  # logs query scans for a client (its rows lie one per granule: the lookup does not help)
        timed(srv, f"client {client} (rank 10,000) over {days} days (a scan)", client_sql(client, since, until), 1, False, 2.0)


def run_verify(srv: Server, args: argparse.Namespace) -> None:
    d = day_name(verified_day(args.days))
    n = int(srv.query(f"SELECT count() FROM {DB}.{TABLE} WHERE gateway = '{VERIFY_GW}' AND day = toDate('{d}')"))
    cmd = [str(Path(sys.executable).parent / "beiand"), "logs", "verify", "--config", "/nonexistent", "--clickhouse", srv.url,
           "--table", TABLE, "--gateway", VERIFY_GW, "--since", f"{d}T00:00Z", "--until", f"{d}T00:00Z"]
    print(f"verify: beiand {' '.join(cmd[1:])}  ({n:,} rows of {VERIFY_GW} on {d})", flush=True)
    figures = []
    for i in range(1 + args.verify_runs):
        if i == 0 and not args.no_cold:
            drop_caches(srv)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        figures.append(time.perf_counter() - t0)
        if i == 0:
            print("  " + "\n  ".join(p.stdout.strip().splitlines()[-6:]))
            if p.returncode:
                print(f"  exit {p.returncode}: {p.stderr.strip()[-1000:]}")
        print(f"  run {i + 1} ({'cold' if i == 0 and not args.no_cold else 'warm'}): {figures[-1]:.1f} s; load {load()}",
              flush=True)
    ok = "meets" if max(figures) <= 60 else "MISSES"
    print(f"verify --clickhouse over {n:,} rows: median {statistics.median(figures):.1f} s, max {max(figures):.1f} s; "
          f"bar <= 60 s: {ok}", flush=True)
    if args.profile:
        prof = Path(args.dir) / "verify.prof"
        subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), *cmd], capture_output=True, check=False)
        import pstats

        pstats.Stats(str(prof)).sort_stats("cumulative").print_stats(15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/var/tmp/chbench", help="the server's data and config (default /var/tmp/chbench)")
    ap.add_argument("--port", type=int, default=18123, help="HTTP port (the native one is the next)")
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--per-day", type=int, default=10_000_000, help="records per day across the fleet")
    ap.add_argument("--gateways", type=int, default=3)
    ap.add_argument("--verify-records", type=int, default=10_000_000, help="records of the verified gateway-day")
    ap.add_argument("--runs", type=int, default=5, help="warm runs of each query")
    ap.add_argument("--verify-runs", type=int, default=2, help="warm runs of verify")
    ap.add_argument("--load-minutes", type=float, default=0, help="stop loading after this long (0: no limit)")
    ap.add_argument("--parallel", type=int, default=2, help="INSERT … SELECT run at once while loading")
    ap.add_argument("--zstd", action="store_true", help="the server compresses with zstd (default: lz4, its default)")
    ap.add_argument("--keep", action="store_true", help="leave the data directory (for --reuse)")
    ap.add_argument("--reuse", action="store_true", help="the data is loaded already: only the queries")
    ap.add_argument("--no-cold", action="store_true", help="no cold runs (they drop the OS page cache)")
    ap.add_argument("--no-scan", action="store_true", help="skip the name query without its lookup table")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--profile", action="store_true", help="also run verify once under cProfile")
    args = ap.parse_args()
    d = Path(args.dir)
    if args.reuse:
        loaded = (d / "loaded.txt").read_text().split()
        args.days, args.per_day, args.gateways, args.verify_records = (int(x) for x in loaded)
    else:
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        # A row takes ~60-90 bytes with its lookup rows (lz4); check before starting.
        need = args.days * args.per_day * 75
        print(f"before: {disk_line(d)}; the load needs ~{need / 2**30:.0f} GiB (projected {use_pct(d, need):.0f} %)")
    if args.reuse:
        args.zstd = (d / "zstd").exists()
    elif args.zstd:
        (d / "zstd").touch()
    srv = Server(d, args.port, args.zstd)
    srv.start()
    try:
        if not args.reuse:
            load_all(srv, args, d)
            wait_merges(srv, 300)
        print(f"after load: {disk_line(d)}; load {load()}", flush=True)
        run_queries(srv, args)
        if not args.no_verify:
            run_verify(srv, args)
    finally:
        srv.stop()
        if not (args.keep or args.reuse):
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
