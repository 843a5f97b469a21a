"""Helpers shared by the CLI's subcommands: errors for people, tables, loading records."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from beiand.inventory import Inventory, InventoryError, load_inventory
from beiand.model import Mode
from beiand.policy import Policy, PolicyConfig, PolicyError
from beiand.records import ImportRefused, build_index, load_files, normalise_domain
from beiand.records.domains import DomainError
from beiand.records.index import RecordIndex


class CliError(Exception):
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


def load_records(paths: Sequence[str], strict: bool = False, quiet: bool = False) -> RecordIndex:
    try:
        result = load_files(paths, strict=strict)
        index = build_index(result, loaded_at=time.time())
    except ImportRefused as exc:
        raise CliError(f"records refused: {exc}") from None
    if not quiet:
        for issue in result.errors[:20]:
            err(f"warning: skipped {issue}")
        if len(result.errors) > 20:
            err(f"warning: … and {len(result.errors) - 20} more skipped row(s); `beiand records check` lists them all")
    return index


def policy_from_args(args: argparse.Namespace, index: RecordIndex, inventory: Inventory) -> Policy:
    try:
        cfg = PolicyConfig(
            provider=args.provider or "",
            allow_names=frozenset(normalise_domain(n) for n in args.allow or ()),
            default_mode=Mode(args.mode),
            access_pending_grace_days=args.grace_days,
        )
    except (PolicyError, DomainError, ValueError) as exc:
        raise CliError(str(exc)) from None
    return Policy(index, inventory, cfg)


def inventory_from(path: str | None) -> Inventory:
    if not path:
        return Inventory([])
    try:
        return load_inventory(path)
    except InventoryError as exc:
        raise CliError("inventory invalid:\n  " + "\n  ".join(exc.problems)) from None


def policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", action="append", required=True, metavar="FILE",
                   help="filing export (CSV, JSON, JSONL, XLSX); repeat for several")
    p.add_argument("--inventory", metavar="FILE", help="hosted prefixes (CSV or TOML)")
    p.add_argument("--provider", metavar="NAME", help="this provider's name as filings spell their 接入商 (access provider)")
    p.add_argument("--mode", choices=[m.value for m in Mode], default="monitor", help="default mode for prefixes without one")
    p.add_argument("--allow", action="append", metavar="NAME", help="exempt name (allowlist)")
    p.add_argument("--grace-days", type=int, default=30, help="grace for access-pending (接入审核中) filings, at most 45 days")
