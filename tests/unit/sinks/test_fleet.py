"""Reading the fleet's copy (issue 27, part B): the SQL built from a query, the rows read back.

The SQL is a pre-filter: these tests hold that it is well-formed whatever the user typed (every
value inside a literal that ClickHouse reads back as the same bytes), that a server+port+time
request reads the table's key range, and that the rows come back as the local reader would
answer (``Query.match`` decides). tests/integration/test_fleet.py runs the same queries against
a real ClickHouse and compares them with the local log's answers.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from beiand.accesslog.format import encode
from beiand.accesslog.reader import Query
from beiand.model import AccessRecord
from beiand.sinks.clickhouse import ClickHouseReader
from beiand.sinks.fleet import (
    FleetRecords,
    _ip_cond,
    _like_prefix,
    check_url,
    select_activity,
    select_records,
    select_summaries,
    sql_str,
)
from tests.unit.accesslog.helpers import DAY0, rec

SURROGATES = st.sampled_from([chr(0xDC80 + i) for i in range(128)])
TEXT = st.text(st.one_of(st.characters(), SURROGATES, st.sampled_from("'\\%_\n\t\x00")), max_size=40)


def as_sent(text: str) -> bytes:
    """The bytes ClickHouse should read from ``sql_str(text)``: UTF-8, a byte kept as a surrogate
    (surrogateescape) as itself, any other lone surrogate as U+FFFD."""
    out = bytearray()
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(o - 0xDC00)
        elif 0xD800 <= o <= 0xDFFF:
            out += "\ufffd".encode()
        else:
            out += ch.encode()
    return bytes(out)


def unquote(sql: str, at: int = 0) -> tuple[bytes, int]:
    """A ClickHouse string literal starting at ``sql[at]`` (as its lexer reads one): its bytes and
    the index after it. Raises ValueError on a malformed literal."""
    if sql[at] != "'":
        raise ValueError("not a literal")
    out = bytearray()
    i = at + 1
    while i < len(sql):
        c = sql[i]
        if c == "'":
            return bytes(out), i + 1
        if c == "\\":
            n = sql[i + 1]
            if n == "x":
                out.append(int(sql[i + 2:i + 4], 16))
                i += 4
                continue
            if n not in "'\\":
                raise ValueError(f"escape \\{n} is not one sql_str writes")
            out += n.encode()
            i += 2
            continue
        if ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF:
            raise ValueError("a raw control character or surrogate in the SQL")
        out += c.encode()
        i += 1
    raise ValueError("unterminated literal")


def outside_literals(sql: str) -> tuple[str, list[bytes]]:
    """The SQL with every literal replaced by ``?``, and the literals' bytes."""
    rest: list[str] = []
    lits: list[bytes] = []
    i = 0
    while i < len(sql):
        if sql[i] == "'":
            b, i = unquote(sql, i)
            lits.append(b)
            rest.append("?")
        else:
            rest.append(sql[i])
            i += 1
    return "".join(rest), lits


@given(TEXT)
@example("it's a \\ test")
@example("\udcff\x00'")
@example("\udd00")
def test_a_literal_reads_back_as_the_same_bytes(text: str) -> None:
    lit = sql_str(text)
    got, end = unquote(lit)
    assert end == len(lit)
    assert got == as_sent(text)
    lit.encode("utf-8")  # plain UTF-8: sent as the body of an HTTP request


@given(st.text(max_size=20), st.text(max_size=20))
def test_a_like_prefix_matches_every_string_that_starts_with_it(prefix: str, tail: str) -> None:
    pattern = _like_prefix(prefix) + "%"
    assert "\\" not in pattern
    rx = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    assert re.fullmatch(rx, prefix + tail, re.S)


@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1))
def test_an_ipv4_prefix_is_the_range_the_local_reader_tests(base: int, plen: int, ip: int) -> None:
    net = ipaddress.ip_network((base, plen), strict=False)
    cond = _ip_cond("client_ip", net)
    assert cond is not None
    addr = ipaddress.ip_address(ip)
    if net.num_addresses == 1:
        assert cond == f"client_ip = '{net.network_address}'"
    else:
        lo, hi = map(int, re.findall(r"BETWEEN (\d+) AND (\d+)", cond)[0])
        assert (lo <= ip <= hi) == (addr in net)


def test_an_ipv6_prefix_is_left_to_the_local_match() -> None:
    assert _ip_cond("client_ip", ipaddress.ip_network("2001:db8::/32")) is None
    assert _ip_cond("client_ip", ipaddress.ip_network("2001:db8::1/128")) == "client_ip = '2001:db8::1'"


NETS = st.one_of(st.none(), st.sampled_from(["198.51.100.7/32", "198.51.100.0/24", "2001:db8::7/128", "2001:db8::/48",
                                              "0.0.0.0/0"]).map(lambda t: ipaddress.ip_network(t)))
QUERIES = st.builds(
    Query, since_ms=st.integers(0, 2**41), until_ms=st.integers(2**41, 2**62), name=st.sampled_from(["", "www.example.cn"]),
    suffix=st.sampled_from(["", "example.cn", "a_b.cn"]), client=NETS, server=NETS, account=TEXT, verdict=TEXT,
    port=st.one_of(st.none(), st.integers(0, 65535)), proto=st.sampled_from(["", "tcp", "udp"]), url_prefix=TEXT,
    also=st.lists(st.tuples(NETS.filter(lambda n: n is not None), st.one_of(st.none(), st.integers(0, 65535))),
                  max_size=2).map(tuple))
ALLOWED = re.compile(r"^[A-Za-z0-9_ (),.=<>!*`?%'+-]*$")


@given(QUERIES, st.lists(TEXT, max_size=3))
def test_any_query_gives_well_formed_sql_with_every_value_in_a_literal(q: Query, gateways: list[str]) -> None:
    sql = select_records(q, "beiand.access_log", gateways)
    rest, lits = outside_literals(sql)
    assert ALLOWED.match(rest), rest
    depth = 0
    for c in rest:
        depth += {"(": 1, ")": -1}.get(c, 0)
        assert depth >= 0
    assert depth == 0
    for v in (q.account, q.verdict, *gateways):
        if v:
            assert as_sent(v) in lits
    assert rest.endswith("ORDER BY ts_ms, gateway, worker, seq FORMAT TabSeparated")


def test_the_lawful_request_is_a_range_read_of_the_key_and_a_second_select_for_nat() -> None:
    """``--server 203.0.113.7 --port 22 --at … --window 5m``: the first SELECT names only the key's
    columns (server_ip, server_port, then ts_ms); the records whose NAT side is that endpoint come
    from a second one that leaves out what the first returned."""
    t = DAY0 + 8 * 3_600_000
    q = Query(t - 300_000, t + 300_001, server=ipaddress.ip_network("203.0.113.7/32"), port=22)
    sql = select_records(q, "beiand.access_log")
    first, second = sql.split(" UNION ALL ")
    where = first.split(" WHERE ", 1)[1]
    assert where.startswith("((server_ip = '203.0.113.7' AND server_port = 22)) AND ts_ms >= ")
    assert f"ts_ms < {t + 300_001}" in where and "day >= toDate('2026-09-21') AND day <= toDate('2026-09-21')" in where
    assert "nat = '203.0.113.7:22'" in second and "AND NOT ((server_ip = '203.0.113.7' AND server_port = 22))" in second


def test_summaries_read_final_hosted_servers_only() -> None:
    sql = select_summaries(DAY0, DAY0 + 86_400_000, "beiand.access_log", ("gw-a",), final=True)
    assert "FROM beiand.access_log WHERE" in sql and "direction != 'out'" in sql and "gateway IN ('gw-a')" in sql
    assert "if(kind = 'conn', 0, server_port)" in sql
    # issue 30: a record held twice until the ReplacingMergeTree merges is counted once by its identity,
    # not by reading FINAL (six times slower over a day of the fleet)
    assert "FINAL" not in sql and "uniqExact(server_port, ts_ms, gateway, worker, seq)" in sql
    assert "count()" in select_summaries(DAY0, DAY0 + 1, "beiand.access_log", final=False)
    act = select_activity(DAY0, DAY0 + 86_400_000, "beiand.access_log", (), final=True)
    assert "FINAL" not in act and "uniqExact(server_port, ts_ms, gateway, worker, seq)" in act and "name != ''" in act
    assert "verdict IN ('mismatch', 'unfiled')" in select_summaries(DAY0, DAY0 + 1, "t", verdicts={"unfiled", "mismatch"})


@pytest.mark.parametrize(("url", "why"), [
    ("http://127.0.0.1:8123", ""), ("https://ch.example:8443/", ""), ("http://[::1]:8123", ""),
    ("ftp://ch:21", "expected http://host:8123"), ("127.0.0.1:8123", "expected http://host:8123"),
    ("http://:8123", "no host"), ("http://ch:port", "not a URL"), ("http://ch:99999", "not a URL"),
    ("http://ch:8123/?database=x", "no query string"),
])
def test_a_malformed_url_is_refused_with_the_reason(url: str, why: str) -> None:
    got = check_url(url)
    assert (why in got and got) if why else got == ""


# -- rows read back (a stand-in for the HTTP reading) ------------------------------------------


class Canned(FleetRecords):
    """FleetRecords over rows held here: what ClickHouse would return for a query that asks for
    every row (the SQL is a pre-filter; the rows are judged by Query.match)."""

    def __init__(self, rows: list[tuple[int, str, int, int, str, AccessRecord]]) -> None:
        super().__init__(ClickHouseReader("http://127.0.0.1:1"))
        self.canned = rows
        self.sql: list[str] = []
        self._lookups = {}  # no lookup tables (test_a_name_or_a_client_alone_reads_the_keys_from_its_lookup_table)

    def _lines(self, sql: str) -> Iterator[bytes]:
        self.sql.append(sql)
        for worker, part, seq, pos, link, r in sorted(self.canned, key=lambda x: (x[5].ts_ms, x[5].gateway, x[0], x[2])):
            yield b"%d\t%s\t%d\t%d\t%s\t" % (worker, part.encode(), seq, pos, link.encode()) + encode(r)


def _rows(n: int) -> list[tuple[int, str, int, int, str, AccessRecord]]:
    out: list[tuple[int, str, int, int, str, AccessRecord]] = []
    for gw in ("gw-a", "gw-b", "gw-c"):
        for i in range(n):
            r = rec(i, gateway=gw, nat="203.0.113.9:8443" if i % 4 == 0 else "", account="it's \\ odd\t" if i % 6 == 0 else f"c{i % 3}")
            out.append((i % 2, "2026-09-21/w0", i + 1, i + 1, f"{i:064x}", r))
    return out


QUERIES_ON_ROWS = st.builds(
    Query, since_ms=st.sampled_from([0, DAY0 + 5000]), until_ms=st.sampled_from([2**62, DAY0 + 40_000]),
    suffix=st.sampled_from(["", "example1.cn", "cn"]), server=st.sampled_from([None, ipaddress.ip_network("198.51.100.2/32"),
                                                                                ipaddress.ip_network("203.0.113.9/32")]),
    port=st.sampled_from([None, 443, 8443]), account=st.sampled_from(["", "c1", "it's \\ odd\t"]),
    verdict=st.sampled_from(["", "unfiled"]))


@given(QUERIES_ON_ROWS)
def test_the_rows_returned_are_those_the_local_match_accepts_in_time_order(q: Query) -> None:
    rows = _rows(30)
    src = Canned(rows)
    got = list(src.query(q))
    want = sorted((r for *_, r in rows if q.match(r)), key=lambda r: (r.ts_ms, r.gateway))
    assert sorted(got, key=lambda r: (r.ts_ms, r.gateway, r.client_port)) == \
        sorted(want, key=lambda r: (r.ts_ms, r.gateway, r.client_port))
    assert [r.ts_ms for r in got] == sorted(r.ts_ms for r in got)
    assert src.last.matched == len(got)


def test_a_row_held_twice_is_returned_once() -> None:
    rows = _rows(5)
    src = Canned(rows + rows[:2])
    got = list(src.rows(Query()))
    assert len(got) == 15 and src.last.duplicates == 2 and src.last.rows == 17
    assert len({(r.gateway, r.worker, r.seq) for r in got}) == 15


def test_a_scope_of_gateways_is_in_every_select() -> None:
    src = Canned([])
    src.gateways = ("gw-a", "gw-b")
    list(src.query(Query()))
    src._final = True
    src.summaries(0, 2**62)
    assert all("gateway IN ('gw-a', 'gw-b')" in s for s in src.sql) and len(src.sql) == 2


def test_a_name_or_a_client_alone_reads_the_keys_from_its_lookup_table() -> None:
    """Issue 27's bar (a name over 60 days in <= 2 s): with lookup tables, a name without a
    server endpoint asks the lookup table for the rows' keys, so the table is
    read by its primary key; with an endpoint, or without lookup tables, the SQL is as before."""
    lookups = {"name": "beiand.access_log_by_name", "client_ip": "beiand.access_log_by_client"}
    q = Query(DAY0, DAY0 + 60 * 86_400_000, name="www.example.cn")
    sql = select_records(q, "beiand.access_log", ("gw-1",), lookups=lookups)
    assert ("AND (server_ip, server_port, ts_ms) IN (SELECT server_ip, server_port, ts_ms FROM beiand.access_log_by_name "
            f"WHERE name = 'www.example.cn' AND ts_ms >= {DAY0} AND ts_ms < {DAY0 + 60 * 86_400_000} AND day >= "
            "toDate('2026-09-21') AND day <= toDate('2026-11-19') AND gateway IN ('gw-1'))") in sql
    assert "name = 'www.example.cn'" in sql.split(" IN (SELECT")[0]  # the table's own condition stays
    assert select_records(q, "beiand.access_log") == select_records(q, "beiand.access_log", lookups={})
    # A client's rows lie one a granule over the whole table: the IN reads longer than the scan (18.16, measured).
    c = select_records(Query(DAY0, DAY0 + 1, client=ipaddress.ip_network("10.0.0.7")), "t", lookups=lookups)
    assert "_by_client" not in c
    lawful = Query(DAY0, DAY0 + 1, name="www.example.cn", server=ipaddress.ip_network("203.0.113.7"), port=22)
    assert "_by_name" not in select_records(lawful, "t", lookups=lookups)  # the key range read already


def test_an_answer_cut_short_is_an_error_never_a_row() -> None:
    """Review of issue 30, F13: TabSeparated ends every row with a newline; a last line without one
    is an answer that broke off (or an error ClickHouse wrote last): ClickHouseError, not a row."""
    import http.server
    import threading

    from beiand.sinks.clickhouse import ClickHouseError, ClickHouseReader
    from beiand.sinks.fleet import FleetRecords

    bodies = [b"a\t1\nb\t2\n", b"a\t1\nb\t", b"a\t1\nCode: 241. DB::Exception: Memory limit exceeded"]

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = bodies.pop(0)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        f = FleetRecords(ClickHouseReader(f"http://127.0.0.1:{srv.server_address[1]}"))
        assert list(f._lines("SELECT 1")) == [b"a\t1", b"b\t2"]
        with pytest.raises(ClickHouseError, match="broke off"):
            list(f._lines("SELECT 1"))
        with pytest.raises(ClickHouseError, match="Memory limit"):
            list(f._lines("SELECT 1"))
    finally:
        srv.shutdown()
        srv.server_close()
