"""The inventory history: the account that held an address at a past time, not today's."""

from __future__ import annotations

from pathlib import Path

import pytest

from beiand.policy.history import HistoryError, Holders, history_dir, record_load


def test_two_loads_answer_for_their_own_times(tmp_path: Path) -> None:
    inv = tmp_path / "inventory.csv"
    state = tmp_path / "state"
    inv.write_text("prefix,account,site\n198.51.100.0/24,cust-old,bj-1\n")
    record_load(state, inv, 1000)
    inv.write_text("prefix,account,site\n198.51.100.0/25,cust-new,bj-1\n")
    record_load(state, inv, 5000)
    record_load(state, inv, 6000)  # an unchanged reload: a line, no second copy
    h = Holders(state)
    assert h.holder("198.51.100.7", 999) == ""  # before the first load: unknown
    assert h.holder("198.51.100.7", 1000) == "cust-old"
    assert h.holder("198.51.100.7", 4999) == "cust-old"
    assert h.holder("198.51.100.7", 5000) == "cust-new"
    assert h.holder("198.51.100.200", 2000) == "cust-old"
    assert h.holder("198.51.100.200", 7000) == ""  # no longer hosted
    held = h.at("198.51.100.7", 3000)
    assert held.prefix is not None and held.prefix.prefix == "198.51.100.0/24" and held.loaded_ms == 1000
    assert len(list(history_dir(state).glob("*.csv"))) == 2
    assert len((history_dir(state) / "loads.jsonl").read_text().splitlines()) == 3


def test_no_inventory_is_a_load_too(tmp_path: Path) -> None:
    inv = tmp_path / "inventory.toml"
    inv.write_text('[[prefix]]\nprefix = "192.0.2.0/24"\naccount = "a"\n')
    record_load(tmp_path, inv, 10)
    record_load(tmp_path, None, 20)
    h = Holders(tmp_path)
    assert h.holder("192.0.2.1", 15) == "a" and h.holder("192.0.2.1", 25) == ""


def test_a_damaged_history_line_names_the_file_and_line(tmp_path: Path) -> None:
    d = history_dir(tmp_path)
    d.mkdir(parents=True)
    (d / "loads.jsonl").write_text('{"ts_ms": 1, "file": ""}\nnot json\n')
    with pytest.raises(HistoryError, match=r"loads.jsonl:2"):
        Holders(tmp_path)


def test_the_timeline_gives_every_load_in_time_order_up_to_a_time(tmp_path: Path) -> None:
    inv = tmp_path / "inv.csv"
    inv.write_text("prefix,account\n198.51.100.0/24,a\n", encoding="utf-8")
    record_load(tmp_path, inv, 2000)
    inv.write_text("prefix,account\n198.51.100.0/24,b\n203.0.113.0/24,c\n", encoding="utf-8")
    record_load(tmp_path, inv, 1000)  # recorded out of order: sorted by time
    record_load(tmp_path, None, 3000)
    h = Holders(tmp_path)
    assert [(ts, len(i)) for ts, i in h.timeline()] == [(1000, 2), (2000, 1), (3000, 0)]
    assert [ts for ts, _ in h.timeline(2000)] == [1000, 2000]
