"""Prometheus metrics, all named ``beiand_*`` with their unit in the name.

Worker processes send cumulative counters; :class:`Metrics` turns them into deltas per worker
process, so counters stay monotonic across worker restarts. No label takes unbounded values:
labels are worker numbers, interface names from the config, kinds, verdicts, actions and
decode-error reasons (a fixed set in the decoders).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from beiand.runtime.ipc import MetricKey, Snapshot

# Counter keys a worker snapshot may carry, and the metric + label each feeds.
WORKER_COUNTERS = {
    "kernel_packets": ("capture_kernel_packets", "packets that passed the kernel filter (PACKET_STATISTICS)"),
    "kernel_drops": ("capture_kernel_drops", "packets the kernel dropped because the worker's ring was full"),
    "userspace_packets": ("capture_userspace_packets", "frames read by the worker from its ring"),
    "userspace_bytes": ("capture_userspace_bytes", "bytes of the frames read by the worker"),
    "bpf_unfollowed": ("capture_bpf_unfollowed", "frames the kernel filter passed without following every header (over 3 VLAN "
                                                 "tags, 4 MPLS labels, 2 GTP-U extensions, IPv6 extension headers); "
                                                 "the decoder read them"),
    "link_errors": ("capture_link_errors", "errors a capture socket reported (the link went down: ENETDOWN), read and cleared "
                                           "so that the worker waits quietly again"),
    "view_dropped": ("active_view_dropped", "decisions left out of the active-resource view because more distinct "
                                            "services changed than it could pass on (the access log has them all)"),
    "cpu_seconds": ("worker_cpu_seconds", "CPU time (user and system, all its threads) of the capture worker process: "
                                          "beside beiand_observations_total, the CPU a name costs (issue 33)"),
}


REASSEMBLY_KINDS = ("tcp", "quic", "fragment")  # net.decoder's budgets

# The series labelled by worker: a component reports them without that label (it does not know
# which worker it runs in) and the worker adds its own (worker.worker_metrics). A test keeps this
# equal to the metrics declared below with the label "worker".
PER_WORKER = frozenset({*(f"beiand_{name}" for name, _ in WORKER_COUNTERS.values()), "beiand_inline_packets",
                        "beiand_inline_settled", "beiand_inline_redropped", "beiand_flows", "beiand_accesslog_pending_records",
                        "beiand_accesslog_chain_head_prefix", "beiand_clickhouse_spilling",
                        "beiand_overlay_rules", "beiand_overlay_reload_errors", "beiand_overlay_damaged",
                        "beiand_overlay_version"})


class Metrics:
    def __init__(self, interfaces: Sequence[str] = (), version: str = "") -> None:
        r = self.registry = CollectorRegistry()
        self.worker_counters = {k: Counter(f"beiand_{name}", doc, ["worker"], registry=r) for k, (name, doc) in WORKER_COUNTERS.items()}
        self.observations = Counter("beiand_observations", "observations into hosted space, by how the name was seen", ["kind"],
                                    registry=r)
        self.verdicts = Counter("beiand_verdicts", "verdicts, by verdict", ["verdict"], registry=r)
        self.actions = Counter("beiand_decisions", "decisions, by action (log, flag, block)", ["action"], registry=r)
        self.verdict_actions = Counter("beiand_verdict_actions", "decisions, by verdict and action (unfiled and blocked, or not)",
                                       ["verdict", "action"], registry=r)
        self.connection_records = Counter("beiand_connection_records", "connection records written (issue 19): flows no name "
                                          "came for, and hosted hosts' named flows out, by direction (in, out); named "
                                          "flows into hosted space are counted as observations", ["direction"], registry=r)
        for direction in ("in", "out"):
            self.connection_records.labels(direction)
        self.connection_attempts = Counter("beiand_connection_attempts", "TCP attempts (issue 32: a SYN never answered) "
                                           "counted into an attempts summary instead of a record of their own "
                                           "(connections.attempts = summarise), by outcome (refused: the server's RST; "
                                           "unanswered)", ["outcome"], registry=r)
        for outcome in ("refused", "unanswered"):
            self.connection_attempts.labels(outcome)
        self.connection_attempt_summaries = Counter("beiand_connection_attempt_summaries", "attempts summaries written (one "
                                                    "record per server address and window; also counted in "
                                                    "beiand_connection_records)", registry=r)
        self.decode_errors = Counter("beiand_decode_errors", "frames or flows dropped by the decoders, by reason", ["reason"],
                                     registry=r)
        self.reassembly_evicted = Counter("beiand_reassembly_evicted", "reassemblies dropped, oldest first, because a "
                                          "worker's byte budget for their kind was reached (reassembly.* in the config)",
                                          ["kind"], registry=r)
        for kind in REASSEMBLY_KINDS:
            self.reassembly_evicted.labels(kind)
        self.name_budget_spent = Counter("beiand_flow_name_budget_spent", "flows whose name was not whole when their "
                                         "name budget was spent (reassembly.name_packets, name_seconds; issue 36): judged "
                                         "by their address alone (ip-only), by budget", ["budget"], registry=r)
        for budget in ("packets", "seconds"):
            self.name_budget_spent.labels(budget)
        self.worker_crashes = Counter("beiand_worker_crashes", "capture workers whose loop died of an exception (their "
                                      "access log was flushed and closed first where possible)", registry=r)
        self.crash_lost = Counter("beiand_worker_crash_lost_records", "access-log records still unwritten when a dying "
                                  "worker could not close its log", registry=r)
        self.flows = Gauge("beiand_flows", "flows tracked until their name is known", ["worker"], registry=r)
        self.overlay_rules = Gauge("beiand_overlay_rules", "rules in force per overlay (order: closure orders; isms: the "
                                   "regulator's commands and list entries), as each worker applies them", ["worker", "overlay"],
                                   registry=r)
        self.overlay_reload_errors = Gauge("beiand_overlay_reload_errors", "reloads of an overlay that met a damaged file "
                                           "(the rules in force were kept), per worker", ["worker", "overlay"], registry=r)
        self.overlay_damaged = Gauge("beiand_overlay_damaged", "1 while an overlay's file is damaged: the worker decides "
                                     "with the rules it had before (none, when damaged at start)", ["worker", "overlay"],
                                     registry=r)
        self.overlay_version = Gauge("beiand_overlay_version", "the decision store version of the overlay's snapshot as each "
                                     "worker applies it (-1: a file from before the decision store)", ["worker", "overlay"],
                                     registry=r)
        self.enforcement_outcomes = Counter("beiand_enforcement_outcomes", "decisions to block by what the enforcer did "
                                            "(done, breaker-open, failed)", ["outcome"], registry=r)
        self.decision_latency = Histogram("beiand_decision_latency_seconds", "time from the packet carrying the name to its decision",
                                          buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1),
                                          registry=r)
        self.records_filings = Gauge("beiand_records_filings", "filings (备案) loaded", registry=r)
        self.records_unmapped = Gauge("beiand_records_unmapped_status_filings",
                                      "filings whose status word no table maps: kept in force, map it with records.status_map",
                                      registry=r)
        self.records_loaded = Gauge("beiand_records_loaded_timestamp_seconds", "when the records in use were loaded", registry=r)
        self.records_age = Gauge("beiand_records_age_seconds", "age of the records in service: now minus the mtime of the oldest "
                                 "records file when it was loaded (a stale export is an alert)", registry=r)
        self.records_max_age = Gauge("beiand_records_max_age_seconds", "records.max_age_hours: records older than this are stale "
                                     "(0: never)", registry=r)
        self.records_stale = Gauge("beiand_records_stale", "1 while the records in service are older than records.max_age_hours",
                                   registry=r)
        self.records_reload_refused = Counter("beiand_records_reload_refused", "reloads whose records were refused (more than "
                                              "records.max_loss of the filings lost, empty or unreadable): the old index serves",
                                              registry=r)
        self.register_drop_failures = Counter("beiand_register_drop_import_failures", "imports of the drop (records.source = "
                                              "\"store\") that failed in the decision store (unreachable, busy): the same "
                                              "files are tried again at the next poll", registry=r)
        self.reloads = Counter("beiand_reloads", "reloads of config, records and inventory, by result", ["result"], registry=r)
        self.reload_ok = Gauge("beiand_last_reload_successful", "1 if the last reload succeeded (the old state is kept otherwise)",
                               registry=r)
        self.log_records = Counter("beiand_accesslog_records", "access-log records written (Order 292 art. 14)", registry=r)
        self.log_bytes = Counter("beiand_accesslog_bytes", "access-log bytes written", registry=r)
        self.log_write_errors = Counter("beiand_accesslog_write_errors", "failed access-log writes (records are kept and retried)",
                                        registry=r)
        self.log_lost = Counter("beiand_accesslog_lost_records", "access-log records dropped because the buffer was full while "
                                "writes failed", registry=r)
        self.ch_written = Counter("beiand_clickhouse_records_written", "access-log records inserted into ClickHouse (replayed "
                                  "ones included)", registry=r)
        self.ch_spilled = Counter("beiand_clickhouse_records_spilled", "access-log records spilled to local disk because "
                                  "ClickHouse refused or was unreachable", registry=r)
        self.ch_replayed = Counter("beiand_clickhouse_records_replayed", "spilled records sent to ClickHouse once it was back",
                                   registry=r)
        self.ch_write_errors = Counter("beiand_clickhouse_write_errors", "failed ClickHouse inserts and spill writes (records "
                                       "spill and are replayed)", registry=r)
        self.ch_lost = Counter("beiand_clickhouse_lost_records", "access-log records dropped because neither ClickHouse nor "
                               "the local spill took them", registry=r)
        self.ch_spilling = Gauge("beiand_clickhouse_spilling", "1 while the worker's records go to the local spill", ["worker"],
                                 registry=r)
        self.log_torn = Counter("beiand_accesslog_torn_repairs", "torn tails cut at start (after a crash)", registry=r)
        self.fsync = Histogram("beiand_accesslog_fsync_seconds", "access-log group-commit fsync latency",
                               buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=r)
        self.log_pending = Gauge("beiand_accesslog_pending_records", "records appended but not yet on disk", ["worker"], registry=r)
        self.chain_head = Gauge("beiand_accesslog_chain_head_prefix", "first 48 bits of the worker's chain head (anchor it elsewhere)",
                                ["worker"], registry=r)
        self.verify_failures = Gauge("beiand_accesslog_verify_problems", "problems found by the last chain verification "
                                     "(recent partitions)", registry=r)
        self.verify_time = Gauge("beiand_accesslog_last_verify_timestamp_seconds", "when the chain was last verified", registry=r)
        self.oldest = Gauge("beiand_accesslog_oldest_record_age_seconds", "age of the oldest retained access-log record", registry=r)
        self.retention = Gauge("beiand_accesslog_retention_seconds", "configured retention (at least 60 days)", registry=r)
        self.log_free = Gauge("beiand_accesslog_filesystem_free_bytes", "free space on the access log's file system", registry=r)
        self.log_held = Gauge("beiand_accesslog_held_bytes", "bytes held by the access log's partitions", registry=r)
        self.log_bytes_per_record = Gauge("beiand_accesslog_sealed_bytes_per_record", "bytes per record of the sealed partitions "
                                          "(connection records included): with the record rate and the retention, the disk needed",
                                          registry=r)
        self.worker_restarts = Counter("beiand_worker_restarts", "capture workers restarted after they died", registry=r)
        self.workers = Gauge("beiand_workers_running", "capture worker processes running", registry=r)
        self.blocks = Counter("beiand_enforcement_actions", "enforcement actions taken, by action", ["action"], registry=r)
        self.enforce_latency = Histogram("beiand_enforcement_latency_seconds", "time from the packet carrying the name to the "
                                         "enforcement action on the wire",
                                         buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1), registry=r)
        self.enforce_errors = Counter("beiand_enforcement_errors", "enforcement actions that failed (capture goes on)", ["action"],
                                      registry=r)
        self.breaker_open = Gauge("beiand_enforcement_breaker_open", "1 while the circuit breaker holds enforcement in dry-run",
                                  registry=r)
        self.nft_available = Gauge("beiand_nftables_available", "1 while beiand's nftables table is in place: the overlays' "
                                   "address cuts can be carried out (0: the ISMS acks such a command partial)", registry=r)
        self.nft_rules = Gauge("beiand_nftables_address_rules", "overlay address rules in force in nftables (the last write)",
                               registry=r)
        self.nft_elements = Gauge("beiand_nftables_address_elements", "address-set elements written at the last write: all, "
                                  "and of them the concatenated sets' (address . protocol . port)", ["kind"], registry=r)
        self.nft_elements_cap = Gauge("beiand_nftables_address_elements_cap", "the most address-set elements one write "
                                      "holds: all, and of them in the concatenated sets", ["kind"], registry=r)
        self.nft_left_out = Gauge("beiand_nftables_address_rules_left_out", "address rules left out of the last write, by "
                                  "reason (over-cap: their reference would pass a cap; invalid: nftables cannot take it), "
                                  "each logged by its reference", ["reason"], registry=r)
        self.nft_syncs = Counter("beiand_nftables_syncs", "writes of the address sets by result (ok, failed)", ["result"],
                                 registry=r)
        self.nft_sync_seconds = Histogram("beiand_nftables_sync_seconds", "time one write of the address sets took (off the "
                                          "supervisor's loop)", buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
                                          registry=r)
        self.nft_recreated = Counter("beiand_nftables_table_recreated", "times beiand's table was found gone (nft flush "
                                     "ruleset, a deleted table) and made again", registry=r)
        for kind in ("all", "concatenated"):
            self.nft_elements.labels(kind)
            self.nft_elements_cap.labels(kind)
        for reason in ("over-cap", "invalid"):
            self.nft_left_out.labels(reason)
        for result in ("ok", "failed"):
            self.nft_syncs.labels(result)
        self.inline_packets = Counter("beiand_inline_packets", "packets that waited in a worker's NFQUEUE for a verdict",
                                      ["worker"], registry=r)
        self.inline_settled = Counter("beiand_inline_settled", "accepted packets whose verdict told the kernel to stop "
                                      "queuing their connection (its name is known)", ["worker"], registry=r)
        self.inline_redropped = Counter("beiand_inline_redropped", "queued packets dropped because their connection was "
                                        "dropped before (a retransmission of a blocked flow's packet)", ["worker"], registry=r)
        self.inline_seconds = Counter("beiand_inline_seconds", "time the queue thread spent on queued packets, by stage "
                                      "(receive: netlink read and parse; decode; decide: policy and enforcement; "
                                      "verdict: building and sending the verdicts; record: the access log and other "
                                      "sinks, after the verdict)",
                                      ["stage"], registry=r)
        for stage in ("receive", "decode", "decide", "verdict", "record"):
            self.inline_seconds.labels(stage)
        self.audit_findings = Gauge("beiand_audit_findings", "findings of the last audit run, by kind", ["kind"], registry=r)
        self.ip_report_unreported = Gauge("beiand_ip_report_unreported_changes", "changes of the allocated blocks (added, "
                                          "removed, unit changed) since the last IP地址备案 report (beiand records ip-report "
                                          "--mark-reported)", registry=r)
        self.ip_report_overdue = Gauge("beiand_ip_report_overdue_changes", "of them, those past their deadline: five working "
                                       "days after the change (501号 art. 19)", registry=r)
        self.ip_report_last = Gauge("beiand_ip_report_last_reported_timestamp_seconds", "when the last IP地址备案 report was "
                                    "marked as filed (0: never)", registry=r)
        Info("beiand_build", "beiand version", registry=r).info({"version": version})
        # Every counter and gauge by its name, for the MetricKeys of worker snapshots (ipc.py).
        self._counters = {next(iter(m.describe())).name: m for m in [*vars(self).values(), *self.worker_counters.values()]
                          if isinstance(m, Counter)}
        self._gauges = {next(iter(m.describe())).name: m for m in vars(self).values() if isinstance(m, Gauge)}
        self._seen: dict[tuple[int, MetricKey], float] = {}  # (pid, key) → last cumulative value
        self._interfaces = list(interfaces)
        r.register(_InterfaceCollector(self._interfaces))

    def worker_snapshot(self, worker: int, pid: int, snap: Snapshot) -> None:
        """Fold one worker snapshot in: its counters are cumulative since that process started (the
        deltas are added), its gauges current (set); which is which, the declarations above say."""
        w = str(worker)
        for c in self.worker_counters.values():
            c.labels(w)  # export 0 rather than nothing: "no drops" is an answer
        gauges = self._gauges
        for key, value in snap.metrics.items():
            gauge = gauges.get(key.metric)
            if gauge is not None:
                (gauge.labels(*key.labels) if key.labels else gauge).set(value)
                continue
            delta = value - self._seen.get((pid, key), 0.0)
            if delta <= 0:
                continue
            self._seen[(pid, key)] = value
            counter = self._counters[key.metric]
            (counter.labels(*key.labels) if key.labels else counter).inc(delta)
        for v in snap.fsync:
            self.fsync.observe(v)
        for v in snap.latency:
            self.decision_latency.observe(v)
        for v in snap.enforce_latency:
            self.enforce_latency.observe(v)

    def forget(self, pid: int) -> None:
        for k in [k for k in self._seen if k[0] == pid]:
            del self._seen[k]


def interface_counters(interface: str) -> dict[str, int]:
    """rx/tx packets and bytes of an interface, from /proc/net/dev: the calling process's own
    network namespace (sysfs would show the namespace it was mounted in)."""
    try:
        with open("/proc/net/dev") as f:
            for line in f:
                name, sep, rest = line.partition(":")
                if sep and name.strip() == interface:
                    v = [int(x) for x in rest.split()]
                    return {"rx_bytes": v[0], "rx_packets": v[1], "tx_bytes": v[8], "tx_packets": v[9]}
    except (OSError, ValueError, IndexError):
        pass
    return {"rx_bytes": 0, "rx_packets": 0, "tx_bytes": 0, "tx_packets": 0}


class _InterfaceCollector(Collector):
    """Packets and bytes per watched interface, read from sysfs at scrape time."""

    def __init__(self, interfaces: Iterable[str]) -> None:
        self.interfaces = list(interfaces)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        pk = CounterMetricFamily("beiand_interface_packets", "packets seen on a watched interface", labels=["interface", "direction"])
        by = CounterMetricFamily("beiand_interface_bytes", "bytes seen on a watched interface", labels=["interface", "direction"])
        for i in self.interfaces:
            c = interface_counters(i)
            pk.add_metric([i, "rx"], c["rx_packets"])
            pk.add_metric([i, "tx"], c["tx_packets"])
            by.add_metric([i, "rx"], c["rx_bytes"])
            by.add_metric([i, "tx"], c["tx_bytes"])
        yield pk
        yield by
