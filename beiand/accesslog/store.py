"""The embedded access-log writer: append, group commit, rotate by day, seal, retain.

One :class:`AccessLog` per worker process; workers write separate partitions, so no locks are
shared between processes. ``append`` is the hot-path call (a deque append); a committer thread
writes a frame and fsyncs it every ``commit_interval`` seconds or ``commit_records`` records;
``flush()`` commits synchronously and returns only when the records are on disk.

Failure rules (DESIGN.md): an acknowledged record is never lost. Every fsync is followed by
the *commit mark* (``wN.mark``: offset, count and chain head of the last durable frame); at start
only bytes beyond the mark, with no intact frame after them, are a torn tail and cut (reported,
counted). Damage before the mark (bit rot, a bad sector, an edit) is never cut: the partition is
set aside whole (``wN.NNN.damaged``, still read by queries), the chain continues in a new
partition that names it, and ``verify`` reports it until an operator acknowledges it. A failing
disk keeps records in a bounded buffer and retries, and nothing already written is touched
except to cut a frame the failed write left half-written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
import threading
import time
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from beiand.accesslog.format import (
    CRC_HEAD,
    DAY_MS,
    FIELDS,
    GENESIS,
    KEY_KINDS_V2,
    MARK_SLOT,
    SEAL_FORMAT,
    SEAL_MAGIC,
    TRAILER,
    FormatError,
    Mark,
    OpenPartition,
    Postings,
    build_kind_v2,
    chain,
    chain_links,
    decode,
    encode_batch,
    encode_block,
    endpoint_key,
    frame_bytes,
    header_line,
    key_id,
    mark_bytes,
    name_keys,
    read_mark,
    read_open,
    split_block,
    split_endpoint,
)
from beiand.errors import BeiandError
from beiand.model import AccessRecord, MetricKey, MetricValues

log = logging.getLogger(__name__)
# Anchors are evidence kept off the machine (the journal): logged whatever daemon.log_level says.
anchor_log = logging.getLogger("beiand.accesslog.anchor")
anchor_log.setLevel(logging.INFO)
_TS = itemgetter(0)

ENCODE_BATCH = 128  # records encoded and chained together on the appending thread (~0.3 ms of work)
RETENTION_FLOOR_DAYS = 60  # Order 292 art. 14 (互联网信息服务管理办法 第十四条); MPS Order 82 art. 13
# Cybersecurity Law art. 21(3) (2016 numbering): network logs for at least six months. Six
# calendar months are up to 184 days (July–December), so "six months" is never 180 days.
RETENTION_DEFAULT_DAYS = 184
MAX_GAP_DAYS = 7  # retention: a gap between logged days counts at most this much (clock jumps, downtime)
HEADS = "heads.log"
DIR_MODE = 0o750
FILE_MODE = 0o640


class Committed(NamedTuple):
    """Records that just became durable in the log (one frame), as ``AccessLog(on_commit=…)``
    hands them on (issue 27: ClickHouse holds only what the evidence of record holds). ``lines``
    are the chained bytes, ``links[i]`` the chain head after ``lines[i]``; the first record is the
    worker's record number ``seq`` (1, 2, … across its partitions) and the ``pos``-th of
    ``partition`` (the count an anchor names after it)."""

    gateway: str
    worker: int
    partition: str  # "2026-11-23/w0.p1"
    seq: int
    pos: int
    lines: list[bytes]
    links: list[bytes]


class LogConfigError(BeiandError, ValueError):
    """An access-log setting that may not be used; the message names the field."""


class AccessLogError(BeiandError):
    """The log could not make records durable (disk full, I/O error); they are kept and retried."""


@dataclass(frozen=True)
class LogConfig:
    directory: Path
    worker: int = 0
    gateway: str = ""
    retention_days: int = RETENTION_DEFAULT_DAYS
    commit_interval: float = 1.0  # seconds: a record is durable at most this long after append
    commit_records: int = 16_384  # …or as soon as this many are waiting
    max_buffer: int = 2_000_000  # records held while the disk refuses writes; beyond this, counted as lost
    key: bytes | None = None  # HMAC key: makes the chain keyed
    block_records: int = 1024  # records per compressed block in a sealed partition (smaller: faster queries)
    checkpoint_interval: float = 60.0  # seconds between chain-head lines in heads.log
    seal: bool = True  # seal partitions of past days (off for a spill store)
    anchors: bool = True  # log checkpoints as anchors for the journal (off for a spill store: its partitions go)
    # Records after which the open partition is closed (and sealed) and the next one of the same day
    # opened (``w0``, ``w0.p1``, ``w0.p2``…), the chain continuing: bounds what sealing holds in
    # memory. 0: one partition per worker per day (a spill store; logs written before issue 19).
    partition_records: int = 0

    def __post_init__(self) -> None:
        if self.retention_days < RETENTION_FLOOR_DAYS:
            raise LogConfigError(
                f"accesslog.retention_days = {self.retention_days}: Order 292 art. 14 (互联网信息服务管理办法 第十四条) "
                f"requires at least {RETENTION_FLOOR_DAYS} days")
        if not 0 < self.commit_interval <= 60:
            raise LogConfigError(f"accesslog.commit_interval = {self.commit_interval}: must be in (0, 60] seconds")
        if self.commit_records < 1 or self.max_buffer < self.commit_records:
            raise LogConfigError("accesslog.commit_records must be >= 1 and <= accesslog.max_buffer")
        if not 0 <= self.worker < 1024:
            raise LogConfigError(f"worker = {self.worker}: must be 0..1023")
        if self.block_records < 1:
            raise LogConfigError("accesslog.block_records must be >= 1")
        if self.partition_records < 0:
            raise LogConfigError("accesslog.partition_records must be >= 0 (0: one partition per worker per day)")


@dataclass
class LogStats:
    appended: int = 0
    written: int = 0
    bytes_written: int = 0
    commits: int = 0
    write_errors: int = 0
    lost: int = 0  # dropped because the buffer was full while the disk refused writes
    torn_repaired: int = 0
    torn_bytes: int = 0
    set_aside: int = 0  # partitions set aside at start because of damage before the commit mark
    sealed: int = 0
    seal_errors: int = 0
    retired: int = 0
    failing: str = ""  # the current write error, "" when writes succeed
    fsync_seconds: list[float] = field(default_factory=list)  # taken by AccessLog.take_fsync_seconds()


def day_of(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d")


def day_start_ms(day: str) -> int:
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_heads(directory: Path, event: dict[str, Any]) -> None:
    """One JSON line in ``heads.log`` (O_APPEND, one write: safe across worker processes)."""
    line = json.dumps(event, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    fd = os.open(directory / HEADS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def partition_paths(directory: Path, worker: int | None = None, damaged: bool = True) -> list[Path]:
    """Every partition file, oldest day first, in chain order within a day (``*.open``,
    ``*.sealed`` and, unless ``damaged`` is False, ``*.damaged``: set aside at start)."""
    out: list[Path] = []
    if not directory.is_dir():
        return out
    kinds = (".open", ".sealed", ".damaged") if damaged else (".open", ".sealed")
    for d in sorted(p for p in directory.iterdir() if p.is_dir() and len(p.name) == 10 and p.name[4] == "-"):
        for f in sorted(d.iterdir(), key=part_order):
            if (f.suffix in kinds and f.name.startswith("w") and not f.name.endswith(".tmp")
                    and (worker is None or worker_of(f) == f"w{worker}")):
                out.append(f)
    return out


def worker_of(p: Path) -> str:
    """``w0`` for ``w0.open``, ``w0.p2.sealed``, ``w0.001.damaged`` and ``w0.p2.001.damaged``."""
    return p.name.split(".", 1)[0]


def seq_of(p: Path) -> int:
    """The partition's number within its worker's day: 0 for ``w0.open``/``w0.sealed``
    (``w0.001.damaged``), N for ``w0.pN.open``/``w0.pN.sealed`` (``w0.pN.001.damaged``)."""
    parts = p.name.split(".")
    if len(parts) > 2 and parts[1][:1] == "p" and parts[1][1:].isascii() and parts[1][1:].isdigit():
        return int(parts[1][1:])
    return 0


def part_order(p: Path) -> tuple[str, int, int, int, str]:
    """Chain order within one day: by worker, then partition number; a partition set aside
    (``….NNN.damaged``, in their order) before the one that continued its chain under its name."""
    parts = p.name.split(".")
    aside = len(parts) > 2 and parts[-2].isascii() and parts[-2].isdigit()
    return (parts[0], seq_of(p), 0 if aside else 1, int(parts[-2]) if aside else 0, p.name)


def seq_name(worker: int, seq: int) -> str:
    return f"w{worker}" if seq == 0 else f"w{worker}.p{seq}"


def part_name(p: Path) -> str:
    """How heads.log and verify name a partition: ``2026-09-21/w0`` (``…/w0.001`` when set aside)."""
    return f"{p.parent.name}/{p.stem}"


def mark_path(p: Path) -> Path:
    return p.with_suffix(".mark")


def assess(part: OpenPartition, mark: Mark | None) -> str:
    """Why an open partition may not simply be continued (damage before its last durable commit,
    or a partition that does not match its commit mark), or "" when it may (a torn tail beyond
    the mark is cut, not reported here)."""
    if not part.header_ok:
        return part.why
    marked = bool(part.header.get("mark"))
    if part.damaged and not part.tail_only():
        return f"damaged inside ({part.why}; an intact frame follows the damage)"
    if mark is None:
        if marked and part.frames:
            return "its commit mark is missing (deleted?)"
        return ""
    if part.damaged and part.damaged[0][0] < mark.offset:
        return f"damaged before its last durable commit ({part.why}; committed up to offset {mark.offset})"
    if mark.header_crc != part.header_crc:
        return "its header line changed after it was written"
    ends = {f.end: f for f in part.frames}
    committed = sum(f.count for f in part.frames if f.end <= mark.offset)
    if part.end < mark.offset:
        return (f"{mark.count - committed} committed record(s) missing: it holds {committed} up to offset "
                f"{part.end}, its commit mark says {mark.count} up to offset {mark.offset}")
    fr = ends.get(mark.offset)
    if fr is None and mark.count:
        return f"no frame ends at its committed offset {mark.offset} (commit mark): the partition was edited"
    if committed != mark.count:
        return f"holds {committed} record(s) up to offset {mark.offset}, its commit mark says {mark.count}: edited"
    head = fr.head if fr is not None else bytes.fromhex(part.header["prev_head"])
    if head != mark.head:
        return "its chain head at the commit mark differs from the mark's"
    return ""


def at_risk(part: OpenPartition, mark: Mark | None) -> int | None:
    """Records committed but unreadable, from the commit mark (None without one)."""
    if mark is not None:
        return max(mark.count - sum(f.count for f in part.frames if f.end <= mark.offset), 0)
    return None


class AccessLog:
    """The Order 292 art. 14 log of one worker (see the module docstring)."""

    def __init__(self, config: LogConfig, start: bool = True, on_fsync: Callable[[float], None] | None = None,
                 on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
                 on_commit: Callable[[Committed], None] | None = None) -> None:
        self.cfg = config
        self.dir = Path(config.directory)
        self.stats = LogStats()
        self.on_fsync = on_fsync
        self._queue: deque[AccessRecord] = deque()
        self._batch = config.commit_records
        # Chained frames not yet on disk: ((day number, partition number), records, head before,
        # head after, frame bytes, worker sequence of its first record, its position in the
        # partition, and (with ``on_commit``) its lines and their links).
        self._frames: deque[tuple[tuple[int, int], int, bytes, bytes, bytes, int, int,
                                  list[bytes] | None, list[bytes] | None]] = deque()
        # Records this worker has chained, across its partitions: the last one's sequence number.
        self._chained = 0
        self._nframed = 0
        self._elock = threading.RLock()  # encoding and chaining, in order
        self._wlock = threading.RLock()  # writing, in order
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._seals: list[threading.Thread] = []
        self._fd = -1
        self._path: Path | None = None
        self._day = -1  # day number (ts_ms // DAY_MS) of the open partition
        self._seq = 0  # its number within the day (rolled every ``partition_records``)
        self._offset = 0  # end of the last whole frame in the open file
        self._count = 0  # records in the open partition
        self.head = GENESIS  # head of the last record on disk
        self._enc_head = GENESIS  # head of the last record chained (on disk or waiting)
        self._enc_day = -1
        self._last_checkpoint = time.monotonic()
        self._checkpointed = 0
        self._mfd = -1  # the open partition's mark file
        self._mseq = 0
        self._hdr_crc = 0
        self._sealed_latest = False
        self.on_checkpoint = on_checkpoint
        self.on_commit = on_commit
        self.anchor: dict[str, Any] = {}  # the last checkpoint (what /api/v1/status shows)
        self._make_dir()
        self._recover()
        self._enc_head = self.head
        self._enc_day = self._day
        # The partition the encoder fills and how many records it holds (chained, on disk or not).
        self._enc_part = (self._day, self._seq)
        self._enc_n = self._count
        if self._path is None and self._sealed_latest:  # the next records open the next partition
            self._enc_part = (self._day, self._seq + 1)
            self._enc_n = 0
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name=f"accesslog-w{config.worker}", daemon=True)
            self._thread.start()

    # -- hot path ---------------------------------------------------------------------------
    # append() queues; every ``encode_records`` records the caller's thread encodes and chains
    # the batch into a frame (CPU work, done where the GIL already is: no ping-pong with the
    # committer); the committer thread only writes frames and fsyncs (the GIL is released there).

    def append(self, rec: AccessRecord) -> None:
        q = self._queue
        q.append(rec)
        if len(q) >= ENCODE_BATCH:
            self._encode()

    def extend(self, recs: Iterable[AccessRecord]) -> None:
        for r in recs:
            self.append(r)

    @property
    def sequence(self) -> int:
        """The record number of the last record chained (this worker's, across its partitions)."""
        return self._chained

    def write_lines(self, lines: list[bytes], flush: bool = True) -> None:
        """Append encoded lines (each ``ts_ms\t…\n``) as one frame per day they cover, and flush
        (``flush=False``: the caller flushes once after several): the unit of a spill store that
        keeps rows as they are to be sent (issue 27)."""
        if not lines:
            return
        with self._elock:
            self._encode()
            self.stats.appended += len(lines)
            self._frame_days(lines, [int(ln[:ln.index(b"\t")]) for ln in lines])
        if flush:
            self.flush()

    def write_batch(self, recs: list[AccessRecord]) -> None:
        """Append ``recs`` as one frame (one per day they cover) and flush: a spill's unit."""
        with self._elock:
            self._queue.extend(recs)
            self._encode()
        self.flush()

    # -- durability -------------------------------------------------------------------------

    def flush(self) -> None:
        """Commit everything appended so far; return only when it is on disk (else raise)."""
        self._encode()
        self._write()
        if self._frames:
            raise AccessLogError(f"{self.dir}: {self._nframed} record(s) not yet durable: {self.stats.failing}")

    def close(self) -> None:
        """Flush, stop the committer, wait for sealing; the open partition stays open (today)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.flush()
        finally:
            for t in self._seals:
                t.join()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._mfd >= 0:
                os.close(self._mfd)
                self._mfd = -1

    def __enter__(self) -> AccessLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def position(self) -> dict[str, Any]:
        """What is durable now (partition, record count, full chain head) and the last checkpoint:
        what ``/api/v1/status`` shows, to be anchored elsewhere (a chain head is no float gauge)."""
        return {"partition": part_name(self._path) if self._path is not None else "", "count": self._count,
                "head": self.head.hex(), "checkpoint": self.anchor, "set_aside": self.stats.set_aside}

    @property
    def pending(self) -> int:
        """Records appended but not yet on disk."""
        return len(self._queue) + self._nframed

    @property
    def failing(self) -> str:
        """Why the log cannot write, while it cannot ("" while writes succeed)."""
        return self.stats.failing

    def metrics(self) -> MetricValues:
        """The log's own counters (cumulative since it opened) and its gauges: records appended but
        not on disk, the first 48 bits of the chain head (to anchor elsewhere)."""
        st = self.stats
        return {MetricKey("beiand_accesslog_records"): st.written, MetricKey("beiand_accesslog_bytes"): st.bytes_written,
                MetricKey("beiand_accesslog_write_errors"): st.write_errors, MetricKey("beiand_accesslog_lost_records"): st.lost,
                MetricKey("beiand_accesslog_torn_repairs"): st.torn_repaired,
                MetricKey("beiand_accesslog_pending_records"): self.pending,
                MetricKey("beiand_accesslog_chain_head_prefix"): int.from_bytes(self.head[:6], "big")}

    def take_fsync_seconds(self) -> list[float]:
        """The group-commit fsync latencies measured since the last call (for the histogram)."""
        st = self.stats
        taken, st.fsync_seconds = st.fsync_seconds, []
        return taken

    def _run(self) -> None:
        interval = self.cfg.commit_interval
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self._encode()
                self._write()
                self._maybe_checkpoint()
            except Exception:  # never let the committer die: the next round retries
                log.exception("access log commit failed")

    def _encode(self) -> None:
        """Queue → chained frames. A record is chained only once there is room to keep it."""
        with self._elock:
            q = self._queue
            n = len(q)
            if not n:
                return
            pop = q.popleft
            batch = [pop() for _ in range(n)]
            self.stats.appended += n
            room = self.cfg.max_buffer - self._nframed
            if room < n:
                lost = n - max(room, 0)
                self.stats.lost += lost
                log.error("access log buffer full (%d records) while writes fail: %d record(s) lost", self.cfg.max_buffer, lost)
                batch = batch[:max(room, 0)]
                if not batch:
                    return
            self._frame_days(encode_batch(batch), list(map(_TS, batch)))

    def _frame_days(self, lines: list[bytes], ts: list[int]) -> None:
        """Chain ``lines`` (records at times ``ts``) into frames of the partitions they go to."""
        with self._elock:
            lo, hi = min(ts) // DAY_MS, max(ts) // DAY_MS
            if lo == hi or hi <= self._enc_day:
                self._frame(max(hi, self._enc_day), lines)
                return
            # The batch crosses into a new day: earlier records (and late ones) stay in the
            # partition open so far, the rest open the new day's.
            start = 0
            for i, t in enumerate(ts):
                d = t // DAY_MS
                if d > self._enc_day and self._enc_day >= 0:
                    self._frame(self._enc_day, lines[start:i])
                    start = i
                self._enc_day = max(self._enc_day, d)
            self._frame(self._enc_day, lines[start:])

    def _frame(self, day: int, lines: list[bytes]) -> None:
        self._enc_day = max(self._enc_day, day)
        limit = self.cfg.partition_records
        while lines:
            if day > self._enc_part[0]:
                self._enc_part, self._enc_n = (day, 0), 0
            elif limit and self._enc_n >= limit:  # full: the next partition of the same day
                self._enc_part, self._enc_n = (self._enc_part[0], self._enc_part[1] + 1), 0
            take = min(len(lines), limit - self._enc_n) if limit else len(lines)
            chunk, lines = lines[:take], lines[take:]
            start = self._enc_head
            links: list[bytes] | None = None
            if self.on_commit is not None:  # each record's link, for the copy (issue 27)
                links = chain_links(start, chunk, self.cfg.key)
                head = links[-1]
            else:
                head = chain(start, chunk, self.cfg.key)
            self._enc_head = head
            self._frames.append((self._enc_part, take, start, head, frame_bytes(take, head, b"".join(chunk)),
                                 self._chained + 1, self._enc_n + 1, chunk if links is not None else None, links))
            self._chained += take
            self._enc_n += take
            self._nframed += take
        if self._nframed >= self._batch:
            self._wake.set()

    def _write(self) -> None:
        """Write every chained frame, then one fdatasync per partition (group commit)."""
        with self._wlock:
            while self._frames and self._write_round():
                pass

    def _write_round(self) -> bool:
        """Write the frames of one partition and sync. On an error, keep the whole frames that
        made it to disk (cut a half-written one) and keep the rest queued for the next round."""
        frames = self._frames
        part, _, start, _, _, first_seq, first_pos, _, _ = frames[0]
        written = nframes = 0
        error: Exception | None = None
        try:
            if self._fd < 0 or part > (self._day, self._seq):
                self._rotate(part, start, first_seq - first_pos)
        except Exception as exc:
            error = exc
        if error is None:
            start_offset = self._offset
            try:
                cur = (self._day, self._seq)
                for part, count, _, _, data, *_ in list(islice(frames, len(frames))):  # the encoder may append meanwhile
                    if part > cur:
                        break  # the next round opens the next partition (a new day, or this one full)
                    _write_all(self._fd, data)
                    self._offset += len(data)
                    written += count
                    nframes += 1
            except Exception as exc:
                error = exc
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._offset)  # cut the half-written frame
                    os.lseek(self._fd, self._offset, os.SEEK_SET)
            if nframes:
                try:
                    self._sync()
                except Exception as exc:
                    error = error or exc
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, start_offset)
                        os.lseek(self._fd, start_offset, os.SEEK_SET)
                    self._offset = start_offset
                    written = nframes = 0
        if nframes:
            try:
                self._write_mark(self._offset, self._count + written, frames[nframes - 1][3])
            except OSError as exc:
                # The frames are durable; only the mark lags (the next commit writes it again).
                self.stats.write_errors += 1
                log.error("access log %s: commit mark not written: %s", self.dir, exc)
        nbytes = 0
        done = []
        for _ in range(nframes):
            f = frames.popleft()
            nbytes += len(f[4])
            self.head = f[3]
            if f[7] is not None:
                done.append(f)
        if done and self.on_commit is not None and self._path is not None:
            # Durable now (fsynced, under the commit mark): the copy gets them, in chain order.
            name = part_name(self._path)
            for f in done:
                try:
                    self.on_commit(Committed(self.cfg.gateway, self.cfg.worker, name, f[5], f[6], f[7], f[8]))  # type: ignore[arg-type]
                except Exception:
                    log.exception("access log: handing committed records to the copy failed")
        self._count += written
        self.stats.written += written
        self.stats.bytes_written += nbytes
        if error is not None:
            self._nframed -= written
            self.stats.write_errors += 1
            first = not self.stats.failing
            self.stats.failing = (f"{error.strerror or error} ({errno.errorcode.get(error.errno or 0, error.errno)})"
                                  if isinstance(error, OSError) else repr(error))
            if first:
                log.error("access log %s: write failed: %s; %d record(s) kept in memory and retried",
                          self.dir, self.stats.failing, self._nframed)
            return False
        if self.stats.failing:
            log.warning("access log %s: writes succeed again", self.dir)
            self.stats.failing = ""
        # last: ``pending`` reaches 0 only once ``failing`` says the writes succeed again (a reader
        # in another thread saw no pending records beside a stale ENOSPC)
        self._nframed -= written
        return True

    def _sync(self) -> None:
        t0 = time.perf_counter()
        os.fdatasync(self._fd)
        dt = time.perf_counter() - t0
        self.stats.commits += 1
        if len(self.stats.fsync_seconds) < 100_000:
            self.stats.fsync_seconds.append(dt)
        if self.on_fsync is not None:
            self.on_fsync(dt)

    # -- partitions -------------------------------------------------------------------------

    def _make_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        os.chmod(self.dir, DIR_MODE)

    def _open_path(self, day: str, seq: int) -> Path:
        return self.dir / day / f"{seq_name(self.cfg.worker, seq)}.open"

    def _rotate(self, part: tuple[int, int], prev_head: bytes, chained: int) -> None:
        """Open partition ``part``, its chain continuing from ``prev_head`` after the worker's
        ``chained`` records (the header's ``seq``: what the next record's number follows)."""
        day_no, seq = part
        old = self._path
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._mfd >= 0:
            os.close(self._mfd)
            self._mfd = -1
        if old is not None and self.cfg.seal:
            self._seal_later(old)
        day = day_of(day_no * DAY_MS)
        path = self._open_path(day, seq)
        path.parent.mkdir(exist_ok=True, mode=DIR_MODE)
        os.chmod(path.parent, DIR_MODE)
        prev = self._prev_name(path)
        hdr = header_line({"day": day, "worker": self.cfg.worker, "gateway": self.cfg.gateway, "prev": prev,
                           "prev_head": prev_head.hex(), "key_id": key_id(self.cfg.key), "created_ms": int(time.time() * 1000),
                           "crc": CRC_HEAD, "mark": True, "seq": chained})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            os.write(fd, hdr)
            os.fsync(fd)
            self._hdr_crc = zlib.crc32(hdr) & 0xFFFFFFFF
            self._open_mark(path, Mark(0, len(hdr), 0, prev_head, self._hdr_crc))
        except OSError:
            os.close(fd)
            path.unlink()
            raise
        fsync_dir(path.parent)
        self._fd, self._path, self._day, self._seq, self._offset, self._count = fd, path, day_no, seq, len(hdr), 0
        self._checkpointed = 0
        log.info("access log: opened %s (chain continues from %s)", path, prev_head.hex()[:16])
        # The open event is the partition's first checkpoint: a deleted open partition is noticed.
        try:
            self._anchor({"event": "open", "partition": part_name(path), "prev": prev, "count": 0, "head": prev_head.hex(),
                          "header_crc": self._hdr_crc})
        except OSError as exc:  # the partition is open and usable; the next checkpoint anchors it
            log.error("access log: open event for %s not recorded in %s: %s", path, HEADS, exc)

    def _prev_name(self, path: Path) -> str:
        me = (path.parent.name, part_order(path))
        older = [p for p in partition_paths(self.dir, self.cfg.worker) if (p.parent.name, part_order(p)) < me]
        return part_name(older[-1]) if older else ""

    # -- the commit mark ----------------------------------------------------------------------

    def _open_mark(self, path: Path, mark: Mark) -> None:
        """Create the partition's mark file: both slots written, so later writes never extend it."""
        if self._mfd >= 0:
            os.close(self._mfd)
            self._mfd = -1
        # No O_TRUNC, one slot at a time: a crash here leaves an intact mark (old or new) behind.
        fd = os.open(mark_path(path), os.O_WRONLY | os.O_CREAT, FILE_MODE)
        try:
            body = mark_bytes(mark)
            os.pwrite(fd, body + bytes(MARK_SLOT - len(body)), 0)
            os.fsync(fd)
            os.pwrite(fd, body, MARK_SLOT)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            raise
        self._mfd, self._mseq = fd, mark.seq

    def _write_mark(self, offset: int, count: int, head: bytes) -> None:
        """After an fsync of frames: record them as committed (the mark slots alternate)."""
        self._mseq += 1
        os.pwrite(self._mfd, mark_bytes(Mark(self._mseq, offset, count, head, self._hdr_crc)), (self._mseq % 2) * MARK_SLOT)
        os.fdatasync(self._mfd)

    def _recover(self) -> None:
        """Continue the chain of this worker: cut a torn tail beyond the commit mark, set aside a
        partition damaged before it, seal open partitions of older days."""
        parts = partition_paths(self.dir, self.cfg.worker, damaged=False)
        # A crash between writing a sealed file and unlinking its open file leaves both.
        for p in list(parts):
            if p.suffix == ".open" and p.with_suffix(".sealed") in parts:
                p.unlink()
                parts.remove(p)
                with contextlib.suppress(FileNotFoundError):
                    mark_path(p).unlink()
        if not parts:
            return
        opens = [p for p in parts if p.suffix == ".open"]
        latest = parts[-1]
        for p in opens[:-1] if latest.suffix == ".open" else opens:
            found = self._start_check(p)
            if found is not None and self.cfg.seal:
                try:
                    seal_partition(p, self.cfg)
                    self.stats.sealed += 1
                except FormatError as exc:  # a broken chain: set aside, never a reason not to start
                    self._set_aside(p, found[0], found[1], str(exc))
        self._day = day_start_ms(latest.parent.name) // DAY_MS
        self._seq = seq_of(latest)
        if latest.suffix == ".sealed":
            meta = read_sealed_meta(latest, segments=False)
            self.head = bytes.fromhex(meta["head"])
            self._chained = int(meta.get("seq", 0)) + int(meta["count"])  # partitions before issue 27: from 0
            self._sealed_latest = True
            return
        found = self._start_check(latest)
        if found is None:  # set aside: the next write opens a new partition that names it
            return
        part, mark = found
        self.head = part.head
        self._chained = int(part.header.get("seq", 0)) + part.records
        self._hdr_crc = part.header_crc
        self._fd = os.open(latest, os.O_WRONLY)
        os.lseek(self._fd, part.end, os.SEEK_SET)
        self._path, self._offset = latest, part.end
        self._count = part.records
        self._checkpointed = self._count
        self._open_mark(latest, Mark((mark.seq if mark else 0) + 1, part.end, self._count, part.head, self._hdr_crc))

    def _start_check(self, path: Path) -> tuple[OpenPartition, Mark | None] | None:
        """The partition as it may be continued (a torn tail beyond the mark cut), or None when it
        was set aside. Nothing here reduces the records a reader finds."""
        mark = read_mark(mark_path(path))
        part = read_open(path)
        why = assess(part, mark)
        if why:
            self._set_aside(path, part, mark, why)
            return None
        end, size = part.end, part.size
        if end < size:
            self.stats.torn_repaired += 1
            self.stats.torn_bytes += size - end
            log.warning("access log %s: %s: cut %d byte(s) of a torn tail beyond the last durable commit "
                        "(records not acknowledged by flush)", path, part.why, size - end)
            with open(path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
            append_heads(self.dir, {"event": "repair", "partition": part_name(path), "cut_bytes": size - end,
                                    "offset": end, "why": part.why, "ts_ms": int(time.time() * 1000)})
            part = read_open(path)
        return part, mark

    def _set_aside(self, path: Path, part: OpenPartition, mark: Mark | None, why: str) -> None:
        """Rename a damaged partition (kept whole, never truncated) and record it in heads.log."""
        stem = path.stem  # w0 (w0.001.damaged), w0.p2 (w0.p2.001.damaged): which partition it was stays in the name
        n = len(stem.split("."))
        taken = [int(p.name.split(".")[n]) for p in path.parent.glob(f"{stem}.*.damaged")
                 if len(p.name.split(".")) == n + 2 and p.name.split(".")[n].isascii() and p.name.split(".")[n].isdigit()]
        aside = path.with_name(f"{stem}.{max(taken, default=0) + 1:03d}.damaged")
        os.rename(path, aside)
        with contextlib.suppress(FileNotFoundError):
            os.rename(mark_path(path), mark_path(aside))
        fsync_dir(path.parent)
        risk = at_risk(part, mark)
        head = part.head
        self.head = head
        # The chain continues from the last readable record: so do the record numbers.
        self._chained = int(part.header.get("seq", 0)) + part.records if part.header_ok else self._chained
        self.stats.set_aside += 1
        event = {"event": "damage", "partition": part_name(path), "aside": part_name(aside), "why": why,
                 "ranges": [list(r) for r in part.damaged], "readable": part.records,
                 "committed": mark.count if mark else None, "at_risk": risk, "last_good_head": head.hex(),
                 "ts_ms": int(time.time() * 1000)}
        append_heads(self.dir, event)
        log.error("access log %s: %s; set aside whole as %s (%d readable record(s), %s at risk); the chain continues "
                  "from %s in a new partition; `beiand logs verify` reports it until `beiand logs acknowledge %s "
                  "--reason ...`", path, why, aside.name, part.records, "unknown" if risk is None else risk,
                  head.hex()[:16], part_name(aside))

    def _seal_later(self, path: Path) -> None:
        # One partition sealed at a time, in order: sealing memory stays that of one partition
        # (``partition_records``) even when partitions fill faster than they are sealed.
        self._seals = [s for s in self._seals if s.is_alive()]
        before = self._seals[-1] if self._seals else None

        def run() -> None:
            if before is not None:
                before.join()
            try:
                seal_partition(path, self.cfg)
                self.stats.sealed += 1
            except Exception:
                self.stats.seal_errors += 1
                log.exception("access log: sealing %s failed; it stays open and is retried at the next start", path)

        t = threading.Thread(target=run, name=f"seal-{part_name(path)}", daemon=True)
        self._seals.append(t)
        t.start()

    def _maybe_checkpoint(self) -> None:
        now = time.monotonic()
        if self._path is None or self._count == self._checkpointed or now - self._last_checkpoint < self.cfg.checkpoint_interval:
            return
        self.checkpoint()
        self._last_checkpoint = now

    def checkpoint(self) -> None:
        """Record the chain head in heads.log and off the machine (the log line is meant for the
        journal/syslog, ``on_checkpoint`` for ClickHouse): anchors the open partition."""
        if self._path is None:
            return
        try:
            self._anchor({"event": "checkpoint", "partition": part_name(self._path), "count": self._count,
                          "head": self.head.hex()})
        except OSError as exc:
            log.error("access log: checkpoint failed: %s", exc)
            return
        self._checkpointed = self._count

    def _anchor(self, event: dict[str, Any]) -> None:
        event = {**event, "gateway": self.cfg.gateway, "worker": self.cfg.worker, "ts_ms": int(time.time() * 1000)}
        append_heads(self.dir, event)
        self.anchor = {k: event[k] for k in ("partition", "count", "head", "ts_ms")}
        # One JSON object per line: ``journalctl -u beiand | grep 'access log anchor'`` is a file
        # that ``beiand logs verify --anchors`` reads as it is (docs/access-log.md).
        if not self.cfg.anchors:
            return
        full = {**self.anchor, "gateway": self.cfg.gateway, "worker": self.cfg.worker}
        anchor_log.info("access log anchor %s", json.dumps(full, sort_keys=True, separators=(",", ":")))
        if self.on_checkpoint is not None:
            try:
                self.on_checkpoint(full)
            except Exception:
                log.exception("access log: sending the anchor off the machine failed")

    # -- retention --------------------------------------------------------------------------

    def retire(self, now_ms: int | None = None) -> list[Path]:
        """Remove sealed partitions whose newest record is older than the retention; never a younger one."""
        return retire(self.dir, self.cfg.retention_days, now_ms, worker=self.cfg.worker, stats=self.stats)


def retire(directory: Path, retention_days: int, now_ms: int | None = None, worker: int | None = None,
           stats: LogStats | None = None) -> list[Path]:
    """Remove sealed partitions older than the retention, judged by the records' own times.

    A partition goes only when both say so: the wall clock (its newest record older than the
    retention, its whole day too) and the log itself: the days holding records after it, each
    gap between them counted at most MAX_GAP_DAYS, must add up to the retention. A clock set
    forward (or back) thus never removes a partition younger than the retention by its records'
    times; downtime only makes partitions stay longer.
    """
    if retention_days < RETENTION_FLOOR_DAYS:
        raise LogConfigError(f"retention_days = {retention_days}: Order 292 art. 14 requires at least {RETENTION_FLOOR_DAYS} days")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    cutoff = now_ms - retention_days * DAY_MS
    all_parts = partition_paths(directory)
    days = sorted({day_start_ms(p.parent.name) // DAY_MS for p in all_parts})
    # elapsed[d]: days of log after day d, gaps capped.
    elapsed: dict[int, int] = {}
    acc = 0
    for i in range(len(days) - 1, -1, -1):
        elapsed[days[i]] = acc
        if i:
            acc += min(days[i] - days[i - 1], MAX_GAP_DAYS)
    removed: list[Path] = []
    for p in all_parts:
        if p.suffix != ".sealed" or (worker is not None and worker_of(p) != f"w{worker}"):
            continue
        meta = read_sealed_meta(p)
        day_no = day_start_ms(p.parent.name) // DAY_MS
        if meta["max_ts"] >= cutoff or day_start_ms(p.parent.name) + DAY_MS > cutoff:
            continue
        if elapsed.get(day_no, 0) < retention_days:
            continue  # the records after it span less than the retention: the clock jumped
        append_heads(directory, {"event": "retire", "partition": part_name(p), "count": meta["count"],
                                 "head": meta["head"], "prev_head": meta["prev_head"], "max_ts": meta["max_ts"],
                                 "ts_ms": now_ms})
        p.unlink()
        removed.append(p)
        if stats is not None:
            stats.retired += 1
        with contextlib.suppress(OSError):
            p.parent.rmdir()  # only when empty
        log.info("access log: retired %s (newest record older than %d days)", p, retention_days)
    return removed


# -- sealing ----------------------------------------------------------------------------------


class BlockTable:
    """A format-2 partition's block table (binary: offset u64, length u32, records u32, first and
    last time i64 per block), read without parsing per block; rows as format 1's JSON rows."""

    def __init__(self, raw: bytes, n: int) -> None:
        self.n = n
        arrs: list[array[int]] = []
        pos = 0
        for code in ("Q", "I", "I", "q", "q"):
            a = array(code)
            a.frombytes(raw[pos:pos + n * a.itemsize])
            if len(a) != n:
                raise FormatError("truncated block table")
            if sys.byteorder == "big":  # pragma: no cover
                a.byteswap()
            pos += n * a.itemsize
            arrs.append(a)
        self.off, self.clen, self.count, self.lo, self.hi = arrs

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, b: int) -> list[int]:
        if not 0 <= b < self.n:
            raise IndexError(b)
        return [self.off[b], self.clen[b], self.count[b], self.lo[b], self.hi[b]]

    def __iter__(self) -> Iterator[list[int]]:
        return (self[b] for b in range(self.n))

    @staticmethod
    def pack(rows: list[list[Any]]) -> bytes:
        out = b""
        for i, code in enumerate(("Q", "I", "I", "q", "q")):
            a = array(code, [r[i] for r in rows])
            if sys.byteorder == "big":  # pragma: no cover
                a.byteswap()
            out += a.tobytes()
        return out


def read_sealed_meta(path: Path, segments: bool = True) -> dict[str, Any]:
    """A sealed partition's meta. Format 2 keeps its block table and chain segments in binary
    sections: ``meta["blocks"]`` is then a :class:`BlockTable` and, with ``segments``,
    ``meta["segments"]`` the [records, head] of each log-order segment."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size < TRAILER.size:
            raise FormatError(f"{path}: truncated sealed partition ({size} bytes)")
        f.seek(size - TRAILER.size)
        moff, mlen, magic = TRAILER.unpack(f.read(TRAILER.size))
        if magic != SEAL_MAGIC or moff + mlen + TRAILER.size != size:
            raise FormatError(f"{path}: truncated or damaged sealed partition (no valid trailer)")
        f.seek(moff)
        try:
            meta: dict[str, Any] = json.loads(f.read(mlen))
        except ValueError as exc:
            raise FormatError(f"{path}: damaged meta: {exc}") from None
        try:
            if "block_table" in meta:
                off, n = meta["block_table"]
                f.seek(off)
                meta["blocks"] = BlockTable(f.read(n * 32), n)
            if segments and "segment_table" in meta:
                off, n = meta["segment_table"]
                f.seek(off)
                raw = f.read(n * 36)
                counts = array("I")
                counts.frombytes(raw[:4 * n])
                if len(counts) != n or len(raw) != 36 * n:
                    raise FormatError("truncated segment table")
                if sys.byteorder == "big":  # pragma: no cover
                    counts.byteswap()
                heads = raw[4 * n:]
                meta["segments"] = [[c, heads[32 * i:32 * i + 32].hex()] for i, c in enumerate(counts)]
        except (FormatError, ValueError, TypeError) as exc:
            raise FormatError(f"{path}: damaged meta tables: {exc}") from None
    return meta


def _decoded_columns(lines: list[bytes]) -> list[tuple[bytes, ...]]:
    """A block's columns from its decoded records (escapes undone): the index keys of a block
    whose lines hold an escape, or that are not all of one shape."""
    enc = [tuple(str(v).encode("utf-8", "surrogateescape") for v in decode(ln)) for ln in lines]
    return list(zip(*enc, strict=True))


_SERVER, _PORT, _CLIENT, _ACCOUNT, _NAME, _NAT = (FIELDS.index(f) for f in ("server_ip", "server_port", "client_ip", "account",
                                                                            "name", "nat"))
_DIRECTION = FIELDS.index("direction")
_KIND = FIELDS.index("kind")
_SUMMARY_AT = [FIELDS.index(f) for f in ("name", "server_ip", "server_port", "account", "verdict", "kind", "action",
                                         "reason", "filing_number")]


def _index_block(cols: list[tuple[bytes, ...]], b: int, posts: dict[str, Postings],
                 summary: dict[tuple[bytes, ...], list[int]]) -> tuple[int, int]:
    """Post block ``b`` under its keys, add its records to the summary; its (min, max) time."""
    ts = list(map(int, cols[0]))
    names = [n for n in dict.fromkeys(cols[_NAME]) if n]
    posts["n"].add(dict.fromkeys(k.encode("utf-8", "surrogateescape") for n in names
                                 for k in name_keys(n.decode("utf-8", "surrogateescape"))), b)
    posts["c"].add(dict.fromkeys(cols[_CLIENT]), b)
    posts["a"].add(dict.fromkeys(cols[_ACCOUNT]), b)
    servers = list(dict.fromkeys(cols[_SERVER]))
    eps = list(dict.fromkeys(map(b"|".join, zip(cols[_SERVER], cols[_PORT], strict=True))))
    for nat in dict.fromkeys(cols[_NAT]):
        ep = split_endpoint(nat.decode("utf-8", "surrogateescape")) if nat else None
        if ep is not None:
            servers.append(ep[0].encode())
            eps.append(endpoint_key(*ep).encode())
    posts["s"].add(servers, b)
    posts["p"].add(eps, b)
    # The summary is of hosted servers (the audit's): outbound flows reach others; unnamed
    # connections make one row per server address (port 0), not one per port.
    ports = [b"0" if k == b"conn" else p for p, k in zip(cols[_PORT], cols[_KIND], strict=True)]
    n = len(ts)
    dirs = cols[_DIRECTION] if len(cols) > _DIRECTION else (b"",) * n
    at = _SUMMARY_AT
    keys = zip(cols[at[0]], cols[at[1]], ports, cols[at[3]], cols[at[4]], cols[at[5]], cols[at[6]], cols[at[7]], cols[at[8]],
               strict=True)
    get = summary.get
    for k, t, d in zip(keys, ts, dirs, strict=True):
        if d == b"out":
            continue
        row = get(k)
        if row is None:
            summary[k] = [t, t, 1]
        else:
            if t < row[0]:
                row[0] = t
            elif t > row[1]:
                row[1] = t
            row[2] += 1
    return min(ts), max(ts)


def seal_partition(path: Path, cfg: LogConfig) -> Path:
    """Compress an open partition into a sealed one (blocks + index), after checking its chain."""
    part = read_open(path)
    hdr, frames = part.header, part.frames
    if part.end != part.size:
        raise FormatError(f"{path}: {part.why}: repair before sealing")
    head = bytes.fromhex(hdr["prev_head"])
    lines: list[bytes] = []
    # Each frame's payload is let go once split into lines: the partition is held once, not twice.
    frames.reverse()
    while frames:
        fr = frames.pop()
        fl = fr.payload.splitlines(keepends=True)
        head = chain(head, fl, cfg.key)
        if head != fr.head:
            raise FormatError(f"{path}: chain broken in the frame at offset {fr.offset}: not sealing a tampered partition")
        lines.extend(fl)
    bs = cfg.block_records
    # The chain heads per segment of ``bs`` records in log order (what verify recomputes).
    segments: list[list[Any]] = []
    head = bytes.fromhex(hdr["prev_head"])
    for i in range(0, len(lines), bs):
        head = chain(head, lines[i:i + bs], cfg.key)
        segments.append([len(lines[i:i + bs]), head.hex()])
    # Clustered by server endpoint (stable: log order within one), each record keeping its position.
    # One bytes key per record (server ``ip\tport``: tab sorts below every character of an address,
    # so the order is that of (ip, port) tuples at a third of their memory).
    ends = [b"\t".join(ln.split(b"\t", 6)[4:6]) for ln in lines]
    order = sorted(range(len(lines)), key=ends.__getitem__)
    del ends
    out = path.with_suffix(".sealed.tmp")
    hdr_bytes = header_line({**hdr, "sealed": True})
    posts = {k: Postings(len(lines)) for k in KEY_KINDS_V2}
    blocks: list[list[Any]] = []
    min_ts = max_ts = None
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(hdr_bytes)
            pos = len(hdr_bytes)
            bsummary: dict[tuple[bytes, ...], list[int]] = {}
            for b, i in enumerate(range(0, len(lines), bs)):
                seqs = order[i:i + bs]
                chunk = [lines[j] for j in seqs]
                cols = split_block(chunk)
                escaped = cols is None or any(b"\\" in ln for ln in chunk)
                lo, hi = _index_block(_decoded_columns(chunk) if escaped else cols, b, posts, bsummary)  # type: ignore[arg-type]
                comp = encode_block(chunk, cols, seqs)
                f.write(comp)
                blocks.append([pos, len(comp), len(chunk), lo, hi])
                pos += len(comp)
                min_ts = lo if min_ts is None or lo < min_ts else min_ts
                max_ts = hi if max_ts is None or hi > max_ts else max_ts
            kinds: dict[str, list[int]] = {}
            for kind in KEY_KINDS_V2:
                sec = build_kind_v2(posts[kind], len(blocks))
                f.write(sec)
                kinds[kind] = [pos, len(sec)]
                pos += len(sec)
            summary = {tuple(x.decode("utf-8", "surrogateescape") for x in k): v for k, v in bsummary.items()}
            summ = zlib.compress(encode_summary(summary), 6)
            f.write(summ)
            summ_at = [pos, len(summ)]
            pos += len(summ)
            # The block table and the chain segments in binary (a query parses no row of them).
            table = BlockTable.pack(blocks)
            f.write(table)
            table_at = [pos, len(blocks)]
            pos += len(table)
            counts = array("I", [n for n, _ in segments])
            if sys.byteorder == "big":  # pragma: no cover
                counts.byteswap()
            seg = counts.tobytes() + b"".join(bytes.fromhex(h) for _, h in segments)
            f.write(seg)
            seg_at = [pos, len(segments)]
            pos += len(seg)
            meta = {**hdr, "sealed": True, "format": SEAL_FORMAT, "count": len(lines), "head": head.hex(),
                    "min_ts": min_ts or 0, "max_ts": max_ts or 0, "block_table": table_at, "segment_table": seg_at,
                    "index_kinds": kinds, "summary": summ_at}
            mb = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
            f.write(mb)
            f.write(TRAILER.pack(pos, len(mb), SEAL_MAGIC))
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            out.unlink()
        raise
    final = path.with_suffix(".sealed")
    os.replace(out, final)
    fsync_dir(final.parent)
    directory = path.parent.parent
    append_heads(directory, {"event": "seal", "partition": f"{path.parent.name}/{path.stem}", "count": len(lines),
                             "prev_head": hdr["prev_head"], "head": head.hex(), "sha256": file_sha256(final),
                             "ts_ms": int(time.time() * 1000)})
    path.unlink()
    with contextlib.suppress(FileNotFoundError):
        mark_path(path).unlink()
    fsync_dir(final.parent)
    log.info("access log: sealed %s: %d records, chain head %s", final, len(lines), head.hex())
    return final


def encode_summary(summary: dict[tuple[str, ...], list[int]]) -> bytes:
    """Per (name, server, port, account, verdict, kind, action, reason, filing): first, last, hits.
    What the passive audit reads instead of every record."""
    esc = str.maketrans({"\t": " ", "\n": " "})
    return "".join("\t".join(x.translate(esc) for x in k) + f"\t{v[0]}\t{v[1]}\t{v[2]}\n"
                   for k, v in summary.items()).encode("utf-8", "surrogateescape")


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
