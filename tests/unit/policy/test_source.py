"""An overlay's source file version: inode, mtime in ns and size (beiand/policy/source.py)."""

from __future__ import annotations

import os
from pathlib import Path

from beiand.policy.source import version


def test_a_version_tells_every_change_the_mtime_alone_misses(tmp_path: Path) -> None:
    p = tmp_path / "orders.json"
    assert version(p) is None
    p.write_text("{}")
    v1 = version(p)
    assert v1 is not None and version(p) == v1
    st = p.stat()
    p.write_text("{ }")  # same inode, another size, its old time restored
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert version(p) != v1
    v2 = version(p)
    tmp = tmp_path / "orders.tmp"
    tmp.write_text("{ }")  # an atomic replace, same size and time: another inode
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, p)
    assert version(p) != v2
