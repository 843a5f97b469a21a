"""``beiand records check|lookup|holder|check-access|ip-report|authority``: validate filing exports,
the verdict for names or IPs, which account held a hosted address at a past time (the inventory
history), the check before access is opened (接入前核验, 501号 art. 11(三)1), the IP地址备案 report
(501号 art. 19) and the authority's lists of unfiled sites (``cli/authority.py``)."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from beiand.cli import authority
from beiand.cli.common import (
    DEFAULT_CONFIG,
    CliError,
    csv_text,
    err,
    out,
    parse_status_map,
    policy_args,
    policy_setup,
    sheet_append,
    table,
)
from beiand.policy import lookup_answer
from beiand.records import ImportRefused, load_files, normalise_domain
from beiand.records.domains import DomainError, is_ip_literal, registrable_domain
from beiand.records.importer import canonical_ip
from beiand.records.index import RecordIndex

if TYPE_CHECKING:
    from beiand.report.ipreport import IpReport


def cmd_records_check(args: argparse.Namespace) -> int:
    try:
        result = load_files(args.files, strict=False, status_map=parse_status_map(args.status_map))
    except ImportRefused as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    index = RecordIndex(result.filings)
    counts = index.counts()
    st = index.stats()
    if args.json:
        out(json.dumps({
            "files": result.files, "rows": result.rows, "filings": st.filings, "domains": st.domains, "ips": st.ips,
            "ip_ranges": st.ip_ranges, "unmapped_status": index.unmapped,
            "errors": [str(e) for e in result.errors], "warnings": [str(w) for w in result.warnings],
            **{k: dict(v) for k, v in counts.items()},
        }, ensure_ascii=False, indent=2))
    else:
        out(f"{', '.join(result.files)}: {result.rows} rows, {st.filings} filings (备案), {st.domains} domains, {st.ips} IPs, "
             f"{len(result.errors)} rejected, {len(result.warnings)} warnings")
        for title, key in (("service type (服务类型)", "service_type"), ("status (状态)", "status"), ("province (省份)", "province")):
            out(f"\nby {title}:")
            by_key: Counter[str] = counts[key]
            table([[k, c] for k, c in sorted(by_key.items(), key=lambda kv: (-kv[1], kv[0]))], [key, "filings"])
        if index.unmapped:
            out(f"\n{index.unmapped} filing(s) with a status word nobody mapped: kept in force (never blocked for it); "
                "map the word with records.status_map or --status-map WORD=STATUS")
        if result.warnings:
            out(f"\nwarnings ({len(result.warnings)}):")
            for w in result.warnings[: args.max_warnings]:
                out(f"  {w}")
            if len(result.warnings) > args.max_warnings:
                out(f"  … {len(result.warnings) - args.max_warnings} more (--max-warnings)")
        if result.errors:
            out(f"\nrejected rows ({len(result.errors)}):")
            for e in result.errors:
                out(f"  {e}")
    if not result.filings:
        err("error: no valid filing: such a file would be refused by the daemon (exit status 1)")
        return 1
    if result.errors:
        err(f"exit status 1: {len(result.errors)} rejected row(s), listed above; the daemon skips them and loads the rest "
            "(records.strict = true refuses the whole file)")
        return 1
    return 0


def at_seconds(text: str) -> float:
    """``--at``: epoch seconds, or a time as ``logs query`` reads it."""
    from beiand.cli.logs import parse_time

    try:
        return float(text)
    except ValueError:
        return parse_time(text, "--at") / 1000


def cmd_records_lookup(args: argparse.Namespace) -> int:
    ts = time.time() if args.at is None else at_seconds(args.at)
    server_ip = ""
    if args.server is not None:
        server_ip = canonical_ip(args.server) or ""
        if not server_ip:
            raise CliError(f"--server {args.server!r} is not an IP address")
    if args.at is not None:  # the register's records in force then, where the decision store keeps them
        names, ips = [], []
        for q in args.query:
            if is_ip_literal(q.strip("[]")):
                ips.append(canonical_ip(q) or "")
            else:
                try:
                    names.append(normalise_domain(q))
                except DomainError:
                    pass
        args.register_at = ts
        args.register_query = (names, [*ips, server_ip])
    setup = policy_setup(args, quiet=args.json)
    policy = setup.policy
    results: list[dict[str, Any]] = []
    for q in args.query:
        if is_ip_literal(q.strip("[]")):
            ip = canonical_ip(q)
            if ip is None:
                raise CliError(f"{q}: not an IP address")
            name, server = "", ip
        else:
            try:
                name = normalise_domain(q)
            except DomainError as exc:
                raise CliError(f"{q}: {exc.reason}") from None
            server = server_ip
        # the same function answers /api/v1/lookup on the daemon (issue 13: one answer everywhere)
        r = lookup_answer(setup.decider or policy, name, server, ts, no_inventory_means_hosted=not setup.inventory_given)
        results.append({"query": q, "registrable_domain": registrable_domain(name) if name else None, **r})
    if args.json:
        for r in results:
            out(json.dumps(r, ensure_ascii=False))
    else:
        table([[r["query"], r["verdict"], r["reason"], r["action"], (r["filing"] or {}).get("number", "-"),
                 (r["filing"] or {}).get("sponsor", "-"), (r["filing"] or {}).get("access_provider", "-") or "-",
                 r["account"] or "-"] for r in results],
               ["query", "verdict", "reason", "action", "filing no. (备案号)", "sponsor (主办单位)", "接入商", "account"])
        if not policy.provider_checked:
            out("note: 接入商 (access provider) not checked: give --provider (or records.provider in the config)")
        for note in sorted({r["assumed"] for r in results if r["assumed"]}):
            out(f"note: {note}")
    return 1 if any(r["verdict"] in ("unfiled", "mismatch", "inactive") for r in results) else 0


def cmd_records_holder(args: argparse.Namespace) -> int:
    """The account that held an address at a time, from the inventory history (and the NAT
    mappings valid then, when configured)."""
    import ipaddress
    from pathlib import Path

    from beiand.cli.logs import DEFAULT_CONFIG, config_from, fmt_time, parse_time
    from beiand.policy.history import HistoryError, Holders, history_dir
    from beiand.policy.nat import NatError, load_nat

    try:
        ip = str(ipaddress.ip_address(args.ip.strip("[]")))
    except ValueError:
        raise CliError(f"IP {args.ip!r}: not an IP address") from None
    ts = parse_time(args.at, "--at") if args.at else int(time.time() * 1000)
    cfg = config_from(args) if not args.state_dir or not args.nat else None
    sdir = Path(args.state_dir) if args.state_dir else (cfg.daemon.state_dir if cfg is not None else None)
    if sdir is None:
        raise CliError(f"--state-dir: not given, and no config at {args.config or DEFAULT_CONFIG} to take daemon.state_dir from")
    held = _held_in_register(cfg, sdir, bool(args.state_dir), ip, ts)  # the register's inventory then (issue 35)
    if held is None:
        if not history_dir(sdir).is_dir():
            raise CliError(f"--state-dir {sdir}: no inventory history ({history_dir(sdir)}) and no inventory in the "
                           "decision store's register: the daemon records one at every load")
        try:
            held = Holders(sdir).at(ip, ts)
        except HistoryError as exc:
            raise CliError(str(exc)) from None
    nat_path = args.nat or (str(cfg.inventory.nat_file) if cfg is not None and cfg.inventory.nat_file else "")
    mappings = []
    if nat_path:
        try:
            mappings = load_nat(nat_path).at(ip, ts)
        except NatError as exc:
            raise CliError(f"--nat {nat_path}: " + "; ".join(exc.problems)) from None
    info = {"ip": ip, "at": fmt_time(ts), "account": held.account or None, "prefix": held.prefix.prefix if held.prefix else None,
            "site": held.prefix.site if held.prefix else None, "state": held.prefix.state.value if held.prefix else None,
            "inventory_loaded": fmt_time(held.loaded_ms) if held.loaded_ms else None, "inventory": held.source or None,
            "nat": [{"public": f"{m.public_ip}:{m.port_lo}-{m.port_hi}", "internal": m.internal_ip, "account": m.account,
                     "source": m.source} for m in mappings]}
    if args.json:
        out(json.dumps(info, ensure_ascii=False, indent=2))
    else:
        table([[k, v if not isinstance(v, list) else "; ".join(f"{x['public']} ↔ {x['internal']} ({x['account']})" for x in v) or "-"]
               for k, v in info.items()], ["", "value"])
        if not held.loaded_ms:
            out("note: the time is before the first recorded inventory load: the holder then is not known here")
    return 0 if held.account or mappings else 1


def cmd_records_check_access(args: argparse.Namespace) -> int:
    """接入前核验 (501号 art. 11(三)1): exit 0 access may be opened, 1 it may not (each failed condition
    named with its article), 2 the check could not be made."""
    from beiand.policy.precheck import AccessCheck, AccessChecker, BatchError, CheckError, parse_request, read_batch

    if args.batch and (args.filing or args.ip or args.name):
        raise CliError("--batch FILE or --filing/--ip/--name, not both")
    if not args.batch and not args.filing:
        raise CliError("give --filing NUMBER (with --ip and/or --name), or --batch FILE")
    checks: list[tuple[str, Any]] = []
    try:
        if args.batch:
            checks = list(read_batch(args.batch))
        else:
            checks = [("", parse_request(args.filing, args.ip or [], args.name or []))]
    except BatchError as exc:
        raise CliError("; ".join(exc.problems)) from None
    except CheckError as exc:
        raise CliError(str(exc)) from None
    setup = policy_setup(args, quiet=args.json)
    try:
        checker = AccessChecker(setup.policy)
    except CheckError as exc:
        raise CliError(str(exc)) from None
    ts = time.time() if args.at is None else args.at
    results: list[tuple[str, AccessCheck | CheckError]] = [
        (where, checker.check(req, ts) if not isinstance(req, CheckError) else req) for where, req in checks]
    if args.json:
        for where, r in results:
            row: dict[str, Any] = {"line": where} if where else {}
            row.update(r.as_dict() if isinstance(r, AccessCheck) else {"error": str(r)})
            out(json.dumps(row, ensure_ascii=False))
    elif not args.batch:
        r = results[0][1]
        assert isinstance(r, AccessCheck)
        f = r.filing
        out(f"{r.filing_number}" + (f" ({f.sponsor}, 接入商 {f.access_provider or '-'})" if f else "") + ": "
            + ("access may be opened (可以接入)" if r.may_open else "access may NOT be opened (不予接入)"))
        table([[c.condition, {True: "ok", False: "FAILED", None: "-"}[c.ok], c.article, c.detail] for c in r.conditions],
              ["condition", "result", "article", "detail"])
    else:
        table([[where, r.filing_number if isinstance(r, AccessCheck) else "-",
                ("may open" if r.may_open else "may NOT open") if isinstance(r, AccessCheck) else "error",
                "; ".join(f"{c.condition} ({c.article}): {c.detail}" for c in r.failed) if isinstance(r, AccessCheck)
                else str(r)] for where, r in results], ["line", "filing no. (备案号)", "result", "failed conditions"])
    if any(isinstance(r, CheckError) for _, r in results):
        err(f"exit status 2: {sum(isinstance(r, CheckError) for _, r in results)} check(s) could not be made (listed above)")
        return 2
    return 0 if all(isinstance(r, AccessCheck) and r.may_open for _, r in results) else 1


def cmd_records_ip_report(args: argparse.Namespace) -> int:
    """IP地址备案 (501号 art. 19): the allocated blocks from the inventory history, what changed since
    the last report and each change's five-working-day deadline; ``--mark-reported`` records that the
    report was filed (a row of the decision store, shared by the fleet). Exit 0: nothing overdue,
    1: a change past its deadline unreported, 2: could not run."""
    import csv
    import io
    from pathlib import Path

    from beiand.cli.block import _config, _operator, decisions
    from beiand.cli.logs import parse_time
    from beiand.policy.history import HistoryError, Holders, history_dir
    from beiand.policy.workdays import CalendarError, load_calendar
    from beiand.report import ipreport
    from beiand.store import StoreError

    cfg = _config(args)
    sdir = cfg.daemon.state_dir
    if not history_dir(sdir).is_dir():
        raise CliError(f"{sdir}: no inventory history ({history_dir(sdir)}): the daemon records one at every inventory load "
                       "(--state-dir DIR reads another state directory)")
    now = parse_time(args.at, "--at") / 1000 if args.at else time.time()
    holidays = args.holidays or cfg.cases.holidays_file
    try:
        calendar = load_calendar(holidays)
    except CalendarError as exc:
        raise CliError(f"{'--holidays' if args.holidays else 'cases.holidays_file'}: " + "; ".join(exc.problems[:5])) from None
    try:
        timeline = Holders(sdir).timeline(int(now * 1000))
    except HistoryError as exc:
        raise CliError(str(exc)) from None
    store = decisions(args)
    try:
        report = ipreport.build(timeline, ipreport.last_report(store.changes(0, (ipreport.KIND,))), calendar, now)
        if args.mark_reported:
            if not report.loads:
                raise CliError("no inventory load recorded: nothing to mark as reported (nothing was written)")
            version = store.append([ipreport.reported_entry(report, _operator(args), args.reason or "IP地址备案 filed", now)])
            err(f"decision store {store.url}: version {version}: the report is marked as filed ({len(report.blocks)} block(s), "
                f"{len(report.changes)} change(s)); the next report compares with it")
    except StoreError as exc:
        raise CliError(f"{exc} (nothing was written)") from None
    finally:
        store.close()
    fmt = args.format
    if fmt == "xlsx":
        if not args.output:
            raise CliError("--format xlsx: give --output FILE")
        from openpyxl import Workbook

        wb = Workbook()
        ws = wb.active
        assert ws is not None
        ws.title = "IP地址备案"
        ws.append(list(ipreport.REPORT_COLUMNS))
        for row in report.report_rows():
            sheet_append(ws, row)
        wc = wb.create_sheet("变更")
        wc.append(list(ipreport.CHANGE_COLUMNS))
        for row in report.change_rows():
            sheet_append(wc, row)
        wb.save(Path(args.output))
        err(f"{args.output}: {len(report.blocks)} block(s), {len(report.changes)} change(s), {report.overdue} overdue")
    else:
        if fmt == "json":
            text = json.dumps(report.as_dict(), ensure_ascii=False, indent=2)
        elif fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(ipreport.REPORT_COLUMNS)
            w.writerows(csv_text(r) for r in report.report_rows())
            text = buf.getvalue().rstrip("\n")
        else:
            text = _ip_report_text(report)
        if args.output:
            Path(args.output).write_text(text + "\n", encoding="utf-8")
            err(f"{args.output}: {len(report.blocks)} block(s), {len(report.changes)} change(s), {report.overdue} overdue")
        else:
            out(text)
    for w_ in report.warnings:
        err(f"warning: {w_}")
    if report.overdue and not args.mark_reported:
        err(f"exit status 1: {report.overdue} change(s) past their deadline unreported ({ipreport.ARTICLE}: within "
            f"{ipreport.DEADLINE_WORKING_DAYS} working days); file them, then --mark-reported")
        return 1
    return 0


def _ip_report_text(report: IpReport) -> str:
    from beiand.report import ipreport

    last = report.last
    lines = [f"IP地址备案 ({ipreport.ARTICLE}): {len(report.blocks)} allocated block(s), inventory in force since "
             f"{ipreport.beijing_time(report.loaded_at) if report.loaded_at else '-'}",
             f"last report (上次报备): {ipreport.beijing_time(last.at) + ' by ' + (last.actor or '-') if last else 'none recorded'}",
             ""]
    buf: list[str] = []
    w = len(ipreport.BLOCK_COLUMNS)
    rows = [r[:w] for r in report.block_rows()]
    _capture(buf, rows, [f"{zh}" for zh in ipreport.BLOCK_COLUMNS])
    lines += buf
    lines.append("")
    if report.changes:
        lines.append(f"changes since the last report (变更), due within {ipreport.DEADLINE_WORKING_DAYS} working days: "
                     f"{len(report.changes)}, {report.overdue} overdue")
        buf = []
        _capture(buf, report.change_rows(), list(ipreport.CHANGE_COLUMNS))
        lines += buf
    else:
        lines.append("no change since the last report (无变更)")
    return "\n".join(lines)


def _capture(buf: list[str], rows: list[list[str]], header: list[str]) -> None:
    """``table`` into ``buf`` (the text of a report may go to --output)."""
    import contextlib
    import io

    s = io.StringIO()
    with contextlib.redirect_stdout(s):
        table(rows, header)
    buf += s.getvalue().rstrip("\n").splitlines()


def _register_store(args: argparse.Namespace) -> Any:
    from beiand.cli.block import decisions

    return decisions(args)


def _cfg(args: argparse.Namespace) -> Any:
    from beiand.cli.block import _config

    return _config(args)


def cmd_records_import(args: argparse.Namespace) -> int:
    """Validate exports (and an inventory, a NAT feed) and publish them as versions of the register
    in the decision store: every gateway with records.source = "store" applies them."""
    from beiand.cli.block import _operator
    from beiand.runtime.register import ImportProblem, import_files
    from beiand.store import StoreError

    cfg = _cfg(args)
    if args.max_loss is not None:
        import dataclasses

        cfg = dataclasses.replace(cfg, records=dataclasses.replace(cfg.records, max_loss=args.max_loss))
    if not (args.files or args.inventory or args.nat):
        raise CliError("nothing to import: give export FILEs, --inventory FILE or --nat FILE")
    store = _register_store(args)
    try:
        done, skipped = import_files(cfg, store, args.files, args.inventory or "", args.nat or "", actor=_operator(args),
                                     why=args.why or "")
    except ImportProblem as exc:
        err(f"error: {exc}")
        return 1
    except StoreError as exc:
        raise CliError(f"{exc} (nothing was published)") from None
    finally:
        store.close()
    for e in skipped[: args.max_warnings]:
        err(f"warning: skipped {e}")
    if len(skipped) > args.max_warnings:
        err(f"warning: … {len(skipped) - args.max_warnings} more skipped row(s)")
    rows = [_version_row(d.version) | {"published": d.new} for d in done]
    if args.json:
        for r in rows:
            out(json.dumps(r, ensure_ascii=False))
    else:
        for d in done:
            v = d.version
            if d.new:
                out(f"{d.kind}: version {v.version} published: {v.rows} rows ({_summary(v.summary)}), sha256 {v.sha256[:16]}")
            else:
                out(f"{d.kind}: the same content as version {v.version} in force: nothing published")
    return 0


def _summary(s: dict[str, Any]) -> str:
    parts = [f"{s.get(k, 0)} {w}" for k, w in (("added", "added"), ("removed", "removed"), ("changed", "changed"))]
    more = [f"{s[k]} {k.replace('_', ' ')}" for k in ("status_changed", "names_changed", "addresses_changed") if s.get(k)]
    return ", ".join(parts + more)


def _version_row(v: Any) -> dict[str, Any]:
    from beiand.cli.logs import fmt_time

    return {"version": v.version, "kind": v.kind, "at": fmt_time(int(v.at * 1000)), "by": v.actor, "why": v.why,
            "source": v.source, "source_sha256": v.source_sha256, "sha256": v.sha256, "rows": v.rows, "summary": v.summary,
            "gateway": v.gateway}


def cmd_records_log(args: argparse.Namespace) -> int:
    """The register's versions, newest first."""
    from beiand.store import StoreError
    from beiand.store import register as reg

    store = _register_store(args)
    try:
        vs = reg.versions(store, args.kind or "", args.limit)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    rows = [_version_row(v) for v in vs]
    if args.json:
        for r in rows:
            out(json.dumps(r, ensure_ascii=False))
    else:
        table([[r["version"], r["kind"], r["at"], r["by"] or "-", r["rows"], _summary(r["summary"]), r["sha256"][:16],
                r["source"] or "-"] for r in rows], ["version", "kind", "at", "by", "rows", "changes", "sha256", "source"])
    return 0


def cmd_records_diff(args: argparse.Namespace) -> int:
    """What changed in the register from V1 to V2: rows added, removed and changed, per kind."""
    from beiand.store import StoreError
    from beiand.store import register as reg

    store = _register_store(args)
    try:
        kinds = [args.kind] if args.kind else list(reg.REGISTER_KINDS)
        deltas = {k: reg.diff(store, k, args.v1, args.v2) for k in kinds}
    except StoreError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    any_change = False
    for kind, d in deltas.items():
        items = ([{"kind": kind, "change": "added", "key": k, "after": json.loads(d.added_data[k])} for k in d.added]
                 + [{"kind": kind, "change": "removed", "key": k, "before": json.loads(d.removed_data[k])} for k in d.removed]
                 + [{"kind": kind, "change": "changed", "key": k, "before": json.loads(a), "after": json.loads(b)}
                    for k, a, b in d.changed])
        any_change |= bool(items)
        if args.json:
            for it in items:
                out(json.dumps(it, ensure_ascii=False))
            continue
        out(f"{kind}: {len(d.added)} added, {len(d.removed)} removed, {len(d.changed)} changed (v{args.v1} → v{args.v2})")
        for it in items[: args.max_rows]:
            what = it.get("after", it.get("before"))
            if it["change"] == "changed":
                a, b = it["before"], it["after"]
                what = {i: (x, y) for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y}
            out(f"  {it['change']:8} {it['key']}  {json.dumps(what, ensure_ascii=False)}")
        if len(items) > args.max_rows:
            out(f"  … {len(items) - args.max_rows} more (--max-rows, --json)")
    return 1 if any_change else 0


def store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="the config (default /etc/beiand/beiand.toml)")
    p.add_argument("--state-dir", metavar="DIR", help="the gateway's state directory: its SQLite decision store")
    p.add_argument("--store", metavar="URL", help="the decision store: an SQLite file or postgresql://user@host/db "
                   "(default: store.url of the config)")


def _held_in_register(cfg: Any, state_dir: Any, state_given: bool, ip: str, ts_ms: int) -> Any:
    """Who held ``ip`` at ``ts_ms`` by the inventory in force then in the decision store's register
    (None: the register holds no inventory then, or there is no store: the history files answer)."""
    import dataclasses
    from pathlib import Path

    from beiand.policy.history import Held
    from beiand.policy.register import inventory_of
    from beiand.runtime.decisions import open_decisions
    from beiand.runtime.settings import Config
    from beiand.store import StoreError
    from beiand.store import register as reg
    from beiand.store.connect import is_postgres, sqlite_path

    base = cfg if cfg is not None else Config()
    if state_given:
        base = dataclasses.replace(base, daemon=dataclasses.replace(base.daemon, state_dir=Path(state_dir)),
                                   store=dataclasses.replace(base.store, url=""))
    if not is_postgres(base.store.url) and not sqlite_path(base.store.url, base.daemon.state_dir).exists():
        return None
    try:
        store = open_decisions(base, migrate=False, import_files=False, create=False)
        try:
            v, rows = reg.fetch(store, "inventory", reg.version_at(store, ts_ms / 1000))
        finally:
            store.close()
    except StoreError as exc:
        err(f"warning: {exc}: the inventory history files answer")
        return None
    if v is None:
        return None
    hit = inventory_of(rows).lookup(ip)
    return Held(hit.account if hit else "", hit, int(v.at * 1000),
                f"register v{v.version}: {v.source} (sha256 {v.source_sha256[:16]})")


def add_parsers(sub: Any) -> None:
    rec = sub.add_parser("records", help="filing records (备案): check, look up, 接入前核验 (check-access), IP地址备案 (ip-report)")
    rsub = rec.add_subparsers(dest="records_command", required=True)
    chk = rsub.add_parser("check", help="validate export files; counts and every rejected row")
    chk.add_argument("files", nargs="+", metavar="FILE")
    chk.add_argument("--json", action="store_true")
    chk.add_argument("--max-warnings", type=int, default=50)
    chk.add_argument("--status-map", action="append", metavar="WORD=STATUS",
                     help="a status word of the export mapped to active, cancelled, revoked, access-pending or under-review")
    chk.set_defaults(func=cmd_records_check)
    lk = rsub.add_parser("lookup", help="the verdict for names or IPs, with the filing and the reason")
    lk.add_argument("query", nargs="+", metavar="NAME|IP")
    policy_args(lk)
    lk.add_argument("--server", metavar="IP", help="the server address the name is served from")
    lk.add_argument("--at", metavar="TIME", help="judge at this time, with the records and inventory then in force where "
                    "the decision store's register keeps them (2026-11-20T08:00+08:00, epoch seconds; default: now)")
    lk.add_argument("--json", action="store_true")
    lk.set_defaults(func=cmd_records_lookup)
    im = rsub.add_parser("import", help="validate exports (and the inventory, the NAT feed) and publish them as versions "
                         "of the register in the decision store")
    im.add_argument("files", nargs="*", metavar="FILE")
    im.add_argument("--inventory", metavar="FILE", help="the hosted inventory (CSV or TOML)")
    im.add_argument("--nat", metavar="FILE", help="the NAT / elastic-IP mapping feed")
    im.add_argument("--by", metavar="WHO", help="who imports (default: the login, SUDO_USER first)")
    im.add_argument("--why", metavar="TEXT", help="why (kept with the version)")
    im.add_argument("--max-loss", type=float, metavar="SHARE", help="the reload guard (default: records.max_loss)")
    im.add_argument("--max-warnings", type=int, default=50)
    im.add_argument("--json", action="store_true")
    store_args(im)
    im.set_defaults(func=cmd_records_import)
    lg = rsub.add_parser("log", help="the register's versions: who, when, what changed")
    lg.add_argument("--kind", choices=("records", "inventory", "nat"))
    lg.add_argument("--limit", type=int, default=0)
    lg.add_argument("--json", action="store_true")
    store_args(lg)
    lg.set_defaults(func=cmd_records_log)
    df = rsub.add_parser("diff", help="what changed between two register versions (exit 1: something did)")
    df.add_argument("v1", type=int, metavar="V1")
    df.add_argument("v2", type=int, metavar="V2")
    df.add_argument("--kind", choices=("records", "inventory", "nat"))
    df.add_argument("--max-rows", type=int, default=50)
    df.add_argument("--json", action="store_true")
    store_args(df)
    df.set_defaults(func=cmd_records_diff)
    hd = rsub.add_parser("holder", help="which account held an address at a time (the inventory history)")
    hd.add_argument("ip", metavar="IP")
    hd.add_argument("--at", metavar="TIME", help="2026-11-20T08:00+08:00, epoch seconds, or 7d ago (default: now)")
    hd.add_argument("--state-dir", metavar="DIR", help="where the history is kept (default: daemon.state_dir of the config)")
    hd.add_argument("--nat", metavar="FILE", help="NAT mapping feed (default: inventory.nat_file of the config)")
    hd.add_argument("--config", metavar="FILE", help="the config (default /etc/beiand/beiand.toml)")
    hd.add_argument("--json", action="store_true")
    hd.set_defaults(func=cmd_records_holder)
    ca = rsub.add_parser("check-access", help="接入前核验 (501号 art. 11(三)1): may access be opened for a filing on these "
                                             "addresses and names? exit 0 yes, 1 no (each failed condition named), 2 error")
    ca.add_argument("--filing", metavar="NUMBER", help="the service's filing number (备案号), e.g. 京ICP备12345678号-1")
    ca.add_argument("--ip", nargs="+", metavar="ADDR", help="the addresses access is opened on (the filing must list each)")
    ca.add_argument("--name", nargs="+", metavar="NAME", help="the names served (the filing's domains must cover each)")
    ca.add_argument("--batch", metavar="FILE", help="one check per row: CSV filing,ip,name (备案号,IP,域名; several in a cell "
                                                   "separated by ; or spaces), JSON list or JSON lines of {filing, ips, names}")
    ca.add_argument("--config", metavar="FILE", help="the records and provider names of this config (default "
                                                    f"{DEFAULT_CONFIG} when no --records)")
    ca.add_argument("--records", action="append", metavar="FILE", help="filing export; repeat for several "
                                                                      "(default: records.files of the config)")
    ca.add_argument("--provider", action="append", metavar="NAME",
                    help="this provider's name as filings spell their 接入商; repeat for each legal entity "
                         "(default: records.provider of the config)")
    ca.add_argument("--status-map", action="append", metavar="WORD=STATUS",
                    help="a status word of the export mapped to active, cancelled, revoked, access-pending or under-review")
    ca.add_argument("--grace-days", type=int, help="grace for access-pending (接入审核中) filings, at most 45 days (default 30)")
    ca.add_argument("--at", type=float, metavar="EPOCH", help="check at this time (default: now)")
    ca.add_argument("--json", action="store_true", help="one JSON object per check")
    ca.set_defaults(func=cmd_records_check_access, inventory=None, no_overlays=True, state_dir=None, allow=None, mode=None)
    ipr = rsub.add_parser("ip-report", help="IP地址备案 (501号 art. 19): the allocated blocks from the inventory history, "
                                            "what changed since the last report and each change's five-working-day deadline")
    ipr.add_argument("--config", metavar="FILE", help=f"(default {DEFAULT_CONFIG})")
    ipr.add_argument("--state-dir", metavar="DIR", help="where the inventory history and the SQLite decision store are "
                                                       "(default: daemon.state_dir of the config)")
    ipr.add_argument("--store", metavar="URL", help="the decision store (default: store.url of the config)")
    ipr.add_argument("--holidays", metavar="FILE", help="the holiday calendar (default: cases.holidays_file of the config)")
    ipr.add_argument("--at", metavar="TIME", help="the report as of this time: 2026-12-07T10:00+08:00, epoch seconds, "
                                                  "or 7d ago (default: now)")
    ipr.add_argument("--format", choices=("text", "json", "csv", "xlsx"), default="text")
    ipr.add_argument("--output", metavar="FILE", help="write the report there (required for xlsx)")
    ipr.add_argument("--mark-reported", action="store_true", help="record in the decision store that this report was "
                                                                  "filed: the next one lists what changed since")
    ipr.add_argument("--by", metavar="WHO", help="who filed it (default: the login, SUDO_USER first)")
    ipr.add_argument("--reason", metavar="TEXT", help="a note kept with the row (e.g. the 备案 system's receipt)")
    ipr.set_defaults(func=cmd_records_ip_report)
    authority.add_parsers(rsub)
