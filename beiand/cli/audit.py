"""``beiand audit``: what on my network is out of line, and why, in one run.

Exit codes for automation: 0 clean, 1 findings, 2 could not run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beiand.accesslog.source import LocalRecords
from beiand.cli.common import CliError, err, out, policy_setup, table
from beiand.cli.logs import DEFAULT_CONFIG, parse_time, records_source, store_options, unreachable
from beiand.model import Decision, MetricValues, Observation, Outcome
from beiand.policy import Decider, Policy
from beiand.records.index import entry_addresses

if TYPE_CHECKING:
    from beiand.report.audit.active import ProbeSettings
    from beiand.runtime.settings import Config


class _Collect:
    """Sink: the same summary the sealed log partitions carry, from a capture."""

    def __init__(self) -> None:
        self.summary: dict[tuple[str, str, int, str, str, str, str, str, str], list[int]] = {}

    def on_decision(self, obs: Observation, d: Decision, outcome: Outcome = Outcome.NONE) -> None:
        f = d.verdict.filing
        k = (obs.name, obs.server_ip, obs.server_port, d.account, str(d.verdict.verdict), str(obs.kind), str(d.action),
             d.verdict.reason, f.number if f else "")
        ts = int(obs.ts * 1000)
        row = self.summary.get(k)
        if row is None:
            self.summary[k] = [ts, ts, 1]
        else:
            row[0], row[1], row[2] = min(row[0], ts), max(row[1], ts), row[2] + 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def metrics(self) -> MetricValues:
        return {}  # an audit run exports no metrics


def _setup(args: argparse.Namespace) -> tuple[Any, Policy, Any, str, Decider | None, Config | None]:
    # The audit judges with the daemon's policy (allowlists, grace, providers, status map):
    # it must not report names the daemon exempts (issue 13: one answer everywhere).
    setup = policy_setup(args, quiet=True)
    cfg = setup.config
    gateway = cfg.gateway if cfg else os.uname().nodename
    return setup.index, setup.policy, setup.inventory, gateway, setup.decider, cfg


def _authority_names(entries: list[tuple[int, str]]) -> set[str]:
    from beiand.records.domains import DomainError, is_ip_literal, normalise_domain

    out = set()
    for _, entry in entries:
        if not is_ip_literal(entry.strip("[]")):
            try:
                out.add(normalise_domain(entry))
            except DomainError:
                continue  # reported with its line by _authority
    return out


def _authority_entries(path: str) -> list[tuple[int, str]]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--authority-list {path}: {exc}") from None
    entries: list[tuple[int, str]] = []
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise CliError(f"{path}: not JSON: {exc}") from None
        items = data if isinstance(data, list) else data.get("sites", [])
        for i, it in enumerate(items, 1):
            v = it if isinstance(it, str) else (it.get("domain") or it.get("name") or it.get("域名") or it.get("ip") or it.get("IP"))
            if not v:
                raise CliError(f"{path}: entry {i}: no domain/name/ip")
            entries.append((i, str(v)))
    else:
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            raise CliError(f"{path}: empty")
        head = [h.strip().lower() for h in rows[0]]
        col = next((head.index(h) for h in ("domain", "name", "域名", "网站域名", "ip", "ip地址") if h in head), None)
        if col is None:
            raise CliError(f"{path}:1: no column named domain, name, 域名, 网站域名 or ip")
        entries = [(n, r[col].strip()) for n, r in enumerate(rows[1:], 2) if len(r) > col and r[col].strip()]
    return entries


def _authority(path: str, entries: list[tuple[int, str]], policy: Policy, inventory: Any, summary: dict[Any, list[int]],
               resolved: dict[str, list[str]]) -> list[dict[str, Any]]:
    from beiand.records.domains import DomainError, is_ip_literal, normalise_domain
    from beiand.records.importer import canonical_ip

    seen: dict[str, list[tuple[Any, list[int]]]] = {}
    for k, v in summary.items():
        seen.setdefault(k[0], []).append((k, v))
        seen.setdefault(k[1], []).append((k, v))
    out_rows = []
    for line, entry in entries:
        if is_ip_literal(entry.strip("[]")):
            ip = canonical_ip(entry)
            if ip is None:
                raise CliError(f"{path}:{line}: {entry!r} is not an IP address")
            name, servers = "", [ip]
        else:
            try:
                name = normalise_domain(entry)
            except DomainError as exc:
                raise CliError(f"{path}:{line}: {entry!r}: {exc.reason}") from None
            servers = sorted({k[1] for k, _ in seen.get(name, [])} | set(resolved.get(name, [])))
        hosted = [s for s in servers if inventory.lookup(s) is not None]
        row: dict[str, Any] = {"entry": entry, "hosted": bool(hosted), "servers": hosted, "verdict": None, "account": None,
                               "done": "not seen in the window"}
        if hosted:
            pre = inventory.lookup(hosted[0])
            d = policy.judge(name, hosted[0], time.time(), pre)
            row.update(verdict=str(d.verdict.verdict), account=pre.account if pre else "")
        hits = seen.get(name or servers[0], [])
        if hits:
            blocked = sum(v[2] for k, v in hits if k[6] == "block")
            total = sum(v[2] for _, v in hits)
            row["done"] = f"blocked {blocked} of {total} connection(s)" if blocked else f"seen {total} time(s), not blocked"
        out_rows.append(row)
    return out_rows


def cmd_audit(args: argparse.Namespace) -> int:
    index, policy, inventory, gateway, decider, cfg = _setup(args)
    now = time.time()
    since = parse_time(args.since, "--since", now)
    until = parse_time(args.until, "--until", now) if args.until else int((now + 86400) * 1000)
    if args.pcap:
        from beiand.capture import CaptureError, CaptureReader
        from beiand.net.decoder import Decoder
        from beiand.runtime.pipeline import Pipeline

        col = _Collect()
        pipe = Pipeline(Decoder(), decider or policy, [col])  # the daemon's overlays, at each packet's time
        for path in args.pcap:
            try:
                with CaptureReader(path) as r:
                    pipe.run(r)
            except CaptureError as exc:
                raise CliError(str(exc)) from None
        summary = col.summary
        source = "capture " + ", ".join(args.pcap)
        window = "the whole capture"
    else:
        from beiand.sinks.clickhouse import ClickHouseError

        src = records_source(args, cfg, "no access log: give --log-dir, --pcap, or a config with accesslog.directory")
        try:
            summary = src.summaries(since, until)
        except ClickHouseError as exc:
            raise CliError(unreachable(exc)) from None
        source = src.where
        window = f"{args.since} back" if not args.until else f"{args.since} .. {args.until}"
        if not summary and isinstance(src, LocalRecords):
            _explain_empty_window(src.directory, args)
    listed = _authority_entries(args.authority_list) if args.authority_list else []
    from beiand.report.audit import findings as passive_findings
    from beiand.report.audit import resources

    found = passive_findings(summary, index, inventory, policy.is_ours if policy.provider_checked else None)
    res = resources(summary)
    resolved: dict[str, list[str]] = {}
    probe_meta: dict[str, Any] = {}
    if args.probe:
        names = {d for f in index.filings if (not policy.provider_checked or policy.is_ours(f.access_provider))
                 for d in f.domains if "*" not in d}
        names |= {k[0] for k in summary if k[0]}
        if args.names:
            names |= {n.strip().lower() for n in Path(args.names).read_text().split() if n.strip()}
        if args.authority_list:  # where do the sites the authority listed resolve now?
            names |= _authority_names(listed)
        ips = {k[1] for k in summary if inventory.lookup(k[1]) is not None}
        ips |= {ip for f in index.filings for e in f.ips for ip in entry_addresses(e) if inventory.lookup(ip) is not None}
        from beiand.report.audit.active import ProbeSettings  # aiohttp, dnspython, aioquic: only when probing

        settings = ProbeSettings(resolver=args.resolver, concurrency=args.concurrency, per_host=args.per_host, timeout=args.timeout,
)
        t0 = time.perf_counter()
        found += _probe(index, inventory, policy, settings, names, ips, resolved, probe_meta, quiet=args.quiet)
        probe_meta["seconds"] = round(time.perf_counter() - t0, 2)
    authority = _authority(args.authority_list, listed, policy, inventory, summary, resolved) if args.authority_list else []
    for a in authority:
        if a["hosted"] and not a["done"].startswith("blocked"):
            from beiand.report.audit.findings import Finding

            found.append(Finding("authority-listed-hosted", a["entry"], f"{a['verdict']}: {a['done']}", account=a["account"] or "",
                                 server=", ".join(a["servers"])))
    from beiand.report.audit.report import build

    rep = build(found, res, {"gateway": gateway, "window": window, "source": source, "probe": probe_meta}, authority)
    _emit(rep, args)
    if args.open_cases:  # issue 31: the findings become sponsor cases in the decision store
        from beiand.cli.cases import open_from_findings

        opened, left = open_from_findings(args, found)
        err(f"audit: {len(opened)} case(s) opened" + (f": {', '.join(opened[:10])}" if opened else "")
            + (f"; {len(left)} finding(s) left out" if left else ""))
        for why in left[:20]:
            err(f"  {why}")
    return 1 if rep["findings"] else 0


def _explain_empty_window(log_dir: Path, args: argparse.Namespace) -> None:
    """An older log gives "0 services seen" in the default window: say so, and how to widen it."""
    from beiand.accesslog.reader import stats

    held = stats(log_dir)
    if not held.records:
        return
    day = time.strftime("%Y-%m-%d", time.localtime(held.oldest_ms / 1000))
    last = time.strftime("%Y-%m-%d", time.localtime(held.newest_ms / 1000))
    until = f" --until {args.until}" if args.until else ""
    err(f"note: nothing in the window (--since {args.since}{until}): the log holds {held.records} record(s) from {day} to {last}, "
        f"outside the window; widen it, e.g. --since {day}")


def _probe(index: Any, inventory: Any, policy: Policy, settings: ProbeSettings, names: set[str], ips: set[str],
           resolved: dict[str, list[str]], meta: dict[str, Any], quiet: bool) -> list[Any]:
    import asyncio
    import resource

    from beiand.report.audit.active import Prober

    total = len(names) * 2 + len(ips) + len(names)
    if quiet or not sys.stderr.isatty():
        prober = Prober(index, inventory, policy, settings)
        got = asyncio.run(prober.run(names, ips))
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("probing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True) as prog:
            task = prog.add_task("probe", total=total)
            prober = Prober(index, inventory, policy, settings, progress=lambda n: prog.advance(task, n))
            got = asyncio.run(prober.run(names, ips))
    resolved.update(prober.resolved)
    st = prober.stats
    meta.update(names=len(names), ips=len(ips), dns_queries=st.dns, tls_handshakes=st.tls, http_fetches=st.http, errors=st.errors,
                peak_concurrency=st.peak_tasks, peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    return got


def _emit(rep: dict[str, Any], args: argparse.Namespace) -> None:
    from beiand.report.audit.report import to_csv, to_html

    if args.report_dir:
        d = Path(args.report_dir)
        d.mkdir(parents=True, exist_ok=True, mode=0o750)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for ext, text in (("html", to_html(rep)), ("json", json.dumps(rep, ensure_ascii=False, indent=1))):
            (d / f"report-{stamp}.{ext}").write_text(text, encoding="utf-8")
            tmp = d / f"latest.{ext}.tmp"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, d / f"latest.{ext}")
        old = sorted(d.glob("report-*.html"))
        for p in old[: max(0, len(old) - args.keep)]:
            p.unlink()
            p.with_suffix(".json").unlink(missing_ok=True)
        out(f"audit: {rep['summary']['findings']} finding(s); report {d / f'report-{stamp}.html'}")
        return
    if args.format == "json":
        text = json.dumps(rep, ensure_ascii=False, indent=1)
    elif args.format == "csv":
        text = to_csv(rep)
    elif args.format == "html":
        text = to_html(rep)
    else:
        s = rep["summary"]
        rows = [[f["severity"], f["kind"], f["subject"], f["detail"][:60], f["account"] or "-", f["rule"].split(" ")[0]]
                for f in rep["findings"]]
        if args.out:
            raise CliError("--out needs --format json, csv or html")
        table(rows, ["severity", "kind", "subject", "detail", "account", "rule"])
        out(f"\n{s['findings']} finding(s): {s['high']} high, {s['medium']} medium, {s['low']} low; "
            f"{s['resources']} service(s) seen in hosted space, {s['unfiled_resources']} unfiled")
        if rep.get("probe"):
            out(f"probe: {rep['probe']}")
        return
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        err(f"audit: {rep['summary']['findings']} finding(s) written to {args.out}")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def add_parsers(sub: Any) -> None:
    ap = sub.add_parser("audit", help="scan for unfiled and mismatched services (passive, and --probe active); exit 1 on findings")
    ap.add_argument("--config", metavar="FILE", help=f"(default {DEFAULT_CONFIG} when no --records)")
    ap.add_argument("--records", action="append", metavar="FILE")
    ap.add_argument("--inventory", metavar="FILE")
    ap.add_argument("--provider", action="append", metavar="NAME",
                    help="this provider as filings spell their 接入商; repeat for each legal entity (default: records.provider)")
    ap.add_argument("--status-map", action="append", metavar="WORD=STATUS", help="a status word of the export mapped to a status")
    ap.add_argument("--log-dir", metavar="DIR", help="this gateway's log (default: the fleet's copy in ClickHouse when "
                    "[accesslog.clickhouse] url is configured, else accesslog.directory)")
    store_options(ap)
    ap.add_argument("--since", default="7d", metavar="TIME", help="window start (default 7d)")
    ap.add_argument("--until", metavar="TIME")
    ap.add_argument("--pcap", action="append", metavar="FILE", help="audit a capture instead of the log")
    ap.add_argument("--probe", action="store_true", help="active checks: DNS, TLS certificates, homepages, APP domains")
    ap.add_argument("--resolver", default="127.0.0.1:53", metavar="IP[:PORT]")
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--per-host", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--names", metavar="FILE", help="more names to probe, one per line")
    ap.add_argument("--authority-list", metavar="FILE", help="unfiled sites sent by the authority (CSV or JSON)")
    ap.add_argument("--format", choices=["table", "json", "csv", "html"], default="table")
    ap.add_argument("--out", metavar="FILE")
    ap.add_argument("--report-dir", metavar="DIR", help="write report-<time>.{html,json} and latest.{html,json} here")
    ap.add_argument("--keep", type=int, default=90, help="reports kept in --report-dir")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--open-cases", action="store_true", help="open a sponsor case (beiand cases) per finding about a hosted "
                    "site: unfiled, mismatch, cancelled, resolving away, no 备案号, the authority's list")
    ap.add_argument("--state-dir", metavar="DIR", help="with --open-cases: the SQLite decision store in DIR")
    ap.add_argument("--store", metavar="URL", help="with --open-cases: the decision store (default: store.url of the config)")
    ap.add_argument("--by", metavar="WHO", help="with --open-cases: who opens them (default: the login)")
    ap.set_defaults(func=cmd_audit)
