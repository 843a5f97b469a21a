"""IP地址备案 out: the blocks this provider allocates, what changed since the last report, and each
change's deadline (``beiand records ip-report``; docs/ip-report.md).

501号 art. 9 and 19: the access provider reports the addresses it allocates to its customers
(IP地址备案) and every change within five working days; 信息产业部令第34号《互联网IP地址备案管理办法》
art. 7–8: reported electronically through the 备案 system, truthfully and completely.

Everything is read from the inventory's history (``policy.history``: every load under
``daemon.state_dir/inventory-history``), never from today's file alone, so that "since when" and
"changed when" are the times the gateway put the inventory in force. A block is allocated while its
prefix is ``active`` or ``pending`` (预分配: allocated, awaiting the filing; 501号 art. 11); a
``closed`` prefix (已回收) is not. What was last reported is a row of kind ``ip-report`` in the
decision store (``--mark-reported``: key ``reported``, op ``set``, the blocks as filed in its data;
nothing is ever deleted), so every gateway of a fleet sees the same last report. A change is
measured against that report: added (a block not in it), removed (a block in it, no longer
allocated), unit-changed (its 使用单位 differs). Its deadline is the end of the fifth working day
(``policy.workdays``, the holiday calendar of ``cases.holidays_file``) after the day of the first
load that carried it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from beiand.model import PrefixState
from beiand.policy.inventory import HostedPrefix, Inventory
from beiand.policy.workdays import BEIJING, WorkCalendar
from beiand.store import Change as StoreRow
from beiand.store import Entry

KIND = "ip-report"
KEY = "reported"
DEADLINE_WORKING_DAYS = 5  # 501号 art. 19: changes reported within five working days
ARTICLE = "501号 art. 19; 信息产业部令第34号 art. 7–8"
CHANGES = {"added": "新增 (added)", "removed": "删除 (removed)", "unit-changed": "使用单位变更 (unit changed)"}

# The columns of the report (docs/ip-report.md), Chinese first: the blocks, then the changes.
BLOCK_COLUMNS = ("起始地址", "终止地址", "地址段", "使用单位", "用户账号", "分配使用日期", "使用方式", "状态", "机房")
BLOCK_KEYS = ("start", "end", "prefix", "unit", "account", "since", "usage", "state", "site")
CHANGE_COLUMNS = ("变更类型", "起始地址", "终止地址", "地址段", "使用单位", "原使用单位", "变更时间", "报备期限", "已逾期")
CHANGE_KEYS = ("change", "start", "end", "prefix", "unit", "old_unit", "changed_at", "deadline", "overdue")
# CSV and the XLSX's first sheet: every block allocated now, and every block removed since the last
# report, each with its change (empty: as last reported)
REPORT_COLUMNS = (*BLOCK_COLUMNS, "变更类型", "原使用单位", "变更时间", "报备期限", "已逾期")


@dataclass(frozen=True)
class Block:
    """One allocated block as reported: its range, the unit that uses it, since when, how."""

    prefix: str
    start: str
    end: str
    unit: str  # 使用单位 (the inventory's unit column; the account when empty)
    account: str
    usage: str  # 使用方式
    since: float  # when the current unit's allocation took effect (the first load of its run; seconds)
    state: str
    site: str


@dataclass(frozen=True)
class BlockChange:
    change: str  # a key of CHANGES
    prefix: str
    start: str
    end: str
    unit: str  # the unit now ("" for removed)
    old_unit: str  # the unit last reported ("" for added)
    changed_at: float  # the first load that carried the change (seconds)
    deadline: float  # the end of the fifth working day after that day (Beijing)
    overdue: bool


@dataclass(frozen=True)
class Reported:
    """The last report filed (``--mark-reported``): when, by whom, and the blocks as filed."""

    at: float
    actor: str
    version: int
    blocks: dict[str, tuple[str, str]]  # prefix → (unit, usage)


@dataclass(frozen=True)
class IpReport:
    now: float
    blocks: tuple[Block, ...]
    changes: tuple[BlockChange, ...]
    last: Reported | None
    loaded_at: float  # when the inventory in force at ``now`` took effect, its content first (0: no load recorded)
    loads: int  # loads read from the history (a reload of the same content counted with the load before it)
    warnings: tuple[str, ...] = ()

    @property
    def overdue(self) -> int:
        return sum(1 for c in self.changes if c.overdue)

    def block_rows(self) -> list[list[str]]:
        return [[b.start, b.end, b.prefix, b.unit, b.account, _day(b.since), b.usage, b.state, b.site] for b in self.blocks]

    def change_rows(self) -> list[list[str]]:
        return [[CHANGES[c.change], c.start, c.end, c.prefix, c.unit, c.old_unit, beijing_time(c.changed_at), beijing_time(c.deadline),
                 _yes(c.overdue)] for c in self.changes]

    def report_rows(self) -> list[list[str]]:
        """:data:`REPORT_COLUMNS`: the blocks (with their change, if any), then the removed blocks."""
        by_prefix = {c.prefix: c for c in self.changes}
        rows = []
        for b, r in zip(self.blocks, self.block_rows(), strict=True):
            c = by_prefix.get(b.prefix)
            rows.append(r + (["", "", "", "", ""] if c is None else
                             [CHANGES[c.change], c.old_unit, beijing_time(c.changed_at), beijing_time(c.deadline), _yes(c.overdue)]))
        for c in self.changes:
            if c.change == "removed":
                rows.append([c.start, c.end, c.prefix, "", "", "", "", "removed", "", CHANGES[c.change], c.old_unit,
                             beijing_time(c.changed_at), beijing_time(c.deadline), _yes(c.overdue)])
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {"now": beijing_time(self.now), "inventory_loaded": beijing_time(self.loaded_at) if self.loaded_at else None,
                "last_report": None if self.last is None else {"at": beijing_time(self.last.at), "by": self.last.actor,
                                                               "version": self.last.version, "blocks": len(self.last.blocks)},
                "article": ARTICLE, "deadline_working_days": DEADLINE_WORKING_DAYS,
                "blocks": [dict(zip(BLOCK_KEYS, r, strict=True)) for r in self.block_rows()],
                "changes": [{**dict(zip(CHANGE_KEYS, r, strict=True)), "change": c.change, "overdue": c.overdue,
                             "changed_at_epoch": c.changed_at, "deadline_epoch": c.deadline}
                            for c, r in zip(self.changes, self.change_rows(), strict=True)],
                "overdue": self.overdue, "warnings": list(self.warnings)}


def _yes(flag: bool) -> str:
    return "是 (yes)" if flag else "否 (no)"


def beijing_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, BEIJING).strftime("%Y-%m-%d")


def _range(prefix: str) -> tuple[str, str]:
    net = ipaddress.ip_network(prefix)
    return str(net.network_address), str(net.broadcast_address)


def allocated(inv: Inventory) -> dict[str, HostedPrefix]:
    """The blocks an inventory allocates: its active and pending (预分配) prefixes."""
    return {p.prefix: p for p in inv.prefixes if p.state is not PrefixState.CLOSED}


def unit_of(p: HostedPrefix) -> str:
    return p.unit or p.account


def last_report(rows: Iterable[StoreRow]) -> Reported | None:
    """The last ``ip-report`` row of the store (rows of other kinds, or damaged ones, are skipped)."""
    last: Reported | None = None
    for r in rows:
        if r.kind != KIND or r.key != KEY or r.op != "set":
            continue
        raw = r.data.get("blocks")
        if not isinstance(raw, list):
            continue
        blocks: dict[str, tuple[str, str]] = {}
        for item in raw:
            if isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) for x in item):
                blocks[item[0]] = (item[1], item[2])
        last = Reported(r.at, r.actor, r.version, blocks)
    return last


def build(timeline: Sequence[tuple[int, Inventory]], last: Reported | None, calendar: WorkCalendar, now: float) -> IpReport:
    """The report at ``now`` from the recorded loads (``Holders.timeline``) and the last report."""
    # A reload of the same content (the history's copy is content-addressed: the same Inventory)
    # changes nothing: only the first load of each run of equal ones is kept, each allocated once.
    loads: list[tuple[float, dict[str, HostedPrefix]]] = []
    seen: dict[int, dict[str, HostedPrefix]] = {}
    prev: Inventory | None = None
    for ts, inv in timeline:
        if ts / 1000.0 > now:
            continue
        if inv is not prev:
            alloc = seen.get(id(inv))
            if alloc is None:
                alloc = seen[id(inv)] = allocated(inv)
            loads.append((ts / 1000.0, alloc))
        prev = inv
    warnings: list[str] = []
    if not loads:
        return IpReport(now, (), (), last, 0.0, 0, ("no inventory load recorded yet (the daemon records one at every load)",))
    current = loads[-1][1]

    def run_start(held: Any) -> float:
        """The time of the first load of the last run of loads for which ``held(allocation)`` is true."""
        t = loads[-1][0]
        for ts, alloc in reversed(loads):
            if not held(alloc):
                break
            t = ts
        return t

    blocks = []
    for prefix, p in sorted(current.items(), key=lambda kv: _sort_key(kv[0])):
        unit = unit_of(p)
        since = run_start(lambda a, pf=prefix, u=unit: pf in a and unit_of(a[pf]) == u)
        start, end = _range(prefix)
        blocks.append(Block(prefix, start, end, unit, p.account, p.usage, since, p.state.value, p.site))
    baseline = last.blocks if last is not None else {}
    changes: list[BlockChange] = []

    def change(kind: str, prefix: str, unit: str, old: str, at: float) -> None:
        deadline = calendar.deadline(at, DEADLINE_WORKING_DAYS)
        # the working days counted run from the change to its deadline (30 December: into January)
        days = (dt.datetime.fromtimestamp(at, BEIJING).date(), dt.datetime.fromtimestamp(deadline, BEIJING).date())
        missing = sorted({d.year for d in days if not calendar.covers(d)})
        if missing and calendar.years:
            warnings.append(f"{prefix}: the holiday calendar ({calendar.source}) does not hold "
                            f"{' or '.join(map(str, missing))}: its deadline counts weekends only there")
        start, end = _range(prefix)
        changes.append(BlockChange(kind, prefix, start, end, unit, old, at, deadline, now > deadline))

    for prefix, p in current.items():
        unit = unit_of(p)
        if prefix not in baseline:
            change("added", prefix, unit, "", run_start(lambda a, pf=prefix: pf in a))
        elif baseline[prefix][0] != unit:
            old = baseline[prefix][0]
            change("unit-changed", prefix, unit, old, run_start(lambda a, pf=prefix, o=old: pf in a and unit_of(a[pf]) != o))
    for prefix, (old, _usage) in baseline.items():
        if prefix not in current:
            change("removed", prefix, "", old, run_start(lambda a, pf=prefix: pf not in a))
    if changes and not calendar.years:
        warnings.append("no holiday calendar (cases.holidays_file): deadlines count weekends only")
    changes.sort(key=lambda c: (c.deadline, _sort_key(c.prefix)))
    return IpReport(now, tuple(blocks), tuple(changes), last, loads[-1][0], len(loads), tuple(dict.fromkeys(warnings)))


def _sort_key(prefix: str) -> tuple[int, int, int]:
    net = ipaddress.ip_network(prefix)
    return net.version, int(net.network_address), net.prefixlen


def reported_entry(report: IpReport, actor: str, why: str, at: float) -> Entry:
    """The row ``--mark-reported`` writes: the blocks as filed (what the next report compares with)."""
    return Entry(KIND, KEY, "set", {"blocks": [[b.prefix, b.unit, b.usage] for b in report.blocks],
                                    "changes": len(report.changes), "overdue": report.overdue,
                                    "inventory_loaded": report.loaded_at}, at, actor, why)
