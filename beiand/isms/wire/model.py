"""What an ISMI command says, as frozen values (cold: built once per command, never per packet)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

BEIJING = dt.timezone(dt.timedelta(hours=8))  # ISMI times carry no zone: Beijing time (ISMS.md §5)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def parse_time(text: str) -> float:
    """``yyyy-MM-dd HH:mm:ss`` (Beijing time) → Unix seconds; ``""`` → 0.0."""
    text = text.strip()
    if not text:
        return 0.0
    return dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=BEIJING).timestamp()


def format_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, BEIJING).strftime(TIME_FORMAT)


@dataclass(frozen=True)
class Rule:
    subtype: int  # gzlx (codes.RuleSubtype)
    value_start: str
    value_end: str = ""
    keyword_range: tuple[int, ...] = ()


@dataclass(frozen=True)
class SecurityCommand:
    """信息安全管理指令 ``<command>``: type 1 monitor, 2 filter."""

    command_id: int
    type: int
    operation: int  # 0 add (replaces a known commandId), 1 delete
    rules: tuple[Rule, ...]
    block: int = 0
    log: int = 1
    report: int = 1
    reason: str = ""
    effect_time: float = 0.0  # 0: at once
    expired_time: float = 0.0  # 0: until deleted
    house_ids: tuple[str, ...] = ()  # none: every 机房
    owner: str = ""
    time_stamp: str = ""

    def active(self, now: float) -> bool:
        return self.effect_time <= now and (self.expired_time == 0 or now < self.expired_time)


@dataclass(frozen=True)
class ListEntry:
    """A ``blacklist`` (always blocked) or ``noFilter`` (exempt) entry: type 1 domain, 2 IP."""

    kind: str  # "blacklist" or "noFilter"
    command_id: int
    type: int
    contents: str
    operation: int
    level: str = ""
    time_stamp: str = ""


@dataclass(frozen=True)
class LogQuery:
    command_id: int
    start: float
    end: float
    house_ids: tuple[str, ...] = ()
    src_ip: tuple[str, str] = ("", "")
    dst_ip: tuple[str, str] = ("", "")
    src_port: int = 0
    dst_port: int = 0
    protocol: int = 0  # 0 any, 1 TCP, 2 UDP
    url: str = ""


@dataclass(frozen=True)
class CodeList:
    tables: dict[str, list[dict[str, str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class ActivePeriod:
    command_id: int
    period_s: int


@dataclass(frozen=True)
class Query:
    """Types 3 and 6: commandQuery, queryView, commandRecord (answered from what beiand holds)."""

    root: str
    command_id: int
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IpSegment:
    """One registered address range of a house (机房): ``reserved`` is 登记保留 (not to be in use)."""

    start: str
    end: str
    reserved: bool = False


@dataclass(frozen=True)
class House:
    house_id: str
    name: str = ""
    segments: tuple[IpSegment, ...] = ()


@dataclass(frozen=True)
class BasicData:
    """Type 0 ``idcInfoManage`` (基础数据管理, CU-lite): the operator's houses and their IP ranges.

    ``monitor``: 1 turns DT 2 (基础数据监测异常) on, 2 off, 0 leaves it as the profile says (ISMS.md
    §4, (1)). ``operation`` 0 adds or replaces the houses listed, 1 deletes them.
    """

    command_id: int
    houses: tuple[House, ...] = ()
    operation: int = 0
    monitor: int = 0


Item = SecurityCommand | ListEntry | LogQuery | CodeList | ActivePeriod | Query | BasicData
