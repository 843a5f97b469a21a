"""The compiled matcher of rule sets (the regulator's commands and lists, ISMS.md §6): domains,
URLs, addresses, ports and protocols, OR within one kind and AND across kinds, each rule with
the window of time it is in force; evaluated at the observation's own time.

``beiand.isms.store`` compiles the commands into :class:`Compiled` rules; the overlay that
decides with them is ``beiand.isms.store.CommandRules`` (wired into the policy's decider).
"""

from __future__ import annotations

import bisect
import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from beiand.errors import BeiandError
from beiand.model import Observation, Transport
from beiand.policy.overlays import Hit

_NO_CANDIDATES: list[Any] = []  # shared by every name no command names (never mutated)


class RuleError(BeiandError, ValueError):
    """A rule value that does not parse (an address, range, port or protocol)."""


def ip_range(lo: str, hi: str) -> tuple[int, int, int]:
    """(version, first, last) of an address, a CIDR prefix, or valueStart..valueEnd."""
    try:
        if "/" in lo and not hi:
            n = ipaddress.ip_network(lo, strict=False)
            return n.version, int(n.network_address), int(n.broadcast_address)
        a = ipaddress.ip_address(lo)
        b = ipaddress.ip_address(hi) if hi else a
    except ValueError:
        raise RuleError(f"{lo!r}..{hi!r}: not an IP address, range or prefix") from None
    if a.version != b.version or int(b) < int(a):
        raise RuleError(f"{lo}..{hi}: not a range")
    return a.version, int(a), int(b)


def port_range(lo: str, hi: str) -> tuple[int, int]:
    try:
        a = int(lo)
        b = int(hi) if hi else a
    except ValueError:
        raise RuleError(f"{lo!r}..{hi!r}: not a port") from None
    if not 0 <= a <= b <= 65535:
        raise RuleError(f"{lo}..{hi}: not a port range")
    return a, b


@dataclass
class Compiled:
    """One command's rules, compiled: OR within each list, AND across non-empty lists, in force
    from ``start`` (inclusive) to ``end`` (exclusive)."""

    hit: Hit
    domains: list[str] = field(default_factory=list)
    urls: list[tuple[str, str]] = field(default_factory=list)  # (host, path prefix)
    src: list[tuple[int, int, int]] = field(default_factory=list)
    dst: list[tuple[int, int, int]] = field(default_factory=list)
    sports: list[tuple[int, int]] = field(default_factory=list)
    dports: list[tuple[int, int]] = field(default_factory=list)
    protos: set[Transport] = field(default_factory=set)
    houses: list[tuple[int, int, int]] = field(default_factory=list)  # range/houseId → their segments (type 0): server IP in one
    start: float = -math.inf
    end: float = math.inf


def ip_int(ip: str) -> tuple[int, int]:
    a = ipaddress.ip_address(ip)
    return a.version, int(a)


class Intervals:
    """Address intervals → commands: sorted by start, with a running maximum of the ends, so a
    lookup walks back only over intervals that can still contain the address."""

    def __init__(self, items: Iterable[tuple[tuple[int, int, int], Compiled]]) -> None:
        rows = sorted(((v, lo, hi, id(c), c) for (v, lo, hi), c in items), key=lambda r: r[:3])
        self.keys = [(v, lo) for v, lo, _, _, _ in rows]
        self.rows = rows
        self.maxend: list[tuple[int, int]] = []
        m = (0, -1)
        for v, _, hi, _, _ in rows:
            m = max(m, (v, hi))
            self.maxend.append(m)

    def find(self, v: int, ip: int) -> Iterable[Compiled]:
        i = bisect.bisect_right(self.keys, (v, ip)) - 1
        while i >= 0 and self.maxend[i] >= (v, ip):
            rv, lo, hi, _, c = self.rows[i]
            if rv == v and lo <= ip <= hi:
                yield c
            i -= 1


class Matcher:
    """All commands in force, indexed: a name walks its labels, an address one dict and interval lookups."""

    def __init__(self, compiled: Iterable[Compiled]) -> None:
        self.by_name: dict[str, list[Compiled]] = {}
        self.by_addr: dict[tuple[int, int], list[Compiled]] = {}
        ranges: list[tuple[tuple[int, int, int], Compiled]] = []
        self.rest: list[Compiled] = []
        self.count = 0
        for c in compiled:
            self.count += 1
            if c.domains or c.urls:
                for d in c.domains:
                    self.by_name.setdefault(d, []).append(c)
                for h, _ in c.urls:
                    self.by_name.setdefault("=" + h, []).append(c)
            elif c.dst or c.src:
                for v, lo, hi in c.dst or c.src:
                    if lo == hi:
                        self.by_addr.setdefault((v, lo), []).append(c)
                    else:
                        ranges.append(((v, lo, hi), c))
            else:
                self.rest.append(c)
        self.ranges = Intervals(ranges)
        self.exact = any(k[0] == "=" for k in self.by_name)  # exact-name entries (URL hosts, subdomains = false)
        self._names: dict[str, list[Compiled]] = {}  # name → its name candidates (most names: none)
        self.names_only = not (self.by_addr or ranges or self.rest)  # every command has a domain or URL rule
        self._ip_cache: dict[str, tuple[int, int] | None] = {}

    def _ip(self, ip: str) -> tuple[int, int] | None:
        hit = self._ip_cache.get(ip, False)
        if hit is False:
            try:
                hit = ip_int(ip)
            except ValueError:
                hit = None
            if len(self._ip_cache) > 65536:
                self._ip_cache.clear()
            self._ip_cache[ip] = hit
        return hit  # type: ignore[return-value]

    def candidates(self, obs: Observation) -> list[Compiled]:
        out: list[Compiled] = []
        n = obs.name
        if n and self.by_name:
            hit = self._names.get(n)
            if hit is None:
                hit = self._name_candidates(n)
                if len(self._names) >= 65536:
                    self._names.clear()
                self._names[n] = hit
            if hit:
                out.extend(hit)
        if self.by_addr or self.ranges.rows:
            for ip in (obs.server_ip, obs.client_ip):
                k = self._ip(ip)
                if k is not None:
                    out.extend(self.by_addr.get(k, ()))
                    out.extend(self.ranges.find(*k))
        if self.rest:
            out.extend(self.rest)
        return out

    def _name_candidates(self, n: str) -> list[Compiled]:
        by_name = self.by_name
        out: list[Compiled] = []
        if self.exact:
            out.extend(by_name.get("=" + n, ()))
        while True:
            hit = by_name.get(n)
            if hit is not None:
                out.extend(hit)
            i = n.find(".")
            if i < 0:
                return out or _NO_CANDIDATES
            n = n[i + 1:]

    def match(self, obs: Observation) -> Hit | None:
        """The strongest rule in force at ``obs.ts`` that every part of matches (block > exempt > flag)."""
        if not self.count:
            return None
        cands = self.candidates(obs)
        if not cands:  # the common case: one dict lookup per label
            return None
        ts = obs.ts
        best: Compiled | None = None
        for c in cands:
            if (best is None or c.hit.priority > best.hit.priority) and c.start <= ts < c.end and self._all(c, obs):
                best = c
        return best.hit if best is not None else None

    def _all(self, c: Compiled, obs: Observation) -> bool:
        if c.domains or c.urls:
            ok = False
            n = obs.name
            if c.domains and n:
                ok = any(n == d or n.endswith("." + d) if d[0] != "=" else n == d[1:] for d in c.domains)
            if not ok and c.urls and n and obs.target:
                # URL rules: HTTP/1.x request lines only (TLS and QUIC hide the path; ISMS.md §6)
                target = obs.target
                ok = any(n == h and target.startswith(p) for h, p in c.urls)
            if not ok:
                return False
        if c.dst and not self._in(c.dst, obs.server_ip):
            return False
        if c.src and not self._in(c.src, obs.client_ip):
            return False
        if c.dports and not any(lo <= obs.server_port <= hi for lo, hi in c.dports):
            return False
        if c.sports and not any(lo <= obs.client_port <= hi for lo, hi in c.sports):
            return False
        if c.protos and obs.transport not in c.protos:
            return False
        return not c.houses or self._in(c.houses, obs.server_ip)

    def _in(self, rs: list[tuple[int, int, int]], ip: str) -> bool:
        k = self._ip(ip)
        return k is not None and any(v == k[0] and lo <= k[1] <= hi for v, lo, hi in rs)


