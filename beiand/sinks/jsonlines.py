"""JSON lines: one object per decision (``beiand replay --json``), the fields of the access log and more;
and one per connection record (issue 19: kind ``conn``, or a hosted host's named flow out)."""

from __future__ import annotations

import functools
import heapq
import json
import sys
from collections.abc import Callable
from typing import Any

from beiand.accesslog.columns import order_column
from beiand.model import AccessRecord, Decision, Kind, MetricValues, Observation, Outcome, endpoint
from beiand.sinks import OutputClosed


class JsonLines:
    """Sink: one JSON line per decision on stdout (orjson: ~10x faster than json where it is installed)."""

    def __init__(self, out: Any = None, reorder: float = 0.0) -> None:
        """``reorder``: seconds by which a line may come late (a connection record is written when
        its window closes, stamped with the flow's start): lines are held that long, in capture
        time, and written in time order."""
        self.out = out or sys.stdout.buffer
        self.reorder = reorder
        self._held: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._latest = 0.0
        self.write = self.out.write if not reorder else self._hold
        self.dumps: Callable[[Any], bytes]
        try:
            import orjson

            self.dumps = functools.partial(orjson.dumps, option=orjson.OPT_APPEND_NEWLINE)
        except ImportError:  # pragma: no cover - orjson is a dependency
            self.dumps = _json_bytes

    def on_decision(self, obs: Observation, d: Decision, outcome: Outcome = Outcome.NONE) -> None:
        try:
            self._write(obs, d, outcome)
        except BrokenPipeError:
            raise OutputClosed from None

    def _write(self, obs: Observation, d: Decision, outcome: Outcome) -> None:
        f = d.verdict.filing
        # Enum members serialise as their values (orjson does it natively, json as str subclasses).
        self.write(self.dumps({
            "ts": round(obs.ts, 6), "client": endpoint(obs.client_ip, obs.client_port), "server": endpoint(obs.server_ip, obs.server_port),
            "transport": obs.transport, "kind": obs.kind, "name_seen": obs.name_seen, "name": obs.name,
            "answers": obs.answers, "detail": obs.detail, "verdict": d.verdict.verdict, "reason": d.verdict.reason,
            "action": d.action, "rule": d.rule, "mode": d.mode, "account": d.account,
            "filing": f.number if f else None, "order": order_column(d) if d.by else "", "outcome": outcome,
            "direction": "" if obs.kind is Kind.DNS_ANSWER else "in", "method": obs.method, "url": obs.url,
            "packets": obs.packets, "octets": obs.octets,
        }))

    def on_connection(self, rec: AccessRecord) -> None:
        try:
            self.write(self.dumps({
                "ts": rec.ts_ms / 1000, "client": endpoint(rec.client_ip, rec.client_port),
                "server": endpoint(rec.server_ip, rec.server_port), "transport": rec.transport, "kind": rec.kind,
                "name_seen": rec.name, "name": rec.name, "answers": [], "detail": "", "verdict": rec.verdict,
                "reason": rec.reason, "action": rec.action, "rule": "", "mode": "", "account": rec.account,
                "filing": rec.filing_number or None, "order": "", "outcome": "", "direction": rec.direction,
                "method": rec.method, "url": rec.url,
                "packets": rec.packets, "octets": rec.octets,
            }))
        except BrokenPipeError:
            raise OutputClosed from None

    def _hold(self, line: bytes) -> None:
        ts = float(line[6 : line.index(b",", 6)])  # "ts" comes first: b'{"ts":1750000000.123456,...'
        self._seq += 1
        heapq.heappush(self._held, (ts, self._seq, line))
        if ts > self._latest:
            self._latest = ts
            limit = ts - self.reorder
            held, write = self._held, self.out.write
            try:
                while held and held[0][0] < limit:
                    write(heapq.heappop(held)[2])
            except BrokenPipeError:
                raise OutputClosed from None

    def flush(self) -> None:
        try:
            held, write = self._held, self.out.write
            while held:
                write(heapq.heappop(held)[2])
            self.out.flush()
        except BrokenPipeError:
            raise OutputClosed from None

    def close(self) -> None:
        self.flush()

    def metrics(self) -> MetricValues:
        return {}


def _json_bytes(o: Any) -> bytes:
    return json.dumps(o, ensure_ascii=False).encode() + b"\n"
