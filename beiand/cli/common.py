"""Helpers shared by the CLI's subcommands: errors for people, tables, loading records."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beiand.errors import BeiandError
from beiand.model import Mode
from beiand.policy import Decider, Policy, PolicyConfig, PolicyError
from beiand.policy.inventory import Inventory, InventoryError, load_inventory
from beiand.records import ImportRefused, build_index, load_files, normalise_domain
from beiand.records.domains import DomainError
from beiand.records.index import RecordIndex
from beiand.runtime.settings import Config, ConfigError, load_config
from beiand.runtime.wiring import StateError, decider, policy_config

DEFAULT_CONFIG = "/etc/beiand/beiand.toml"


class CliError(BeiandError):
    """A problem the user can fix; printed without a traceback, exit 2."""


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def err(line: str) -> None:
    sys.stderr.write(line + "\n")


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(width(r[i]) for r in cells) for i in range(len(header))]
    for n, r in enumerate(cells):
        out("  ".join(c + " " * (w - width(c)) for c, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            out("  ".join("-" * w for w in widths))


def width(s: str) -> int:
    # CJK characters take two terminal columns.
    return sum(2 if "\u2e80" <= ch <= "\uffef" else 1 for ch in s)


# -- records ------------------------------------------------------------------------------


def load_records(paths: Sequence[str], strict: bool = False, quiet: bool = False,
                 status_map: Mapping[str, str] | None = None) -> RecordIndex:
    try:
        result = load_files(paths, strict=strict, status_map=status_map)
        index = build_index(result, loaded_at=time.time())
    except ImportRefused as exc:
        raise CliError(f"records refused: {exc}") from None
    except ValueError as exc:  # a bad status map
        raise CliError(str(exc)) from None
    if not quiet:
        for issue in result.errors[:20]:
            err(f"warning: skipped {issue}")
        if len(result.errors) > 20:
            err(f"warning: … and {len(result.errors) - 20} more skipped row(s); `beiand records check` lists them all")
        if index.unmapped:
            err(f"warning: {index.unmapped} filing(s) with a status word nobody mapped: kept in force; "
                "map them with records.status_map (`beiand records check` lists them)")
    return index


def parse_status_map(items: Sequence[str] | None) -> dict[str, str]:
    """``--status-map WORD=STATUS`` options as a map (checked when the records load)."""
    out: dict[str, str] = {}
    for item in items or ():
        word, sep, status = item.partition("=")
        if not sep:
            raise CliError(f"--status-map {item!r}: expected WORD=STATUS, e.g. 待复核=active")
        out[word.strip()] = status.strip()
    return out


@dataclass(frozen=True)
class PolicySetup:
    """What a command that decides needs, built as the daemon builds it (issue 13: one answer everywhere)."""

    index: RecordIndex
    inventory: Inventory
    policy: Policy
    config: Config | None
    inventory_given: bool
    # The policy with the overlays (closure orders, the regulator's commands, grace) read from the
    # state directory: the daemon's own decider (issue 26: replay and lookups decide as it did).
    decider: Decider | None = None
    # The register version the records and inventory are in force at (``--at``; 0: files as given)
    register_version: int = 0


def policy_setup(args: argparse.Namespace, quiet: bool = False) -> PolicySetup:
    """Records, inventory and policy from ``--config`` (default /etc/beiand/beiand.toml when no
    ``--records``), with the command line's flags over the config's values."""
    cfg: Config | None = None
    config_path = getattr(args, "config", None)
    if config_path or not args.records:
        path = config_path or DEFAULT_CONFIG
        if config_path and not os.path.exists(path):
            raise CliError(f"--config {path}: no such file")
        if os.path.exists(path):
            try:
                cfg = load_config(path)
            except ConfigError as exc:
                raise CliError(str(exc)) from None
    at = getattr(args, "register_at", None)
    held = register_inputs(args, cfg, at) if at is not None and not args.records else None
    inv_path = args.inventory or (str(cfg.inventory.file) if cfg and cfg.inventory.file else None)
    register_version = 0
    if held is not None:
        index, held_inventory, register_version = held
        inventory = held_inventory if held_inventory is not None and not args.inventory else inventory_from(inv_path)
        inv_path = inv_path or ("register" if held_inventory is not None else None)
    else:
        records = args.records or ([str(p) for p in cfg.records.files] if cfg else [])
        if not records:
            raise CliError("no records: give --records FILE or --config FILE (or --at TIME: the register in the decision store)")
        status_map = {**(cfg.records.status_map if cfg else {}), **parse_status_map(getattr(args, "status_map", None))}
        index = load_records(records, strict=cfg.records.strict if cfg else False, quiet=quiet, status_map=status_map)
        inventory = inventory_from(inv_path)
    try:
        base = policy_config(cfg) if cfg else PolicyConfig()
        providers = [p for p in (getattr(args, "provider", None) or ()) if p.strip()]
        if providers:
            base = dataclasses.replace(base, provider=providers[0], providers=tuple(providers[1:]))
        over: dict[str, object] = {}
        allow, mode, grace = getattr(args, "allow", None), getattr(args, "mode", None), getattr(args, "grace_days", None)
        if allow:
            over["allow_names"] = base.allow_names | frozenset(normalise_domain(n) for n in allow)
        if mode is not None:
            over["default_mode"] = Mode(mode)
        if grace is not None:
            over["access_pending_grace_days"] = grace
        pcfg = dataclasses.replace(base, **over) if over else base  # type: ignore[arg-type]
    except (PolicyError, DomainError, ValueError) as exc:
        raise CliError(str(exc)) from None
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    policy = Policy(index, inventory, pcfg)
    return PolicySetup(index, inventory, policy, cfg, inv_path is not None, overlays(args, cfg, policy), register_version)


def _utc(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def register_inputs(args: argparse.Namespace, cfg: Config | None,
                    at: float) -> tuple[RecordIndex, Inventory | None, int] | None:
    """The records (and the inventory, when the register holds one) in force at ``at`` from the
    decision store's register (``--at``: judge as the gateway judged then); None when the store
    keeps no register (the files are read as before); a CliError naming the first version's time
    when ``at`` is before it. ``args.register_query``
    (names, ips): only the filings that can decide those (a lookup), else the whole version. With
    the register version they are in force at."""
    from beiand.runtime.decisions import open_decisions
    from beiand.runtime.register import lookup_rows, state_at
    from beiand.store import StoreError
    from beiand.store.connect import is_postgres, sqlite_path

    base = cfg or Config()
    state = getattr(args, "state_dir", None)
    if state:
        base = dataclasses.replace(base, daemon=dataclasses.replace(base.daemon, state_dir=Path(state)),
                                   store=dataclasses.replace(base.store, url=""))
    if getattr(args, "store", None):
        base = dataclasses.replace(base, store=dataclasses.replace(base.store, url=args.store))
    if not is_postgres(base.store.url) and not sqlite_path(base.store.url, base.daemon.state_dir).exists():
        return None
    from beiand.store import register as reg

    try:
        store = open_decisions(base, migrate=False, import_files=False, create=False)
        try:
            query = getattr(args, "register_query", None)
            held, version = lookup_rows(store, query[0], query[1], at) if query is not None else state_at(store, at)
            published = reg.versions(store, "records") if held.records is None else []
        finally:
            store.close()
    except StoreError as exc:
        raise CliError(f"--at: {exc}") from None
    if held.records is None:
        if not published:
            return None  # the store keeps no register: the files, as before
        # judging a past time with today's files would answer for a register that was not in force
        first = published[-1]
        raise CliError(f"--at {_utc(at)}: no register version of the records was in force then; the first version "
                       f"({first.version}) was published at {_utc(first.at)}: give a later --at, or --records FILE")
    from beiand.policy.register import INVENTORY

    err(f"records: register version {held.records.version} (in force at {at:.0f}: version {version})")
    return held.index(), held.inventory() if INVENTORY in held.rows else None, version


def overlays(args: argparse.Namespace, cfg: Config | None, policy: Policy) -> Decider:
    """The decider of a command: the config's overlays from ``--state-dir`` (default the config's
    ``daemon.state_dir``), as the daemon decides; none with ``--no-overlays``, or with neither a
    config nor ``--state-dir`` (the records alone)."""
    state = getattr(args, "state_dir", None)
    store = getattr(args, "store", None)
    if getattr(args, "no_overlays", False) or (cfg is None and not state and not store):
        return Decider(policy)
    if store:  # the orders and commands of that store (a fleet's PostgreSQL), as its gateways decide
        base = cfg if cfg is not None else Config()
        base = dataclasses.replace(base, store=dataclasses.replace(base.store, url=store))
        if state:
            base = dataclasses.replace(base, daemon=dataclasses.replace(base.daemon, state_dir=Path(state)))
        try:
            return decider(base, policy)
        except (StateError, OSError) as exc:
            raise CliError(f"--store: {exc}") from None
    try:
        return decider(cfg if cfg is not None else Config(), policy, Path(state) if state else None)
    except (StateError, OSError) as exc:
        raise CliError(f"{'--state-dir ' + state if state else 'daemon.state_dir'}: {exc} (--state-dir DIR reads another "
                       "state directory, --no-overlays decides from the records alone)") from None


def inventory_from(path: str | None) -> Inventory:
    if not path:
        return Inventory([])
    try:
        return load_inventory(path)
    except InventoryError as exc:
        raise CliError("inventory invalid:\n  " + "\n  ".join(exc.problems)) from None


def policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help=f"decide as the daemon with this config decides (default {DEFAULT_CONFIG} when no --records); "
                        "the flags below override its values")
    p.add_argument("--records", action="append", metavar="FILE",
                   help="filing export (CSV, JSON, JSONL, XLSX); repeat for several (default: records.files of the config)")
    p.add_argument("--inventory", metavar="FILE", help="hosted prefixes (CSV or TOML) (default: inventory.file of the config)")
    p.add_argument("--provider", action="append", metavar="NAME",
                   help="this provider's name as filings spell their 接入商 (access provider); repeat for each legal entity")
    p.add_argument("--mode", choices=[m.value for m in Mode], help="default mode for prefixes without one (default monitor)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="decide with the overlays kept there, as the daemon does: closure orders (orders.json) and, with "
                        "[isms] on, the regulator's commands (isms/commands.json), each at the observation's time "
                        "(default: daemon.state_dir of the config)")
    p.add_argument("--store", metavar="URL", help="the decision store (an SQLite file or postgresql://user@host/db): its "
                   "orders and commands, and with --at its register's records and inventory (default: store.url of the config)")
    p.add_argument("--no-overlays", action="store_true", help="decide from the records alone (no orders, no commands, no grace)")
    p.add_argument("--allow", action="append", metavar="NAME", help="exempt name (allowlist)")
    p.add_argument("--grace-days", type=int, help="grace for access-pending (接入审核中) filings, at most 45 days (default 30)")
    p.add_argument("--status-map", action="append", metavar="WORD=STATUS",
                   help="a status word of the export mapped to active, cancelled, revoked, access-pending or under-review")


# What makes a spreadsheet run a cell instead of showing it (OWASP, "CSV Injection"): the reports'
# values come from the authority's files, the inventory and the operator, none of them code.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(row: Iterable[object]) -> list[object]:
    """A row for a CSV report: a value starting like a formula behind an apostrophe (Excel then shows
    it as text); "-" alone (nothing yet) as it is."""
    return ["'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) and v != "-" else v for v in row]


def sheet_append(ws: Any, row: Iterable[object]) -> None:
    """One row appended to an openpyxl sheet, every text a string cell: openpyxl makes a formula of
    any text starting with "=" (a string cell is shown, never run, so nothing else needs a mark)."""
    ws.append(list(row))
    for cell in ws[ws.max_row]:
        if cell.data_type == "f":
            cell.data_type = "s"


def write_report(rows: Sequence[Sequence[object]], columns: Sequence[str], fmt: str, output: str | None, sheet: str,
                 noun: str) -> None:
    """A report for the authority (处理结果, 备案核查处理情况) as JSON, CSV or XLSX, with Chinese headers:
    CSV to ``output`` with a BOM (Excel then reads the headers right) or to standard output; XLSX
    needs ``output``. ``noun``: what a row is, for the line that says what was written. Text is
    never written as a formula (:func:`csv_text`, :func:`sheet_append`)."""
    if fmt == "json":
        out(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], ensure_ascii=False, indent=2))
    elif fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(columns)
        w.writerows(csv_text(r) for r in rows)
        if output:
            Path(output).write_text(buf.getvalue(), encoding="utf-8-sig")
            err(f"{output}: {len(rows)} {noun}")
        else:
            out(buf.getvalue().rstrip("\n"))
    else:
        if not output:
            raise CliError(f"--format {fmt}: give --output FILE")
        from openpyxl import Workbook

        wb = Workbook()
        ws = wb.active
        assert ws is not None
        ws.title = sheet
        ws.append(list(columns))
        for r in rows:
            sheet_append(ws, r)
        wb.save(Path(output))
        err(f"{output}: {len(rows)} {noun}")
