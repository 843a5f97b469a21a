"""The authority's lists of unfiled sites (上级下发未备案网站, 501号 art. 5(7), 7(4)) as rows of the
decision store, and as an overlay.

Rows of kind ``authority``, keyed by the site (a normalised name, or an address):

- ``set``: the site is listed (data: ``order`` the list's reference, ``listed``, ``deadline``,
  ``source`` file:line, ``sha256`` of the file, ``address`` the authority saw it on). Folded as a
  closure order is (:class:`AuthorityBook`, an :class:`~beiand.policy.orders.OrderStore`): in force
  from the row's time, the newest listing of a site deciding, every earlier one kept in the history.
- ``note`` ``assessed``: what the import found on the gateway that made it (hosted here or not, the
  account, the records' verdict, the outcome, the case it opened); ``settled``: a person settled a
  conflict; ``imported``: one file's import (who, the lists it held, the rows it refused).
- ``end``: the authority withdrew the site.

Nothing is deleted: the 处理结果 report of a list (:class:`AuthorityLists`) is the fold of its rows.

As an overlay (:class:`AuthorityLayer`), a listed site is decided like a closure order, at the
observation's time and with the list as the deciding rule (``Decision.by`` ``authority``, ``ref``
the list), but per flow and only where the records do not file it: blocked in ``enforce`` prefixes
and flagged elsewhere (``authority.block``, the default), or flagged only. A listed name covers
itself and every name below it; a listed address covers the flows to it that carry no name (the
site reached by its address), never the names served from it (a filed site on a shared address
stays reachable: DESIGN.md, a block is per flow or per name, never per host). A site the records
file (or the operator's allowlist exempts) is never blocked by a list: that is a conflict for a
person (:data:`CONFLICT`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from beiand.model import AddressRule, Observation, Overlay, VerdictKind
from beiand.policy.orders import OrderStore
from beiand.policy.overlays import PRIORITY, Effect, Hit, OrderLayer
from beiand.policy.verdict import Policy, files_here
from beiand.records.authority import AuthorityEntry, AuthorityFile
from beiand.records.domains import is_ip_literal
from beiand.store import Change, Entry

KIND = "authority"
# What an import found for an entry (the ``assessed`` note's ``outcome``), with the 处理结果 words
BLOCKED = "blocked"  # hosted here, not filed: a case opened and its flows blocked in enforce prefixes
FLAGGED = "flagged"  # hosted here, not filed, authority.block false: a case opened, flows flagged
CONFLICT = "conflict"  # the records file it (or the allowlist exempts it): a person decides; never blocked
NOT_HOSTED = "not-hosted"  # not served from hosted space here (nothing to do but say so)
OUTCOMES = {
    BLOCKED: "已阻断接入并立案督促整改 (blocked per flow, case opened)",
    FLAGGED: "已立案督促整改 (case opened; flows flagged, authority.block = false)",
    CONFLICT: "备案记录显示已备案，待人工核实 (conflict: the records file it; for a person)",
    NOT_HOSTED: "非本单位接入 (not hosted here)",
}
REJECTED = "rejected"


class AuthorityBook(OrderStore):
    """The listed sites in force, folded from the ``authority`` rows as closure orders are (the
    ``order`` of each is its list's reference); the snapshot ``authority.json`` the workers read."""

    FILE = "authority.json"
    KIND = KIND
    WHAT = "authority list entry"

    def apply(self, changes: Iterable[Change], *, index: bool = True) -> int:
        """Fold the rows that list or withdraw a site; the notes (assessments, settlements,
        imports) change no rule, so they move the version on without rewriting the snapshot."""
        rows = list(changes)
        n = super().apply([c for c in rows if c.op != "note"], index=index)
        if rows and rows[-1].version > self.version:
            self.version = rows[-1].version
        return n


class AuthorityLayer(OrderLayer):
    """The listed sites as an overlay (see the module): per flow, never by address (no nftables)."""

    name = "authority"
    overlay = Overlay.AUTHORITY
    STORE = AuthorityBook

    def __init__(self, store: OrderStore, block: bool = True) -> None:
        super().__init__(store)
        self.effect = Effect.LISTED if block else Effect.FLAG
        self._hits: dict[str, Hit] = {}

    @classmethod
    def from_state_dir(cls, state_dir: Path, block: bool = True) -> AuthorityLayer:
        layer = cls(AuthorityBook(state_dir, load=False), block)
        layer._read()
        return layer

    def match(self, obs: Observation) -> Hit | None:
        name = obs.name
        if name and not is_ip_literal(name):
            o = self.store.match(name, "", obs.ts)  # a listed name and the names below it
        else:
            o = self.store.match("", obs.server_ip, obs.ts)  # a listed address, reached without a name
        if o is None:
            return None
        h = self._hits.get(o.order)
        if h is None:
            if len(self._hits) > 4096:
                self._hits.clear()
            h = self._hits[o.order] = Hit(Overlay.AUTHORITY, o.order, self.effect, PRIORITY[Overlay.AUTHORITY])
        return h

    def addresses(self, ts: float) -> list[AddressRule]:
        return []  # per flow: a listed address is never cut whole (only a closure order does that)

    def next_change(self, ts: float) -> float:
        return math.inf

    def rule_names(self) -> Collection[str]:
        return [k for k in self.store._spans if not is_ip_literal(k)]


@dataclass(frozen=True)
class Served:
    """What the access log shows of a name: served from ``server`` (hosted now), ``hits`` records
    between ``first`` and ``last`` (epoch seconds)."""

    name: str
    server: str
    hits: int
    first: float
    last: float


@dataclass(frozen=True)
class Assessment:
    """What an import found for one entry on this gateway (the ``assessed`` note)."""

    outcome: str  # BLOCKED, FLAGGED, CONFLICT or NOT_HOSTED
    hosted_by: str  # why it is hosted here: "inventory" (the address), "access log" (the name served), "" not hosted
    servers: tuple[str, ...]  # hosted addresses it is served from
    accounts: tuple[str, ...]  # their customer accounts (用户账号)
    verdict: str  # the records' verdict (at the first hosted address; as if hosted, when not)
    filing: str  # the filing number that files it (a conflict), ""
    hits: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0

    def data(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "hosted": bool(self.hosted_by), "hosted_by": self.hosted_by,
                "servers": list(self.servers), "accounts": list(self.accounts), "verdict": self.verdict, "filing": self.filing,
                "hits": self.hits, "first_seen": self.first_seen, "last_seen": self.last_seen}


def assess(e: AuthorityEntry, policy: Policy, served: Iterable[Served], now: float, block: bool = True) -> Assessment:
    """Whether a listed site is hosted here and filed (docs/authority.md, "Hosted here").

    An address is hosted here when the inventory holds it. A name is hosted here when the access
    log shows it (or a name below it) on an address the inventory holds now (a connection named so,
    or a DNS answer pointing it there: ``served``), or when the address the authority saw it on is
    one the inventory holds. Hosted, it is judged by the records
    at each such address: filed here (or exempt) at any of them is a conflict, a filing of ours
    served from an address it does not list included (``verdict.files_here``); else it is blocked (or
    flagged). Not hosted, a name the records still file through this provider is a conflict too
    (the authority and the records disagree: a person looks), anything else is ``not-hosted``."""
    inv = policy.inventory
    seen = [s for s in served if inv.lookup(s.server) is not None]
    if e.is_address:
        name, servers, how = "", [e.target] if inv.lookup(e.target) is not None else [], "inventory"
    else:
        name = e.target
        servers = list(dict.fromkeys(s.server for s in seen))
        how = "access log"
        if e.address and inv.lookup(e.address) is not None and e.address not in servers:
            servers.append(e.address)
            how = how if seen else "inventory"
    hits = sum(s.hits for s in seen)
    first = min((s.first for s in seen), default=0.0)
    last = max((s.last for s in seen), default=0.0)
    if not servers:
        d, _, _ = policy.lookup(name, "", now) if name else (None, None, "")
        if d is not None and d.verdict.verdict is VerdictKind.FILED:
            f = d.verdict.filing
            return Assessment(CONFLICT, "", (), (), d.verdict.verdict.value, f.number if f else "", hits, first, last)
        return Assessment(NOT_HOSTED, "", (), (), d.verdict.verdict.value if d is not None else VerdictKind.NOT_HOSTED.value,
                          "", hits, first, last)
    accounts: list[str] = []
    verdict, filing = "", ""
    for ip in servers:
        prefix = inv.lookup(ip)
        d = policy.judge(name, ip, now, prefix)
        if prefix is not None and prefix.account not in accounts:
            accounts.append(prefix.account)
        v = d.verdict.verdict
        if files_here(d.verdict) and not filing:  # drift of a filing of ours too (an unlisted address)
            verdict, filing = v.value, (d.verdict.filing.number if d.verdict.filing else d.verdict.reason)
        verdict = verdict or v.value
    outcome = CONFLICT if filing else (BLOCKED if block else FLAGGED)
    return Assessment(outcome, how, tuple(servers), tuple(accounts), verdict, filing, hits, first, last)


def listed_entry(e: AuthorityEntry, sha256: str, by: str, now: float) -> Entry:
    """The row that lists a site (in force from ``now``)."""
    data = {"order": e.list_ref, "reason": f"上级下发未备案网站 {e.list_ref} ({e.listed})", "until": 0.0, "listed": e.listed,
            "deadline": e.deadline, "source": e.source, "sha256": sha256, "address": e.address}
    return Entry(KIND, e.target, "set", data, now, by, f"authority list {e.list_ref}: {e.source}")


def note(target: str, event: str, by: str, why: str, now: float, **data: Any) -> Entry:
    return Entry(KIND, target, "note", {"event": event, **data}, now, by, why)


def imported_note(f: AuthorityFile, by: str, now: float, written: int, default_list: str) -> Entry:
    """The row of one file's import: who, the lists, and every row it refused (the report lists them)."""
    rejected = [{"source": f"{i.file}:{i.unit + ' ' if i.unit else ''}{i.line}", "field": i.field, "reason": i.reason,
                 "list": ref, "site": text} for i, ref, text in f.rejected]
    return Entry(KIND, "import:" + f.sha256, "note",
                 {"event": "imported", "file": f.path, "sha256": f.sha256, "lists": f.lists or ([default_list] if default_list
                                                                                                 else []),
                  "rows": f.rows, "entries": len(f.entries), "written": written, "rejected": rejected[:1000]},
                 now, by, f"authority list import {Path(f.path).name}")


@dataclass
class Listed:
    """One entry of a list, with what was found and done about it."""

    target: str
    list_ref: str
    listed: str
    deadline: str
    source: str
    address: str
    at: float  # when it was imported (in force from then)
    by: str
    gateway: str
    outcome: str = ""  # the last assessment's outcome ("" : none yet)
    assessed: dict[str, Any] = field(default_factory=dict)
    assessed_at: float = 0.0
    settled: dict[str, Any] = field(default_factory=dict)
    settled_at: float = 0.0
    withdrawn_at: float = 0.0

    @property
    def open_conflict(self) -> bool:
        return self.outcome == CONFLICT and not self.settled_at


@dataclass
class AuthorityLists:
    """Every list, its entries and imports, folded from the ``authority`` rows (the report's source)."""

    entries: dict[tuple[str, str], Listed] = field(default_factory=dict)  # (list, target) → entry
    imports: list[Change] = field(default_factory=list)
    version: int = 0

    def apply(self, changes: Iterable[Change]) -> None:
        for c in changes:
            if c.version <= self.version:
                continue
            self.version = c.version
            if c.kind != KIND:
                continue
            d = c.data
            if c.op == "set":
                ref = str(d.get("order", ""))
                self.entries[(ref, c.key)] = Listed(c.key, ref, str(d.get("listed", "")), str(d.get("deadline", "")),
                                                    str(d.get("source", "")), str(d.get("address", "")), c.at, c.actor, c.gateway)
            elif c.op == "end":
                for e in self.entries.values():
                    if e.target == c.key and not e.withdrawn_at:
                        e.withdrawn_at = c.at
            elif d.get("event") == "imported":
                self.imports.append(c)
            elif d.get("event") in ("assessed", "settled"):
                it = self.entries.get((str(d.get("list", "")), c.key))
                if it is None:
                    continue
                if d["event"] == "assessed":
                    it.outcome, it.assessed, it.assessed_at = str(d.get("outcome", "")), dict(d), c.at
                else:
                    it.settled, it.settled_at = {"by": c.actor, "why": c.why, **d}, c.at

    def lists(self) -> dict[str, list[Listed]]:
        out: dict[str, list[Listed]] = {}
        for e in sorted(self.entries.values(), key=lambda e: (e.at, e.source)):
            out.setdefault(e.list_ref, []).append(e)
        return out

    def rejected(self, list_ref: str) -> list[dict[str, Any]]:
        """The rows of the list's files that were not imported: each once (the same bad cell in a
        second file of the list, or the same file again, is the same entry), the first as named."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for c in self.imports:
            lists = c.data.get("lists", [])
            for r in c.data.get("rejected", []):
                if r.get("list") == list_ref or (not r.get("list") and list_ref in lists):
                    key = (str(r.get("field")), str(r["site"])) if r.get("site") else ("", str(r.get("source")))
                    out.setdefault(key, {**r, "at": c.at, "by": c.actor})
        return list(out.values())

    def in_force(self) -> list[Listed]:
        """The entries whose listing is the one in force for their site (the newest, not withdrawn)."""
        newest: dict[str, Listed] = {}
        for e in self.entries.values():
            if e.withdrawn_at and e.withdrawn_at >= e.at:
                continue
            held = newest.get(e.target)
            if held is None or held.at <= e.at:
                newest[e.target] = e
        return list(newest.values())

    def conflicts(self) -> int:
        """Entries in force whose import found the records filing them, not yet settled by a person."""
        return sum(1 for e in self.in_force() if e.open_conflict)
