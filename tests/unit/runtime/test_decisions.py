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
    assert f.sync() == ["exemption", "isms", "order"]  # the first contact writes every snapshot
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
