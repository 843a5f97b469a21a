"""Bounded reassembly of a byte stream from pieces in any order: TCP first bytes, IP fragments,
QUIC CRYPTO frames.

sans-IO. A ``Stream`` keeps its contiguous prefix (``buf``) and the pieces beyond the first hole
merged into disjoint, non-adjacent intervals (``starts``/``chunks``, sorted). Inserting a piece is
a binary search plus merging with its neighbours: at most ``limit`` bytes moved and O(holes)
pointers, never a re-sort or a re-join of everything held (16,383 one-byte segments sent highest
offset first once took seconds). Bytes at or beyond ``limit`` are cut, so a stream never holds
more than ``limit`` bytes however many distinct offsets it is sent; the holes it may keep are
bounded by ``max_holes``.

``Budget`` is a worker's global cap on the bytes all streams of one kind hold (Suricata's
``stream.reassembly.memcap`` / ``defrag.memcap``); the decoder evicts the oldest stream of the
kind when a piece would push it over, and counts the eviction.
"""

from __future__ import annotations

from bisect import bisect_right

# What one pending interval costs beside its bytes (a bytearray, an int and two list slots),
# charged to the budget so that many one-byte holes cannot hide behind a small byte count.
INTERVAL_COST = 96


class Budget:
    """Bytes held by all streams of one kind in one worker, against a cap."""

    __slots__ = ("evicted", "held", "kind", "limit", "peak")

    def __init__(self, kind: str, limit: int) -> None:
        self.kind = kind
        self.limit = limit
        self.held = 0
        self.peak = 0
        self.evicted = 0

    @property
    def over(self) -> bool:
        return self.held > self.limit

    def charge(self, n: int) -> None:
        held = self.held = self.held + n
        if held > self.peak:
            self.peak = held


class Stream:
    """The first ``limit`` bytes of a stream, from pieces at offsets relative to its start."""

    __slots__ = ("buf", "chunks", "cost", "starts")

    def __init__(self) -> None:
        self.buf = b""  # the contiguous prefix from offset 0
        self.starts: list[int] = []  # pending intervals beyond the first hole, sorted
        self.chunks: list[bytearray] = []
        self.cost = 0  # bytes held + INTERVAL_COST per pending interval: what the budget is charged

    @property
    def extent(self) -> int:
        """One past the highest offset held."""
        if self.starts:
            return self.starts[-1] + len(self.chunks[-1])
        return len(self.buf)

    def insert(self, off: int, data: bytes, limit: int, max_holes: int = 64) -> int:
        """Add the piece at ``off``; returns how much the contiguous prefix grew (0: it did not).

        Overlapping bytes keep what arrived first. A piece that would open more than
        ``max_holes`` pending intervals is dropped (returns -1).
        """
        if off >= limit or not data:
            return 0
        end = off + len(data)
        if end > limit:
            data = data[: limit - off]
            end = limit
        have = len(self.buf)
        if end <= have:
            return 0  # a retransmission
        starts, chunks = self.starts, self.chunks
        if off <= have:
            add = data[have - off :]
            grown = len(add)
            self.buf += add
            cost = grown
            # Pending intervals now reached by the prefix join it.
            while starts and starts[0] <= len(self.buf):
                s = starts.pop(0)
                c = chunks.pop(0)
                cost -= len(c) + INTERVAL_COST
                top = len(self.buf)
                if s + len(c) > top:
                    tail = c[top - s :]
                    self.buf += tail
                    cost += len(tail)
                    grown += len(tail)
            self.cost += cost
            return grown
        # Beyond the first hole: merge into the pending intervals.
        i = bisect_right(starts, off) - 1
        cost = 0
        if i >= 0 and starts[i] + len(chunks[i]) >= off:
            cur = chunks[i]
            cend = starts[i] + len(cur)
            if end <= cend:
                return 0
            cur += data[cend - off :]
            cost += end - cend
        else:
            if len(starts) >= max_holes:
                return -1
            i += 1
            starts.insert(i, off)
            cur = bytearray(data)
            chunks.insert(i, cur)
            cost += len(cur) + INTERVAL_COST
        cs = starts[i]
        j = i + 1
        while j < len(starts) and starts[j] <= cs + len(cur):
            nxt = chunks[j]
            nend = starts[j] + len(nxt)
            cend = cs + len(cur)
            cost -= len(nxt) + INTERVAL_COST
            if nend > cend:
                cur += nxt[cend - starts[j] :]
                cost += nend - cend
            del starts[j]
            del chunks[j]
        self.cost += cost
        return 0

    def shift(self, by: int) -> None:
        """The stream starts ``by`` bytes earlier than thought: what is held moves up."""
        if by <= 0:
            return
        if self.buf:
            self.starts.insert(0, 0)
            self.chunks.insert(0, bytearray(self.buf))
            self.cost += INTERVAL_COST
            self.buf = b""
        self.starts = [s + by for s in self.starts]

    def clear(self) -> None:
        self.buf = b""
        self.starts = []
        self.chunks = []
        self.cost = 0
