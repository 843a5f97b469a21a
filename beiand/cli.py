"""The ``beiand`` command line.

Subcommands: ``run`` (the daemon), ``check-config``, ``logs``, ``block``, ``enforce``, ``audit``,
``records check|lookup``, ``replay``, ``lab``, ``demo``, ``install-files``; ``--version``. Exit codes: 0 ok, 1 findings or bad rows,
2 could not run (bad arguments or unreadable input).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from beiand.cliutil import CliError, err, inventory_from, load_records, out, parse_status_map, policy_args, policy_setup, table
from beiand.pipeline import OutputClosed
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


# -- parser -------------------------------------------------------------------------------


def version_line() -> str:
    """The package version (from its metadata), and the Python and kernel it runs on."""
    import platform

    from beiand import __version__

    return f"beiand {__version__} (Python {platform.python_version()} {sys.executable}; kernel {platform.system()} {platform.release()})"


class _Version(argparse.Action):
    """argparse's own version action wraps the line at the terminal width."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        out(version_line())
        parser.exit()


# What `beiand lab` imports beyond a plain install: the `lab` extra.
LAB_MODULES = ("pyroute2", "aioquic", "dns")


def cmd_lab(args: argparse.Namespace) -> int:
    import importlib.util

    missing = [m for m in LAB_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        err(f"beiand lab needs the [lab] extra ({', '.join(missing)} missing): pip install 'beiand[lab]'")
        return 2
    from beiand import labdemo

    return labdemo.main(args.workdir, args.keep)


def cmd_install_files(args: argparse.Namespace) -> int:
    from beiand.installfiles import InstallFilesError, install_files

    try:
        steps = install_files(args.prefix, dry_run=args.dry_run)
    except (InstallFilesError, OSError) as exc:
        raise CliError(str(exc)) from None
    for s in steps:
        out(f"{s.action:13} {s.path}" + (f"  ({s.note})" if s.note else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    from beiand.demo import build
    from beiand.records.generate import OUR_PROVIDER

    wd = args.workdir or tempfile.mkdtemp(prefix="beiand-demo-")
    files = build(wd)
    out(f"beiand demo: sample records, inventory and capture in {wd}\n")
    out("$ beiand records check records.csv")
    main(["records", "check", files["records"]])
    out("\n$ beiand records lookup www.example.com.cn shop.example.net 198.51.100.30 --provider …")
    main(["records", "lookup", "www.example.com.cn", "shop.example.net", "198.51.100.30", "--records", files["records"],
          "--inventory", files["inventory"], "--provider", OUR_PROVIDER])
    out("\n$ beiand replay demo.pcap --records records.csv --inventory inventory.csv --provider …")
    rc = main(["replay", files["pcap"], "--records", files["records"], "--inventory", files["inventory"], "--provider", OUR_PROVIDER])
    out(f"\n(replay exit code {rc}: 1 means unfiled, mismatched or inactive services were found)")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from beiand.config import ConfigError, load_config, reference

    if args.reference:
        sys.stdout.write(reference())
        return 0
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        err("\n".join(exc.problems))
        return 2
    for w in cfg.warnings:
        err(f"warning: {w}")
    from beiand.wiring import policy_config

    try:  # the policy the daemon would build from it
        policy_config(cfg)
    except ConfigError as exc:
        err("\n".join(f"{args.config}: {p}" for p in exc.problems))
        return 2
    # The files it names must load as the daemon would load them.
    if cfg.records.files:
        index = load_records([str(p) for p in cfg.records.files], strict=cfg.records.strict, quiet=True,
                             status_map=cfg.records.status_map)
        out(f"records: {index.stats().filings} filings (备案) from {len(cfg.records.files)} file(s)")
    else:
        err(f"{args.config}: records.files: none given: every name would be judged unfiled")
    inv = inventory_from(str(cfg.inventory.file) if cfg.inventory.file else None)
    out(f"inventory: {len(inv)} hosted prefix(es)")
    if not cfg.capture.interfaces:
        err(f"{args.config}: capture.interfaces: none given: the daemon would capture nothing")
    if cfg.isms.enabled:
        from beiand.isms_run import check as isms_check

        problem = isms_check(cfg)
        if problem:
            err(f"{args.config}: isms: {problem}")
            return 2
        out(f"isms: idcId {cfg.isms.idc_id}, {cfg.isms.mode}, idc_command on {cfg.isms.listen}{cfg.isms.path}")
    out(f"{args.config}: ok (gateway {cfg.gateway}, {cfg.workers} worker(s), log {cfg.accesslog.directory}, "
        f"retention {cfg.accesslog.retention_days} days)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="beiand", description="先备案后接入: filing (备案) enforcement for access providers")
    ap.add_argument("--version", action=_Version, help="print the version, Python and kernel, and exit")
    sub = ap.add_subparsers(dest="command", required=True)

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

    from beiand import replay_cli

    replay_cli.add_parsers(sub, policy_args)
    from beiand import logs_cli

    logs_cli.add_parsers(sub)
    from beiand import block_cli

    block_cli.add_parsers(sub)
    from beiand import audit_cli, isms_cli

    audit_cli.add_parsers(sub)
    isms_cli.add_parsers(sub)
    rn = sub.add_parser("run", help="the live daemon (systemd service): capture, decide, log, serve /metrics")
    rn.add_argument("--config", default="/etc/beiand/beiand.toml")
    rn.add_argument("--log-format", choices=("auto", "text", "journal", "json"), default="auto",
                    help="auto (default): journal (syslog priority prefix, no timestamp) under systemd, else text; json: one object a line")
    rn.set_defaults(func=lambda a: __import__("beiand.daemon", fromlist=["run"]).run(a.config, a.log_format))
    lab = sub.add_parser("lab", help="bring up a lab on this machine (namespaces, servers, traffic) and run the daemon in it")
    lab.add_argument("--workdir", help="where to keep the config, records, log (default: a new temporary directory)")
    lab.add_argument("--keep", action="store_true", help="keep running until Ctrl-C after the traffic")
    lab.set_defaults(func=cmd_lab)
    cc = sub.add_parser("check-config", help="validate the config (and the files it names) without starting")
    cc.add_argument("config", nargs="?", default="/etc/beiand/beiand.toml")
    cc.add_argument("--reference", action="store_true", help="print the configuration reference (docs/configuration.md)")
    cc.set_defaults(func=cmd_check_config)
    demo = sub.add_parser("demo", help="replay the shipped sample records, inventory and capture through the pipeline")
    demo.add_argument("--workdir", help="where to write the samples (default: a new temporary directory)")
    demo.set_defaults(func=cmd_demo)
    inst = sub.add_parser("install-files", help="lay the units, rules, dashboard and example config out (docs/install.md)")
    inst.add_argument("--prefix", default="/", help="root to install under (default: /)")
    inst.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    inst.set_defaults(func=cmd_install_files)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        err(f"beiand: error: {exc}")
        return 2
    except (BrokenPipeError, OutputClosed):
        # The reader of our output went away (`| head`): done. Point stdout at /dev/null so the
        # interpreter's last flush does not complain about the closed pipe as well.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
