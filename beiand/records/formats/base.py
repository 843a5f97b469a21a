"""What every export reader shares: the limits, the header spellings, the result and its issues."""

from __future__ import annotations

import codecs
import csv
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from beiand.errors import BeiandError
from beiand.model import Filing

MAX_CELL = 65536  # bytes; a bigger cell is an error, not a reason to stop reading
# Issue 17: a cell is refused at MAX_CELL bytes (at most 4 per character), and a line or JSON item
# at MAX_ITEM characters, without reading the rest of it: a 100 MB cell once took 757 MB to refuse.
MAX_ITEM = 1 << 20  # characters of one CSV line, JSON line or JSON list item
MAX_JSON_DEPTH = 8  # nesting of a JSON export: list > object > list of strings is 3
MAX_JSON_WHOLE = 64 << 20  # a JSON export that is one object (not a list): parsed whole up to this size
csv.field_size_limit(min(sys.maxsize, MAX_CELL * 4))
_TOO_LONG = "\x00beiand:line-too-long\x00"


# Header spellings (Chinese exports and English ones) → field.
HEADERS: dict[str, str] = {}
for _field, _names in {
    "number": ["备案号", "网站备案号", "服务备案号", "app备案号", "备案编号", "number", "filingnumber", "filing_number", "icp"],
    "sponsor": ["主办单位", "主办单位名称", "主办者", "sponsor", "sponsorname"],
    "service_type": ["服务类型", "类型", "备案类型", "service_type", "servicetype", "type"],
    "service_name": ["网站名称", "服务名称", "app名称", "名称", "service_name", "servicename", "name"],
    "domains": ["域名", "网站域名", "服务域名", "domains", "domain"],
    "ips": ["ip", "ip地址", "ips", "服务ip", "ip_addresses"],
    "access_provider": ["接入商", "接入服务商", "access_provider", "accessprovider", "provider"],
    "status": ["状态", "备案状态", "status"],
    "reviewed": ["审核时间", "审核通过时间", "审核通过日期", "reviewed", "review_date", "reviewdate"],
}.items():
    for _n in _names:
        HEADERS[_n.replace("_", "")] = _field


@dataclass(frozen=True, slots=True)
class Table:
    """What a reader looks for in a header row: the spellings of each field (:data:`HEADERS` for a
    filing export) and the fields of which at least one must be there, with what to say if none is."""

    headers: Mapping[str, str]
    any_of: tuple[str, ...]
    missing: str  # e.g. "no filing number column (备案号 / number)"


@dataclass(frozen=True, slots=True)
class ImportIssue:
    """A problem with one row: ``file:line: field: reason``."""

    file: str
    line: int
    field: str
    reason: str
    unit: str = ""  # "" for a line; "item" for JSON arrays, "row" for XLSX

    def __str__(self) -> str:
        where = f"{self.unit} {self.line}" if self.unit else str(self.line)
        return f"{self.file}:{where}: {self.field}: {self.reason}"


@dataclass
class ImportResult:
    filings: list[Filing] = field(default_factory=list)
    errors: list[ImportIssue] = field(default_factory=list)
    warnings: list[ImportIssue] = field(default_factory=list)
    rows: int = 0
    files: list[str] = field(default_factory=list)
    encoding: str = "utf-8"


class ImportRefused(BeiandError):
    """The whole import is refused (strict mode, unreadable file, empty or shrinking export)."""


def detect_encoding(path: Path) -> tuple[str, bool]:
    """``("utf-8-sig" | "utf-8" | "gb18030", truncated)``; raises ImportRefused if neither decodes."""
    with path.open("rb") as f:
        head = f.read(3)
    bom = head == codecs.BOM_UTF8
    for enc in ("utf-8", "gb18030"):
        dec = codecs.getincrementaldecoder(enc)()
        ok = True
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                try:
                    dec.decode(chunk)
                except UnicodeDecodeError:
                    ok = False
                    break
        if not ok:
            continue
        try:
            dec.decode(b"", final=True)
        except UnicodeDecodeError:
            return ("utf-8-sig" if bom else enc), True
        return ("utf-8-sig" if bom and enc == "utf-8" else enc), False
    raise ImportRefused(f"{path}: not UTF-8 and not GB18030: re-export the file as UTF-8 CSV")


def _map_header(header: Iterable[object], headers: Mapping[str, str] = HEADERS) -> list[str | None]:
    out: list[str | None] = []
    for h in header:
        key = str(h or "").strip().lstrip("\ufeff").lower().replace(" ", "").replace("_", "")
        out.append(headers.get(key))
    return out


FILINGS = Table(HEADERS, ("number",), "no filing number column (备案号 / number)")
