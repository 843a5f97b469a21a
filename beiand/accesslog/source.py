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

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from beiand.accesslog.reader import Query, QueryStats, SummaryKey, query, summaries
from beiand.model import AccessRecord


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

    def summaries(self, since_ms: int, until_ms: int) -> dict[SummaryKey, list[int]]:
        """(name, server, port, account, verdict, kind, action, reason, filing) → [first, last, hits]
        of the records in [since, until), hosted servers only (``direction`` "out" left out)."""
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

    def summaries(self, since_ms: int, until_ms: int) -> dict[SummaryKey, list[int]]:
        return summaries(self.directory, since_ms, until_ms)
