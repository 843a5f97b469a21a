"""``beiand lab`` (a namespaced lab with real traffic) and ``beiand demo`` (the shipped samples replayed).

The only CLI module that imports ``beiand.lab``, and only when ``beiand lab`` or ``beiand demo`` runs (DESIGN.md).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from typing import Any

from beiand.cli.common import err, out

# What `beiand lab` imports beyond a plain install: the `lab` extra.
LAB_MODULES = ("pyroute2", "aioquic", "dns")


def cmd_lab(args: argparse.Namespace, run: Callable[[Sequence[str]], int]) -> int:
    import importlib.util

    missing = [m for m in LAB_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        err(f"beiand lab needs the [lab] extra ({', '.join(missing)} missing): pip install 'beiand[lab]'")
        return 2
    from beiand.lab import labdemo

    return labdemo.main(args.workdir, args.keep, run=run)



def cmd_demo(args: argparse.Namespace, run: Callable[[Sequence[str]], int]) -> int:
    """The demo runs other commands (``records``, ``replay``) through ``run``, the CLI's ``main``."""
    import tempfile

    from beiand.lab.demo import build
    from beiand.records.generate import OUR_PROVIDER

    wd = args.workdir or tempfile.mkdtemp(prefix="beiand-demo-")
    files = build(wd)
    out(f"beiand demo: sample records, inventory and capture in {wd}\n")
    out("$ beiand records check records.csv")
    run(["records", "check", files["records"]])
    out("\n$ beiand records lookup www.example.com.cn shop.example.net 198.51.100.30 --provider …")
    run(["records", "lookup", "www.example.com.cn", "shop.example.net", "198.51.100.30", "--records", files["records"],
          "--inventory", files["inventory"], "--provider", OUR_PROVIDER])
    out("\n$ beiand replay demo.pcap --records records.csv --inventory inventory.csv --provider …")
    rc = run(["replay", files["pcap"], "--records", files["records"], "--inventory", files["inventory"], "--provider", OUR_PROVIDER])
    out(f"\n(replay exit code {rc}: 1 means unfiled, mismatched or inactive services were found)")
    return 0


def add_parsers(sub: Any, run: Callable[[Sequence[str]], int]) -> None:
    lab = sub.add_parser("lab", help="bring up a lab on this machine (namespaces, servers, traffic) and run the daemon in it")
    lab.add_argument("--workdir", help="where to keep the config, records, log (default: a new temporary directory)")
    lab.add_argument("--keep", action="store_true", help="keep running until Ctrl-C after the traffic")
    lab.set_defaults(func=functools.partial(cmd_lab, run=run))


def add_demo_parser(sub: Any, run: Callable[[Sequence[str]], int]) -> None:
    demo = sub.add_parser("demo", help="replay the shipped sample records, inventory and capture through the pipeline")
    demo.add_argument("--workdir", help="where to write the samples (default: a new temporary directory)")
    demo.set_defaults(func=functools.partial(cmd_demo, run=run))
