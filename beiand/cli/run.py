"""``beiand run``: the live daemon (the systemd service)."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_run(args: argparse.Namespace) -> int:
    # Imported here: the daemon's dependencies (aiohttp, the capture) are not needed by other commands.
    from beiand.runtime.supervisor import run

    return run(args.config, args.log_format)


def add_parsers(sub: Any) -> None:
    rn = sub.add_parser("run", help="the live daemon (systemd service): capture, decide, log, serve /metrics")
    rn.add_argument("--config", default="/etc/beiand/beiand.toml")
    rn.add_argument("--log-format", choices=("auto", "text", "journal", "json"), default="auto",
                    help="auto (default): journal (syslog priority prefix, no timestamp) under systemd, else text; json: one object a line")
    rn.set_defaults(func=cmd_run)
