"""Working days (工作日) with the official holiday arrangement (节假日安排, 调休), for deadlines.

A sponsor case's 整改 deadline is counted in working days (issue 31: ``cases.rectify_days``): Monday
to Friday, except the public holidays the State Council's yearly notice gives (放假), plus the
weekend days it makes working days (调休上班). Without a calendar file only weekends are days off,
and :meth:`WorkCalendar.covers` says so for a year the file does not reach, so that a deadline is
never silently counted without the year's holidays.

The file is CSV (``date,kind[,name]``, Chinese headers 日期, 类型, 名称) or TOML (``[[day]]`` tables
with ``date``, ``kind``, ``name``); ``kind`` is ``holiday`` (休, 放假, 假) or ``workday`` (班, 上班,
调休上班). Every problem is reported as ``file:line: field: reason`` and the file is refused whole.

Dates are Beijing dates (UTC+8): a deadline ends at the end of its working day in Beijing.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Iterable
from pathlib import Path

from beiand.errors import FileProblems
from beiand.policy.inventory import csv_rows

BEIJING = dt.timezone(dt.timedelta(hours=8))
_KINDS = {"holiday": True, "休": True, "放假": True, "假": True, "workday": False, "班": False, "上班": False, "调休上班": False}
_HEADERS = {"date": "date", "日期": "date", "kind": "kind", "类型": "kind", "name": "name", "名称": "name"}


class CalendarError(FileProblems):
    """The holiday calendar is invalid; ``problems`` lists every ``file:line: field: reason``."""


class WorkCalendar:
    """Which Beijing dates are working days."""

    def __init__(self, holidays: Iterable[dt.date] = (), workdays: Iterable[dt.date] = (), source: str = "") -> None:
        self.holidays = frozenset(holidays)
        self.workdays = frozenset(workdays)  # weekend days made working days (调休上班)
        both = self.holidays & self.workdays
        if both:
            raise ValueError(f"{min(both)}: both a holiday and a working day")
        self.source = source
        self.years = frozenset(d.year for d in (*self.holidays, *self.workdays))

    def is_workday(self, d: dt.date) -> bool:
        if d in self.workdays:
            return True
        return d.weekday() < 5 and d not in self.holidays

    def covers(self, d: dt.date) -> bool:
        """Whether the calendar holds the arrangement of ``d``'s year (False: weekends only)."""
        return d.year in self.years

    def add(self, start: dt.date, n: int) -> dt.date:
        """The ``n``-th working day after ``start`` (``start`` itself not counted); ``start`` for 0."""
        if n < 0:
            raise ValueError(f"{n}: a number of working days is not negative")
        d = start
        while n:
            d += dt.timedelta(days=1)
            if self.is_workday(d):
                n -= 1
        return d

    def before(self, deadline: float, n: int) -> float:
        """The start (Beijing time) of the ``n``-th working day before the day ``deadline`` falls
        on, as Unix seconds: when a reminder ``n`` working days before the deadline goes out."""
        d = dt.datetime.fromtimestamp(deadline, BEIJING).date()
        while n > 0:
            d -= dt.timedelta(days=1)
            if self.is_workday(d):
                n -= 1
        return dt.datetime(d.year, d.month, d.day, tzinfo=BEIJING).timestamp()

    def between(self, a: dt.date, b: dt.date) -> int:
        """Working days after ``a`` up to and including ``b`` (0 when ``b`` is not after ``a``)."""
        n, d = 0, a
        while d < b:
            d += dt.timedelta(days=1)
            n += self.is_workday(d)
        return n

    def deadline(self, opened_at: float, n: int) -> float:
        """The end (Beijing time) of the ``n``-th working day after the day ``opened_at`` falls on,
        as Unix seconds: a case opened on Friday evening with 5 working days ends Friday next week."""
        day = dt.datetime.fromtimestamp(opened_at, BEIJING).date()
        end = self.add(day, n) + dt.timedelta(days=1)
        return dt.datetime(end.year, end.month, end.day, tzinfo=BEIJING).timestamp() - 0.001


def _date(text: str) -> dt.date:
    t = text.strip().replace("/", "-").replace(".", "-")
    try:
        return dt.date.fromisoformat(t)
    except ValueError:
        try:
            return dt.datetime.strptime(t, "%Y年%m月%d日").date()
        except ValueError:
            raise ValueError(f"{text.strip()[:40]!r} is not a date (yyyy-MM-dd)") from None


def load_calendar(path: str | Path | None) -> WorkCalendar:
    """The calendar file (CSV or TOML), or weekends only when ``path`` is None."""
    if path is None:
        return WorkCalendar()
    p = Path(path)
    problems: list[str] = []
    rows: list[tuple[str, dict[str, str]]] = []
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise CalendarError([f"{p}: cannot read: {exc.strerror}"]) from None
    if p.suffix.lower() == ".toml":
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise CalendarError([f"{p}: {exc}"]) from None
        items = doc.get("day", [])
        unknown = set(doc) - {"day"}
        if unknown or not isinstance(items, list):
            raise CalendarError([f"{p}: {sorted(unknown)[0] if unknown else 'day'}: expected only [[day]] tables"])
        for i, item in enumerate(items, 1):
            if not isinstance(item, dict) or set(item) - {"date", "kind", "name"}:
                problems.append(f"{p}:[[day]] #{i}: expected date, kind and name")
                continue
            rows.append((f"{p}:[[day]] #{i}", {k: str(v) for k, v in item.items()}))
    else:
        rows += csv_rows(p, raw, _HEADERS, ("date", "kind"), "date,kind[,name]", "日期,类型,名称", CalendarError, problems)
    holidays: dict[dt.date, str] = {}
    workdays: dict[dt.date, str] = {}
    for where, cells in rows:
        try:
            d = _date(cells.get("date", ""))
        except ValueError as exc:
            problems.append(f"{where}: date (日期): {exc}")
            continue
        kind = _KINDS.get(cells.get("kind", "").strip().lower())
        if kind is None:
            problems.append(f"{where}: kind (类型): {cells.get('kind', '')[:20]!r} is not holiday (休) or workday (班)")
            continue
        mine, other = (holidays, workdays) if kind else (workdays, holidays)
        if d in other:
            problems.append(f"{where}: date (日期): {d} is already a {'working day' if kind else 'holiday'} at {other[d]}")
            continue
        mine.setdefault(d, where)
    if problems:
        raise CalendarError(problems)
    return WorkCalendar(holidays, workdays, str(p))
