"""Scale-out: many gateways copy their access log into one ClickHouse table over its HTTP interface.

The local chained log stays the evidence of record (DESIGN.md, Fleet): the sink is handed what
the log has just made durable (``AccessLog(on_commit=ClickHouseSink.committed)``), each record
with its chain fields (the log partition, the worker's record number ``seq``, the position
``pos`` in the partition, and ``link``, the chain head after it), so that ClickHouse holds only
what the log holds and ``beiand logs verify --clickhouse`` can recompute every gateway's chain
from the rows (:mod:`beiand.accesslog.copy`). A record is named by (gateway, worker, seq).

Records are batched (``batch_records`` or ``interval``) in log order; each batch carries an id
derived from its content, and a batch of the copy is also named by its records' numbers
(gateway, worker, first and last seq). While ClickHouse is down (or answers with an error) batches spill, in order, to an
embedded store (one frame per batch); new records keep going to the spill until it has been
replayed in order. Every batch whose fate is unknown (a connection lost after sending, a
replay cut short by a crash) is listed in ``uncertain.ids`` and checked with ``SELECT count()
… WHERE gateway = … AND worker = … AND seq BETWEEN …`` (older rows: ``batch = id``) before it is
sent again; and the table, a ReplacingMergeTree ordered by … gateway, worker, seq, folds a
record that still arrives twice. No record the local log committed is lost or counted twice.

Retention drops whole day partitions older than the retention (never a younger one).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from beiand.accesslog.format import DAY_MS, read_open
from beiand.accesslog.store import (
    RETENTION_FLOOR_DAYS,
    AccessLog,
    AccessLogError,
    Committed,
    LogConfig,
    LogConfigError,
    fsync_dir,
    partition_paths,
)
from beiand.errors import BeiandError
from beiand.model import MetricKey, MetricValues

if TYPE_CHECKING:
    from beiand.accesslog.copy import CopyAnchor, CopyRow, CopyRun

log = logging.getLogger("beiand.accesslog.clickhouse")  # the name operators filter on (before sinks/)

COLUMNS = ("ts_ms", "account", "client_ip", "client_port", "server_ip", "server_port", "transport", "kind", "name", "verdict",
           "action", "filing_number", "gateway", "reason", "nat", "calling_number", "order_no",
           "direction", "method", "url", "packets", "octets", "outcome", "records_version")
# Records spilled before issue 19 carry the first 17 columns only.
COLUMNS_V1 = COLUMNS[:COLUMNS.index("order_no") + 1]
# Records spilled before issue 26 end at octets (no outcome).
COLUMNS_V2 = COLUMNS[:COLUMNS.index("octets") + 1]
# Records without a register version (and every record before issue 35) end at outcome.
COLUMNS_V3 = COLUMNS[:COLUMNS.index("outcome") + 1]
# The chain fields (issue 27): the log partition, the worker's record number, the position in
# the partition (an anchor's count), the chain head after the record (64 hex digits).
CHAIN_COLUMNS = ("`partition`", "seq", "pos", "link")
# Columns added since the table was first documented: added to an existing table at start.
ADDED_COLUMNS = ("direction String", "method String", "url String", "packets UInt64", "octets UInt64", "outcome String",
                 "records_version String",
                 "`partition` String", "seq UInt64", "pos UInt64", "link String")
# The lawful request (Order 292 art. 14): who reached this server address and port at that time.
# Then gateway, worker, seq: a record's identity, so ReplacingMergeTree folds a record sent twice.
ORDER_BY = "(server_ip, server_port, ts_ms, gateway, worker, seq)"
TTL_SINCE = (19, 6)  # ClickHouse versions with table TTL
INDEXES_SINCE = (20, 1)  # …and with data-skipping indexes outside the experimental setting
INDEXES = ("name_idx name TYPE bloom_filter(0.01) GRANULARITY 4", "client_idx client_ip TYPE bloom_filter(0.01) GRANULARITY 4",
           "nat_idx nat TYPE bloom_filter(0.01) GRANULARITY 4")


# Lookups by name and by client (issue 27, the bar: a name over 60 days in <= 2 s): the table is
# ordered by server address, so these would read every row of their days. Each has a small table of
# its own, ordered by (name | client_ip, ts_ms), holding only what finds the row in the main
# table (its sort key) and filled on insert by a materialized view (``TO`` the table): on every
# server version (18.16 has no projections, and its skipping indexes are experimental). A tool
# asks ``WHERE (server_ip, server_port, ts_ms) IN (SELECT … FROM <table>_by_name WHERE name = …)``.
LOOKUPS = {"by_name": "name", "by_client": "client_ip"}
LOOKUP_COLUMNS = ("ts_ms", "server_ip", "server_port", "gateway", "worker", "seq")
_DAY = "toDate(toDateTime(intDiv(ts_ms, 1000)), 'UTC')"


def _lookup_columns(col: str) -> str:
    return (f"{col} String, ts_ms UInt64, server_ip String, server_port UInt16, gateway String, worker UInt16, seq UInt64, "
            "day Date")


def lookup_tables(table: str) -> dict[str, str]:
    """The lookup tables of ``table`` (their names) by the column each one is ordered by."""
    return {col: f"{table}_{suffix}" for suffix, col in LOOKUPS.items()}


def _lookup_ddl(database: str, table: str, source: str, engine: str, ttl: str) -> list[str]:
    """Each lookup table and the view that fills it from ``source`` on every insert."""
    out = []
    for col, lt in lookup_tables(table).items():
        dest = f"{lt}_local" if source.endswith("_local") else lt
        eng = engine.format(name=lt)
        out += [f"""CREATE TABLE IF NOT EXISTS {database}.{dest} ({_lookup_columns(col)})
ENGINE = {eng} PARTITION BY day ORDER BY ({col}, {", ".join(LOOKUP_COLUMNS)}){ttl}""",
                f"CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{lt}_mv TO {database}.{dest} AS SELECT {col}, "
                f"{', '.join(LOOKUP_COLUMNS)}, {_DAY} AS day FROM {database}.{source}"]
    return out


def lookup_backfill(database: str, table: str, day: str, source: str = "") -> list[str]:
    """The statements that put one day's rows of ``table`` (made before its lookup tables) into them."""
    source = source or table
    return [f"INSERT INTO {database}.{dest} ({col}, {', '.join(LOOKUP_COLUMNS)}, day) SELECT {col}, "
            f"{', '.join(LOOKUP_COLUMNS)}, day FROM {database}.{source} WHERE day = toDate('{day}')"
            for col, lt in lookup_tables(table).items()
            for dest in ([f"{lt}_local" if source.endswith("_local") else lt])]


def _columns() -> str:
    return """    ts_ms UInt64, account String, client_ip String, client_port UInt16, server_ip String, server_port UInt16,
    transport String, kind String, name String, verdict String, action String, filing_number String,
    gateway String, reason String, nat String, calling_number String, order_no String,
    direction String, method String, url String, packets UInt64, octets UInt64, outcome String, records_version String,
    `partition` String, seq UInt64, pos UInt64, link String,
    batch String, worker UInt16,
    day Date DEFAULT toDate(toDateTime(intDiv(ts_ms, 1000)), 'UTC')"""


def _tail(version: tuple[int, int], retention_days: int) -> tuple[str, str]:
    """(the index lines, the TTL clause) the server's version takes."""
    idx = "".join(f",\n    INDEX {i}" for i in INDEXES) if version >= INDEXES_SINCE else ""
    ttl = f" TTL day + INTERVAL {retention_days} DAY" if version >= TTL_SINCE else ""
    return idx, ttl


def ddl(database: str, table: str, version: tuple[int, int] = (18, 16),
        retention_days: int = RETENTION_FLOOR_DAYS) -> list[str]:
    """The documented table (docs/access-log.md) on one server: ReplacingMergeTree, one partition
    per UTC day, ordered for the lawful request; TTL and skipping indexes where the server has them
    (18.16, Debian's: neither; retention then drops whole days, :meth:`ClickHouseSink.retire`)."""
    idx, ttl = _tail(version, retention_days)
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}",
        f"""CREATE TABLE IF NOT EXISTS {database}.{table} (
{_columns()}{idx}
) ENGINE = ReplacingMergeTree PARTITION BY day ORDER BY {ORDER_BY}{ttl}""",
        *_lookup_ddl(database, table, table, "ReplacingMergeTree", ttl),
    ]


def cluster_ddl(database: str, table: str, cluster: str, version: tuple[int, int] = (18, 16),
                retention_days: int = RETENTION_FLOOR_DAYS) -> list[str]:
    """The same table on a cluster, run on every node: ``<table>_local`` replicated (a ZooKeeper
    or ClickHouse Keeper, and the macros ``{shard}`` and ``{replica}`` in each node's config), and
    ``<table>``, a Distributed table over them that gateways write and tools read. Sharded by
    gateway: one gateway's chain stays on one shard."""
    idx, ttl = _tail(version, retention_days)
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}",
        f"""CREATE TABLE IF NOT EXISTS {database}.{table}_local (
{_columns()}{idx}
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{database}/{table}', '{{replica}}')
PARTITION BY day ORDER BY {ORDER_BY}{ttl}""",
        f"CREATE TABLE IF NOT EXISTS {database}.{table} AS {database}.{table}_local "
        f"ENGINE = Distributed({cluster}, {database}, {table}_local, cityHash64(gateway))",
        # Each node's lookup tables, filled from its own rows: a gateway's rows and their lookup
        # rows are on one shard, so a query through the Distributed table looks them up with a
        # plain IN over ``<table>_by_name_local`` (each shard answers for its gateways).
        *_lookup_ddl(database, table, f"{table}_local",
                     f"ReplicatedReplacingMergeTree('/clickhouse/tables/{{{{shard}}}}/{database}/{{name}}', '{{{{replica}}}}')",
                     ttl),
    ]


def parse_version(text: str) -> tuple[int, int]:
    parts = ([*text.strip().split("."), "0", "0"])[:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return (0, 0)


ANCHORS_TABLE = "access_log_anchors"
# Records the sink holds in memory at most (~350 bytes each with their links: ~170 MiB); beyond,
# they spill (issue 27: the queue was unbounded, ~800 MiB in bench_accesslog behind a slow server).
MAX_QUEUED = 500_000


def anchors_ddl(database: str) -> str:
    """Checkpoints of the embedded log, kept where a local edit cannot reach them (issue 14);
    ``SELECT * … FORMAT JSONEachRow`` is an anchors file for ``beiand logs verify --anchors``."""
    return (f"CREATE TABLE IF NOT EXISTS {database}.{ANCHORS_TABLE} (ts_ms UInt64, gateway String, worker UInt16, "
            "`partition` String, `count` UInt64, head String) ENGINE = MergeTree ORDER BY (gateway, worker, ts_ms)")


class ClickHouseError(BeiandError):
    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent  # the request may have reached the server: the batch's fate is unknown


@dataclass
class SinkStats:
    inserted: int = 0  # records that reached ClickHouse, replayed ones included
    batches: int = 0
    spilled: int = 0
    replayed: int = 0
    checked: int = 0  # uncertain batches looked up before sending again
    skipped_duplicates: int = 0
    errors: int = 0  # failed requests to ClickHouse (the batch spills)
    down_since: float = 0.0
    # Of the spill stores replaced after a replay (each new spill starts its own LogStats at 0):
    spill_write_errors: int = 0
    spill_lost: int = 0
    queued_peak: int = 0  # the most records held in memory at once (max_queued, plus what the log commits during a drain)
    overflows: int = 0  # times the memory queue went over max_queued and was moved to the spill


class ClickHouseSink:
    """The ClickHouse copy of one worker's access log, spilling locally while ClickHouse is away:
    fed by ``AccessLog(on_commit=sink.committed, on_checkpoint=sink.anchor)``."""

    def __init__(self, url: str, spill_dir: Path, *, database: str = "beiand", table: str = "access_log", user: str = "default",
                 password: str = "", worker: int = 0, batch_records: int = 10_000, interval: float = 1.0, timeout: float = 10.0,
                 retention_days: int = RETENTION_FLOOR_DAYS, max_backoff: float = 30.0, cluster: str = "",
                 max_queued: int = MAX_QUEUED) -> None:
        if retention_days < RETENTION_FLOOR_DAYS:
            raise LogConfigError(f"retention_days = {retention_days}: Order 292 art. 14 requires at least {RETENTION_FLOOR_DAYS} days")
        self.url = url.rstrip("/") + "/"
        self.database, self.table, self.worker = database, table, worker
        self._auth = {"user": user, "password": password}
        self.batch_records, self.interval, self.timeout = batch_records, interval, timeout
        self.retention_days = retention_days
        self.max_backoff = max_backoff
        self.cluster = cluster  # inserts go through the Distributed table, synchronously
        # Records held in memory at most: beyond, the copy spills (ClickHouse slower than the log).
        self.max_queued = max_queued
        self.version = (0, 0)  # the server's, once reached
        self.outdated = ""  # why the existing table is not the documented one ("" when it is)
        self.stats = SinkStats()
        self.spill_dir = Path(spill_dir)
        self.spill = AccessLog(LogConfig(self.spill_dir, worker=worker, seal=False, anchors=False), start=False)
        self._uncertain_path = self.spill_dir / f"uncertain-w{worker}.ids"
        # The worker's last record number held by ClickHouse or the spill (-1: never copied here).
        self._copied_path = self.spill_dir / f"copied-w{worker}.seq"
        self.copied = _read_int(self._copied_path)
        self._check_upto = 0  # batches of records up to this number are looked up before sending
        self._uncertain: set[str] = set()
        if self._uncertain_path.exists():
            self._uncertain = set(self._uncertain_path.read_text().split())
        # …and the record numbers of those batches ("seq:lo-hi"): a batch spilled across midnight
        # becomes two frames with ids of their own, still looked up before they are sent.
        self._uncertain_seqs = [r for t in self._uncertain if t.startswith("seq:") and (r := _seq_token(t)) is not None]
        self._queue: deque[Committed] = deque()  # committed frames, not yet batched
        self._rows: list[bytes] = []  # rows as sent: the record's line, its chain fields, its worker
        self._queued = 0  # records in both
        self._anchors: deque[dict[str, Any]] = deque(maxlen=10_000)  # checkpoints waiting to be sent
        self._anchors_table = False
        self._session: aiohttp.ClientSession | None = None
        self._spilling = bool(self._spill_frames()) or bool(self._uncertain)
        # Batches listed as uncertain by this process just before their first attempt: no lookup
        # needed yet (a lookup scans the table: a spill of many batches would never catch up).
        self._unsent: set[str] = set()
        self._in_flight: tuple[list[bytes], str] | None = None  # the batch on the wire (sent from the queue)
        self._in_flight_spilled = False  # …moved to the spill meanwhile (_overflow)
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=f"clickhouse-w{worker}", daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait(5)

    # -- fed by the access log ---------------------------------------------------------------

    def committed(self, c: Committed) -> None:
        """Records the local log has just made durable (on its committer thread: only queued here)."""
        self._queue.append(c)
        self._queued += len(c.lines)
        if self._queued > self.stats.queued_peak:
            self.stats.queued_peak = self._queued
        self._idle.clear()
        if self._loop is not None and self._wake is not None:
            if self._queued > self.max_queued:  # the sender moves the queue to the spill between two requests
                self._loop.call_soon_threadsafe(self._overflow)
            elif self._queued >= self.batch_records:
                self._loop.call_soon_threadsafe(self._wake.set)

    def backfill(self, log_dir: Path, upto: int, key: bytes | None = None) -> int:
        """At start, before the log commits anything new: queue what the log committed up to
        record ``upto`` but the copy never got (the process stopped between the two); returns how
        many. Those batches are looked up before they are sent (some may have arrived after all).
        A first start copies from here on, not the log's history."""
        from beiand.accesslog.reader import committed_since

        if self.copied < 0 or self.copied >= upto:
            self._save_copied(max(upto, self.copied))
            return 0
        # Said before the first batch is queued: the sender may take it at once, and it may be the
        # one that was on the wire when the process stopped (looked up, never sent twice blindly).
        self._check_upto = upto
        n = 0
        for c in committed_since(log_dir, self.worker, self.copied, upto, key):
            self.committed(c)
            n += len(c.lines)
        if n:
            log.warning("ClickHouse: %d record(s) the log committed before a stop were not copied: queued now", n)
        return n

    def _save_copied(self, seq: int) -> None:
        """Durably: the copy holds (or the spill does) every record up to ``seq``."""
        self.copied = seq
        self.spill_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = self._copied_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(f"{seq}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._copied_path)

    def flush(self, timeout: float = 60.0) -> None:
        """Return when every record handed over so far is in ClickHouse or durable in the spill."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
        deadline = time.monotonic() + timeout
        while self._pending() or not self._idle.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError(f"ClickHouse sink: {self._queued} record(s) not handed over after {timeout} s")
            self._idle.wait(0.05)
            if self._loop is not None and self._wake is not None and self._pending():
                self._loop.call_soon_threadsafe(self._wake.set)

    def _pending(self) -> bool:
        return bool(self._queue or self._rows)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._stop.set()
            if self._loop is not None and self._wake is not None:
                self._loop.call_soon_threadsafe(self._wake.set)
            self._thread.join(30)
            self.spill.close()

    def anchor(self, checkpoint: dict[str, Any]) -> None:
        """Queue a checkpoint of the embedded log (``AccessLog(on_checkpoint=…)``) for the anchors table."""
        self._anchors.append({"ts_ms": int(checkpoint.get("ts_ms", 0)), "gateway": str(checkpoint.get("gateway", "")),
                              "worker": int(checkpoint.get("worker", self.worker)), "partition": checkpoint["partition"],
                              "count": int(checkpoint["count"]), "head": checkpoint["head"]})
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _send_anchors(self) -> None:
        """Best effort, in order; kept (bounded) and retried while ClickHouse refuses them."""
        if not self._anchors:
            return
        rows = list(self._anchors)
        try:
            if not self._anchors_table:
                await self._post(anchors_ddl(self.database))
                self._anchors_table = True
            body = b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in rows)
            await self._post(f"INSERT INTO {self.database}.{ANCHORS_TABLE} FORMAT JSONEachRow", body)
        except ClickHouseError as exc:
            log.warning("ClickHouse: %d access-log anchor(s) not sent yet: %s", len(rows), exc)
            return
        for r in rows:  # the ones sent (a full deque may have dropped some of them meanwhile: none other)
            if self._anchors and self._anchors[0] is r:
                self._anchors.popleft()

    @property
    def spilling(self) -> bool:
        return self._spilling

    def metrics(self) -> MetricValues:
        """Cumulative since this sink started: records written (rows in ClickHouse, replays
        included), spilled, replayed, write errors (failed ClickHouse requests and failed spill
        writes) and lost (records the spill dropped because its buffer was full while the disk
        refused writes: the only way a record is lost here); and the gauge: 1 while spilling."""
        st, sp = self.stats, self.spill.stats
        return {MetricKey("beiand_clickhouse_records_written"): st.inserted, MetricKey("beiand_clickhouse_records_spilled"): st.spilled,
                MetricKey("beiand_clickhouse_records_replayed"): st.replayed,
                MetricKey("beiand_clickhouse_write_errors"): st.errors + st.spill_write_errors + sp.write_errors,
                MetricKey("beiand_clickhouse_lost_records"): st.spill_lost + sp.lost,
                MetricKey("beiand_clickhouse_spilling"): 1 if self._spilling else 0}

    # -- the sender thread ------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._ready.set()
        backoff = 0.5
        next_try = 0.0
        schema_ok = False
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
            self._session = session
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                self._wake.clear()
                try:
                    if (self._spilling or not schema_ok) and time.monotonic() >= next_try:
                        try:
                            if not schema_ok:
                                await self._schema()
                                schema_ok = True
                            await self._replay_spill()
                            backoff = 0.5
                            if self.stats.down_since:
                                log.warning("ClickHouse is back after %.1f s; spill replayed", time.time() - self.stats.down_since)
                                self.stats.down_since = 0.0
                        except ClickHouseError as exc:
                            self._down(exc)
                            next_try = time.monotonic() + backoff
                            backoff = min(backoff * 2, self.max_backoff)
                    await self._send_queue(schema_ok)
                    if schema_ok:
                        await self._send_anchors()
                except Exception:
                    log.exception("ClickHouse sink: unexpected error; records stay queued")
                if not self._pending() and not self._wake.is_set():
                    self._idle.set()
                if self._stop.is_set() and not self._pending():
                    return

    def _down(self, exc: Exception) -> None:
        self.stats.errors += 1
        if not self.stats.down_since:
            self.stats.down_since = time.time()
            log.error("ClickHouse %s unavailable (%s): spilling to %s", self.url, exc, self.spill_dir)
        self._spilling = True

    def _take(self) -> list[bytes]:
        """Up to batch_records queued rows, in log order. A batch may hold records of two days (late
        records stay in the partition open when they come): it is named by its record numbers."""
        q, bs = self._queue, self.batch_records
        while q and len(self._rows) < bs:
            self._rows.extend(chain_rows(q.popleft()))
        out, self._rows = self._rows[:bs], self._rows[bs:]
        self._queued -= len(out)
        return out

    def _overflow(self) -> None:
        """On the sender's loop (between two requests, or while one is on the wire): the queue is
        over ``max_queued``: move it, in order, to the spill, and keep spilling until the spill is
        replayed. A batch on the wire goes to the spill first, listed as uncertain (the spill's
        record numbers then cover it should the process die now; the replay looks it up and sends
        it only if it did not land), so ClickHouse still gets every record once and in log
        order, and memory stays bounded however slow ClickHouse is."""
        if self._queued <= self.max_queued:  # (while a spill replays too: new frames go after its own)
            return
        if not self._spilling:
            self.stats.overflows += 1
            log.warning("ClickHouse sink: %d records waiting (more than max_queued %d): ClickHouse is slower than the "
                        "log; spilling to %s", self._queued, self.max_queued, self.spill_dir)
        self._spilling = True
        if self._in_flight is not None and not self._in_flight_spilled:
            lines, bid = self._in_flight
            self._mark_uncertain(bid, lines=lines)
            self._spill_batch(lines)
            self._in_flight_spilled = True
        self._drain_to_spill()

    def _drain_to_spill(self) -> None:
        """The whole queue to the spill, one frame a batch, made durable once (a sync per batch
        would let the log outrun the drain)."""
        last: list[bytes] = []
        while self._pending():
            last = self._take()
            self.spill.write_lines(last, flush=False)
            self.stats.spilled += len(last)
        if last:
            self.spill.flush()
            self._copied(last)

    async def _send_queue(self, schema_ok: bool) -> None:
        while self._pending():
            if self._queued > self.max_queued and not self._spilling:
                self._overflow()
                continue
            lines = self._take()
            if self._spilling or not schema_ok:
                self._spill_batch(lines)
                continue
            bid = batch_id(lines)
            self._in_flight, self._in_flight_spilled = (lines, bid), False
            try:
                await self._insert(lines, bid)
            except Exception as exc:
                # Spilling first: from here the copy goes through the spill, in order, until it is
                # replayed (a later batch sent straight on would move the cursor past this one,
                # which a failed spill write may hold only in memory).
                self._down(exc)
                if getattr(exc, "sent", True):  # (an unexpected error: it may have landed)
                    try:
                        self._mark_uncertain(bid, lines=lines)
                    except OSError as err:  # unlisted, a replay may send it twice: never lose it
                        log.error("ClickHouse sink: cannot list a batch as uncertain (%s): it may be sent twice", err)
                if not self._in_flight_spilled:  # (else it is in the spill already, in its place)
                    self._spill_batch(lines)  # a failed write keeps it in the spill's memory, the cursor where it was
            finally:
                self._in_flight = None

    def _spill_batch(self, lines: list[bytes]) -> None:
        """One batch → one durable frame in the spill (same rows, same batch id on replay)."""
        self.spill.write_lines(lines)
        self.stats.spilled += len(lines)
        self._copied(lines)

    def _copied(self, lines: list[bytes]) -> None:
        if _is_chained(lines[-1]):
            self._save_copied(_seq_of(lines[-1]))

    def _spill_frames(self) -> list[tuple[Path, int, bytes]]:
        out: list[tuple[Path, int, bytes]] = []
        for p in partition_paths(self.spill_dir, self.worker):
            out.extend((p, fr.offset, fr.payload) for fr in read_open(p).frames)
        return out

    async def _replay_spill(self) -> None:
        # What the spill holds only in memory (a write that failed) goes to disk first: the
        # replay ends by deleting the spill, so it sends what is on disk once nothing else is left.
        if not self._spill_durable():
            return
        frames = self._spill_frames()
        if not frames and not self._uncertain:
            self._spilling = False
            return
        done: set[tuple[Path, int]] = set()
        while frames:
            # Every frame about to be sent becomes uncertain first: a crash mid-replay then costs a
            # lookup, never a duplicate.
            for _, _, payload in frames:
                flines = payload.splitlines(keepends=True)
                bid = batch_id(flines)
                if not self._is_uncertain(bid, flines):  # spilled, never sent: no lookup unless this process dies
                    self._unsent.add(bid)
                self._mark_uncertain(bid, sync=False)
            self._sync_uncertain()
            for path, offset, payload in frames:
                lines = payload.splitlines(keepends=True)
                await self._insert(lines, batch_id(lines))
                self.stats.replayed += len(lines)
                done.add((path, offset))
                if self._queued > self.max_queued:  # records kept coming meanwhile: after the frames, in order
                    self._drain_to_spill()
            # Frames the queue was moved into while replaying: sent too before the spill goes.
            if not self._spill_durable():
                return
            frames = [f for f in self._spill_frames() if (f[0], f[1]) not in done]
        # All in ClickHouse: the spill goes, then the uncertain list.
        self.spill.close()
        for p in partition_paths(self.spill_dir, self.worker):
            p.unlink()
            with contextlib.suppress(FileNotFoundError):
                p.with_suffix(".mark").unlink()  # the partition's commit mark
            with contextlib.suppress(OSError):
                p.parent.rmdir()
        self._uncertain.clear()
        self._uncertain_seqs.clear()
        with contextlib.suppress(FileNotFoundError):
            self._uncertain_path.unlink()
        fsync_dir(self.spill_dir)
        self.stats.spill_write_errors += self.spill.stats.write_errors
        self.stats.spill_lost += self.spill.stats.lost
        self.spill = AccessLog(LogConfig(self.spill_dir, worker=self.worker, seal=False, anchors=False), start=False)
        self._spilling = False
        if frames:
            log.info("ClickHouse sink: replayed %d spilled batch(es)", len(frames))

    def _spill_durable(self) -> bool:
        """Flush the spill; False (logged) while it cannot be written: the replay waits."""
        try:
            self.spill.flush()
        except AccessLogError as exc:
            log.error("ClickHouse sink: the spill cannot be written (%s): it is replayed once it can", exc)
            return False
        return True

    def _mark_uncertain(self, bid: str, sync: bool = True, lines: list[bytes] | None = None) -> None:
        """List a batch that may have landed; with its ``lines`` (a batch of the copy), their record
        numbers too, so that any frame the spill makes of them is looked up."""
        if bid in self._uncertain:
            return
        tokens = [bid]
        if lines and _is_chained(lines[0]):
            lo, hi = _seq_of(lines[0]), _seq_of(lines[-1])
            tokens.append(f"seq:{lo}-{hi}")
            self._uncertain_seqs.append((lo, hi))
        self._uncertain.update(tokens)
        self.spill_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        with open(self._uncertain_path, "a") as f:
            f.write("".join(t + "\n" for t in tokens))
            if sync:
                f.flush()
                os.fsync(f.fileno())

    def _is_uncertain(self, bid: str, lines: list[bytes]) -> bool:
        """Whether the batch may be in ClickHouse already: listed, or its record numbers overlap
        a listed batch's."""
        if bid in self._uncertain:
            return True
        if not self._uncertain_seqs or not _is_chained(lines[0]):
            return False
        lo, hi = _seq_of(lines[0]), _seq_of(lines[-1])
        return any(a <= hi and lo <= b for a, b in self._uncertain_seqs)

    def _sync_uncertain(self) -> None:
        if self._uncertain_path.exists():
            with open(self._uncertain_path, "a") as f:
                os.fsync(f.fileno())

    async def _schema(self) -> None:
        """Create the table, or bring one made by an older beiand up to date in place."""
        self.version = parse_version(await self._post("SELECT version()"))
        local = f"{self.table}_local" if self.cluster else self.table
        lookups = [f"{lt}_local" if self.cluster else lt for lt in lookup_tables(self.table).values()]
        had = set((await self._post(f"SELECT name FROM system.tables WHERE database = '{self.database}' "
                                    f"AND name IN ('{local}', {', '.join(repr(t) for t in lookups)})")).split())
        if self.cluster:
            stmts = cluster_ddl(self.database, self.table, self.cluster, self.version, self.retention_days)
        else:
            stmts = ddl(self.database, self.table, self.version, self.retention_days)
        # The lookup tables' views read columns an older table gets only now: they come last.
        nlookup = 2 * len(LOOKUPS)
        for stmt in stmts[:-nlookup]:
            await self._post(stmt)
        for t in ([f"{self.table}_local", self.table] if self.cluster else [self.table]):
            await self._add_columns(t)
        for stmt in stmts[-nlookup:]:
            await self._post(stmt)
        if local in had:  # a table made before its lookup tables, or one whose backfill was cut short
            await self._backfill_lookups(local, lookups, new=not set(lookups) <= had)
        row = (await self._post(f"SELECT engine, sorting_key FROM system.tables WHERE database = '{self.database}' "
                                f"AND name = '{local}' FORMAT TabSeparated")).rstrip("\n").split("\t")
        engine, key = ([*row, "", ""])[:2]
        outdated = table_outdated(engine, key)
        if outdated and outdated != self.outdated:
            log.warning("ClickHouse table %s.%s %s; records are still copied (the batch check keeps them once), but the "
                        "sort key cannot change in place: create the documented table beside it, INSERT INTO … SELECT, "
                        "then RENAME (docs/access-log.md, \"Upgrading an older table\")", self.database, local, outdated)
        self.outdated = outdated
        if self.version >= TTL_SINCE and "ReplacingMergeTree" in engine:  # pragma: no cover (Debian's 18.16 has no TTL)
            for t in (local, *lookups):
                await self._post(f"ALTER TABLE {self.database}.{t} MODIFY TTL day + INTERVAL {self.retention_days} DAY")

    async def _backfill_lookups(self, local: str, lookups: list[str], new: bool) -> None:
        """Rows the table held before its lookup tables existed go into them, day by day: every
        day where a lookup table holds fewer rows than the table (today only when the lookup
        tables are ``new``: today's rows are still arriving). A row put in twice (two gateways
        upgrading at once) is folded by the lookup table's ReplacingMergeTree, and an ``IN`` does
        not count it twice."""
        parts = f"SELECT table, partition, sum(rows) FROM system.parts WHERE database = '{self.database}' AND active " \
                f"AND table IN ('{local}', {', '.join(repr(t) for t in lookups)}) GROUP BY table, partition FORMAT TabSeparated"
        rows: dict[tuple[str, str], int] = {}
        for line in (await self._post(parts)).splitlines():
            t, day, n = line.split("\t")
            rows[(t, day)] = int(n)
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        days = sorted(d for t, d in rows if t == local and (new or d < today)
                      and any(rows.get((lt, d), 0) < rows[(local, d)] for lt in lookups))
        if days:
            log.warning("ClickHouse: %s.%s: putting %d day(s) of rows written before its lookup tables into them "
                        "(%s … %s)", self.database, local, len(days), days[0], days[-1])
        for d in days:
            for stmt in lookup_backfill(self.database, self.table, d, local):
                await self._post(stmt, timeout=None)

    async def _add_columns(self, table: str) -> None:
        """A table made by an older beiand gets the columns added since (Debian's ClickHouse has no
        ``ADD COLUMN IF NOT EXISTS``: the table's columns are read first)."""
        have = set((await self._post(f"SELECT name FROM system.columns WHERE database = '{self.database}' "
                                     f"AND table = '{table}'")).split())
        for col in ADDED_COLUMNS:
            if col.split()[0].strip("`") not in have:
                await self._post(f"ALTER TABLE {self.database}.{table} ADD COLUMN {col}")

    async def _insert(self, lines: list[bytes], bid: str) -> None:
        nf = lines[0].count(b"\t") + 1
        chained = nf in CHAINED_SHAPES  # this version's rows, or an older one's spilled before an upgrade
        batch = lines
        first_try = bid in self._unsent
        self._unsent.discard(bid)
        if (not first_try and self._is_uncertain(bid, lines)) or (chained and _seq_of(lines[0]) <= self._check_upto):
            self.stats.checked += 1
            day = int(lines[0][:lines[0].index(b"\t")]) // DAY_MS
            d = datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")
            # A batch of the copy is its records' numbers; an older one (no chain fields, one day) its batch id.
            where = _seq_range(lines) if chained else f"day = toDate('{d}') AND batch = '{bid}'"
            # Distinct record numbers: a record there twice must not make up for one missing.
            what = "uniqExact(seq)" if chained else "count()"
            n = int(await self._post(f"SELECT {what} FROM {self.database}.{self.table} WHERE {where}") or 0)
            if n == len(lines):
                self.stats.skipped_duplicates += n
                return
            if n and chained:  # a part of the batch made it (an insert split by the server): send the rest
                # (no mutation: a Distributed table takes none, and the rows there are the same rows)
                have = {int(x) for x in (await self._post(f"SELECT DISTINCT seq FROM {self.database}.{self.table} "
                                                          f"WHERE {where}")).split()}
                self.stats.skipped_duplicates += len(have)
                lines = [ln for ln in lines if _seq_of(ln) not in have]
            elif n:  # an older batch (no record numbers): remove what made it, send all
                await self._post(f"ALTER TABLE {self.database}.{self.table} DELETE WHERE {where}")
                await self._wait_mutations()
        if chained:  # rows as they are (each ends with its worker): no copy per row
            body = b"".join(lines)
            cols = ",".join(CHAINED_SHAPES[nf])
        else:
            tail = f"\t{bid}\t{self.worker}\n".encode()
            body = b"".join(ln[:-1] + tail for ln in lines)
            cols = ",".join((*SHAPES.get(nf, COLUMNS), "batch", "worker"))
        # On a cluster: through the Distributed table, returning once every shard has the rows.
        # (a query parameter: 18.16's INSERT takes no SETTINGS clause)
        await self._post(f"INSERT INTO {self.database}.{self.table} ({cols}) FORMAT TabSeparated", body,
                         {"insert_distributed_sync": "1"} if self.cluster else None)
        self.stats.inserted += len(lines)
        self.stats.batches += 1
        if chained and not self._spilling:  # (a replayed spill was counted when it spilled)
            self._copied(batch)

    async def _wait_mutations(self) -> None:
        for _ in range(100):
            n = await self._post(f"SELECT count() FROM system.mutations WHERE database = '{self.database}' "
                                 f"AND table = '{self.table}' AND is_done = 0")
            if n.strip() in ("", "0"):
                return
            await asyncio.sleep(0.1)
        raise ClickHouseError("a DELETE mutation did not finish", sent=True)

    async def _post(self, sql: str, body: bytes | None = None, settings: dict[str, str] | None = None,
                    timeout: float | None = -1.0) -> str:
        """``timeout``: the sink's own (-1), or another, None for none (a long ``INSERT … SELECT``)."""
        assert self._session is not None
        kw: dict[str, Any] = {} if timeout is not None and timeout < 0 else {"timeout": aiohttp.ClientTimeout(total=timeout)}
        try:
            if body is None:
                resp_ctx = self._session.post(self.url, params=self._auth, data=sql.encode(), **kw)
            else:
                resp_ctx = self._session.post(self.url, params={**self._auth, **(settings or {}), "query": sql}, data=body, **kw)
            async with resp_ctx as resp:
                text = await resp.text(errors="replace")
                if resp.status != 200:
                    raise ClickHouseError(f"HTTP {resp.status}: {text.strip()[:300]}", sent=False)
                return text
        except aiohttp.ClientConnectorError as exc:
            raise ClickHouseError(f"cannot connect: {exc}", sent=False) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ClickHouseError(f"{type(exc).__name__}: {exc}", sent=body is not None) from None

    # -- retention --------------------------------------------------------------------------

    def retire(self, now_ms: int | None = None, timeout: float = 30.0) -> list[str]:
        """Drop whole day partitions older than the retention; returns the days dropped."""
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(self._retire(now_ms), self._loop)
        return fut.result(timeout)

    async def _retire(self, now_ms: int | None) -> list[str]:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = now_ms - self.retention_days * DAY_MS
        dropped = []
        # The table, then its lookup tables (a day they still hold finds nothing more in the table).
        for t in (self.table, *lookup_tables(self.table).values()):
            name = f"{t}_local" if self.cluster and t != self.table else t
            text = await self._post(f"SELECT DISTINCT partition FROM system.parts WHERE database = '{self.database}' "
                                    f"AND table = '{name}' AND active")
            for day in sorted(text.split()):
                start = int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)
                if start + DAY_MS <= cutoff:
                    await self._post(f"ALTER TABLE {self.database}.{name} DROP PARTITION '{day}'")
                    if t == self.table:
                        dropped.append(day)
                        log.info("ClickHouse: dropped partition %s (older than %d days)", day, self.retention_days)
        return dropped


# A spilled line of an older beiand, by the fields it holds (the sink adds batch and worker).
SHAPES = {len(COLUMNS_V1): COLUMNS_V1, len(COLUMNS_V2): COLUMNS_V2, len(COLUMNS_V3): COLUMNS_V3, len(COLUMNS): COLUMNS}
# A row of the copy (issue 27): the record's fields, its chain fields, its worker.
CHAINED = (*COLUMNS, *CHAIN_COLUMNS, "worker")
# A row of the copy spilled before issue 35 (no records_version): still sent after an upgrade,
# with its own columns (the table fills records_version with '', as chain_rows does for a line
# without one).
CHAINED_V3 = (*COLUMNS_V3, *CHAIN_COLUMNS, "worker")
# The rows of the copy by the fields they hold: the columns they are inserted with.
CHAINED_SHAPES = {len(CHAINED): CHAINED, len(CHAINED_V3): CHAINED_V3}
_GATEWAY = COLUMNS.index("gateway")


def chain_rows(c: Committed) -> list[bytes]:
    """A committed frame's rows: each record's line, then its chain fields (partition, seq, pos,
    link) and its worker."""
    part = b"\t" + c.partition.encode() + b"\t"
    hx = b"".join(c.links).hex().encode()  # one call for the frame, not one per record
    w = b"%d" % c.worker
    seq, pos = c.seq, c.pos
    # a line without a register version (issue 35) gets the empty column: every row of the copy
    # has every column (verify joins it back without it: ``_VERSION_JOIN``)
    short = len(COLUMNS) - 2
    return [b"%s%s%s%d\t%d\t%s\t%s\n" % (ln[:-1], b"\t" if ln.count(b"\t") == short else b"", part, seq + i, pos + i,
                                           hx[64 * i:64 * i + 64], w)
            for i, ln in enumerate(c.lines)]


def _sql_str(b: bytes) -> str:
    return "'" + b.decode("utf-8", "surrogateescape").replace("\\", "\\\\").replace("'", "\\'") + "'"


def _seq_range(lines: list[bytes]) -> str:
    """The rows of a batch of the copy: one gateway's worker, consecutive record numbers, on the
    days its records' times fall on (the table's partitions: a lookup reads those days only, not
    every day the table holds)."""
    first, last = lines[0].rsplit(b"\t", 5), lines[-1].rsplit(b"\t", 5)
    gw = lines[0].split(b"\t", _GATEWAY + 1)[_GATEWAY]
    ts = [int(ln[:ln.index(b"\t")]) for ln in lines]
    lo, hi = (datetime.fromtimestamp(t // 1000, UTC).strftime("%Y-%m-%d") for t in (min(ts), max(ts)))
    return (f"day BETWEEN toDate('{lo}') AND toDate('{hi}') AND gateway = {_sql_str(gw)} AND worker = {int(first[5])} "
            f"AND seq BETWEEN {int(first[2])} AND {int(last[2])}")


def table_outdated(engine: str, sorting_key: str) -> str:
    """Why a table is not the documented one (ordered for the lawful request, folding a record
    sent twice), or "" when it is."""
    want = ORDER_BY.strip("()")
    if "ReplacingMergeTree" in engine and sorting_key.replace(" ", "") == want.replace(" ", ""):
        return ""
    return f"is {engine or 'unknown'} ORDER BY ({sorting_key}), not ReplacingMergeTree ORDER BY {ORDER_BY}"


def _is_chained(line: bytes) -> bool:
    """Whether a row is one of the copy's (its chain fields end it), of this version or an older one."""
    return line.count(b"\t") + 1 in CHAINED_SHAPES


def _seq_of(line: bytes) -> int:
    """A row of the copy's record number (its chain fields end: seq, pos, link, worker)."""
    return int(line.rsplit(b"\t", 4)[1])


def _seq_token(token: str) -> tuple[int, int] | None:
    """``seq:lo-hi`` (an uncertain batch's record numbers) → (lo, hi); None for a damaged token."""
    lo, _, hi = token[4:].partition("-")
    if not (lo.isascii() and lo.isdigit() and hi.isascii() and hi.isdigit()):
        return None
    return int(lo), int(hi)


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return -1


def batch_id(lines: list[bytes]) -> str:
    h = hashlib.sha256()
    for ln in lines:
        h.update(ln)
    return h.hexdigest()[:32]


# -- reading the copy back (``beiand logs verify --clickhouse``) ---------------------------------

_CH_UNESC = {ord("b"): b"\b", ord("f"): b"\f", ord("r"): b"\r", ord("n"): b"\n", ord("t"): b"\t", ord("0"): b"\0",
             ord("a"): b"\a", ord("v"): b"\v", ord("'"): b"'", ord("\\"): b"\\"}


def tsv_fields(line: bytes) -> list[bytes]:
    """One TabSeparated row as ClickHouse writes it, its escapes undone (the bytes as stored)."""
    out = []
    for f in line.rstrip(b"\n").split(b"\t"):
        if b"\\" in f:
            buf = bytearray()
            i = 0
            while i < len(f):
                c = f[i]
                if c == 92 and i + 1 < len(f):
                    buf += _CH_UNESC.get(f[i + 1], bytes([f[i + 1]]))
                    i += 2
                else:
                    buf.append(c)
                    i += 1
            f = bytes(buf)
        out.append(f)
    return out


class ClickHouseReader:
    """Reads the copy and its anchors over the HTTP interface (synchronous: for the CLI)."""

    def __init__(self, url: str, database: str = "beiand", table: str = "access_log", user: str = "default",
                 password: str = "", timeout: float = 300.0) -> None:
        self.url = url.rstrip("/") + "/"
        self.database, self.table = database, table
        self.auth = {"user": user, "password": password}
        self.timeout = timeout

    def _open(self, sql: str) -> Any:
        import urllib.error
        import urllib.parse
        import urllib.request

        req = urllib.request.Request(self.url + "?" + urllib.parse.urlencode(self.auth), data=sql.encode())
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise ClickHouseError(f"{self.url}: HTTP {exc.code}: {exc.read().decode(errors='replace').strip()[:300]}",
                                  sent=False) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ClickHouseError(f"{self.url}: {getattr(exc, 'reason', exc)}", sent=False) from None

    def query(self, sql: str) -> str:
        with self._open(sql) as r:
            return str(r.read().decode())

    def rows(self, since_ms: int = 0, until_ms: int = 0, gateways: tuple[str, ...] = ()) -> Iterator[CopyRow | CopyRun]:
        """Every row with chain fields, in (gateway, worker, seq) order (streamed), of the log
        partitions of the days from ``since_ms`` to ``until_ms`` (0: no bound) and of ``gateways``
        (all when empty). Rows copied before issue 27 (no chain fields: seq 0) are left out;
        :meth:`unchained` counts them.

        ClickHouse joins each record's fields into its line as the log wrote it (no field with a
        tab, newline, CR or backslash: the log's encoding is then a plain join) and sorts rows of
        a few columns, not of 29 (the sort of a gateway-day was most of a verify); the rows come
        unescaped (TabSeparatedRaw), rows that follow each other in a partition as one
        :class:`~beiand.accesslog.copy.CopyRun`: a 10M-row verify is one hash a row. The rare
        record with one of those bytes is read apart, decoded, and comes alone, in its place."""
        from beiand.accesslog.copy import CopyRow, CopyRun
        from beiand.model import AccessRecord

        where = self._where(since_ms, until_ms, gateways)
        ints = {"ts_ms", "client_port", "server_port", "packets", "octets"}
        # the line as the log wrote it: a record without a register version ends at outcome (issue 35)
        joined = ", '\\t', ".join(f"toString({c})" if c in ints else c for c in COLUMNS[:-1])
        joined += ", if(records_version = '', '', concat('\\t', records_version))"
        plain = (f"(match(line, '[\\\\n\\\\r\\\\\\\\]') = 0 AND length(line) - length(replaceAll(line, '\\t', '')) = "
                 f"if(records_version = '', {len(COLUMNS) - 2}, {len(COLUMNS) - 1}))")
        # The records that are not a plain join (rare): read apart as TabSeparated, once, when the
        # first one comes, decoded here.
        apart: dict[tuple[str, int, int], CopyRow] = {}

        def read_apart() -> None:
            cols = ", ".join(("gateway", "worker", "`partition`", "seq", "pos", "link", *COLUMNS))
            at = {i for i, c in enumerate(COLUMNS) if c in ints}
            with self._open(f"SELECT {cols} FROM (SELECT *, concat({joined}) AS line FROM {self.database}.{self.table} "
                            f"PREWHERE seq > 0{where}) WHERE NOT {plain} FORMAT TabSeparated") as r:
                for line in r:
                    f = tsv_fields(line)
                    vals: list[Any] = [v.decode("utf-8", "surrogateescape") for v in f[6:]]
                    for i in at:
                        vals[i] = int(vals[i])
                    gw = f[0].decode("utf-8", "surrogateescape")
                    apart[(gw, int(f[1]), int(f[3]))] = CopyRow(gw, int(f[1]), f[2].decode(), int(f[3]), int(f[4]),
                                                                f[5].decode(), AccessRecord(*vals))
        # The first column says whether the row follows the one before in its partition (seq and
        # pos one more, same gateway, worker and partition; 0 at the first row of each block the
        # server sends): such a row is two appends here, nothing parsed.
        sql = ("SELECT runningDifference(seq) = 1 AND runningDifference(pos) = 1 AND "
               "runningDifference(cityHash64(gateway, worker, `partition`)) = 0, "
               f"gateway, worker, `partition`, seq, pos, link, if({plain}, line, '') FROM (SELECT gateway, worker, "
               # records_version: the outer test of a plain row reads it
               f"`partition`, seq, pos, link, records_version, concat({joined}) AS line FROM {self.database}.{self.table} "
               f"PREWHERE seq > 0{where} ORDER BY gateway, worker, seq) FORMAT TabSeparatedRaw")
        key: tuple[bytes, bytes, bytes] = (b"", b"", b"")  # the run's gateway, worker, partition
        links: list[bytes] = []
        lines: list[bytes] = []
        first = first_pos = 0

        def run() -> CopyRun:
            return CopyRun(key[0].decode("utf-8", "surrogateescape"), int(key[1]), key[2].decode(), first, first_pos,
                           links, lines)

        rest = b""
        for chunk in self._prefetched(self._stream(sql)):
            # (a plain row holds no CR or newline but its end: splitlines keeps the line's newline)
            rows = (rest + chunk).splitlines(keepends=True) if rest else chunk.splitlines(keepends=True)
            rest = rows.pop() if rows and not rows[-1].endswith(b"\n") else b""
            for line in rows:
                f = line.split(b"\t", 7)
                if f[0] == b"1" and lines and len(f[7]) > 1:  # the next row of the run
                    links.append(f[6])
                    lines.append(f[7])
                    continue
                if lines:
                    yield run()
                    links, lines = [], []
                seq = int(f[4])
                if len(f[7]) == 1:  # read apart (an empty line)
                    if not apart:
                        read_apart()
                    yield apart[(f[1].decode("utf-8", "surrogateescape"), int(f[2]), seq)]
                    continue
                key, first, first_pos = (f[1], f[2], f[3]), seq, int(f[5])
                links.append(f[6])
                lines.append(f[7])
        if rest:
            raise ClickHouseError(f"{self.url}: the answer ended inside a row", sent=False)
        if lines:
            yield run()

    @staticmethod
    def _prefetched(chunks: Iterator[bytes], depth: int = 32) -> Iterator[bytes]:
        """``chunks`` read by a thread of their own (the socket is read without the GIL), up to
        ``depth`` ahead: the server streams while the caller hashes."""
        import queue

        q: queue.Queue[bytes | BaseException | None] = queue.Queue(depth)
        stop = threading.Event()

        def pump() -> None:
            try:
                for c in chunks:
                    if stop.is_set():
                        return
                    q.put(c)
                q.put(None)
            except BaseException as exc:  # handed to the caller
                q.put(exc)

        t = threading.Thread(target=pump, name="clickhouse-read", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                while True:
                    q.get_nowait()

    def _stream(self, sql: str, size: int = 1 << 22) -> Iterator[bytes]:
        """The answer in large blocks, over HTTP/1.0: no chunked transfer encoding to undo in
        Python (a verify of 10M rows reads ~3 GB)."""
        import http.client
        import urllib.parse

        class HTTP10(http.client.HTTPConnection):
            _http_vsn = 10
            _http_vsn_str = "HTTP/1.0"

        u = urllib.parse.urlsplit(self.url)
        if u.scheme != "http":  # https: through urllib, chunked
            with self._open(sql) as r:
                while chunk := r.read(size):
                    yield chunk
            return
        conn = HTTP10(u.hostname or "localhost", u.port or 8123, timeout=self.timeout)
        try:
            conn.request("POST", (u.path or "/") + "?" + urllib.parse.urlencode(self.auth), body=sql.encode())
            resp = conn.getresponse()
            if resp.status != 200:
                raise ClickHouseError(f"{self.url}: HTTP {resp.status}: {resp.read().decode(errors='replace').strip()[:300]}",
                                      sent=False)
            while chunk := resp.read(size):
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            raise ClickHouseError(f"{self.url}: {exc}", sent=False) from None
        finally:
            conn.close()

    def _where(self, since_ms: int, until_ms: int, gateways: tuple[str, ...]) -> str:
        """The log partitions of those days (a partition is named by its day: ``2026-11-23/w0.p1``;
        a late record may sit in the next day's, so ``day`` only narrows the parts read)."""
        out = ""
        if since_ms:
            d = datetime.fromtimestamp(since_ms // 1000, UTC).strftime("%Y-%m-%d")
            out += f" AND day >= toDate('{d}') - 1 AND `partition` >= '{d}'"
        if until_ms:
            # A record of day D sits in partition D, or D+1 when it came late (after the roll).
            d = datetime.fromtimestamp(until_ms // 1000, UTC).strftime("%Y-%m-%d")
            out += f" AND day <= toDate('{d}') AND `partition` < '{d}~'"  # '~' sorts after '/'
        if gateways:
            out += f" AND gateway IN ({', '.join(_sql_str(g.encode()) for g in gateways)})"
        return out

    def unchained(self, since_ms: int = 0, until_ms: int = 0, gateways: tuple[str, ...] = ()) -> int:
        where = self._where(since_ms, until_ms, gateways).replace("`partition`", "toString(day)")
        return int(self.query(f"SELECT count() FROM {self.database}.{self.table} WHERE seq = 0{where}").strip() or 0)

    def anchors(self) -> list[CopyAnchor]:
        from beiand.accesslog.copy import CopyAnchor

        if self.query(f"EXISTS TABLE {self.database}.{ANCHORS_TABLE}").strip() != "1":
            return []
        text = self.query(f"SELECT gateway, worker, `partition`, `count`, head, ts_ms FROM {self.database}.{ANCHORS_TABLE} "
                          "ORDER BY gateway, worker, ts_ms FORMAT TabSeparated")
        out = []
        for line in text.splitlines():
            gw, w, part, count, head, ts = line.split("\t")
            out.append(CopyAnchor(gw, int(w), part, int(count), head, int(ts)))
        return out
