"""``beiand demo``: a filing export, an inventory and a capture, replayed.

Runs the same pipeline as the daemon on an embedded default, with nothing to set up. The
samples are package data (``beiand/demo_data/``), generated ahead of time by
``beiand.lab.demo_fixtures`` (which needs the ``[lab]`` extra), so a plain ``pip install``
of the wheel runs the demo: no traffic builders at run time.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

SAMPLES = {"records": "records.csv", "inventory": "inventory.csv", "pcap": "demo.pcap"}


def build(workdir: str | Path) -> dict[str, str]:
    """Copy the shipped samples into ``workdir``; their paths by role (records, inventory, pcap)."""
    d = Path(workdir)
    d.mkdir(parents=True, exist_ok=True)
    src = resources.files("beiand") / "demo_data"
    files = {}
    for role, name in SAMPLES.items():
        with resources.as_file(src / name) as p:
            shutil.copyfile(p, d / name)
        files[role] = str(d / name)
    return files
