"""``beiand logs``: answer a lawful request from the access log (Order 292 art. 14).

``query`` prints matching records, ``export`` writes them with a manifest the receiver can
check, ``verify`` recomputes the hash chains (and checks anchors kept elsewhere), ``acknowledge``
records that an operator has investigated a damaged partition, ``stats`` shows what is held.
Every command takes
``--log-dir`` (default: ``accesslog.directory`` of the config), the directory that the daemon
and ``beiand replay --log-dir`` write.

With ``[accesslog.clickhouse] url`` configured (or ``--clickhouse [URL]``), ``query`` and
``export`` answer from the fleet's copy in ClickHouse, every gateway's records (issue 27);
``--local`` (or an explicit ``--log-dir``) reads this gateway's embedded log, the evidence of
record. ``verify --clickhouse`` checks the copy against the anchors.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import ipaddress
import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import orjson

from beiand.accesslog import Query, QueryStats, query, stats, verify
from beiand.accesslog.format import DAY_MS, FIELDS
from beiand.accesslog.reader import AnchorError, query_marked, read_anchors, read_heads
from beiand.accesslog.source import LocalRecords, RecordSource
from beiand.accesslog.store import DIR_MODE, FILE_MODE, append_heads, file_sha256, part_name, partition_paths
from beiand.cli.common import CliError, out, table
from beiand.model import UNNAMED, AccessRecord, VerdictKind

if TYPE_CHECKING:
    from beiand.accesslog.copy import CopyRow
    from beiand.policy.history import Holders
    from beiand.policy.nat import NatTable
    from beiand.runtime.settings import Config
    from beiand.sinks.fleet import FleetRecords

IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_CONFIG = "/etc/beiand/beiand.toml"
_REL = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, field: str, now: float | None = None) -> int:
    """``2026-11-01``, ``2026-11-01T08:00[:00][Z|+08:00]``, epoch seconds, or ``7d``/``24h``/``30m`` ago → epoch ms.

    Times without a zone are local time (as journalctl reads them).
    """
    t = text.strip()
    now = time.time() if now is None else now
    m = _REL.match(t)
    if m:
        return int((now - int(m.group(1)) * _UNITS[m.group(2)]) * 1000)
    if re.fullmatch(r"\d{9,11}(\.\d+)?", t):
        return int(float(t) * 1000)
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise CliError(f"{field} {text!r}: expected a date/time (2026-11-01, 2026-11-01T08:00+08:00), "
                       "epoch seconds, or an age such as 7d, 24h, 30m") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # local time
    return int(dt.timestamp() * 1000)


def _fmt_time_slow(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).astimezone().isoformat(timespec="milliseconds")


_HOUR_MS = 3_600_000
_OFFSETS: dict[int, tuple[int, str] | None] = {}  # UTC hour → (local offset ms, "+08:00"), None: it changes inside
_DATES: dict[int, str] = {}  # local day number → "2026-11-20"


def fmt_time(ts_ms: int) -> str:
    """``2026-11-20T08:00:00.123+08:00`` (local time): what ``_fmt_time_slow`` prints, with the
    zone's offset looked up once per UTC hour (a query prints one line per record)."""
    h = ts_ms // _HOUR_MS
    if h in _OFFSETS:
        off = _OFFSETS[h]
    else:
        a = datetime.fromtimestamp(h * 3600, UTC).astimezone()
        b = datetime.fromtimestamp(h * 3600 + 3599.999, UTC).astimezone()
        off = None
        if a.utcoffset() == b.utcoffset() and len(_OFFSETS) < 100_000:
            delta = a.utcoffset()
            ms = int(delta.total_seconds() * 1000) if delta is not None else 0
            off = (ms, a.isoformat(timespec="milliseconds")[23:]) if ms % 60_000 == 0 else None
        _OFFSETS[h] = off
    if off is None:
        return _fmt_time_slow(ts_ms)
    local = ts_ms + off[0]
    day, rem = divmod(local, 86_400_000)
    date = _DATES.get(day)
    if date is None:
        date = _DATES[day] = datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")
    hh, rem = divmod(rem, _HOUR_MS)
    mm, rem = divmod(rem, 60_000)
    ss, ms = divmod(rem, 1000)
    return f"{date}T{hh:02d}:{mm:02d}:{ss:02d}.{ms:03d}{off[1]}"


def _net(text: str | None, field: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if not text:
        return None
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        raise CliError(f"{field} {text!r}: not an IP address or CIDR prefix") from None


def config_from(args: argparse.Namespace) -> Config | None:
    """The config of ``--config`` (default /etc/beiand/beiand.toml), or None when there is no such file."""
    from beiand.runtime.settings import ConfigError, load_config

    path = args.config or DEFAULT_CONFIG
    if not os.path.exists(path):
        return None
    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def log_dir(args: argparse.Namespace, may_be_missing: bool = False) -> Path:
    if args.log_dir:
        d = Path(args.log_dir)
    else:
        cfg = config_from(args)
        if cfg is None:
            raise CliError(f"no --log-dir given and no config at {args.config or DEFAULT_CONFIG} (--config FILE) "
                           "to take accesslog.directory from")
        d = cfg.accesslog.directory
    if not d.is_dir() and not (may_be_missing and not d.exists()):
        raise CliError(f"--log-dir {d}: not a directory")
    return d


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def clickhouse_records(args: argparse.Namespace, cfg: Config | None = None, gateways: tuple[str, ...] = ()) -> FleetRecords:
    """The fleet's copy in ClickHouse: ``--clickhouse URL`` (or ``[accesslog.clickhouse] url``),
    ``--database``, ``--table`` (or the config's); each malformed value is an error naming it."""
    from beiand.runtime.wiring import StateError, fleet_records
    from beiand.sinks.fleet import check_url

    cfg = config_from(args) if cfg is None else cfg
    c = cfg.accesslog.clickhouse if cfg is not None else None
    given = getattr(args, "clickhouse", None) or ""
    url = given or (c.url if c is not None else "")
    if not url:
        raise CliError(f"--clickhouse: give the URL (http://host:8123), or a config with [accesslog.clickhouse] url "
                       f"(--config, default {DEFAULT_CONFIG})")
    why = check_url(url)
    if why:
        raise CliError(f"--clickhouse {url!r}: {why}" if given else
                       f"accesslog.clickhouse.url {url!r} ({cfg.path if cfg is not None else '?'}): {why}")
    names = {}
    for opt, attr in (("--database", "database"), ("--table", "table")):
        v = getattr(args, attr, None)
        if v is not None and not _IDENT.match(v):
            raise CliError(f"{opt} {v!r}: a ClickHouse name: letters, digits and _, not starting with a digit")
        names[attr] = v or ""
    try:
        return fleet_records(cfg, url=url, database=names["database"], table=names["table"], gateways=gateways)
    except StateError as exc:
        raise CliError(str(exc)) from None


def records_source(args: argparse.Namespace, cfg: Config | None = None, no_log: str = "") -> RecordSource:
    """Where ``logs query|export``, ``audit`` and ``block report`` read (issue 27): the fleet's copy
    in ClickHouse when ``--clickhouse`` is given or the config has ``[accesslog.clickhouse] url``;
    this gateway's embedded log with ``--local``, an explicit ``--log-dir``, or no ClickHouse
    (``no_log``: the error when it has none; default: :func:`log_dir`'s)."""
    local = getattr(args, "local", False)
    if not local and getattr(args, "clickhouse", None) is not None:
        return clickhouse_records(args, cfg)
    if not local and not getattr(args, "log_dir", None):
        cfg = config_from(args) if cfg is None else cfg
        if cfg is not None and cfg.accesslog.clickhouse.url:
            return clickhouse_records(args, cfg)
    if not no_log:
        return LocalRecords(log_dir(args))
    cfg = config_from(args) if cfg is None and not args.log_dir else cfg
    d = Path(args.log_dir) if args.log_dir else (cfg.accesslog.directory if cfg is not None else None)
    if d is None or not d.is_dir():
        raise CliError(no_log)
    return LocalRecords(d)


def unreachable(exc: Exception) -> str:
    """The error of a read of the fleet's copy that failed (ClickHouse down, an error it answered)."""
    return f"ClickHouse {exc} (--local answers from this gateway's log, the evidence of record)"


def store_options(p: argparse.ArgumentParser) -> None:
    """``--local`` / ``--clickhouse [URL]`` with ``--database``, ``--table``: which store a read-side command reads."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--local", action="store_true",
                   help="read this gateway's embedded log (the evidence of record) even when ClickHouse is configured")
    g.add_argument("--clickhouse", nargs="?", const="", metavar="URL",
                   help="read the fleet's copy in ClickHouse, every gateway's records (URL default: accesslog.clickhouse.url "
                   "of the config, which makes it the default store)")
    p.add_argument("--database", metavar="DB", help="with ClickHouse: the database (default: the config's, or beiand)")
    p.add_argument("--table", metavar="TABLE", help="with ClickHouse: the table (default: the config's, or access_log)")


_WINDOW = re.compile(r"^(\d+)([smhd])$")

# CSV headers in Chinese (--headers zh): what a request form (调取证据通知书) names.
ZH_HEADERS = {
    "time": "时间", "ts_ms": "时间戳(毫秒)", "account": "账号", "client_ip": "源地址", "client_port": "源端口",
    "server_ip": "目的地址", "server_port": "目的端口", "transport": "协议", "kind": "识别方式", "name": "域名",
    "verdict": "备案核验结果", "action": "处置", "filing_number": "备案号", "gateway": "网关", "reason": "原因",
    "nat": "NAT映射地址", "calling_number": "主叫号码", "order": "指令编号", "direction": "方向", "method": "请求方法",
    "url": "URL", "packets": "包数", "octets": "字节数", "records_version": "备案数据版本", "holder": "当时地址持有账号",
}


def parse_window(text: str, field: str = "--window") -> int:
    """``5m``, ``30s``, ``2h``, ``1d`` → milliseconds."""
    m = _WINDOW.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise CliError(f"{field} {text!r}: expected a duration such as 30s, 5m, 2h or 1d")
    return int(m.group(1)) * _UNITS[m.group(2)] * 1000


def _port(text: str | None, field: str) -> int | None:
    if text is None or text == "":
        return None
    t = str(text).strip()
    if not t.isascii() or not t.isdigit() or not 0 <= int(t) <= 65535:
        raise CliError(f"{field} {text!r}: expected a port number 0-65535")
    return int(t)


def build_query(args: argparse.Namespace, nat: NatTable | None = None) -> Query:
    """The query the filters ask for. With a NAT table, a server address (and port) on either side
    of a mapping valid in the time range also matches the other side."""
    from beiand.records.domains import DomainError, normalise_domain

    now = time.time()
    at = getattr(args, "at", None)
    window = getattr(args, "window", None)
    if window and not at:
        raise CliError("--window needs --at (the time the request names)")
    if at:
        if args.since or args.until:
            raise CliError("--at: give either --at (with --window) or --since/--until, not both")
        t = parse_time(at, "--at", now)
        w = parse_window(window) if window else 5 * 60_000
        since, until = t - w, t + w + 1
    else:
        since = parse_time(args.since, "--since", now) if args.since else 0
        until = parse_time(args.until, "--until", now) if args.until else int((now + 86400) * 1000)
    if until <= since:
        raise CliError("--until must be later than --since")
    names = {}
    for field in ("name", "suffix"):
        v = getattr(args, field)
        if v:
            try:
                names[field] = normalise_domain(v)
            except DomainError as exc:
                raise CliError(f"--{field} {v!r}: {exc.reason}") from None
    verdicts = [*(v.value for v in VerdictKind), UNNAMED]
    if args.verdict and args.verdict not in verdicts:
        raise CliError(f"--verdict {args.verdict!r}: one of {', '.join(verdicts)}")
    proto = (getattr(args, "proto", None) or "").strip().lower()
    if proto and proto not in ("tcp", "udp"):
        raise CliError(f"--proto {args.proto!r}: one of tcp, udp")
    url_prefix = getattr(args, "url_prefix", None) or ""
    if url_prefix and not url_prefix.startswith("/"):
        raise CliError(f"--url-prefix {url_prefix!r}: a URL path, starting with /")
    port = _port(getattr(args, "port", None), "--port")
    server = _net(args.server, "--server")
    also: tuple[tuple[IpNet, int | None], ...] = ()
    if nat is not None and server is not None and server.num_addresses == 1:
        also = tuple(nat.other_sides(str(server.network_address), port, since, until))
    return Query(since, until, name=names.get("name", ""), suffix=names.get("suffix", ""),
                 client=_net(args.client, "--client"), server=server,
                 account=args.account or "", verdict=args.verdict or "", port=port, proto=proto,
                 url_prefix=url_prefix, also=also)


def _row(r: AccessRecord) -> dict[str, Any]:
    d = r._asdict()
    d["time"] = fmt_time(r.ts_ms)
    return d


class _Writer:
    def __init__(self, fmt: str, stream: Any, headers: str = "en", holders: Holders | None = None, fleet: bool = False) -> None:
        self.fmt = fmt
        self.fleet = fleet  # the fleet's copy: a gateway column in the table, each JSON row's chain fields
        self.stream = stream
        self.rows: list[list[str]] = []
        self.holders = holders
        self.csv = csv.writer(stream) if fmt == "csv" else None
        # JSON lines go to the binary stream under a text one, in batches (one write per 1,024 rows).
        self._bin = getattr(stream, "buffer", None) if fmt == "jsonl" else None
        self._lines: list[bytes] = []
        if self.csv is not None:
            cols = ["time", *FIELDS, *(["holder"] if holders is not None else [])]
            self.csv.writerow([ZH_HEADERS.get(c, c) for c in cols] if headers == "zh" else cols)

    def holder(self, r: AccessRecord) -> str:
        """The account that held the hosted address of the record at its time (inventory history)."""
        if self.holders is None:
            return ""
        return self.holders.holder(r.client_ip if r.direction == "out" else r.server_ip, r.ts_ms)

    def write(self, r: AccessRecord, set_aside: str = "", copy: CopyRow | None = None) -> None:
        if self.fmt == "jsonl":
            row = _row(r)
            if self.holders is not None:
                row["holder"] = self.holder(r)
            if set_aside:
                row["set_aside"] = set_aside  # read from a partition set aside as damaged
            if copy is not None:  # the row of the fleet's copy: where it sits in its gateway's chain
                row.update(worker=copy.worker, partition=copy.partition, seq=copy.seq, link=copy.link)
            try:
                line = orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
            except orjson.JSONEncodeError:  # a field not valid UTF-8 (kept as surrogates): as before
                self._drain()
                self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")
                return
            if self._bin is None:
                self.stream.write(line.decode())
                return
            self._lines.append(line)
            if len(self._lines) >= 1024:
                self._drain()
        elif self.csv is not None:
            self.csv.writerow([fmt_time(r.ts_ms), *r, *([self.holder(r)] if self.holders is not None else [])])
        else:
            self.rows.append([*([r.gateway or "-"] if self.fleet else []), fmt_time(r.ts_ms), r.account or "-",
                              *([self.holder(r) or "-"] if self.holders is not None else []),
                              f"{r.client_ip}:{r.client_port}", f"{r.server_ip}:{r.server_port}", r.nat or "-", r.transport,
                              r.kind, r.name or "-", r.verdict or "-", r.action, r.filing_number or "-",
                              f"{r.method} {r.url}".strip() or "-", r.records_version or "-"])

    def _drain(self) -> None:
        if self._lines and self._bin is not None:
            self.stream.flush()  # whatever went through the text layer first
            self._bin.write(b"".join(self._lines))
            self._bin.flush()
        self._lines.clear()

    def close(self) -> None:
        self._drain()
        if self.fmt == "table":
            table(self.rows, [*(["gateway"] if self.fleet else []), "time", "account",
                              *(["holder then"] if self.holders is not None else []), "client", "server",
                              "nat", "proto", "kind", "name", "verdict", "action", "filing no. (备案号)", "request",
                              "records v"])


def _context(args: argparse.Namespace) -> tuple[NatTable | None, Holders | None]:
    """The NAT mappings and the inventory history the config names (each None when it has none)."""
    from beiand.policy.history import HistoryError, Holders, history_dir
    from beiand.policy.nat import NatError, load_nat

    state = getattr(args, "state_dir", None)
    nat_file = getattr(args, "nat", None)
    cfg = config_from(args) if (not state or not nat_file) and (args.config or os.path.exists(DEFAULT_CONFIG)) else None
    nat = None
    path = nat_file or (str(cfg.inventory.nat_file) if cfg is not None and cfg.inventory.nat_file else "")
    if path:
        try:
            nat = load_nat(path)
        except NatError as exc:
            raise CliError(f"--nat {path}: " + "; ".join(exc.problems)) from None
    holders = None
    sdir = Path(state) if state else (cfg.daemon.state_dir if cfg is not None else None)
    if state and not history_dir(Path(state)).is_dir():
        raise CliError(f"--state-dir {state}: no inventory history ({history_dir(Path(state))}): the daemon records one "
                       "at every inventory load")
    if sdir is not None and history_dir(sdir).is_dir():
        try:
            holders = Holders(sdir)
        except HistoryError as exc:
            raise CliError(f"--state-dir {sdir}: {exc}") from None
    return nat, holders


def cmd_query(args: argparse.Namespace) -> int:
    src = records_source(args)
    nat, holders = _context(args)
    q = build_query(args, nat)
    if src.fleet:
        return _query_fleet(args, cast("FleetRecords", src), q, holders)
    assert isinstance(src, LocalRecords)
    st = QueryStats()
    w = _Writer(args.format, sys.stdout, args.headers, holders)
    n = 0
    for r, aside in query_marked(src.directory, q, st):
        w.write(r, aside)
        n += 1
        if args.limit and n >= args.limit:
            break
    w.close()
    sys.stderr.write(f"{n} record(s); {st.partitions_opened} of {st.partitions_total} partition(s) opened, "
                     f"{st.blocks_read} of {st.blocks_total} sealed block(s) read\n")
    for what in st.unreadable:
        sys.stderr.write(f"warning: not read (damaged; `beiand logs verify` reports it): {what}\n")
    for part, k in sorted(st.set_aside.items()):
        sys.stderr.write(f"note: {k} record(s) come from {part}, set aside as damaged (`beiand logs verify` says what "
                         "is damaged); jsonl rows carry \"set_aside\"\n")
    return 0


def _query_fleet(args: argparse.Namespace, src: FleetRecords, q: Query, holders: Holders | None) -> int:
    """``logs query`` from the fleet's copy: every gateway's records in time order, with the gateway."""
    from beiand.sinks.clickhouse import ClickHouseError

    w = _Writer(args.format, sys.stdout, args.headers, holders, fleet=True)
    n = 0
    gateways: set[str] = set()
    rows = src.rows(q)
    try:
        for row in rows:
            w.write(row.record, copy=row)
            gateways.add(row.gateway)
            n += 1
            if args.limit and n >= args.limit:
                break
    except ClickHouseError as exc:
        raise CliError(unreachable(exc)) from None
    finally:
        rows.close()  # (--limit: the response is closed, the counts taken)
    w.close()
    st = src.last
    sys.stderr.write(f"{n} record(s) from {len(gateways)} gateway(s); {src.where}: {st.rows} row(s) read"
                     + (f", {st.duplicates} held twice (returned once)" if st.duplicates else "")
                     + "; `beiand logs verify --clickhouse` checks the copy against the anchors\n")
    return 0


def _new_export(args: argparse.Namespace) -> tuple[Path, Path, str]:
    dest = Path(args.out)
    if dest.exists() and any(dest.iterdir()):
        raise CliError(f"--out {dest}: exists and is not empty (an export is never written over another)")
    dest.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    name = "records.csv" if args.format == "csv" else "records.jsonl"
    return dest, dest / name, name


def _manifest(args: argparse.Namespace, q: Query, holders: Holders | None, dest: Path, path: Path, name: str, n: int,
              lo: int, hi: int, chain: dict[str, Any], source: str) -> int:
    """Writes manifest.json (and its SHA-256) beside the records: counts, range, SHA-256s, the chain."""
    manifest = {
        "generator": "beiand logs export", "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "legal_basis": "互联网信息服务管理办法 (State Council Order 292) art. 14: access records kept 60 days, provided on lawful request",
        "source": source,
        "query": {f.name: (str(getattr(q, f.name)) if getattr(q, f.name) is not None else None) for f in dataclasses.fields(q)},
        "headers": args.headers, "holder": "the account holding the hosted address at each record's time (inventory history)"
        if holders is not None else None,
        "records": n, "first_record": fmt_time(lo) if n else None, "last_record": fmt_time(hi) if n else None,
        "files": [{"name": name, "bytes": path.stat().st_size, "records": n, "sha256": file_sha256(path), "format": args.format}],
        "chain": chain,
    }
    mpath = dest / "manifest.json"
    fd = os.open(mpath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=2)
    (dest / "manifest.json.sha256").write_text(f"{file_sha256(mpath)}  manifest.json\n")
    out(f"exported {n} record(s) to {path}; manifest {mpath} (SHA-256 of every file, the chain heads)")
    if not chain["verified"]:
        sys.stderr.write("warning: some of the chains the records come from failed verification: see the manifest\n")
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    src = records_source(args)
    nat, holders = _context(args)
    q = build_query(args, nat)
    if src.fleet:
        return _export_fleet(args, cast("FleetRecords", src), q, holders)
    assert isinstance(src, LocalRecords)
    d = src.directory
    dest, path, name = _new_export(args)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    lo = hi = 0
    n = 0
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        w = _Writer("csv" if args.format == "csv" else "jsonl", f, args.headers, holders)
        for r in query(d, q):
            w.write(r)
            n += 1
            lo = r.ts_ms if not lo or r.ts_ms < lo else lo
            hi = max(hi, r.ts_ms)
        w.close()
    # The chain heads the records fall under, checked now: the receiver can compare them with
    # heads anchored elsewhere (metrics, log lines) at the time.
    rep = verify(d, key=_key(args), since_ms=q.since_ms - 86_400_000)
    parts = [{"partition": p.partition, "state": p.state, "records": p.records, "prev_head": p.prev_head, "head": p.head,
              "min_time": fmt_time(p.min_ts) if p.min_ts else None, "max_time": fmt_time(p.max_ts) if p.max_ts else None,
              "verified": not p.problems, "problems": p.problems}
             for p in rep.partitions if p.records and p.max_ts >= q.since_ms and p.min_ts < q.until_ms]
    chain = {"algorithm": "HMAC-SHA-256" if args.key_file else "SHA-256",
             "definition": "h_i = H(h_{i-1} || line_i), per worker, across partitions; see docs/access-log.md",
             "partitions": parts, "verified": all(p["verified"] for p in parts)}
    return _manifest(args, q, holders, dest, path, name, n, lo, hi, chain, f"access log {d} (the embedded chained log)")


def _export_fleet(args: argparse.Namespace, src: FleetRecords, q: Query, holders: Holders | None) -> int:
    """``logs export`` from the fleet's copy: the records, and per gateway and worker the seq range
    and the links of the first and last record exported, with the chain of the partitions they lie
    in recomputed from the copy and checked against the anchors (as ``verify --clickhouse`` does)."""
    from beiand.accesslog.copy import verify_copy
    from beiand.sinks.clickhouse import ClickHouseError

    dest, path, name = _new_export(args)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    lo = hi = 0
    n = 0
    by: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            w = _Writer("csv" if args.format == "csv" else "jsonl", f, args.headers, holders, fleet=True)
            for row in src.rows(q):
                r = row.record
                w.write(r, copy=row)
                n += 1
                lo = r.ts_ms if not lo or r.ts_ms < lo else lo
                hi = max(hi, r.ts_ms)
                e = by.get((row.gateway, row.worker))
                if e is None:
                    e = by[(row.gateway, row.worker)] = {"records": 0, "first": row, "last": row, "partitions": set()}
                e["records"] += 1
                e["first"] = row if row.seq < e["first"].seq else e["first"]
                e["last"] = row if row.seq > e["last"].seq else e["last"]
                e["partitions"].add(row.partition)
            w.close()
        # The partitions the records lie in, whole, recomputed from the copy against the anchors.
        parts = {k: set(e["partitions"]) for k, e in by.items()}
        key = _key(args)
        rows = src.partition_rows(parts, q.since_ms - DAY_MS, q.until_ms + DAY_MS)
        anchors = [a for a in src.reader.anchors() if a.partition in parts.get((a.gateway, a.worker), ())]
        rep = verify_copy(rows, anchors, key=key)
    except ClickHouseError as exc:
        raise CliError(unreachable(exc)) from None
    workers = []
    for (g, wk), e in sorted(by.items()):
        first, last = e["first"], e["last"]
        held = rep.workers.get((g, wk))
        problems = [p for p in rep.problems if p.startswith(f"gateway {g} worker {wk} ")]
        workers.append({"gateway": g, "worker": wk, "records": e["records"],
                        "first": {"seq": first.seq, "partition": first.partition, "pos": first.pos, "link": first.link,
                                  "time": fmt_time(first.record.ts_ms)},
                        "last": {"seq": last.seq, "partition": last.partition, "pos": last.pos, "link": last.link,
                                 "time": fmt_time(last.record.ts_ms)},
                        "partitions": sorted(e["partitions"]),
                        "checked": {"rows": held.rows if held else 0, "first_seq": held.first_seq if held else 0,
                                    "last_seq": held.last_seq if held else 0, "head": held.head if held else ""},
                        "verified": not problems, "problems": problems})
    chain = {"algorithm": "HMAC-SHA-256" if args.key_file else "SHA-256",
             "definition": "h_i = H(h_{i-1} || line_i), per gateway and worker, across partitions; each row of the copy "
                           "carries its link h_i; see docs/access-log.md",
             "store": "clickhouse", "workers": workers, "anchors_checked": rep.anchors_checked, "duplicates": rep.duplicates,
             "verified": rep.ok and all(x["verified"] for x in workers),
             "problems": [p for p in rep.problems if not any(p in x["problems"] for x in workers)]}
    return _manifest(args, q, holders, dest, path, name, n, lo, hi, chain,
                     f"{src.where} (the fleet's copy; each gateway's local chained log is the evidence of record)")


def _key(args: argparse.Namespace) -> bytes | None:
    if not getattr(args, "key_file", None):
        return None
    try:
        return Path(args.key_file).read_bytes().strip()
    except OSError as exc:
        raise CliError(f"--key-file {args.key_file}: {exc.strerror}") from None


def cmd_verify_clickhouse(args: argparse.Namespace) -> int:
    """Recompute every gateway's chain from the ClickHouse copy (issue 27), against its anchors."""
    from beiand.accesslog.copy import verify_copy
    from beiand.sinks.clickhouse import ClickHouseError

    reader = clickhouse_records(args).reader
    since = parse_time(args.since, "--since") if args.since else 0
    until = parse_time(args.until, "--until") if args.until else 0
    gateways = tuple(args.gateway or ())
    first = datetime.fromtimestamp(since // 1000, UTC).strftime("%Y-%m-%d") if since else ""
    last = datetime.fromtimestamp(until // 1000, UTC).strftime("%Y-%m-%d") + "~" if until else "~"
    try:
        anchors = [a for a in reader.anchors() if first <= a.partition < last and (not gateways or a.gateway in gateways)]
        rep = verify_copy(reader.rows(since, until, gateways), anchors, key=_key(args))
        unchained = reader.unchained(since, until, gateways)
    except ClickHouseError as exc:
        raise CliError(f"--clickhouse {exc}") from None
    where = f"{reader.database}.{reader.table} at {reader.url}"
    if args.json:
        out(json.dumps({"ok": rep.ok, "problems": rep.problems, "duplicates": rep.duplicates, "unchained": unchained,
                        "anchors": len(anchors), "anchors_checked": rep.anchors_checked,
                        "workers": [{"gateway": g, "worker": w, **dataclasses.asdict(v)}
                                    for (g, w), v in sorted(rep.workers.items())]}, ensure_ascii=False, indent=2))
    else:
        table([[g, w, v.rows, v.first_seq, v.last_seq, v.head[:16]] for (g, w), v in sorted(rep.workers.items())],
              ["gateway", "worker", "rows", "first seq", "last seq", "chain head"])
        for prob in rep.problems:
            out(f"FAILED: {prob}")
        if rep.duplicates:
            out(f"note: {rep.duplicates} row(s) held twice, equal (a batch sent again; ReplacingMergeTree folds them)")
        if unchained:
            out(f"note: {unchained} row(s) without chain fields (copied before issue 27): not verifiable")
        out(f"checked {where} against {len(anchors)} anchor(s) ({rep.anchors_checked} matched a row)")
        out("verify --clickhouse: ok" if rep.ok else f"verify --clickhouse: {len(rep.problems)} problem(s)")
    return 0 if rep.ok else 1


def cmd_verify(args: argparse.Namespace) -> int:
    if args.clickhouse is not None:
        return cmd_verify_clickhouse(args)
    anchors = None
    if args.anchors:
        try:
            anchors = read_anchors(Path(args.anchors))
        except AnchorError as exc:
            raise CliError(f"--anchors {exc}") from None
    # With anchors, a directory deleted whole is a finding, not a usage error.
    d = log_dir(args, may_be_missing=anchors is not None)
    since = parse_time(args.since, "--since") if args.since else 0
    rep = verify(d, key=_key(args), since_ms=since, anchors=anchors)
    if args.json:
        out(json.dumps({"ok": rep.ok, "problems": rep.all_problems(), "acknowledged": rep.acknowledged, "heads": rep.heads,
                        "anchors": len(anchors) if anchors is not None else None,
                        "partitions": [p.__dict__ for p in rep.partitions]}, ensure_ascii=False, indent=2))
    else:
        table([[p.partition, p.state, p.records, p.head[:16],
                "ok" if not p.problems else "FAILED"] for p in rep.partitions],
              ["partition", "state", "records", "chain head", "check"])
        for prob in rep.all_problems():
            out(f"FAILED: {prob}")
        for ack in rep.acknowledged:
            out(f"acknowledged: {ack}")
        if anchors is not None:
            out(f"checked against {len(anchors)} anchor(s) from {args.anchors}")
        for w, h in sorted(rep.heads.items()):
            out(f"current chain head {w}: {h}")
        out("verify: ok" if rep.ok else f"verify: {len(rep.all_problems())} problem(s)")
    return 0 if rep.ok else 1


def cmd_acknowledge(args: argparse.Namespace) -> int:
    """Record (in heads.log) that an operator investigated damage: verify stops failing on it."""
    d = log_dir(args)
    reason = (args.reason or "").strip()
    if len(reason) < 3:
        raise CliError("--reason: say what was found and done (it is kept in heads.log with the acknowledgement)")
    part = args.partition.strip().removesuffix(".damaged")
    events = read_heads(d)
    damaged = {part_name(p) for p in partition_paths(d) if p.suffix == ".damaged"}
    rep = verify(d)
    missing = {m.split(":", 1)[0] for m in rep.problems if "missing" in m}
    if part not in damaged and part not in missing:
        known = sorted(damaged | missing)
        raise CliError(f"{args.partition}: not a damaged or missing partition of {d}"
                       + (f" (those are: {', '.join(known)})" if known else " (verify reports none)"))
    if any(e.get("event") == "acknowledge" and e.get("partition") == part for e in events):
        out(f"{part}: already acknowledged; recording this reason too")
    user = os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.getuid())
    append_heads(d, {"event": "acknowledge", "partition": part, "reason": reason, "by": user, "ts_ms": int(time.time() * 1000)})
    out(f"{part}: acknowledged in {d / 'heads.log'}; `beiand logs verify` lists it as acknowledged, no longer as a problem")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    d = log_dir(args)
    st = stats(d)
    info = {"directory": str(d), "partitions": st.partitions, "open": st.open, "sealed": st.sealed, "damaged": st.damaged,
            "records": st.records, "bytes": st.bytes, "oldest_record": fmt_time(st.oldest_ms) if st.records else None,
            "newest_record": fmt_time(st.newest_ms) if st.records else None, "days_held": round(st.days_held, 2),
            "workers": st.workers,
            "bytes_per_sealed_record": round(st.sealed_bytes / st.sealed_records, 2) if st.sealed_records else None}
    if args.json:
        out(json.dumps(info, ensure_ascii=False, indent=2))
    else:
        table([[k, v] for k, v in info.items()], ["", "value"])
        if st.records and st.days_held < 60:
            out(f"note: {st.days_held:.1f} days held; Order 292 art. 14 requires 60 days once the log is that old")
    return 0


def add_parsers(sub: Any) -> None:
    lp = sub.add_parser("logs", help="the access log (Order 292 art. 14): query, export, verify, acknowledge, stats")
    lsub = lp.add_subparsers(dest="logs_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--log-dir", metavar="DIR", help="the access-log directory (default: accesslog.directory of the config); "
                       "query and export then read it, not ClickHouse")
        p.add_argument("--config", metavar="FILE", help=f"config to take the directory from (default {DEFAULT_CONFIG})")

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--since", metavar="TIME", help="from (2026-11-01, 2026-11-01T08:00+08:00, epoch, or 7d / 24h ago)")
        p.add_argument("--until", metavar="TIME", help="until (exclusive); default now")
        p.add_argument("--at", metavar="TIME", help="the time a request names; with --window (default 5m) either side of it")
        p.add_argument("--window", metavar="DURATION", help="with --at: 30s, 5m, 2h, 1d either side (default 5m)")
        g = p.add_mutually_exclusive_group()
        g.add_argument("--name", metavar="NAME", help="exactly this name")
        g.add_argument("--suffix", metavar="DOMAIN", help="this name and every name below it")
        p.add_argument("--client", metavar="IP/CIDR")
        p.add_argument("--server", metavar="IP/CIDR", help="server address (either side of a NAT mapping)")
        p.add_argument("--port", metavar="PORT", help="server port")
        p.add_argument("--proto", metavar="PROTO", help="tcp or udp")
        p.add_argument("--url-prefix", metavar="PATH", help="HTTP requests whose URL path starts with this")
        p.add_argument("--account", metavar="ACCOUNT", help="customer account (from the inventory)")
        p.add_argument("--verdict", metavar="VERDICT", help="filed, unfiled, mismatch, inactive, exempt, not-hosted; "
                       "unnamed: connection records no name came for")
        p.add_argument("--headers", choices=["en", "zh"], default="en", help="CSV header row: field names or Chinese (时间, 源地址...)")
        p.add_argument("--state-dir", metavar="DIR", help="where the inventory history is kept (default: daemon.state_dir "
                       "of the config): adds the account that held the address at each record's time")
        p.add_argument("--nat", metavar="FILE", help="NAT mapping feed (default: nat.file of the config): a server on "
                       "either side of a mapping also finds the other")

    q = lsub.add_parser("query", help="matching records (a lawful request): from ClickHouse across every gateway when it is "
                        "configured, else (or with --local) from this gateway's log")
    common(q)
    filters(q)
    store_options(q)
    q.add_argument("--format", choices=["table", "jsonl", "csv"], default="table")
    q.add_argument("--limit", type=int, default=0, help="stop after N records")
    q.set_defaults(func=cmd_query)

    e = lsub.add_parser("export", help="matching records + a manifest (counts, range, SHA-256s, chain heads; from "
                        "ClickHouse: per gateway and worker the seq range and the links of the first and last record)")
    common(e)
    filters(e)
    store_options(e)
    e.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    e.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    e.add_argument("--key-file", metavar="FILE", help="the HMAC key, when the log is keyed")
    e.set_defaults(func=cmd_export)

    v = lsub.add_parser("verify", help="recompute the hash chains; exit 1 on any problem")
    common(v)
    v.add_argument("--since", metavar="TIME", help="check partitions from this day on (links are still checked)")
    v.add_argument("--key-file", metavar="FILE", help="the HMAC key, when the log is keyed")
    v.add_argument("--anchors", metavar="FILE", help="checkpoints kept off the machine (JSON lines as logged: "
                   "`access log anchor {...}`); a partition they name that is gone or shorter is reported")
    v.add_argument("--clickhouse", nargs="?", const="", metavar="URL",
                   help="verify the fleet's copy instead: recompute every gateway's chain from the ClickHouse rows and "
                   "check it against the anchors table (URL default: accesslog.clickhouse.url of the config)")
    v.add_argument("--until", metavar="TIME", help="with --clickhouse: check partitions up to this day")
    v.add_argument("--gateway", action="append", metavar="GATEWAY",
                   help="with --clickhouse: only this gateway's rows (repeat for more)")
    v.add_argument("--database", metavar="DB", help="with --clickhouse: the database (default: the config's, or beiand)")
    v.add_argument("--table", metavar="TABLE", help="with --clickhouse: the table (default: the config's, or access_log)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    a = lsub.add_parser("acknowledge", help="record that a damaged (set-aside) or missing partition was investigated")
    common(a)
    a.add_argument("partition", metavar="PARTITION", help="as verify names it, e.g. 2026-11-23/w0.001")
    a.add_argument("--reason", required=True, help="what was found and done (kept in heads.log)")
    a.set_defaults(func=cmd_acknowledge)

    s = lsub.add_parser("stats", help="partitions, records, bytes, oldest and newest record, days held")
    common(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)
