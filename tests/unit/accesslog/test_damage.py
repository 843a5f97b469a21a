"""Damage before the last durable commit is set aside and reported, never cut (issue 14).

A flipped byte in a committed frame used to be taken for a torn tail at start: every record
after it was cut and ``verify`` then said ok.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

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
            assert f"{hit.offset} to {hit.end - 1}" in damage[0], (off, hit.offset, damage)
        else:
            assert off < header_end
    print(f"200 flipped bytes: {regions}; every record outside the damaged frame returned, verify failed naming the damage")


def test_every_byte_of_the_header_line_and_of_a_frame_header(tmp_path: Path) -> None:
    """The regions 200 random offsets rarely hit: each byte flipped in turn."""
    base = tmp_path / "base"
    recs = fill(base, n=150, per_frame=50)
    part = read_open(open_partition(base))
    second = part.frames[1]
    lost_second = [decode(ln) for ln in second.payload.splitlines()]
    offsets = [*range(part.frames[0].offset), *range(second.offset, second.offset + FRAME.size)]
    for off in offsets:
        d = tmp_path / f"o{off}"
        copy_tree(base, d)
        flip(open_partition(d), off, 0x04)
        restart(d)
        expect = recs if off < part.frames[0].offset else [r for r in recs if r not in lost_second]
        assert list(query(d, Query())) == expect, off
        assert any("damaged" in m for m in verify(d).all_problems()), off


def test_the_chain_continues_in_a_new_partition_naming_the_damaged_one(tmp_path: Path) -> None:
    recs = fill(tmp_path, n=300, per_frame=50)
    p = open_partition(tmp_path)
    third = read_open(p).frames[2]
    lost = {decode(ln) for ln in third.payload.splitlines()}
    flip(p, third.offset + FRAME.size + 10)
    with AccessLog(LogConfig(tmp_path)) as log:
        assert log.stats.set_aside == 1
        for i in range(300, 400):
            log.append(rec(i))
    new = read_open(open_partition(tmp_path))
    aside = read_open(next(tmp_path.glob("*/w0.001.damaged")))
    assert new.header["prev"] == "2026-09-21/w0.001"
    assert new.header["prev_head"] == aside.frames[-1].head.hex()
    assert list(query(tmp_path, Query())) == [r for r in [*recs, *map(rec, range(300, 400))] if r not in lost]
    rep = verify(tmp_path)
    probs = rep.all_problems()
    assert len(probs) == 1 and probs[0].startswith("2026-09-21/w0.001: damaged: bytes at offsets "), probs
    assert "50 record(s) at risk, 250 readable" in probs[0]


def test_truncation_in_the_middle_is_set_aside_not_taken_for_a_torn_tail(tmp_path: Path) -> None:
    recs = fill(tmp_path, n=300, per_frame=50)
    p = open_partition(tmp_path)
    part = read_open(p)
    with open(p, "r+b") as f:
        f.truncate(part.frames[3].offset + 100)  # mid-frame, well before the commit mark
    restart(tmp_path)
    assert list(query(tmp_path, Query())) == recs[:150]
    probs = verify(tmp_path).all_problems()
    assert any("damaged" in m and "150 record(s) at risk" in m for m in probs), probs


def test_bytes_cut_out_of_the_middle_are_reported(tmp_path: Path) -> None:
    recs = fill(tmp_path, n=300, per_frame=50)
    p = open_partition(tmp_path)
    part = read_open(p)
    data = p.read_bytes()
    p.write_bytes(data[:part.frames[1].offset + 30] + data[part.frames[2].offset + 30:])
    restart(tmp_path)
    got = list(query(tmp_path, Query()))
    assert got == recs[:50] + recs[150:]
    assert any("damaged" in m for m in verify(tmp_path).all_problems())


def test_a_torn_tail_beyond_the_commit_mark_is_still_cut(tmp_path: Path) -> None:
    recs = fill(tmp_path, n=100, per_frame=50)
    p = open_partition(tmp_path)
    with open(p, "ab") as f:
        f.write(b"F\0\0\0\x05garbage")  # a frame the crash cut short, never acknowledged
    log = restart(tmp_path)
    assert log.stats.torn_repaired == 1 and log.stats.set_aside == 0
    assert list(query(tmp_path, Query())) == recs
    assert verify(tmp_path).ok


def test_a_swapped_sealed_partition_is_reported(tmp_path: Path) -> None:
    with AccessLog(LogConfig(tmp_path)) as log:
        for day in range(3):
            for i in range(20):
                log.append(rec(i, day))
            log.flush()
    a, b = tmp_path / "2026-09-21" / "w0.sealed", tmp_path / "2026-09-22" / "w0.sealed"
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    probs = verify(tmp_path).all_problems()
    assert any("2026-09-22/w0" in m and "does not continue the chain" in m for m in probs), probs
    assert any("SHA-256 differs" in m or "differs from its seal event" in m for m in probs), probs


def _roll_back(d: Path, **cfg: int) -> None:
    """200 committed records, then the open partition and its mark put back to their copies
    after the first 100 (consistent with each other: only heads.log knows)."""
    with AccessLog(LogConfig(d, **cfg)) as log:  # type: ignore[arg-type]
        for i in range(100):
            log.append(rec(i))
        log.flush()
        p = open_partition(d)
        old, old_mark = p.read_bytes(), p.with_suffix(".mark").read_bytes()
        for i in range(100, 200):
            log.append(rec(i))
        log.flush()
        log.checkpoint()
    p.write_bytes(old)
    p.with_suffix(".mark").write_bytes(old_mark)


def test_an_open_partition_rolled_back_to_an_older_copy_is_reported(tmp_path: Path) -> None:
    _roll_back(tmp_path)
    probs = verify(tmp_path).all_problems()
    assert any("200 were checkpointed" in m for m in probs), probs


def test_zeros_beyond_the_commit_mark_after_a_power_loss_are_cut(tmp_path: Path) -> None:
    recs = fill(tmp_path, n=100, per_frame=50)
    p = open_partition(tmp_path)
    with open(p, "ab") as f:
        f.write(bytes(4096))  # the file grew, its data never reached the disk
    log = restart(tmp_path)
    assert log.stats.torn_repaired == 1 and log.stats.set_aside == 0
    assert list(query(tmp_path, Query())) == recs
    assert verify(tmp_path).ok


def test_a_partition_written_before_commit_marks_is_continued_and_its_damage_set_aside(tmp_path: Path) -> None:
    """Upgrade: no mark file, frame CRCs over the payload only."""
    from beiand.accesslog.format import GENESIS, chain, encode, frame_bytes, header_line

    recs = [rec(i) for i in range(200)]
    (tmp_path / "2026-09-21").mkdir()
    p = tmp_path / "2026-09-21" / "w0.open"
    data, head = header_line({"day": "2026-09-21", "worker": 0, "gateway": "", "prev": "", "prev_head": GENESIS.hex(),
                              "key_id": "", "created_ms": 0}), GENESIS
    for i in range(0, 200, 50):
        lines = [encode(r) for r in recs[i:i + 50]]
        head = chain(head, lines)
        data += frame_bytes(50, head, b"".join(lines), head_crc=False)
    p.write_bytes(data)
    with AccessLog(LogConfig(tmp_path)) as log:
        log.append(rec(200))
    assert verify(tmp_path).ok
    assert list(query(tmp_path, Query())) == [*recs, rec(200)]
    part = read_open(p)
    flip(p, part.frames[1].offset + FRAME.size + 3)
    restart(tmp_path)
    assert list(query(tmp_path, Query())) == [*recs[:50], *recs[100:], rec(200)]
    assert any("damaged" in m for m in verify(tmp_path).all_problems())


def test_a_rolled_back_partition_written_again_is_still_reported(tmp_path: Path) -> None:
    _roll_back(tmp_path, commit_records=50)
    with AccessLog(LogConfig(tmp_path, commit_records=50)) as log:  # the writer goes on from the old copy
        for i in range(500, 600):
            log.append(rec(i))
            if i % 50 == 49:
                log.flush()
        log.checkpoint()  # a later checkpoint does not hide the earlier one
    probs = verify(tmp_path).all_problems()
    assert any("differs from the checkpoint" in m for m in probs), probs


@pytest.mark.parametrize("new", [b"http-host", b"tls-SNI"])  # frames move (the mark sees it) / stay (the chain does)
def test_an_edited_partition_of_an_older_day_is_set_aside_and_the_writer_starts(tmp_path: Path, new: bytes) -> None:
    from tests.unit.accesslog.test_store import rewrite_open

    recs = fill(tmp_path, n=100, per_frame=50)
    p = open_partition(tmp_path)
    rewrite_open(p, lambda ls: [ls[0].replace(b"tls-sni", new), *ls[1:]])  # CRCs fixed, chain not
    edited = decode(read_open(p).frames[0].payload.splitlines()[0])
    with AccessLog(LogConfig(tmp_path)) as log:  # a new day: the old open partition would be sealed
        log.append(rec(1, day=1))
    restart(tmp_path)  # now an older day's open partition: sealed at start, unless its chain is broken
    assert list(query(tmp_path, Query())) == [edited, *recs[1:], rec(1, day=1)]
    probs = verify(tmp_path).all_problems()
    assert any(m.startswith("2026-09-21/w0.001: damaged: set aside at start: ") for m in probs), probs
    assert any("2026-09-21/w0.001: chain broken" in m for m in probs), probs
    assert not list(tmp_path.glob("2026-09-21/w0.sealed"))


def test_a_flipped_byte_in_a_sealed_block_costs_only_that_block(tmp_path: Path) -> None:
    from beiand.accesslog.reader import QueryStats
    from beiand.accesslog.store import read_sealed_meta

    with AccessLog(LogConfig(tmp_path, block_records=64)) as log:
        for day in range(2):
            for i in range(300):
                log.append(rec(i, day))
            log.flush()
    sealed = tmp_path / "2026-09-21" / "w0.sealed"
    off, clen, n, *_ = read_sealed_meta(sealed)["blocks"][2]
    data = bytearray(sealed.read_bytes())
    data[off + clen // 2] ^= 0x10
    sealed.write_bytes(bytes(data))
    st = QueryStats()
    got = list(query(tmp_path, Query(), st))
    # A sealed partition is clustered by server endpoint (stable): block 2 holds the 3rd 64 of that order.
    clustered = sorted(range(300), key=lambda i: (rec(i).server_ip, str(rec(i).server_port)))
    lost = set(clustered[128:128 + n])
    assert got == [rec(i, d) for d in range(2) for i in range(300) if not (d == 0 and i in lost)]
    assert len(st.unreadable) == 1 and st.unreadable[0].startswith("2026-09-21/w0: block 2 ")
    probs = verify(tmp_path).all_problems()
    assert any(m.startswith("2026-09-21/w0:") for m in probs), probs
