"""Background jobs, off the capture loop: the overlays' address cuts in nftables, access-log
retention and verification, the records' and the audit's metrics, ClickHouse retention.

The supervisor runs ``Housekeeping`` from its supervision loop (address cuts every 0.2 s, metrics every
``daemon.watch_interval``, retention and verification hourly, in an executor); a worker runs only
``every()`` threads (ClickHouse retention on worker 0), never a job inside its capture loop.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from beiand.accesslog import retire, verify
from beiand.accesslog.reader import stats as log_stats
from beiand.enforce.nft import Nft, NftError, address_elements
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


class Housekeeping:
    """The supervisor's background jobs; ``state`` is swapped on every reload."""

    RESYNC_S = 10.0  # commands whose effectTime comes later enter the sets within this

    def __init__(self, state: State, metrics: Metrics) -> None:
        self.state = state
        self.metrics = metrics
        self.nft: Nft | None = None
        self.decider: Decider | None = None  # the supervisor's own view of the overlays
        self._synced: list[AddressRule] | None = None
        self._next_sync = 0.0

    def sync_addresses(self, force: bool = False) -> bool:
        """Reload the overlays; put what they cut by address (closure orders on an address or a
        prefix, the regulator's address and port filters, blacklisted addresses) into nftables,
        so it is cut on every port in every mode. True when an overlay changed."""
        if self.decider is None:
            return False
        changed = self.decider.reload()
        now = time.time()
        if not (changed or force or now >= self._next_sync):
            return changed
        self._next_sync = now + self.RESYNC_S
        rules = self.valid(self.decider.addresses(now), now)
        if self.nft is not None and (force or rules != self._synced):
            try:
                n = self.nft.sync_addresses(rules, now)
                self._synced = rules
                log.info("nftables: %d address cut(s) in force (%d element(s))", len(rules), n)
            except NftError as exc:
                log.error("address cuts: nftables: %s", exc)
        return changed

    @staticmethod
    def valid(rules: list[AddressRule], now: float) -> list[AddressRule]:
        """The rules nftables can take: one it cannot (a bad address in a command) is logged by its
        reference and left out, never stopping the others (a lift of an order must still apply)."""
        out = []
        for r in rules:
            try:
                address_elements([r], now)
            except NftError as exc:
                log.error("address cuts: %s: left out", exc)
                continue
            out.append(r)
        return out

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
