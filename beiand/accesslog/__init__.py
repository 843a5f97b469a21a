"""The Order 292 art. 14 access log: an embedded append-only store (hash-chained, day
partitions, sealed and indexed, retained at least 60 days). Its sinks (local, ClickHouse) are in
``beiand.sinks``."""

from beiand.accesslog.format import FormatError
from beiand.accesslog.reader import Query, QueryStats, VerifyReport, query, stats, verify
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
    "verify",
]
