"""An overlay's source file (``orders.json``, ``isms/commands.json``): which version of it was read.

Every worker asks about four times a second whether the file changed. The modification time alone
misses a change: two writes within the file system's timestamp granularity, or a file restored
with its old time (``cp -p``, a backup, ``touch -r``). Writers replace the file atomically (a new
inode), so a version is the triple (inode, mtime in ns, size); any change of it is read again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple


class Version(NamedTuple):
    inode: int
    mtime_ns: int
    size: int


def version(path: Path) -> Version | None:
    """The file's version now; None when there is no file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return Version(st.st_ino, st.st_mtime_ns, st.st_size)


# Bumped whenever an overlay's rules change in memory (a reload, a fold, a local add): the decider
# forgets the names it remembered as matched by no overlay (``overlays.Decider``).
CHANGES = [0]


def changed() -> None:
    CHANGES[0] += 1

