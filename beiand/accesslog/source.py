"""Where the read-side tools take access-log records from (issue 27, part B): one seam.

``logs query|export``, ``audit`` (passive), ``block report`` and the ISMS reports (DT 3, 4/5, 8,
9 and the query answers) read through a :class:`RecordSource`, chosen once, in the wiring or the
CLI, from the config (DESIGN.md, Fleet):

- :class:`LocalRecords`: this gateway's embedded chained log, the evidence of record;
- the fleet's copy in ClickHouse (``beiand.sinks.fleet.FleetRecords``): every gateway's records,
  each with its chain fields, checkable against the anchors (``logs verify --clickhouse``).

Both take the same :class:`~beiand.accesslog.reader.Query` (the filters of ``logs query``) and
give the same summaries (:data:`~beiand.accesslog.reader.SummaryKey` → [first, last, hits]), so a
tool does not know which one it reads.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from beiand.accesslog.reader import Query, QueryStats, SummaryKey, query, summaries
from beiand.model import AccessRecord

# DT 8's population (ISMS.md §4, 活跃资源): records of hosted servers, judged (not exempt, not
# outside hosted space), DNS answers left out; ISMI's protocol (1 TCP, 2 UDP) from the kind.
UNREPORTED_VERDICTS = ("exempt", "not-hosted")


class Activity(NamedTuple):
    """What DT 8 reports, aggregated: ``ips`` (server, port, protocol) and ``names`` (name, server,
    port, protocol), each → (first ms, last ms, records, 1 if any was blocked)."""

    ips: dict[tuple[str, int, int], tuple[int, int, int, int]]
    names: dict[tuple[str, str, int, int], tuple[int, int, int, int]]


def activity_of(summary: Mapping[SummaryKey, list[int]]) -> Activity:
    """:class:`Activity` from the summaries (what a source that cannot aggregate it does)."""
    ips: dict[tuple[str, int, int], tuple[int, int, int, int]] = {}
    names: dict[tuple[str, str, int, int], tuple[int, int, int, int]] = {}
    for (name, server, port, _a, verdict, kind, action, _r, _f), (first, last, hits) in summary.items():
        if verdict in UNREPORTED_VERDICTS or kind == "dns-answer":
            continue
        proto = 2 if kind == "quic-sni" else 1
        v = (first, last, hits, int(action == "block"))
        _merge(ips, (server, port, proto), v)
        if name:
            _merge(names, (name, server, port, proto), v)
    return Activity(ips, names)


def _merge(d: dict[Any, tuple[int, int, int, int]], k: Any, v: tuple[int, int, int, int]) -> None:
    o = d.get(k)
    d[k] = v if o is None else (min(o[0], v[0]), max(o[1], v[1]), o[2] + v[2], o[3] | v[3])


def only(summary: dict[SummaryKey, list[int]], verdicts: Collection[str] | None) -> dict[SummaryKey, list[int]]:
    return summary if verdicts is None else {k: v for k, v in summary.items() if k[4] in verdicts}


class RecordSource(Protocol):
    """Records of the access log, wherever they are held."""

    @property
    def fleet(self) -> bool:
        """True when the records are the fleet's copy (several gateways), False for this gateway's log."""
        ...

    @property
    def where(self) -> str:
        """What is read, for people: ``access log /var/log/beiand``, ``ClickHouse beiand.access_log at …``."""
        ...

    def query(self, q: Query) -> Iterator[AccessRecord]:
        """The records ``q`` matches (``q.match`` holds for every one)."""
        ...

    def summaries(self, since_ms: int, until_ms: int, verdicts: Collection[str] | None = None) -> dict[SummaryKey, list[int]]:
        """(name, server, port, account, verdict, kind, action, reason, filing) → [first, last, hits]
        of the records in [since, until), hosted servers only (``direction`` "out" left out);
        ``verdicts``: only those."""
        ...

    def activity(self, since_ms: int, until_ms: int) -> Activity:
        """DT 8's aggregates of [since, until) (:class:`Activity`): what the summaries give through
        :func:`activity_of`, computed where the records are when the source can (a day of the
        fleet's records holds millions of aggregates: issue 30)."""
        ...


@dataclass(frozen=True)
class LocalRecords:
    """This gateway's embedded chained log (Order 292 art. 14's evidence of record)."""

    directory: Path

    @property
    def fleet(self) -> bool:
        return False

    @property
    def where(self) -> str:
        return f"access log {self.directory}"

    def query(self, q: Query, stats: QueryStats | None = None) -> Iterator[AccessRecord]:
        return query(self.directory, q, stats)

    def summaries(self, since_ms: int, until_ms: int, verdicts: Collection[str] | None = None) -> dict[SummaryKey, list[int]]:
        return only(summaries(self.directory, since_ms, until_ms), verdicts)

    def activity(self, since_ms: int, until_ms: int) -> Activity:
        return activity_of(summaries(self.directory, since_ms, until_ms))
