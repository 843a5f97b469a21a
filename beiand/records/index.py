"""The in-memory index of filings: name → filings by suffix walk, IP → filings.

Lookups are O(labels): a name's suffixes are probed in one dict, from the full name up.
A filing never lists a bare public suffix (the importer refuses it), so the walk can never
match above the registrable domain: a name is covered only by filings that list it or a
parent within the same registrable domain (Order 33 art. 22: per name, never "per sponsor").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from beiand.model import Filing
from beiand.records.importer import ImportRefused, ImportResult, gc_paused


@dataclass(frozen=True, slots=True)
class IndexStats:
    filings: int
    domains: int
    ips: int


class RecordIndex:
    """Immutable once built; a reload builds a new one and swaps the reference."""

    __slots__ = ("by_domain", "by_ip", "filings", "loaded_at", "sources")

    def __init__(self, filings: Sequence[Filing], loaded_at: float = 0.0, sources: Sequence[str] = ()) -> None:
        self.filings = list(filings)
        self.loaded_at = loaded_at
        self.sources = tuple(sources)
        # value: one Filing, or a tuple of them when several filings list the same key
        by_domain: dict[str, Filing | tuple[Filing, ...]] = {}
        by_ip: dict[str, Filing | tuple[Filing, ...]] = {}
        for f in self.filings:
            for d in f.domains:
                _add(by_domain, d, f)
            for ip in f.ips:
                _add(by_ip, ip, f)
        self.by_domain = by_domain
        self.by_ip = by_ip

    def covering(self, name: str) -> tuple[str, tuple[Filing, ...]] | None:
        """The most specific listed domain covering ``name`` and its filings, or ``None``."""
        get = self.by_domain.get
        cand = name
        while True:
            hit = get(cand)
            if hit is not None:
                return cand, (hit if type(hit) is tuple else (hit,))  # type: ignore[return-value]
            dot = cand.find(".")
            if dot < 0:
                return None
            cand = cand[dot + 1 :]

    def by_address(self, ip: str) -> tuple[Filing, ...]:
        hit = self.by_ip.get(ip)
        if hit is None:
            return ()
        return hit if type(hit) is tuple else (hit,)  # type: ignore[return-value]

    def stats(self) -> IndexStats:
        return IndexStats(len(self.filings), len(self.by_domain), len(self.by_ip))

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
