"""JSON lines (``beiand replay --json``): lines held back for time order, in bounded memory (issue 28)."""

from __future__ import annotations

import io
import json
import logging
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from beiand.model import AccessRecord
from beiand.sinks.jsonlines import JsonLines

T0 = 1_750_000_000.0
WINDOW = 92.0  # replay's: the connection window, the name wait and 2 s


def _record(ts: float, port: int) -> AccessRecord:
    """A connection record as the pipeline builds it (kind conn, stamped with its flow's start)."""
    return AccessRecord(int(ts * 1000), "cust-1", "10.0.0.1", port, "198.51.100.7", 22, "tcp", "conn", "", "unnamed", "log", "",
                        "gw", "not-named:unwatched-port", direction="in", packets=3, octets=180)


def _stamps(out: io.BytesIO) -> list[tuple[float, int]]:
    return [(x["ts"], x["client"]) for x in map(json.loads, out.getvalue().splitlines())]


def test_a_capture_shorter_than_the_window_is_held_in_bounded_memory() -> None:
    """Connection records of a capture shorter than the reorder window (bench/'s 1M packets span 10 s
    of a 92 s window): nothing can be written before the end, yet memory holds ``hold_bytes`` of
    them at most, whatever the length; the rest waits on disk, and the output is whole and in order."""
    out = io.BytesIO()
    sink = JsonLines(out, reorder=WINDOW, hold_bytes=64 << 10)
    n = 20_000  # ~9 MB of lines over 20 s of capture time
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            # most in time order, every 10th a record of a flow that started up to 30 s earlier
            sink.on_connection(_record(T0 + i * 0.001 - (30.0 if i % 10 == 0 else (i % 7) * 0.0005), 1024 + i % 60000))
            assert sink.held <= sink.hold_bytes
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert not out.getvalue()  # all inside one window: nothing may go out before the end
    assert peak < 1 << 20, f"{peak} bytes traced while holding {n} lines"
    assert sink.spilled > n // 2
    sink.flush()
    got = _stamps(out)
    assert len(got) == n and [ts for ts, _ in got] == sorted(ts for ts, _ in got)


@pytest.mark.parametrize("hold", [None, 4 << 10])
def test_a_stream_longer_than_the_window_goes_out_as_the_window_passes(hold: int | None) -> None:
    out = io.BytesIO()
    sink = JsonLines(out, reorder=10.0) if hold is None else JsonLines(out, reorder=10.0, hold_bytes=hold)
    for i in range(2000):
        ts = T0 + i * 0.1
        sink.on_connection(_record(ts - (5.0 if i % 3 == 0 else 0.0), i))
        if i % 100 == 99:  # every line older than the window has been written, none newer
            written = [x for x, _ in _stamps(out)]
            assert written == sorted(written) and written and written[-1] < ts - 10.0 + 0.001
            assert len(written) >= i - 10 / 0.1 - 5 / 0.1
    sink.flush()
    assert len(_stamps(out)) == 2000


def _feed(sink: JsonLines, lines: list[tuple[float, int]]) -> None:
    for ts, i in lines:
        sink.write(orjson.dumps({"ts": ts, "i": i}, option=orjson.OPT_APPEND_NEWLINE))
    sink.flush()


def _arrivals(draw: st.DrawFn) -> list[tuple[float, int]]:
    """Lines in arrival order, each no older than the window allows: its time at least the latest
    time seen so far minus the window, 5 s (what replay's window guarantees)."""
    latest, lines = T0, []
    for i, (step, late) in enumerate(draw(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 49)), max_size=300))):
        latest += step / 10
        lines.append((round(latest - late / 10, 6), i))  # ties: many lines share a time
    return lines


@settings(max_examples=150, deadline=None)
@given(lines=st.composite(_arrivals)(), hold=st.sampled_from([0, 1, 200, 2000, 1 << 30]), runs=st.sampled_from([1, 2, 3, 64]))
@example(lines=[(T0 + 1, 0), (T0, 1), (T0 + 1, 2), (T0, 3)], hold=0, runs=1)
def test_lines_come_out_in_time_order_then_arrival_however_they_are_held(lines: list[tuple[float, int]], hold: int, runs: int) -> None:
    """Whatever memory holds (``hold`` 0: every line on disk, each its own run; ``runs``: how many
    runs stay open before they are merged into one), the output is the lines sorted by time, ties in
    the order they came: as memory alone would write them."""
    out = io.BytesIO()
    sink = JsonLines(out, reorder=5.0, hold_bytes=hold)
    sink.max_runs = runs
    _feed(sink, lines)
    got = [(x["ts"], x["i"]) for x in map(json.loads, out.getvalue().splitlines())]
    assert got == sorted(lines, key=lambda x: x[0])
    assert not sink.held and not sink._runs


def test_a_disk_that_cannot_hold_the_lines_keeps_them_in_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = io.BytesIO()
    sink = JsonLines(out, reorder=WINDOW, hold_bytes=100, spill_dir=str(tmp_path / "gone"))
    lines = [(T0 + (i % 50) * 0.5, i) for i in range(200)]
    with caplog.at_level(logging.WARNING, "beiand.sinks.jsonlines"):
        _feed(sink, lines)
    assert [(x["ts"], x["i"]) for x in map(json.loads, out.getvalue().splitlines())] == sorted(lines, key=lambda x: x[0])
    assert sink.spilled == 0 and caplog.text.count("cannot hold lines on disk") == 1


def test_runs_that_cannot_be_merged_stay_as_they_were(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import errno
    import tempfile

    made, real = [], tempfile.TemporaryFile

    def temporary_file(**kw: Any) -> Any:  # the disk fills up at the fourth file: the first merge
        made.append(kw)
        if len(made) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(**kw)

    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
    out = io.BytesIO()
    sink = JsonLines(out, reorder=WINDOW, hold_bytes=300)
    sink.max_runs = 2
    lines = [(T0 + (i % 40) * 0.5, i) for i in range(200)]
    with caplog.at_level(logging.WARNING, "beiand.sinks.jsonlines"):
        _feed(sink, lines)
    assert [(x["ts"], x["i"]) for x in map(json.loads, out.getvalue().splitlines())] == sorted(lines, key=lambda x: x[0])
    assert len(made) == 4 and caplog.text.count("cannot merge the runs") == 1


def test_line_ts_reads_the_first_field() -> None:
    from beiand.sinks.jsonlines import line_ts

    sink = JsonLines(io.BytesIO())
    assert line_ts(sink.dumps({"ts": 1750000000.123456, "x": 1})) == 1750000000.123456
    assert line_ts(b'{"ts":1750000000,"client":"a"}\n') == 1750000000.0
