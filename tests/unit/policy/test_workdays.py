"""Working days with the official holiday arrangement (beiand/policy/workdays.py, issue 31's deadlines)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beiand.policy.workdays import BEIJING, CalendarError, WorkCalendar, load_calendar

D = dt.date


def test_the_2026_national_day_arrangement(tmp_path: Path) -> None:
    """国庆节 2026 as a calendar file: Oct 1-7 off, the Saturday before and after worked (调休上班)."""
    p = tmp_path / "holidays.csv"
    p.write_text("日期,类型,名称\n" + "".join(f"2026-10-0{i},休,国庆节\n" for i in range(1, 8))
                 + "2026-09-27,班,国庆节调休\n2026-10-10,班,国庆节调休\n# a comment\n", encoding="utf-8")
    cal = load_calendar(p)
    assert cal.is_workday(D(2026, 9, 27)) and not cal.is_workday(D(2026, 10, 5)) and cal.is_workday(D(2026, 10, 10))
    assert not cal.is_workday(D(2026, 10, 11))  # an ordinary Sunday
    assert cal.add(D(2026, 9, 30), 1) == D(2026, 10, 8)  # the day after the holiday week
    assert cal.add(D(2026, 9, 30), 3) == D(2026, 10, 10)  # Thu, Fri, and the Saturday worked
    assert cal.between(D(2026, 9, 25), D(2026, 10, 10)) == 7  # Sep 27, 28, 29, 30; Oct 8, 9, 10
    assert cal.covers(D(2026, 3, 1)) and not cal.covers(D(2027, 3, 1))


def test_a_deadline_ends_at_the_end_of_its_working_day_in_beijing() -> None:
    cal = WorkCalendar()  # weekends only
    friday_evening = dt.datetime(2026, 12, 4, 20, 0, tzinfo=BEIJING).timestamp()
    end = cal.deadline(friday_evening, 5)
    assert dt.datetime.fromtimestamp(end, BEIJING).strftime("%Y-%m-%d %H:%M:%S") == "2026-12-11 23:59:59"
    assert cal.deadline(friday_evening, 0) < dt.datetime(2026, 12, 5, tzinfo=BEIJING).timestamp()


def test_toml_and_bad_files_name_the_line_and_field(tmp_path: Path) -> None:
    t = tmp_path / "h.toml"
    t.write_text('[[day]]\ndate = 2026-01-01\nkind = "holiday"\nname = "元旦"\n[[day]]\ndate = "2026-01-04"\nkind = "workday"\n',
                 encoding="utf-8")
    cal = load_calendar(t)
    assert not cal.is_workday(D(2026, 1, 1)) and cal.is_workday(D(2026, 1, 4))
    p = tmp_path / "bad.csv"
    p.write_text("date,kind\n2026-13-01,holiday\n2026-05-01,maybe\n2026-05-02,休\n2026-05-02,班\n2026年5月9日,班\n",
                 encoding="utf-8")
    with pytest.raises(CalendarError) as exc:
        load_calendar(p)
    assert exc.value.problems == [
        f"{p}:2: date (日期): '2026-13-01' is not a date (yyyy-MM-dd)",
        f"{p}:3: kind (类型): 'maybe' is not holiday (休) or workday (班)",
        f"{p}:5: date (日期): 2026-05-02 is already a holiday at {p}:4",
    ]
    (tmp_path / "h.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(CalendarError, match="header"):
        load_calendar(tmp_path / "h.csv")
    with pytest.raises(CalendarError, match="cannot read"):
        load_calendar(tmp_path / "none.csv")
    assert load_calendar(None).is_workday(D(2026, 12, 7)) and not load_calendar(None).is_workday(D(2026, 12, 6))
    with pytest.raises(ValueError, match="not negative"):
        WorkCalendar().add(D(2026, 1, 1), -1)


days = st.dates(min_value=D(2025, 1, 1), max_value=D(2027, 12, 31))


@settings(max_examples=200, deadline=None)
@given(st.sets(days, max_size=40), st.sets(days, max_size=10), days, st.integers(0, 60))
def test_adding_and_counting_working_days_agree(holidays: set[dt.date], workdays: set[dt.date], start: dt.date, n: int) -> None:
    """Property: the n-th working day after a date is a working day, n of them lie between, and
    one more working day is never earlier."""
    cal = WorkCalendar(holidays - workdays, workdays)
    end = cal.add(start, n)
    assert cal.between(start, end) == n
    assert n == 0 or cal.is_workday(end)
    assert cal.add(start, n + 1) > end


def test_a_row_the_header_cannot_hold_is_named(tmp_path: Path) -> None:
    """The calendar reads CSV as the inventory does (policy.inventory.csv_rows): a row with more
    cells than the header is named, not cut short silently."""
    p = tmp_path / "h.csv"
    p.write_text("date,kind\n2026-05-01,休,劳动节\n", encoding="utf-8")
    with pytest.raises(CalendarError) as exc:
        load_calendar(p)
    assert exc.value.problems == [f"{p}:2: row: 3 fields, the header has 2"]
    (tmp_path / "e.csv").write_text("", encoding="utf-8")
    with pytest.raises(CalendarError, match="empty file; expected date,kind"):
        load_calendar(tmp_path / "e.csv")
