"""``beiand install-files``: lay the units, rules, dashboard and example config out (docs/install.md)."""

from __future__ import annotations

import argparse
from typing import Any

from beiand.cli.common import CliError, out


def cmd_install_files(args: argparse.Namespace) -> int:
    from beiand.runtime.installfiles import InstallFilesError, install_files

    try:
        steps = install_files(args.prefix, dry_run=args.dry_run)
    except (InstallFilesError, OSError) as exc:
        raise CliError(str(exc)) from None
    for s in steps:
        out(f"{s.action:13} {s.path}" + (f"  ({s.note})" if s.note else ""))
    return 0


def add_parsers(sub: Any) -> None:
    inst = sub.add_parser("install-files", help="lay the units, rules, dashboard and example config out (docs/install.md)")
    inst.add_argument("--prefix", default="/", help="root to install under (default: /)")
    inst.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    inst.set_defaults(func=cmd_install_files)
