"""Issue 17: a worker whose capture loop dies anyway first writes and closes its access log; the
steps after a failing one still run, and what could not be written is counted."""

from beiand.accesslog import AccessLog, LogConfig
from beiand.accesslog.reader import Query, query
from beiand.model import Action, Decision, Kind, Mode, Observation, Transport, Verdict, VerdictKind
from beiand.runtime.worker import close_dying
from beiand.sinks.accesslog import AccessLogSink

UNFILED = Decision(Verdict(VerdictKind.UNFILED, None, "no-filing"), Action.FLAG, "monitor:unfiled", Mode.MONITOR, "cust-1", "bj")


def obs(i: int) -> Observation:
    name = f"n{i}.example.com"
    return Observation(1_750_000_000.0 + i, "10.0.0.1", 40000, "198.51.100.7", 443, Transport.TCP, Kind.TLS_SNI, name, name)


def test_a_dying_worker_writes_the_records_it_holds_even_when_a_step_fails(tmp_path):
    alog = AccessLog(LogConfig(tmp_path, worker=0, commit_interval=60.0))  # nothing would be durable for a minute
    sink = AccessLogSink(alog, "gw")
    for i in range(50):
        sink.on_decision(obs(i), UNFILED)
    assert alog.pending == 50

    def pipeline_finish() -> None:
        raise RecursionError("a decoder bug while flushing")

    lost = close_dying(0, [pipeline_finish, alog.close], alog)
    assert lost == 0
    assert sorted(r.name for r in query(tmp_path, Query())) == sorted(f"n{i}.example.com" for i in range(50))
