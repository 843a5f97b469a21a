"""The ISMS interface in the running daemon (docs/isms.md): settings → components, timers, metrics.

The main process serves ``idc_command`` (:mod:`beiand.isms.transport.endpoint`), writes the
commands it applies to ``<state_dir>/isms/commands.json`` and the data files to the spool;
each worker's decider re-reads them as a policy overlay (``runtime.wiring.decider``). In CU-lite mode the main
process also uploads the spool and calls ``idc_commandack``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from beiand.accesslog.source import RecordSource
from beiand.isms.answers import answer
from beiand.isms.basicinfo import build, load_basic_file
from beiand.isms.reports import Reporter, ReportError, Spool
from beiand.isms.service import Ack, CommandService, load_keys
from beiand.isms.store import CommandStore
from beiand.isms.transport.endpoint import serve, tls_context
from beiand.isms.transport.upload import Uploader
from beiand.isms.wire.codec import CODECS
from beiand.isms.wire.codes import DataType
from beiand.isms.wire.model import LogQuery, Query
from beiand.isms.wire.profile import Profile, load_profile
from beiand.model import Filing
from beiand.policy.inventory import HostedPrefix
from beiand.runtime.settings import Config, IsmsSection
from beiand.runtime.wiring import isms_gateways, records_source
from beiand.sinks.clickhouse import ClickHouseError

log = logging.getLogger("beiand.isms")
ACK_BATCH = 100  # acks per idc_commandack


def spool_dir(cfg: Config) -> Path:
    return cfg.isms.spool_dir or cfg.daemon.state_dir / "isms" / "spool"


def profile_of(cfg: Config) -> Profile:
    return load_profile(cfg.isms.profile)


def check(cfg: Config) -> str:
    """What would stop the ISMS interface from starting ("" when nothing): profile, secrets, TLS."""
    from beiand.isms.service import SecretError
    from beiand.isms.wire.profile import ProfileError

    try:
        load_profile(cfg.isms.profile)
        if cfg.isms.mode == "fleet":  # no endpoint, no files: the profile (its subdomain rule) is all it reads
            return ""
        load_keys(cfg.isms.secrets_dir)
        load_basic_file(cfg.isms.basic_file)
        tls_context(cfg.isms.tls_cert, cfg.isms.tls_key)
        CommandStore(cfg.daemon.state_dir)
    except (ProfileError, SecretError, OSError, ValueError) as exc:  # BasicInfoError is a ValueError
        return str(exc)
    return ""


class IsmsMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.commands = Counter("beiand_isms_commands", "idc_command calls, by result (received, applied, refused)", ["result"],
                                registry=r)
        self.refused = Counter("beiand_isms_commands_refused", "idc_command calls refused, by ISMS.md return code", ["code"],
                               registry=r)
        self.unsupported = Counter("beiand_isms_unsupported", "commands not carried out, by reason (never silently dropped)",
                                   ["reason"], registry=r)
        self.in_force = Gauge("beiand_isms_commands_in_force", "monitor/filter commands and list entries in force", registry=r)
        self.reports = Counter("beiand_isms_reports", "data files, by data type and result (written, rejected, uploaded, "
                               "upload_failed)", ["dt", "result"], registry=r)
        self.last_call = Gauge("beiand_isms_last_command_timestamp_seconds", "when SMMS (or the CU) last called idc_command",
                               registry=r)
        self.last_heartbeat = Gauge("beiand_isms_last_heartbeat_timestamp_seconds", "when the last DT 7 file was written",
                                    registry=r)
        self.acks = Counter("beiand_isms_acks", "idc_commandack calls (CU-lite, the CU), by result (ok; failed: kept and sent "
                            "again; refused: SMMS refused that one ack, dropped)", ["result"], registry=r)
        self._seen: dict[str, float] = {}

    def set_counter(self, c: Counter, labels: tuple[str, ...], value: float) -> None:
        """Counters from the service's own tallies: add the difference since the last look."""
        key = f"{id(c)}:{labels}"
        d = value - self._seen.get(key, 0.0)
        if d > 0:
            c.labels(*labels).inc(d)
        self._seen[key] = value


class IsmsRuntime:
    CU = False  # beiand isms serve (runtime/ismscu.py): acks through idc_commandack, whatever isms.mode says

    def __init__(self, cfg: Config, registry: CollectorRegistry | None = None, clock: Any = time.time) -> None:
        im = cfg.isms
        self.cfg = cfg
        self.clock = clock
        self.profile = profile_of(cfg)
        self.keys = load_keys(im.secrets_dir)
        # Commands are written to the decision store (every gateway following it applies them); the
        # state here is the snapshot the supervisor's follower writes, caught up under the write lock.
        from beiand.runtime.decisions import open_decisions, store_settings
        from beiand.store import StoreError, open_store

        try:
            decisions = open_decisions(cfg, import_files=False)
        except StoreError as exc:  # away at start: connected at the first command (the ack says if it is not)
            log.warning("isms: %s: commands are refused until the decision store answers", exc)
            decisions = open_store(store_settings(cfg), cfg.daemon.state_dir, cfg.gateway)
        self.store = CommandStore(cfg.daemon.state_dir, self.profile.subdomains, im.house_id, decisions=decisions)
        self.spool = Spool(spool_dir(cfg), im.idc_id, self.keys, self.profile, clock=clock)
        self.reporter = Reporter(self.spool, cfg.accesslog.directory, im.house_id, store=self.store, records=self.records_for(cfg))
        self.service = CommandService(im.idc_id, self.keys, self.profile, self.store, on_query=self._on_query, clock=clock)
        self.metrics = IsmsMetrics(registry or CollectorRegistry())
        self.uploader = self.uploader_for(im)
        self.runner: Any = None
        self._tls: ssl.SSLContext | None = None
        self.restart_needed: list[str] = []
        self._pending_queries: list[LogQuery | Query] = []
        self._next_hb = 0.0
        self._next_report = clock() + im.report_interval
        self._last_report_ms = int(clock() * 1000)
        # DT 1's inputs (the inventory's prefixes, the filings, this provider's names), wired by the
        # daemon or the CU from the state in force; written at start, on a reload, every basic_interval
        self.basic_source: Callable[[], tuple[Sequence[HostedPrefix], Sequence[Filing], tuple[str, ...]]] | None = None
        self._next_basic = 0.0
        self._basic_recheck = False
        self._basic_digest = ""  # of the last DT 1 written (without its timeStamp)
        self._ack_retry_at = 0.0  # after a failed idc_commandack: not before (backoff, 5 s doubling to 10 min)
        self._ack_failures = 0
        self._ack_batch = ACK_BATCH  # acks per call; 1 once SMMS refused a batch (find the one it refuses)
        self.healthy = True  # the daemon's readiness (capture running): DT 7 reports the house as faulty otherwise

    def records_for(self, cfg: Config) -> RecordSource | None:
        """With ClickHouse configured, the reports read the fleet's copy, scoped to ``isms.gateways``
        (this gateway by default); else this gateway's log (None: the reporter's ``log_dir``)."""
        if not cfg.accesslog.clickhouse.url:
            return None
        return records_source(cfg, isms_gateways(cfg))

    def uploader_for(self, im: IsmsSection) -> Uploader | None:
        """CU-lite uploads the spool itself; an EU leaves it to the CU."""
        return Uploader(im.upload_url, im.upload_key_file, self.spool.directory) if im.mode == "cu-lite" else None

    def houses(self) -> tuple[int, list[str]]:
        """DT 7: (houses reported for, the faulty ones): this gateway's one house, faulty while it
        does not capture."""
        return 1, [] if self.healthy else [self.cfg.isms.house_id or "-"]

    def reload(self, cfg: Config) -> list[str]:
        """Apply a reloaded ``[isms]`` (SIGHUP): what can be, in place; the rest is listed as needing
        a restart (beiand/isms/reload.py says which and why). Raises on a bad profile or
        secrets, leaving everything as it was."""
        from beiand.isms.reload import changed, restart_needed

        old, new = self.cfg.isms, cfg.isms
        keep = restart_needed(old, new)
        profile = profile_of(cfg)  # both raise before anything changes
        keys = load_keys(new.secrets_dir)
        if new.tls_cert is not None and self._tls is not None:
            self._tls.load_cert_chain(new.tls_cert, new.tls_key)  # new connections: the new certificate
        im = dataclasses.replace(new, **{k: getattr(old, k) for k in keep if k != "tls_cert"})
        if "tls_cert" in keep:
            im = dataclasses.replace(im, tls_cert=old.tls_cert, tls_key=old.tls_key)
        self.cfg = dataclasses.replace(cfg, isms=im)
        self.profile, self.keys = profile, keys
        self.store.subdomains, self.store.house_id = profile.subdomains, im.house_id
        self.spool.idc_id, self.spool.keys, self.spool.profile = im.idc_id, keys, profile
        self.spool.__post_init__()  # the codec of the profile's commandVersion and XSDs
        self.reporter.house_id, self.reporter.log_dir = im.house_id, cfg.accesslog.directory
        self.reporter.records = self.records_for(self.cfg)
        svc = self.service
        svc.idc_id, svc.keys, svc.profile = im.idc_id, keys, profile
        svc.codecs = {v: CODECS[v](profile.xsd_dir) for v in profile.accept_versions}
        self.uploader = self.uploader_for(im)
        now = self.clock()
        self._basic_recheck = True  # the inventory, the records or basic_file may have changed: DT 1 if it did
        self._next_hb = min(self._next_hb, now + im.heartbeat_interval)
        self._next_report = min(self._next_report, now + (self.store.state.active_period_s or im.report_interval))
        self.restart_needed = keep
        if keep:
            log.warning("isms: reload: %s changed; a restart applies it (kept the old value)", ", ".join(keep))
        log.info("isms: reload: %s", ", ".join(changed(old, new)) or "no [isms] change; secrets re-read")
        return keep

    def _on_query(self, q: LogQuery | Query) -> None:
        self._pending_queries.append(q)  # answered off the request path (a log query may read a day of records)

    async def start(self) -> None:
        im = self.cfg.isms
        host, _, port = im.listen.rpartition(":")
        self._tls = tls_context(im.tls_cert, im.tls_key)
        self.runner = await serve(self.service, host.strip("[]"), int(port), self._tls, im.path)
        log.info("isms: idc_command on %s%s (%s, %s)", im.listen, im.path, "TLS" if im.tls_cert else "plain HTTP", im.mode)

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def writes_basic(self) -> bool:
        """DT 1 基础数据 is the CU's (ISMS.md §4): the licence's CU and CU-lite write it, an EU does not."""
        return self.CU or self.cfg.isms.mode == "cu-lite"

    def due(self, now: float) -> list[str]:
        """What the timers ask for now: heartbeat, report, basic (DT 1)."""
        out = []
        if self.writes_basic() and self.basic_source is not None:
            if now >= self._next_basic:
                self._next_basic = now + self.cfg.isms.basic_interval
                out.append("basic")
            elif self._basic_recheck:
                out.append("basic-changed")
            self._basic_recheck = False
        if now >= self._next_hb:
            self._next_hb = now + self.cfg.isms.heartbeat_interval
            out.append("heartbeat")
        period = self.store.state.active_period_s or self.cfg.isms.report_interval
        if now >= self._next_report:
            self._next_report = now + period
            out.append("report")
        return out

    def run_due(self, what: list[str]) -> dict[str, int]:
        """Blocking: write what is due, answer queries, upload (CU-lite). Run in an executor."""
        now = self.clock()
        written: dict[str, int] = {}

        def note(dt: DataType, files: list[Path]) -> None:
            if not files:
                return
            written[str(int(dt))] = written.get(str(int(dt)), 0) + len(files)
            self.metrics.reports.labels(str(int(dt)), "written").inc(len(files))

        try:
            if "heartbeat" in what:
                amount, err = self.houses()
                note(DataType.ACTIVE_STATE, self.reporter.heartbeat(err, amount))
                self.metrics.last_heartbeat.set(now)
            if "basic" in what or "basic-changed" in what:
                note(DataType.BASIC_INFO, self.write_basic(force="basic" in what))
            lag = self.cfg.isms.report_lag if self.reporter.records is not None else 0.0  # the copy is filled in batches
            if "report" in what and int((now - lag) * 1000) > self._last_report_ms:
                since, until = self._last_report_ms, int((now - lag) * 1000)
                f9, f8 = self.reporter.resources(since, until)
                note(DataType.ILLEGAL_WEB, [f for f in f9 if f.parent.parent.name == "9"])
                note(DataType.IDC_MONITOR, [f for f in f9 if f.parent.parent.name == "2"])
                note(DataType.ACTIVE_RESOURCES, f8)
                # list(): one C call, atomic against the endpoint's thread adding a command meanwhile
                quiet = frozenset(str(c.command_id) for c in list(self.store.state.commands.values()) if not c.report)
                files = self.reporter.command_results(since, until, quiet)
                note(DataType.MONITOR_RESULT, [f for f in files if f.parent.parent.name == "4"])
                note(DataType.FILTER_RESULT, [f for f in files if f.parent.parent.name == "5"])
                self._last_report_ms = until
            queries, self._pending_queries = self._pending_queries, []
            for q in queries:  # DT 3, DT 6; queryView/commandRecord: answered in the ack
                files_by_dt, acks = answer(self.reporter, self.store, q, now)
                for dt_, files_ in files_by_dt:
                    note(dt_, files_)
                self.service.acks += acks
        except (ReportError, OSError, ClickHouseError, ValueError) as exc:  # ClickHouse away: the same window again next time
            log.error("isms: report: %s", exc)
            self.metrics.reports.labels("-", "rejected").inc()
        if self.uploader is None and self.service.acks and not self.CU:  # EU: the CU collects DT 10 from the spool
            acks, self.service.acks = self.service.acks, []
            try:
                note(DataType.COMMAND_ACK, self.reporter.acks(acks))
            except (ReportError, OSError) as exc:
                log.error("isms: DT 10: %s", exc)
                self.service.acks[:0] = acks
        if self.uploader is not None:
            ok, failed = self.uploader.upload_pending()
            self.metrics.reports.labels("-", "uploaded").inc(ok)
            if failed:
                self.metrics.reports.labels("-", "upload_failed").inc(failed)
        if self.uploader is not None and not self.CU:  # the CU sends its acks in its own job (runtime/ismscu.py)
            self.send_acks()
        self.update_metrics()
        return written

    def write_basic(self, force: bool = True) -> list[Path]:
        """DT 1 from the inventory, the records and ``isms.basic_file`` (beiand/isms/basicinfo.py);
        not ``force``d (after a reload): only when it differs from the last one written."""
        import hashlib
        import xml.etree.ElementTree as ET

        assert self.basic_source is not None
        prefixes, filings, providers = self.basic_source()
        facts = load_basic_file(self.cfg.isms.basic_file)
        tree = build(self.cfg.isms.idc_id, prefixes, filings, facts, default_house=self.cfg.isms.house_id,
                     provider_names=providers)
        digest = hashlib.sha256(ET.tostring(tree)).hexdigest()  # built without its timeStamp (the spool sets it)
        if not force and digest == self._basic_digest:
            return []
        files = self.reporter.spool.write_basic_info(tree)
        self._basic_digest = digest
        return files

    def send_acks(self) -> None:
        from beiand.isms.transport.ack import send_acks

        queue = self.ack_queue()
        now = self.clock()
        if not queue or not self.cfg.isms.ack_url or now < self._ack_retry_at:
            return
        acks: list[Ack] = []
        while queue and len(acks) < self._ack_batch:
            acks.append(queue.pop(0))  # pop: atomic against the endpoint's thread adding one
        try:
            send_acks(self.cfg.isms.ack_url, self.cfg.isms.idc_id, self.keys, self.profile, acks)
            self.metrics.acks.labels("ok").inc()
            self._ack_failures, self._ack_retry_at = 0, 0.0
            if len(acks) == 1 and self._ack_batch == 1 and not queue:
                self._ack_batch = ACK_BATCH
        except ValueError as exc:  # SMMS answered, and refused: one of them, or the batch
            if len(acks) == 1:
                log.error("isms: idc_commandack of command %d refused by SMMS (%s): dropped (not sent again)", acks[0].command_id,
                          exc)
                self.metrics.acks.labels("refused").inc()
            else:  # one at a time from now on: the one SMMS refuses must not hold the others back
                log.error("isms: idc_commandack of %d acks refused by SMMS (%s): sent one at a time", len(acks), exc)
                queue[:0] = acks
                self._ack_batch = 1
                self.metrics.acks.labels("failed").inc()
        except OSError as exc:
            self._ack_failures += 1
            wait = min(600.0, 5.0 * 2 ** min(self._ack_failures - 1, 7))
            self._ack_retry_at = now + wait
            log.error("isms: idc_commandack to %s failed (%s); %d ack(s) kept, tried again in %.0f s", self.cfg.isms.ack_url,
                      exc, len(acks) + len(queue), wait)
            queue[:0] = acks
            self.metrics.acks.labels("failed").inc()

    def ack_queue(self) -> list[Ack]:
        """The acks waiting for ``idc_commandack``: as the endpoint queued them (CU-lite)."""
        return self.service.acks

    def update_metrics(self) -> None:
        m, s = self.metrics, self.service
        for k, v in s.counts.items():
            if k.startswith("refused:"):
                m.set_counter(m.refused, (k[8:],), v)
                m.set_counter(m.commands, ("refused",), sum(x for kk, x in s.counts.items() if kk.startswith("refused:")))
            else:
                m.set_counter(m.commands, (k,), v)
        for k, v in s.unsupported.items():
            m.set_counter(m.unsupported, (k,), v)
        m.in_force.set(len(self.store.state.commands) + len(self.store.state.lists))
        if self.uploader is not None:  # SMMS's 999/ answers: accepted, rejected (for good), retried
            for (dt_, res), v in self.uploader.verdicts.items():
                m.set_counter(m.reports, (dt_, res), v)
        if s.last_call:
            m.last_call.set(s.last_call)

    async def tick(self, healthy: bool = True) -> None:
        self.healthy = healthy
        if self.store.lock.acquire(blocking=False):  # not while a command is being written
            try:  # what other writers applied, once the follower has written it into the snapshot
                self.store.reload()
            except ValueError as exc:
                log.debug("isms: snapshot not read: %s", exc)
            finally:
                self.store.lock.release()
        what = self.due(self.clock())
        if what or self._pending_queries or self.service.acks:
            await asyncio.get_running_loop().run_in_executor(None, self.run_due, what)
        else:
            self.update_metrics()

    def status(self) -> dict[str, Any]:
        st = self.store.state
        return {"idc_id": self.cfg.isms.idc_id, "mode": self.cfg.isms.mode, "listen": self.cfg.isms.listen,
                "commands": len(st.commands), "lists": len(st.lists), "refused": len(st.refused),
                "counts": dict(self.service.counts), "spool_pending": len(self.spool.pending()),
                "last_call": self.service.last_call, "restart_needed": self.restart_needed}
