"""The in-memory index of filings: name → filings by suffix walk, IP → filings.

Lookups are O(labels): a name's suffixes are probed in one dict, from the full name up.
A filing never lists a bare public suffix (the importer refuses it), so the walk can never
match above the registrable domain: a name is covered only by filings that list it or a
parent within the same registrable domain (Order 33 art. 5 ¶2: per name, never "per sponsor").
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from beiand.model import Filing, FilingStatus
from beiand.records.importer import ImportRefused, ImportResult, gc_paused


@dataclass(frozen=True, slots=True)
class IndexStats:
    filings: int
    domains: int
    ips: int
    ip_ranges: int = 0  # ranges and CIDR prefixes, held as intervals


def _ip_int(ip: str) -> tuple[int, int]:
    """(family 4|6, the address as an integer) of a canonical address text."""
    if ":" in ip:
        return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
    return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")


def ip_interval(entry: str) -> tuple[int, int, int] | None:
    """(family, first, last) of a range ``lo-hi`` or a CIDR prefix; ``None`` for one address."""
    if "/" in entry:
        net = ipaddress.ip_network(entry, strict=False)
        return net.version, int(net.network_address), int(net.broadcast_address)
    if "-" in entry:
        lo, _, hi = entry.partition("-")
        (fam, a), (_, b) = _ip_int(lo), _ip_int(hi)
        return fam, a, b
    return None


def entry_addresses(entry: str) -> tuple[str, ...]:
    """The address of a single-address entry, or the first and last address of a range or prefix."""
    if "/" in entry:
        net = ipaddress.ip_network(entry, strict=False)
        return str(net.network_address), str(net.broadcast_address)
    if "-" in entry:
        lo, _, hi = entry.partition("-")
        return lo, hi
    return (entry,)


class _Intervals:
    """Filing IP ranges and prefixes of one address family, as disjoint elementary segments.

    Every range boundary starts a segment; each segment holds the filings whose ranges cover it,
    so a lookup is one bisection: no per-address expansion (a /8 in a cell is two boundaries,
    not 16M entries).
    """

    __slots__ = ("starts", "values")

    def __init__(self, ranges: list[tuple[int, int, Filing]]) -> None:
        points = sorted({p for lo, hi, _ in ranges for p in (lo, hi + 1)})
        by_start: dict[int, list[tuple[int, int, Filing]]] = {}
        for k, (lo, hi, f) in enumerate(ranges):
            by_start.setdefault(lo, []).append((k, hi, f))
        active: dict[int, tuple[int, Filing]] = {}  # range number → (last, filing), in insertion order
        starts: list[int] = []
        values: list[tuple[Filing, ...]] = []
        for p in points:
            for k in [k for k, (hi, _) in active.items() if hi < p]:
                del active[k]
            for k, hi, f in by_start.get(p, ()):
                active[k] = (hi, f)
            hit: tuple[Filing, ...] = tuple(dict.fromkeys(f for _, f in active.values()))
            if values and values[-1] == hit:
                continue  # same filings as the segment before: extend it
            starts.append(p)
            values.append(hit)
        self.starts = starts
        self.values = values

    def lookup(self, x: int) -> tuple[Filing, ...]:
        i = bisect.bisect_right(self.starts, x) - 1
        return self.values[i] if i >= 0 else ()


class RecordIndex:
    """Immutable once built; a reload builds a new one and swaps the reference."""

    __slots__ = ("_labels_max", "_labels_min", "_ranges_of", "_v4", "_v6", "by_domain", "by_ip", "filings", "loaded_at", "n_ranges",
                 "sources", "unmapped")

    def __init__(self, filings: Sequence[Filing], loaded_at: float = 0.0, sources: Sequence[str] = ()) -> None:
        self.filings = list(filings)
        self.loaded_at = loaded_at
        self.sources = tuple(sources)
        # value: one Filing, or a tuple of them when several filings list the same key
        by_domain: dict[str, Filing | tuple[Filing, ...]] = {}
        by_ip: dict[str, Filing | tuple[Filing, ...]] = {}
        ranges: dict[int, list[tuple[int, int, Filing]]] = {4: [], 6: []}
        ranges_of: dict[int, list[tuple[int, int, int]]] = {}  # id(filing) → its intervals
        unmapped = FilingStatus.UNMAPPED
        self.unmapped = 0  # filings whose status word nobody mapped (kept in force, reported)
        for f in self.filings:
            if f.status is unmapped:
                self.unmapped += 1
            for d in f.domains:
                _add(by_domain, d, f)
            for ip in f.ips:
                iv = ip_interval(ip) if ("-" in ip or "/" in ip) else None
                if iv is None:
                    _add(by_ip, ip, f)
                else:
                    ranges[iv[0]].append((iv[1], iv[2], f))
                    ranges_of.setdefault(id(f), []).append(iv)
        self.by_domain = by_domain
        self.by_ip = by_ip
        self._v4 = _Intervals(ranges[4]) if ranges[4] else None
        self._v6 = _Intervals(ranges[6]) if ranges[6] else None
        self._ranges_of = ranges_of
        self.n_ranges = len(ranges[4]) + len(ranges[6])
        # The fewest and the most labels of a listed domain: a suffix with more or fewer cannot be
        # listed, so the walk probes only between them (never the bare top-level label, nor the
        # labels of a deep subdomain above the deepest listing).
        labels = {d.count(".") + 1 for d in by_domain}
        self._labels_min = min(labels, default=1)
        self._labels_max = max(labels, default=0)

    def covering(self, name: str) -> tuple[str, tuple[Filing, ...]] | None:
        """The most specific listed domain covering ``name`` and its filings, or ``None``."""
        by_domain = self.by_domain
        start, labels = self._first_probe(name)
        while labels >= self._labels_min:
            cand = name[start:]
            hit = by_domain.get(cand)
            if hit is not None:
                return cand, (hit if type(hit) is tuple else (hit,))  # type: ignore[return-value]
            start = name.find(".", start) + 1
            labels -= 1
        return None

    def covering_all(self, name: str) -> tuple[Filing, ...]:
        """Every filing covering ``name``: its own listing and every parent listing, most specific first.

        The walk cannot leave the registrable domain: no filing lists a public suffix.
        """
        by_domain = self.by_domain
        out: tuple[Filing, ...] = ()
        start, labels = self._first_probe(name)
        while labels >= self._labels_min:
            hit = by_domain.get(name[start:])
            if hit is not None:
                out += hit if type(hit) is tuple else (hit,)  # type: ignore[operator]
            start = name.find(".", start) + 1
            labels -= 1
        return out

    def _first_probe(self, name: str) -> tuple[int, int]:
        """Where the suffix walk of ``name`` starts probing, and how many labels that suffix has.

        Each suffix starts after a dot and has one label fewer than the one before it; a suffix with
        more labels than any listed domain is passed over without a probe.
        """
        start = 0
        labels = name.count(".") + 1
        while labels > self._labels_max and labels > 1:
            start = name.find(".", start) + 1
            labels -= 1
        return start, labels

    def by_address(self, ip: str) -> tuple[Filing, ...]:
        """Every filing listing ``ip``: as an address, in a range or in a CIDR prefix."""
        hit = self.by_ip.get(ip)
        out: tuple[Filing, ...] = () if hit is None else (hit if type(hit) is tuple else (hit,))  # type: ignore[assignment]
        tree = self._v6 if ":" in ip else self._v4
        if tree is not None and ip:
            try:
                more = tree.lookup(_ip_int(ip)[1])
            except OSError:  # not an address: nothing lists it
                return out
            if more:
                out = tuple(dict.fromkeys(out + more)) if out else more
        return out

    def lists_ip(self, f: Filing, ip: str) -> bool:
        """Whether filing ``f`` lists ``ip`` (501号 art. 7(3): the IP in use must match the filing)."""
        if ip in f.ips:
            return True
        ivs = self._ranges_of.get(id(f))
        if not ivs:
            return False
        try:
            fam, x = _ip_int(ip)
        except OSError:
            return False
        for v, lo, hi in ivs:  # noqa: SIM110 (a generator in a cpdef method: Cython cannot compile its closure)
            if v == fam and lo <= x <= hi:
                return True
        return False

    def has_address(self, ip: str) -> bool:
        return ip in self.by_ip or (bool(ip) and bool(self.by_address(ip)))

    def stats(self) -> IndexStats:
        return IndexStats(len(self.filings), len(self.by_domain), len(self.by_ip), self.n_ranges)

    def counts(self) -> dict[str, Counter[str]]:
        return {
            "service_type": Counter(f.service_type.value for f in self.filings),
            "status": Counter(f.status.value for f in self.filings),
            "province": Counter(f.province for f in self.filings),
        }


def _add(d: dict[str, Filing | tuple[Filing, ...]], key: str, f: Filing) -> None:
    old = d.get(key)
    if old is None:
        d[key] = f
    elif type(old) is tuple:
        d[key] = (*old, f)
    else:
        d[key] = (old, f)  # type: ignore[assignment]


def build_index(result: ImportResult, *, previous: RecordIndex | None = None, max_loss: float = 0.2,
                loaded_at: float = 0.0) -> RecordIndex:
    """Build a new index, refusing one that would wrongly make hosted sites "unfiled".

    An export with zero valid rows, or one that loses more than ``max_loss`` of the current
    filings, is refused: the old index keeps serving (DESIGN.md failure rules).
    """
    if not result.filings:
        raise ImportRefused(
            f"no valid filing in {', '.join(result.files) or 'the input'} "
            f"({result.rows} row(s), {len(result.errors)} error(s)): refused, the current records stay"
        )
    if previous is not None and previous.filings:
        old, new = len(previous.filings), len(result.filings)
        if new < old * (1.0 - max_loss):
            raise ImportRefused(
                f"the new records hold {new} filings, {old - new} fewer than the {old} loaded "
                f"({(old - new) / old:.0%} > the allowed {max_loss:.0%}): refused, the current records stay"
            )
    with gc_paused():  # millions of dict entries and tuples, no cycles
        return RecordIndex(result.filings, loaded_at=loaded_at, sources=result.files)
