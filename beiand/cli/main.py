"""The ``beiand`` command line.

Subcommands: ``run`` (the daemon), ``check-config``, ``logs``, ``block``, ``exempt``, ``store``, ``fleet``, ``enforce``, ``audit``,
``records check|lookup|holder|check-access|ip-report``, ``replay``, ``lab``, ``demo``, ``install-files``; ``--version``.
Exit codes: 0 ok, 1 findings or bad rows, 2 could not run (bad arguments or unreadable input).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from beiand.cli import audit, block, cases, check_config, fleet, install_files, isms, lab, logs, records, replay, run
from beiand.cli.common import CliError, err, out, policy_args
from beiand.sinks import OutputClosed

# -- parser -------------------------------------------------------------------------------


def version_line() -> str:
    """The package version (from its metadata), and the Python and kernel it runs on."""
    import platform

    from beiand import __version__

    return f"beiand {__version__} (Python {platform.python_version()} {sys.executable}; kernel {platform.system()} {platform.release()})"


def version_text() -> str:
    """``--version``: the version line, then which hot path runs (compiled twin or pure Python, issue 21)."""
    from beiand import extensions

    return version_line() + "\n" + extensions.summary()


class _Version(argparse.Action):
    """argparse's own version action wraps the line at the terminal width."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        out(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="beiand", description="先备案后接入: filing (备案) enforcement for access providers")
    ap.add_argument("--version", action=_Version, help="print the version, Python, kernel and hot path (compiled or pure), and exit")
    sub = ap.add_subparsers(dest="command", required=True)
    # One module per command group, in the order of `beiand --help`.
    records.add_parsers(sub)
    replay.add_parsers(sub, policy_args)
    logs.add_parsers(sub)
    block.add_parsers(sub)
    fleet.add_parsers(sub)
    audit.add_parsers(sub)
    isms.add_parsers(sub)
    cases.add_parsers(sub)
    run.add_parsers(sub)
    lab.add_parsers(sub, run=main)
    check_config.add_parsers(sub)
    lab.add_demo_parser(sub, run=main)
    install_files.add_parsers(sub)
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
