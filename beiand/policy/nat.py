"""NAT and elastic-IP mappings (MPS Order 82 art. 8: the provider records the public address a
user's traffic was translated to, so a request naming either address can be answered).

A mapping feed is CSV (``public,internal,account,valid_from,valid_to``; Chinese headers
公网地址, 内网地址, 用户账号, 生效时间, 失效时间) or JSON (a list of objects with those keys, or
``{"mappings": [...]}``):

- ``public``: ``203.0.113.5`` (every port), ``203.0.113.5:22``, ``203.0.113.5:10000-10999``,
  ``[2001:db8::5]:443``;
- ``internal``: ``10.0.0.7`` (ports kept) or ``10.0.0.7:22`` (a public port range's first port
  maps to this one, the next to the next...; only with a public port or range);
- ``valid_from`` / ``valid_to``: ISO times (a time without a zone is UTC), either empty for open.

Every problem is reported as ``file:line: field: reason``; a feed with any is refused as a whole
(the daemon keeps the mappings it has).
"""

from __future__ import annotations

import csv
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from beiand.errors import FileProblems
from beiand.model import endpoint

IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network
FOREVER = 2**62

_HEADERS = {"public": "public", "公网地址": "public", "internal": "internal", "内网地址": "internal",
            "account": "account", "用户账号": "account", "valid_from": "valid_from", "生效时间": "valid_from",
            "valid_to": "valid_to", "失效时间": "valid_to"}


class NatError(FileProblems):
    """The mapping feed is invalid; ``problems`` lists every ``file:line: field: reason``."""


@dataclass(frozen=True, slots=True)
class NatMapping:
    public_ip: str
    port_lo: int  # 0..65535; with port_hi, the public ports mapped (0-65535: every port, kept)
    port_hi: int
    internal_ip: str
    internal_port: int | None  # the internal port of port_lo (None: ports kept)
    account: str
    valid_from: int  # ms, inclusive
    valid_to: int  # ms, exclusive
    source: str = ""

    def public_side(self, port: int) -> str:
        """The public endpoint of internal ``port`` ("" when this mapping does not carry it)."""
        p = port if self.internal_port is None else self.port_lo + (port - self.internal_port)
        return endpoint(self.public_ip, p) if self.port_lo <= p <= self.port_hi else ""

    def internal_side(self, port: int) -> str:
        if not self.port_lo <= port <= self.port_hi:
            return ""
        return endpoint(self.internal_ip, port if self.internal_port is None else self.internal_port + (port - self.port_lo))

    def internal_ports(self) -> tuple[int, int]:
        if self.internal_port is None:
            return self.port_lo, self.port_hi
        return self.internal_port, self.internal_port + (self.port_hi - self.port_lo)


class NatTable:
    """Mappings by address on either side; a lookup is two dict probes when nothing maps."""

    def __init__(self, mappings: list[NatMapping]) -> None:
        self.mappings = mappings
        self._by_internal: dict[str, list[NatMapping]] = {}
        self._by_public: dict[str, list[NatMapping]] = {}
        for m in mappings:
            self._by_internal.setdefault(m.internal_ip, []).append(m)
            self._by_public.setdefault(m.public_ip, []).append(m)

    def __len__(self) -> int:
        return len(self.mappings)

    def other_side(self, ip: str, port: int, ts_ms: int) -> str:
        """The endpoint on the other side of a mapping valid at ``ts_ms`` for ``ip:port``: the public
        one for an internal address, the internal one for a public address; "" when none maps."""
        for m in self._by_internal.get(ip, ()):
            if m.valid_from <= ts_ms < m.valid_to:
                pub = m.public_side(port)
                if pub:
                    return pub
        for m in self._by_public.get(ip, ()):
            if m.valid_from <= ts_ms < m.valid_to:
                inner = m.internal_side(port)
                if inner:
                    return inner
        return ""

    def record_nat(self, client_ip: str, client_port: int, server_ip: str, server_port: int, ts_ms: int) -> str:
        """What a record's ``nat`` field holds: the server's other side (a flow into hosted space),
        else the client's (a hosted host connecting out through source NAT)."""
        return (self.other_side(server_ip, server_port, ts_ms) or self.other_side(client_ip, client_port, ts_ms))

    def other_sides(self, ip: str, port: int | None, since_ms: int, until_ms: int) -> Iterator[tuple[IpNet, int | None]]:
        """Every endpoint on the other side of ``ip`` (``port``: None for any) under a mapping valid
        at some time in [since, until): what a query for either address must also look for."""
        seen: set[tuple[str, int | None]] = set()
        for m in self._by_internal.get(ip, ()):
            if m.valid_from < until_ms and m.valid_to > since_ms:
                if port is None:
                    key: tuple[str, int | None] = (m.public_ip, None)
                else:
                    pub = m.public_side(port)
                    if not pub:
                        continue
                    key = (m.public_ip, port if m.internal_port is None else m.port_lo + (port - m.internal_port))
                seen.add(key)
        for m in self._by_public.get(ip, ()):
            if m.valid_from < until_ms and m.valid_to > since_ms:
                if port is None:
                    key = (m.internal_ip, None)
                elif m.port_lo <= port <= m.port_hi:
                    key = (m.internal_ip, port if m.internal_port is None else m.internal_port + (port - m.port_lo))
                else:
                    continue
                seen.add(key)
        for a, p in sorted(seen, key=lambda k: (k[0], -1 if k[1] is None else k[1])):
            yield ipaddress.ip_network(a), p

    def at(self, ip: str, ts_ms: int) -> list[NatMapping]:
        """The mappings of ``ip`` (either side) valid at ``ts_ms``."""
        return [m for m in (*self._by_internal.get(ip, ()), *self._by_public.get(ip, ()))
                if m.valid_from <= ts_ms < m.valid_to]


def _addr(text: str) -> str:
    return str(ipaddress.ip_address(text.strip().strip("[]")))


def _endpoint(text: str) -> tuple[str, str]:
    """``ip``, ``ip:ports``, ``[v6]:ports`` → (ip, ports text or "")."""
    t = text.strip()
    if t.startswith("["):
        ip, sep, ports = t[1:].partition("]")
        if sep and ports and not ports.startswith(":"):
            raise ValueError(f"{text!r}: expected [IPv6]:port")
        return _addr(ip), ports[1:]
    if t.count(":") == 1:
        ip, _, ports = t.partition(":")
        return _addr(ip), ports
    return _addr(t), ""


def _ports(text: str, where: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    for v in (lo, hi) if sep else (lo,):
        if not (v.strip().isascii() and v.strip().isdigit()) or not 0 <= int(v) <= 65535:
            raise ValueError(f"{where}: port {v.strip()!r} is not 0-65535")
    a, b = int(lo), int(hi) if sep else int(lo)
    if b < a:
        raise ValueError(f"{where}: port range {text!r} runs backwards")
    return a, b


def _time(text: str, default: int) -> int:
    t = text.strip()
    if not t:
        return default
    dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _mapping(cells: dict[str, str], where: str, problems: list[str]) -> NatMapping | None:
    try:
        pub_ip, pub_ports = _endpoint(cells.get("public", ""))
    except ValueError as exc:
        problems.append(f"{where}: public (公网地址): {exc}" if "port" in str(exc)
                        else f"{where}: public (公网地址): {cells.get('public', '')!r} is not an address, ip:port or ip:port-port")
        return None
    try:
        lo, hi = _ports(pub_ports, "public") if pub_ports else (0, 65535)
    except ValueError as exc:
        problems.append(f"{where}: public (公网地址): {exc}")
        return None
    try:
        in_ip, in_ports = _endpoint(cells.get("internal", ""))
    except ValueError:
        problems.append(f"{where}: internal (内网地址): {cells.get('internal', '')!r} is not an address or ip:port")
        return None
    in_port: int | None = None
    if in_ports:
        if not pub_ports:
            problems.append(f"{where}: internal (内网地址): a port needs a public port or range to map from")
            return None
        try:
            in_port = _ports(in_ports, "internal")[0]
        except ValueError as exc:
            problems.append(f"{where}: internal (内网地址): {exc}")
            return None
        if "-" in in_ports or in_port + (hi - lo) > 65535:
            problems.append(f"{where}: internal (内网地址): give the first internal port only; the range follows the public one")
            return None
    account = cells.get("account", "").strip()
    if not account:
        problems.append(f"{where}: account (用户账号): empty; every mapping names the customer account (Order 82 art. 8)")
        return None
    try:
        vf = _time(cells.get("valid_from", ""), 0)
    except ValueError:
        problems.append(f"{where}: valid_from (生效时间): {cells.get('valid_from')!r} is not an ISO time (2026-11-20T08:00+08:00)")
        return None
    try:
        vt = _time(cells.get("valid_to", ""), FOREVER)
    except ValueError:
        problems.append(f"{where}: valid_to (失效时间): {cells.get('valid_to')!r} is not an ISO time (2026-11-20T08:00+08:00)")
        return None
    if vt <= vf:
        problems.append(f"{where}: valid_to (失效时间): not after valid_from")
        return None
    return NatMapping(pub_ip, lo, hi, in_ip, in_port, account, vf, vt, where)


def load_nat(path: str | Path) -> NatTable:
    """Read a mapping feed (CSV or JSON, by suffix); raise :class:`NatError` naming every problem."""
    p = Path(path)
    problems: list[str] = []
    out: list[NatMapping] = []
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise NatError([f"{p}: cannot read: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("gb18030", errors="replace")
    if p.suffix.lower() == ".json":
        try:
            doc: Any = json.loads(text)
        except ValueError as exc:
            raise NatError([f"{p}:{getattr(exc, 'lineno', 1)}: {exc}"]) from None
        items = doc.get("mappings") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise NatError([f"{p}:1: mappings: expected a list of mappings"])
        for i, item in enumerate(items, 1):
            where = f"{p}:mapping {i}"
            if not isinstance(item, dict):
                problems.append(f"{where}: expected an object")
                continue
            unknown = sorted(set(item) - set(_HEADERS))
            if unknown:
                problems.append(f"{where}: {unknown[0]}: unknown key")
                continue
            m = _mapping({_HEADERS[k]: "" if v is None else str(v) for k, v in item.items()}, where, problems)
            if m:
                out.append(m)
    else:
        reader = csv.reader(text.splitlines())
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise NatError([f"{p}:1: header: {exc}"]) from None
        cols = [_HEADERS.get(h.strip().lower()) for h in header or []]
        if "public" not in cols or "internal" not in cols or "account" not in cols:
            raise NatError([f"{p}:1: header: expected public,internal,account,valid_from,valid_to "
                            f"(公网地址,内网地址,用户账号,生效时间,失效时间); got {header!r}"])
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                problems.append(f"{p}:{reader.line_num}: row: {exc}")
                continue
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if len(row) > len(cols):
                problems.append(f"{p}:{reader.line_num}: row: {len(row)} fields, the header has {len(cols)}")
                continue
            m = _mapping({c: v for c, v in zip(cols, row, strict=False) if c}, f"{p}:{reader.line_num}", problems)
            if m:
                out.append(m)
    # Two mappings of one public port at one time would make the answer ambiguous.
    by_pub: dict[str, list[NatMapping]] = {}
    for m in out:
        for o in by_pub.get(m.public_ip, ()):
            if o.port_lo <= m.port_hi and m.port_lo <= o.port_hi and o.valid_from < m.valid_to and m.valid_from < o.valid_to:
                problems.append(f"{m.source}: public (公网地址): overlaps the mapping at {o.source} (same ports, same time)")
                break
        by_pub.setdefault(m.public_ip, []).append(m)
    if problems:
        raise NatError(problems)
    return NatTable(out)
