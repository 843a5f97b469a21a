"""The ClickHouse copy against a failing disk, a failing server and a restart (issue 27, review):
every record the local log committed reaches the copy once, and the cursor (``copied-wN.seq``,
where a restart's backfill starts) never claims a record that is neither in ClickHouse nor on disk
in the spill. A fake ClickHouse (HTTP on loopback) records what it was sent."""

from __future__ import annotations

import errno
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import beiand.accesslog.reader as reader
import beiand.accesslog.store as store
from beiand.accesslog.store import AccessLog, Committed, LogConfig
from beiand.sinks.clickhouse import CHAINED, COLUMNS, ClickHouseSink, chain_rows

SEQ = CHAINED.index("seq")


class FakeClickHouse:
    """Answers what the sink asks; ``up`` False: every request fails (HTTP 500); ``fail_inserts``:
    that many inserts fail after reading their body; ``requests``: each data request's first words."""

    def __init__(self) -> None:
        self.up = True
        self.fail_inserts = 0
        self.lose_answers = 0  # that many inserts land, then the connection drops before the answer
        self.got: Counter[int] = Counter()
        self.requests: list[str] = []
        self.columns: list[int] = []  # each insert's columns
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("query", [""])[0] or body.decode()
                code, answer = fake.answer(q, body)
                if code == 0:  # landed, but the answer is lost on the way
                    self.close_connection = True
                    return
                self.send_response(code)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"

    def answer(self, q: str, body: bytes) -> tuple[int, bytes]:
        with self.lock:
            if not self.up:
                return 500, b"down"
            if q.startswith("SELECT version()"):
                return 200, b"18.16.1\n"
            if "engine, sorting_key" in q:
                return 200, b"ReplacingMergeTree\tserver_ip, server_port, ts_ms, gateway, worker, seq\n"
            m = re.search(r"seq BETWEEN (\d+) AND (\d+)", q)
            if q.startswith("SELECT DISTINCT seq") and m is not None:
                self.requests.append("seqs")
                return 200, b"".join(b"%d\n" % s for s in range(int(m[1]), int(m[2]) + 1) if self.got[s])
            if q.startswith("SELECT") and m is not None:
                self.requests.append("lookup")
                return 200, b"%d\n" % sum(1 for s in range(int(m[1]), int(m[2]) + 1) if self.got[s])
            if q.startswith("ALTER") and " DELETE " in q:
                self.requests.append("delete")
            if q.startswith("INSERT INTO beiand.access_log ("):
                self.requests.append("insert")
                if self.fail_inserts:
                    self.fail_inserts -= 1
                    return 500, b"Too many parts"
                # ClickHouse refuses a row whose fields are not the columns named
                ncols = q[q.index("(") + 1:q.index(")")].count(",") + 1
                if any(ln.count(b"\t") + 1 != ncols for ln in body.splitlines()):
                    self.requests.append("refused")
                    return 400, b"Code: 27. Cannot parse input: expected \\t before: \\n"
                self.columns.append(ncols)
                self.got.update(int(ln.rsplit(b"\t", 4)[1]) for ln in body.splitlines())  # seq, pos, link, worker
                if self.lose_answers:
                    self.lose_answers -= 1
                    return 0, b""
            return 200, b""

    def close(self) -> None:
        self.srv.shutdown()


@pytest.fixture
def fake() -> Iterator[FakeClickHouse]:
    f = FakeClickHouse()
    yield f
    f.close()


class Frames:
    """Committed frames of one worker, numbered on."""

    def __init__(self, ts0: int = 1_700_000_000_000, step: int = 1) -> None:
        self.seq = 0
        self.ts0, self.step = ts0, step

    def __call__(self, n: int) -> Committed:
        lines = []
        for i in range(n):
            f = ["0"] * len(COLUMNS)
            f[0] = str(self.ts0 + (self.seq + i) * self.step)
            f[COLUMNS.index("gateway")] = "gw"
            lines.append(("\t".join(f) + "\n").encode())
        c = Committed("gw", 0, "2023-11-14/w0", self.seq + 1, self.seq + 1, lines, [b"\0" * 32] * n)
        self.seq += n
        return c


def wait_for(cond: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def durable(sink: ClickHouseSink, fake: FakeClickHouse) -> set[int]:
    """The record numbers ClickHouse holds or the spill holds on disk (what survives a kill -9)."""
    on_disk = {int(ln.split(b"\t")[SEQ]) for _, _, payload in sink._spill_frames() for ln in payload.splitlines()}
    with fake.lock:
        return on_disk | set(fake.got)


@pytest.fixture
def failing_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """``failing_disk(True)``: every write of an access-log store (the spill's) fails with ENOSPC."""
    real = store._write_all

    def broken(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def set_failing(on: bool) -> None:
        monkeypatch.setattr(store, "_write_all", broken if on else real)

    return set_failing


def test_a_spill_write_that_failed_is_replayed_once_the_disk_has_room_never_deleted(
        tmp_path: Path, fake: FakeClickHouse, failing_disk: Callable[[bool], None]) -> None:
    """ClickHouse down; records 1-10 spill; the spill's write of 11-20 fails (disk full) and they
    wait in its memory; the disk and ClickHouse come back: the replay wrote 11-20 only once it
    could, and deleted the spill with them unsent (ClickHouse got 1-10 and 21-30, cursor 30)."""
    frame = Frames()
    fake.up = False
    sink = ClickHouseSink(fake.url, tmp_path / "spill", interval=0.02, batch_records=10, max_backoff=0.1)
    try:
        sink.backfill(tmp_path, 0)
        sink.committed(frame(10))
        sink.flush(10)
        assert sink.spilling and sink.copied == 10
        failing_disk(True)
        sink.committed(frame(10))
        wait_for(lambda: sink.spill.stats.write_errors > 0, "the spill's write to fail")
        assert sink.copied == 10  # 11-20 are not durable anywhere yet
        failing_disk(False)
        with fake.lock:
            fake.up = True
        wait_for(lambda: not sink.spilling, "the spill to be replayed")
        sink.committed(frame(10))
        sink.flush(10)
    finally:
        sink.close()
    assert sorted(fake.got) == list(range(1, 31)) and set(fake.got.values()) == {1}


def test_an_insert_that_fails_while_the_spill_cannot_be_written_keeps_the_copy_spilling(
        tmp_path: Path, fake: FakeClickHouse, failing_disk: Callable[[bool], None]) -> None:
    """An insert fails (HTTP 500) and spilling its batch fails too: the copy must keep spilling, in
    order, so that the next batch does not go straight to ClickHouse and move the cursor past the
    failed one (a kill -9 then lost it: the restart's backfill starts after the cursor)."""
    frame = Frames()
    sink = ClickHouseSink(fake.url, tmp_path / "spill", interval=0.02, batch_records=10, max_backoff=0.1)
    try:
        sink.backfill(tmp_path, 0)
        sink.committed(frame(10))
        sink.flush(10)
        assert sorted(fake.got) == list(range(1, 11))
        with fake.lock:
            fake.fail_inserts = 1
        failing_disk(True)
        sink.committed(frame(10))
        wait_for(lambda: sink.spill.stats.write_errors > 0, "the spill's write to fail")
        failing_disk(False)
        sink.committed(frame(10))
        wait_for(lambda: sink.copied >= 30 or (not sink._pending() and sink._idle.is_set()), "the third batch to be handed over")
        # What a kill -9 now leaves: the cursor claims nothing that is not durable.
        assert set(range(1, sink.copied + 1)) <= durable(sink, fake), (sink.copied, sorted(durable(sink, fake)))
        sink.flush(10)
        wait_for(lambda: not sink.spilling, "the spill to be replayed")
    finally:
        sink.close()
    assert sorted(fake.got) == list(range(1, 31)), sorted(fake.got)


def test_a_restarts_backfill_looks_every_batch_up_before_sending_it(
        tmp_path: Path, fake: FakeClickHouse, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a kill -9, the first batch the backfill queues may be the one that was on the wire:
    it must be looked up, not sent again blindly (the sender ran before the backfill had said how
    far the records it queues may already be in ClickHouse)."""
    frame = Frames()
    (tmp_path / "spill").mkdir()
    (tmp_path / "spill" / "copied-w0.seq").write_text("0\n")

    def committed_since(log_dir: Path, worker: int, after: int, upto: int, key: bytes | None = None) -> Iterator[Committed]:
        yield frame(100)  # a whole batch: the sender wakes for it
        wait_for(lambda: fake.requests, "the sender to ask ClickHouse about the first batch")
        while frame.seq < upto:
            yield frame(min(100, upto - frame.seq))

    monkeypatch.setattr(reader, "committed_since", committed_since)
    sink = ClickHouseSink(fake.url, tmp_path / "spill", interval=0.02, batch_records=100)
    try:
        wait_for(lambda: sink._ready.is_set(), "the sender")
        sink.backfill(tmp_path, 300)
        sink.flush(10)
    finally:
        sink.close()
    assert fake.requests[0] == "lookup", fake.requests
    assert sorted(fake.got) == list(range(1, 301))


def test_a_batch_found_in_part_gets_the_rest_sent_without_a_mutation(
        tmp_path: Path, fake: FakeClickHouse, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that made it in part (an insert split by the server, then a stop): the records not
    there are sent, the ones there are not sent again, and no ALTER … DELETE is asked (a cluster's
    Distributed table takes no mutation: the copy stalled on it for ever)."""
    frame = Frames()
    (tmp_path / "spill").mkdir()
    (tmp_path / "spill" / "copied-w0.seq").write_text("0\n")
    fake.got.update(range(1, 6))  # records 1-5 of the batch 1-10 landed

    def committed_since(log_dir: Path, worker: int, after: int, upto: int, key: bytes | None = None) -> Iterator[Committed]:
        yield frame(10)

    monkeypatch.setattr(reader, "committed_since", committed_since)
    sink = ClickHouseSink(fake.url, tmp_path / "spill", interval=0.02, batch_records=10)
    try:
        wait_for(lambda: sink._ready.is_set(), "the sender")
        sink.backfill(tmp_path, 10)
        sink.flush(10)
    finally:
        sink.close()
    assert sorted(fake.got) == list(range(1, 11)) and set(fake.got.values()) == {1}, fake.got
    assert "delete" not in fake.requests and sink.copied == 10


def test_a_batch_that_may_have_landed_is_looked_up_even_when_the_spill_splits_it_at_midnight(
        tmp_path: Path, fake: FakeClickHouse) -> None:
    """An insert lands and its answer is lost (uncertain); its batch spans midnight, so the spill
    keeps it as two frames, one a day, whose ids are not the batch's: the replay sent both again
    without a lookup. The uncertain list names the batch's record numbers too."""
    midnight = 1_700_006_400_000  # 2023-11-15 00:00 UTC
    frame = Frames(ts0=midnight - 5_000, step=1_000)  # records 1-5 before midnight, 6-10 after
    with fake.lock:
        fake.lose_answers = 1
    sink = ClickHouseSink(fake.url, tmp_path / "spill", interval=0.02, batch_records=10, max_backoff=0.1)
    try:
        sink.backfill(tmp_path, 0)
        sink.committed(frame(10))
        wait_for(lambda: sink.spilling or sink.stats.replayed > 0, "the lost answer to make the copy spill")
        wait_for(lambda: not sink.spilling, "the spill to be replayed")
        sink.flush(10)
    finally:
        sink.close()
    assert sorted(fake.got) == list(range(1, 11)) and set(fake.got.values()) == {1}, fake.got


def test_a_spill_of_the_previous_version_is_sent_after_the_upgrade(tmp_path: Path, fake: FakeClickHouse) -> None:
    """Rows of the copy spilled by the beiand before issue 35 (23 record fields, no records_version,
    then partition, seq, pos, link, worker: 28 fields) are sent by the upgraded one with the columns
    they hold: ClickHouse took none of them (30 fields for 26 columns), the spill stuck for ever and
    the committed records never reached the fleet's copy. A frame of each shape, in one replay."""
    frame = Frames()
    version_at = COLUMNS.index("records_version")

    def previous(c: Committed) -> list[bytes]:
        return [b"\t".join(f[:version_at] + f[version_at + 1:]) for f in (ln.split(b"\t") for ln in chain_rows(c))]

    spill = AccessLog(LogConfig(tmp_path / "spill", worker=0, seal=False, anchors=False), start=False)
    old = previous(frame(10))
    assert {ln.count(b"\t") + 1 for ln in old} == {len(CHAINED) - 1}
    spill.write_lines(old)
    spill.write_lines(chain_rows(frame(10)))  # the upgraded one's own, spilled after it
    spill.flush()
    spill.close()
    (tmp_path / "spill" / "copied-w0.seq").write_text("20\n")
    sink = ClickHouseSink(fake.url, tmp_path / "spill", interval=0.02, batch_records=10, max_backoff=0.1)
    try:
        assert sink.spilling
        sink.backfill(tmp_path, 20)
        wait_for(lambda: not sink.spilling, "the spill to be replayed")
    finally:
        sink.close()
    assert "refused" not in fake.requests, fake.requests
    assert fake.columns == [len(CHAINED) - 1, len(CHAINED)]
    assert sorted(fake.got) == list(range(1, 21)) and set(fake.got.values()) == {1}
    assert sink.copied == 20 and sink._spill_frames() == []  # the spill went once all of it was in
