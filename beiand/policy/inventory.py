"""Hosted address space: prefix → customer account, site and state (longest-prefix match).

The account fills the "user account" column of the Order 292 art. 14 access log; the state
implements 501号 art. 11 (an allocated but unverified prefix is ``pending``).
"""

from __future__ import annotations

import csv
import ipaddress
import socket
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from beiand.errors import FileProblems
from beiand.model import Mode, PrefixState

_STATES = {
    "active": PrefixState.ACTIVE, "正常": PrefixState.ACTIVE, "使用中": PrefixState.ACTIVE,
    "pending": PrefixState.PENDING, "预分配": PrefixState.PENDING, "待核验": PrefixState.PENDING,
    "closed": PrefixState.CLOSED, "已关闭": PrefixState.CLOSED, "已回收": PrefixState.CLOSED,
}
_MODES = {
    "monitor": Mode.MONITOR, "监测": Mode.MONITOR,
    "dry-run": Mode.DRY_RUN, "dryrun": Mode.DRY_RUN, "演练": Mode.DRY_RUN,
    "enforce": Mode.ENFORCE, "阻断": Mode.ENFORCE,
}
_HEADERS = {
    "prefix": "prefix", "地址段": "prefix", "account": "account", "用户账号": "account",
    "site": "site", "机房": "site", "state": "state", "状态": "state", "mode": "mode", "模式": "mode",
    "house": "house", "house_id": "house", "houseid": "house", "机房编号": "house",
    "unit": "unit", "使用单位": "unit", "usage": "usage", "使用方式": "usage",
}


class InventoryError(FileProblems):
    """The inventory file is invalid; ``problems`` lists every ``file:line: field: reason``."""


@dataclass(frozen=True, slots=True)
class HostedPrefix:
    prefix: str  # canonical CIDR
    account: str  # user account (用户账号), Order 292 art. 14
    site: str  # room / site id (机房)
    state: PrefixState
    mode: Mode | None  # None: the configured default mode
    source: str = ""
    house: str = ""  # the ISMS houseId (机房编号) of the prefix, when the operator gives it (docs/isms.md)
    # IP地址备案 (501号 art. 19; docs/ip-report.md): the unit that uses the block (使用单位; "": the
    # account) and how it is used (使用方式), as reported to the authority
    unit: str = ""
    usage: str = ""


class Inventory:
    """Longest-prefix match over the hosted prefixes, with a bounded per-address cache."""

    CACHE_MAX = 1 << 16

    def __init__(self, prefixes: Iterable[HostedPrefix]) -> None:
        self.prefixes = list(prefixes)
        self._v4: dict[int, dict[int, HostedPrefix]] = {}
        self._v6: dict[int, dict[int, HostedPrefix]] = {}
        for p in self.prefixes:
            net = ipaddress.ip_network(p.prefix)
            table = self._v4 if net.version == 4 else self._v6
            table.setdefault(net.prefixlen, {})[int(net.network_address)] = p
        self._v4_lens = sorted(self._v4, reverse=True)
        self._v6_lens = sorted(self._v6, reverse=True)
        self._cache: dict[str, HostedPrefix | None] = {}

    def __len__(self) -> int:
        return len(self.prefixes)

    def lookup(self, ip: str) -> HostedPrefix | None:
        """The most specific hosted prefix holding ``ip`` (a textual address), or ``None``."""
        cache = self._cache
        try:
            return cache[ip]
        except KeyError:
            pass
        hit = self._lookup(ip)
        if len(cache) >= self.CACHE_MAX:
            cache.clear()
        cache[ip] = hit
        return hit

    def _lookup(self, ip: str) -> HostedPrefix | None:
        try:
            if ":" in ip:
                value, lens, table, bits = int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big"), self._v6_lens, self._v6, 128
            else:
                value, lens, table, bits = int.from_bytes(socket.inet_aton(ip), "big"), self._v4_lens, self._v4, 32
        except OSError:
            return None
        for n in lens:
            mask = ((1 << n) - 1) << (bits - n)
            hit = table[n].get(value & mask)
            if hit is not None:
                return hit
        return None


def _prefix(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=True))
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(text.strip(), strict=False)
            raise ValueError(f"{text!r} has host bits set; did you mean {fixed}?") from None
        raise ValueError(f"{text!r} is not an IPv4/IPv6 CIDR prefix") from None


def _entry(cells: dict[str, str], where: str, problems: list[str]) -> HostedPrefix | None:
    try:
        prefix = _prefix(cells.get("prefix", ""))
    except ValueError as exc:
        problems.append(f"{where}: prefix (地址段): {exc}")
        return None
    account = cells.get("account", "").strip()
    if not account:
        problems.append(f"{where}: account (用户账号): empty; every hosted prefix needs the customer account (Order 292 art. 14)")
        return None
    state_text = cells.get("state", "").strip().lower() or "active"
    state = _STATES.get(state_text)
    if state is None:
        problems.append(f"{where}: state (状态): {state_text!r} is not one of active, pending, closed")
        return None
    mode_text = cells.get("mode", "").strip().lower()
    mode = _MODES.get(mode_text) if mode_text else None
    if mode_text and mode is None:
        problems.append(f"{where}: mode (模式): {mode_text!r} is not one of monitor, dry-run, enforce")
        return None
    house = cells.get("house", "").strip()
    if len(house) > 64 or any(c.isspace() or c == "," for c in house):
        problems.append(f"{where}: house (机房编号): {house[:70]!r}: an ISMS houseId has no spaces or commas (at most 64 characters)")
        return None
    return HostedPrefix(prefix, account, cells.get("site", "").strip(), state, mode, where, house,
                        cells.get("unit", "").strip(), cells.get("usage", "").strip())


def csv_rows(p: Path, raw: bytes, headers: Mapping[str, str], required: Sequence[str], expected: str, expected_zh: str,
             error: type[FileProblems], problems: list[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """The rows of a CSV file with English or Chinese headers (UTF-8, else GB18030), each as
    (``file:line``, field → cell), blank and ``#`` lines left out. A header without the
    ``required`` fields raises ``error``; a row the csv module cannot read, or with more cells
    than the header, is a problem appended to ``problems`` in line order (issue 17: never a traceback)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("gb18030", errors="replace")
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise error([f"{p}:1: header: {exc}"]) from None
    if header is None:
        raise error([f"{p}:1: header: empty file; expected {expected}"])
    cols = [headers.get(h.strip().lower()) for h in header]
    if any(r not in cols for r in required):
        raise error([f"{p}:1: header: expected {expected} ({expected_zh}); got {header!r}"])
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a field over the limit
            problems.append(f"{p}:{reader.line_num}: row: {exc}")
            continue
        line = reader.line_num
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if len(row) > len(cols):
            problems.append(f"{p}:{line}: row: {len(row)} fields, the header has {len(cols)}")
            continue
        yield f"{p}:{line}", {c: v for c, v in zip(cols, row, strict=False) if c}


def load_inventory(path: str | Path) -> Inventory:
    """Read a CSV (``prefix,account,site,state,mode``) or TOML (``[[prefix]]`` tables) inventory."""
    p = Path(path)
    problems: list[str] = []
    entries: list[HostedPrefix] = []
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InventoryError([f"{p}: cannot read: {exc.strerror}"]) from None
    if p.suffix.lower() == ".toml":
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InventoryError([f"{p}: {exc}"]) from None
        items = doc.get("prefix", [])
        if not isinstance(items, list):
            raise InventoryError([f"{p}: prefix: expected [[prefix]] tables"])
        for i, item in enumerate(items, 1):
            if not isinstance(item, dict):
                problems.append(f"{p}:[[prefix]] #{i}: expected a table")
                continue
            unknown = set(item) - {"prefix", "account", "site", "state", "mode", "house", "unit", "usage"}
            if unknown:
                problems.append(f"{p}:[[prefix]] #{i}: {sorted(unknown)[0]}: unknown key")
                continue
            e = _entry({k: str(v) for k, v in item.items()}, f"{p}:[[prefix]] #{i}", problems)
            if e:
                entries.append(e)
    else:
        for where, cells in csv_rows(p, raw, _HEADERS, ("prefix", "account"), "prefix,account,site,state,mode",
                                     "地址段,用户账号,机房,状态,模式", InventoryError, problems):
            e = _entry(cells, where, problems)
            if e:
                entries.append(e)
    seen: dict[str, str] = {}
    for e in entries:
        if e.prefix in seen:
            problems.append(f"{e.source}: prefix (地址段): {e.prefix} already listed at {seen[e.prefix]}")
        seen[e.prefix] = e.source
    if problems:
        raise InventoryError(problems)
    return Inventory(entries)
