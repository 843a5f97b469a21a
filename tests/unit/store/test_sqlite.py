"""The embedded store (issue 29): a private file, WAL (readers never wait for a writer), and a
writer that waits for the other's lock instead of failing."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

from beiand.policy.orders import set_entry
from beiand.store.sqlite import SqliteStore


def test_the_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "state" / "decisions.sqlite", "gw")
    s.migrate()
    assert stat.S_IMODE((tmp_path / "state" / "decisions.sqlite").stat().st_mode) & 0o007 == 0
    with s._read() as cur:
        cur.execute("PRAGMA journal_mode")
        assert cur.fetchone()[0] == "wal"
    s.close()


def test_a_reader_does_not_wait_for_a_writer_and_a_second_writer_waits(tmp_path: Path) -> None:
    path = tmp_path / "decisions.sqlite"
    a, b, r = SqliteStore(path, "a"), SqliteStore(path, "b"), SqliteStore(path, "r")
    a.migrate()
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with a.transaction() as tx:
            tx.append([set_entry("order", "a.example", "1", "", 0.0, "x")])
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    assert r.head() == 0  # a reader sees the last commit, without waiting
    done: list[int] = []
    w = threading.Thread(target=lambda: done.append(b.append([set_entry("order", "b.example", "2", "", 0.0, "y")])))
    w.start()
    w.join(0.3)
    assert not done  # the second writer waits for the lock
    release.set()
    t.join(10)
    w.join(10)
    assert done == [2] and [c.key for c in r.changes(0)] == ["a.example", "b.example"]
    for s in (a, b, r):
        s.close()



def test_a_store_root_writes_stays_writable_by_the_daemons_user(tmp_path: Path) -> None:
    """``sudo beiand block add`` creates or touches the store: the file and its WAL get the state
    directory's owner (the daemon runs as User=beiand), so its heartbeats are not refused."""
    import os
    import pwd

    if os.geteuid() != 0:
        return
    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    s = SqliteStore(state / "decisions.sqlite", "gw")
    s.migrate()
    s.append([set_entry("order", "a.example", "1", "", 0.0, "root")])
    owners = {p.name: p.stat().st_uid for p in state.iterdir()}
    assert owners and set(owners.values()) == {nobody.pw_uid}, owners
    s.close()
