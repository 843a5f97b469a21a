"""The pipeline sink that turns decisions into access-log records (Order 292 art. 14)."""

from __future__ import annotations

from typing import Protocol

from beiand.accesslog.columns import order_column
from beiand.model import AccessRecord, Action, Decision, Kind, MetricValues, Observation, Outcome


class NatTable(Protocol):
    """The NAT / elastic-IP mappings (``beiand.policy.nat.NatTable``, given by the wiring): the other
    side of a flow's mapping at a time, as the ``nat`` field spells it ("" for none)."""

    def record_nat(self, client_ip: str, client_port: int, server_ip: str, server_port: int, ts_ms: int) -> str: ...


class RecordWriter(Protocol):
    """The local access log (``AccessLog``); ClickHouse copies what it commits (``on_commit``)."""

    def append(self, rec: AccessRecord) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


_NOT_DONE = frozenset({Outcome.BREAKER_OPEN, Outcome.FAILED})


def to_record(obs: Observation, d: Decision, gateway: str = "", nat: NatTable | None = None,
              outcome: Outcome = Outcome.NONE, records_version: str = "") -> AccessRecord:
    """The access-log record of a decision: ``action`` is what was done (a block the enforcer could
    not carry out is ``flag``), ``outcome`` says what the enforcer did and ``order`` what decided it."""
    f = d.verdict.filing
    ts_ms = int(obs.ts * 1000)
    return AccessRecord(
        ts_ms, d.account, obs.client_ip, obs.client_port, obs.server_ip, obs.server_port,
        # StrEnum members are their values: no .value lookups on the hot path.
        obs.transport, obs.kind, obs.name or obs.name_seen, d.verdict.verdict, Action.FLAG if outcome in _NOT_DONE else d.action,
        f.number if f is not None else "", gateway, d.verdict.reason,
        # MPS Order 82 art. 8: the other side of a NAT / elastic-IP mapping (issue 19).
        nat.record_nat(obs.client_ip, obs.client_port, obs.server_ip, obs.server_port, ts_ms) if nat is not None else "", "",
        order_column(d) if d.by else "",
        # issue 19: a named flow is also its connection record (a DNS answer is not a flow)
        "" if obs.kind is Kind.DNS_ANSWER else "in", obs.method, obs.url, obs.packets, obs.octets, outcome,
        records_version,  # issue 35: the register version that decided it
    )


class AccessLogSink:
    """Sink: one record per decision into hosted space, written through any :class:`RecordWriter`."""

    def __init__(self, writer: RecordWriter, gateway: str = "", nat: NatTable | None = None, records_version: str = "") -> None:
        self.writer = writer
        self.gateway = gateway
        self.nat = nat  # None: no mappings (the field stays empty)
        self.records_version = records_version  # the register version this worker's state is (issue 35)

    def on_decision(self, obs: Observation, decision: Decision, outcome: Outcome = Outcome.NONE) -> None:
        self.writer.append(to_record(obs, decision, self.gateway, self.nat, outcome, self.records_version))

    def on_connection(self, rec: AccessRecord) -> None:
        """A connection record (issue 19), built by the pipeline (with its gateway); the NAT side added here."""
        nat = self.nat
        if nat is not None and not rec.nat:
            rec = rec._replace(nat=nat.record_nat(rec.client_ip, rec.client_port, rec.server_ip, rec.server_port, rec.ts_ms))
        if self.records_version and not rec.records_version:
            rec = rec._replace(records_version=self.records_version)
        self.writer.append(rec)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def metrics(self) -> MetricValues:
        """None of its own: the writer (the local log, ClickHouse) reports what it wrote, lost or
        spilled through its own ``metrics()``, a part of the worker's snapshot like this sink."""
        return {}
