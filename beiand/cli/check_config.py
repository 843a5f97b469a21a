"""``beiand check-config``: validate the config and the files it names, without starting."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from beiand.cli.common import err, inventory_from, load_records, out


def cmd_check_config(args: argparse.Namespace) -> int:
    from beiand.runtime.settings import ConfigError, load_config, reference

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
    from beiand.runtime.wiring import policy_config

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
    elif cfg.records.source == "store":
        out("records: the register's version in force in the decision store (records.source = \"store\")")
    else:
        err(f"{args.config}: records.files: none given: every name would be judged unfiled")
    inv = inventory_from(str(cfg.inventory.file) if cfg.inventory.file else None)
    out(f"inventory: {len(inv)} hosted prefix(es)")
    if not cfg.capture.interfaces:
        err(f"{args.config}: capture.interfaces: none given: the daemon would capture nothing")
    from beiand.runtime.wiring import capture_filter

    try:  # the kernel filter the workers would attach (the kernel takes at most 4,096 instructions)
        capture_filter(cfg)
    except ValueError as exc:
        err(f"{args.config}: capture: {exc}: fewer capture.tcp_ports (or workers = 1 inline), a simpler capture.filter, "
            "or capture.any_port = false")
        return 2
    if cfg.isms.enabled:
        from beiand.runtime.isms import check as isms_check

        problem = isms_check(cfg)
        if problem:
            err(f"{args.config}: isms: {problem}")
            return 2
        if cfg.isms.mode == "fleet":
            out("isms: fleet: this gateway applies the commands the licence's CU (beiand isms serve) writes to the decision store")
        else:
            out(f"isms: idcId {cfg.isms.idc_id}, {cfg.isms.mode}, idc_command on {cfg.isms.listen}{cfg.isms.path}")
    store_line(cfg, args.config)
    out(f"{args.config}: ok (gateway {cfg.gateway}, {cfg.workers} worker(s), log {cfg.accesslog.directory}, "
        f"retention {cfg.accesslog.retention_days} days)")
    return 0


def store_line(cfg: Any, path: str) -> None:
    """Where the decisions come from, and whether that store answers now: unreachable is a warning
    (the daemon would enforce its last snapshot), not a config error. Nothing is created."""
    from beiand.runtime.decisions import open_decisions
    from beiand.store import StoreError
    from beiand.store.connect import is_postgres, sqlite_path

    if not is_postgres(cfg.store.url) and not sqlite_path(cfg.store.url, cfg.daemon.state_dir).exists():
        out(f"decision store: sqlite:{sqlite_path(cfg.store.url, cfg.daemon.state_dir)} (created at the daemon's first start)")
        return
    try:
        store = open_decisions(cfg, migrate=False, import_files=False, create=False)
        try:
            out(f"decision store: {store.url} (schema {store.schema()}, version {store.head()}, "
                f"{len(store.gateways())} gateway(s) following it)")
        finally:
            store.close()
    except StoreError as exc:
        err(f"warning: {path}: store: {exc} (the daemon would enforce its last snapshot until it answers)")


def add_parsers(sub: Any) -> None:
    cc = sub.add_parser("check-config", help="validate the config (and the files it names) without starting")
    cc.add_argument("config", nargs="?", default="/etc/beiand/beiand.toml")
    cc.add_argument("--reference", action="store_true", help="print the configuration reference (docs/configuration.md)")
    cc.set_defaults(func=cmd_check_config)
