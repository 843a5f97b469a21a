"""``beiand run``: the supervisor (the main process) of the live daemon.

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
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from beiand import __version__
from beiand.enforce.nfqueue import NfQueue, RuleSet, install_rules, remove_rules, rule_set
from beiand.enforce.nft import Nft, NftError
from beiand.isms.basicinfo import prefix_house
from beiand.isms.reports import filed_domain
from beiand.model import endpoint
from beiand.policy import lookup_answer
from beiand.policy.cases import case_row
from beiand.policy.overlays import Decider, OrderLayer
from beiand.records import normalise_domain
from beiand.records.domains import DomainError
from beiand.records.importer import canonical_ip
from beiand.report.resource import ActiveResource
from beiand.runtime import logsetup
from beiand.runtime.casekeeper import CaseKeeper
from beiand.runtime.decisions import Follower, open_decisions
from beiand.runtime.housekeeping import Housekeeping
from beiand.runtime.http import make_app
from beiand.runtime.http import start as start_http
from beiand.runtime.ipc import CloseBreaker, Go, Prepared, Ready, Snapshot, SupervisorCommand, WorkerMessage
from beiand.runtime.isms import IsmsRuntime
from beiand.runtime.isms import check as isms_check
from beiand.runtime.metrics import Metrics
from beiand.runtime.register import Applier, ImportProblem, import_files, record_loaded
from beiand.runtime.sdnotify import sd_notify, watchdog_interval
from beiand.runtime.settings import Config
from beiand.runtime.wiring import (
    RecordsRefused,
    State,
    StateError,
    decider,
    file_mtime,
    http_limits,
    inline_marks,
    load_config_state,
    load_state,
    note_inventory,
    read_secret,
)
from beiand.runtime.worker import worker_main
from beiand.store import StoreError

log = logging.getLogger("beiand")
MAX_VIEW_ROWS = 100_000  # the main process's active-resource view


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
    versions: dict[str, float] = field(default_factory=dict)  # overlay → the decision store version it holds


class Daemon:
    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        first = load_config_state(config_path)
        self.metrics = Metrics(first.capture.interfaces, __version__)
        self.refused: dict[str, Any] | None = None  # the last refused reload (or drop import), until one succeeds
        self.refused_count = 0
        # The register (records, inventory, NAT feed as versions in the decision store): with
        # records.source = "store" this gateway applies the version in force, fetched by content
        # into its copy before the state is built (unreachable: the copy as it is).
        self.register: Applier | None = None
        self._drop: dict[str, float] = {}
        if first.records.source == "store":
            self.register = Applier(first, lambda: open_decisions(first), self.request_reload, self.metrics.registry)
            self._import_drop(first, at_start=True)
            self.register.first_sync()
        self.state = load_state(config_path)
        if self.state.register_refused is not None:  # refused before this start: still refused, and said so
            self._refused(self.state.register_refused, "start")
        self._record_history(self.state)
        if self.register is not None:
            self.register.set_applied(self.state.register_version)
        note_inventory(self.state)
        cfg = self.state.config
        self.housekeeping = Housekeeping(self.state, self.metrics)
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
        self.metrics.retention.set(cfg.accesslog.retention_days * 86400)
        self.housekeeping.records_metrics()
        self.metrics.reload_ok.set(1)
        cfg.accesslog.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.nft: Nft | None = None
        self.decider: Decider | None = None  # the overlays, for their address cuts and the status
        self.queues: dict[int, NfQueue] = {}  # inline: each worker's queue, bound here (``_queue``)
        self._rules: RuleSet = {}
        self.isms: IsmsRuntime | None = None
        # The decision store: followed in a thread that writes the snapshot the workers read
        # (runtime.decisions); the gateway enforces the last snapshot while the store is away.
        self.decisions = Follower(cfg, self.metrics.registry)
        self.decisions.worker_versions = self._worker_versions
        self.decisions.houses = self._houses
        self.decisions.healthy = lambda: not self.ready()
        self.register_applied = self.state.register_version  # what every worker judges with (after a reload's swap)
        self.decisions.extra_state = lambda: {"register": self.register_applied}
        # Sponsor cases (issue 31): opened from the view's rows, notices, deadlines, escalation
        self.keeper = CaseKeeper(cfg, lambda: open_decisions(self.state.config), lambda: self.state.policy,
                                 self.metrics.registry)

    def _refused(self, exc: RecordsRefused, why: str) -> None:
        self.refused_count += 1
        self.metrics.records_reload_refused.inc()
        self.refused = {"at": time.time(), "trigger": why, "files": exc.files, "reason": str(exc),
                        "filings_offered": exc.offered, "filings_in_service": exc.in_service}

    def _record_history(self, state: State) -> None:
        """records.source = "files" with records.history: keep the loaded version in the register
        (its version then rides in every access-log record); a failure is logged, never fatal."""
        cfg = state.config
        if cfg.records.source != "files" or not cfg.records.history:
            return
        try:
            store = open_decisions(cfg)
            try:
                state.register_version = record_loaded(cfg, store, state.index, state.inventory, state.nat)
            finally:
                store.close()
        except (StoreError, OSError) as exc:
            log.error("register: the loaded records were not kept in the decision store's history (%s); they judge as loaded",
                      exc)

    def _drop_files(self, cfg: Config) -> list[str]:
        return [*map(str, cfg.records.files), *([str(cfg.inventory.file)] if cfg.inventory.file else []),
                *([str(cfg.inventory.nat_file)] if cfg.inventory.nat_file else [])]

    def _import_drop(self, cfg: Config, at_start: bool = False) -> None:
        """records.source = "store": the watched files are the drop; a change (or, at start, files
        this gateway has not imported as they are) is imported as a new version of the register,
        through the reload guard. Refused: logged and counted, the version in force stays."""
        files = self._drop_files(cfg)
        mtimes = {p: file_mtime(p) for p in files}
        if not files or mtimes == self._drop:
            return
        mark = cfg.daemon.state_dir / "register" / "drop-imported"
        seen = ""
        with contextlib.suppress(OSError):
            seen = mark.read_text()
        digest = ",".join(f"{p}={m}" for p, m in sorted(mtimes.items()))
        if at_start and seen == digest:
            self._drop = mtimes
            return  # imported as they are before this start: another gateway's version since is not undone
        try:
            store = open_decisions(cfg)
            try:
                done, skipped = import_files(cfg, store, [str(p) for p in cfg.records.files],
                                             str(cfg.inventory.file or ""), str(cfg.inventory.nat_file or ""),
                                             actor=f"beiand run ({cfg.gateway})", why="drop directory",
                                             republish=not at_start)
            finally:
                store.close()
        except StoreError as exc:
            log.error("register: the drop (%s) was not imported: %s", ", ".join(files), exc)
            if isinstance(exc, ImportProblem):  # refused: not tried again until the files change
                self._drop = mtimes
                self.refused_count += 1
                self.metrics.records_reload_refused.inc()
                self.refused = {"at": time.time(), "trigger": "drop", "files": files, "reason": str(exc),
                                "filings_offered": None, "filings_in_service": None}
            else:  # the store failed (unreachable, busy): the same files are tried at the next poll
                self.metrics.register_drop_failures.inc()
            return
        self._drop = mtimes
        for e in skipped[:20]:
            log.warning("records: skipped %s", e)
        with contextlib.suppress(OSError):
            mark.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            mark.write_text(digest)
        log.info("register: the drop imported: %s", "; ".join(
            f"{d.kind} v{d.version.version}" + ("" if d.new else " (in force already)") for d in done))
        if self.register is not None:
            self.register.wake()

    def _houses(self) -> list[str]:
        """The houses (机房, ISMS houseId) this gateway serves, for the CU's DT 7: ``isms.house_id``,
        else the houses its inventory names."""
        cfg = self.state.config
        if cfg.isms.house_id:
            return [cfg.isms.house_id]
        return sorted({prefix_house(p) for p in self.state.policy.inventory.prefixes} - {""})

    def _worker_versions(self) -> dict[str, float]:
        """Per overlay, the lowest decision store version a running worker holds."""
        out: dict[str, float] = {}
        for w in list(self.workers.values()):
            if not (w.ready and w.proc.is_alive()):
                continue
            for name, v in list(w.versions.items()):
                out[name] = min(out.get(name, v), v)
        return out

    def _setup_enforcement(self) -> None:
        cfg = self.state.config
        why = ""
        try:
            self.nft = Nft()
            self.nft.setup()
            log.info("enforcement: nftables table inet beiand ready (%s)", self.nft.via)
        except (NftError, OSError) as exc:
            self.nft, why = None, str(exc) or type(exc).__name__
            log.warning("enforcement: nftables unavailable (%s): QUIC, IP-only and address orders cannot be blocked", exc)
        try:
            self.decider = decider(cfg, self.state.policy, live=True)
        except StateError as exc:
            log.error("%s", exc)
        self.housekeeping.set_nft(self.nft, why)
        self.housekeeping.decider = self.decider
        self.housekeeping.sync_addresses(force=True)
        if cfg.enforce.inline:
            self._rules = rule_set(cfg.capture.tcp_ports, cfg.capture.udp_ports, cfg.enforce.queue, cfg.workers,
                                   cfg.enforce.connbytes, inline_marks(cfg), cfg.capture.any_port)
            install_rules(self._rules)

    def _teardown_enforcement(self) -> None:
        if self._rules:
            remove_rules(self._rules)
            self._rules = {}
        for q in self.queues.values():  # after the rules: no packet waits for a queue nobody reads
            with contextlib.suppress(OSError):
                q.close()
        self.queues.clear()
        self.housekeeping.close()
        if self.nft is not None:
            self.nft.teardown()

    def _share_cuts(self) -> None:
        """The ISMS acks say what nftables can cut as the housekeeping last found it (set up, gone)."""
        if self.isms is not None:
            self.isms.store.cuts = self.housekeeping.cuts

    # -- DaemonView -------------------------------------------------------------------------

    def ready(self) -> list[str]:
        problems = []
        now = time.monotonic()
        n = self.state.config.workers
        alive = [w for w in list(self.workers.values()) if w.ready and w.proc.is_alive() and now - w.last_seen < 5]
        if len(alive) < n:
            problems.append(f"capture: {len(alive)} of {n} worker(s) running")
        if not self.state.index.stats().filings:
            problems.append("records: none loaded")
        failing = [w.log_failing for w in list(self.workers.values()) if w.log_failing]
        if failing:
            problems.append(f"access log not writable: {failing[0]}")
        return problems

    def details(self) -> dict[str, Any]:
        """What /readyz adds to ready or not: conditions that do not stop serving but need an operator."""
        return {"records": self.records_status(), "decisions": self.decisions.status()}

    def records_status(self) -> dict[str, Any]:
        st = self.state
        age, max_age = self.housekeeping.records_age()
        return {"filings": st.index.stats().filings, "files": [str(p) for p in st.config.records.files],
                "loaded_at": st.loaded_at, "age_seconds": age, "max_age_seconds": max_age,
                "stale": bool(max_age and age > max_age), "max_loss": st.config.records.max_loss,
                "reload_refused": None if self.refused is None else {**self.refused, "count": self.refused_count},
                # issue 35: the register version judged with (0: none kept) and, records.source = "store",
                # whether the store answers or this gateway judges with its copy
                "source": st.config.records.source, "register_version": st.register_version,
                "register": self.register.status() if self.register is not None else None}

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
        return lookup_answer(self.decider if self.decider is not None else st.policy, n, server_ip, time.time())

    def observations(self, verdict: str, since: float, limit: int) -> list[dict[str, Any]]:
        rows = [ActiveResource.of(name, endpoint(sip, sport), account, kind, v, first_seen=first, last_seen=last, hits=int(hits),
                                  action=action)
                for (name, sip, sport, account, v, kind, action), (first, last, hits) in self.obs.items()
                if not ((verdict and v != verdict) or last < since)]
        rows.sort(key=lambda r: -r.hits)
        return [r.as_observation() for r in rows[:limit]]

    def cases(self, state: str, account: str) -> list[dict[str, Any]]:
        """``/api/v1/cases``: the cases as this gateway follows them (the decision store's fold)."""
        rows = [c for c in list(self.decisions.folded.cases.cases.cases.values())
                if (not state or c.state == state) and (not account or c.account == account)]
        return [case_row(c) for c in sorted(rows, key=lambda c: c.opened_at)]

    def case(self, key: str) -> dict[str, Any] | None:
        c = self.decisions.folded.cases.cases.cases.get(key)
        return case_row(c) if c is not None else None

    def status(self) -> dict[str, Any]:
        return {"version": __version__, "gateway": self.state.config.gateway, "config": self.config_path,
                "records_loaded_at": self.state.loaded_at, "reloading": self._reloading, "filings": self.state.index.stats().filings,
                "records": self.records_status(),
                "workers": [{"worker": w.idx, "pid": w.pid, "ready": w.ready, "alive": w.proc.is_alive()}
                            for w in self.workers.values()], "worker_restarts": self.restarts,
                "decision_latency_seconds": _percentiles(self.latencies),
                "breaker": {str(w.idx): w.breaker for w in self.workers.values() if w.breaker},
                # Chain heads in full (anchor them elsewhere; `beiand logs verify --anchors`).
                "accesslog": {f"w{w.idx}": w.accesslog for w in self.workers.values() if w.accesslog},
                "enforcement": {"inline": self.state.config.enforce.inline, "nftables": self.nft.via if self.nft else None,
                                "orders": self._orders_in_force()},
                "isms": self.isms.status() if self.isms is not None else None,
                "decisions": self.decisions.status(), "cases": self.keeper.status()}

    def _orders_in_force(self) -> int:
        for layer in self.decider.layers if self.decider is not None else ():
            if isinstance(layer, OrderLayer):
                return len(layer.store.orders)
        return 0

    def request_reload(self, why: str = "POST /api/v1/reload") -> None:
        self._reload_requested = why

    def close_breaker(self) -> None:
        self._tell_workers(CloseBreaker())
        log.warning("circuit breaker close requested by the operator")

    def _tell_workers(self, cmd: SupervisorCommand) -> None:
        for w in self.workers.values():
            with contextlib.suppress(OSError):
                w.conn.send(cmd)

    # -- workers ----------------------------------------------------------------------------

    def _queue(self, idx: int, renew: bool = False) -> NfQueue | None:
        """Inline: worker ``idx``'s queue, bound by this process so that it outlives the worker
        (while a worker is replaced the kernel holds the packets for the next one, instead of
        passing them unjudged as ``--queue-bypass`` does for a queue nobody holds). ``renew``: a
        worker died with packets read and never answered; a new binding drops those."""
        if not self.state.config.enforce.inline:
            return None
        q = self.queues.get(idx)
        if q is not None and renew:
            q.close()
            q = None
        if q is None:
            q = self.queues[idx] = NfQueue(self.state.config.enforce.queue + idx)
        return q

    def _spawn(self, idx: int, handover: bool = False) -> tuple[multiprocessing.process.BaseProcess, Connection]:
        parent, child = self.ctx.Pipe(duplex=True)
        try:
            queue = self._queue(idx)
        except OSError as exc:  # NfQueueError too: the worker binds its own (and says why it cannot)
            log.error("worker %d: its queue could not be bound here (%s); the worker binds it", idx, exc)
            self.queues.pop(idx, None)
            queue = None
        # the other workers' pipes and queues: closed in the child (a queue held by another process
        # could not be bound again after its worker died)
        inherited = [w.conn.fileno() for w in self.workers.values()] + [q.fileno() for i, q in self.queues.items() if i != idx]
        proc = self.ctx.Process(target=worker_main, args=(idx, self.state, child, self.fanout_group, inherited, queue,
                                                          handover), name=f"beiand-w{idx}", daemon=False)
        proc.start()
        child.close()
        return proc, parent

    def _start_worker(self, idx: int) -> None:
        proc, parent = self._spawn(idx)
        self._adopt(idx, proc, parent)

    def _adopt(self, idx: int, proc: multiprocessing.process.BaseProcess, parent: Connection) -> None:
        self.workers[idx] = Worker(idx, proc, parent, last_seen=time.monotonic())
        asyncio.get_running_loop().add_reader(parent.fileno(), self._on_worker_message, idx)

    async def _replace_worker(self, idx: int, timeout: float = 60.0) -> None:
        """A reload's replacement of worker ``idx`` with no gap in what is judged and logged: the new
        worker is built and joins the capture while the old one still serves; the old one stops
        (its log partition closed, every packet it read answered); then the new one opens the
        partition and reads the queue the old one left (the kernel held what came meanwhile)."""
        loop = asyncio.get_running_loop()
        proc, parent = self._spawn(idx, handover=True)
        deadline = time.monotonic() + timeout
        prepared = False
        try:
            while proc.is_alive() and time.monotonic() < deadline and not prepared:
                if await loop.run_in_executor(None, parent.poll, 0.05):
                    try:
                        prepared = isinstance(parent.recv(), Prepared)
                    except (EOFError, OSError):
                        break
        except BaseException:  # the daemon stops meanwhile: the replacement goes, the old worker stays for the stop
            proc.kill()
            proc.join()
            parent.close()
            raise
        self._stop_worker(idx)
        if not prepared:  # it died or hung while building: start one the ordinary way
            log.error("worker %d: its replacement did not get ready (%s); starting a new one", idx,
                      f"exit code {proc.exitcode}" if not proc.is_alive() else f"{timeout:.0f} s")
            if proc.is_alive():
                proc.kill()
            proc.join()
            parent.close()
            self._start_worker(idx)
            return
        self._adopt(idx, proc, parent)
        with contextlib.suppress(BrokenPipeError, OSError):
            parent.send(Go())
        while time.monotonic() < deadline and proc.is_alive() and not self.workers[idx].ready:
            await asyncio.sleep(0.01)

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

    def _handle(self, w: Worker, msg: WorkerMessage) -> None:
        w.last_seen = time.monotonic()
        if isinstance(msg, Ready):
            w.ready, w.pid = True, msg.pid
            return
        if isinstance(msg, Prepared):  # read by _replace_worker before the worker is adopted
            return
        if isinstance(msg, Snapshot):  # a snapshot, not only rows of the view
            self.metrics.worker_snapshot(w.idx, w.pid, msg)
            self.latencies.extend(msg.latency)
            w.log_failing = msg.log_failing
            w.breaker = msg.breaker
            w.accesslog = msg.accesslog if msg.accesslog is not None else w.accesslog
            w.versions = {k.labels[-1]: v for k, v in msg.metrics.items() if k.metric == "beiand_overlay_version" and k.labels}
            self.metrics.breaker_open.set(1 if any(x.breaker for x in self.workers.values()) else 0)
        if msg.rows:
            self.keeper.observe(msg.rows)
        view = self.obs
        for row in msg.rows:
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
        next_ip_report = 0.0
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
                    if w.proc.exitcode != 0:
                        try:
                            self._queue(idx, renew=True)  # packets it read and never answered: dropped with the old binding
                        except OSError as exc:  # NfQueueError too: the next worker binds its own, as before
                            log.error("worker %d: its queue could not be bound again (%s)", idx, exc)
                            self.queues.pop(idx, None)
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
            self.housekeeping.sync_addresses()  # the workers reload the overlays themselves
            self._share_cuts()
            if self.isms is not None:
                await self.isms.tick(healthy)
            if self._reload_requested:
                why, self._reload_requested = self._reload_requested, ""
                await self.reload(why)
            interval = self.state.config.daemon.watch_interval
            if now >= next_watch:
                next_watch = now + (interval or 5.0)
                self.housekeeping.records_metrics()
                self.housekeeping.audit_metrics()
                if self.register is not None and interval:
                    await asyncio.get_running_loop().run_in_executor(None, self._import_drop, self.state.config)
                changed = [p for p, m in self.state.mtimes.items() if file_mtime(p) != m] if interval else []
                if changed:
                    log.info("changed on disk: %s; reloading", ", ".join(changed))
                    await self.reload("file change")
            if now >= next_ip_report:  # IP地址备案: changes past their deadline (501号 art. 19)
                next_ip_report = now + 60
                await asyncio.get_running_loop().run_in_executor(None, self.housekeeping.ip_report_metrics)
            if now >= next_retire:
                next_retire = now + 3600
                await asyncio.get_running_loop().run_in_executor(None, self.housekeeping.retire_and_verify)

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
                    self._refused(exc, why)
                elif self.register is not None:  # a copy damaged under an intact header: fetched again
                    self.register.recheck()
                # Do not retry the same broken files every few seconds: wait for the next change.
                self.state.mtimes = {p: file_mtime(p) for p in self.state.mtimes}
                return False
            await asyncio.get_running_loop().run_in_executor(None, self._record_history, new)
            self.state = self.housekeeping.state = new
            if self.decider is not None:
                self.decider.rebind(new.policy)
            note_inventory(new)
            self.refused = None
            if self.isms is not None:  # [isms] in place; restart-only keys listed (beiand/isms/reload.py)
                self.isms.reporter.inventory = new.policy.inventory
                try:
                    self.isms.reload(new.config)
                except (ValueError, OSError) as exc:
                    log.error("reload (%s): [isms] kept as it was: %s", why, exc)
            self.keeper.reload(new.config)
            self.housekeeping.records_metrics()
            self.metrics.reloads.labels("success").inc()
            self.metrics.reload_ok.set(1)
            log.info("reload (%s): %d filings; replacing workers one at a time", why, new.index.stats().filings)
            for idx in sorted(self.workers):
                if idx < new.config.workers:
                    await self._replace_worker(idx)
                else:
                    self._stop_worker(idx)
                    q = self.queues.pop(idx, None)
                    if q is not None:
                        q.close()
            for idx in range(new.config.workers):
                if idx not in self.workers:
                    self._start_worker(idx)
            # every worker judges with the new state now: the register version it applies
            self.register_applied = new.register_version
            if self.register is not None:
                self.register.set_applied(new.register_version)
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
        # The store's state before the workers start (or, unreachable, the snapshot as it is).
        await loop.run_in_executor(None, self.decisions.first_sync)
        self.decisions.start()
        if self.register is not None:
            self.register.start()
        self.keeper.start()
        self._setup_enforcement()
        limits = http_limits(cfg)
        host, port = cfg.listen()
        served = await start_http(make_app(self, limits), host, port, limits)
        log.info("serving /metrics and /api/v1 on %s:%d", host, port)
        if cfg.isms.enabled and cfg.isms.mode != "fleet":  # fleet: the CU serves SMMS; the decider applies its commands
            problem = isms_check(cfg)
            if problem:
                log.error("%s: isms: %s", self.config_path, problem)
                await served.close()
                return 2
            self.isms = IsmsRuntime(cfg, self.metrics.registry)
            self._share_cuts()
            # DT 9/DT 2 regDomain: the filed name, from the records in force (the state at the report's time)
            self.isms.reporter.filed_name = lambda number, name: filed_domain(self.state.index, number, name)
            self.isms.reporter.inventory = self.state.policy.inventory  # each prefix's house (机房编号)
            self.isms.basic_source = lambda: (self.state.policy.inventory.prefixes, self.state.index.filings,
                                              tuple(self.state.config.records.provider))  # DT 1 (CU-lite)
            await self.isms.start()
        for idx in range(cfg.workers):
            self._start_worker(idx)
        sup = asyncio.create_task(self._supervise())
        await stop.wait()
        sd_notify("STOPPING=1")
        log.info("stopping: flushing the access log")
        sup.cancel()  # first: a reload replacing a worker gives it up (its replacement is stopped)
        with contextlib.suppress(asyncio.CancelledError):
            await sup
        for idx in sorted(self.workers):
            self._stop_worker(idx)
        self._teardown_enforcement()
        await loop.run_in_executor(None, self.keeper.stop)
        await loop.run_in_executor(None, self.decisions.stop)
        if self.register is not None:
            await loop.run_in_executor(None, self.register.stop)
        await served.close()
        if self.isms is not None:
            await self.isms.close()
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
