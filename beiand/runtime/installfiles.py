"""``beiand install-files``: lay the shipped operations artefacts out on a gateway.

The wheel carries the systemd units, the Prometheus rules, the Grafana dashboard, the example
config (with sample records and inventory) and the licence as package data (``beiand/share/``,
copied in by ``setup.py``); a source checkout has them at its top level. This puts them where
``docs/install.md`` says:

- units → ``etc/systemd/system/`` (replaced on upgrade: local changes belong in drop-ins)
- rules, dashboard, examples, LICENSE → ``usr/local/share/beiand/`` (replaced on upgrade)
- the example config → ``etc/beiand/beiand.toml``, only when there is none: an existing config
  is never overwritten, whatever it holds
"""

from __future__ import annotations

import grp
import os
from dataclasses import dataclass
from pathlib import Path

from beiand.errors import BeiandError

UNITS = ("beiand.service", "beiand-audit.service", "beiand-audit.timer", "beiand-isms.service")
SHARED = ("LICENSE", "rules/beiand.rules.yml", "rules/beiand.rules.test.yml", "dashboards/beiand.json",
          "examples/beiand.toml", "examples/records.csv", "examples/inventory.csv")
SHARE_DIR = "usr/local/share/beiand"
CONFIG = "etc/beiand/beiand.toml"
GROUP = "beiand"


class InstallFilesError(BeiandError):
    pass


@dataclass(frozen=True)
class Step:
    path: Path
    action: str  # installed | updated | unchanged | kept (an existing config) | would-install …
    note: str = ""


def share_root() -> Path:
    """Where the artefacts are: the installed package's ``share/``, else the source checkout."""
    here = Path(__file__).resolve().parent.parent  # the beiand package (this module is beiand/runtime/)
    for root in (here / "share", here.parent):
        if (root / "systemd" / "beiand.service").is_file() and (root / "LICENSE").is_file():
            return root
    raise InstallFilesError(f"no shipped files under {here / 'share'} (a broken install? reinstall the wheel)")


def _group_id() -> int | None:
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        return None


def _copy(src: Path, dest: Path, mode: int, dry_run: bool) -> str:
    new = src.read_bytes()
    old = dest.read_bytes() if dest.is_file() else None
    if old == new:
        return "unchanged"
    if dry_run:
        return "would-install" if old is None else "would-update"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(new)
    os.chmod(tmp, mode)
    os.replace(tmp, dest)
    return "installed" if old is None else "updated"


def install_files(prefix: str | Path = "/", dry_run: bool = False) -> list[Step]:
    src = share_root()
    root = Path(prefix)
    steps: list[Step] = []
    for unit in UNITS:
        dest = root / "etc/systemd/system" / unit
        steps.append(Step(dest, _copy(src / "systemd" / unit, dest, 0o644, dry_run)))
    for rel in SHARED:
        dest = root / SHARE_DIR / rel
        steps.append(Step(dest, _copy(src / rel, dest, 0o644, dry_run)))
    # The config: 0640 root:beiand in a 0750 directory (it names the files holding secrets).
    # Never overwritten: an operator's edits win over any newer example.
    conf = root / CONFIG
    if conf.exists():
        steps.append(Step(conf, "kept", f"existing config left alone; the current example is {root / SHARE_DIR / 'examples/beiand.toml'}"))
    elif dry_run:
        steps.append(Step(conf, "would-install", "from the example"))
    else:
        gid = _group_id() if os.geteuid() == 0 else None
        if not conf.parent.exists():
            conf.parent.mkdir(parents=True)
            os.chmod(conf.parent, 0o750)
            if gid is not None:
                os.chown(conf.parent, 0, gid)
        # The example names records.csv and inventory.csv next to it; those are the operator's own.
        text = (src / "examples/beiand.toml").read_text(encoding="utf-8")
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o640)  # whatever the umask
            f.write(text)
        if gid is not None:
            os.chown(conf, 0, gid)
        steps.append(Step(conf, "installed", "from the example: set capture.interfaces, records, inventory"
                          + ("" if gid is not None or os.geteuid() != 0 else f"; no group {GROUP!r} yet: chgrp it once it exists")))
    return steps
