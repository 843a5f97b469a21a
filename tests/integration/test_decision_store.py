"""The decision store (issue 29), on both backends: the embedded SQLite file and a real PostgreSQL 15.

- rows are numbered in commit order, nothing is updated or deleted, a newer schema is refused;
- two processes writing at once (the CLI's ``block add`` and the daemon's ISMS endpoint) lose no update;
- the files of a beiand before the store are imported once, and fold back to what they held;
- a row that is not a valid order is refused by name, the state before it kept;
- the follower writes the snapshot the workers read, says when the store is away (fails static),
  starts from its snapshot, catches up, and ``fleet status`` shows each gateway's version;
- PostgreSQL: a follower waiting on LISTEN wakes at a commit; a store that cannot be reached makes
  ``block add`` exit 2 with the reason, never a local-only order.
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from beiand.cli import main
from beiand.isms.store import CommandStore
from beiand.isms.wire.model import Rule, SecurityCommand
from beiand.policy.orders import OrderStore, set_entry
from beiand.runtime.decisions import Follower, fold_store, open_decisions
from beiand.runtime.settings import Config, DaemonSection, StoreSection
from beiand.store import SCHEMA_VERSION, Entry, SchemaError, StoreError, open_store
from beiand.store.connect import StoreSettings
from tests.integration.postgres import Postgres, started, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    from tests.integration.nsdaemon import require_root

    require_root()
    yield from started(tmp_path_factory)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store of each kind: a file in the test's directory, or a database of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "state" / "decisions.sqlite")
    pg: Postgres = request.getfixturevalue("pg")
    return pg.create_db(f"t{uuid.uuid4().hex[:12]}")


def config(tmp_path: Path, url: str, gateway: str = "gw-a", **store: Any) -> Config:
    return Config(daemon=DaemonSection(gateway=gateway, state_dir=tmp_path / "state"),
                  store=StoreSection(url=url, **store))


def cmd(url: str, i: int) -> SecurityCommand:
    return SecurityCommand(command_id=i, type=1, operation=0, rules=(Rule(1, f"bad{i}.example", ""),), block=1, log=1,
                           report=1, reason="t", effect_time=0.0, expired_time=0.0, house_ids=(), owner="", time_stamp="")


def test_rows_are_numbered_in_commit_order_and_never_changed(tmp_path: Path, url: str) -> None:
    store = open_decisions(config(tmp_path, url))
    try:
        assert store.head() == 0 and store.schema() == SCHEMA_VERSION
        v = store.append([set_entry("order", "a.example", "1", "r", 0.0, "ops")])
        v2 = store.append([set_entry("order", "b.example", "2", "", 0.0, "ops"), set_entry("order", "c.example", "3", "", 0.0, "x")])
        assert (v, v2) == (1, 3)
        rows = store.changes(0)
        assert [r.version for r in rows] == [1, 2, 3] and rows[0].actor == "ops" and rows[0].gateway == "gw-a"
        assert [r.key for r in store.changes(2)] == ["c.example"]
        for sql in ("UPDATE beiand_decisions SET why = 'x'", "DELETE FROM beiand_decisions"):
            with pytest.raises(StoreError, match="append-only"), store.transaction() as tx:
                tx.cur.execute(sql)
        assert len(store.changes(0)) == 3
        with pytest.raises(StoreError, match="op 'drop'"):
            store.append([Entry("order", "d.example", "drop", {}, time.time())])
        assert store.head() == 3  # nothing of a refused batch is written
    finally:
        store.close()


def _schema(url: str, value: str) -> None:
    if url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as c:
            c.execute("UPDATE beiand_meta SET value = %s WHERE key = 'schema'", (value,))
    else:
        with sqlite3.connect(url) as c:
            c.execute("UPDATE beiand_meta SET value = ? WHERE key = 'schema'", (value,))


def test_a_store_newer_than_this_beiand_is_refused_and_not_written(tmp_path: Path, url: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, url)
    open_decisions(cfg).close()
    assert main(["block", "add", "a.example", "--order", "1", "--store", url, "--state-dir", str(tmp_path / "state")]) == 0
    _schema(url, str(SCHEMA_VERSION + 1))
    with pytest.raises(SchemaError, match=rf"schema version {SCHEMA_VERSION + 1} is newer than this beiand's"):
        open_decisions(cfg)
    capsys.readouterr()
    assert main(["block", "add", "b.example", "--order", "2", "--store", url, "--state-dir", str(tmp_path / "state")]) == 2
    assert "newer than this beiand's" in capsys.readouterr().err
    _schema(url, str(SCHEMA_VERSION))
    store = open_decisions(cfg)
    assert [r.key for r in store.changes(0)] == ["a.example"]
    store.close()


def test_a_migration_not_safe_at_start_waits_for_store_migrate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanism (this beiand has one migration, safe): an unsafe one is not run at a
    gateway's start, ``beiand store migrate`` runs it."""
    import beiand.store.base as base

    url = str(tmp_path / "state" / "decisions.sqlite")
    open_decisions(config(tmp_path, url)).close()
    extra = base.Migration(SCHEMA_VERSION + 1, "a column", False,
                           {"sqlite": ("ALTER TABLE beiand_gateways ADD COLUMN note TEXT",), "postgresql": ()})
    monkeypatch.setattr(base, "MIGRATIONS", [*base.MIGRATIONS, extra])
    monkeypatch.setattr(base, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(SchemaError, match="beiand store migrate"):
        open_decisions(config(tmp_path, url))
    assert main(["store", "migrate", "--state-dir", str(tmp_path / "state")]) == 0
    store = open_decisions(config(tmp_path, url))
    assert store.schema() == SCHEMA_VERSION + 1
    store.close()


def _cli_writer(url: str, state: str, n: int, start: Any) -> None:
    start.wait()
    for i in range(n):
        assert main(["block", "add", f"o{i}.example", "--order", f"N{i}", "--store", url, "--state-dir", state]) == 0


def _isms_writer(url: str, state: str, n: int, start: Any) -> None:
    cfg = config(Path(state).parent, url)
    cs = CommandStore(Path(state), decisions=open_decisions(cfg))
    start.wait()
    for i in range(n):
        with cs.writing():
            cs.apply_security(cmd(url, 1000 + i), time.time())
            cs.note_sequence(5000 + i)


def test_two_processes_writing_at_once_lose_no_update(tmp_path: Path, url: str) -> None:
    """The CLI (closure orders) and the daemon's ISMS endpoint (commands) write one store at once:
    every row of both is there, numbered without a gap, and folds to every order and command
    (a file rewritten by two writers kept only the last one's view)."""
    state = str(tmp_path / "state")
    open_decisions(config(tmp_path, url)).close()
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    n = 40
    procs = [ctx.Process(target=_cli_writer, args=(url, state, n, start)), ctx.Process(target=_isms_writer, args=(url, state, n, start))]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = open_decisions(config(tmp_path, url))
    rows = store.changes(0)
    assert [r.version for r in rows] == list(range(1, 3 * n + 1))
    f = fold_store(config(tmp_path, url), store)
    assert len(f.orders.orders) == n and len(f.commands.state.commands) == n
    assert len(f.commands.state.sequences) == n
    store.close()


def test_the_files_of_an_older_beiand_are_imported_once(tmp_path: Path, url: str, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    old = OrderStore(state)  # the file as a beiand before the store wrote it
    old.add("lifted.example", "京通管〔2026〕1号", "first", by="alice")
    old.remove("lifted.example", by="bob", reason="lifting notice")
    old.add("kept.example", "京通管〔2026〕2号", "second", by="alice")
    old.add("198.51.100.0/24", "京通管〔2026〕3号", "prefix", by="carol")
    cs = CommandStore(state)
    with cs.writing():
        cs.apply_security(cmd(url, 7), time.time())
        cs.note_sequence(77)
    assert "snapshot" not in json.loads((state / "orders.json").read_text())
    cfg = config(tmp_path, url)
    caplog.set_level("WARNING")
    store = open_decisions(cfg)
    assert sum("imported into the decision store" in r.getMessage() for r in caplog.records) == 2
    n = store.head()
    store.close()
    store = open_decisions(cfg)  # again: nothing more
    assert store.head() == n
    f = fold_store(cfg, store)
    store.close()
    assert set(f.orders.orders) == {"kept.example", "198.51.100.0/24"}
    assert f.orders.orders["kept.example"].created_by == "alice"
    (h,) = f.orders.history
    assert (h.order.target, h.lifted_by, h.lift_reason) == ("lifted.example", "bob", "lifting notice")
    assert set(f.commands.state.commands) == {7} and f.commands.state.sequences == [77]


def test_a_row_that_is_not_a_valid_order_is_refused_by_name_and_the_state_kept(tmp_path: Path, url: str) -> None:
    cfg = config(tmp_path, url)
    store = open_decisions(cfg)
    store.append([set_entry("order", "a.example", "1", "", 0.0, "ops")])
    with store.transaction() as tx:  # what a buggy or foreign writer could leave
        tx.append([Entry("order", "198.51.100.0/33", "set", {"order": "2"}, time.time(), "mallory"),
                   Entry("order", "b.example", "set", {"reason": "no number"}, time.time(), "mallory"),
                   Entry("order", "a.example", "set", {"order": "3", "until": "tomorrow"}, time.time(), "mallory")])
    store.append([set_entry("order", "c.example", "4", "", 0.0, "ops")])
    fol = Follower(cfg)
    fol.first_sync()
    assert set(fol.folded.orders.orders) == {"a.example", "c.example"}
    assert fol.folded.orders.orders["a.example"].order == "1"  # the bad replacement changed nothing
    refused = fol.status()["refused_rows"]
    assert len(refused) == 3 and "decision 2 (order '198.51.100.0/33' by mallory" in refused[0]
    assert "without its number" in refused[1] and "until 'tomorrow'" in refused[2]
    snap = json.loads((tmp_path / "state" / "orders.json").read_text())
    assert snap["snapshot"]["version"] == 5 and {o[0] for o in snap["orders"]} == {"a.example", "c.example"}
    fol.stop()
    store.close()


class Unreachable:
    """A store that does not answer (what a follower meets while PostgreSQL is down)."""

    def __call__(self) -> Any:
        raise StoreError("decision store postgresql://gw@10.0.0.1/beiand: connection refused")


def test_a_corrupt_snapshot_is_replaced_from_the_store_or_reported_while_the_store_is_away(tmp_path: Path) -> None:
    url = str(tmp_path / "state" / "decisions.sqlite")
    cfg = config(tmp_path, url)
    store = open_decisions(cfg)
    store.append([set_entry("order", "a.example", "1", "", 0.0, "ops")])
    store.close()
    (tmp_path / "state" / "orders.json").write_text('{"snapshot": {"version": 9}, "orders": [{"tar')
    down = Follower(cfg, opener=Unreachable())
    down.first_sync()
    st = down.status()
    assert not st["reachable"] and st["fails_static"] and "connection refused" in st["error"]
    assert down.m_up._value.get() == 0  # type: ignore[attr-defined]
    up = Follower(cfg)
    up.first_sync()
    assert up.status()["reachable"] and set(up.folded.orders.orders) == {"a.example"}
    assert json.loads((tmp_path / "state" / "orders.json").read_text())["snapshot"]["version"] == 1
    up.stop()


def test_the_follower_applies_a_change_fails_static_and_catches_up(tmp_path: Path, url: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """block add → the snapshot the workers read within a second; the store away → the last
    snapshot stays in force and the status says so; back → caught up; heartbeats for fleet status."""
    cfg = config(tmp_path, url, heartbeat_interval=1.0, poll_interval=0.2)
    state = ["--store", url, "--state-dir", str(tmp_path / "state")]
    open_decisions(cfg).close()
    fol = Follower(cfg)
    fol.first_sync()
    fol.start()
    snap = tmp_path / "state" / "orders.json"

    def in_snapshot(target: str) -> Callable[[], bool]:
        return lambda: snap.exists() and any(o[0] == target for o in json.loads(snap.read_bytes())["orders"])

    try:
        t0 = time.monotonic()
        assert main(["block", "add", "bad.example", "--order", "京通管〔2026〕9号", *state]) == 0
        wait_for(in_snapshot("bad.example"), "the order in the snapshot")
        assert time.monotonic() - t0 < 5
        gone = {"down": False}
        real = fol._open

        def flaky() -> Any:
            if gone["down"]:
                raise StoreError("decision store: connection refused (test)")
            return real()

        fol._open = flaky
        gone["down"] = True
        assert fol.store is not None

        def dropped(*_a: Any, **_k: Any) -> Any:
            raise StoreError("decision store: connection lost (test)")

        # The connection drops: its next use fails, in the follower's own thread, which closes it
        # and opens it again, and cannot (closing it from here, under the thread using it, crashes sqlite3)
        fol.store.changes = dropped  # type: ignore[method-assign]
        wait_for(lambda: not fol.status()["reachable"], "the follower noticing the store is away")
        assert in_snapshot("bad.example")()  # still enforced
        assert main(["block", "add", "more.example", "--order", "10", *state]) == 0  # written while this gateway is cut off
        gone["down"] = False
        wait_for(in_snapshot("more.example"), "catching up")
        wait_for(lambda: fol.status()["reachable"], "reachable again")
        wait_for(lambda: main(["fleet", "status", "--json", *state]) == 0, "the heartbeat of the version applied")
        capsys.readouterr()
        assert main(["fleet", "status", "--json", *state]) == 0
        fleet = json.loads(capsys.readouterr().out)
        (gw,) = fleet["gateways"]
        assert gw["gateway"] == "gw-a" and gw["version"] == fleet["version"] == 2 and gw["behind"] == 0
    finally:
        fol.stop()


def test_a_store_that_cannot_be_written_makes_block_add_exit_2(tmp_path: Path, pg: Postgres,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{pg.port + 1 if pg.port < 65535 else 1}/nothing"
    rc = main(["block", "add", "a.example", "--order", "1", "--store", dead, "--state-dir", str(tmp_path / "state")])
    e = capsys.readouterr().err
    assert rc == 2 and "decision store postgresql://postgres@127.0.0.1" in e and "nothing was written" in e
    assert not (tmp_path / "state" / "orders.json").exists()


def test_a_password_in_the_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="password in the URL"):
        open_store(StoreSettings("postgresql://u:secret@127.0.0.1/db"), tmp_path, "gw")


def test_a_follower_waiting_on_listen_wakes_at_a_commit(tmp_path: Path, pg: Postgres) -> None:
    url = pg.create_db(f"t{uuid.uuid4().hex[:12]}")
    cfg = config(tmp_path, url)
    writer, follower = open_decisions(cfg), open_decisions(cfg, import_files=False)
    try:
        assert follower.wait(0.1)  # the first call starts listening
        woke: list[float] = []

        def listen() -> None:
            if follower.wait(20):
                woke.append(time.monotonic())

        t = threading.Thread(target=listen)
        t0 = time.monotonic()
        t.start()
        writer.append([set_entry("order", "a.example", "1", "", 0.0, "ops")])
        t.join(25)
        assert woke and woke[0] - t0 < 1.0
    finally:
        writer.close()
        follower.close()


def test_tls_verify_full_and_a_password_from_a_private_file(tmp_path: Path) -> None:
    """The fleet's store across data centres: TLS with the server's certificate checked against
    store.ca_file, the password from store.password_file (0600); a wrong CA, a wrong password or
    a password file others may read is a clear error naming the store, never a silent fallback."""
    import os
    import shutil

    import psycopg

    from beiand.lab.labservers import make_cert
    from tests.integration.nsdaemon import require_root

    require_root()
    pg = Postgres(tmp_path / "pgtls", ssl=True)
    certs = tmp_path / "certs"
    certs.mkdir()
    crt, key = make_cert(certs, ["localhost"])
    for src, dst in ((crt, "server.crt"), (key, "server.key")):
        shutil.copy(src, pg.data / dst)
        os.chown(pg.data / dst, pg.user.pw_uid, pg.user.pw_gid)
        os.chmod(pg.data / dst, 0o600)
    (pg.data / "pg_hba.conf").write_text("local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                                         "hostssl all beiand 127.0.0.1/32 scram-sha-256\nhostnossl all beiand 0.0.0.0/0 reject\n")
    pg.start()
    try:
        with psycopg.connect(pg.url(), autocommit=True) as c:
            c.execute("CREATE ROLE beiand LOGIN PASSWORD 'cr0ss-dc-s3cret'")
            c.execute("CREATE DATABASE fleet OWNER beiand")
        pw = tmp_path / "store.password"
        pw.write_text("cr0ss-dc-s3cret\n")
        pw.chmod(0o600)
        url = f"postgresql://beiand@localhost:{pg.port}/fleet"
        good = config(tmp_path, url, password_file=pw, sslmode="verify-full", ca_file=certs / "lab-ca.pem")
        store = open_decisions(good)
        store.append([set_entry("order", "a.example", "1", "", 0.0, "ops")])
        with store.transaction() as tx:
            tx.cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert tx.cur.fetchone()[0] is True
        store.close()
        other = tmp_path / "other"
        other.mkdir()
        make_cert(other, ["localhost"])
        bad_ca = config(tmp_path, url, password_file=pw, sslmode="verify-full", ca_file=other / "lab-ca.pem")
        with pytest.raises(StoreError, match=rf"decision store postgresql://beiand@localhost:{pg.port}/fleet: .*(SSL error|certificate)"):
            open_decisions(bad_ca).head()
        pw.write_text("wrong\n")
        with pytest.raises(StoreError, match="password authentication failed") as e:
            open_decisions(good)
        assert "wrong" not in str(e.value)
        pw.write_text("cr0ss-dc-s3cret\n")
        pw.chmod(0o644)
        with pytest.raises(StoreError, match=r"store\.password_file"):
            open_decisions(good)
        nossl = config(tmp_path, url, password_file=None, sslmode="disable")
        with pytest.raises(StoreError, match=r"rejects connection|no encryption"):
            open_decisions(nossl)
    finally:
        pg.stop()


def test_the_register_on_both_backends_bulk_and_row_by_row(tmp_path: Path, url: str) -> None:
    """Issue 35: the register's publication (PostgreSQL's COPY beyond a thousand rows), fetch by
    content, lookup keys and diff give the same on SQLite and PostgreSQL; a publication NOTIFYs."""
    from beiand.store import register as reg

    store = open_decisions(config(tmp_path, url))
    listener = open_decisions(config(tmp_path, url))
    try:
        if listener.dialect == "postgresql":
            listener.channel = reg.CHANNEL  # type: ignore[attr-defined]
            listener.wait(0.1)  # listening from now
        first = {f"k{i:05d}": f'["v{i}"]' for i in range(3000)}
        v1 = reg.publish(store, "records", [reg.RegisterRow(k, d, (k, "shared")) for k, d in first.items()])
        if listener.dialect == "postgresql":
            assert listener.wait(10)  # news of the version, not its content
        second = {**{k: d for k, d in first.items() if k != "k00007"}, "k00001": '["changed"]', "knew": '["new"]'}
        v2 = reg.publish(store, "records", [reg.RegisterRow(k, d, (k,)) for k, d in second.items()])
        assert (v1.version, v2.version) == (1, 2) and v2.summary == {"added": 1, "removed": 1, "changed": 1}
        for version, snap in ((1, first), (2, second)):
            got, rows = reg.fetch(store, "records", version)
            assert got is not None and dict(rows) == snap
        assert dict(reg.rows_named(store, "records", ["k00007", "k00001"], 1)) == {"k00007": first["k00007"],
                                                                                   "k00001": first["k00001"]}
        assert dict(reg.rows_named(store, "records", ["k00007", "k00001"], 2)) == {"k00001": '["changed"]'}
        assert len(reg.rows_named(store, "records", ["shared"], 2)) == 2998  # content kept from version 1
        d = reg.diff(store, "records", 1, 2)
        assert (d.added, d.removed, [k for k, _, _ in d.changed]) == (["knew"], ["k00007"], ["k00001"])
        assert reg.size(store)["beiand_register_rows"] == 3002
        assert store.head() == 0  # the decision rows are the orders' and commands' only
        for sql in ("DELETE FROM beiand_register_rows", "UPDATE beiand_register_rows SET valid_to = 9 WHERE key = 'k00007'",
                    "UPDATE beiand_register_content SET data = 'x'"):
            with pytest.raises(StoreError, match="register"), store.transaction() as tx:
                tx.cur.execute(sql)
        assert dict(reg.fetch(store, "records", 1)[1]) == first
    finally:
        store.close()
        listener.close()


def test_register_times_follow_the_versions_and_files_history_stays_off_a_shared_store(tmp_path: Path, url: str) -> None:
    """Issue 35 review: a version's time is taken under the lock, never before the one it follows
    (both dialects); a files-mode gateway keeps its history only in an SQLite store of its own."""
    from beiand.runtime.register import history_owner, record_loaded
    from beiand.store import register as reg

    cfg = config(tmp_path, url)
    s = open_decisions(cfg)
    v1 = reg.publish(s, "records", [reg.RegisterRow("a", "1")])
    v2 = reg.publish(s, "inventory", [reg.RegisterRow("p", "x")])
    assert v1.at <= v2.at and reg.version_at(s, v2.at) == 2 and reg.version_at(s, v1.at - 1) == 0
    why = history_owner(cfg, s)
    if url.startswith("postgresql://"):
        assert "postgresql" in why
        from beiand.policy.inventory import Inventory
        from beiand.policy.nat import NatTable
        from beiand.records.index import RecordIndex

        assert record_loaded(cfg, s, RecordIndex([]), Inventory([]), NatTable([])) == 0 and reg.head(s) == 2
    else:
        assert why == ""
        assert history_owner(config(tmp_path, url, gateway="gw-b"), s).startswith("the register in")
    s.close()
