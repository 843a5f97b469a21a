"""The inline queue's own path (issue 22): verdicts with beiand's marks, per-stage times, its thread."""

from __future__ import annotations

import threading
import time

from beiand.enforce.actor import Enforced
from beiand.enforce.nfqueue import Marks, Queued
from beiand.lab import traffic as t
from beiand.model import Action, Decision, Mode, Observation, Verdict, VerdictKind
from beiand.net.decoder import Decoder
from beiand.runtime.inline import STAGES, InlinePath
from beiand.runtime.pipeline import Pipeline

MARKS = Marks.from_base(0x100)
C, S = "192.0.2.10", "198.51.100.10"


class FakeQueue:
    """NfQueue's surface: what waits, and the verdicts given (sent only by ``send``)."""

    def __init__(self) -> None:
        self.waiting: list[Queued] = []
        self.pending: list[tuple[int, bool, int | None]] = []
        self.sent: list[list[tuple[int, bool, int | None]]] = []

    woke_ns = 0

    def receive(self, limit: int = 256, wait: bool = False) -> list[Queued]:
        out, self.waiting = self.waiting, []
        return out

    def verdict(self, pid: int, accept: bool, mark: int | None = None) -> None:
        self.pending.append((pid, accept, mark))

    def send(self) -> None:
        if self.pending:
            self.sent.append(self.pending)
            self.pending = []


class Policy:
    inventory = type("I", (), {"lookup": staticmethod(lambda ip: None)})()

    def decide(self, o: Observation) -> Decision:
        bad = o.name.endswith(".xyz")
        v = Verdict(VerdictKind.UNFILED if bad else VerdictKind.FILED, None, "test")
        return Decision(v, Action.BLOCK if bad else Action.LOG, "test", Mode.ENFORCE, "acct")


def actor(o: Observation, d: Decision) -> Enforced:
    return Enforced(d, drop=d.action is Action.BLOCK)


def path() -> tuple[InlinePath, FakeQueue]:
    q = FakeQueue()
    pipe = Pipeline(Decoder(), Policy(), actor=actor)  # type: ignore[arg-type]
    return InlinePath(q, pipe, threading.Lock(), MARKS, clock=lambda: 1000.0), q  # type: ignore[arg-type]


def ip(sport: int, seq: int, payload: bytes) -> bytes:
    return t.tcp(C, S, sport, 443, seq, ack=1, payload=payload)[14:]


def test_a_named_accepted_flow_is_marked_decided_and_the_first_mark_is_taken_off() -> None:
    p, q = path()
    hello = t.client_hello("www.example.cn")
    q.waiting = [Queued(1, MARKS.first | 0x1, ip(40000, 100, hello[:60])),  # the first queued of its connection
                 Queued(2, 0x1, ip(40000, 160, hello[60:])),  # completes the ClientHello: decided
                 Queued(3, MARKS.first, ip(40001, 5, t.client_hello("bad.example.xyz")))]  # blocked: dropped
    assert p.serve() == 3
    # One batch, one send: only what was already waiting; other bits of the mark are kept.
    assert q.sent == [[(1, True, 0x1), (2, True, 0x1 | MARKS.decided), (3, False, None)]]
    assert p.settled == 1 and p.times.packets == 3
    assert all(getattr(p.times, s) > 0 for s in STAGES)
    assert p.serve() == 0 and len(q.sent) == 1  # nothing waiting: no verdicts, no waiting for more


def test_an_unchanged_mark_is_not_sent_again() -> None:
    p, q = path()
    q.waiting = [Queued(4, 0, ip(40002, 1, b"\x16\x03\x01\x00"))]  # the start of a record: more is needed
    p.serve()
    assert q.sent == [[(4, True, None)]]


def test_the_thread_waits_in_the_read_serves_at_once_and_reports_its_death() -> None:
    import os

    r, w = os.pipe()
    p, _ = path()
    stop = threading.Event()
    served: list[float] = []

    def serve(wait: bool = False) -> int:
        assert wait
        os.read(r, 1)
        served.append(time.monotonic())
        if len(served) == 2:
            raise RuntimeError("boom")
        return 1

    p.serve = serve  # type: ignore[method-assign]
    try:
        p.start(stop.is_set)
        t0 = time.monotonic()
        os.write(w, b"x")
        deadline = time.monotonic() + 5
        while not served and time.monotonic() < deadline:
            time.sleep(0.001)
        assert served and served[0] - t0 < 0.09  # woken by the packet, not by the 0.1 s check
        os.write(w, b"x")
        p.join(5)
        assert isinstance(p.failed, RuntimeError)  # the worker's loop raises it (issue 17)
    finally:
        stop.set()
        os.close(r)
        os.close(w)


def test_inline_a_packet_comes_by_one_path_only() -> None:
    """Inline, the capture rings' kernel filter passes no watched TCP/UDP (those come through the
    queue) and still passes the DNS answers: no packet is decoded twice (issue 22)."""
    import dataclasses

    from beiand.capture.bpf import run
    from beiand.runtime.settings import Config
    from beiand.runtime.wiring import capture_filter

    cfg = Config()
    inline = dataclasses.replace(cfg, enforce=dataclasses.replace(cfg.enforce, inline=True))
    queued_kinds = [t.tcp(C, S, 40000, port, 1, payload=t.client_hello("a.example.cn")) for port in cfg.capture.tcp_ports]
    queued_kinds.append(t.udp(C, S, 5000, 443, b"\xc0" + b"\0" * 1199))
    dns = t.udp("192.0.2.53", C, 53, 3333, t.dns_response("www.example.cn", [S]))
    for frame in queued_kinds:
        assert run(capture_filter(cfg), frame) > 0  # passive: the capture ring is the only path
        assert run(capture_filter(inline), frame) == 0  # inline: the queue is
    assert run(capture_filter(inline), dns) > 0


def test_the_verdict_goes_out_before_the_access_log_is_written() -> None:
    events: list[str] = []

    class Sink:
        def on_decision(self, o: Observation, d: Decision, outcome: object = None) -> None:
            events.append("log " + o.name)

    class Q(FakeQueue):
        def send(self) -> None:
            if self.pending:
                events.append("verdicts")
            super().send()

    q = Q()
    pipe = Pipeline(Decoder(), Policy(), [Sink()], actor=actor)  # type: ignore[arg-type,list-item]
    p = InlinePath(q, pipe, threading.Lock(), MARKS)  # type: ignore[arg-type]
    q.waiting = [Queued(1, 0, ip(40010, 1, t.client_hello("www.example.cn")))]
    p.serve()
    assert events == ["verdicts", "log www.example.cn"] and p.times.record > 0


def test_waiting_is_not_counted_as_receiving() -> None:
    p, q = path()

    def slow_receive(limit: int = 256, wait: bool = False) -> list[Queued]:
        time.sleep(0.05)  # waiting for a packet
        if not q.waiting:
            return []
        q.woke_ns = time.perf_counter_ns()
        out, q.waiting = q.waiting, []
        return out

    q.receive = slow_receive  # type: ignore[method-assign]
    assert p.serve(wait=True) == 0 and p.times.receive == 0
    q.waiting = [Queued(1, 0, ip(40020, 1, t.client_hello("www.example.cn")))]
    assert p.serve(wait=True) == 1 and 0 < p.times.receive < 10_000_000  # not the 50 ms of waiting


def test_a_client_hello_in_swapped_segments_is_held_then_decided_by_its_name() -> None:
    """Issue 22: the second half arrives first (with the first mark). Its bytes start no protocol:
    the flow is held, the packet accepted without ``decided`` (the connection stays queued); the
    first half completes the name, which decides: filed accepted and decided, unfiled dropped."""
    p, q = path()
    good, bad = t.client_hello("www.example.cn"), t.client_hello("bad.example.xyz")
    q.waiting = [Queued(1, MARKS.first, ip(40010, 160, good[60:])),
                 Queued(2, MARKS.first, ip(40011, 160, bad[60:]))]
    assert p.serve() == 2
    assert q.sent == [[(1, True, 0), (2, True, 0)]] and p.settled == 0
    q.waiting = [Queued(3, 0, ip(40010, 100, good[:60])), Queued(4, 0, ip(40011, 100, bad[:60]))]
    assert p.serve() == 2
    assert q.sent[1] == [(3, True, MARKS.decided), (4, False, None)] and p.settled == 1


def test_inline_with_connection_records_the_ring_carries_what_the_queue_does_not() -> None:
    """Connection records (issue 19) inline: the ring passes every SYN (never queued) and UDP on
    ports not watched, but no datagram of a queued UDP port in either direction: a QUIC Initial
    must not be decided on the ring while its copy waits in the queue."""
    import dataclasses

    from beiand.capture.bpf import reference, run
    from beiand.runtime.settings import Config
    from beiand.runtime.wiring import capture_filter

    cfg = Config()
    assert cfg.connections.enabled
    inline = dataclasses.replace(cfg, enforce=dataclasses.replace(cfg.enforce, inline=True),
                                 daemon=dataclasses.replace(cfg.daemon, workers=1))  # several: the next test
    prog = capture_filter(inline)
    quic_in = t.udp(C, S, 5000, 443, b"\xc0" + b"\0" * 1199)
    quic_out = t.udp(S, C, 443, 5000, b"\xc0" + b"\0" * 1199)
    game = t.udp(C, S, 5000, 27015, b"hello")
    syn = t.tcp(C, S, 40000, 443, 1, flags=0x02)
    ssh = t.tcp(C, S, 40001, 22, 1, flags=0x02)
    want = {quic_in: False, quic_out: False, game: True, syn: True, ssh: True}
    for frame, passed in want.items():
        assert (run(prog, frame) > 0) is passed
        assert reference(frame, (), (), dns=cfg.capture.dns, connections=True, queued_udp=cfg.capture.udp_ports) is passed
    off = dataclasses.replace(inline, connections=dataclasses.replace(cfg.connections, enabled=False))
    assert all(run(capture_filter(off), f) == 0 for f in want)


def test_inline_with_several_workers_a_watched_flow_comes_to_one_worker_only() -> None:
    """Two workers (issue 19 x 22): the ring's fanout and NFQUEUE's balance hash differently, so a
    watched port's SYN/FIN/RST on the ring could reach another worker than its queued packet: two
    records for one flow and a second, ip-only decision. With several workers they stay off the ring."""
    import dataclasses

    from beiand.capture.bpf import run
    from beiand.runtime.settings import Config
    from beiand.runtime.wiring import capture_filter

    cfg = Config()
    inline = dataclasses.replace(cfg, enforce=dataclasses.replace(cfg.enforce, inline=True))
    one = dataclasses.replace(inline, daemon=dataclasses.replace(cfg.daemon, workers=1))
    two = dataclasses.replace(inline, daemon=dataclasses.replace(cfg.daemon, workers=2))
    syn = t.tcp(C, S, 40000, 443, 1, flags=0x02)
    fin = t.tcp(S, C, 443, 40000, 1, flags=0x11)
    ssh = t.tcp(C, S, 40001, 22, 1, flags=0x02)
    assert run(capture_filter(one), syn) > 0 and run(capture_filter(one), fin) > 0  # one worker: one place
    assert run(capture_filter(two), syn) == 0 and run(capture_filter(two), fin) == 0
    assert run(capture_filter(two), ssh) > 0  # not queued: the ring is its only path


def test_metrics_report_the_queue_threads_own_counters() -> None:
    """Issue 26: the path reports its own counters; the worker adds its number to the per-worker ones."""
    from beiand.model import MetricKey as K

    p, q = path()
    hello = t.client_hello("www.example.cn")
    q.waiting = [Queued(1, MARKS.first, ip(40000, 100, hello)), Queued(2, MARKS.first, ip(40001, 5, t.client_hello("bad.example.xyz"))),
                 Queued(3, 0, ip(40001, 5, t.client_hello("bad.example.xyz")))]  # the blocked one's retransmission
    p.serve()
    m = p.metrics()
    assert (m[K("beiand_inline_packets")], m[K("beiand_inline_settled")], m[K("beiand_inline_redropped")]) == (3, 1, 1)
    assert {k.labels for k in m if k.metric == "beiand_inline_seconds"} == {(s,) for s in STAGES}
    assert all(m[K("beiand_inline_seconds", (s,))] == getattr(p.times, s) / 1e9 > 0 for s in STAGES)
    assert len(m) == 3 + len(STAGES)


def test_a_later_request_head_on_a_decided_connection_is_judged_and_its_rest_queued() -> None:
    """Issue 32: keep-alive. A filed Host decides the connection; a later head is queued again by
    the kernel (a method token on a decided connection): one for the same site passes; one split
    over segments gets ``more`` (queue the rest) until it completes; an unfiled one is dropped."""
    p, q = path()

    def get(host: str, path: str = "/") -> bytes:
        return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    first, second = get("www.example.cn"), get("www.example.cn", "/2")
    split = get("unfiled.example.xyz", "/3")
    seq = 100
    q.waiting = [Queued(1, MARKS.first, ip(40000, seq, first))]
    seq += len(first)
    q.waiting += [Queued(2, MARKS.decided, ip(40000, seq, second))]
    seq += len(second)
    q.waiting += [Queued(3, MARKS.decided, ip(40000, seq, split[:12]))]
    q.waiting += [Queued(4, MARKS.decided | MARKS.more, ip(40000, seq + 12, split[12:]))]
    assert p.serve() == 4
    # a head completed: decided, and ``seen`` (the kernel's ``more`` left as it is: another head may be
    # queued behind this one, its rest on the way; issue 32)
    assert q.sent == [[(1, True, MARKS.decided | MARKS.seen), (2, True, MARKS.decided | MARKS.seen),
                       (3, True, MARKS.decided | MARKS.more),  # the rest of this head must be queued
                       (4, False, None)]]  # its Host is not filed: only this request refused
