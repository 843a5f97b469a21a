"""One capture worker process: its own sockets, decoder, pipeline, sinks and log partition.

It reports to the supervisor (``supervisor.py``) through its connection: a ready message, then
snapshots (counters, gauges, rows of the active-resource view) a few times a second. Each part of
the worker reports its own counters (``metrics()``, DESIGN.md); the snapshot merges them in one
loop (:func:`worker_metrics`) and reads no part's internals.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Protocol

from beiand.accesslog import AccessLog
from beiand.enforce.nfqueue import NfQueue
from beiand.model import MetricValues
from beiand.net.decoder import Decoder
from beiand.policy.overlays import Decider
from beiand.runtime.housekeeping import clickhouse_retire, every
from beiand.runtime.inline import InlinePath
from beiand.runtime.ipc import CloseBreaker, Go, MetricKey, Prepared, Ready, Rows, Snapshot, WorkerMessage
from beiand.runtime.metrics import PER_WORKER
from beiand.runtime.pipeline import Pipeline
from beiand.runtime.wiring import (
    State,
    StateError,
    access_log_sinks,
    decider,
    decoder_config,
    inline_marks,
    live_captures,
    make_enforcer,
)
from beiand.sinks.active import ActiveResourceAggregate

if TYPE_CHECKING:
    from beiand.sinks.clickhouse import ClickHouseSink  # aiohttp: imported by a worker that writes to ClickHouse only

log = logging.getLogger("beiand")
SNAPSHOT_INTERVAL = 0.25  # small deltas often: a big snapshot would stall the capture loop
# Rows of the active-resource view go to the main process in small messages between snapshots:
# gathering 128 rows takes about 0.3 ms of the capture loop (5,000 at once stalled it for 14 ms,
# the whole p99 of the decision latency).
ROWS_INTERVAL = 0.01
OUTBOX_MAX = 256  # messages waiting for a main process that does not read; beyond, rows are dropped


def close_dying(idx: int, steps: Sequence[Callable[[], object]], alog: AccessLog) -> int:
    """A dying worker's last steps (flush the pipeline, close the log and sinks), each tried even
    when one before it failed; returns the records the log still held unwritten (issue 17)."""
    for step in steps:
        try:
            step()
        except BaseException as exc:  # the next step must still run
            log.critical("worker %d: %s failed while dying: %s", idx, getattr(step, "__qualname__", step), exc)
    return alog.pending


# -- worker process -------------------------------------------------------------------------------


class Reporting(Protocol):
    """A part of the worker that reports its own counters and gauges."""

    def metrics(self) -> Mapping[MetricKey, float]: ...


def worker_metrics(idx: int, parts: Iterable[Reporting]) -> MetricValues:
    """The counters and gauges of a worker's snapshot: every part's own ``metrics()``, with the
    worker's number added to the series labelled by worker (``metrics.PER_WORKER``); a series two
    parts report is summed (one ring per interface; the view's rows left out by the aggregate and
    by the outbox)."""
    w = (str(idx),)
    out: MetricValues = {}
    for part in parts:
        for key, value in part.metrics().items():
            if key.metric in PER_WORKER:
                key = MetricKey(key.metric, w + key.labels)
            out[key] = out.get(key, 0) + value
    return out


def worker_parts(caps: Sequence[Reporting], pipe: Pipeline, alog: AccessLog, ch: ClickHouseSink | None,
                 path: InlinePath | None, enforcer: Reporting, outbox: Reporting) -> list[Reporting]:
    """Every part of a worker that reports metrics: capture rings, decoder, pipeline, its sinks,
    the access log, ClickHouse (the log's writer when configured), the inline queue, the enforcer,
    the outbox to the main process."""
    return [*caps, pipe.decoder, pipe, *pipe.sinks, alog, *((ch,) if ch is not None else ()),
            *((path,) if path is not None else ()), enforcer, outbox]


class _Outbox:
    """Messages from a worker to the main process, pickled and sent by a thread.

    The capture loop only queues them: a main process slow to read (it shares the cores with
    the workers and the traffic) made a snapshot's send block for 3-7 ms, the whole p99 of the
    decision latency. Snapshots carry cumulative counters, so one skipped costs nothing; rows
    of the view skipped are counted.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.queue: collections.deque[WorkerMessage | None] = collections.deque()
        self.wake = threading.Event()
        self.broken = False  # the main process is gone
        self.dropped_rows = 0  # rows of the view dropped here: counted with the aggregate's
        self.thread = threading.Thread(target=self._run, name="worker-outbox", daemon=True)
        self.thread.start()

    def put(self, msg: WorkerMessage) -> None:
        if len(self.queue) >= OUTBOX_MAX:
            self.dropped_rows += len(msg.rows) if isinstance(msg, (Rows, Snapshot)) else 0
            return
        self.queue.append(msg)
        self.wake.set()

    def _run(self) -> None:
        q = self.queue
        while True:
            self.wake.wait()
            self.wake.clear()
            while q:
                msg = q.popleft()
                if msg is None:
                    return
                try:
                    self.conn.send(msg)
                except (BrokenPipeError, OSError, ValueError):
                    self.broken = True
                    return

    def metrics(self) -> MetricValues:
        return {MetricKey("beiand_active_view_dropped"): self.dropped_rows}

    def close(self, timeout: float) -> None:
        """Send what is queued (at most ``timeout`` seconds), then stop."""
        self.queue.append(None)
        self.wake.set()
        self.thread.join(timeout)


def _wait_for_go(conn: Connection, ppid: int, stopping: Callable[[], bool]) -> bool:
    """A prepared replacement waits for the main process's :class:`Go`; False: told to stop, or
    the main process is gone."""
    conn.send(Prepared(os.getpid()))
    while not stopping():
        try:
            if conn.poll(0.05) and isinstance(conn.recv(), Go):
                return True
        except (EOFError, OSError):
            return False
        if os.getppid() != ppid:
            return False
    return False


def worker_main(idx: int, state: State, conn: Connection, fanout_group: int, inherited: Sequence[int] = (),
                queue: NfQueue | None = None, handover: bool = False) -> None:
    """One capture worker: its own sockets, decoder, pipeline and log partition. ``queue``: the
    inline queue the main process bound (it outlives workers: while one is replaced, the kernel
    holds the packets for the next instead of passing them unjudged). ``handover`` (a reload): the
    worker builds what it can, joins the capture, says :class:`Prepared` and waits for :class:`Go`
    (the worker it replaces has stopped) before it opens the log partition and reads the queue."""
    # The fork inherited the main process's event-loop signal wakeup fd: a signal to this
    # worker must not be read as one to the main process.
    signal.set_wakeup_fd(-1)
    # The main process's ends of the other workers' pipes came with the fork: close them, or a
    # dead main process would leave those pipes open (a worker would wait on them forever).
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    ppid = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: die with the main process
    if cfg_rt := state.config.capture.realtime_priority:
        # Before any thread starts: the log's committer and the outbox inherit the policy.
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(cfg_rt))
        except OSError as exc:
            log.warning("worker %d: capture.realtime_priority = %d not applied (%s); normal scheduling", idx, cfg_rt,
                        exc.strerror)
    # The loaded index is millions of long-lived objects: keep the cyclic GC from walking them
    # (a full collection would stall capture for tens of milliseconds).
    gc.freeze()
    # The log's committer thread shares the GIL: a short switch interval bounds how long the
    # capture loop can wait for it (the default 5 ms would show in the decision latency's tail).
    sys.setswitchinterval(0.0005)
    cfg = state.config
    inline = cfg.enforce.inline
    caps = live_captures(cfg, fanout_group)
    agg = ActiveResourceAggregate()
    decoder = Decoder(decoder_config(cfg))
    enforcer = make_enforcer(cfg)
    try:
        decide = decider(cfg, state.policy, live=True)
    except StateError as exc:  # isms.profile: checked by the supervisor before it started the workers; changed since
        log.error("worker %d: %s; deciding without the overlays", idx, exc)
        decide = Decider(state.policy, grace_seconds=cfg.enforce.grace_seconds)
    if handover and not _wait_for_go(conn, ppid, lambda: stop):
        for cap in caps:
            cap.close()
        return
    alog, ch, sinks = access_log_sinks(cfg, idx, state.nat, state.register_version)
    pipe = Pipeline(decoder, decide, [*sinks, agg], actor=enforcer.enforce, gateway=cfg.gateway)
    # Inline: the queue has its own thread (issue 22); it and the capture loop share the decoder
    # and the pipeline under this lock.
    lock = threading.Lock()
    path = InlinePath(queue or NfQueue(cfg.enforce.queue + idx), pipe, lock, inline_marks(cfg)) if inline else None
    conn.send(Ready(os.getpid()))
    feed = pipe.feed
    next_snap = time.monotonic() + SNAPSHOT_INTERVAL
    next_rows = time.monotonic() + ROWS_INTERVAL
    if ch is not None and idx == 0:  # ClickHouse retention (whole day partitions), off the capture loop
        every(3600, functools.partial(clickhouse_retire, ch), "clickhouse-retention", first=60)
    import select

    poller = select.poll()
    for cap in caps:
        poller.register(cap.fileno(), select.POLLIN)

    def snapshot(crashes: int = 0, crash_lost: int = 0, died: str = "") -> Snapshot:
        m = worker_metrics(idx, parts)
        cpu = os.times()  # this process: the capture loop, the queue thread, the log's committer
        m[MetricKey("beiand_worker_cpu_seconds", (str(idx),))] = cpu.user + cpu.system
        if crashes:
            m[MetricKey("beiand_worker_crashes")] = crashes
            m[MetricKey("beiand_worker_crash_lost_records")] = crash_lost
        return Snapshot(m, alog.take_fsync_seconds(), agg.take_latency(), enforcer.take_latency(), agg.take(), alog.failing,
                        enforcer.breaker.why if enforcer.breaker.open else "", alog.position, died)

    def _capture_loop() -> None:
        nonlocal next_snap, next_rows
        while not stop:
            if path is not None:
                if path.failed is not None:
                    raise path.failed
                for fd, ev in poller.poll(100):
                    for cap in caps:
                        if cap.fileno() == fd:
                            if ev & select.POLLERR:  # the link went down: read the error, or poll() spins
                                cap.clear_error()
                            frames = cap.read(0)
                            with lock:
                                for ts, frame in frames:
                                    feed(ts, frame, 1)
            elif len(caps) == 1:
                for ts, frame in caps[0].read(100):
                    feed(ts, frame, 1)
            else:
                for fd, ev in poller.poll(100):
                    for cap in caps:
                        if cap.fileno() == fd:
                            if ev & select.POLLERR:
                                cap.clear_error()
                            for ts, frame in cap.read(0):
                                feed(ts, frame, 1)
            now = time.monotonic()
            if outbox.broken:
                break
            if now >= next_rows and agg.changed and now < next_snap:
                next_rows = now + ROWS_INTERVAL
                with lock:
                    rows = agg.take()
                outbox.put(Rows(rows))
            if now >= next_snap:
                next_snap = now + SNAPSHOT_INTERVAL
                decide.prepare()  # a changed snapshot read outside the lock: the queue thread decides meanwhile
                with lock:
                    if not housekeep():
                        break

    def housekeep() -> bool:
        """The worker's periodic duties, under the lock (the queue thread may be deciding); False: stop."""
        pipe.tick(time.time())  # a quiet link: connection records whose window closed (issue 19)
        # The one reload path of every overlay (closure orders, the regulator's commands): each
        # re-reads its file when it changed, so a change applies within a second on every worker.
        decide.reload()
        try:
            while conn.poll():
                cmd = conn.recv()
                if isinstance(cmd, CloseBreaker):
                    enforcer.breaker.close()
            if os.getppid() != ppid:
                log.error("worker %d: the main process is gone; stopping", idx)
                return False
        except (BrokenPipeError, EOFError, OSError):
            return False
        outbox.put(snapshot())
        return True

    outbox = _Outbox(conn)
    parts = [*worker_parts(caps, pipe, alog, ch, path, enforcer, outbox), decide]
    ending = threading.Event()  # the capture loop is over: the queue thread stops too
    if path is not None:
        path.start(lambda: stop or ending.is_set())
    try:
        _capture_loop()
    except BaseException as exc:
        # Issue 17: a worker that dies anyway first flushes and closes its log, where it still
        # can, so the records since the last commit are not lost with it; the loss is counted.
        log.critical("worker %d: capture loop died: %s: %s; closing the access log", idx, type(exc).__name__, exc)
        ending.set()
        if path is not None:
            path.join(0.5)
        lost = close_dying(idx, [pipe.finish, alog.close, *((ch.close,) if ch is not None else ())], alog)
        outbox.put(snapshot(crashes=1, crash_lost=lost, died=type(exc).__name__))
        outbox.close(2.0)
        raise
    ending.set()
    if path is not None:
        path.join(1.0)
    with lock:
        pipe.finish()
    if path is not None:
        path.queue.close()
    alog.close()
    if ch is not None:
        ch.close()
    outbox.put(snapshot())
    outbox.close(2.0)
    for cap in caps:
        cap.close()


