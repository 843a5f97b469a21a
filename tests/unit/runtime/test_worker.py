"""Issue 17: a worker whose capture loop dies anyway first writes and closes its access log; the
steps after a failing one still run, and what could not be written is counted. Issue 26: the
worker's snapshot is every part's own ``metrics()``, merged in one loop, with the same series as before."""

from beiand.accesslog import AccessLog, LogConfig
from beiand.accesslog.reader import Query, query
from beiand.model import Action, Decision, Kind, Mode, Observation, Transport, Verdict, VerdictKind
from beiand.runtime.worker import close_dying
from beiand.sinks.accesslog import AccessLogSink

UNFILED = Decision(Verdict(VerdictKind.UNFILED, None, "no-filing"), Action.FLAG, "monitor:unfiled", Mode.MONITOR, "cust-1", "bj")


def obs(i: int) -> Observation:
    name = f"n{i}.example.com"
    return Observation(1_750_000_000.0 + i, "10.0.0.1", 40000, "198.51.100.7", 443, Transport.TCP, Kind.TLS_SNI, name, name)


def test_a_dying_worker_writes_the_records_it_holds_even_when_a_step_fails(tmp_path):
    alog = AccessLog(LogConfig(tmp_path, worker=0, commit_interval=60.0))  # nothing would be durable for a minute
    sink = AccessLogSink(alog, "gw")
    for i in range(50):
        sink.on_decision(obs(i), UNFILED)
    assert alog.pending == 50

    def pipeline_finish() -> None:
        raise RecursionError("a decoder bug while flushing")

    lost = close_dying(0, [pipeline_finish, alog.close], alog)
    assert lost == 0
    assert sorted(r.name for r in query(tmp_path, Query())) == sorted(f"n{i}.example.com" for i in range(50))


# -- the snapshot: every part's own metrics(), merged in one loop (issue 26) -------------------

# The series a worker's snapshot carried before its parts reported their own metrics (issue 26),
# for the setup of ``parts`` below: the old snapshot, run on the same setup, gave exactly these.
SERIES_BEFORE = {
    ("beiand_accesslog_bytes", ()), ("beiand_accesslog_chain_head_prefix", ("0",)), ("beiand_accesslog_lost_records", ()),
    ("beiand_accesslog_pending_records", ("0",)), ("beiand_accesslog_records", ()), ("beiand_accesslog_torn_repairs", ()),
    ("beiand_accesslog_write_errors", ()), ("beiand_active_view_dropped", ("0",)), ("beiand_capture_bpf_unfollowed", ("0",)),
    ("beiand_capture_kernel_drops", ("0",)), ("beiand_capture_kernel_packets", ("0",)), ("beiand_capture_link_errors", ("0",)),
    ("beiand_capture_userspace_bytes", ("0",)), ("beiand_capture_userspace_packets", ("0",)),
    ("beiand_clickhouse_lost_records", ()), ("beiand_clickhouse_records_replayed", ()), ("beiand_clickhouse_records_spilled", ()),
    ("beiand_clickhouse_records_written", ()), ("beiand_clickhouse_spilling", ("0",)), ("beiand_clickhouse_write_errors", ()),
    ("beiand_connection_attempt_summaries", ()), ("beiand_connection_attempts", ("refused",)),
    ("beiand_connection_attempts", ("unanswered",)),  # issue 32
    ("beiand_connection_records", ("in",)), ("beiand_decisions", ("flag",)), ("beiand_decisions", ("log",)),
    ("beiand_decode_errors", ("decide:ValueError",)), ("beiand_decode_errors", ("link:truncated-ethernet",)),
    ("beiand_enforcement_actions", ("rst",)), ("beiand_enforcement_errors", ("page",)),
    ("beiand_flow_name_budget_spent", ("packets",)), ("beiand_flow_name_budget_spent", ("seconds",)), ("beiand_flows", ("0",)),
    ("beiand_inline_packets", ("0",)), ("beiand_inline_redropped", ("0",)), ("beiand_inline_settled", ("0",)),
    *(("beiand_inline_seconds", (s,)) for s in ("decide", "decode", "receive", "record", "verdict")),
    ("beiand_observations", ("dns-answer",)), ("beiand_observations", ("tls-sni",)), ("beiand_reassembly_evicted", ("fragment",)),
    ("beiand_reassembly_evicted", ("quic",)), ("beiand_reassembly_evicted", ("tcp",)), ("beiand_verdict_actions", ("filed", "log")),
    ("beiand_verdict_actions", ("unfiled", "flag")), ("beiand_verdicts", ("filed",)), ("beiand_verdicts", ("unfiled",)),
}


class _KernelCounters:
    def getsockopt(self, level: int, opt: int, size: int) -> bytes:
        import struct

        return struct.pack("III", 5, 1, 0)  # packets, drops since the last read


class _Queue:
    woke_ns = 0

    def __init__(self) -> None:
        self.waiting: list[object] = []

    def receive(self, limit: int = 256, wait: bool = False) -> list[object]:
        out, self.waiting = self.waiting, []
        return out

    def verdict(self, *args: object) -> None:
        pass

    def send(self) -> None:
        pass


def _ring(frames_read: int = 10) -> object:
    from beiand.capture.live import KernelStats, LiveCapture

    cap = LiveCapture.__new__(LiveCapture)
    cap.sock = _KernelCounters()  # type: ignore[assignment]
    cap._kstats = KernelStats()
    cap.frames_read, cap.bytes_read, cap.link_errors = frames_read, 100 * frames_read, 1
    return cap


def parts(tmp_path, caps=None, extra_sinks=()):
    """A worker's parts as ``worker_main`` builds them (no sockets): one ring, the decoder, the
    pipeline with the access-log sink and the aggregate, the log, ClickHouse (unreachable), the
    inline path, the enforcer and the outbox; traffic decided through them."""
    import threading
    from multiprocessing import Pipe

    from beiand.enforce.actor import Enforcer, EnforceSettings
    from beiand.enforce.nfqueue import Marks, Queued
    from beiand.lab import traffic as t
    from beiand.net.decoder import Decoder, DecoderConfig
    from beiand.runtime.inline import InlinePath
    from beiand.runtime.pipeline import Pipeline
    from beiand.runtime.worker import _Outbox, worker_parts
    from beiand.sinks.active import ActiveResourceAggregate
    from beiand.sinks.clickhouse import ClickHouseSink
    from tests.unit.runtime.test_pipeline_connections import policy

    alog = AccessLog(LogConfig(tmp_path / "log"))
    agg = ActiveResourceAggregate()
    ch = ClickHouseSink("http://127.0.0.1:1/", tmp_path / "spill")
    enforcer = Enforcer(EnforceSettings())
    enforcer.actions, enforcer.errors, enforcer.latency = {"rst": 2}, {"page": 1}, [0.001]
    pipe = Pipeline(Decoder(DecoderConfig(conns=True)), policy(tmp_path), [AccessLogSink(alog, "gw"), agg, *extra_sinks],
                    gateway="gw")
    q = _Queue()
    path = InlinePath(q, pipe, threading.Lock(), Marks.from_base(0x100), clock=lambda: 1_790_000_000.0)  # type: ignore[arg-type]
    c = "192.0.2.1"
    frames = [*t.tcp_session(c, "198.51.100.5", 40000, 443, t.client_hello("site1.example.cn")),
              *t.tcp_session(c, "198.51.100.6", 40001, 443, t.client_hello("bad.example.xyz")),
              t.tcp(c, "198.51.100.7", 40002, 22, 1, 0, 0x02),
              t.udp("198.51.100.53", c, 53, 5353, t.dns_response("site1.example.cn", ["198.51.100.5"])), b"\x00" * 10]
    pipe.run((1_790_000_000.0 + i * 0.001, 1, f) for i, f in enumerate(frames))
    q.waiting = [Queued(1, 0, t.tcp("192.0.2.2", "198.51.100.9", 40003, 443, 5, ack=1, payload=t.client_hello("x.example.cn"))[14:])]
    path.serve()
    pipe.frame_errors["ValueError"] += 1
    agg.view_dropped = 3
    outbox = _Outbox(Pipe()[0])
    outbox.dropped_rows = 2
    alog.flush()
    enforcing = enforcer
    built = worker_parts(caps if caps is not None else [_ring()], pipe, alog, ch, path, enforcing, outbox)
    return built, (alog, ch, agg, enforcing)


def test_the_snapshot_carries_the_series_it_carried_before(tmp_path):
    from beiand.model import MetricKey as K
    from beiand.runtime.worker import worker_metrics

    built, (alog, ch, agg, enforcing) = parts(tmp_path)
    try:
        m = worker_metrics(0, built)
    finally:
        ch.close()
        alog.close()
    assert {(k.metric, k.labels) for k in m} == SERIES_BEFORE
    assert m[K("beiand_verdict_actions", ("unfiled", "flag"))] == 2 and m[K("beiand_observations", ("tls-sni",))] == 3
    assert m[K("beiand_capture_kernel_packets", ("0",))] == 5 and m[K("beiand_accesslog_records")] == 6
    assert m[K("beiand_active_view_dropped", ("0",))] == 3 + 2  # the aggregate's and the outbox's
    assert m[K("beiand_enforcement_actions", ("rst",))] == 2 and m[K("beiand_inline_packets", ("0",))] == 1
    assert len(agg.take_latency()) == 4 and enforcing.take_latency() == [0.001] and enforcing.take_latency() == []


def test_every_sinks_metrics_reach_the_snapshot_and_rings_add_up(tmp_path):
    from beiand.model import MetricKey as K
    from beiand.runtime.worker import worker_metrics

    class Dropping:
        """A sink of its own that reports a series the worker labels by worker."""

        def on_decision(self, obs: object, d: object) -> None:
            pass

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

        def metrics(self) -> dict[K, float]:
            return {K("beiand_active_view_dropped"): 4}

    built, (alog, ch, *_) = parts(tmp_path, caps=[_ring(10), _ring(7)], extra_sinks=[Dropping()])
    try:
        m = worker_metrics(3, built)
    finally:
        ch.close()
        alog.close()
    assert m[K("beiand_active_view_dropped", ("3",))] == 3 + 2 + 4
    assert m[K("beiand_capture_userspace_packets", ("3",))] == 17 and m[K("beiand_capture_kernel_packets", ("3",))] == 10
    assert not any(k.labels == ("0",) for k in m)  # this is worker 3


def test_the_enforcer_reports_its_actions_errors_outcomes_and_latency() -> None:
    from beiand.enforce.actor import Enforcer, EnforceSettings
    from beiand.model import MetricKey as K

    e = Enforcer(EnforceSettings())
    e.actions, e.errors, e.latency = {"rst": 3, "nft": 1}, {"rst": 1}, [0.002, 0.003]
    e.outcomes = {"done": 4, "failed": 1}
    assert e.metrics() == {K("beiand_enforcement_actions", ("rst",)): 3, K("beiand_enforcement_actions", ("nft",)): 1,
                           K("beiand_enforcement_errors", ("rst",)): 1, K("beiand_enforcement_outcomes", ("done",)): 4,
                           K("beiand_enforcement_outcomes", ("failed",)): 1}
    assert e.take_latency() == [0.002, 0.003] and e.take_latency() == [] and e.latency == []


def test_the_decider_reports_the_rules_each_overlay_holds(tmp_path) -> None:
    from beiand.model import MetricKey as K
    from beiand.policy.orders import OrderStore
    from beiand.policy.overlays import Decider, OrderLayer
    from beiand.runtime.worker import worker_metrics

    store = OrderStore(tmp_path)
    store.add("bad.example", "京通管〔2026〕1号", "")
    d = Decider(type("P", (), {"inventory": None})(), [OrderLayer(store)])  # type: ignore[arg-type]
    m = worker_metrics(1, [d])
    assert m == {K("beiand_overlay_rules", ("1", "order")): 1, K("beiand_overlay_reload_errors", ("1", "order")): 0,
                 K("beiand_overlay_damaged", ("1", "order")): 0, K("beiand_overlay_version", ("1", "order")): 1}
    store.path.write_text("{broken")
    d.reload()
    m = worker_metrics(1, [d])
    assert (m[K("beiand_overlay_damaged", ("1", "order"))], m[K("beiand_overlay_reload_errors", ("1", "order"))],
            m[K("beiand_overlay_rules", ("1", "order"))]) == (1, 1, 1)  # the order in force kept
