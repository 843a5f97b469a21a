"""Rows and their fold (issue 29): whatever sequence of changes the store holds, the fold keeps the
last order put in force per target, every replaced or lifted one in the history with who, when and
why, and the snapshot the workers read gives back the same state."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beiand.policy.orders import OrderStore
from beiand.store import Change, Entry, StoreError
from beiand.store.base import check_entry

TARGETS = ["a.example", "b.a.example", "198.51.100.7", "198.51.100.0/24", "2001:db8::/32"]
op = st.tuples(st.sampled_from(["set", "end", "note"]), st.sampled_from(TARGETS), st.integers(1, 5),
               st.floats(0, 10_000, allow_nan=False), st.sampled_from(["alice", "bob", ""]))


@settings(max_examples=200, deadline=None)
@given(st.lists(op, max_size=40))
def test_the_fold_keeps_the_last_order_per_target_and_every_other_in_the_history(ops: list[tuple[str, str, int, float, str]]) -> None:
    rows = [Change(i + 1, "order", t, o, {"order": f"N{n}", "reason": "r"} if o == "set" else {}, at, who, "why", "gw")
            for i, (o, t, n, at, who) in enumerate(ops)]
    s = OrderStore(None, load=False)
    s.apply(rows)
    model: dict[str, str] = {}
    ended = 0
    for o, t, n, _, _ in ops:
        if o == "set":
            ended += t in model
            model[t] = f"N{n}"
        elif o == "end" and t in model:
            del model[t]
            ended += 1
    assert {k: v.order for k, v in s.orders.items()} == model
    assert len(s.history) == ended
    assert s.version == len(ops)
    again = OrderStore(None, load=False)  # folding in two parts, and a row twice, gives the same
    half = len(rows) // 2
    again.apply(rows[:half])
    again.apply(rows[: half + 1])
    again.apply(rows)
    assert again.orders == s.orders and again.history == s.history


@settings(max_examples=50, deadline=None)
@given(st.lists(op, max_size=20))
def test_the_snapshot_reads_back_as_the_fold(tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str, int, float, str]]) -> None:
    d = tmp_path_factory.mktemp("snap")
    s = OrderStore(d, load=False)
    s.apply([Change(i + 1, "order", t, o, {"order": f"N{n}"} if o == "set" else {}, at, who, "", "gw")
             for i, (o, t, n, at, who) in enumerate(ops)])
    s.snapshot("sqlite:test")
    back = OrderStore(d)
    assert back.orders == s.orders and back.history == s.history and back.version == s.version


def test_a_row_of_another_kind_moves_the_version_and_changes_nothing() -> None:
    s = OrderStore(None, load=False)
    assert s.apply([Change(4, "case", "x", "set", {}, 1.0, "", "", "gw")]) == 0
    assert s.version == 4 and not s.orders


@pytest.mark.parametrize(("entry", "why"), [
    (Entry("order", "a.example", "drop", {}, 1.0), "op 'drop'"),
    (Entry("order", "", "set", {}, 1.0), "a kind and a key"),
    (Entry("", "a", "set", {}, 1.0), "a kind and a key"),
    (Entry("order", "a", "set", {}, math.nan), "not a time"),
])
def test_a_change_a_writer_must_not_write_is_refused(entry: Entry, why: str) -> None:
    with pytest.raises(StoreError, match=why):
        check_entry(entry)


def test_the_order_file_of_an_older_beiand_is_told_from_a_snapshot(tmp_path: Path) -> None:
    old = OrderStore(tmp_path)
    old.add("a.example", "1", "")
    fresh = OrderStore(tmp_path)
    assert fresh.version == -1 and set(fresh.orders) == {"a.example"}
    old.snapshot("sqlite:x")
    assert OrderStore(tmp_path).version == 1
