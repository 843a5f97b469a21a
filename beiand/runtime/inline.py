"""Inline mode's own path: the worker's NFQUEUE, served by a thread of its own (issue 22).

A queued packet is a customer's connection waiting, so it never waits behind the capture ring:
the thread sleeps in a read on the queue's socket alone, takes what is waiting (a batch is
only what already waits, never filled by waiting for more or by a timeout), decodes and
decides it, and sends the verdicts at once, in one system call.

One decoder and one pipeline serve both paths of a worker, under one lock: the capture thread
(AF_PACKET: the DNS answers) and this thread never decode at the same time, and the flow state
is one. A packet is never decoded on both paths: inline, the kernel filter of the capture
rings does not pass the watched TCP and UDP ports (``wiring.live_captures``), and those are
exactly what the NFQUEUE rules queue; a copy that came both ways anyway would meet the
decoder's "done" table the second time (one dict probe, no second observation).

The verdict carries beiand's marks (``enforce.nfqueue.Marks``): ``decided`` once the decoder
needs nothing more of the flow (the kernel then stops queuing the connection), the ``first``
mark taken off again. The verdicts are sent before the decisions go to the sinks (the access
log): nothing a sink does can change a verdict. Where the time goes per queued packet (netlink
receive, decode, decision, verdict, and the sinks after it) is counted in :class:`StageTimes`
and exported as ``beiand_inline_seconds_total{stage}``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from beiand.enforce.nfqueue import Marks, NfQueue
from beiand.model import Decision, MetricKey, MetricValues, Observation, Outcome
from beiand.net.decoder import LINKTYPE_RAW
from beiand.runtime.pipeline import Pipeline

log = logging.getLogger("beiand")
STAGES = ("receive", "decode", "decide", "verdict", "record")


class StageTimes:
    """Cumulative nanoseconds spent per stage, and the packets they were spent on."""

    __slots__ = ("decide", "decode", "packets", "receive", "record", "verdict")

    def __init__(self) -> None:
        self.packets = self.receive = self.decode = self.decide = self.verdict = self.record = 0

    def seconds(self) -> dict[str, float]:
        return {s: getattr(self, s) / 1e9 for s in STAGES}


class InlinePath:
    def __init__(self, queue: NfQueue, pipe: Pipeline, lock: threading.Lock, marks: Marks,
                 clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self.pipe = pipe
        self.lock = lock  # shared with the worker's capture thread: one decoder, one pipeline
        self.marks = marks
        self.clock = clock
        self.times = StageTimes()
        self.settled = 0  # verdicts that told the kernel to stop queuing their connection
        self.redropped = 0  # packets dropped because their connection was dropped before
        self.failed: BaseException | None = None  # what killed the thread: the worker dies of it too
        self._thread: threading.Thread | None = None

    def metrics(self) -> MetricValues:
        """The queue thread's counters: packets served, verdicts that settled their connection,
        retransmissions of dropped connections dropped again, and the time spent per stage."""
        m: MetricValues = {MetricKey("beiand_inline_packets"): self.times.packets, MetricKey("beiand_inline_settled"): self.settled,
                           MetricKey("beiand_inline_redropped"): self.redropped}
        for stage, seconds in self.times.seconds().items():
            m[MetricKey("beiand_inline_seconds", (stage,))] = seconds
        return m

    def serve(self, wait: bool = False) -> int:
        """Decide what is waiting in the queue now and send the verdicts; how many packets.
        ``wait``: wait (at most 0.1 s) for the first packet."""
        pc = time.perf_counter_ns
        queue = self.queue
        t0 = pc()
        batch = queue.receive(wait=wait)
        t1 = pc()
        if not batch:  # nothing came (a waiting read's 0.1 s are over): no time spent on a packet
            return 0
        if wait:  # the receive stage starts when the first packet was read, not while waiting
            t0 = max(t0, min(t1, queue.woke_ns))
        times = self.times
        times.receive += t1 - t0
        decoder = self.pipe.decoder
        feed, decide, settled, verdict = decoder.feed, self.pipe.decide, decoder.settled, queue.verdict
        block, blocked = decoder.block_current, decoder.blocked_current
        first, decided, more, seen = self.marks.first, self.marks.decided, self.marks.more, self.marks.seen
        head_done = decoder.head_done
        head_goes_on = decoder.reading_later
        clock = self.clock
        decode_ns = decide_ns = 0
        later: list[tuple[Observation, Decision, Outcome]] = []
        with self.lock:
            tv = pc()
            for q in batch:
                ta = pc()
                ts = clock()
                obs = feed(ts, q.packet, LINKTYPE_RAW, bool(q.mark & first))
                tb = pc()
                drop = decide(obs, later) if obs else False
                if drop:
                    block(ts)
                elif blocked(ts):  # a later packet of a connection dropped before (a retransmission)
                    drop = True
                    self.redropped += 1
                tc = pc()
                decode_ns += tb - ta
                decide_ns += tc - tb
                if drop:
                    verdict(q.id, False)
                    continue
                mark = q.mark & ~(first | more)
                if head_goes_on():  # a later request head (or the body before one) goes on in the next segments: queue them
                    mark |= decided | more
                elif settled():
                    # a request head completed here: ``more`` is left as the kernel has it (another head
                    # may be queued behind this one, its rest on the way); the next queued packet clears it
                    mark |= decided | seen if head_done() else decided
                    self.settled += 1
                verdict(q.id, True, mark if mark != q.mark else None)
            tv = pc() - tv - decode_ns - decide_ns  # building the verdict messages
            t2 = pc()
            queue.send()  # the verdicts go out before the access log is written
            t3 = pc()
            if later:
                self.pipe.record(later)
        times.verdict += tv + t3 - t2
        times.record += pc() - t3
        times.decode += decode_ns
        times.decide += decide_ns
        times.packets += len(batch)
        return len(batch)

    def run(self, stopping: Callable[[], bool]) -> None:
        """Serve the queue until ``stopping()``; wakes at once for a packet, every 0.1 s to check."""
        serve = self.serve
        while not stopping():
            serve(wait=True)

    def start(self, stopping: Callable[[], bool]) -> None:
        def main() -> None:
            try:
                self.run(stopping)
            except BaseException as exc:  # the worker's loop raises it: it dies as before (issue 17)
                log.critical("inline queue thread died: %s: %s", type(exc).__name__, exc)
                self.failed = exc

        self._thread = threading.Thread(target=main, name="inline-queue", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
