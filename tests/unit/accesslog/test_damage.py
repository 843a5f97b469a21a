"""Damage before the last durable commit is set aside and reported, never cut (issue 14).

A flipped byte in a committed frame used to be taken for a torn tail at start: every record
after it was cut and ``verify`` then said ok.
"""

from __future__ import annotations

import random
from pathlib import Path

from beiand.accesslog import AccessLog, LogConfig, Query, query, verify
from beiand.accesslog.format import FRAME, decode, read_open
from tests.unit.accesslog.helpers import rec


def fill(d: Path, n: int = 2000, per_frame: int = 100) -> list:
    """``n`` records in frames of ``per_frame``, every one flushed (fsynced, acknowledged)."""
    out = []
    with AccessLog(LogConfig(d, commit_records=per_frame)) as log:
        for i in range(n):
            r = rec(i)
            log.append(r)
            out.append(r)
            if (i + 1) % per_frame == 0:
                log.flush()
    return out


def open_partition(d: Path) -> Path:
    (p,) = d.glob("*/w0.open")
    return p


def flip(p: Path, offset: int, mask: int = 0x20) -> None:
    data = bytearray(p.read_bytes())
    data[offset] ^= mask
    p.write_bytes(bytes(data))


def restart(d: Path) -> AccessLog:
    log = AccessLog(LogConfig(d), start=False)
    log.close()
    return log


def test_a_flipped_byte_mid_partition_is_not_cut_as_a_torn_tail(tmp_path: Path) -> None:
    recs = fill(tmp_path)
    p = open_partition(tmp_path)
    flip(p, p.stat().st_size // 2)
    restart(tmp_path)
    got = list(query(tmp_path, Query()))
    # At most the damaged frame (100 records) is unreadable; everything else is still returned.
    assert len(got) >= len(recs) - 100, f"{len(recs) - len(got)} committed record(s) gone"
    assert set(got) <= set(recs)
    rep = verify(tmp_path)
    assert not rep.ok
    assert any("damaged" in m for m in rep.all_problems()), rep.all_problems()


def test_the_damaged_partition_is_kept_whole(tmp_path: Path) -> None:
    fill(tmp_path)
    p = open_partition(tmp_path)
    flip(p, p.stat().st_size // 3)
    before = p.read_bytes()
    restart(tmp_path)
    kept = [f for f in tmp_path.glob("*/*") if f.read_bytes() == before]
    assert kept, "the damaged partition was changed or removed"


def copy_tree(src: Path, dst: Path) -> None:
    for f in sorted(src.rglob("*")):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())


def test_flipped_bytes_at_random_offsets(tmp_path: Path) -> None:
    """The bar of issue 14: a byte flipped at a random offset (one per trial), then a restart:
    every record outside the damaged frame is still returned and verify names the damage."""
    base = tmp_path / "base"
    recs = fill(base, n=600, per_frame=50)
    part = read_open(open_partition(base))
    header_end = part.frames[0].offset
    rng = random.Random(14)
    regions: dict[str, int] = {}
    for t in range(200):
        d = tmp_path / f"t{t}"
        copy_tree(base, d)
        off = rng.randrange(part.size)
        flip(open_partition(d), off, rng.randrange(1, 256))
        restart(d)
        hit = next((fr for fr in part.frames if fr.offset <= off < fr.end), None)
        lost = set() if hit is None else {decode(ln) for ln in hit.payload.splitlines()}
        region = "header line" if hit is None else "frame header" if off < hit.offset + FRAME.size else "payload"
        regions[region] = regions.get(region, 0) + 1
        got = list(query(d, Query()))
        assert got == [r for r in recs if r not in lost], f"offset {off} ({region}): records outside the damaged frame lost"
        rep = verify(d)
        assert not rep.ok, f"offset {off} ({region}): verify says ok"
        damage = [m for m in rep.all_problems() if "damaged" in m]
        assert damage, (off, rep.all_problems())
        if hit is not None:
            assert f"{hit.offset}-{hit.end}" in damage[0], (off, hit.offset, damage)
        else:
            assert off < header_end
    print(f"200 flipped bytes: {regions}; every record outside the damaged frame returned, verify failed naming the damage")
