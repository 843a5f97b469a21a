"""Reading the fleet's copy of the access log in ClickHouse (issue 27, part B).

:class:`FleetRecords` is the ClickHouse :class:`~beiand.accesslog.source.RecordSource`: the same
:class:`~beiand.accesslog.reader.Query` as the local log (``beiand logs query``'s filters), the
same summaries (the passive audit, DT 8/9), across every gateway that copies into the table, or
only the gateways it is scoped to (the ISMS reports of one house).

The query is pushed into SQL (:func:`select_records`): time, name or suffix, client, account,
verdict, protocol, URL prefix and the server endpoints. The table is ordered by ``(server_ip,
server_port, ts_ms, …)`` (``beiand.sinks.clickhouse.ORDER_BY``), so "who reached this address and
port at that time" is a primary-key range read. A record whose ``nat`` field names the endpoint
(the other side of a NAT mapping, as the local query matches it) comes from a second SELECT
(``UNION ALL``): an ``OR`` with a column outside the key would turn the range read into a scan of
the days asked. Rows come back in time order.

The SQL is a pre-filter, never the judge: where it cannot say a predicate exactly (an IPv6
prefix, ``LIKE`` wildcards in a name or a path) it asks for more, and every row is then checked
with :meth:`Query.match`, the function the local reader uses, so both stores answer alike.
A record held twice (a batch sent again before ClickHouse merged the two) is returned once.
"""

from __future__ import annotations

import http.client
import ipaddress
import urllib.parse
from collections.abc import Collection, Generator, Iterator, Mapping, Sequence, Set
from datetime import UTC, datetime
from typing import Any, NamedTuple

from beiand.accesslog.copy import CopyRow
from beiand.accesslog.format import DAY_MS
from beiand.accesslog.reader import Query, SummaryKey
from beiand.accesslog.source import UNREPORTED_VERDICTS, Activity
from beiand.model import AccessRecord, endpoint
from beiand.sinks.clickhouse import COLUMNS, ClickHouseError, ClickHouseReader, lookup_tables, tsv_fields

IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network

# A row as read: its chain fields, then the record's own fields (``gateway`` among them: who wrote it).
ROW_COLUMNS = ("worker", "`partition`", "seq", "pos", "link", *COLUMNS)
_INTS = tuple(i for i, c in enumerate(COLUMNS) if c in ("ts_ms", "client_port", "server_port", "packets", "octets"))
_MAX_DAY_MS = 4102444800000  # 2100-01-01: beyond, no day bound (open ends of a query)


def check_url(url: str) -> str:
    """Why ``url`` is not a ClickHouse HTTP interface URL ("" when it is one)."""
    try:
        u = urllib.parse.urlsplit(url.strip())
        port = u.port
    except ValueError as exc:
        return f"not a URL ({exc})"
    if u.scheme not in ("http", "https"):
        return "expected http://host:8123 (or https://): the ClickHouse HTTP interface"
    if not u.hostname:
        return "no host: expected http://host:8123"
    if port == 0:
        return "port 0"
    if u.query or u.fragment:
        return "no query string or fragment: give the database and table with --database/--table"
    return ""


def sql_str(text: str) -> str:
    """``text`` as a ClickHouse string literal: quote and backslash escaped, control characters and
    bytes that are not UTF-8 (kept as surrogates) as ``\\xHH``: the SQL is plain printable UTF-8."""
    out = ["'"]
    for ch in text:
        o = ord(ch)
        if ch in ("'", "\\"):
            out.append("\\" + ch)
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif 0xDC80 <= o <= 0xDCFF:  # surrogateescape: the original byte
            out.append(f"\\x{o - 0xDC00:02x}")
        elif 0xD800 <= o <= 0xDFFF:  # a lone surrogate of no byte: not UTF-8, as the UTF-8 of U+FFFD
            out.append("\\xef\\xbf\\xbd")
        else:
            out.append(ch)
    out.append("'")
    return "".join(out)


def _like_prefix(text: str) -> str:
    """A LIKE pattern matching every string that starts with ``text``, and perhaps others: ``%``,
    ``_`` and ``\\`` become ``_`` (any one character); :meth:`Query.match` decides after."""
    return "".join("_" if c in "%_\\" else c for c in text)


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms // DAY_MS * 86400, UTC).strftime("%Y-%m-%d")


def _ip_cond(col: str, net: IpNet) -> str | None:
    """SQL for ``col`` inside ``net``: exact for a single address and an IPv4 prefix (IPv4
    records are written in dotted quad, as the local reader compares them); None for an IPv6 prefix
    (left to :meth:`Query.match`)."""
    if net.num_addresses == 1:
        return f"{col} = {sql_str(str(net.network_address))}"
    if net.version == 4:
        lo, hi = int(net.network_address), int(net.broadcast_address)
        # (not an IPv4 address: 0, inside 0.0.0.0/8 only, where Query.match then decides)
        return f"IPv4StringToNum({col}) BETWEEN {lo} AND {hi}"
    return None


def day_conditions(since_ms: int, until_ms: int) -> list[str]:
    """The day partitions (``day``: the record's UTC day) a time range touches: only those are read."""
    c = []
    if 0 < since_ms < _MAX_DAY_MS:
        c.append(f"day >= toDate('{_day(since_ms)}')")
    if 0 < until_ms < _MAX_DAY_MS:
        c.append(f"day <= toDate('{_day(until_ms - 1)}')")
    return c


def common_conditions(q: Query, gateways: Sequence[str] = ()) -> list[str]:
    """Everything but the server endpoints, as ANDed conditions."""
    c = [f"ts_ms >= {int(q.since_ms)}", f"ts_ms < {int(q.until_ms)}", *day_conditions(q.since_ms, q.until_ms)]
    if q.name:
        c.append(f"name = {sql_str(q.name)}")
    if q.suffix:
        c.append(f"(name = {sql_str(q.suffix)} OR name LIKE {sql_str('%.' + _like_prefix(q.suffix))})")
    if q.client is not None:
        cc = _ip_cond("client_ip", q.client)
        if cc is not None:
            c.append(cc)
    if q.account:
        c.append(f"account = {sql_str(q.account)}")
    if q.verdict:
        c.append(f"verdict = {sql_str(q.verdict)}")
    if q.proto:
        c.append(f"transport = {sql_str(q.proto)}")
    if q.url_prefix:
        c.append(f"url LIKE {sql_str(_like_prefix(q.url_prefix) + '%')}")
    if gateways:
        c.append(f"gateway IN ({', '.join(sql_str(g) for g in gateways)})")
    return c


def endpoint_conditions(q: Query) -> tuple[str, str] | None:
    """(the records whose server is one of the query's endpoints: key columns only, a range read;
    the records whose ``nat`` field names one of them), or None when the query names no server
    or port. A condition that cannot be said exactly asks for more (``1``)."""
    eps = q.endpoints()
    if not eps:
        return None
    direct: list[str] = []
    nat: list[str] = []
    for net, port in eps:
        side = []
        if net is not None:
            side.append(_ip_cond("server_ip", net) or "1")
        if port is not None:
            side.append(f"server_port = {int(port)}")
        direct.append("(" + " AND ".join(side) + ")")
        if net is not None and net.num_addresses == 1 and port is not None:
            nat.append(f"nat = {sql_str(endpoint(str(net.network_address), port))}")
        elif net is not None and net.num_addresses == 1:
            nat.append(f"nat LIKE {sql_str(_like_prefix(endpoint(str(net.network_address), 0)[:-1]) + '%')}")
        elif port is not None:
            nat.append(f"nat LIKE {sql_str('%:' + str(int(port)))}")
        else:
            nat.append("nat != ''")
    return " OR ".join(direct), " OR ".join(nat)


def lookup_conditions(q: Query, lookups: Mapping[str, str], gateways: Sequence[str] = ()) -> list[str]:
    """A name without a server endpoint: the rows' keys from the lookup table by name
    (``lookups``: column → table, ``beiand.sinks.clickhouse.lookup_tables``),
    so that the table is read by its primary key, not scanned over the days asked (issue 27's
    bar: a name over 60 days of 10M records a day in <= 2 s)."""
    if q.endpoints():
        return []
    # Not a client: its rows lie on as many servers as it reached, one granule (8192 rows) of the
    # table each, in every day; measured on 18.16 (bench/bench_clickhouse_fleet.py) the IN then
    # selects nearly every granule and reads longer than the scan. A client is scanned.
    if not (q.name and "name" in lookups):
        return []
    col, value = "name", q.name
    where = [f"{col} = {sql_str(value)}", f"ts_ms >= {int(q.since_ms)}", f"ts_ms < {int(q.until_ms)}",
             *day_conditions(q.since_ms, q.until_ms)]
    if gateways:
        where.append(f"gateway IN ({', '.join(sql_str(g) for g in gateways)})")
    return [f"(server_ip, server_port, ts_ms) IN (SELECT server_ip, server_port, ts_ms FROM {lookups[col]} "
            f"WHERE {' AND '.join(where)})"]


def select_records(q: Query, table: str, gateways: Sequence[str] = (), columns: Sequence[str] = ROW_COLUMNS,
                   lookups: Mapping[str, str] | None = None) -> str:
    """The SELECT of ``logs query`` for ``q``: rows in time order (then gateway, worker, seq);
    ``lookups`` (column → lookup table) when the table has them."""
    cols = ", ".join(columns)
    common = " AND ".join([*common_conditions(q, gateways), *lookup_conditions(q, lookups or {}, gateways)])
    order = " ORDER BY ts_ms, gateway, worker, seq FORMAT TabSeparated"
    eps = endpoint_conditions(q)
    if eps is None:
        return f"SELECT {cols} FROM {table} WHERE {common}{order}"
    direct, nat = eps
    return (f"SELECT * FROM (SELECT {cols} FROM {table} WHERE ({direct}) AND {common} "
            f"UNION ALL SELECT {cols} FROM {table} WHERE nat != '' AND ({nat}) AND NOT ({direct}) AND {common}){order}")


SUMMARY_KEY = ("name", "server_ip", "if(kind = 'conn', 0, server_port)", "account", "verdict", "kind", "action", "reason",
               "filing_number")


def select_summaries(since_ms: int, until_ms: int, table: str, gateways: Sequence[str] = (), final: bool = False,
                     verdicts: Collection[str] | None = None) -> str:
    """The SELECT of :func:`beiand.accesslog.reader.summaries` over the copy: a hosted server's
    (name, server, port, account, verdict, kind, action, reason, filing) → first, last, hits."""
    conds = [*common_conditions(Query(since_ms, until_ms), gateways), "direction != 'out'"]
    if verdicts is not None:
        conds.append(f"verdict IN ({', '.join(sql_str(v) for v in sorted(verdicts)) or sql_str('')})")
    where = " AND ".join(conds)
    key = ", ".join(SUMMARY_KEY)
    return (f"SELECT {key}, min(ts_ms), max(ts_ms), {_hits(final)} FROM {table} WHERE {where} "
            f"GROUP BY {key} FORMAT TabSeparated")


def _hits(final: bool) -> str:
    """The records of an aggregate. A ReplacingMergeTree may hold a record sent twice until it
    merges: counted once by its identity (the table's key past server_ip, which every aggregate's
    key holds), not by reading ``FINAL`` (six times slower on a day of the fleet: issue 30); the
    first, last and blocked of a group are the same either way."""
    return "uniqExact(server_port, ts_ms, gateway, worker, seq)" if final else "count()"


def select_activity(since_ms: int, until_ms: int, table: str, gateways: Sequence[str] = (), final: bool = False,
                    names: bool = True) -> str:
    """DT 8's aggregates over the copy (:class:`beiand.accesslog.source.Activity`), as
    :func:`beiand.accesslog.source.activity_of` makes them from the summaries: per (name,) server,
    port (0 for ``conn``, as the summaries), protocol (2 for ``quic-sni``) → first, last, records,
    any blocked; not exempt, not outside hosted space, no DNS answers."""
    conds = [*common_conditions(Query(since_ms, until_ms), gateways), "direction != 'out'",
             f"verdict NOT IN ({', '.join(sql_str(v) for v in UNREPORTED_VERDICTS)})", "kind != 'dns-answer'"]
    if names:
        conds.append("name != ''")
    key = ("name, " if names else "") + "server_ip, p, proto"
    return (f"SELECT {key}, min(ts_ms), max(ts_ms), {_hits(final)}, max(action = 'block') FROM (SELECT name, server_ip, "
            f"if(kind = 'conn', 0, server_port) AS p, if(kind = 'quic-sni', 2, 1) AS proto, ts_ms, action, server_port, "
            f"gateway, worker, seq FROM {table} WHERE {' AND '.join(conds)}) GROUP BY {key} FORMAT TabSeparated")


def _fields(line: bytes) -> list[str]:
    """One TabSeparated row as text: split as it is unless ClickHouse escaped something in it."""
    if b"\\" in line:
        return [x.decode("utf-8", "surrogateescape") for x in tsv_fields(line)]
    return line.rstrip(b"\n").decode("utf-8", "surrogateescape").split("\t")


def parse_row(line: bytes) -> CopyRow:
    """One TabSeparated row of :data:`ROW_COLUMNS`."""
    f = tsv_fields(line)
    vals: list[Any] = [v.decode("utf-8", "surrogateescape") for v in f[5:]]
    for i in _INTS:
        vals[i] = int(vals[i])
    r = AccessRecord(*vals)
    return CopyRow(r.gateway, int(f[0]), f[1].decode("utf-8", "surrogateescape"), int(f[2]), int(f[3]), f[4].decode(), r)


class FleetStats(NamedTuple):
    rows: int  # rows ClickHouse returned
    matched: int  # …that the query matched (Query.match)
    duplicates: int  # …held twice (one returned)


class FleetRecords:
    """The fleet's copy in ClickHouse as a :class:`~beiand.accesslog.source.RecordSource`;
    ``gateways`` (empty: all) scopes every read to those gateways' records."""

    def __init__(self, reader: ClickHouseReader, gateways: Sequence[str] = ()) -> None:
        self.reader = reader
        self.gateways = tuple(gateways)
        self.table = f"{reader.database}.{reader.table}"
        self.last = FleetStats(0, 0, 0)
        self._final: bool | None = None
        self._lookups: dict[str, str] | None = None

    @property
    def fleet(self) -> bool:
        return True

    @property
    def where(self) -> str:
        scope = f" (gateways {', '.join(self.gateways)})" if self.gateways else ""
        return f"ClickHouse {self.table} at {self.reader.url}{scope}"

    def _lines(self, sql: str) -> Iterator[bytes]:
        """The answer's lines, streamed (a query may return many rows). An error ClickHouse meets
        after it began to answer comes as the last line (``Code: …``), or the connection breaks."""
        r = self.reader._open(sql)
        try:
            with r:
                rest = b""
                while True:  # read in large pieces: a line at a time costs more than parsing it
                    chunk = r.read(1 << 20)
                    if not chunk:
                        break
                    lines = (rest + chunk).split(b"\n")
                    rest = lines.pop()
                    for line in lines:
                        if line.startswith(b"Code: ") and b"Exception" in line:
                            raise ClickHouseError(f"{self.reader.url}: {line.decode(errors='replace').strip()[:300]}",
                                                  sent=False)
                        yield line  # without its newline (tsv_fields and parse_row take either)
                if rest:  # TabSeparated ends every row with a newline: an answer cut short, or an error written last
                    what = rest.decode(errors="replace").strip()[:300]
                    raise ClickHouseError(f"{self.reader.url}: {what if rest.startswith(b'Code: ') else 'the answer broke off'}",
                                          sent=False)
        except (OSError, http.client.HTTPException) as exc:
            raise ClickHouseError(f"{self.reader.url}: the answer broke off: {exc}", sent=False) from None

    def rows(self, q: Query) -> Generator[CopyRow, None, None]:
        """The rows ``q`` matches, in time order, each once, with their chain fields."""
        rows = matched = dup = 0
        prev: tuple[str, int, int] | None = None
        try:
            for line in self._lines(select_records(q, self.table, self.gateways, lookups=self.lookups())):
                rows += 1
                r = parse_row(line)
                ident = (r.gateway, r.worker, r.seq)
                if r.seq and ident == prev:  # held twice: equal rows sort together
                    dup += 1
                    continue
                prev = ident
                if q.match(r.record):
                    matched += 1
                    yield r
        finally:
            self.last = FleetStats(rows, matched, dup)

    def query(self, q: Query) -> Iterator[AccessRecord]:
        for r in self.rows(q):
            yield r.record

    def lookups(self) -> dict[str, str]:
        """The table's lookup tables by name and client that exist (a table made before them may
        have none yet; on a cluster, each node's ``…_local``, which a shard reads for its gateways)."""
        if self._lookups is None:
            want = lookup_tables(self.reader.table)
            names = [n for t in want.values() for n in (t, f"{t}_local")]
            have = set(self.reader.query(f"SELECT name FROM system.tables WHERE database = {sql_str(self.reader.database)} "
                                         f"AND name IN ({', '.join(sql_str(n) for n in names)})").split())
            self._lookups = {col: f"{self.reader.database}.{n}" for col, t in want.items()
                             for n in (t, f"{t}_local") if n in have}
        return self._lookups

    def final(self) -> bool:
        """Whether the table may hold a record twice until it merges (a ReplacingMergeTree, or the
        cluster's Distributed table over them): the aggregates then count records by identity."""
        if self._final is None:
            engine = self.reader.query(f"SELECT engine FROM system.tables WHERE database = {sql_str(self.reader.database)} "
                                       f"AND name = {sql_str(self.reader.table)}").strip()
            # the cluster's Distributed table reads ReplicatedReplacingMergeTree tables: the same duplicates
            self._final = "ReplacingMergeTree" in engine or engine == "Distributed"
        return self._final

    def summaries(self, since_ms: int, until_ms: int, verdicts: Collection[str] | None = None) -> dict[SummaryKey, list[int]]:
        out: dict[SummaryKey, list[int]] = {}
        for line in self._lines(select_summaries(since_ms, until_ms, self.table, self.gateways, self.final(), verdicts)):
            v = _fields(line)
            out[(v[0], v[1], int(v[2]), v[3], v[4], v[5], v[6], v[7], v[8])] = [int(v[9]), int(v[10]), int(v[11])]
        return out

    def activity(self, since_ms: int, until_ms: int) -> Activity:
        """DT 8's aggregates, computed by ClickHouse (two GROUP BYs): a day of the fleet holds
        millions; the rows come back already as DT 8 counts them."""
        final = self.final()
        ips: dict[tuple[str, int, int], tuple[int, int, int, int]] = {}
        for line in self._lines(select_activity(since_ms, until_ms, self.table, self.gateways, final, names=False)):
            f = line.decode("utf-8", "surrogateescape").split("\t") if b"\\" not in line else _fields(line)
            ips[(f[0], int(f[1]), int(f[2]))] = (int(f[3]), int(f[4]), int(f[5]), int(f[6]))
        names: dict[tuple[str, str, int, int], tuple[int, int, int, int]] = {}
        for line in self._lines(select_activity(since_ms, until_ms, self.table, self.gateways, final, names=True)):
            f = line.decode("utf-8", "surrogateescape").split("\t") if b"\\" not in line else _fields(line)
            names[(f[0], f[1], int(f[2]), int(f[3]))] = (int(f[4]), int(f[5]), int(f[6]), int(f[7]))
        return Activity(ips, names)

    def copy_rows(self, since_ms: int = 0, gateways: Sequence[str] = ()) -> Iterator[CopyRow]:
        """Every chained row of ``gateways`` (default: the scope) in (gateway, worker, seq) order,
        from the day of ``since_ms`` on: what :func:`beiand.accesslog.copy.verify_copy` takes."""
        gws = tuple(gateways) or self.gateways
        where = ["seq > 0"]
        if since_ms:
            where.append(f"day >= toDate('{_day(since_ms)}')")
        if gws:
            where.append(f"gateway IN ({', '.join(sql_str(g) for g in gws)})")
        sql = (f"SELECT {', '.join(ROW_COLUMNS)} FROM {self.table} WHERE {' AND '.join(where)} "
               "ORDER BY gateway, worker, seq FORMAT TabSeparated")
        for line in self._lines(sql):
            yield parse_row(line)

    def partition_rows(self, parts: Mapping[tuple[str, int], Set[str]], since_ms: int = 0,
                       until_ms: int = 2**62) -> Iterator[CopyRow]:
        """The rows of whole log partitions ((gateway, worker) → partition names), each worker's from
        the first row of the first partition to the last of the last (the seq range between them, so
        that a row deleted there is a gap), in (gateway, worker, seq) order: what an export's
        records are checked with. ``since_ms``/``until_ms`` bound the days read (give a day of
        slack: a partition holds the records written on its day)."""
        days = day_conditions(since_ms, until_ms)
        for (g, w), names in sorted(parts.items()):
            if not names:
                continue
            base = " AND ".join([f"gateway = {sql_str(g)}", f"worker = {int(w)}", "seq > 0", *days])
            inside = ", ".join(sql_str(p) for p in sorted(names))
            got = self.reader.query(f"SELECT min(seq), max(seq) FROM {self.table} WHERE {base} AND `partition` IN ({inside}) "
                                    "FORMAT TabSeparated").split()
            lo, hi = (int(got[0]), int(got[1])) if len(got) == 2 else (0, 0)
            if not hi:
                continue
            sql = (f"SELECT {', '.join(ROW_COLUMNS)} FROM {self.table} WHERE {base} AND seq BETWEEN {lo} AND {hi} "
                   "ORDER BY seq FORMAT TabSeparated")
            for line in self._lines(sql):
                yield parse_row(line)
