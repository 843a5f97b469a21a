"""``beiand records check|lookup``: validate filing exports, and the verdict for names or IPs."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from typing import Any

from beiand.cli.common import CliError, err, out, parse_status_map, policy_args, policy_setup, table
from beiand.policy import lookup_answer
from beiand.records import ImportRefused, load_files, normalise_domain
from beiand.records.domains import DomainError, is_ip_literal, registrable_domain
from beiand.records.importer import canonical_ip
from beiand.records.index import RecordIndex


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


def cmd_records_lookup(args: argparse.Namespace) -> int:
    setup = policy_setup(args, quiet=args.json)
    policy = setup.policy
    ts = time.time() if args.at is None else args.at
    server_ip = ""
    if args.server is not None:
        server_ip = canonical_ip(args.server) or ""
        if not server_ip:
            raise CliError(f"--server {args.server!r} is not an IP address")
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
        r = lookup_answer(policy, name, server, ts, no_inventory_means_hosted=not setup.inventory_given)
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


def add_parsers(sub: Any) -> None:
    rec = sub.add_parser("records", help="filing records (备案): check and look up")
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
    lk.add_argument("--at", type=float, metavar="EPOCH", help="judge at this time (default: now)")
    lk.add_argument("--json", action="store_true")
    lk.set_defaults(func=cmd_records_lookup)
