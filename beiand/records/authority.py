"""The authority's lists of unfiled sites (上级下发未备案网站, 501号 art. 5(7), 7(4)) as read from
the file the 通管局 sends: one row per site, by name or address, with the list's reference, the
date it was listed and the deadline for the provider's 处理结果.

CSV (UTF-8 with or without BOM, or GB18030) and XLSX, read by ``records/formats`` as filing
exports are (the same encoding detection, Chinese or English headers). Each good row is an
:class:`AuthorityEntry`; a bad one is an :class:`~beiand.records.formats.base.ImportIssue`
naming ``file:line``, the field and what was expected, and the rest of the file is read.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from beiand.records.domains import DomainError, is_ip_literal, is_public_suffix, normalise_domain
from beiand.records.formats import csv as csv_format
from beiand.records.formats import xlsx as xlsx_format
from beiand.records.formats.base import MAX_CELL, ImportIssue, ImportRefused, ImportResult, Table
from beiand.records.importer import _parse_date, _RowError

# Header spellings of the authority's lists (Chinese as the 通管局 sends them, and English) → field
_SPELLINGS = {
    "name": ["域名", "网站域名", "网址", "网站地址", "网站", "未备案网站", "未备案域名", "name", "domain", "site", "url", "entry"],
    "address": ["ip", "ip地址", "网站ip", "服务器ip", "地址", "address", "ip_address"],
    "list": ["清单编号", "清单", "批次", "批次号", "文号", "通报编号", "下发编号", "list", "list_reference", "listreference",
             "reference", "ref"],
    "listed": ["下发日期", "下发时间", "通报日期", "日期", "发现日期", "发现时间", "date", "listed", "listed_on"],
    "deadline": ["处理期限", "反馈期限", "处置期限", "整改期限", "期限", "截止日期", "deadline", "due"],
}
HEADERS = {n.lower().replace("_", ""): f for f, names in _SPELLINGS.items() for n in names}
TABLE = Table(HEADERS, ("name", "address"), "no column naming the site: 域名 / 网站域名 / IP地址 (name, address)")
# The fields as errors name them (English with the Chinese header beside)
FIELD = {"name": "name (域名)", "address": "address (IP地址)", "list": "list (清单编号)", "listed": "date (下发日期)",
         "deadline": "deadline (处理期限)"}
SUFFIXES = (".csv", ".txt", ".xlsx", ".xlsm")


@dataclass(frozen=True)
class AuthorityEntry:
    """One site the authority listed as unfiled."""

    target: str  # the normalised name (the name and every name below it), or the canonical address
    list_ref: str  # the list's reference as the authority gave it (清单编号 / 文号)
    listed: str  # ISO date it was listed (下发日期)
    deadline: str  # ISO date by which the provider reports what it did (处理期限); "" when none given
    address: str = ""  # with a name: the address the authority saw it on (canonical), "" when none
    source: str = ""  # file:line (or file:row N)

    @property
    def is_address(self) -> bool:
        return is_ip_literal(self.target)


@dataclass
class AuthorityFile:
    """What one file held: its entries, its bad rows, and its digest (an import is once per content)."""

    path: str
    sha256: str
    entries: list[AuthorityEntry] = field(default_factory=list)
    issues: list[ImportIssue] = field(default_factory=list)
    # for each bad row, the list it named (or the default list) and the site as written: the
    # 处理结果 report lists the rows that were not imported too
    rejected: list[tuple[ImportIssue, str, str]] = field(default_factory=list)
    rows: int = 0
    encoding: str = ""

    @property
    def lists(self) -> list[str]:
        return sorted({e.list_ref for e in self.entries} | {r[1] for r in self.rejected if r[1]})


def site_target(text: str) -> tuple[str, str]:
    """``(target, "name" | "address")`` of a site as a list writes it: a name (a URL's host, a
    ``*.`` wildcard meaning the name and below), or an address; ValueError says what was expected."""
    t = text.strip().strip("\u3000")
    if "://" in t or "/" in t:
        host = urlsplit(t if "://" in t else "//" + t).hostname or ""
        if not host:
            raise ValueError(f"{text[:80]!r}: no host in it: expected a domain name (example.com) or an IP address")
        t = host
    if t.startswith("*."):
        t = t[2:]
    if is_ip_literal(t.strip("[]")):
        try:
            return str(ipaddress.ip_address(t.strip("[]"))), "address"
        except ValueError:
            raise ValueError(f"{text[:80]!r} is not an IP address") from None
    try:
        name = normalise_domain(t)
    except DomainError as exc:
        raise ValueError(f"{text[:80]!r}: {exc.reason}: expected a domain name (example.com) or an IP address") from None
    if "." not in name or is_public_suffix(name):
        raise ValueError(f"{name} is a public suffix, not a site: listing it would cover every site below it")
    return name, "name"


def _date(text: str, fld: str) -> str:
    try:
        return _parse_date(text)
    except _RowError as exc:
        raise _RowError(fld, exc.reason) from None


def parse_row(cells: dict[str, str], source: str, default_list: str = "") -> AuthorityEntry:
    """One row → an entry; ``_RowError`` names the field and what was expected."""
    for k, v in cells.items():
        if len(v.encode("utf-8", "replace")) > MAX_CELL:
            raise _RowError(FIELD.get(k, k), f"cell is over {MAX_CELL} bytes")
    name_text, addr_text = cells.get("name", "").strip(), cells.get("address", "").strip()
    if not name_text and not addr_text:
        raise _RowError(FIELD["name"], "empty: every row names a site by its domain name or its IP address")
    address = ""
    if addr_text:
        try:
            address, kind = site_target(addr_text)
        except ValueError as exc:
            raise _RowError(FIELD["address"], str(exc)) from None
        if kind != "address":
            raise _RowError(FIELD["address"], f"{addr_text[:80]!r} is not an IP address")
    if name_text:
        try:
            target, _ = site_target(name_text)
        except ValueError as exc:
            raise _RowError(FIELD["name"], str(exc)) from None
    else:
        target, address = address, ""
    list_ref = cells.get("list", "").strip() or default_list
    if not list_ref:
        raise _RowError(FIELD["list"], "empty, and no --list given: every entry belongs to a list (清单编号 / 文号)")
    if len(list_ref) > 200 or any(ord(c) < 32 for c in list_ref):
        raise _RowError(FIELD["list"], f"{list_ref[:40]!r}: at most 200 characters, no control characters")
    listed = _date(cells.get("listed", ""), FIELD["listed"])
    if not listed:
        raise _RowError(FIELD["listed"], "empty: the date the authority listed the site (YYYY-MM-DD)")
    deadline = _date(cells.get("deadline", ""), FIELD["deadline"])
    if deadline and deadline < listed:
        raise _RowError(FIELD["deadline"], f"{deadline} is before the date listed ({listed})")
    return AuthorityEntry(target, list_ref, listed, deadline, address if address != target else "", source)


def read_list(path: str | Path, default_list: str = "") -> AuthorityFile:
    """Every row of an authority list file: entries, and each bad row named. ImportRefused: the
    file cannot be read at all (unreadable, not UTF-8/GB18030, no column naming the site)."""
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise ImportRefused(f"{p}: an authority list is CSV or XLSX ({', '.join(SUFFIXES)})")
    try:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError as exc:
        raise ImportRefused(f"{p}: cannot read: {exc.strerror or exc}") from None
    out = AuthorityFile(str(p), digest)
    result = ImportResult()
    xlsx = p.suffix.lower() in (".xlsx", ".xlsm")
    rows = xlsx_format.rows(p, result, table=TABLE) if xlsx else csv_format.rows(p, result, table=TABLE)
    seen: dict[tuple[str, str], str] = {}
    for line, unit, cells in rows:
        out.rows += 1
        where = f"{p}:{unit + ' ' if unit else ''}{line}"
        text = cells.get("name", "") or cells.get("address", "")
        listed_in = cells.get("list", "").strip() or default_list
        if "__error__" in cells:
            issue = ImportIssue(str(p), line, "row", cells["__error__"], unit)
            out.issues.append(issue)
            out.rejected.append((issue, listed_in, ""))
            continue
        try:
            e = parse_row(cells, where, default_list)
        except _RowError as exc:
            issue = ImportIssue(str(p), line, exc.field, exc.reason, unit)
            out.issues.append(issue)
            out.rejected.append((issue, listed_in, text.strip()[:200]))
            continue
        first = seen.get((e.list_ref, e.target))
        if first is not None:  # the same site twice in one list: once is enough, the repeat is said
            out.issues.append(ImportIssue(str(p), line, FIELD["name"], f"{e.target} is listed already at {first} (kept once)",
                                          unit))
            continue
        seen[(e.list_ref, e.target)] = where
        out.entries.append(e)
    out.encoding = result.encoding
    return out
