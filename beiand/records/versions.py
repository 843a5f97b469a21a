"""Filing records as versions of the register (``store.register``; DESIGN.md, Fleet).

A filing is a register row keyed by its number; its data is the filing as canonical JSON without
the file and line it came from (a filing moved to another line of the next export is the same
filing: no new row); its lookup keys are the names and single addresses it lists, and ``~4`` /
``~6`` when it lists ranges or prefixes (a lookup reads those few too). Publishing goes through the
reload guard (``records.max_loss`` against the version in force) and keeps a summary of what
changed: filings added and removed, statuses changed, names or addresses changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from beiand.model import Filing, FilingStatus, ServiceType
from beiand.records.formats.base import ImportRefused
from beiand.records.importer import gc_paused
from beiand.store.base import DecisionStore
from beiand.store.register import Delta, RegisterRow, Version, publish

KIND = "records"
RANGE_KEYS = ("~4", "~6")  # the lookup keys of filings listing a range or prefix of that family


def filing_row(f: Filing) -> RegisterRow:
    # the first ten fields in order (the source is not the filing's): orjson writes the enums as
    # their values and the tuples as arrays
    data = orjson.dumps(f[:10]).decode()
    ips = f.ips
    if not ips:
        return RegisterRow(f.number, data, f.domains)
    return RegisterRow(f.number, data, (*f.domains, *[(RANGE_KEYS[1] if ":" in ip else RANGE_KEYS[0])
                                                      if "-" in ip or "/" in ip else ip for ip in ips]))


_STYPES = {t.value: t for t in ServiceType}
_STATUSES = {s.value: s for s in FilingStatus}


def filing_of(data: str, source: str = "") -> Filing:
    n, sponsor, stype, domains, ips, provider, status, reviewed, sname, province = orjson.loads(data)
    return Filing(n, sponsor, _STYPES[stype], tuple(domains), tuple(ips), provider, _STATUSES[status], reviewed, sname,
                  province, source)


def filings_of(rows: Iterable[tuple[str, str]], source: str = "") -> list[Filing]:
    """The filings of register rows (key, data), in key order (the same list on every gateway)."""
    with gc_paused():  # a million filings and no cycle among them: the collector would walk them again and again
        return _filings_of(sorted(rows), source)


def _filings_of(ordered: list[tuple[str, str]], source: str) -> list[Filing]:
    out: list[Filing] = []
    new = tuple.__new__
    stypes, statuses = _STYPES, _STATUSES
    for i in range(0, len(ordered), 20_000):  # one JSON parse per 20,000 rows, not one a row
        part = ordered[i:i + 20_000]
        parsed = orjson.loads("[" + ",".join([d for _, d in part]) + "]")
        if len(parsed) != len(part):  # a row holding "[…],[…]" is one row, never two filings
            raise ValueError(f"rows {part[0][0]}…{part[-1][0]}: {len(parsed)} filings in {len(part)} rows")
        for n, sponsor, stype, domains, ips, provider, status, reviewed, sname, province in parsed:
            out.append(new(Filing, (n, sponsor, stypes[stype], tuple(domains), tuple(ips), provider, statuses[status],
                                    reviewed, sname, province, source)))
    return out


def lookup_keys(name: str, ip: str = "") -> list[str]:
    """The register keys under which the filings that may decide ``name`` (and ``ip``) are listed."""
    keys = []
    cand = name
    while cand:  # the name and every parent: the index's suffix walk (records.index)
        keys.append(cand)
        dot = cand.find(".")
        cand = cand[dot + 1:] if dot >= 0 else ""
    if ip:
        keys += [ip, RANGE_KEYS[1] if ":" in ip else RANGE_KEYS[0]]
    return keys


def summarise(delta: Delta, max_loss: float | None = None, offered: str = "") -> dict[str, Any]:
    """What a new export changes (kept with the version, shown by ``records log``); with
    ``max_loss``, refuse one that loses more than that share of the filings in force (the reload
    guard: a truncated export must never turn filed sites "unfiled")."""
    new = delta.in_force - len(delta.removed) + len(delta.added)
    if max_loss is not None and delta.in_force and new < delta.in_force * (1.0 - max_loss):
        old = delta.in_force
        raise ImportRefused(f"{offered or 'the new records'}: {new} filings, {old - new} fewer than the {old} in force "
                            f"({(old - new) / old:.0%} > the allowed {max_loss:.0%}): refused, the current records stay")
    status = names = addresses = other = 0
    for _, before, after in delta.changed:
        a, b = orjson.loads(before), orjson.loads(after)
        s, n, i = a[6] != b[6], a[3] != b[3], a[4] != b[4]
        status += s
        names += n
        addresses += i
        other += not (s or n or i)
    return {"filings": new, "status_changed": status, "names_changed": names, "addresses_changed": addresses,
            "other_changed": other}


def file_sha256(paths: Sequence[str | Path]) -> str:
    """The SHA-256 of the export files as imported (of the one file, or of their hashes in order)."""
    digests = []
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digests.append(h.hexdigest())
    return digests[0] if len(digests) == 1 else hashlib.sha256("\n".join(digests).encode()).hexdigest()


def publish_filings(store: DecisionStore, filings: Sequence[Filing], *, sources: Sequence[str | Path], max_loss: float | None,
                    actor: str = "", why: str = "", at: float | None = None) -> Version:
    """Publish an export's filings as the register's new records version (guarded by ``max_loss``;
    None: not guarded). Raises ImportRefused (guard), ``store.register.Unchanged`` (the same
    content is in force) or StoreError."""
    shown = ", ".join(str(p) for p in sources)
    with gc_paused():  # a million rows, hashes and keys: no cycle among them
        return publish(store, KIND, [filing_row(f) for f in filings], at=at, actor=actor, why=why, source=shown,
                       source_sha256=file_sha256(sources) if sources else "",
                       check=lambda d: summarise(d, max_loss, shown))
