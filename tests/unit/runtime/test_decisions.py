"""The supervisor's follower of the decision store (issue 29), on the embedded SQLite store: the
snapshot the workers read, the version every worker applies, fail static, the one-time import."""

from __future__ import annotations

import json
from pathlib import Path

from beiand.policy.orders import OrderStore, set_entry
from beiand.runtime.decisions import Follower, lag, open_decisions
from beiand.runtime.settings import Config, DaemonSection
from beiand.store import StoreError


def cfg(tmp_path: Path) -> Config:
    return Config(daemon=DaemonSection(gateway="gw-t", state_dir=tmp_path / "state"))


def test_the_snapshot_holds_the_store_version_and_the_workers_version_is_the_lowest(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    store = open_decisions(c)
    store.append([set_entry("order", "a.example", "1", "", 0.0, "ops")])
    f = Follower(c)
    assert f.sync() == ["authority", "case", "exemption", "isms", "order"]  # the first contact writes every snapshot
    snap = json.loads((tmp_path / "state" / "orders.json").read_text())
    assert snap["snapshot"]["version"] == 1 and [o[0] for o in snap["orders"]] == ["a.example"]
    assert f.applied() == 1  # no worker yet: the snapshot's
    f.worker_versions = lambda: {"order": 0.0, "exemption": 1.0}
    assert f.applied() == 0  # a worker still holds the file before it
    f.worker_versions = lambda: {"order": 1.0, "exemption": 1.0}
    assert f.applied() == 1
    store.append([set_entry("order", "b.example", "2", "", 0.0, "ops")])
    assert f.sync() == ["order"] and f.applied() == 1  # written, not yet read by the workers
    f.stop()
    store.close()


def test_unreachable_the_follower_keeps_its_snapshot_and_says_so(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    store = open_decisions(c)
    store.append([set_entry("order", "a.example", "1", "", 0.0, "ops")])
    store.close()
    Follower(c).first_sync()  # the snapshot, written

    def away() -> None:
        raise StoreError("decision store x: connection refused")

    f = Follower(c, opener=away)  # type: ignore[arg-type]
    f.first_sync()
    st = f.status()
    assert st["fails_static"] and st["version"] == 1 and st["orders"] == 1 and "refused" in st["error"]
    assert OrderStore(tmp_path / "state").orders.keys() == {"a.example"}


def test_lag_counts_versions_and_heartbeat_age() -> None:
    rows = lag([{"gateway": "a", "version": 3, "heartbeat_at": 100.0}, {"gateway": "b", "version": 5, "heartbeat_at": 90.0}], 5,
               now=101.0)
    assert [(r["behind"], r["heartbeat_age_s"]) for r in rows] == [(2, 1.0), (0, 11.0)]


def test_two_gateways_importing_their_old_files_never_lift_what_is_in_force(tmp_path: Path) -> None:
    """Review of issue 29: a gateway pair, every order repeated on each before the store. The
    second import replayed its history (set, end) over the first's order and lifted it."""
    import dataclasses
    import time

    from beiand.isms.store import CommandStore
    from beiand.isms.wire.model import Rule, SecurityCommand
    from beiand.runtime.decisions import fold_store, import_legacy
    from beiand.store import StoreSettings, open_store

    def command(i: int) -> SecurityCommand:
        return SecurityCommand(command_id=i, type=1, operation=0, rules=(Rule(1, f"c{i}.example", ""),), block=1, log=1,
                               report=1, reason="", effect_time=0.0, expired_time=0.0, house_ids=(), owner="", time_stamp="")

    for gw in ("a", "b"):
        old = OrderStore(tmp_path / gw)
        old.add("x.example", "O-1", "first", by="ops")
        time.sleep(0.002)
        old.add("x.example", "O-2", "second", by="ops")
        cs = CommandStore(tmp_path / gw)
        with cs.writing():
            cs.apply_security(command(5), time.time())
        with cs.writing():
            cs.apply_security(dataclasses.replace(command(5), reason="again"), time.time())  # the first one: history
    db = tmp_path / "fleet.sqlite"
    for gw in ("a", "b"):
        store = open_store(StoreSettings(str(db)), tmp_path / gw, f"gw-{gw}")
        store.migrate()
        import_legacy(store, tmp_path / gw)
        f = fold_store(Config(), store)
        assert {k: o.order for k, o in f.orders.orders.items()} == {"x.example": "O-2"}, gw
        assert set(f.commands.state.commands) == {5}, gw
        store.close()


def test_a_snapshot_of_another_store_is_imported_and_folded_again(tmp_path: Path) -> None:
    """Review of issue 29: store.url changed (SQLite → the fleet's PostgreSQL, or a store
    restored): the snapshot's version was trusted and the new store's first rows skipped."""
    import dataclasses

    c = cfg(tmp_path)
    s = open_decisions(c)
    for i in range(5):
        s.append([set_entry("order", f"old{i}.example", str(i), "", 0.0, "ops")])
    s.close()
    f = Follower(c)
    f.first_sync()
    f.stop()
    c2 = dataclasses.replace(c, store=dataclasses.replace(c.store, url=str(tmp_path / "new.sqlite")))
    s2 = open_store_plain(c2)
    s2.append([set_entry("order", "new.example", "N1", "", 0.0, "ops")])
    s2.close()
    f2 = Follower(c2)
    f2.first_sync()
    assert set(f2.folded.orders.orders) == {"new.example", *(f"old{i}.example" for i in range(5))}
    f2.stop()


def open_store_plain(c: Config):  # type: ignore[no-untyped-def]
    """The store itself, migrated, without the one-time import (a fresh fleet store)."""
    return open_decisions(c, import_files=False)


def test_a_snapshot_that_could_not_be_written_or_was_removed_is_written_again(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    store = open_decisions(c)
    f = Follower(c)
    f.first_sync()
    store.append([set_entry("order", "a.example", "1", "", 0.0, "ops")])
    real = OrderStore.snapshot

    def full(self: OrderStore, url: str | None) -> None:
        raise OSError(28, "No space left on device")

    OrderStore.snapshot = full  # type: ignore[method-assign]
    try:
        f.step(0.0)
        assert f.status()["snapshot_error"] and f.status()["reachable"]  # the disk, not the store
    finally:
        OrderStore.snapshot = real  # type: ignore[method-assign]
    f.step(0.0)
    snap = tmp_path / "state" / "orders.json"
    assert [o[0] for o in json.loads(snap.read_text())["orders"]] == ["a.example"]
    snap.unlink()
    f.step(0.0)
    assert [o[0] for o in json.loads(snap.read_text())["orders"]] == ["a.example"]
    f.stop()
    store.close()


def test_a_command_not_written_leaves_nothing_in_memory_and_no_ack(tmp_path: Path) -> None:
    """Review of issue 29: a StoreError at commit answered "not applied" but the command stayed
    in the ISMS runtime's state (reports, DT 6) and its ack could still go out."""
    import time

    from beiand.isms.store import CommandStore
    from beiand.isms.wire.model import ListEntry

    c = cfg(tmp_path)
    store = open_decisions(c)
    cs = CommandStore(tmp_path / "state", decisions=store)

    def fail(*a: object, **k: object) -> int:
        raise StoreError("decision store x: disk I/O error")

    from beiand.store.base import Transaction

    orig = Transaction.append
    Transaction.append = fail  # type: ignore[method-assign,assignment]
    try:
        try:
            with cs.writing():
                cs.apply_list(ListEntry("blacklist", 7, 1, "bad.example", 0), time.time())
                cs.note_sequence(42)
        except StoreError:
            pass
        else:
            raise AssertionError("the write did not fail")
    finally:
        Transaction.append = orig  # type: ignore[method-assign]
    assert not cs.state.lists and not cs.state.sequences
    assert store.head() == 0
    store.close()


def test_the_authoritys_lists_reach_the_workers_snapshot_and_conflicts_are_counted(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from beiand.policy.authority import CONFLICT, listed_entry, note
    from beiand.records.authority import AuthorityEntry

    c = cfg(tmp_path)
    store = open_decisions(c)
    e = AuthorityEntry("filed.example.com", "TG-1", "2026-12-01", "", "", "l.csv:2")
    store.append([listed_entry(e, "0" * 64, "ops", 1.0), note(e.target, "assessed", "ops", "", 1.0, list="TG-1", outcome=CONFLICT)])
    reg = CollectorRegistry()
    f = Follower(c, reg)
    f.sync()
    snap = json.loads((tmp_path / "state" / "authority.json").read_text())
    assert [o[:2] for o in snap["orders"]] == [["filed.example.com", "TG-1"]]
    assert reg.get_sample_value("beiand_authority_conflicts") == 1 and f.status()["authority_conflicts"] == 1
    store.append([set_entry("order", "a.example", "1", "", 0.0, "ops")])
    assert f.sync() == ["order"]  # rows of another kind: the lists are not read again
    store.append([note(e.target, "settled", "bob", "filing checked", 2.0, list="TG-1")])
    assert f.sync() == []  # a note changes no rule: no snapshot written, but the conflict is settled
    assert reg.get_sample_value("beiand_authority_conflicts") == 0
    f.stop()
    store.close()
