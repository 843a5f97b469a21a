"""``beiand store migrate|status`` (the decision store's schema and where it is) and ``beiand fleet
status`` (every gateway following the store: the version it applies, its last heartbeat, its lag)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from beiand.cli.block import _config
from beiand.cli.common import CliError, out, table
from beiand.cli.logs import DEFAULT_CONFIG, fmt_time
from beiand.store import SCHEMA_VERSION, StoreError
from beiand.store.connect import open_store


def cmd_migrate(args: argparse.Namespace) -> int:
    """Every migration, safe or not (a gateway's start runs only the safe ones), then the one-time
    import of the files of a beiand before the store."""
    from beiand.runtime.decisions import import_legacy, store_settings, subdomains

    cfg = _config(args)
    try:
        store = open_store(store_settings(cfg), cfg.daemon.state_dir, cfg.gateway)
        try:
            before = store.schema()
            done = store.migrate()
            imported = import_legacy(store, cfg.daemon.state_dir, subdomains(cfg), cfg.isms.house_id)
        finally:
            store.close()
    except StoreError as exc:
        raise CliError(str(exc)) from None
    if done:
        out(f"decision store {store.url}: schema {before} → {done[-1].version} "
            f"({'; '.join(f'{m.version}: {m.what}' for m in done)})")
    else:
        out(f"decision store {store.url}: schema {before}, up to date")
    for line in imported:
        out(line)
    return 0


def cmd_store_status(args: argparse.Namespace) -> int:
    from beiand.runtime.decisions import open_decisions

    cfg = _config(args)
    try:
        store = open_decisions(cfg, migrate=False, import_files=False, create=False)
        try:
            info = {"store": store.url, "schema": store.schema(), "schema_of_this_beiand": SCHEMA_VERSION,
                    "version": store.head(), "gateways": len(store.gateways())}
        finally:
            store.close()
    except StoreError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        out(json.dumps(info, ensure_ascii=False, indent=2))
    else:
        for k, v in info.items():
            out(f"{k}: {v}")
    return 0


def cmd_fleet_status(args: argparse.Namespace) -> int:
    from beiand.runtime.decisions import fleet_rows, lag

    cfg = _config(args)
    try:
        url, head, gws = fleet_rows(cfg)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    now = time.time()
    rows: list[dict[str, Any]] = lag(gws, head, now)
    stale_after = max(3 * cfg.store.heartbeat_interval, 15.0)
    for r in rows:
        # the register version (records, inventory, NAT feed) its workers judge with (issue 35)
        r["register"] = r["state"].get("register") if isinstance(r["state"], dict) else None
        r["state"] = "silent" if r["heartbeat_age_s"] > stale_after else ("behind" if r["behind"] else "current")
    if args.json:
        out(json.dumps({"store": url, "version": head, "gateways": rows}, ensure_ascii=False, indent=2))
    else:
        out(f"decision store {url}: version {head}")
        table([[r["gateway"], r["version"], r["behind"], fmt_time(int(r["heartbeat_at"] * 1000)), f"{r['heartbeat_age_s']:.1f}",
                fmt_time(int(r["applied_at"] * 1000)) if r["applied_at"] else "-", r["register"] or "-", r["state"], r["host"],
                r["beiand"]]
               for r in rows], ["gateway", "applies", "behind", "last heartbeat", "age (s)", "applied at", "register", "state",
                                "host", "beiand"])
    return 0 if all(r["state"] == "current" for r in rows) else 1


def add_parsers(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help=f"(default {DEFAULT_CONFIG})")
        p.add_argument("--state-dir", metavar="DIR", help="a gateway's state directory: its SQLite decision store")
        p.add_argument("--store", metavar="URL", help="the decision store (default: store.url of the config)")

    sp = sub.add_parser("store", help="the decision store (closure orders, the regulator's commands, exemptions)")
    ssub = sp.add_subparsers(dest="store_command", required=True)
    m = ssub.add_parser("migrate", help="bring the store's schema to this beiand's (every migration; a gateway's start runs "
                        "only the safe ones) and import the orders/commands files of an older beiand once")
    common(m)
    m.set_defaults(func=cmd_migrate)
    st = ssub.add_parser("status", help="the store, its schema and its version")
    st.add_argument("--json", action="store_true")
    common(st)
    st.set_defaults(func=cmd_store_status)
    fp = sub.add_parser("fleet", help="the gateways following the decision store")
    fsub = fp.add_subparsers(dest="fleet_command", required=True)
    fs = fsub.add_parser("status", help="each gateway: the version it applies, its last heartbeat and its lag (exit 1 when "
                         "one is behind or silent)")
    fs.add_argument("--json", action="store_true")
    common(fs)
    fs.set_defaults(func=cmd_fleet_status)
