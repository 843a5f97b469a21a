"""``beiand run``: the live daemon.

The main process loads and validates the config, records and inventory, then forks N capture
workers (they share the loaded index copy-on-write). Each worker is a whole pipeline: its own
``AF_PACKET`` sockets in one ``PACKET_FANOUT`` group, its own decoder and its own access-log
partition. Workers send counters and observation summaries to the main process every second;
the main process serves ``/metrics`` and the API, talks to systemd (``sd_notify``: READY,
RELOADING, STOPPING, WATCHDOG), restarts a worker that died, reloads on SIGHUP or when a records
file changes (a bad file keeps the old state), retires old log partitions, and on SIGTERM stops
the workers, which flush their logs.

Reload: the new state is built and validated in the main process; only then are the workers
replaced one at a time (the fanout group keeps capturing on the others meanwhile).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import gc
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from beiand import __version__
from beiand.accesslog import AccessLog, AccessLogSink, LogConfig, retire
from beiand.accesslog.reader import stats as log_stats
from beiand.capture.bpf import build as build_bpf
from beiand.capture.filterexpr import Condition
from beiand.capture.live import LiveCapture
from beiand.enforce import Enforcer, EnforceSettings, Injector, OrderError, OrderStore
from beiand.enforce.nfqueue import NfQueue, install_rules, remove_rules, rule_specs
from beiand.enforce.nft import Nft, NftError
from beiand.errors import BeiandError
from beiand.model import Decision, Observation, endpoint
from beiand.net.decoder import LINKTYPE_RAW, Decoder
from beiand.policy import Policy, lookup_answer
from beiand.policy.inventory import Inventory, InventoryError, load_inventory
from beiand.records import ImportRefused, build_index, load_files, normalise_domain
from beiand.records.domains import DomainError
from beiand.records.importer import canonical_ip
from beiand.records.index import RecordIndex
from beiand.runtime import logsetup
from beiand.runtime.http import HttpLimits, make_app
from beiand.runtime.http import start as start_http
from beiand.runtime.metrics import Metrics
from beiand.runtime.pipeline import Pipeline
from beiand.runtime.settings import Config, ConfigError, load_config, secret_problem
from beiand.runtime.wiring import decoder_config, policy_config

log = logging.getLogger("beiand")
SNAPSHOT_INTERVAL = 0.25  # small deltas often: a big snapshot would stall the capture loop
# Rows of the active-resource view go to the main process in small messages between snapshots:
# gathering 128 rows takes about 0.3 ms of the capture loop (5,000 at once stalled it for 14 ms,
# the whole p99 of the decision latency).
ROWS_INTERVAL = 0.01
ROWS_PER_MESSAGE = 128
OUTBOX_MAX = 256  # messages waiting for a main process that does not read; beyond, rows are dropped
MAX_CHANGED_ROWS = 100_000  # rows waiting to be sent; beyond this the view drops (and counts) them
MAX_VIEW_ROWS = 100_000  # the main process's active-resource view


# -- systemd --------------------------------------------------------------------------------------


def sd_notify(message: str) -> bool:
    """Send a state line to systemd (``NOTIFY_SOCKET``); no libsystemd needed."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    # Never block: a manager that does not read its socket must not stall the daemon (a full
    # datagram queue would otherwise block sendto, and with it the event loop).
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as s:
        try:
            s.sendto(message.encode(), path)
        except BlockingIOError:
            log.warning("sd_notify: the manager's socket is full; %r dropped", message.split("\n")[0])
            return False
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
            return False
    return True


def watchdog_interval() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2


# -- state ----------------------------------------------------------------------------------------


@dataclass
class State:
    """Everything loaded from files: replaced as a whole on reload, never in part."""

    config: Config
    index: RecordIndex
    inventory: Inventory
    policy: Policy
    loaded_at: float
    mtimes: dict[str, float] = field(default_factory=dict)
    # The export's age is its file's mtime (the CSV/JSON/XLSX exports carry no export time of
    # their own): the oldest of records.files, taken when they were loaded, so records kept in
    # service after a refused reload keep ageing.
    records_mtime: float = 0.0


class StateError(BeiandError):
    pass


class RecordsRefused(StateError):
    """The records of a reload were refused; the index in service stays."""

    def __init__(self, message: str, files: Sequence[str], offered: int | None, in_service: int) -> None:
        super().__init__(message)
        self.files = list(files)
        self.offered = offered  # valid filings in the refused files (None: unreadable)
        self.in_service = in_service


def load_state(config_path: str, previous: State | None = None) -> State:
    """Config, records, inventory and policy, built to the side.

    With ``previous`` (every reload: SIGHUP, a file change, ``POST /api/v1/reload``), the new
    records must not lose more than ``records.max_loss`` of the filings in service: a truncated
    export would otherwise turn filed sites "unfiled" at once (DESIGN.md failure rules).
    """
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        raise StateError(str(exc)) from None
    for w in cfg.warnings:
        log.warning("config: %s", w)
    files = [str(p) for p in cfg.records.files]
    in_service = len(previous.index.filings) if previous is not None else 0
    result = None
    try:
        result = load_files(files, strict=cfg.records.strict, status_map=cfg.records.status_map)
        index = build_index(result, previous=previous.index if previous is not None else None, max_loss=cfg.records.max_loss,
                            loaded_at=time.time())
    except ImportRefused as exc:
        offered = len(result.filings) if result is not None else None
        guard = f" (records.max_loss = {cfg.records.max_loss:g})" if offered and offered < in_service else ""
        raise RecordsRefused(f"records refused: {', '.join(files)}: {exc}{guard}", files, offered, in_service) from None
    for e in result.errors[:20]:
        log.warning("records: skipped %s", e)
    try:
        inv = load_inventory(str(cfg.inventory.file)) if cfg.inventory.file else Inventory([])
    except InventoryError as exc:
        raise StateError("inventory invalid: " + "; ".join(exc.problems)) from None
    try:
        pcfg = policy_config(cfg)
    except ConfigError as exc:
        raise StateError(f"policy: {exc}") from None
    watched = [*files, *([str(cfg.inventory.file)] if cfg.inventory.file else []), config_path]
    mtimes = {p: _mtime(p) for p in watched}
    records_mtime = min((mtimes[p] for p in files), default=0.0)
    return State(cfg, index, inv, Policy(index, inv, pcfg), time.time(), mtimes, records_mtime)


def _mtime(p: str) -> float:
    try:
        return os.stat(p).st_mtime
    except OSError:
        return 0.0


def read_secret(path: Path, permissions: str) -> bytes:
    """A secret file, checked again as it is read (it may have changed since the config was
    checked): readable by group or others is refused unless ``daemon.secret_permissions = "warn"``."""
    why = secret_problem(path)
    if why:
        if permissions != "warn":
            raise StateError(f"{why} (daemon.secret_permissions = \"warn\" accepts it)")
        log.warning("%s", why)
    return path.read_bytes()


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


class _Aggregate:
    """Sink: per-(name, server, account, verdict) summaries for the active-resource view."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, int, str, str, str, str], list[float]] = {}
        self.changed: set[tuple[str, str, int, str, str, str, str]] = set()
        self.counts: dict[tuple[str, str, str], int] = {}
        self.latency: list[float] = []
        self.view_dropped = 0  # rows the view could not keep up with (the access log has them all)

    @property
    def counters(self) -> dict[str, float]:
        c: dict[str, float] = {}
        for (kind, verdict, action), n in self.counts.items():
            for k in (f"obs:{kind}", f"verdict:{verdict}", f"action:{action}", f"va:{verdict}/{action}"):
                c[k] = c.get(k, 0) + n
        return c

    def on_decision(self, obs: Observation, d: Decision) -> None:
        # Plain strings (an enum member's _value_), not the members: cheaper to pickle and compare.
        v, kind, action = d.verdict.verdict._value_, obs.kind._value_, d.action._value_
        key = (obs.name, obs.server_ip, obs.server_port, d.account, v, kind, action)
        row = self.rows.get(key)
        if row is None:
            self.rows[key] = [obs.ts, obs.ts, 1]  # first seen, last seen, hits since the last take()
        else:
            row[1] = obs.ts
            row[2] += 1
        changed = self.changed
        if key not in changed:
            if len(changed) >= MAX_CHANGED_ROWS:
                self.view_dropped += 1
            else:
                changed.add(key)
        ck = (kind, v, action)
        self.counts[ck] = self.counts.get(ck, 0) + 1
        if len(self.latency) < 10_000:
            self.latency.append(time.time() - obs.ts)

    def flush(self) -> None:
        pass

    def take(self, limit: int = ROWS_PER_MESSAGE) -> list[tuple[Any, ...]]:
        """The rows touched since the last call, with the hits since then (the main process adds
        them up); at most ``limit`` per call so one message stays small."""
        changed = self.changed
        if len(changed) <= limit:
            keys: Iterable[tuple[str, str, int, str, str, str, str]] = changed
            self.changed = set()
        else:
            keys = [changed.pop() for _ in range(limit)]
        rows = self.rows
        out = []
        for k in keys:
            row = rows[k]
            out.append((*k, row[0], row[1], row[2]))
            row[2] = 0
        if len(rows) > 200_000:  # bounded: forget rows with nothing left to send
            self.rows = {k: self.rows[k] for k in self.changed}
        return out


def _ch_retire(ch: Any) -> None:
    try:
        dropped = ch.retire()
        if dropped:
            log.info("ClickHouse: dropped day partitions %s (older than the retention)", ", ".join(dropped))
    except Exception as exc:
        log.error("ClickHouse retention failed: %s", exc)


def make_enforcer(cfg: Config) -> Enforcer:
    e = cfg.enforce
    settings = EnforceSettings(inline=e.inline, quic_block_seconds=e.quic_block_seconds,
                               grace_seconds=e.grace_seconds, max_blocks_per_minute=e.max_blocks_per_minute,
                               max_unfiled_share=e.max_unfiled_share, min_verdicts_for_share=e.min_verdicts_for_share,
                               contact=e.contact, provider_name=e.provider_name)
    injector: Injector | None = None
    nft: Nft | None = None
    try:
        injector = Injector()
    except OSError as exc:
        log.warning("enforcement: no raw socket (%s): resets and block pages are unavailable", exc)
    try:
        nft = Nft()
    except NftError as exc:
        log.warning("enforcement: %s: QUIC and IP blocks are unavailable", exc)
    orders = None
    try:
        orders = OrderStore(cfg.daemon.state_dir)
    except OrderError as exc:
        log.error("%s", exc)
    return Enforcer(settings, injector, nft, orders)


class _Outbox:
    """Messages from a worker to the main process, pickled and sent by a thread.

    The capture loop only queues them: a main process slow to read (it shares the cores with
    the workers and the traffic) made a snapshot's send block for 3-7 ms, the whole p99 of the
    decision latency. Snapshots carry cumulative counters, so one skipped costs nothing; rows
    of the view skipped are counted.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.queue: collections.deque[dict[str, Any] | None] = collections.deque()
        self.wake = threading.Event()
        self.broken = False  # the main process is gone
        self.dropped_rows = 0
        self.thread = threading.Thread(target=self._run, name="worker-outbox", daemon=True)
        self.thread.start()

    def put(self, msg: dict[str, Any]) -> None:
        if len(self.queue) >= OUTBOX_MAX:
            self.dropped_rows += len(msg.get("obs", ()))
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

    def close(self, timeout: float) -> None:
        """Send what is queued (at most ``timeout`` seconds), then stop."""
        self.queue.append(None)
        self.wake.set()
        self.thread.join(timeout)


def worker_main(idx: int, state: State, conn: Connection, fanout_group: int, inherited: Sequence[int] = ()) -> None:
    """One capture worker: its own sockets, decoder, pipeline and log partition."""
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
    ifaces = cfg.capture.interfaces
    inline = cfg.enforce.inline
    # Inline: watched TCP/UDP arrive through NFQUEUE; AF_PACKET carries the DNS answers only.
    prog = build_bpf(() if inline else cfg.capture.tcp_ports, () if inline else cfg.capture.udp_ports, dns=cfg.capture.dns,
                     condition=Condition(cfg.capture.filter) if cfg.capture.filter else None)
    caps = [LiveCapture(i, prog, fanout_group=fanout_group, block_size=cfg.capture.ring_block_kib * 1024,
                        blocks=cfg.capture.ring_blocks, outgoing=len(ifaces) == 1,
                        block_timeout_ms=cfg.capture.ring_block_timeout_ms, version=cfg.capture.ring_version) for i in ifaces]
    al = cfg.accesslog
    key = read_secret(al.hmac_key_file, cfg.daemon.secret_permissions).strip() if al.hmac_key_file else None
    sinks: list[Any] = []
    ch = None
    if al.clickhouse.url:
        from beiand.accesslog.clickhouse import ClickHouseSink

        c = al.clickhouse
        ch = ClickHouseSink(c.url, c.spill_dir or al.directory / "spill", database=c.database, table=c.table, user=c.user,
                            password=read_secret(c.password_file, cfg.daemon.secret_permissions).decode().strip()
                            if c.password_file else "", worker=idx,
                            batch_records=c.batch_records, retention_days=al.retention_days)
    # Checkpoints also go off the machine: the journal (a log line) and, when configured, ClickHouse.
    alog = AccessLog(LogConfig(al.directory, worker=idx, gateway=cfg.gateway, retention_days=al.retention_days,
                               commit_interval=al.commit_interval, commit_records=al.commit_records, max_buffer=al.max_buffer,
                               key=key, checkpoint_interval=al.checkpoint_interval),
                     on_checkpoint=ch.anchor if ch is not None else None)
    sinks.append(AccessLogSink(ch if ch is not None else alog, cfg.gateway))
    agg = _Aggregate()
    decoder = Decoder(decoder_config(cfg))
    enforcer = make_enforcer(cfg)
    queue = NfQueue(cfg.enforce.queue + idx) if inline else None
    pipe = Pipeline(decoder, state.policy, [*sinks, agg], actor=enforcer)
    conn.send({"ready": True, "pid": os.getpid()})
    feed = pipe.feed
    next_snap = time.monotonic() + SNAPSHOT_INTERVAL
    next_rows = time.monotonic() + ROWS_INTERVAL
    next_retire = time.monotonic() + 60
    import select

    poller = select.poll()
    for cap in caps:
        poller.register(cap.fileno(), select.POLLIN)
    if queue is not None:
        poller.register(queue.fileno(), select.POLLIN)

    def from_queue() -> None:
        assert queue is not None
        for pid, packet in queue.packets():
            enforcer.drop_current = False
            feed(time.time(), packet, LINKTYPE_RAW)
            queue.verdict(pid, not enforcer.drop_current)
        queue.send()

    def snapshot() -> dict[str, Any]:
        c = dict(agg.counters)
        for cap in caps:
            ks = cap.stats()
            c["kernel_packets"] = c.get("kernel_packets", 0) + ks.packets
            c["kernel_drops"] = c.get("kernel_drops", 0) + ks.drops
            c["userspace_packets"] = c.get("userspace_packets", 0) + cap.frames_read
            c["userspace_bytes"] = c.get("userspace_bytes", 0) + cap.bytes_read
        for k, v in decoder.drops.items():
            c[f"drop:{k}"] = v
        c["bpf_unfollowed"] = decoder.stats["capture:bpf-unfollowed"]
        for k, v in pipe.frame_errors.items():
            c[f"drop:decide:{k}"] = v
        for kind, b in decoder.budgets.items():
            c[f"reassembly_evicted:{kind}"] = b.evicted
        st = alog.stats
        c.update(log_records=st.written, log_bytes=st.bytes_written, log_write_errors=st.write_errors, log_lost=st.lost,
                 log_torn=st.torn_repaired)
        fs, st.fsync_seconds = st.fsync_seconds, []
        lat, agg.latency = agg.latency, []
        for k, v in enforcer.actions.items():
            c[f"enforce:{k}"] = v
        for k, v in enforcer.errors.items():
            c[f"enforce_error:{k}"] = v
        elat, enforcer.latency = enforcer.latency, []
        c["view_dropped"] = agg.view_dropped + outbox.dropped_rows
        gauges = {"flows": decoder.flow_count, "log_pending": alog.pending, "chain_head": int.from_bytes(alog.head[:6], "big")}
        if ch is not None:  # the ClickHouse sink's own counters: its write errors and losses alert like the log's
            for k, v in ch.counters().items():
                c[f"ch_{k}"] = v
            gauges["ch_spilling"] = 1 if ch.spilling else 0
        return {"counters": c, "gauges": gauges,
                "fsync": fs, "latency": lat, "enforce_latency": elat, "obs": agg.take(), "log_failing": st.failing,
                "breaker": enforcer.breaker.why if enforcer.breaker.open else "", "accesslog": alog.position}

    def _capture_loop() -> None:
        nonlocal next_snap, next_rows, next_retire
        while not stop:
            if len(caps) == 1 and queue is None:
                for ts, frame in caps[0].read(100):
                    feed(ts, frame, 1)
            else:
                for fd, _ in poller.poll(100):
                    if queue is not None and fd == queue.fileno():
                        from_queue()
                        continue
                    for cap in caps:
                        if cap.fileno() == fd:
                            for ts, frame in cap.read(0):
                                feed(ts, frame, 1)
            now = time.monotonic()
            if ch is not None and idx == 0 and now >= next_retire:
                # ClickHouse retention (whole day partitions), off the capture loop.
                next_retire = now + 3600
                threading.Thread(target=_ch_retire, args=(ch,), daemon=True).start()
            if outbox.broken:
                break
            if now >= next_rows and agg.changed and now < next_snap:
                next_rows = now + ROWS_INTERVAL
                outbox.put({"obs": agg.take()})
            if now >= next_snap:
                next_snap = now + SNAPSHOT_INTERVAL
                if enforcer.orders is not None:
                    try:
                        enforcer.orders.reload()
                    except OrderError as exc:
                        log.error("%s", exc)
                try:
                    while conn.poll():
                        cmd = conn.recv()
                        if cmd.get("cmd") == "close-breaker":
                            enforcer.breaker.close()
                    if os.getppid() != ppid:
                        log.error("worker %d: the main process is gone; stopping", idx)
                        break
                except (BrokenPipeError, EOFError, OSError):
                    break
                outbox.put(snapshot())

    outbox = _Outbox(conn)
    try:
        _capture_loop()
    except BaseException as exc:
        # Issue 17: a worker that dies anyway first flushes and closes its log, where it still
        # can, so the records since the last commit are not lost with it; the loss is counted.
        log.critical("worker %d: capture loop died: %s: %s; closing the access log", idx, type(exc).__name__, exc)
        lost = close_dying(idx, [pipe.finish, alog.close, *((ch.close,) if ch is not None else ())], alog)
        snap = snapshot()
        snap["counters"]["worker_crashes"] = 1
        snap["counters"]["worker_crash_lost_records"] = lost
        snap["died"] = type(exc).__name__
        outbox.put(snap)
        outbox.close(2.0)
        raise
    pipe.finish()
    if queue is not None:
        queue.close()
    alog.close()
    if ch is not None:
        ch.close()
    outbox.put(snapshot())
    outbox.close(2.0)
    for cap in caps:
        cap.close()


# -- main process ---------------------------------------------------------------------------------


@dataclass
class Worker:
    idx: int
    proc: multiprocessing.process.BaseProcess
    conn: Connection
    ready: bool = False
    last_seen: float = 0.0
    log_failing: str = ""
    pid: int = 0
    breaker: str = ""
    accesslog: dict[str, Any] = field(default_factory=dict)  # the worker's log position (full chain head)


class Daemon:
    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.state = load_state(config_path)
        cfg = self.state.config
        self.metrics = Metrics(cfg.capture.interfaces, __version__)
        self.token = (read_secret(cfg.server.token_file, cfg.daemon.secret_permissions).decode().strip()
                      if cfg.server.token_file else "")
        self.workers: dict[int, Worker] = {}
        self.obs: dict[tuple[Any, ...], list[Any]] = {}
        self.latencies: collections.deque[float] = collections.deque(maxlen=200_000)  # packet → decision, seconds
        self.fanout_group = cfg.capture.fanout_group or (os.getpid() & 0xFFFF)
        self.ctx = multiprocessing.get_context("fork")
        self.stopping = False
        self.restarts = 0
        self._reload_requested = ""  # why, while a reload waits
        self._reloading = False
        self._notified_ready = False
        self.refused: dict[str, Any] | None = None  # the last refused reload, until one succeeds
        self.refused_count = 0
        self.metrics.retention.set(cfg.accesslog.retention_days * 86400)
        self._records_metrics()
        self.metrics.reload_ok.set(1)
        cfg.accesslog.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.nft: Nft | None = None
        self.orders: OrderStore | None = None
        self._rules: list[list[str]] = []

    def _setup_enforcement(self) -> None:
        cfg = self.state.config
        try:
            self.nft = Nft()
            self.nft.setup()
            log.info("enforcement: nftables table inet beiand ready (%s)", self.nft.via)
        except (NftError, OSError) as exc:
            self.nft = None
            log.warning("enforcement: nftables unavailable (%s): QUIC, IP-only and address orders cannot be blocked", exc)
        try:
            self.orders = OrderStore(cfg.daemon.state_dir)
            self._sync_orders(force=True)
        except OrderError as exc:
            log.error("%s", exc)
        if cfg.enforce.inline:
            self._rules = rule_specs(cfg.capture.tcp_ports, cfg.capture.udp_ports, cfg.enforce.queue, cfg.workers,
                                     cfg.enforce.connbytes)
            install_rules(self._rules)

    def _teardown_enforcement(self) -> None:
        if self._rules:
            remove_rules(self._rules)
            self._rules = []
        if self.nft is not None:
            self.nft.teardown()

    def _sync_orders(self, force: bool = False) -> None:
        if self.orders is None:
            return
        try:
            changed = self.orders.reload()
        except OrderError as exc:
            log.error("%s", exc)
            return
        if (changed or force) and self.nft is not None:
            try:
                Enforcer(EnforceSettings(), None, self.nft, self.orders).sync_ip_orders()
            except NftError as exc:
                log.error("closure orders: nftables: %s", exc)
        if changed:
            log.info("closure orders: %d in force", len(self.orders.orders))

    # -- DaemonView -------------------------------------------------------------------------

    def ready(self) -> list[str]:
        problems = []
        now = time.monotonic()
        n = self.state.config.workers
        alive = [w for w in self.workers.values() if w.ready and w.proc.is_alive() and now - w.last_seen < 5]
        if len(alive) < n:
            problems.append(f"capture: {len(alive)} of {n} worker(s) running")
        if not self.state.index.stats().filings:
            problems.append("records: none loaded")
        failing = [w.log_failing for w in self.workers.values() if w.log_failing]
        if failing:
            problems.append(f"access log not writable: {failing[0]}")
        return problems

    def details(self) -> dict[str, Any]:
        """What /readyz adds to ready or not: conditions that do not stop serving but need an operator."""
        return {"records": self.records_status()}

    def records_status(self) -> dict[str, Any]:
        st = self.state
        age, max_age = self._records_age()
        return {"filings": st.index.stats().filings, "files": [str(p) for p in st.config.records.files],
                "loaded_at": st.loaded_at, "age_seconds": age, "max_age_seconds": max_age,
                "stale": bool(max_age and age > max_age), "max_loss": st.config.records.max_loss,
                "reload_refused": None if self.refused is None else {**self.refused, "count": self.refused_count}}

    def lookup(self, name: str, ip: str, server: str) -> dict[str, Any]:
        st = self.state
        if name:
            try:
                n = normalise_domain(name)
            except DomainError as exc:
                raise ValueError(f"name {name!r}: {exc.reason}") from None
            server_ip = (canonical_ip(server) or "") if server else ""
            if server and not server_ip:
                raise ValueError(f"server {server!r} is not an IP address")
        else:
            n = ""
            server_ip = canonical_ip(ip) or ""
            if not server_ip:
                raise ValueError(f"ip {ip!r} is not an IP address")
        return lookup_answer(st.policy, n, server_ip, time.time())

    def observations(self, verdict: str, since: float, limit: int) -> list[dict[str, Any]]:
        from beiand.records.domains import registrable_domain

        rows = []
        for (name, sip, sport, account, v, kind, action), (first, last, hits) in self.obs.items():
            if (verdict and v != verdict) or last < since:
                continue
            rows.append({"name": name, "registrable_domain": registrable_domain(name) if name else "", "server": endpoint(sip, sport),
                         "account": account, "kind": kind, "verdict": v, "first_seen": first, "last_seen": last, "hits": hits,
                         "blocked": action == "block", "action": action})
        rows.sort(key=lambda r: -r["hits"])
        return rows[:limit]

    def status(self) -> dict[str, Any]:
        return {"version": __version__, "gateway": self.state.config.gateway, "config": self.config_path,
                "records_loaded_at": self.state.loaded_at, "filings": self.state.index.stats().filings,
                "records": self.records_status(),
                "workers": [{"worker": w.idx, "pid": w.pid, "ready": w.ready, "alive": w.proc.is_alive()}
                            for w in self.workers.values()], "worker_restarts": self.restarts,
                "decision_latency_seconds": _percentiles(self.latencies),
                "breaker": {str(w.idx): w.breaker for w in self.workers.values() if w.breaker},
                # Chain heads in full (anchor them elsewhere; `beiand logs verify --anchors`).
                "accesslog": {f"w{w.idx}": w.accesslog for w in self.workers.values() if w.accesslog},
                "enforcement": {"inline": self.state.config.enforce.inline, "nftables": self.nft.via if self.nft else None,
                                "orders": len(self.orders.orders) if self.orders else 0}}

    def request_reload(self, why: str = "POST /api/v1/reload") -> None:
        self._reload_requested = why

    def close_breaker(self) -> None:
        for w in self.workers.values():
            with contextlib.suppress(OSError):
                w.conn.send({"cmd": "close-breaker"})
        log.warning("circuit breaker close requested by the operator")

    # -- workers ----------------------------------------------------------------------------

    def _start_worker(self, idx: int) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        inherited = [w.conn.fileno() for w in self.workers.values()]
        proc = self.ctx.Process(target=worker_main, args=(idx, self.state, child, self.fanout_group, inherited), name=f"beiand-w{idx}",
                                daemon=False)
        proc.start()
        child.close()
        self.workers[idx] = Worker(idx, proc, parent, last_seen=time.monotonic())
        asyncio.get_running_loop().add_reader(parent.fileno(), self._on_worker_message, idx)

    def _stop_worker(self, idx: int, timeout: float = 10) -> None:
        w = self.workers.pop(idx)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(w.conn.fileno())
        if w.proc.is_alive():
            os.kill(w.proc.pid or 0, signal.SIGTERM)
        w.proc.join(timeout)
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join()
        if w.proc.exitcode == 0:  # a clean stop sent its last snapshot; a killed one may have left half a message
            self._drain(w)
        w.conn.close()
        self.metrics.forget(w.pid)

    def _drain(self, w: Worker) -> None:
        with contextlib.suppress(EOFError, OSError):
            while w.conn.poll():
                self._handle(w, w.conn.recv())

    def _on_worker_message(self, idx: int) -> None:
        w = self.workers.get(idx)
        if w is None:
            return
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(w.conn.fileno())
            return
        self._handle(w, msg)

    def _handle(self, w: Worker, msg: dict[str, Any]) -> None:
        w.last_seen = time.monotonic()
        if msg.get("ready"):
            w.ready, w.pid = True, msg["pid"]
            return
        if "counters" in msg:  # a snapshot, not only rows of the view
            self.metrics.worker_snapshot(w.idx, w.pid, msg)
            self.latencies.extend(msg.get("latency", ()))
            w.log_failing = msg.get("log_failing", "")
            w.breaker = msg.get("breaker", "")
            w.accesslog = msg.get("accesslog", w.accesslog)
            self.metrics.breaker_open.set(1 if any(x.breaker for x in self.workers.values()) else 0)
        view = self.obs
        for row in msg.get("obs", ()):
            key, (first, last, hits) = tuple(row[:7]), row[7:]
            cur = view.get(key)
            if cur is None:
                if len(view) >= MAX_VIEW_ROWS:
                    # Forget the tenth seen longest ago, at once: one sort per many inserts,
                    # not a scan of the whole view per insert.
                    for k in sorted(view, key=lambda k: view[k][1])[: MAX_VIEW_ROWS // 10]:
                        del view[k]
                view[key] = [first, last, hits]
            else:
                cur[0] = min(cur[0], first)
                cur[1] = max(cur[1], last)
                cur[2] += hits

    async def _supervise(self) -> None:
        """Restart dead workers; watch files; keep systemd's watchdog fed; retire old logs."""
        wd = watchdog_interval()
        next_wd = 0.0
        next_retire = 0.0
        next_watch = 0.0
        while not self.stopping:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for idx, w in list(self.workers.items()):
                if not w.proc.is_alive() and not self._reloading:
                    log.error("worker %d (pid %s) died (exit code %s); restarting it", idx, w.pid, w.proc.exitcode)
                    self._stop_worker(idx)
                    self.restarts += 1
                    self.metrics.worker_restarts.inc()
                    self._start_worker(idx)
            self.metrics.workers.set(sum(1 for w in self.workers.values() if w.proc.is_alive()))
            healthy = not self.ready()
            if healthy and not self._notified_ready:
                self._notified_ready = True
                ifaces = ", ".join(self.state.config.capture.interfaces)
                sd_notify(f"READY=1\nSTATUS=capturing on {ifaces} with {len(self.workers)} worker(s)")
                log.info("ready: %d worker(s) capturing on %s", len(self.workers), ifaces)
            # The watchdog is fed only while healthy: systemd restarts a daemon that stays broken.
            if wd and healthy and now >= next_wd:
                sd_notify("WATCHDOG=1")
                next_wd = now + wd
            self._sync_orders()
            if self._reload_requested:
                why, self._reload_requested = self._reload_requested, ""
                await self.reload(why)
            interval = self.state.config.daemon.watch_interval
            if now >= next_watch:
                next_watch = now + (interval or 5.0)
                self._records_metrics()
                self._audit_metrics()
                changed = [p for p, m in self.state.mtimes.items() if _mtime(p) != m] if interval else []
                if changed:
                    log.info("changed on disk: %s; reloading", ", ".join(changed))
                    await self.reload("file change")
            if now >= next_retire:
                next_retire = now + 3600
                await asyncio.get_running_loop().run_in_executor(None, self._retire)

    def _retire(self) -> None:
        from beiand.accesslog import verify

        al = self.state.config.accesslog
        try:
            key = al.hmac_key_file.read_bytes().strip() if al.hmac_key_file else None
            rep = verify(al.directory, key=key, since_ms=int((time.time() - 2 * 86400) * 1000))
            self.metrics.verify_failures.set(len(rep.all_problems()))
            self.metrics.verify_time.set(time.time())
            for p in rep.all_problems():
                log.error("access-log verification: %s", p)
            for w, h in rep.heads.items():
                log.info("access log chain head %s: %s", w, h)
        except Exception:
            log.exception("access-log verification failed to run")
        try:
            retire(al.directory, al.retention_days)
            st = log_stats(al.directory)
            if st.records:
                self.metrics.oldest.set(max(0.0, time.time() - st.oldest_ms / 1000))
            self.metrics.log_free.set(shutil.disk_usage(al.directory).free)
        except Exception:
            log.exception("access-log retention failed")

    def _audit_metrics(self) -> None:
        """Findings of the last audit run (the timer's latest.json), by kind."""
        p = self.state.config.daemon.state_dir / "audit" / "latest.json"
        try:
            by_kind = json.loads(p.read_text(encoding="utf-8"))["summary"]["by_kind"]
        except (OSError, ValueError, KeyError):
            return
        from beiand.audit.findings import KINDS

        for k in KINDS:
            self.metrics.audit_findings.labels(k).set(by_kind.get(k, 0))

    def _records_age(self) -> tuple[float, float]:
        """(age of the records in service, records.max_age_hours) in seconds; 0 max: never stale."""
        m = self.state.records_mtime
        return (max(0.0, time.time() - m) if m else 0.0), self.state.config.records.max_age_hours * 3600

    def _records_metrics(self) -> None:
        age, max_age = self._records_age()
        self.metrics.records_age.set(age)
        self.metrics.records_max_age.set(max_age)
        self.metrics.records_stale.set(1 if max_age and age > max_age else 0)
        self.metrics.records_filings.set(self.state.index.stats().filings)
        self.metrics.records_unmapped.set(self.state.index.unmapped)
        self.metrics.records_loaded.set(self.state.loaded_at)

    async def reload(self, why: str) -> bool:
        if self._reloading:
            return False
        self._reloading = True
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            try:
                new = await asyncio.get_running_loop().run_in_executor(None, load_state, self.config_path, self.state)
            except StateError as exc:
                log.error("reload (%s) failed, keeping the old state: %s", why, exc)
                self.metrics.reloads.labels("failure").inc()
                self.metrics.reload_ok.set(0)
                if isinstance(exc, RecordsRefused):
                    self.refused_count += 1
                    self.metrics.records_reload_refused.inc()
                    self.refused = {"at": time.time(), "trigger": why, "files": exc.files, "reason": str(exc),
                                    "filings_offered": exc.offered, "filings_in_service": exc.in_service}
                # Do not retry the same broken files every few seconds: wait for the next change.
                self.state.mtimes = {p: _mtime(p) for p in self.state.mtimes}
                return False
            self.state = new
            self.refused = None
            self._records_metrics()
            self.metrics.reloads.labels("success").inc()
            self.metrics.reload_ok.set(1)
            log.info("reload (%s): %d filings; replacing workers one at a time", why, new.index.stats().filings)
            for idx in sorted(self.workers):
                self._stop_worker(idx)
                if idx < new.config.workers:
                    self._start_worker(idx)
            for idx in range(new.config.workers):
                if idx not in self.workers:
                    self._start_worker(idx)
            return True
        finally:
            self._reloading = False
            sd_notify("READY=1")

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_stop() -> None:
            self.stopping = True
            stop.set()

        loop.add_signal_handler(signal.SIGTERM, on_stop)
        loop.add_signal_handler(signal.SIGINT, on_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload, "SIGHUP")
        cfg = self.state.config
        self._setup_enforcement()
        srv = cfg.server
        limits = HttpLimits(header_timeout=srv.header_timeout, request_timeout=srv.request_timeout,
                            max_connections=srv.max_connections, max_body_bytes=srv.max_body_bytes,
                            max_line_bytes=srv.max_line_bytes)
        host, port = cfg.listen()
        served = await start_http(make_app(self, limits), host, port, limits)
        log.info("serving /metrics and /api/v1 on %s:%d", host, port)
        for idx in range(cfg.workers):
            self._start_worker(idx)
        sup = asyncio.create_task(self._supervise())
        await stop.wait()
        sd_notify("STOPPING=1")
        log.info("stopping: flushing the access log")
        for idx in sorted(self.workers):
            self._stop_worker(idx)
        self._teardown_enforcement()
        sup.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sup
        await served.close()
        return 0


def _percentiles(values: collections.deque[float]) -> dict[str, float | int]:
    v = sorted(values)
    if not v:
        return {"n": 0}
    return {"n": len(v), "p50": v[len(v) // 2], "p99": v[min(len(v) - 1, len(v) * 99 // 100)], "max": v[-1]}


def run(config_path: str, log_format: str = "auto") -> int:
    # Under systemd: priority prefixes for the journal, no timestamps of our own (beiand.runtime.logsetup).
    logsetup.configure(log_format)
    try:
        d = Daemon(config_path)
    except StateError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("%s: %s", config_path, exc)
        return 2
    for iface in d.state.config.capture.interfaces:
        try:
            socket.if_nametoindex(iface)
        except OSError:
            log.error("%s: capture.interfaces: %s: no such interface", config_path, iface)
            return 2
    if not d.state.config.capture.interfaces:
        log.error("%s: capture.interfaces: none given", config_path)
        return 2
    logging.getLogger().setLevel(d.state.config.daemon.log_level.upper())
    try:
        return asyncio.run(d.main())
    except OSError as exc:
        log.error("%s", exc)
        return 2
