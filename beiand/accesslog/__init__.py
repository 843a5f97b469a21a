"""The Order 292 art. 14 access log: an embedded append-only store (hash-chained, day
partitions, sealed and indexed, retained at least 60 days) and a ClickHouse sink."""

from beiand.accesslog.format import FormatError
from beiand.accesslog.reader import Query, QueryStats, VerifyReport, query, stats, verify
from beiand.accesslog.sink import AccessLogSink, to_record
from beiand.accesslog.store import (
    RETENTION_FLOOR_DAYS,
    AccessLog,
    AccessLogError,
    LogConfig,
    LogConfigError,
    retire,
    seal_partition,
)

__all__ = [
    "RETENTION_FLOOR_DAYS",
    "AccessLog",
    "AccessLogError",
    "AccessLogSink",
    "FormatError",
    "LogConfig",
    "LogConfigError",
    "Query",
    "QueryStats",
    "VerifyReport",
    "query",
    "retire",
    "seal_partition",
    "stats",
    "to_record",
    "verify",
]
