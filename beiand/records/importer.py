"""Import of filing exports from the enterprise-side filing system (企业侧备案系统).

CSV (UTF-8 with or without BOM, or GB18030), JSON, JSONL and XLSX, each read by its module in
``records/formats/`` (picked by suffix); rows are parsed and checked here, whatever the format.
Columns are documented in ``docs/records-format.md``. Bad rows are reported as ``file:line: field: reason`` and skipped;
``strict`` makes any bad row fail the whole import.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import heapq
import ipaddress
import os
import pickle
import re
import socket
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from beiand.errors import BeiandError
from beiand.model import Filing, FilingStatus, ServiceType
from beiand.records.domains import DomainError, is_public_suffix, normalise_domain
from beiand.records.formats import csv as csv_format
from beiand.records.formats import reader_for
from beiand.records.formats.base import HEADERS as HEADERS
from beiand.records.formats.base import MAX_CELL as MAX_CELL
from beiand.records.formats.base import MAX_ITEM as MAX_ITEM
from beiand.records.formats.base import MAX_JSON_DEPTH as MAX_JSON_DEPTH
from beiand.records.formats.base import MAX_JSON_WHOLE as MAX_JSON_WHOLE
from beiand.records.formats.base import ImportIssue as ImportIssue
from beiand.records.formats.base import ImportRefused as ImportRefused
from beiand.records.formats.base import ImportResult as ImportResult
from beiand.records.formats.base import detect_encoding as detect_encoding
from beiand.records.numbers import FilingNumberError, parse_filing_number

# The status vocabulary as exports spell it (REGULATIONS.md, "Facts the code needs"), in one
# table; ``records.status_map`` extends it. A word in neither is kept in force (UNMAPPED).
STATUS: dict[str, FilingStatus] = {
    "正常": FilingStatus.ACTIVE, "已备案": FilingStatus.ACTIVE, "备案": FilingStatus.ACTIVE, "已接入": FilingStatus.ACTIVE,
    "active": FilingStatus.ACTIVE, "normal": FilingStatus.ACTIVE, "filed": FilingStatus.ACTIVE,
    # a change filing under review: the filing stays in force with its current data (every cloud lets it through)
    "变更审核中": FilingStatus.ACTIVE, "变更中": FilingStatus.ACTIVE, "变更备案审核中": FilingStatus.ACTIVE,
    "change-pending": FilingStatus.ACTIVE,
    "已注销": FilingStatus.CANCELLED, "注销": FilingStatus.CANCELLED, "cancelled": FilingStatus.CANCELLED,
    "canceled": FilingStatus.CANCELLED,
    # 取消接入 is not 注销: one provider's access ended, the filing lives on (issue 28)
    "已取消接入": FilingStatus.ACCESS_CANCELLED, "取消接入": FilingStatus.ACCESS_CANCELLED,
    "access-cancelled": FilingStatus.ACCESS_CANCELLED,
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








class _RowError(BeiandError):
    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field_name
        self.reason = reason




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
        if lo is not None and hi_text.isascii() and hi_text.isdigit() and "." in lo and len(hi_text) <= 3:
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
    name = str(p)
    res.files.append(name)
    read = reader_for(p)
    if read is not csv_format.rows:
        _consume(read(p, res), name, res, seen, statuses)
    else:
        n = workers if workers is not None else min(os.cpu_count() or 1, 4)
        spans = csv_format.split(p, n) if n > 1 and p.stat().st_size >= PARALLEL_MIN_BYTES else []
        if len(spans) > 1:
            res.encoding, truncated = detect_encoding(p)
            if truncated:
                res.warnings.append(ImportIssue(name, 0, "file", "ends inside a character: truncated? the last row is checked as is"))
            _load_parallel(p, spans, res, seen, statuses)
        else:
            _consume(csv_format.rows(p, res), name, res, seen, statuses)
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
                _consume(csv_format.rows(p, part, span), name, part, _Forgetful(), statuses)
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
    _consume(csv_format.rows(p, res, spans[0]), name, res, seen, statuses)
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
