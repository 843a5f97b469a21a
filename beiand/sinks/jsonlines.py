"""JSON lines: one object per decision (``beiand replay --json``), the fields of the access log and more."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

from beiand.model import Decision, Observation, endpoint
from beiand.sinks import OutputClosed


class JsonLines:
    """Sink: one JSON line per decision on stdout (orjson: ~10x faster than json where it is installed)."""

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout.buffer
        self.write = self.out.write
        self.dumps: Callable[[Any], bytes]
        try:
            import orjson

            self.dumps = functools.partial(orjson.dumps, option=orjson.OPT_APPEND_NEWLINE)
        except ImportError:  # pragma: no cover - orjson is a dependency
            self.dumps = _json_bytes

    def on_decision(self, obs: Observation, d: Decision) -> None:
        try:
            self._write(obs, d)
        except BrokenPipeError:
            raise OutputClosed from None

    def _write(self, obs: Observation, d: Decision) -> None:
        f = d.verdict.filing
        # Enum members serialise as their values (orjson does it natively, json as str subclasses).
        self.write(self.dumps({
            "ts": round(obs.ts, 6), "client": endpoint(obs.client_ip, obs.client_port), "server": endpoint(obs.server_ip, obs.server_port),
            "transport": obs.transport, "kind": obs.kind, "name_seen": obs.name_seen, "name": obs.name,
            "answers": obs.answers, "detail": obs.detail, "verdict": d.verdict.verdict, "reason": d.verdict.reason,
            "action": d.action, "rule": d.rule, "mode": d.mode, "account": d.account,
            "filing": f.number if f else None,
        }))

    def flush(self) -> None:
        try:
            self.out.flush()
        except BrokenPipeError:
            raise OutputClosed from None

    def close(self) -> None:
        self.flush()

    def stats(self) -> Mapping[str, float]:
        return {}


def _json_bytes(o: Any) -> bytes:
    return json.dumps(o, ensure_ascii=False).encode() + b"\n"
