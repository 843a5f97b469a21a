"""IP地址备案 (501号 art. 19): the allocated blocks from the inventory history, the changes since the
last report and their five-working-day deadlines, on a fixed clock and a holiday calendar."""

from __future__ import annotations

import datetime as dt

from beiand.model import PrefixState
from beiand.policy.inventory import HostedPrefix, Inventory
from beiand.policy.workdays import BEIJING, WorkCalendar
from beiand.report import ipreport
from beiand.store import Change

CAL = WorkCalendar(holidays=[dt.date(2026, 12, 8)], source="holidays.csv")  # a Tuesday off


def t(*args: int) -> float:
    return dt.datetime(*args, tzinfo=BEIJING).timestamp()


def inv(*rows: tuple[str, str, str]) -> Inventory:
    return Inventory(HostedPrefix(p, acct, "bj", PrefixState(state), None, unit=f"{acct} 有限公司", usage="IDC托管")
                     for p, acct, state in rows)


def end_of(y: int, m: int, d: int) -> float:
    return t(y, m, d + 1) - 0.001


A = ("198.51.100.0/24", "cust-1", "active")
B = ("203.0.113.0/28", "cust-2", "pending")


def test_an_allocation_added_on_a_friday_is_due_at_the_end_of_the_fifth_working_day() -> None:
    friday = t(2026, 12, 4, 18)
    timeline = [(int(t(2026, 11, 2, 9) * 1000), inv(A)), (int(friday * 1000), inv(A, B))]
    last = ipreport.Reported(t(2026, 11, 3), "ops", 1, {"198.51.100.0/24": ("cust-1 有限公司", "IDC托管")})
    r = ipreport.build(timeline, last, CAL, t(2026, 12, 7, 10))
    assert [(c.change, c.prefix) for c in r.changes] == [("added", "203.0.113.0/28")]
    c = r.changes[0]
    assert c.changed_at == friday
    # Mon 7 (1), Tue 8 off, Wed 9 (2), Thu 10 (3), Fri 11 (4), Mon 14 (5)
    assert c.deadline == end_of(2026, 12, 14) and not c.overdue and r.overdue == 0
    assert ipreport.build(timeline, last, WorkCalendar(), t(2026, 12, 7)).changes[0].deadline == end_of(2026, 12, 11)
    assert ipreport.build(timeline, last, CAL, end_of(2026, 12, 14)).overdue == 0
    assert ipreport.build(timeline, last, CAL, t(2026, 12, 15)).overdue == 1


def test_blocks_carry_start_end_unit_since_and_usage() -> None:
    timeline = [(int(t(2026, 11, 2, 9) * 1000), inv(A)), (int(t(2026, 12, 4, 18) * 1000), inv(A, B, ("192.0.2.0/24", "x", "closed")))]
    r = ipreport.build(timeline, None, CAL, t(2026, 12, 7))
    assert [(b.start, b.end, b.unit, b.usage, b.state) for b in r.blocks] == [
        ("198.51.100.0", "198.51.100.255", "cust-1 有限公司", "IDC托管", "active"),
        ("203.0.113.0", "203.0.113.15", "cust-2 有限公司", "IDC托管", "pending")]  # a closed prefix is not allocated
    assert r.blocks[0].since == t(2026, 11, 2, 9)
    rows = r.report_rows()
    assert len(rows[0]) == len(ipreport.REPORT_COLUMNS) and rows[0][5] == "2026-11-02"
    assert r.overdue == 1  # never reported: the November block is long overdue


def test_unit_changed_and_removed_are_measured_against_the_last_report() -> None:
    moved = Inventory([HostedPrefix("198.51.100.0/24", "cust-9", "bj", PrefixState.ACTIVE, None)])
    timeline = [(int(t(2026, 11, 2) * 1000), inv(A, B)), (int(t(2026, 12, 1, 12) * 1000), moved)]
    first = ipreport.build(timeline[:1], None, CAL, t(2026, 11, 3))
    last = ipreport.last_report([Change(7, "ip-report", "reported", "set", ipreport.reported_entry(first, "ops", "", 0).data,
                                        t(2026, 11, 3), "ops", "", "gw1")])
    assert last is not None and set(last.blocks) == {"198.51.100.0/24", "203.0.113.0/28"}
    r = ipreport.build(timeline, last, CAL, t(2026, 12, 7))
    assert {(c.change, c.prefix, c.unit, c.old_unit) for c in r.changes} == {
        ("unit-changed", "198.51.100.0/24", "cust-9", "cust-1 有限公司"), ("removed", "203.0.113.0/28", "", "cust-2 有限公司")}
    assert all(c.changed_at == t(2026, 12, 1, 12) for c in r.changes)
    assert r.blocks[0].since == t(2026, 12, 1, 12)  # the new unit's allocation
    removed = [row for row in r.report_rows() if row[9].startswith("删除")]
    assert removed and removed[0][2] == "203.0.113.0/28" and removed[0][10] == "cust-2 有限公司"


def test_marking_the_report_filed_leaves_no_change_and_nothing_overdue() -> None:
    timeline = [(int(t(2026, 11, 2) * 1000), inv(A, B))]
    before = ipreport.build(timeline, None, CAL, t(2026, 12, 7))
    assert before.overdue == 2
    e = ipreport.reported_entry(before, "ops", "filed", t(2026, 12, 7))
    assert (e.kind, e.key, e.op) == ("ip-report", "reported", "set")
    last = ipreport.last_report([Change(1, e.kind, e.key, e.op, e.data, e.at, e.actor, e.why, "gw1")])
    after = ipreport.build(timeline, last, CAL, t(2026, 12, 7, 1))
    assert after.changes == () and after.overdue == 0 and after.as_dict()["last_report"]["by"] == "ops"


def test_damaged_or_foreign_rows_are_skipped_and_no_load_is_said() -> None:
    rows = [Change(1, "ip-report", "reported", "set", {"blocks": "nope"}, 1.0, "", "", "gw"),
            Change(2, "case", "x", "set", {}, 2.0, "", "", "gw")]
    assert ipreport.last_report(rows) is None
    r = ipreport.build([], None, CAL, t(2026, 12, 7))
    assert r.blocks == () and r.loads == 0 and r.warnings


def test_a_year_the_calendar_does_not_hold_is_warned_about() -> None:
    timeline = [(int(t(2027, 1, 4) * 1000), inv(A))]
    r = ipreport.build(timeline, None, CAL, t(2027, 1, 5))
    assert any("2027" in w for w in r.warnings)
    assert any("no holiday calendar" in w for w in ipreport.build(timeline, None, WorkCalendar(), t(2027, 1, 5)).warnings)


def test_a_reload_of_the_same_content_changes_nothing() -> None:
    ab = inv(A, B)  # the history hands the same Inventory for the same content (content-addressed copies)
    timeline = [(int(t(2026, 11, 2) * 1000), inv(A)), (int(t(2026, 12, 4, 18) * 1000), ab), (int(t(2026, 12, 5) * 1000), ab),
                (int(t(2026, 12, 9) * 1000), ab)]
    r = ipreport.build(timeline, None, CAL, t(2026, 12, 10))
    assert r.loaded_at == t(2026, 12, 4, 18) and r.loads == 2
    assert {c.prefix: c.changed_at for c in r.changes}["203.0.113.0/28"] == t(2026, 12, 4, 18)


def test_a_deadline_in_a_year_the_calendar_does_not_hold_is_warned() -> None:
    """Review of issue 35: a change on 30 December is due in January; a calendar of this year only
    cannot count next year's holidays (春节 adjustments), and the report must say so."""
    timeline = [(int(t(2026, 11, 2) * 1000), inv(A)), (int(t(2026, 12, 30, 10) * 1000), inv(A, B))]
    last = ipreport.Reported(t(2026, 11, 3), "ops", 1, {"198.51.100.0/24": ("cust-1 有限公司", "IDC托管")})
    r = ipreport.build(timeline, last, CAL, t(2026, 12, 31))
    assert r.changes[0].deadline > t(2027, 1, 1)
    assert any("2027" in w and "203.0.113.0/28" in w for w in r.warnings), r.warnings
    inside = [(int(t(2026, 11, 2) * 1000), inv(A)), (int(t(2026, 12, 1, 10) * 1000), inv(A, B))]
    assert not ipreport.build(inside, last, CAL, t(2026, 12, 2)).warnings
