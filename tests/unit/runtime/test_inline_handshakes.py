"""Inline decides exactly what replay decides, however a real browser's ClientHello is packetised
(issue 36): the recorded first bytes of Chromium 156 and Firefox ESR 153 (``tests/golden/browsers``,
ML-KEM key shares, about 1.9 KB) in TCP segments in any order, in one GSO super-packet, or cut
by the kernel into segments that each carry the ``first`` mark; Chromium's ClientHello over QUIC
in Initial packets of any split, any order, with duplicates, any prefix of them marked ``first``
(the kernel's unconfirmed-conntrack race), and the recorded datagrams themselves.

Inline here is the real :class:`InlinePath` on a queue double: one packet at a time, as the kernel
queues them, until a verdict stops the flow's queuing (``decided``) or drops it. Replay is the
pipeline on the same packets as a capture holds them.
"""

from __future__ import annotations

import threading
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from beiand.enforce.actor import Enforced
from beiand.enforce.nfqueue import Marks, Queued
from beiand.lab import traffic as t
from beiand.model import Action, Decision, Mode, Observation, Verdict, VerdictKind
from beiand.net.decoder import Decoder
from beiand.runtime.inline import InlinePath
from beiand.runtime.pipeline import Pipeline

GOLDEN = Path(__file__).parents[2] / "golden" / "browsers"
TCP_HELLOS = {b: (GOLDEN / f"{b}-tcp.clienthello").read_bytes() for b in ("chromium", "firefox")}
QUIC_HELLO = (GOLDEN / "chromium-quic.clienthello").read_bytes()
NAME = "www.example.com.cn"
C, S = "192.0.2.10", "198.51.100.11"
MARKS = Marks.from_base(0x100)
T0 = 1_790_000_000.0


def _datagrams(raw: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        n = int.from_bytes(raw[i : i + 2], "big")
        out.append(raw[i + 2 : i + 2 + n])
        i += 2 + n
    return out


QUIC_RECORDED = _datagrams((GOLDEN / "chromium-quic.initials").read_bytes())


def test_the_recorded_handshakes_are_what_the_issue_describes() -> None:
    """Bigger than one packet's payload, with the ML-KEM key share (X25519MLKEM768, 0x11ec)."""
    for hello in TCP_HELLOS.values():
        assert len(hello) > 1460 and b"\x11\xec" in hello
    assert len(QUIC_RECORDED) >= 2 and len(QUIC_HELLO) > 1200


class FakeQueue:
    def __init__(self) -> None:
        self.waiting: list[Queued] = []
        self.given: list[tuple[int, bool, int | None]] = []

    woke_ns = 0

    def receive(self, limit: int = 256, wait: bool = False) -> list[Queued]:
        out, self.waiting = self.waiting, []
        return out

    def verdict(self, pid: int, accept: bool, mark: int | None = None) -> None:
        self.given.append((pid, accept, mark))

    def send(self) -> None:
        pass


class Policy:
    inventory = type("I", (), {"lookup": staticmethod(lambda ip: object())})()

    def __init__(self, filed: bool) -> None:
        self.filed = filed

    def decide(self, o: Observation) -> Decision:
        good = self.filed and o.name == NAME
        v = Verdict(VerdictKind.FILED if good else VerdictKind.UNFILED, None, "test")
        return Decision(v, Action.LOG if good else Action.BLOCK, "test", Mode.ENFORCE, "acct")


def actor(o: Observation, d: Decision) -> Enforced:
    return Enforced(d, drop=d.action is Action.BLOCK)


class Collect:
    def __init__(self) -> None:
        self.got: list[tuple[str, str, str, str]] = []

    def on_decision(self, o: Observation, d: Decision, outcome: object = None) -> None:
        self.got.append((str(o.kind), o.name, str(d.verdict.verdict), str(d.action)))

    def flush(self) -> None:
        pass


def replay(frames: list[bytes], filed: bool) -> list[tuple[str, str, str, str]]:
    col = Collect()
    Pipeline(Decoder(), Policy(filed), [col], actor=actor).run((T0 + i * 0.001, 1, f) for i, f in enumerate(frames))  # type: ignore[arg-type]
    return col.got


def inline(packets: list[tuple[bool, bytes]], filed: bool) -> tuple[list[tuple[str, str, str, str]], list[tuple[int, bool, int | None]]]:
    """The packets queued one at a time (``first``: the kernel's mark), until a verdict ends the
    queuing of the flow: ``decided`` set, or a drop (TCP: reset; QUIC: the flow's nft entry)."""
    col = Collect()
    q = FakeQueue()
    pipe = Pipeline(Decoder(), Policy(filed), [col], actor=actor)  # type: ignore[arg-type]
    ticks = iter(range(1_000_000))
    path = InlinePath(q, pipe, threading.Lock(), MARKS, clock=lambda: T0 + next(ticks) * 0.001)  # type: ignore[arg-type]
    for i, (first, pkt) in enumerate(packets):
        q.waiting = [Queued(i, MARKS.first if first else 0, pkt)]
        path.serve()
        _, accept, mark = q.given[-1]
        if not accept or (mark or 0) & MARKS.decided:
            break
    pipe.finish()
    return col.got, q.given


def check(packets: list[tuple[bool, bytes]], frames: list[bytes], filed: bool) -> None:
    got, verdicts = inline(packets, filed)
    want = replay(frames, filed)
    assert got == want, (got, want)
    assert [n for _, n, _, _ in got] == [NAME], got
    # every packet before the one that named the flow was let through, undecided; that one decides
    *before, last = verdicts
    assert all(accept and not (mark or 0) & MARKS.decided for _, accept, mark in before), verdicts
    assert last[1] == filed and (not filed or (last[2] is not None and last[2] & MARKS.decided)), verdicts


# -- TCP -----------------------------------------------------------------------------------------

ACK = 5001
ISN = 1000


def tcp_packet(seq: int, data: bytes) -> bytes:
    return t.tcp(C, S, 40000, 443, seq, ACK, 0x18, data)


def handshake() -> list[bytes]:
    return [t.tcp(C, S, 40000, 443, ISN, 0, 0x02), t.tcp(S, C, 443, 40000, ACK - 1, ISN + 1, 0x12)]


@settings(max_examples=150, deadline=None)
@given(browser=st.sampled_from(sorted(TCP_HELLOS)), filed=st.booleans(), how=st.sampled_from(["segments", "gso", "kernel-split"]),
       data=st.data())
@example(browser="chromium", filed=False, how="gso", data=None)
@example(browser="firefox", filed=False, how="kernel-split", data=None)
def test_inline_decides_what_replay_decides_for_any_split_of_a_browsers_tcp_clienthello(browser, filed, how, data) -> None:  # type: ignore[no-untyped-def]
    hello = TCP_HELLOS[browser]
    if how == "gso":  # one super-packet, bigger than any MTU, queued whole (NFQA_CFG_F_GSO)
        pieces = [(0, hello)]
        order: list[int] = [0]
    else:
        if data is None:
            cuts = [1448]
        else:
            cuts = sorted(data.draw(st.sets(st.integers(1, len(hello) - 1), min_size=1, max_size=4)))
        bounds = [0, *cuts, len(hello)]
        pieces = [(bounds[i], hello[bounds[i] : bounds[i + 1]]) for i in range(len(bounds) - 1)]
        order = list(range(len(pieces)))
        if how == "segments" and data is not None:  # reordered on the way, a segment sent twice
            order = data.draw(st.permutations(order))
            if len(order) < 6 and data.draw(st.booleans()):
                order.insert(data.draw(st.integers(0, len(order))), data.draw(st.sampled_from(order)))
    frames = [tcp_packet(ISN + 1 + pieces[k][0], pieces[k][1]) for k in order]
    # the kernel's first mark: on the first queued packet; on every segment of a super-packet it cut
    packets = [(how == "kernel-split" or i == 0, f[14:]) for i, f in enumerate(frames)]
    check(packets, handshake() + frames, filed)


# -- QUIC ----------------------------------------------------------------------------------------

DCID = bytes.fromhex("5f1a0b2c3d4e6f70")


@settings(max_examples=150, deadline=None)
@given(filed=st.booleans(), data=st.data())
def test_inline_decides_what_replay_decides_for_any_split_of_a_browsers_quic_clienthello(filed, data) -> None:  # type: ignore[no-untyped-def]
    n = len(QUIC_HELLO)
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), min_size=0, max_size=6)))
    bounds = [0, *cuts, n]
    frames = [(bounds[i], QUIC_HELLO[bounds[i] : bounds[i + 1]]) for i in range(len(bounds) - 1)]
    count = data.draw(st.integers(1, min(4, len(frames))))
    # every datagram gets at least one CRYPTO frame; the frames in each in any order (Chrome shuffles them)
    owner = list(range(count)) + [data.draw(st.integers(0, count - 1)) for _ in range(len(frames) - count)]
    owner = data.draw(st.permutations(owner))
    datagrams = []
    for pn in range(count):
        mine = data.draw(st.permutations([f for f, o in zip(frames, owner, strict=True) if o == pn]))
        datagrams.append(t.quic_initial_packet(mine, DCID, pn))
    sent = data.draw(st.permutations(datagrams))
    if len(sent) < 6 and data.draw(st.booleans()):  # a datagram twice (a retransmission of the same packet)
        sent.insert(data.draw(st.integers(0, len(sent))), data.draw(st.sampled_from(sent)))
    firsts = data.draw(st.integers(1, len(sent)))  # the burst the kernel marked first, conntrack unconfirmed
    udp = [t.udp(C, S, 50000, 443, d) for d in sent]
    check([(i < firsts, f[14:]) for i, f in enumerate(udp)], udp, filed)


@given(filed=st.booleans(), order=st.permutations(range(len(QUIC_RECORDED))), firsts=st.integers(1, len(QUIC_RECORDED)))
@settings(deadline=None)
def test_inline_decides_what_replay_decides_for_chromiums_own_initial_datagrams(filed, order, firsts) -> None:  # type: ignore[no-untyped-def]
    udp = [t.udp(C, S, 50001, 443, QUIC_RECORDED[k]) for k in order]
    check([(i < firsts, f[14:]) for i, f in enumerate(udp)], udp, filed)


def test_a_dropped_flows_later_packets_are_dropped_too() -> None:
    """Review of issue 36: a dropped Initial's conntrack entry dies with it, so the client's
    retransmission comes marked ``first`` again, with the same DCID: it is the same, blocked
    connection, dropped again, never accepted with ``decided`` (inline without nftables: only the
    queue stands in the way). A new connection on the 4-tuple is decided afresh."""
    q = FakeQueue()
    pipe = Pipeline(Decoder(), Policy(False), [Collect()], actor=actor)  # type: ignore[arg-type]
    path = InlinePath(q, pipe, threading.Lock(), MARKS, clock=lambda: T0)  # type: ignore[arg-type]
    dgs = [t.udp(C, S, 50002, 443, d)[14:] for d in QUIC_RECORDED]
    for i, dg in enumerate([*dgs, dgs[-1], dgs[0]]):
        q.waiting = [Queued(i, MARKS.first, dg)]
        path.serve()
    verdicts = [accept for _, accept, _ in q.given]
    assert verdicts == [True] * (len(dgs) - 1) + [False, False, False], q.given
    # TCP: an unfiled name dropped (and reset); a later segment of it dropped too; a new connection on
    # the 4-tuple (another server ISN, so another ack) decided afresh: a filed name, accepted
    q, pipe = FakeQueue(), Pipeline(Decoder(), Policy(True), [Collect()], actor=actor)  # type: ignore[arg-type]
    path = InlinePath(q, pipe, threading.Lock(), MARKS, clock=lambda: T0)  # type: ignore[arg-type]
    bad = t.client_hello("bad.example.xyz")
    for i, (first, pkt) in enumerate([(True, t.tcp(C, S, 40400, 443, ISN + 1, ACK, 0x18, bad)[14:]),
                                      (False, t.tcp(C, S, 40400, 443, ISN + 1 + len(bad), ACK, 0x18, b"\x17" * 40)[14:]),
                                      (True, t.tcp(C, S, 40400, 443, 9000, 770001, 0x18, TCP_HELLOS["chromium"])[14:])]):
        q.waiting = [Queued(100 + i, MARKS.first if first else 0, pkt)]
        path.serve()
    assert [accept for _, accept, _ in q.given] == [False, False, True], q.given
