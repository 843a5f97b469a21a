"""Scale-out: many gateways write one ClickHouse table over its HTTP interface.

Records are batched (``batch_records`` or ``interval``), one batch never spans two days, and
each batch carries an id derived from its content, so the same records always form the same
batch id. While ClickHouse is down (or answers with an error) batches spill, in order, to an
embedded store (one frame per batch); new records keep going to the spill until it has been
replayed in order. Every batch whose fate is unknown (a connection lost after sending, a
replay cut short by a crash) is listed in ``uncertain.ids`` and checked with
``SELECT count() … WHERE batch = id`` before it is sent again: no record is lost or duplicated.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from beiand.accesslog.format import DAY_MS, encode_batch, read_open
from beiand.accesslog.store import RETENTION_FLOOR_DAYS, AccessLog, LogConfig, LogConfigError, fsync_dir, partition_paths
from beiand.errors import BeiandError
from beiand.model import AccessRecord, MetricKey, MetricValues

log = logging.getLogger("beiand.accesslog.clickhouse")  # the name operators filter on (before sinks/)

COLUMNS = ("ts_ms", "account", "client_ip", "client_port", "server_ip", "server_port", "transport", "kind", "name", "verdict",
           "action", "filing_number", "gateway", "reason", "nat", "calling_number", "order_no",
           "direction", "method", "url", "packets", "octets", "outcome")
# Records spilled before issue 19 carry the first 17 columns only.
COLUMNS_V1 = COLUMNS[:COLUMNS.index("order_no") + 1]
# Records spilled before issue 26 end at octets (no outcome).
COLUMNS_V2 = COLUMNS[:COLUMNS.index("octets") + 1]
# Columns added since the table was first documented: added to an existing table at start.
ADDED_COLUMNS = ("direction String", "method String", "url String", "packets UInt64", "octets UInt64", "outcome String")


def ddl(database: str, table: str) -> list[str]:
    """The documented table (docs/access-log.md): MergeTree, one partition per UTC day."""
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}",
        f"""CREATE TABLE IF NOT EXISTS {database}.{table} (
    ts_ms UInt64, account String, client_ip String, client_port UInt16, server_ip String, server_port UInt16,
    transport String, kind String, name String, verdict String, action String, filing_number String,
    gateway String, reason String, nat String, calling_number String, order_no String,
    direction String, method String, url String, packets UInt64, octets UInt64, outcome String,
    batch String, worker UInt16,
    day Date DEFAULT toDate(toDateTime(intDiv(ts_ms, 1000)), 'UTC')
) ENGINE = MergeTree PARTITION BY day ORDER BY (day, name, client_ip, ts_ms)""",
    ]


ANCHORS_TABLE = "access_log_anchors"


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


class ClickHouseSink:
    """A :class:`~beiand.sinks.accesslog.RecordWriter` that writes to ClickHouse, spilling locally."""

    def __init__(self, url: str, spill_dir: Path, *, database: str = "beiand", table: str = "access_log", user: str = "default",
                 password: str = "", worker: int = 0, batch_records: int = 10_000, interval: float = 1.0, timeout: float = 10.0,
                 retention_days: int = RETENTION_FLOOR_DAYS, max_backoff: float = 30.0) -> None:
        if retention_days < RETENTION_FLOOR_DAYS:
            raise LogConfigError(f"retention_days = {retention_days}: Order 292 art. 14 requires at least {RETENTION_FLOOR_DAYS} days")
        self.url = url.rstrip("/") + "/"
        self.database, self.table, self.worker = database, table, worker
        self._auth = {"user": user, "password": password}
        self.batch_records, self.interval, self.timeout = batch_records, interval, timeout
        self.retention_days = retention_days
        self.max_backoff = max_backoff
        self.stats = SinkStats()
        self.spill_dir = Path(spill_dir)
        self.spill = AccessLog(LogConfig(self.spill_dir, worker=worker, seal=False, anchors=False), start=False)
        self._uncertain_path = self.spill_dir / f"uncertain-w{worker}.ids"
        self._uncertain: set[str] = set()
        if self._uncertain_path.exists():
            self._uncertain = set(self._uncertain_path.read_text().split())
        self._queue: deque[AccessRecord] = deque()
        self._anchors: deque[dict[str, Any]] = deque(maxlen=10_000)  # checkpoints waiting to be sent
        self._anchors_table = False
        self._session: aiohttp.ClientSession | None = None
        self._spilling = bool(self._spill_frames()) or bool(self._uncertain)
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=f"clickhouse-w{worker}", daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait(5)

    # -- RecordWriter -----------------------------------------------------------------------

    def append(self, rec: AccessRecord) -> None:
        self._queue.append(rec)
        self._idle.clear()
        if len(self._queue) >= self.batch_records and self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def flush(self, timeout: float = 60.0) -> None:
        """Return when every record appended so far is in ClickHouse or durable in the spill."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
        deadline = time.monotonic() + timeout
        while self._queue or not self._idle.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError(f"ClickHouse sink: {len(self._queue)} record(s) not handed over after {timeout} s")
            self._idle.wait(0.05)
            if self._loop is not None and self._wake is not None and self._queue:
                self._loop.call_soon_threadsafe(self._wake.set)

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
        for _ in rows:
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
                                for stmt in ddl(self.database, self.table):
                                    await self._post(stmt)
                                await self._add_columns()
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
                if not self._queue and not self._wake.is_set():
                    self._idle.set()
                if self._stop.is_set() and not self._queue:
                    return

    def _down(self, exc: Exception) -> None:
        self.stats.errors += 1
        if not self.stats.down_since:
            self.stats.down_since = time.time()
            log.error("ClickHouse %s unavailable (%s): spilling to %s", self.url, exc, self.spill_dir)
        self._spilling = True

    def _take(self) -> list[AccessRecord]:
        """Up to batch_records queued records, never across a day boundary."""
        q = self._queue
        if not q:
            return []
        day = q[0].ts_ms // DAY_MS
        out: list[AccessRecord] = []
        while q and len(out) < self.batch_records and q[0].ts_ms // DAY_MS == day:
            out.append(q.popleft())
        return out

    async def _send_queue(self, schema_ok: bool) -> None:
        while self._queue:
            batch = self._take()
            if self._spilling or not schema_ok:
                self._spill_batch(batch)
                continue
            lines = encode_batch(batch)
            bid = batch_id(lines)
            try:
                await self._insert(lines, bid)
            except ClickHouseError as exc:
                if exc.sent:
                    self._mark_uncertain(bid)
                self._spill_batch(batch)
                self._down(exc)

    def _spill_batch(self, batch: list[AccessRecord]) -> None:
        """One batch → one durable frame in the spill (same content, same batch id on replay)."""
        self.spill.write_batch(batch)
        self.stats.spilled += len(batch)

    def _spill_frames(self) -> list[tuple[Path, int, bytes]]:
        out: list[tuple[Path, int, bytes]] = []
        for p in partition_paths(self.spill_dir, self.worker):
            out.extend((p, fr.offset, fr.payload) for fr in read_open(p).frames)
        return out

    async def _replay_spill(self) -> None:
        frames = self._spill_frames()
        if not frames and not self._uncertain:
            self._spilling = False
            return
        # Every frame about to be sent becomes uncertain first: a crash mid-replay then costs a
        # lookup, never a duplicate.
        for _, _, payload in frames:
            self._mark_uncertain(batch_id(payload.splitlines(keepends=True)), sync=False)
        self._sync_uncertain()
        for _, _, payload in frames:
            lines = payload.splitlines(keepends=True)
            await self._insert(lines, batch_id(lines))
            self.stats.replayed += len(lines)
        # All in ClickHouse: the spill goes, then the uncertain list.
        self.spill.close()
        for p in partition_paths(self.spill_dir, self.worker):
            p.unlink()
            with contextlib.suppress(FileNotFoundError):
                p.with_suffix(".mark").unlink()  # the partition's commit mark
            with contextlib.suppress(OSError):
                p.parent.rmdir()
        self._uncertain.clear()
        with contextlib.suppress(FileNotFoundError):
            self._uncertain_path.unlink()
        fsync_dir(self.spill_dir)
        self.stats.spill_write_errors += self.spill.stats.write_errors
        self.stats.spill_lost += self.spill.stats.lost
        self.spill = AccessLog(LogConfig(self.spill_dir, worker=self.worker, seal=False, anchors=False), start=False)
        self._spilling = False
        if frames:
            log.info("ClickHouse sink: replayed %d spilled batch(es)", len(frames))

    def _mark_uncertain(self, bid: str, sync: bool = True) -> None:
        if bid in self._uncertain:
            return
        self._uncertain.add(bid)
        self.spill_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        with open(self._uncertain_path, "a") as f:
            f.write(bid + "\n")
            if sync:
                f.flush()
                os.fsync(f.fileno())

    def _sync_uncertain(self) -> None:
        if self._uncertain_path.exists():
            with open(self._uncertain_path, "a") as f:
                os.fsync(f.fileno())

    async def _add_columns(self) -> None:
        """A table made by an older beiand gets the columns added since (Debian's ClickHouse has no
        ``ADD COLUMN IF NOT EXISTS``: the table's columns are read first)."""
        have = set((await self._post(f"SELECT name FROM system.columns WHERE database = '{self.database}' "
                                     f"AND table = '{self.table}'")).split())
        for col in ADDED_COLUMNS:
            if col.split()[0] not in have:
                await self._post(f"ALTER TABLE {self.database}.{self.table} ADD COLUMN {col}")

    async def _insert(self, lines: list[bytes], bid: str) -> None:
        if bid in self._uncertain:
            self.stats.checked += 1
            day = int(lines[0][:lines[0].index(b"\t")]) // DAY_MS
            d = datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")
            n = int(await self._post(f"SELECT count() FROM {self.database}.{self.table} "
                                     f"WHERE day = toDate('{d}') AND batch = '{bid}'") or 0)
            if n == len(lines):
                self.stats.skipped_duplicates += n
                return
            if n:  # a part of the batch made it (an insert split by the server): remove it, send all
                await self._post(f"ALTER TABLE {self.database}.{self.table} DELETE WHERE batch = '{bid}'")
                await self._wait_mutations()
        tail = f"\t{bid}\t{self.worker}\n".encode()
        body = b"".join(ln[:-1] + tail for ln in lines)
        tabs = lines[0].count(b"\t")
        shape = COLUMNS_V1 if tabs == len(COLUMNS_V1) - 1 else COLUMNS_V2 if tabs == len(COLUMNS_V2) - 1 else COLUMNS
        cols = ",".join((*shape, "batch", "worker"))
        await self._post(f"INSERT INTO {self.database}.{self.table} ({cols}) FORMAT TabSeparated", body)
        self.stats.inserted += len(lines)
        self.stats.batches += 1

    async def _wait_mutations(self) -> None:
        for _ in range(100):
            n = await self._post(f"SELECT count() FROM system.mutations WHERE database = '{self.database}' "
                                 f"AND table = '{self.table}' AND is_done = 0")
            if n.strip() in ("", "0"):
                return
            await asyncio.sleep(0.1)
        raise ClickHouseError("a DELETE mutation did not finish", sent=True)

    async def _post(self, sql: str, body: bytes | None = None) -> str:
        assert self._session is not None
        try:
            if body is None:
                resp_ctx = self._session.post(self.url, params=self._auth, data=sql.encode())
            else:
                resp_ctx = self._session.post(self.url, params={**self._auth, "query": sql}, data=body)
            async with resp_ctx as resp:
                text = await resp.text()
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
        text = await self._post(f"SELECT DISTINCT partition FROM system.parts WHERE database = '{self.database}' "
                                f"AND table = '{self.table}' AND active")
        dropped = []
        for day in sorted(text.split()):
            start = int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)
            if start + DAY_MS <= cutoff:
                await self._post(f"ALTER TABLE {self.database}.{self.table} DROP PARTITION '{day}'")
                dropped.append(day)
                log.info("ClickHouse: dropped partition %s (older than %d days)", day, self.retention_days)
        return dropped


def batch_id(lines: list[bytes]) -> str:
    h = hashlib.sha256()
    for ln in lines:
        h.update(ln)
    return h.hexdigest()[:32]
