"""Copy the operations artefacts into the wheel as package data (``beiand/share/``).

They live at the top level of the checkout (``systemd/``, ``rules/``, ``dashboards/``,
``examples/``, ``LICENSE``), where the tests and the docs use them; ``beiand install-files``
lays them out on a gateway from the installed package. An editable install reads them from the
checkout instead (``beiand.share``), so nothing is duplicated in the tree.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# source (relative to the checkout) → destination under beiand/share/
SHARE = {
    "LICENSE": "LICENSE",
    "systemd/beiand.service": "systemd/beiand.service",
    "systemd/beiand-audit.service": "systemd/beiand-audit.service",
    "systemd/beiand-audit.timer": "systemd/beiand-audit.timer",
    "rules/beiand.rules.yml": "rules/beiand.rules.yml",
    "rules/beiand.rules.test.yml": "rules/beiand.rules.test.yml",
    "dashboards/beiand.json": "dashboards/beiand.json",
    "examples/beiand.toml": "examples/beiand.toml",
    "examples/records.csv": "examples/records.csv",
    "examples/inventory.csv": "examples/inventory.csv",
}


class BuildPyWithShare(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "beiand" / "share"
        for src, rel in SHARE.items():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HERE / src, target)


setup(cmdclass={"build_py": BuildPyWithShare})
