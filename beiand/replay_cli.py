"""``beiand replay``: the daemon's pipeline on capture files. It writes no traffic, ever."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from beiand.capture import CaptureError, CaptureReader
from beiand.cliutil import CliError, inventory_from, load_records, out, policy_from_args, table
from beiand.model import Decision, Observation, VerdictKind
from beiand.net.decoder import Decoder, DecoderConfig
from beiand.pipeline import Pipeline


class JsonLines:
    """Sink: one JSON line per decision on stdout (orjson: ~10x faster than json where it is installed)."""

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout.buffer
        self.write = self.out.write
        self.dumps: Callable[[Any], bytes]
        try:
            import orjson

            self.dumps = orjson.dumps
        except ImportError:  # pragma: no cover - orjson is a dependency
            self.dumps = _json_bytes

    def on_decision(self, obs: Observation, d: Decision) -> None:
        f = d.verdict.filing
        # Enum members serialise as their values (orjson does it natively, json as str subclasses).
        self.write(self.dumps({
            "ts": round(obs.ts, 6), "client": f"{obs.client_ip}:{obs.client_port}", "server": f"{obs.server_ip}:{obs.server_port}",
            "transport": obs.transport, "kind": obs.kind, "name_seen": obs.name_seen, "name": obs.name,
            "answers": obs.answers, "detail": obs.detail, "verdict": d.verdict.verdict, "reason": d.verdict.reason,
            "action": d.action, "rule": d.rule, "mode": d.mode, "account": d.account,
            "filing": f.number if f else None,
        }) + b"\n")

    def flush(self) -> None:
        self.out.flush()


def _json_bytes(o: Any) -> bytes:
    return json.dumps(o, ensure_ascii=False).encode()


_BAD = frozenset({VerdictKind.UNFILED, VerdictKind.MISMATCH, VerdictKind.INACTIVE})


class Summary:
    """Sink: counts by kind and verdict, the top unfiled names."""

    def __init__(self) -> None:
        self.table: Counter[tuple[str, str]] = Counter()
        self.unfiled: Counter[tuple[str, str, str]] = Counter()

    def on_decision(self, obs: Observation, d: Decision) -> None:
        v = d.verdict.verdict
        self.table[(obs.kind, v)] += 1
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


def cmd_replay(args: argparse.Namespace) -> int:
    if args.log_dir:
        from beiand.accesslog import RETENTION_FLOOR_DAYS

        if args.retention_days < RETENTION_FLOOR_DAYS:
            raise CliError(f"--retention-days {args.retention_days}: Order 292 art. 14 (互联网信息服务管理办法 第十四条) "
                           f"requires at least {RETENTION_FLOOR_DAYS} days")
    index = load_records(args.records, quiet=args.json)
    inventory = inventory_from(args.inventory)
    policy = policy_from_args(args, index, inventory)
    decoder = Decoder(DecoderConfig(tcp_ports=args.tcp_ports, udp_ports=args.udp_ports, all_tcp_ports=args.all_ports))
    summary = Summary()
    sinks: list[Any] = [summary]
    if args.json:
        sinks.append(JsonLines())
    alog = None
    if args.log_dir:
        from beiand.accesslog import AccessLog, AccessLogError, AccessLogSink, LogConfig, LogConfigError

        try:
            alog = AccessLog(LogConfig(Path(args.log_dir), gateway=args.gateway or os.uname().nodename,
                                       retention_days=args.retention_days))
        except (LogConfigError, OSError) as exc:
            raise CliError(f"--log-dir {args.log_dir}: {exc}") from None
        sinks.append(AccessLogSink(alog, alog.cfg.gateway))
    pipe = Pipeline(decoder, policy, sinks)
    readers = []
    for path in args.files:
        try:
            readers.append(CaptureReader(path, skip_tcp_from=decoder.tcp_ports))
        except CaptureError as exc:
            raise CliError(str(exc)) from None
    try:
        for r in readers:
            with r:
                try:
                    pipe.run(r)
                except CaptureError as exc:
                    raise CliError(str(exc)) from None
                if r.truncated:
                    sys.stderr.write(f"warning: {r.path}: the file ends inside a packet record (truncated capture)\n")
    finally:
        for r in readers:
            r.close()
        if alog is not None:
            try:
                alog.close()
            except AccessLogError as exc:
                raise CliError(f"access log: {exc}") from None
    report = sys.stderr if args.json else sys.stdout
    if not args.json:
        kinds = sorted({k for k, _ in summary.table})
        verdicts = [v.value for v in VerdictKind if v is not VerdictKind.NOT_HOSTED]
        table([[k, *(summary.table[(k, v)] for v in verdicts)] for k in kinds], ["kind", *verdicts])
        if summary.unfiled:
            out("\ntop names not filed for this provider:")
            table([[f"{n} ({v}: {r})", c] for (n, v, r), c in summary.unfiled.most_common(args.top)],
                  ["name (verdict: reason)", "observations"])
    print(f"\npackets {sum(r.records for r in readers)} ({sum(r.prefiltered for r in readers)} skipped by the capture filter, "
          f"{decoder.packets} decoded), observations {sum(pipe.kinds.values())} into hosted space, "
          f"skipped {dict(pipe.skipped)}", file=report)
    if alog is not None:
        print(f"access log: {alog.stats.written} record(s) written to {args.log_dir} "
              f"(chain head {alog.head.hex()[:16]}…; `beiand logs query --log-dir {args.log_dir}`)", file=report)
    if decoder.drops:
        print("dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(decoder.drops.items())), file=report)
    bad = sum(pipe.verdicts[v] for v in ("unfiled", "mismatch", "inactive"))
    return 1 if bad else 0


def add_parsers(sub: Any, policy_args: Callable[[argparse.ArgumentParser], None]) -> None:
    rp = sub.add_parser("replay", help="run the daemon's pipeline on pcap/pcapng files (sends nothing)")
    rp.add_argument("files", nargs="+", metavar="FILE")
    policy_args(rp)
    rp.add_argument("--json", action="store_true", help="one JSON line per decision")
    rp.add_argument("--tcp-ports", type=_ports, default=DecoderConfig.tcp_ports, metavar="P,P", help="watched TCP ports")
    rp.add_argument("--udp-ports", type=_ports, default=DecoderConfig.udp_ports, metavar="P,P", help="watched UDP ports (QUIC)")
    rp.add_argument("--all-ports", action="store_true", help="recognise TLS/HTTP by content on every TCP port")
    rp.add_argument("--top", type=int, default=20)
    rp.add_argument("--log-dir", metavar="DIR", help="write the access log (Order 292 art. 14) here, as the daemon does")
    rp.add_argument("--gateway", metavar="ID", help="gateway id in the log records (default: the host name)")
    rp.add_argument("--retention-days", type=int, default=60, help="retention of that log (at least 60)")
    rp.set_defaults(func=cmd_replay)
