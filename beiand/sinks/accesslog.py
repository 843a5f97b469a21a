"""The pipeline sink that turns decisions into access-log records (Order 292 art. 14)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from beiand.model import AccessRecord, Decision, Kind, Observation


class RecordWriter(Protocol):
    """The local access log (``AccessLog``) or ClickHouse (``ClickHouseSink``)."""

    def append(self, rec: AccessRecord) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def to_record(obs: Observation, d: Decision, gateway: str = "") -> AccessRecord:
    f = d.verdict.filing
    return AccessRecord(
        int(obs.ts * 1000), d.account, obs.client_ip, obs.client_port, obs.server_ip, obs.server_port,
        # StrEnum members are their values: no .value lookups on the hot path.
        obs.transport, obs.kind, obs.name or obs.name_seen, d.verdict.verdict, d.action,
        f.number if f is not None else "", gateway, d.verdict.reason, "", "",
        d.rule[6:] if d.rule.startswith("order:") else "",
        # issue 19: a named flow is also its connection record (a DNS answer is not a flow)
        "" if obs.kind is Kind.DNS_ANSWER else "in", obs.method, obs.url, obs.packets, obs.octets,
    )


class AccessLogSink:
    """Sink: one record per decision into hosted space, written through any :class:`RecordWriter`."""

    def __init__(self, writer: RecordWriter, gateway: str = "") -> None:
        self.writer = writer
        self.gateway = gateway

    def on_decision(self, obs: Observation, decision: Decision) -> None:
        self.writer.append(to_record(obs, decision, self.gateway))

    def on_connection(self, rec: AccessRecord) -> None:
        """A connection record (issue 19), built by the pipeline (with its gateway)."""
        self.writer.append(rec)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def stats(self) -> Mapping[str, float]:
        """The writer's own counters (ClickHouse's written, spilled, lost...; the local log's via its stats)."""
        counters = getattr(self.writer, "counters", None)
        return dict(counters()) if callable(counters) else {}
