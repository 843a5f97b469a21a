"""Import of filing exports from the enterprise-side filing system (企业侧备案系统).

CSV (UTF-8 with or without BOM, or GB18030), JSON, JSONL and XLSX. Columns are documented in
``docs/records-format.md``. Bad rows are reported as ``file:line: field: reason`` and skipped;
``strict`` makes any bad row fail the whole import.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as dt
import gc
import heapq
import io
import ipaddress
import itertools
import json
import os
import pickle
import re
import socket
import sys
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from beiand.errors import BeiandError
from beiand.model import Filing, FilingStatus, ServiceType
from beiand.records.domains import DomainError, is_public_suffix, normalise_domain
from beiand.records.numbers import FilingNumberError, parse_filing_number

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

# The status vocabulary as exports spell it (REGULATIONS.md, "Facts the code needs"), in one
# table; ``records.status_map`` extends it. A word in neither is kept in force (UNMAPPED).
STATUS: dict[str, FilingStatus] = {
    "正常": FilingStatus.ACTIVE, "已备案": FilingStatus.ACTIVE, "备案": FilingStatus.ACTIVE, "已接入": FilingStatus.ACTIVE,
    "active": FilingStatus.ACTIVE, "normal": FilingStatus.ACTIVE, "filed": FilingStatus.ACTIVE,
    # a change filing under review: the filing stays in force with its current data (every cloud lets it through)
    "变更审核中": FilingStatus.ACTIVE, "变更中": FilingStatus.ACTIVE, "变更备案审核中": FilingStatus.ACTIVE,
    "change-pending": FilingStatus.ACTIVE,
    "已注销": FilingStatus.CANCELLED, "注销": FilingStatus.CANCELLED, "已取消接入": FilingStatus.CANCELLED,
    "取消接入": FilingStatus.CANCELLED, "cancelled": FilingStatus.CANCELLED, "canceled": FilingStatus.CANCELLED,
    "已吊销": FilingStatus.REVOKED, "吊销": FilingStatus.REVOKED, "revoked": FilingStatus.REVOKED,
    "接入审核中": FilingStatus.ACCESS_PENDING, "接入备案审核中": FilingStatus.ACCESS_PENDING,
    "access-pending": FilingStatus.ACCESS_PENDING,
    "审核中": FilingStatus.UNDER_REVIEW, "首次备案审核中": FilingStatus.UNDER_REVIEW, "首次审核中": FilingStatus.UNDER_REVIEW,
    "under-review": FilingStatus.UNDER_REVIEW,
    "unmapped": FilingStatus.UNMAPPED,
}


def status_table(extra: Mapping[str, str] | None = None) -> dict[str, FilingStatus]:
    """The vocabulary extended by ``records.status_map`` (word → a status value or a word above).

    Raises ``ValueError`` naming the word and what was expected.
    """
    table = dict(STATUS)
    for word, target in (extra or {}).items():
        key = word.strip()
        st = _STATUS_VALUES.get(target.strip().lower()) or STATUS.get(target.strip())
        if not key or st is None:
            raise ValueError(f"records.status_map: {word!r} = {target!r}: expected one of "
                             f"{', '.join(s.value for s in FilingStatus if s is not FilingStatus.UNMAPPED)}")
        table[key] = table[key.lower()] = st
    return table


_STATUS_VALUES = {s.value: s for s in FilingStatus if s is not FilingStatus.UNMAPPED}
SERVICE_TYPES = {
    "网站": ServiceType.WEBSITE, "website": ServiceType.WEBSITE,
    "app": ServiceType.APP, "应用": ServiceType.APP, "移动应用": ServiceType.APP,
    "小程序": ServiceType.MINI_PROGRAM, "mini-program": ServiceType.MINI_PROGRAM,
    "miniprogram": ServiceType.MINI_PROGRAM,
    "快应用": ServiceType.QUICK_APP, "quick-app": ServiceType.QUICK_APP, "quickapp": ServiceType.QUICK_APP,
}
_SPLIT = re.compile(r"[;,、；，\s]+")
_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y-%m-%d %H:%M:%S", "%Y/%m/%d %H:%M:%S", "%Y年%m月%d日", "%Y%m%d")


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


class _RowError(BeiandError):
    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field_name
        self.reason = reason


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


_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_date_cache: dict[str, str] = {}


def _date(text: str) -> str:
    hit = _date_cache.get(text)
    if hit is not None:
        return hit
    out = _parse_date(text)
    if len(_date_cache) < 100_000:
        _date_cache[text] = out
    return out


def _parse_date(text: str) -> str:
    t = text.strip()
    if not t:
        return ""
    m = _ISO_DATE.match(t)
    if m:
        try:
            return dt.date(int(m[1]), int(m[2]), int(m[3])).isoformat()
        except ValueError:
            raise _RowError("reviewed", f"date {t!r} does not exist") from None
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(t, fmt).date().isoformat()
        except ValueError:
            continue
    # 2024-01-02T03:04:05 and similar
    try:
        return dt.datetime.fromisoformat(t).date().isoformat()
    except ValueError:
        raise _RowError("reviewed", f"date {t!r} not understood: expected YYYY-MM-DD") from None


class RowParser:
    """Turns one row (field → cell text) into a :class:`Filing`, with interned repeats."""

    def __init__(self, statuses: Mapping[str, FilingStatus] | None = None) -> None:
        self._intern: dict[str, str] = {}
        self._status = statuses if statuses is not None else STATUS

    def intern(self, s: str) -> str:
        return self._intern.setdefault(s, s)

    def parse(self, cells: dict[str, str], source: str) -> tuple[Filing, list[tuple[str, str]]]:
        warnings: list[tuple[str, str]] = []
        if max(map(len, cells.values()), default=0) > MAX_CELL // 4:
            for k, v in cells.items():
                size = len(v.encode("utf-8", "replace"))
                if size > MAX_CELL:
                    raise _RowError(k, f"cell is {size} bytes, at most {MAX_CELL}")
        raw_number = cells.get("number", "")
        try:
            num = parse_filing_number(raw_number)
        except FilingNumberError as exc:
            raise _RowError("number (备案号)", exc.reason) from None
        if num.warning:
            warnings.append(("number (备案号)", num.warning))
        if num.serial is None:
            warnings.append(("number (备案号)", "sponsor number without service serial (-N); treated as a website filing"))
        sponsor = cells.get("sponsor", "").strip()
        if not sponsor:
            raise _RowError("sponsor (主办单位)", "empty")
        stype_text = cells.get("service_type", "").strip()
        stype = num.service_type or ServiceType.WEBSITE
        if stype_text:
            given = SERVICE_TYPES.get(stype_text) or SERVICE_TYPES.get(stype_text.lower())
            if given is None:
                raise _RowError("service_type (服务类型)", f"unknown service type {stype_text!r}: 网站/APP/小程序/快应用")
            if num.service_type is not None and given is not num.service_type:
                raise _RowError(
                    "service_type (服务类型)",
                    f"{stype_text!r} disagrees with the number {num.text} ({num.service_type.value})",
                )
            stype = given
        domains: list[str] = []
        cell = cells.get("domains", "")
        for d in (_SPLIT.split(cell) if cell else ()):
            if not d:
                continue
            if d[0] == "*" and d.startswith("*."):
                d = d[2:]  # *.example.com means the same as example.com: the name and below
            try:
                name = normalise_domain(d)
            except DomainError as exc:
                raise _RowError("domains (域名)", exc.reason) from None
            if is_public_suffix(name):
                raise _RowError("domains (域名)", f"{name} is a public suffix: a filing of it would cover the world")
            if name not in domains:
                domains.append(name)
        ips: list[str] = []
        cell = cells.get("ips", "")
        if cell:
            for a in _split_ips(cell):
                try:
                    ip, note = canonical_ip_entry(a)
                except ValueError as exc:
                    raise _RowError("ips (IP)", str(exc)) from None
                if note:
                    warnings.append(("ips (IP)", note))
                if ip not in ips:
                    ips.append(ip)
        if not domains and not ips:
            if stype == ServiceType.WEBSITE:
                raise _RowError("domains (域名)", "a website filing lists no domain and no IP")
            warnings.append(("domains (域名)", f"{stype.value} filing lists no domain and no IP: it covers nothing"))
        status_text = cells.get("status", "").strip()
        if "status" in cells:
            status = self._status.get(status_text) or self._status.get(status_text.lower())
            if status is None:
                # A vocabulary gap must not take sites down: kept in force, reported (issue 13).
                status = FilingStatus.UNMAPPED
                warnings.append(("status (状态)", f"unknown status {status_text!r}: kept in force (not blocked); "
                                 "map it with records.status_map, e.g. {\"待复核\" = \"active\"}"))
        else:
            status = FilingStatus.ACTIVE
        reviewed = _date(cells.get("reviewed", ""))
        if status == FilingStatus.ACCESS_PENDING and not reviewed:
            raise _RowError("reviewed (审核时间)", "an access-pending (接入审核中) filing needs its review date for the grace period")
        filing = Filing(
            number=num.text,
            sponsor=self.intern(sponsor),
            service_type=stype,
            domains=tuple(domains),
            ips=tuple(ips),
            access_provider=self.intern(cells.get("access_provider", "").strip()),
            status=status,
            reviewed=self.intern(reviewed),
            service_name=cells.get("service_name", "").strip(),
            province=num.province,
            source=source,
        )
        return filing, warnings


def canonical_ip(text: str) -> str | None:
    """The canonical text of an IPv4/IPv6 address (``inet_ntop`` form), or ``None``."""
    t = text.strip("[]")
    try:
        if ":" in t:
            return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, t))
        packed = socket.inet_pton(socket.AF_INET, t)
    except OSError:
        return None
    return socket.inet_ntop(socket.AF_INET, packed)



# Separators inside an IP cell: those of domains, but a range may be written with spaces
# around its dash (``a - b``), a tilde or 至.
_RANGE_DASH = re.compile(r"\s*(?:-|~|–|—|至|到)\s*")
_IP_SPLIT = re.compile(r"[;,、；，\s]+")


def _split_ips(cell: str) -> list[str]:
    text = _RANGE_DASH.sub("-", unicodedata.normalize("NFKC", cell).strip())
    return [a for a in _IP_SPLIT.split(text) if a]


def canonical_ip_entry(text: str) -> tuple[str, str]:
    """One entry of a filing's IP cell in canonical text, and a warning ("" for none).

    An address (``203.0.113.5``), a range (``203.0.113.10-203.0.113.20``, or ``203.0.113.10-20``
    in the last octet) or a CIDR prefix (``203.0.113.64/28``), IPv4 or IPv6. A range of one
    address and a /32 (/128) become the address. Raises ``ValueError`` with the reason.
    """
    t = text.strip()
    if "/" in t:
        addr, _, plen = t.partition("/")
        try:
            net = ipaddress.ip_network(f"{addr.strip('[]')}/{plen}", strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address, range or CIDR prefix") from None
        note = ""
        if str(net.network_address) != str(ipaddress.ip_address(addr.strip("[]"))):
            note = f"{text!r}: host bits set; read as the prefix {net}"
        if net.num_addresses == 1:
            return str(net.network_address), note
        return str(net), note
    if "-" in t:
        lo_text, _, hi_text = t.partition("-")
        lo = canonical_ip(lo_text)
        if lo is not None and hi_text.isdigit() and "." in lo and len(hi_text) <= 3:
            hi_text = lo.rsplit(".", 1)[0] + "." + hi_text  # 203.0.113.10-20: the last octet
        hi = canonical_ip(hi_text)
        if lo is None or hi is None:
            raise ValueError(f"{text!r} is not an IP address, range or CIDR prefix")
        a, b = ipaddress.ip_address(lo), ipaddress.ip_address(hi)
        if a.version != b.version:
            raise ValueError(f"{text!r}: the range mixes IPv4 and IPv6")
        if int(b) < int(a):
            raise ValueError(f"{text!r}: the range ends before it starts")
        return (lo, "") if a == b else (f"{lo}-{hi}", "")
    ip = canonical_ip(t)
    if ip is None:
        raise ValueError(f"{text!r} is not an IP address, range or CIDR prefix")
    return ip, ""

def _map_header(header: Iterable[object]) -> list[str | None]:
    out: list[str | None] = []
    for h in header:
        key = str(h or "").strip().lstrip("\ufeff").lower().replace(" ", "").replace("_", "")
        out.append(HEADERS.get(key))
    return out


def _rows_csv(path: Path, result: ImportResult, span: tuple[int, int, int] | None = None
              ) -> Iterator[tuple[int, str, dict[str, str]]]:
    """Rows of a CSV export; ``span`` = (start byte, end byte, line number at start) of a chunk."""
    enc, truncated = detect_encoding(path) if span is None else (result.encoding, False)
    result.encoding = enc
    if truncated:
        result.warnings.append(ImportIssue(str(path), 0, "file", "ends inside a character: truncated? the last row is checked as is"))
    with path.open("r", encoding=enc, errors="replace", newline="") as f:
        reader = csv.reader(_bounded_lines(f))
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportRefused(f"{path}:1: header: {exc}") from None
        cols = _map_header(header)
        if "number" not in cols:
            raise ImportRefused(f"{path}:1: header: no filing number column (备案号 / number); got {header!r}")
        if span is not None:
            with path.open("rb") as fb:
                fb.seek(span[0])
                text = fb.read(span[1] - span[0]).decode(enc, errors="replace")
            reader = csv.reader(_bounded_lines(io.StringIO(text, newline="")))
            base = span[2] - 1
        else:
            base = 0
        width = len(header)
        all_mapped = None not in cols
        names = [c or "" for c in cols]
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield base + start, "", {"__error__": str(exc)}
                start = reader.line_num + 1
                continue
            line = base + start
            start = reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if _TOO_LONG in row[0]:
                yield line, "", {"__error__": f"line longer than {MAX_ITEM} characters: refused unread (a cell is at most "
                                              f"{MAX_CELL} bytes)"}
                continue
            if len(row) != width:
                yield line, "", {"__error__": f"row has {len(row)} fields, the header has {width} (truncated or unquoted separator?)"}
                continue
            yield line, "", (dict(zip(names, row, strict=True)) if all_mapped
                             else {c: v for c, v in zip(cols, row, strict=True) if c is not None})


def _csv_split(path: Path, parts: int) -> list[tuple[int, int, int]]:
    """Byte ranges of whole rows, for parsing a big CSV on several cores.

    A newline ends a row only outside quotes, i.e. where the number of ``"`` before it is
    even; neither byte can be part of a multi-byte character in UTF-8 or GB18030.
    """
    data = path.read_bytes()
    first = data.find(b"\n") + 1  # after the header (a header with quoted newlines: no split)
    if first <= 0 or data.count(b'"', 0, first) % 2:
        return []
    size = len(data)
    cuts = [first]
    # The first range is parsed by the parent, which also merges the others: give it less.
    shares = [0.8] + [1.0] * (parts - 1)
    total = sum(shares)
    for k in range(1, parts):
        pos = max(cuts[-1], first + int((size - first) * sum(shares[:k]) / total))
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            if data.count(b'"', 0, nl) % 2 == 0:
                cuts.append(nl + 1)
                break
            pos = nl + 1
    cuts.append(size)
    out = []
    for a, b in itertools.pairwise(cuts):
        if b > a:
            out.append((a, b, data.count(b"\n", 0, a) + 1))
    return out


def _rows_json(path: Path, result: ImportResult) -> Iterator[tuple[int, str, dict[str, str]]]:
    """Items of a JSON list or lines of JSON lines, streamed: one item is held at a time, an item
    over MAX_ITEM characters or nested deeper than MAX_JSON_DEPTH is refused without being read
    whole (issue 17)."""
    enc, _ = detect_encoding(path)
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    if not jsonl:
        with path.open("r", encoding=enc, errors="replace") as f:
            head = f.read(4096).lstrip("\ufeff \t\r\n")
        if head.startswith("["):
            yield from _json_list_items(path, enc)
            return
        if head.startswith("{") and path.stat().st_size <= MAX_JSON_WHOLE:
            text = path.read_text(enc, errors="replace")
            depth = _json_depth(text)
            if depth > MAX_JSON_DEPTH:
                raise ImportRefused(f"{path}:1: json: nested {depth} levels deep, at most {MAX_JSON_DEPTH}: "
                                    "not a filing export")
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                if exc.msg != "Extra data":
                    raise ImportRefused(f"{path}:{exc.lineno}: json: {exc.msg} (column {exc.colno})") from None
                data = None
                jsonl = True  # objects one after the other: JSON lines
            del text
            if not jsonl:
                if isinstance(data, dict):
                    data = data.get("filings", data.get("records", data.get("data")))
                if not isinstance(data, list):
                    raise ImportRefused(f"{path}:1: json: expected a list of filings or {{\"filings\": [...]}}")
                for i, item in enumerate(data, 1):
                    yield i, "item", _json_cells(item)
                return
        elif not head.startswith("{"):
            msg = "empty file" if not head else f"expected a list of filings or {{\"filings\": [...]}}, got {head[:20]!r}"
            raise ImportRefused(f"{path}:1: json: {msg}")
        # else: one big object per line (JSON lines named .json), or a big {"filings": ...}: read as lines
    with path.open("r", encoding=enc, errors="replace") as f:
        for i, line in enumerate(_bounded_lines(f), 1):
            if line is _TOO_LONG:
                yield i, "", {"__error__": f"line longer than {MAX_ITEM} characters: refused unread (a cell is at most "
                                           f"{MAX_CELL} bytes)"}
                continue
            if not line.strip():
                continue
            yield i, "", _json_text_cells(line)


def _json_text_cells(text: str) -> dict[str, str]:
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        return {"__error__": f"nested {depth} levels deep, at most {MAX_JSON_DEPTH}"}
    try:
        item = json.loads(text)
    except json.JSONDecodeError as exc:
        return {"__error__": f"invalid JSON: {exc.msg} (column {exc.colno})"}
    except RecursionError:  # cannot happen below MAX_JSON_DEPTH; kept so no input ends in a traceback
        return {"__error__": f"nested more than {MAX_JSON_DEPTH} levels deep"}
    return _json_cells(item)


_JSON_DEPTH_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def _json_depth(text: str) -> int:
    """The deepest nesting of brackets outside strings (a cheap scan before json.loads recurses)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return 0
    depth = top = 0
    for m in _JSON_DEPTH_TOKENS.finditer(text):
        c = m.group()[0]
        if c == "[" or c == "{":
            depth += 1
            if depth > top:
                top = depth
                if top > 4 * MAX_JSON_DEPTH:
                    return top  # enough to refuse
        elif c == "]" or c == "}":
            depth -= 1
    return top


def _bounded_lines(f: TextIO) -> Iterator[str]:
    """Lines of a text file, each at most MAX_ITEM characters: a longer one is skipped unread (the
    rest of it in bounded reads) and stands as the ``_TOO_LONG`` marker."""
    while True:
        line = f.readline(MAX_ITEM + 1)
        if not line:
            return
        if len(line) > MAX_ITEM and not line.endswith("\n"):
            while line and not line.endswith("\n"):
                line = f.readline(1 << 20)
            yield _TOO_LONG
            continue
        yield line


_CHUNK = 1 << 20
_WS = " \t\r\n"
_SKIP_OUT = re.compile(r'[\[\]{}"]')
_SKIP_IN = re.compile(r'["\\]')
_VALUE_END = re.compile(r"[,\]\s]")


class _Buffered:
    """A text file read in chunks, with a cursor; consumed text is let go, its lines counted."""

    def __init__(self, f: TextIO) -> None:
        self.f = f
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.lines = 1  # line number at buf[0]

    def more(self) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(_CHUNK)
        if not chunk:
            self.eof = True
            return False
        if self.pos > _CHUNK:
            self.lines += self.buf.count("\n", 0, self.pos)
            self.buf = self.buf[self.pos :]
            self.pos = 0
        self.buf += chunk
        return True

    def line(self) -> int:
        return self.lines + self.buf.count("\n", 0, self.pos)

    def skip_ws(self) -> str:
        """The next character that is not white space ("" at the end of the file)."""
        while True:
            buf, pos, n = self.buf, self.pos, len(self.buf)
            while pos < n and buf[pos] in _WS:
                pos += 1
            self.pos = pos
            if pos < n:
                return buf[pos]
            if not self.more():
                return ""

    def skip_value(self) -> bool:
        """Step over one JSON value of any size or depth without keeping it (a scan of brackets
        and strings, chunk by chunk); False if the file ends inside it."""
        depth = 0
        in_str = esc = False
        while True:
            buf, pos, n = self.buf, self.pos, len(self.buf)
            while pos < n:
                if in_str:
                    if esc:
                        esc = False
                        pos += 1
                        continue
                    m = _SKIP_IN.search(buf, pos)
                    if m is None:
                        pos = n
                        break
                    pos = m.end()
                    if m.group() == "\\":
                        esc = True
                    else:
                        in_str = False
                        if depth == 0:
                            self.pos = pos
                            return True
                    continue
                if depth == 0 and buf[pos] not in '[{"':  # a number or literal: up to the next , ] or space
                    m = _VALUE_END.search(buf, pos)
                    if m is None:
                        pos = n
                        break
                    self.pos = m.start()
                    return True
                m = _SKIP_OUT.search(buf, pos)
                if m is None:
                    pos = n
                    break
                c = m.group()
                pos = m.end()
                if c == '"':
                    in_str = True
                elif c in "[{":
                    depth += 1
                else:
                    depth -= 1
                    if depth <= 0:
                        self.pos = pos
                        return True
            self.pos = pos
            if not self.more():
                return False


def _json_list_items(path: Path, enc: str) -> Iterator[tuple[int, str, dict[str, str]]]:
    """The items of a top-level JSON list, each parsed on its own (``raw_decode``) from a buffer
    read in 1 MiB chunks: an item over MAX_ITEM characters, or one nested too deep for the parser,
    is stepped over unread and reported; a syntax error refuses the file, as a whole parse would."""
    dec = json.JSONDecoder()
    with path.open("r", encoding=enc, errors="replace") as f:
        r = _Buffered(f)
        if r.skip_ws() == "\ufeff":
            r.pos += 1
        if r.skip_ws() != "[":
            raise ImportRefused(f"{path}:{r.line()}: json: expected a list of filings")
        r.pos += 1
        n = 0
        while True:
            c = r.skip_ws()
            if c == "":
                raise ImportRefused(f"{path}:{r.line()}: json: the file ends inside the list (truncated?)")
            if c == "]":
                return
            if n:
                if c != ",":
                    raise ImportRefused(f"{path}:{r.line()}: json: expected ',' or ']' between items, got {c!r}")
                r.pos += 1
                if r.skip_ws() == "":
                    raise ImportRefused(f"{path}:{r.line()}: json: the file ends inside the list (truncated?)")
            n += 1
            consumed = False
            while True:  # r.pos is the item's start until it is parsed (more() may move the buffer)
                try:
                    item, end = dec.raw_decode(r.buf, r.pos)
                except json.JSONDecodeError as exc:
                    if len(r.buf) - r.pos > MAX_ITEM:
                        reason = f"item longer than {MAX_ITEM} characters: refused unread (a cell is at most {MAX_CELL} bytes)"
                        break
                    cut = exc.pos >= len(r.buf) - 16 or exc.msg.startswith("Unterminated string")
                    if cut and r.more():
                        continue  # the item goes on in the next chunk
                    line = r.lines + r.buf.count("\n", 0, exc.pos)
                    raise ImportRefused(f"{path}:{line}: json: {exc.msg} (item {n})") from None
                except RecursionError:
                    reason = f"nested more than {MAX_JSON_DEPTH} levels deep"
                    break
                if end == len(r.buf) and not isinstance(item, dict | list | str) and r.more():
                    continue  # a number cut by the chunk: read on
                size = end - r.pos
                r.pos = end
                consumed = True
                reason = "" if size <= MAX_ITEM else \
                    f"item longer than {MAX_ITEM} characters: refused (a cell is at most {MAX_CELL} bytes)"
                break
            if reason:
                if not consumed and not r.skip_value():
                    raise ImportRefused(f"{path}:{r.line()}: json: the file ends inside item {n} (truncated?)")
                yield n, "item", {"__error__": reason}
                continue
            yield n, "item", _json_cells(item)


def _json_cells(item: object) -> dict[str, str]:
    if not isinstance(item, dict):
        return {"__error__": f"expected an object, got {type(item).__name__}"}
    cols = _map_header(item.keys())
    out: dict[str, str] = {}
    for c, v in zip(cols, item.values(), strict=True):
        if c is None:
            continue
        if isinstance(v, list):
            if any(isinstance(x, list | dict) for x in v):
                return {"__error__": f"{c}: nested lists or objects in a cell: expected a string or a list of strings"}
            v = ";".join(str(x) for x in v)
        elif isinstance(v, dict):
            return {"__error__": f"{c}: an object in a cell: expected a string or a list of strings"}
        out[c] = "" if v is None else str(v)
    return out


def _rows_xlsx(path: Path, result: ImportResult) -> Iterator[tuple[int, str, dict[str, str]]]:
    import zipfile

    import openpyxl

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, OSError, KeyError, ValueError) as exc:
        raise ImportRefused(f"{path}: not a readable XLSX workbook: {exc}") from None
    try:
        ws = wb.worksheets[0]
        it = ws.iter_rows(values_only=True)
        header = next(it, None)
        if header is None:
            return
        cols = _map_header(header)
        if "number" not in cols:
            raise ImportRefused(f"{path}:row 1: header: no filing number column (备案号 / number)")
        for i, row in enumerate(it, 2):
            if all(v is None or str(v).strip() == "" for v in row):
                continue
            cells: dict[str, str] = {}
            for c, v in zip(cols, row, strict=False):
                if c is None:
                    continue
                if isinstance(v, dt.datetime | dt.date):
                    v = v.strftime("%Y-%m-%d")
                cells[c] = "" if v is None else str(v)
            yield i, "row", cells
    finally:
        wb.close()


PARALLEL_MIN_BYTES = 32 << 20


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a block runs.

    An import builds millions of tuples and strings and no reference cycles: the collector would
    walk the growing heap again and again for nothing (a fifth of the load time of 1M filings).
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def load_file(path: str | Path, *, strict: bool = False, result: ImportResult | None = None,
              seen: dict[str, tuple[Filing, str]] | None = None, workers: int | None = None,
              status_map: Mapping[str, str] | None = None) -> ImportResult:
    """Read one export; rows with errors are reported and skipped (or refused with ``strict``).

    A big CSV is parsed on every core (forked workers, each a range of whole rows); the
    result, its errors and their order are the same as a one-process parse.
    """
    with gc_paused():
        return _load_file(path, strict, result, seen, workers, status_table(status_map))


def _load_file(path: str | Path, strict: bool, result: ImportResult | None, seen: dict[str, tuple[Filing, str]] | None,
               workers: int | None, statuses: Mapping[str, FilingStatus]) -> ImportResult:
    p = Path(path)
    res = result if result is not None else ImportResult()
    seen = seen if seen is not None else {}
    if not p.is_file():
        raise ImportRefused(f"{p}: no such file")
    suffix = p.suffix.lower()
    name = str(p)
    res.files.append(name)
    if suffix in (".json", ".jsonl", ".ndjson"):
        _consume(_rows_json(p, res), name, res, seen, statuses)
    elif suffix in (".xlsx", ".xlsm"):
        _consume(_rows_xlsx(p, res), name, res, seen, statuses)
    else:
        n = workers if workers is not None else min(os.cpu_count() or 1, 4)
        spans = _csv_split(p, n) if n > 1 and p.stat().st_size >= PARALLEL_MIN_BYTES else []
        if len(spans) > 1:
            res.encoding, truncated = detect_encoding(p)
            if truncated:
                res.warnings.append(ImportIssue(name, 0, "file", "ends inside a character: truncated? the last row is checked as is"))
            _load_parallel(p, spans, res, seen, statuses)
        else:
            _consume(_rows_csv(p, res), name, res, seen, statuses)
    if strict and res.errors:
        raise ImportRefused(f"{len(res.errors)} bad row(s) in strict mode; first: {res.errors[0]}")
    return res


def _consume(rows: Iterable[tuple[int, str, dict[str, str]]], name: str, res: ImportResult,
             seen: dict[str, tuple[Filing, str]], statuses: Mapping[str, FilingStatus] | None = None) -> None:
    parser = RowParser(statuses)
    for line, unit, cells in rows:
        res.rows += 1
        err = cells.get("__error__")
        if err is not None:
            res.errors.append(ImportIssue(name, line, "row", err, unit))
            continue
        where = f"{name}:{unit + ' ' if unit else ''}{line}"
        try:
            filing, warns = parser.parse(cells, where)
        except _RowError as exc:
            res.errors.append(ImportIssue(name, line, exc.field, exc.reason, unit))
            continue
        for f_name, reason in warns:
            res.warnings.append(ImportIssue(name, line, f_name, reason, unit))
        _keep(filing, where, line, unit, name, res, seen)


def _keep(filing: Filing, where: str, line: int, unit: str, name: str, res: ImportResult,
          seen: dict[str, tuple[Filing, str]]) -> None:
    prev = seen.get(filing.number)
    if prev is not None:
        if _same(prev[0], filing):
            res.warnings.append(ImportIssue(name, line, "number (备案号)", f"duplicate of {prev[1]} (identical; kept once)", unit))
        else:
            res.errors.append(ImportIssue(
                name, line, "number (备案号)",
                f"{filing.number} already at {prev[1]} with different data ({_diff(prev[0], filing)}); this row is skipped", unit))
        return
    seen[filing.number] = (filing, where)
    res.filings.append(filing)


SPILL_BATCH = 20_000  # filings a parser worker holds before it hands them on


class _Spill(list[Filing]):
    """A parser worker's list of filings that pickles itself to a file every SPILL_BATCH
    filings instead of growing: the worker's memory stays at one batch, not a second copy of
    its share of the records."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__()
        self.out = out

    def append(self, f: Filing) -> None:
        super().append(f)
        if len(self) >= SPILL_BATCH:
            self.spill()

    def spill(self) -> None:
        # plain tuples, enums as their values, the source as its line number
        pickle.dump([(*f[:2], f.service_type.value, *f[3:6], f.status.value, f[7], f[8], f[9], f[10][f[10].rfind(":") + 1:])
                     for f in self], self.out, protocol=pickle.HIGHEST_PROTOCOL)
        self.clear()


class _Forgetful(dict[str, tuple[Filing, str]]):
    """A ``seen`` map that keeps nothing: every filing looks new to the worker."""

    def __setitem__(self, key: str, value: tuple[Filing, str]) -> None:
        pass


def _load_parallel(p: Path, spans: list[tuple[int, int, int]], res: ImportResult,
                   seen: dict[str, tuple[Filing, str]], statuses: Mapping[str, FilingStatus]) -> None:
    name = str(p)
    children: list[tuple[int, BinaryIO]] = []
    for span in spans[1:]:
        spill = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, after the worker wrote it
        pid = os.fork()
        if pid == 0:  # child: parse one range, spill its filings, then its issues and row count
            code = 0
            try:
                part = ImportResult(encoding=res.encoding)
                part.filings = out = _Spill(spill)
                # Duplicates are found by the parent as it takes the filings back in file order
                # (it has them all): the worker remembers none.
                _consume(_rows_csv(p, part, span), name, part, _Forgetful(), statuses)
                out.spill()
                pickle.dump((sorted([(i.line, i.field, i.reason, i.unit, True) for i in part.errors]
                                    + [(i.line, i.field, i.reason, i.unit, False) for i in part.warnings]), part.rows),
                            spill, protocol=pickle.HIGHEST_PROTOCOL)
                spill.flush()
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        children.append((pid, spill))
    _consume(_rows_csv(p, res, spans[0]), name, res, seen, statuses)
    stypes = {t.value: t for t in ServiceType}
    statuses = {s.value: s for s in FilingStatus}
    for pid, spilled in children:
        with spilled:
            _, status = os.waitpid(pid, 0)
            if status != 0:
                raise ImportRefused(f"{p}: a parser worker failed; re-run with one core")
            spilled.seek(0)  # the worker moved the shared file offset
            # Rebuild in file order; a number already seen in an earlier range is a duplicate
            # exactly as a one-process parse would report it, at this row's line.
            mark_e, mark_w = len(res.errors), len(res.warnings)
            while True:
                batch = pickle.load(spilled)
                if isinstance(batch, tuple):
                    issues, rows = batch
                    break
                for t in batch:
                    line = t[10]
                    fil = Filing(t[0], t[1], stypes[t[2]], t[3], t[4], t[5], statuses[t[6]], t[7], t[8], t[9], f"{name}:{line}")
                    if fil.number in seen:
                        _keep(fil, fil.source, int(line), "", name, res, seen)
                    else:
                        seen[fil.number] = (fil, fil.source)
                        res.filings.append(fil)
        res.rows += rows
        if len(res.errors) != mark_e or len(res.warnings) != mark_w:
            extra: list[tuple[int, str, str, str, bool]] = []
            for lst, is_err in ((res.errors, True), (res.warnings, False)):
                start = mark_e if is_err else mark_w
                extra += [(i.line, i.field, i.reason, i.unit, is_err) for i in lst[start:]]
                del lst[start:]
            issues = list(heapq.merge(issues, sorted(extra)))
        for line, fld, reason, unit, is_error in issues:
            (res.errors if is_error else res.warnings).append(ImportIssue(name, line, fld, reason, unit))


def _same(a: Filing, b: Filing) -> bool:
    return not _diff(a, b)


def _diff(a: Filing, b: Filing) -> str:
    fields = ("sponsor", "service_type", "domains", "ips", "access_provider", "status")
    return ", ".join(f for f in fields if getattr(a, f) != getattr(b, f))


def load_files(paths: Iterable[str | Path], *, strict: bool = False, status_map: Mapping[str, str] | None = None) -> ImportResult:
    res = ImportResult()
    seen: dict[str, tuple[Filing, str]] = {}
    for p in paths:
        load_file(p, strict=strict, result=res, seen=seen, status_map=status_map)
    return res
