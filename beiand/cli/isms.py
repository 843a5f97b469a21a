"""``beiand isms``: the regulator's ISMS interface for the operator (docs/isms.md).

``status`` (commands in force, refusals, the spool, the last call), ``commands`` (each command
in force, its rules and window), ``report --now`` (write the data files now, as the daemon's
timers would). Reads ``<daemon.state_dir>/isms/`` and the access log; the daemon need not run.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from beiand.cli.common import CliError, err, out, table
from beiand.cli.logs import DEFAULT_CONFIG, config_from
from beiand.runtime.settings import Config

if TYPE_CHECKING:
    from beiand.isms.store import CommandStore

# The ISMS modules (xmlschema, aiohttp) are imported by the commands that use them, so that
# every other `beiand` command starts without them.


def _cfg(args: argparse.Namespace) -> Config:
    cfg = config_from(args)
    if cfg is None:
        raise CliError(f"no config at {args.config or DEFAULT_CONFIG}")
    if not cfg.isms.enabled:
        raise CliError(f"{cfg.path}: isms.enabled is false")
    return cfg


def _store(cfg: Config) -> CommandStore:
    from beiand.isms.store import CommandStore, RuleError
    from beiand.isms.wire.profile import ProfileError
    from beiand.runtime.decisions import open_decisions
    from beiand.runtime.isms import profile_of
    from beiand.store import StoreError
    from beiand.store.connect import is_postgres, sqlite_path

    try:
        subdomains = profile_of(cfg).subdomains
    except ProfileError as exc:
        raise CliError(str(exc)) from None
    if is_postgres(cfg.store.url) or sqlite_path(cfg.store.url, cfg.daemon.state_dir).exists():
        try:  # the decision store itself (the snapshot may lag, or no daemon runs here)
            decisions = open_decisions(cfg, migrate=False, import_files=False, create=False)
            try:
                cs = CommandStore(cfg.daemon.state_dir, subdomains, cfg.isms.house_id, load=False, decisions=decisions)
                cs.sync()
                cs.decisions = None
                return cs
            finally:
                decisions.close()
        except StoreError as exc:
            err(f"beiand: warning: {exc}: the snapshot in {cfg.daemon.state_dir} instead")
    try:
        return CommandStore(cfg.daemon.state_dir, subdomains, cfg.isms.house_id)
    except RuleError as exc:
        raise CliError(str(exc)) from None


def _window(effect: float, expired: float, now: float) -> str:
    from beiand.isms.wire.model import format_time

    if effect > now:
        return f"from {format_time(effect)}"
    if expired and expired <= now:
        return f"expired {format_time(expired)}"
    return f"until {format_time(expired)}" if expired else "in force"


def cmd_status(args: argparse.Namespace) -> int:
    from beiand.isms.wire.model import format_time
    from beiand.runtime.isms import spool_dir

    cfg = _cfg(args)
    st = _store(cfg).state
    sp = spool_dir(cfg)
    pending = sorted(sp.glob("[0-9]*/*/*.xml"))
    by_dt: dict[str, int] = {}
    for p in pending:
        by_dt[p.parent.parent.name] = by_dt.get(p.parent.parent.name, 0) + 1
    res: dict[str, Any] = {"idc_id": cfg.isms.idc_id, "house_id": cfg.isms.house_id, "mode": cfg.isms.mode,
                           "endpoint": f"{'https' if cfg.isms.tls_cert else 'http'}://{cfg.isms.listen}{cfg.isms.path}",
                           "commands": len(st.commands), "filter": sum(1 for c in st.commands.values() if c.type == 2),
                           "monitor": sum(1 for c in st.commands.values() if c.type == 1), "lists": len(st.lists),
                           "code_tables": sorted(st.code_lists), "active_period_s": st.active_period_s,
                           "sequences_seen": len(st.sequences), "refused": st.refused[-10:], "spool": str(sp),
                           "spool_pending": by_dt}
    fleet = fleet_of(cfg)
    if args.json:
        res["fleet"] = fleet
        out(json.dumps(res, ensure_ascii=False, indent=2))
        return 0
    for k, v in res.items():
        if k != "refused":
            out(f"{k:16} {v}")
    if fleet.get("store_error"):
        out(f"\nfleet: the decision store does not answer: {fleet['store_error']}")
    elif fleet["gateways"]:
        out(f"\nfleet (decision store version {fleet['store_head']}):")
        table([[g["gateway"], "up" if g["up"] else f"down ({g['why']})", "yes" if g["healthy"] else "no", g["version"],
                g["behind"], ",".join(g["houses"]) or "-"] for g in fleet["gateways"]],
              ["gateway", "state", "capturing", "version", "behind", "houses"])
        out(f"houses {len(fleet['houses'])}, faulty (DT 7): {', '.join(fleet['faulty_houses']) or 'none'}")
    cu = fleet.get("cu")
    if cu:
        out(f"CU: {len(cu.get('acks_pending') or [])} command(s) not yet applied everywhere, {cu.get('acks_outbox')} ack(s) "
            "to send")
        for p in (cu.get("acks_pending") or [])[:10]:
            out(f"  command {p['commandId']} (house {p['houseId'] or 'all'}): not yet on {', '.join(p['not_applied']) or '-'}")
        for m in (cu.get("basic_mismatches") or [])[:10]:
            out(f"  basic data: {m}")
    if st.refused:
        out("\nlast refusals:")
        for r in st.refused[-10:]:
            out(f"  command {r['commandId']}  {format_time(r['at'])}  {r['why']}")
    return 0


def cmd_commands(args: argparse.Namespace) -> int:
    from beiand.isms.wire.codes import RULE_NAMES

    cfg = _cfg(args)
    st = _store(cfg).state
    now = time.time()
    rows = []
    for c in sorted(st.commands.values(), key=lambda c: c.command_id):
        rules = "; ".join(f"{RULE_NAMES.get(r.subtype, r.subtype)} {r.value_start}" + (f"-{r.value_end}" if r.value_end else "")
                          for r in c.rules[:3]) + (f" (+{len(c.rules) - 3})" if len(c.rules) > 3 else "")
        rows.append({"commandId": c.command_id, "type": "filter" if c.type == 2 else "monitor", "rules": len(c.rules),
                     "summary": rules, "window": _window(c.effect_time, c.expired_time, now), "reason": c.reason})
    for _key, e in sorted(st.lists.items()):
        rows.append({"commandId": e.command_id, "type": e.kind, "rules": 1, "summary": e.contents[:80], "window": "in force",
                     "reason": ""})
    if args.json:
        for r in rows:
            out(json.dumps(r, ensure_ascii=False))
    else:
        table([[r["commandId"], r["type"], r["rules"], r["summary"], r["window"]] for r in rows],
              ["commandId", "type", "rules", "rules (first 3)", "window"])
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from beiand.isms.service import SecretError
    from beiand.isms.store import RuleError
    from beiand.isms.wire.profile import ProfileError
    from beiand.runtime.isms import IsmsRuntime

    if not args.now:
        raise CliError("isms report: give --now (the daemon writes reports on its timers)")
    cfg = _cfg(args)
    try:
        rt = IsmsRuntime(cfg)
    except (SecretError, ProfileError, RuleError) as exc:
        raise CliError(str(exc)) from None
    if args.local:
        rt.reporter.records = None  # this gateway's log, not the fleet's copy
    now = time.time()
    rt._last_report_ms = int((now - args.window) * 1000)
    written = rt.run_due(["heartbeat", "report"])
    if args.json:
        out(json.dumps({"written": written, "spool": str(rt.spool.directory)}))
    else:
        for dt, n in sorted(written.items(), key=lambda kv: int(kv[0])):
            out(f"DT {dt}: {n} file(s)")
        out(f"spool: {rt.spool.directory}")
        out(f"records from {rt.reporter.source().where}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The licence's CU (systemd/beiand-isms.service); imported here: aiohttp, the store."""
    import logging

    from beiand.runtime import logsetup
    from beiand.runtime.ismscu import serve

    logsetup.configure(args.log_format)
    logging.getLogger().setLevel(logging.INFO)
    try:
        return serve(args.config)
    except OSError as exc:  # the endpoint's or the metrics' address in use, a spool not writable
        logging.getLogger("beiand.isms").error("%s: %s", args.config, exc)
        return 2


def fleet_of(cfg: Config) -> dict[str, Any]:
    """What ``isms status`` shows of the fleet: the gateways following the decision store (up or
    down, the version they apply, their houses), the houses and the faulty ones (DT 7), and what
    the running CU (``beiand isms serve``, on ``isms.metrics_listen``) holds: acks waiting for
    gateways, the basic data's mismatches with the inventory."""
    import urllib.request

    from beiand.isms.fleet import house_states, view
    from beiand.runtime.decisions import fleet_rows
    from beiand.store import StoreError

    res: dict[str, Any] = {}
    try:
        _url, head, rows = fleet_rows(cfg)
    except StoreError as exc:
        res["store_error"] = str(exc)
        rows, head = [], 0
    im = cfg.isms
    gws = view(rows, time.time(), im.gateway_down_after, im.gateway_retired_after)
    every, faulty = house_states(gws, ())
    res.update({"store_head": head, "gateways": [{"gateway": g.name, "up": g.up, "why": g.why or None, "healthy": g.healthy,
                                                  "version": g.version, "behind": max(0, head - g.version),
                                                  "houses": list(g.houses)} for g in gws],
                "houses": every, "faulty_houses": faulty})
    try:
        with urllib.request.urlopen(f"http://{im.metrics_listen}/api/v1/isms/status", timeout=2) as r:
            cu = json.loads(r.read())
        res["cu"] = {k: cu.get(k) for k in ("houses", "faulty_houses", "acks_pending", "acks_outbox", "basic_mismatches",
                                            "store_error", "spool_pending", "last_call")}
    except (OSError, ValueError):
        res["cu"] = None  # no CU answers on isms.metrics_listen here
    return res


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("isms", help="the regulator's ISMS interface (ISMI): commands in force, reports")
    isub = p.add_subparsers(dest="isms_command", required=True)

    def common(x: argparse.ArgumentParser) -> None:
        x.add_argument("--config", metavar="FILE", help=f"(default {DEFAULT_CONFIG})")
        x.add_argument("--json", action="store_true")

    st = isub.add_parser("status", help="commands in force, refusals, the spool")
    common(st)
    st.set_defaults(func=cmd_status)
    cm = isub.add_parser("commands", help="every monitor/filter command and list entry in force")
    common(cm)
    cm.set_defaults(func=cmd_commands)
    sv = isub.add_parser("serve", help="the licence's CU (systemd/beiand-isms.service): idc_command for every gateway on "
                         "the decision store, acks with what the fleet did, reports from the fleet")
    sv.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE", help=f"(default {DEFAULT_CONFIG})")
    sv.add_argument("--log-format", choices=("auto", "text", "journal", "json"), default="auto")
    sv.set_defaults(func=cmd_serve)
    rp = isub.add_parser("report", help="write DT 7, 8, 9, 4, 5 data files to the spool now")
    rp.add_argument("--now", action="store_true", help="now (required)")
    rp.add_argument("--window", type=float, default=86400.0, metavar="SECONDS", help="records of the last SECONDS (default a day)")
    rp.add_argument("--local", action="store_true", help="from this gateway's log, even when ClickHouse is configured (the "
                    "reports then read the fleet's copy, scoped to isms.gateways)")
    common(rp)
    rp.set_defaults(func=cmd_report)
