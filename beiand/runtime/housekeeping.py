"""Background jobs, off the capture loop: the overlays' address cuts in nftables, access-log
retention and verification, the records' and the audit's metrics, ClickHouse retention.

The supervisor runs ``Housekeeping`` from its supervision loop (address cuts every 0.2 s, metrics every
``daemon.watch_interval``, retention and verification hourly, in an executor); a worker runs only
``every()`` threads (ClickHouse retention on worker 0), never a job inside its capture loop.

The address cuts are written by a thread of their own, one write at a time: writing 10,000
elements took 4.4 s, which inside the loop stalled /metrics, the ISMS endpoint and the watchdog.
The loop hands over the newest rule set and never waits; a rule set that waited behind a write
is replaced by a newer one.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, NamedTuple

from beiand.accesslog import retire, verify
from beiand.accesslog.reader import stats as log_stats
from beiand.enforce.nft import MAX_CONCAT_ELEMENTS, MAX_ELEMENTS, NFT_TIMEOUT_S, Fit, Nft, NftError, fit, over_cap
from beiand.isms.store import AddressCuts
from beiand.model import AddressRule
from beiand.policy.overlays import Decider
from beiand.report.audit.findings import KINDS
from beiand.runtime.metrics import Metrics
from beiand.runtime.wiring import State

log = logging.getLogger("beiand")


def every(interval: float, job: Callable[[], object], name: str, first: float | None = None) -> threading.Thread:
    """Run ``job`` every ``interval`` seconds (the first time after ``first``, default one interval)
    in a daemon thread."""

    def loop() -> None:
        time.sleep(interval if first is None else first)
        while True:
            try:
                job()
            except Exception:
                log.exception("%s failed", name)
            time.sleep(interval)

    t = threading.Thread(target=loop, name=name, daemon=True)
    t.start()
    return t


def clickhouse_retire(ch: Any) -> None:
    """ClickHouse retention: whole day partitions older than the retention."""
    try:
        dropped = ch.retire()
        if dropped:
            log.info("ClickHouse: dropped day partitions %s (older than the retention)", ", ".join(dropped))
    except Exception as exc:
        log.error("ClickHouse retention failed: %s", exc)


class _Job(NamedTuple):
    rules: list[AddressRule]
    write: bool  # the rules changed, or a write is forced
    check: bool  # look for the table first (the periodic resync)


class _Done(NamedTuple):
    """What one job of the sync thread did."""

    fit: Fit | None  # what was written (None: nothing)
    gone: bool  # the table was not there
    recreated: bool
    error: str
    seconds: float


MAX_REFS_LOGGED = 20


class Housekeeping:
    """The supervisor's background jobs; ``state`` is swapped on every reload."""

    RESYNC_S = 10.0  # the table is looked for, and a failed write tried again, at least this often

    def __init__(self, state: State, metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.metrics = metrics
        self.clock = clock
        self.nft: Nft | None = None
        self.decider: Decider | None = None  # the supervisor's own view of the overlays
        self.cap, self.concat_cap = MAX_ELEMENTS, MAX_CONCAT_ELEMENTS
        self.cuts = AddressCuts("nftables not set up yet", self._over_cap)
        self._wanted: list[AddressRule] | None = None  # the rules last handed to the sync thread
        self._running: Future[_Done] | None = None
        self._started = 0.0
        self._overdue = False
        self._queued: _Job | None = None
        self._gone = False
        self._next_sync = 0.0
        self._holders: tuple[tuple[str, int, int], Any] | None = None  # the inventory history, read again after a load
        self._ip_report_error = ""

    def set_nft(self, nft: Nft | None, why: str = "") -> None:
        """Cut by address with ``nft``; None: nftables is unavailable (``why``), and the ISMS acks say so."""
        self.nft = nft
        self._available(why if nft is None else "")

    def _available(self, why: str) -> None:
        self.cuts = AddressCuts(why, self._over_cap)
        self.metrics.nft_available.set(0 if why else 1)

    def _over_cap(self, rules: list[AddressRule]) -> str:
        return over_cap(rules, self.clock(), self.cap, self.concat_cap)

    def syncing(self) -> bool:
        """A write of the address sets in flight or waiting."""
        return self._running is not None or self._queued is not None

    def sync_addresses(self, force: bool = False) -> bool:
        """Reload the overlays; hand what they cut by address (closure orders on an address or a
        prefix, the regulator's address and port filters, blacklisted addresses) to the sync
        thread, which puts it into nftables, so it is cut on every port in every mode. Called on
        every tick of the loop; never waits for nftables. True when an overlay changed."""
        if self.decider is None:
            return False
        self._collect()
        changed = self.decider.reload()
        now = self.clock()
        due = now >= self._next_sync
        if not (changed or force or due):
            return changed
        # A rule that starts later (a command's effectTime) is written on the first tick after its start.
        self._next_sync = min(now + self.RESYNC_S, self.decider.next_change(now))
        if self.nft is None:
            return changed
        rules = self.decider.addresses(now)
        write = force or rules != self._wanted
        if write or due:
            self._submit(_Job(rules, write, due))
        return changed

    def _submit(self, job: _Job) -> None:
        self._wanted = job.rules
        if self._running is not None:
            q = self._queued
            self._queued = job if q is None else _Job(job.rules, job.write or q.write, job.check or q.check)
            return
        nft = self.nft
        if nft is None:
            return
        done: Future[_Done] = Future()
        # A thread of its own per write, daemonic: a libnftables call that never returns (it has no
        # time bound) must not keep the process from stopping.
        threading.Thread(target=lambda: done.set_result(self._sync(nft, job)), name="beiand-nft", daemon=True).start()
        self._running, self._started, self._overdue = done, time.monotonic(), False

    def _sync(self, nft: Nft, job: _Job) -> _Done:
        """The sync thread: the table looked for (and made again), the rules fitted to the caps and
        written, their timeouts reckoned from now."""
        t0 = time.monotonic()
        gone = recreated = False
        try:
            if job.check and not nft.in_place():
                gone = True
                nft.setup()
                recreated = True
            if not (job.write or recreated):
                return _Done(None, gone, recreated, "", time.monotonic() - t0)
            f = fit(job.rules, self.clock(), self.cap, self.concat_cap)
            nft.write_addresses(f.elements)
            return _Done(f, gone, recreated, "", time.monotonic() - t0)
        except (NftError, OSError) as exc:
            return _Done(None, gone, recreated, str(exc) or type(exc).__name__, time.monotonic() - t0)
        except Exception as exc:  # a bug: logged here, never lost in the thread
            log.exception("address cuts: the nftables sync failed")
            return _Done(None, gone, recreated, f"internal error: {type(exc).__name__}", time.monotonic() - t0)

    def _collect(self) -> None:
        """The outcome of a finished write into logs and metrics; the rule set waiting goes next."""
        running = self._running
        if running is None:
            return
        if not running.done():
            if not self._overdue and time.monotonic() - self._started > NFT_TIMEOUT_S:
                self._overdue = True
                log.error("address cuts: an nftables write has run for over %g s; newer rule sets wait for it", NFT_TIMEOUT_S)
            return
        self._running = None
        done = running.result()
        if done.recreated:
            self.metrics.nft_recreated.inc()
            log.warning("nftables: table inet beiand was gone (nft flush ruleset, or deleted outside beiand): made "
                        "again, the address cuts written again")
        if done.gone and not done.recreated:
            if not self._gone:
                self._gone = True
                log.error("nftables: table inet beiand is gone and could not be made again (tried every %g s): %s",
                          self.RESYNC_S, done.error)
                self._available(f"table inet beiand gone and not made again: {done.error}")
            self._wanted = None
        elif done.error:
            self.metrics.nft_syncs.labels("failed").inc()
            self._wanted = None  # tried again at the next resync
            log.error("address cuts: nftables: %s", done.error)
        elif self._gone:
            self._gone = False
            self._available("")
        if done.fit is not None:
            self._written(done.fit, done.seconds)
        if self._queued is not None:
            job, self._queued = self._queued, None
            self._submit(job)

    def _written(self, f: Fit, seconds: float) -> None:
        m = self.metrics
        m.nft_syncs.labels("ok").inc()
        m.nft_sync_seconds.observe(seconds)
        m.nft_rules.set(len(f.rules))
        for kind, n, cap in (("all", f.size.total, self.cap), ("concatenated", f.size.concat, self.concat_cap)):
            m.nft_elements.labels(kind).set(n)
            m.nft_elements_cap.labels(kind).set(cap)
        m.nft_left_out.labels("invalid").set(len(f.invalid))
        m.nft_left_out.labels("over-cap").set(f.over_cap_rules)
        for why in f.invalid:
            log.error("address cuts: %s: left out", why)
        if f.over_cap:
            refs = ", ".join(f.over_cap[:MAX_REFS_LOGGED]) + (f" and {len(f.over_cap) - MAX_REFS_LOGGED} more"
                                                               if len(f.over_cap) > MAX_REFS_LOGGED else "")
            log.error("address cuts: over the cap of %d nftables set elements (%d of address . protocol . port): "
                      "%d rule(s) left out, of %s", self.cap, self.concat_cap, f.over_cap_rules, refs)
        log.info("nftables: %d address cut(s) in force (%d element(s), written in %.2f s)", len(f.rules), f.size.total, seconds)

    def close(self, timeout: float = NFT_TIMEOUT_S) -> None:
        """A clean stop: what waits is dropped, the write in flight may finish (the table goes after it)."""
        self._queued = None
        if self._running is not None:
            try:
                self._running.result(timeout)
            except TimeoutError:
                log.error("address cuts: an nftables write still runs at stop")

    def retire_and_verify(self) -> None:
        """Verify the recent chain, retire partitions beyond the retention, update the log's metrics."""
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
            self.metrics.log_held.set(st.bytes)
            if st.sealed_records:
                self.metrics.log_bytes_per_record.set(st.sealed_bytes / st.sealed_records)
        except Exception:
            log.exception("access-log retention failed")

    def audit_metrics(self) -> None:
        """Findings of the last audit run (the timer's latest.json), by kind."""
        p = self.state.config.daemon.state_dir / "audit" / "latest.json"
        try:
            by_kind = json.loads(p.read_text(encoding="utf-8"))["summary"]["by_kind"]
        except (OSError, ValueError, KeyError):
            return
        for k in KINDS:
            self.metrics.audit_findings.labels(k).set(by_kind.get(k, 0))

    def ip_report_metrics(self) -> None:
        """IP地址备案 (501号 art. 19; docs/ip-report.md): the changes of the allocated blocks since the
        last report, from the inventory history and the decision store's ``ip-report`` rows, and those
        past their five-working-day deadline (the alert ``BeiandIpReportOverdue``). Off the loop (an
        executor); a store or a history that does not answer keeps the last values, logged once."""
        from beiand.policy.history import HistoryError, Holders, history_dir
        from beiand.policy.workdays import CalendarError, load_calendar
        from beiand.report import ipreport
        from beiand.runtime.decisions import open_decisions
        from beiand.store import StoreError

        cfg = self.state.config
        now = self.clock()
        try:
            d = history_dir(cfg.daemon.state_dir)
            stamp = (d / "loads.jsonl").stat()
            key = (str(d), stamp.st_size, stamp.st_mtime_ns)
            if self._holders is None or self._holders[0] != key:  # read again only after a load was recorded
                self._holders = (key, Holders(cfg.daemon.state_dir))
            calendar = load_calendar(cfg.cases.holidays_file)
            store = open_decisions(cfg, migrate=False, import_files=False, create=False)
            try:
                rows = store.changes(0, (ipreport.KIND,))
            finally:
                store.close()
            report = ipreport.build(self._holders[1].timeline(int(now * 1000)), ipreport.last_report(rows), calendar, now)
        except (HistoryError, CalendarError, StoreError, OSError) as exc:
            why = "; ".join(exc.problems[:3]) if isinstance(exc, CalendarError) else str(exc)
            if why != self._ip_report_error:
                log.error("ip-report metrics: %s (the last values are kept)", why)
            self._ip_report_error = why
            return
        self._ip_report_error = ""
        m = self.metrics
        m.ip_report_unreported.set(len(report.changes))
        m.ip_report_overdue.set(report.overdue)
        m.ip_report_last.set(report.last.at if report.last is not None else 0)

    def records_age(self) -> tuple[float, float]:
        """(age of the records in service, records.max_age_hours) in seconds; 0 max: never stale."""
        m = self.state.records_mtime
        return (max(0.0, time.time() - m) if m else 0.0), self.state.config.records.max_age_hours * 3600

    def records_metrics(self) -> None:
        age, max_age = self.records_age()
        self.metrics.records_age.set(age)
        self.metrics.records_max_age.set(max_age)
        self.metrics.records_stale.set(1 if max_age and age > max_age else 0)
        self.metrics.records_filings.set(self.state.index.stats().filings)
        self.metrics.records_unmapped.set(self.state.index.unmapped)
        self.metrics.records_loaded.set(self.state.loaded_at)
