"""``beiand records check|lookup|holder|authority``: validate filing exports, the verdict for names
or IPs, which account held a hosted address at a past time (the inventory history), and the
authority's lists of unfiled sites (``cli/authority.py``)."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from typing import Any

from beiand.cli import authority
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
    if not history_dir(sdir).is_dir():
        raise CliError(f"--state-dir {sdir}: no inventory history ({history_dir(sdir)}): the daemon records one at every load")
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
    hd = rsub.add_parser("holder", help="which account held an address at a time (the inventory history)")
    hd.add_argument("ip", metavar="IP")
    hd.add_argument("--at", metavar="TIME", help="2026-11-20T08:00+08:00, epoch seconds, or 7d ago (default: now)")
    hd.add_argument("--state-dir", metavar="DIR", help="where the history is kept (default: daemon.state_dir of the config)")
    hd.add_argument("--nat", metavar="FILE", help="NAT mapping feed (default: inventory.nat_file of the config)")
    hd.add_argument("--config", metavar="FILE", help="the config (default /etc/beiand/beiand.toml)")
    hd.add_argument("--json", action="store_true")
    hd.set_defaults(func=cmd_records_holder)
    authority.add_parsers(rsub)
