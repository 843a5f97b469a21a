"""``beiand replay``: the daemon's pipeline on capture files. It writes no traffic, ever."""

from __future__ import annotations

import argparse
import contextlib
import gc
import heapq
import os
import pickle
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from beiand.capture import CaptureError, CaptureReader
from beiand.cli.common import CliError, out, policy_setup, table
from beiand.model import Decision, Observation, Outcome, VerdictKind
from beiand.net.decoder import Decoder, DecoderConfig
from beiand.policy import Decider, Policy
from beiand.runtime.pipeline import Pipeline
from beiand.sinks.jsonlines import JsonLines, line_ts

AUTO_WORKERS_BYTES = 64 << 20  # from this much capture on, replay uses one worker per core


_BAD = frozenset({VerdictKind.UNFILED, VerdictKind.MISMATCH, VerdictKind.INACTIVE})


class Summary:
    """Sink: the top names not filed for this provider (the counts by kind and verdict are the
    pipeline's: ``Pipeline.decisions``, the daemon's one decision counter)."""

    def __init__(self) -> None:
        self.unfiled: Counter[tuple[str, str, str]] = Counter()

    def on_decision(self, obs: Observation, d: Decision, outcome: Outcome = Outcome.NONE) -> None:
        v = d.verdict.verdict
        if v in _BAD:
            self.unfiled[(obs.name or obs.server_ip, v, d.verdict.reason)] += 1

    def flush(self) -> None:
        pass


def _ports(text: str) -> frozenset[int]:
    try:
        ports = frozenset(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of port numbers") from None
    if not ports or any(not 0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"{text!r}: ports must be 1..65535")
    return ports


@dataclass
class ReplayResult:
    """What one replay (or one worker's shard of it) found; shards add up."""

    decisions: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # by (kind, verdict, action)
    unfiled: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    connections: Counter[str] = field(default_factory=Counter)
    records: int = 0  # every record of the files (each shard reads them all: counted by shard 0)
    prefiltered: int = 0
    decoded: int = 0
    truncated: list[str] = field(default_factory=list)
    log_written: int = 0
    log_heads: list[str] = field(default_factory=list)

    def table(self) -> Counter[tuple[str, str]]:
        """Decisions by (kind, verdict)."""
        out: Counter[tuple[str, str]] = Counter()
        for (kind, verdict, _), n in self.decisions.items():
            out[(kind, verdict)] += n
        return out

    def add(self, other: ReplayResult) -> None:
        self.decisions.update(other.decisions)
        self.unfiled.update(other.unfiled)
        for mine, theirs in ((self.skipped, other.skipped), (self.drops, other.drops), (self.connections, other.connections)):
            mine.update(theirs)
        self.records += other.records
        self.prefiltered += other.prefiltered
        self.decoded += other.decoded
        self.truncated += other.truncated
        self.log_written += other.log_written
        self.log_heads += other.log_heads


def _replay(args: argparse.Namespace, policy: Policy | Decider, shard: tuple[int, int], json_out: BinaryIO | None) -> ReplayResult:
    """decode → decide → sinks over the files, for the flows of one shard (all of them when n is 1)."""
    decoder = Decoder(DecoderConfig(tcp_ports=args.tcp_ports, udp_ports=args.udp_ports, any_port=not args.watched_ports_only,
                                    conns=args.connections, conn_attempts=args.attempts, url_query=args.url_query))
    summary = Summary()
    sinks: list[Any] = [summary]
    if json_out is not None:
        # connection records come up to a window plus the name wait late (net/conns.py): written in time
        # order, held back in bounded memory (the rest of the window on disk: sinks/jsonlines.py)
        cfg = decoder.config
        sinks.append(JsonLines(json_out, reorder=cfg.conn_window + cfg.flow_timeout + 2.0 if cfg.conns else 0.0))
    alog = None
    if args.log_dir:
        from beiand.accesslog import AccessLog, LogConfig, LogConfigError
        from beiand.sinks.accesslog import AccessLogSink

        try:  # one partition chain per worker, as in the daemon
            alog = AccessLog(LogConfig(Path(args.log_dir), worker=shard[0], gateway=args.gateway or os.uname().nodename,
                                       retention_days=args.retention_days))
        except (LogConfigError, OSError) as exc:
            raise CliError(f"--log-dir {args.log_dir}: {exc}") from None
        version = getattr(args, "register_version", 0)  # --at: the register version, as the daemon's records carry it
        sinks.append(AccessLogSink(alog, alog.cfg.gateway, records_version=str(version) if version else ""))
    pipe = Pipeline(decoder, policy, sinks, gateway=alog.cfg.gateway if alog is not None else (args.gateway or ""))
    readers = []
    result = ReplayResult()
    # What the set-up built (the records index, the policy) is never garbage: the collector leaves it
    # alone (frozen), and runs on young objects a hundred times less often. A frame's objects die by
    # reference count; the collector walked the held-back JSON lines and the flow tables (issue 33).
    gc.freeze()
    threshold = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    try:
        for path in args.files:
            try:
                readers.append(CaptureReader(path, skip_tcp_from=decoder.tcp_ports, shard=shard))
            except CaptureError as exc:
                raise CliError(str(exc)) from None
        for r in readers:
            with r:
                try:
                    pipe.run(r)
                except CaptureError as exc:
                    raise CliError(str(exc)) from None
                if r.truncated and shard[0] == 0:
                    result.truncated.append(str(r.path))
    finally:
        gc.set_threshold(*threshold)
        for r in readers:
            r.close()
        if alog is not None:
            from beiand.accesslog import AccessLogError

            try:
                alog.close()
            except AccessLogError as exc:
                raise CliError(f"access log: {exc}") from None
    result.decisions, result.unfiled, result.skipped = pipe.decisions, summary.unfiled, pipe.skipped
    result.drops = decoder.drops
    result.connections = pipe.connections
    result.records = sum(r.records for r in readers) if shard[0] == 0 else 0
    result.prefiltered = sum(r.prefiltered for r in readers)
    result.decoded = decoder.packets
    if alog is not None:
        result.log_written = alog.stats.written
        result.log_heads = [f"w{shard[0]} {alog.head.hex()[:16]}…"]
    return result


def _workers(args: argparse.Namespace) -> int:
    if args.workers:
        return int(args.workers)
    size = 0
    for path in args.files:
        try:
            size += os.path.getsize(path)
        except OSError:
            pass  # the reader says what is wrong with it
    return max(1, len(os.sched_getaffinity(0))) if size >= AUTO_WORKERS_BYTES else 1


def _sharded(args: argparse.Namespace, policy: Policy | Decider, n: int) -> ReplayResult:
    """n forked workers, each reading the files and taking the flows of its shard.

    Every packet of a flow goes to the same worker (CaptureReader's ``shard``), so each flow is
    decoded exactly as in one process. JSON lines are merged back in time order.
    """
    for path in args.files:  # say what is wrong with a file once, before any worker starts
        try:
            CaptureReader(path).close()
        except CaptureError as exc:
            raise CliError(str(exc)) from None
    tmp = tempfile.TemporaryDirectory(prefix="beiand-replay-")
    outs = [Path(tmp.name) / f"w{k}.jsonl" for k in range(n)]
    sys.stdout.flush()
    sys.stderr.flush()
    children: list[tuple[int, int]] = []  # forked and not yet reaped
    try:
        for k in range(n):
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which never returns
                os.close(rfd)
                _worker(args, policy, (k, n), outs[k] if args.json else None, wfd)
            os.close(wfd)
            children.append((pid, rfd))
        total = ReplayResult()
        errors: list[str] = []
        for k in range(n):
            pid, rfd = children[0]
            with os.fdopen(rfd, "rb", closefd=False) as f:
                data = f.read()
            _, status = os.waitpid(pid, 0)
            os.close(rfd)
            children.pop(0)
            if not data:
                errors.append(f"replay worker {k} died (wait status {status})")
                continue
            kind, payload = pickle.loads(data)
            if kind == "ok":
                total.add(payload)
            else:
                errors.append(payload)
        if errors:
            raise CliError(errors[0])
        if args.json:
            files = [p.open("rb") for p in outs]
            try:
                sys.stdout.buffer.writelines(heapq.merge(*files, key=line_ts))
            finally:
                for f in files:
                    f.close()
        return total
    finally:
        for pid, rfd in children:  # Ctrl-C or an error in the parent: stop the workers
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
            os.close(rfd)
        tmp.cleanup()


def _worker(args: argparse.Namespace, policy: Policy | Decider, shard: tuple[int, int], out_path: Path | None, wfd: int) -> NoReturn:
    """A forked replay worker: its shard, then the result pickled to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    # Not in the parent: freezing is O(1) and keeps this process's collector from writing to the
    # records index it shares with the parent, copy-on-write.
    gc.freeze()
    msg: tuple[str, Any]
    try:
        with open(out_path, "wb") if out_path else contextlib.nullcontext() as out:
            msg = ("ok", _replay(args, policy, shard, out))
    except CliError as exc:
        msg = ("error", str(exc))
    except BaseException as exc:  # reported by the parent, whatever it is
        msg = ("error", f"replay worker {shard[0]}: {type(exc).__name__}: {exc}")
    try:
        data = memoryview(pickle.dumps(msg))
        while data:
            data = data[os.write(wfd, data):]
    finally:
        os._exit(0)


def cmd_replay(args: argparse.Namespace) -> int:
    if args.log_dir:
        from beiand.accesslog import RETENTION_FLOOR_DAYS

        if args.retention_days < RETENTION_FLOOR_DAYS:
            raise CliError(f"--retention-days {args.retention_days}: Order 292 art. 14 (互联网信息服务管理办法 第十四条) "
                           f"requires at least {RETENTION_FLOOR_DAYS} days")
    if args.workers is not None and not 1 <= args.workers <= 64:
        raise CliError(f"--workers {args.workers}: expected 1..64")
    if args.at is not None:  # the register's records and inventory in force then (the decision store)
        from beiand.cli.records import at_seconds

        args.register_at = at_seconds(args.at)
    setup = policy_setup(args, quiet=args.json)
    args.register_version = setup.register_version
    policy = setup.decider or setup.policy  # the daemon's overlays from the state directory, at each packet's time
    n = _workers(args)
    res = _replay(args, policy, (0, 1), sys.stdout.buffer if args.json else None) if n == 1 else _sharded(args, policy, n)
    for path in res.truncated:
        sys.stderr.write(f"warning: {path}: the file ends inside a packet record (truncated capture)\n")
    report = sys.stderr if args.json else sys.stdout
    by_kind = res.table()
    if not args.json:
        kinds = sorted({k for k, _ in by_kind})
        verdicts = [v.value for v in VerdictKind if v is not VerdictKind.NOT_HOSTED]
        table([[k, *(by_kind[(k, v)] for v in verdicts)] for k in kinds], ["kind", *verdicts])
        if res.unfiled:
            out("\ntop names not filed for this provider:")
            table([[f"{n} ({v}: {r})", c] for (n, v, r), c in res.unfiled.most_common(args.top)],
                  ["name (verdict: reason)", "observations"])
    print(f"\npackets {res.records} ({res.prefiltered} skipped by the capture filter, "
          f"{res.decoded} decoded{f' by {n} workers' if n > 1 else ''}), observations {res.decisions.total()} "
          f"into hosted space, skipped {dict(res.skipped)}", file=report)
    if args.connections:
        print(f"connection records (flows no name came for, and hosted hosts' flows out): "
              f"in {res.connections['in']}, out {res.connections['out']}", file=report)
    if args.log_dir:
        print(f"access log: {res.log_written} record(s) written to {args.log_dir} "
              f"(chain head{'s' if n > 1 else ''} {', '.join(res.log_heads)}; `beiand logs query --log-dir {args.log_dir}`)",
              file=report)
    if res.drops:
        print("dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(res.drops.items())), file=report)
    bad = sum(n for (_, v, _), n in res.decisions.items() if v in _BAD)
    return 1 if bad else 0


def add_parsers(sub: Any, policy_args: Callable[[argparse.ArgumentParser], None]) -> None:
    rp = sub.add_parser("replay", help="run the daemon's pipeline on pcap/pcapng files (sends nothing)")
    rp.add_argument("files", nargs="+", metavar="FILE")
    policy_args(rp)
    rp.add_argument("--json", action="store_true", help="one JSON line per decision")
    rp.add_argument("--at", metavar="TIME", help="judge with the records and inventory in force at this time, from the "
                    "decision store's register (2026-11-20T08:00+08:00 or epoch seconds; orders and commands are always "
                    "those in force at each packet's time)")
    rp.add_argument("--tcp-ports", type=_ports, default=DecoderConfig.tcp_ports, metavar="P,P", help="watched TCP ports")
    rp.add_argument("--udp-ports", type=_ports, default=DecoderConfig.udp_ports, metavar="P,P", help="watched UDP ports (QUIC)")
    rp.add_argument("--watched-ports-only", action="store_true",
                    help="name flows on the watched ports only (by default a ClientHello, a request head and a QUIC Initial "
                         "are recognised by their first bytes on any port, as the daemon does)")
    rp.add_argument("--all-ports", action="store_true", help=argparse.SUPPRESS)  # the default since issue 32
    rp.add_argument("--workers", type=int, metavar="N",
                    help="worker processes, each taking a share of the flows (default: one per core for captures "
                         "of 64 MiB or more, else 1)")
    rp.add_argument("--no-connections", dest="connections", action="store_false",
                    help="no connection records (issue 19): only named flows and DNS answers, as before")
    rp.add_argument("--attempts", choices=("summarise", "each"), default="summarise",
                    help="TCP flows never answered (a port scan's SYNs): one record per server address and window "
                         "counting them (summarise, the default, as [connections] attempts), or a record each")
    rp.add_argument("--url-query", action="store_true", help="keep HTTP query strings in the records' URLs (personal data)")
    rp.add_argument("--top", type=int, default=20)
    rp.add_argument("--log-dir", metavar="DIR", help="write the access log (Order 292 art. 14) here, as the daemon does")
    rp.add_argument("--gateway", metavar="ID", help="gateway id in the log records (default: the host name)")
    # accesslog.store.RETENTION_DEFAULT_DAYS (not imported here: the log is only loaded when used).
    rp.add_argument("--retention-days", type=int, default=184,
                    help="retention of that log (default 184: six calendar months; at least 60)")
    rp.set_defaults(func=cmd_replay)
