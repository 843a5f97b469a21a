"""``beiand block``: closure orders from the authority (关停指令, REGULATIONS.md O6), and
``beiand enforce close-breaker``.

Orders are rows of the decision store (``store.url``: the SQLite file in ``daemon.state_dir`` by
default, PostgreSQL for a fleet; ``beiand.store``): every gateway following it applies a change
within a second (names: at the next connection; addresses: nftables, all traffic). A store that
cannot be written is an error (exit 2), never an order kept on one gateway only. ``report`` is the
execution report: what was blocked under each order, when and how often, from the access log.
``beiand exempt`` does the same for the operator's exemptions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import ipaddress
import json
import os
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from beiand.accesslog import Query
from beiand.cli.common import CliError, err, out, table
from beiand.cli.logs import DEFAULT_CONFIG, config_from, fmt_time, parse_time, records_source, store_options, unreachable
from beiand.model import AccessRecord
from beiand.policy.orders import ExemptionStore, OrderError, OrderStore, end_entry, order_of, set_entry
from beiand.runtime.settings import Config
from beiand.store import Change, DecisionStore, StoreError, Transaction


def _config(args: argparse.Namespace) -> Config:
    """The config the store is named in; ``--state-dir DIR`` alone: the SQLite store in DIR."""
    cfg = config_from(args)
    if args.state_dir:
        base = cfg or Config()
        cfg = dataclasses.replace(base, daemon=dataclasses.replace(base.daemon, state_dir=Path(args.state_dir)))
        if not getattr(args, "store", None):
            cfg = dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, url=""))
    if cfg is None:
        raise CliError(f"no --state-dir and no config at {args.config or DEFAULT_CONFIG}")
    if getattr(args, "store", None):
        cfg = dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, url=args.store))
    return cfg


def decisions(args: argparse.Namespace) -> DecisionStore:
    """The decision store (``--store``, else the config's ``store.url``, else the SQLite file in the
    state directory), its schema brought up to date when safe and the files of a beiand before it
    imported once. Unreachable or unusable: a CliError (exit 2), never a local-only order."""
    from beiand.runtime.decisions import open_decisions

    cfg = _config(args)
    try:
        return open_decisions(cfg)
    except StoreError as exc:
        raise CliError(f"{exc} (nothing was written)") from None


@contextlib.contextmanager
def transaction(args: argparse.Namespace) -> Iterator[Transaction]:
    """A transaction of the decision store (:func:`decisions`), under its write lock: a StoreError is
    a CliError saying nothing was written; the store is closed after, and the version committed
    said on stderr."""
    store = decisions(args)
    try:
        with store.transaction() as tx:
            yield tx
            version = tx.head
    except StoreError as exc:
        raise CliError(f"{exc} (nothing was written)") from None
    finally:
        store.close()
    err(f"decision store {store.url}: version {version}")


def _book(store: DecisionStore, kind: str, changes: list[Change] | None = None) -> OrderStore:
    book: OrderStore = (ExemptionStore if kind == "exemption" else OrderStore)(None, load=False)
    try:
        book.apply(changes if changes is not None else store.changes(0, (kind,)))
    except StoreError as exc:
        raise CliError(str(exc)) from None
    return book


def _operator(args: argparse.Namespace) -> str:
    """Who is acting: --by, else the login behind sudo, else the user."""
    return (getattr(args, "by", None) or os.environ.get("SUDO_USER") or os.environ.get("USER") or getpass.getuser() or "").strip()


def _target(text: str) -> str:
    from beiand.records.domains import DomainError, is_ip_literal, normalise_domain
    from beiand.records.importer import canonical_ip

    t = text.strip()
    if "/" in t:  # a CIDR prefix: every address in it (an order is the only host- or prefix-wide block)
        try:
            net = ipaddress.ip_network(t.strip("[]"))
        except ValueError as exc:
            raise CliError(f"{text!r}: not a CIDR prefix ({exc}); e.g. 198.51.100.0/24") from None
        return str(net.network_address) if net.num_addresses == 1 else str(net)
    if is_ip_literal(t.strip("[]")):
        ip = canonical_ip(t)
        if ip is None:
            raise CliError(f"{text!r}: not an IP address")
        return ip
    try:
        return normalise_domain(t)
    except DomainError as exc:
        raise CliError(f"{text!r}: {exc.reason}") from None


def _kind(args: argparse.Namespace) -> str:
    return "exemption" if getattr(args, "exempt", False) else "order"


def cmd_add(args: argparse.Namespace) -> int:
    kind = _kind(args)
    until = parse_time(args.until, "--until") / 1000 if args.until else 0.0
    if until and until <= time.time():
        raise CliError("--until is in the past")
    target = _target(args.target)
    try:
        entry = set_entry(kind, target, args.order, args.reason or "", until, _operator(args))
    except OrderError as exc:
        raise CliError(str(exc)) from None
    store = decisions(args)
    try:
        version = store.append([entry])
    except StoreError as exc:
        raise CliError(f"{exc} (nothing was written)") from None
    finally:
        store.close()
    o = order_of(target, entry.data, entry.at, entry.actor)
    if kind == "exemption":
        out(f"exemption {o.order}: {o.target} exempt (never blocked by the records' verdict; closure orders and the "
            "regulator's blocks still apply)" + (f" until {fmt_time(int(until * 1000))}" if until else ""))
    else:
        scope = ("all traffic to every address in this prefix" if "/" in o.target else "all traffic to this address") \
            if o.is_ip else "this name and every name below it"
        out(f"closure order {o.order}: {o.target} blocked ({scope})" + (f" until {fmt_time(int(until * 1000))}" if until else ""))
    err(f"decision store {store.url}: version {version}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    kind = _kind(args)
    target = _target(args.target)
    with transaction(args) as tx:  # the write lock: nobody lifts it meanwhile
        book = _book(tx.store, kind, tx.changes(0, (kind,)))
        o = book.orders.get(target)
        if o is None:
            raise CliError(f"{target}: no {book.WHAT} for it")
        tx.append([end_entry(kind, target, _operator(args), args.reason or "")])
    if kind == "exemption":
        out(f"exemption {o.order} for {o.target} lifted (kept in the history with who, when and why)")
    else:
        out(f"closure order {o.order} for {o.target} lifted (kept in the order history with who, when and why)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = decisions(args)
    try:
        st = _book(store, _kind(args))
    finally:
        store.close()
    now = time.time()
    rows = [{"target": o.target, "order": o.order, "reason": o.reason, "created": fmt_time(int(o.created * 1000)),
             "created_by": o.created_by, "until": fmt_time(int(o.until * 1000)) if o.until else "",
             "state": "in force" if o.active(now) else "expired"} for o in st.orders.values()]
    if args.all:
        rows += [{"target": h.order.target, "order": h.order.order, "reason": h.order.reason,
                  "created": fmt_time(int(h.order.created * 1000)), "created_by": h.order.created_by,
                  "until": fmt_time(int(h.order.until * 1000)) if h.order.until else "", "state": "lifted",
                  "lifted_at": fmt_time(int(h.lifted_at * 1000)), "lifted_by": h.lifted_by, "lift_reason": h.lift_reason}
                 for h in st.history]
    if args.json:
        out(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        table([[r["target"], r["order"], r["reason"] or "-", r["created"], r["created_by"] or "-", r["until"] or "-", r["state"],
                f"{r['lifted_at']} by {r['lifted_by'] or '?'}: {r['lift_reason'] or '-'}" if r["state"] == "lifted" else "-"]
               for r in rows], ["target", "order (指令编号)" if _kind(args) == "order" else "reference", "reason", "since",
                                "by", "until", "state", "lifted"])
    return 0


def _by_order(records: Iterable[AccessRecord]) -> dict[str, dict[str, Any]]:
    """Per closure order the log names: hits, first and last, names, servers, actions."""
    by: dict[str, dict[str, Any]] = {}
    for r in records:
        if not r.order:
            continue
        e = by.setdefault(r.order, {"order": r.order, "hits": 0, "first": r.ts_ms, "last": r.ts_ms, "names": set(),
                                    "servers": set(), "actions": {}})
        e["hits"] += 1
        e["first"], e["last"] = min(e["first"], r.ts_ms), max(e["last"], r.ts_ms)
        e["names"].add(r.name or "(ip-only)")
        e["servers"].add(r.server_ip)
        e["actions"][r.action] = e["actions"].get(r.action, 0) + 1
    return by


def cmd_report(args: argparse.Namespace) -> int:
    from beiand.sinks.clickhouse import ClickHouseError

    store = decisions(args)
    try:
        st = _book(store, "order")
    finally:
        store.close()
    cfg = config_from(args)
    src = records_source(args, cfg, "no access log: give --log-dir (or a config with accesslog.directory)")
    since = parse_time(args.since, "--since") if args.since else 0
    try:
        by = _by_order(src.query(Query(since_ms=since)))
    except ClickHouseError as exc:
        raise CliError(unreachable(exc)) from None
    rows = []
    for o in st.orders.values():
        hit: dict[str, Any] | None = by.pop(o.order) if o.order in by else None
        rows.append({"order": o.order, "target": o.target, "reason": o.reason, "in_force": o.active(time.time()),
                     "hits": hit["hits"] if hit else 0, "first_blocked": fmt_time(hit["first"]) if hit else None,
                     "last_blocked": fmt_time(hit["last"]) if hit else None, "names": sorted(hit["names"]) if hit else [],
                     "servers": sorted(hit["servers"]) if hit else [], "actions": hit["actions"] if hit else {}})
    for h in reversed(st.history):  # lifted orders: who lifted them, when and why (501号 art. 16(4))
        hit = by.pop(h.order.order) if h.order.order in by else None
        rows.append({"order": h.order.order, "target": h.order.target, "reason": h.order.reason, "in_force": False,
                     "lifted_at": fmt_time(int(h.lifted_at * 1000)), "lifted_by": h.lifted_by, "lift_reason": h.lift_reason,
                     "hits": hit["hits"] if hit else 0, "first_blocked": fmt_time(hit["first"]) if hit else None,
                     "last_blocked": fmt_time(hit["last"]) if hit else None, "names": sorted(hit["names"]) if hit else [],
                     "servers": sorted(hit["servers"]) if hit else [], "actions": hit["actions"] if hit else {}})
    for e in by.values():  # orders in the log that neither the orders nor the history know
        rows.append({"order": e["order"], "target": "(unknown)", "reason": "", "in_force": False, "hits": e["hits"],
                     "first_blocked": fmt_time(e["first"]), "last_blocked": fmt_time(e["last"]), "names": sorted(e["names"]),
                     "servers": sorted(e["servers"]), "actions": e["actions"]})
    if args.json:
        out(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        out(f"closure-order execution report (关停指令执行情况), records from {src.where}")
        table([[r["order"], r["target"], "yes" if r["in_force"] else f"lifted {r.get('lifted_at') or '-'}", r["hits"],
                r["first_blocked"] or "-",
                r["last_blocked"] or "-", ", ".join(r["names"][:3]) or "-"] for r in rows],
              ["order", "target", "in force", "blocked", "first", "last", "names"])
    return 0


def cmd_close_breaker(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    url = args.url or (f"http://{cfg.server.listen}" if cfg else "http://127.0.0.1:9640")
    token_file = args.token_file or (str(cfg.server.token_file) if cfg and cfg.server.token_file else None)
    if not token_file:
        raise CliError("no token: give --token-file (or server.token_file in the config)")
    token = Path(token_file).read_text().strip()
    req = urllib.request.Request(url.rstrip("/") + "/api/v1/breaker/close", method="POST",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            out(f"circuit breaker: {json.loads(r.read())['breaker']}")
    except OSError as exc:
        raise CliError(f"{url}: {exc}") from None
    return 0


def add_parsers(sub: Any) -> None:
    bp = sub.add_parser("block", help="closure orders from the authority (关停指令): add, list, remove, report")
    bsub = bp.add_subparsers(dest="block_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help=f"(default {DEFAULT_CONFIG})")
        p.add_argument("--state-dir", metavar="DIR", help="the gateway's state directory: its SQLite decision store "
                       "(default: daemon.state_dir and store.url of the config)")
        p.add_argument("--store", metavar="URL", help="the decision store: an SQLite file or postgresql://user@host/db "
                       "(default: store.url of the config)")

    a = bsub.add_parser("add", help="block a name (and the names below it), an address or a CIDR prefix under an order")
    a.add_argument("target", metavar="NAME|IP|CIDR")
    a.add_argument("--by", metavar="WHO", help="who enters the order (default: the login, SUDO_USER first)")
    a.add_argument("--order", required=True, help="the order's number or reference (logged with every action)")
    a.add_argument("--reason", default="")
    a.add_argument("--until", metavar="TIME", help="lift it at this time (default: until removed)")
    common(a)
    a.set_defaults(func=cmd_add)
    ls = bsub.add_parser("list", help="orders in force and expired")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--all", action="store_true", help="also the lifted orders, with who lifted them, when and why")
    common(ls)
    ls.set_defaults(func=cmd_list)
    rm = bsub.add_parser("remove", help="lift an order (it stays in the history with who, when and why)")
    rm.add_argument("target", metavar="NAME|IP|CIDR")
    rm.add_argument("--reason", default="", help="why it is lifted (e.g. the authority's lifting notice)")
    rm.add_argument("--by", metavar="WHO", help="who lifts it (default: the login, SUDO_USER first)")
    common(rm)
    rm.set_defaults(func=cmd_remove)
    rp = bsub.add_parser("report", help="execution report: what was blocked under each order, when, how often")
    rp.add_argument("--since", metavar="TIME")
    rp.add_argument("--log-dir", metavar="DIR", help="this gateway's log (default: the fleet's copy in ClickHouse when "
                    "[accesslog.clickhouse] url is configured, else accesslog.directory)")
    store_options(rp)
    rp.add_argument("--json", action="store_true")
    common(rp)
    rp.set_defaults(func=cmd_report)

    xp = sub.add_parser("exempt", help="the operator's exemptions (豁免): a name, address or prefix never blocked by the "
                        "records' verdict (closure orders and the regulator's blocks still apply)")
    xsub = xp.add_subparsers(dest="exempt_command", required=True)
    a = xsub.add_parser("add", help="exempt a name (and the names below it), an address or a CIDR prefix")
    a.add_argument("target", metavar="NAME|IP|CIDR")
    a.add_argument("--by", metavar="WHO", help="who enters it (default: the login, SUDO_USER first)")
    a.add_argument("--order", required=True, metavar="REF", help="its reference (a ticket, the approval), logged with every "
                   "decision it makes")
    a.add_argument("--reason", default="")
    a.add_argument("--until", metavar="TIME", help="end it at this time (default: until removed)")
    common(a)
    a.set_defaults(func=cmd_add, exempt=True)
    ls = xsub.add_parser("list", help="exemptions in force and expired")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--all", action="store_true", help="also the lifted ones, with who lifted them, when and why")
    common(ls)
    ls.set_defaults(func=cmd_list, exempt=True)
    rm = xsub.add_parser("remove", help="lift an exemption (it stays in the history with who, when and why)")
    rm.add_argument("target", metavar="NAME|IP|CIDR")
    rm.add_argument("--reason", default="")
    rm.add_argument("--by", metavar="WHO", help="who lifts it (default: the login, SUDO_USER first)")
    common(rm)
    rm.set_defaults(func=cmd_remove, exempt=True)

    ep = sub.add_parser("enforce", help="enforcement controls")
    esub = ep.add_subparsers(dest="enforce_command", required=True)
    cb = esub.add_parser("close-breaker", help="close the circuit breaker: enforcement resumes")
    cb.add_argument("--config", metavar="FILE")
    cb.add_argument("--url", help="the daemon's server (default: server.listen of the config)")
    cb.add_argument("--token-file", help="(default: server.token_file of the config)")
    cb.set_defaults(func=cmd_close_breaker)
