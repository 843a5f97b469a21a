"""Closure orders from the authority (关停指令, REGULATIONS.md O6) and the operator's exemptions:
rows of the decision store (``beiand.store``), folded here; the daemon's workers read the snapshot
the supervisor writes into the state directory within a second of a change.

A target is a name (the name and every name below it), an address, or a CIDR prefix: the only
way beiand ever blocks a whole host or prefix (REGULATIONS.md: blocking is per name or per flow
otherwise). A lifted order stays in the history with who lifted it, when and why: the execution
report (501号 art. 16(4)) needs it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from beiand.errors import BeiandError
from beiand.policy.source import Version, changed, version
from beiand.records.domains import DomainError, normalise_domain
from beiand.records.importer import gc_paused
from beiand.store import Change, Entry

log = logging.getLogger(__name__)


class OrderError(BeiandError, ValueError):
    pass


class Order(NamedTuple):
    """A closure order (or an exemption). A tuple: a worker builds 100,000 of them on a reload."""

    target: str  # a normalised name (the name and every name below it), an IP address or a CIDR prefix
    order: str  # the order's number/reference as the authority gave it
    reason: str
    created: float
    until: float = 0.0  # 0: until removed
    created_by: str = ""  # who entered it (the operator's login)

    @property
    def is_ip(self) -> bool:
        """An address or a CIDR prefix (all traffic to it is cut), not a name."""
        return _net(self.target) is not None

    def active(self, now: float) -> bool:
        return self.until == 0 or now < self.until


@dataclass(frozen=True)
class LiftedOrder:
    """An order as it was, and who lifted it, when and why (kept for the execution report)."""

    order: Order
    lifted_at: float
    lifted_by: str
    lift_reason: str


_NETS: dict[str, tuple[int, int, int] | None] = {}


def _net(target: str) -> tuple[int, int, int] | None:
    """(IP version, prefix length, network as an integer) of an address or prefix; None: a name.
    Remembered: every reload of a worker indexes the same targets again."""
    got = _NETS.get(target, False)
    if got is False:
        try:
            net = ipaddress.ip_network(target)
            got = (net.version, net.prefixlen, int(net.network_address))
        except ValueError:
            got = None
        if len(_NETS) > 1_000_000:
            _NETS.clear()
        _NETS[target] = got
    return got  # type: ignore[return-value]


class OrderStore:
    """The orders (or, as :class:`ExemptionStore`, the exemptions) in force and lifted.

    Folded from the decision store's rows (:meth:`apply`; ``beiand.store``), and kept as a snapshot
    file in the state directory (:meth:`snapshot`) that the daemon's workers read (:meth:`reload`)
    whenever it changes: the supervisor follows the store and writes the snapshot, so a worker
    never waits on the store and keeps enforcing the last snapshot while the store is away.
    """

    FILE = "orders.json"
    KIND = "order"
    WHAT = "closure order"

    def __init__(self, state_dir: Path | None, load: bool = True) -> None:
        """``load`` False: start empty (the first ``reload`` reads the file); ``state_dir`` None:
        no snapshot file (folded from the store only)."""
        self.path = Path(state_dir) / self.FILE if state_dir is not None else None
        self.seen: Version | None = _UNREAD  # the version last read, good or damaged
        self.orders: dict[str, Order] = {}
        self.history: list[LiftedOrder] = []
        self.version = 0  # the decision store's version this state is folded to (-1: a file older than the store)
        self.snapshot_store: str | None = None  # the store the snapshot read was written from
        self.refused: list[str] = []  # rows of the store refused (invalid), the last 100
        self.refused_total = 0
        self._spans: dict[str, list[tuple[float, float, Order]]] = {}
        self._history_end = 0.0
        # prefixes by (IP version, prefix length), longest first: an address is looked up once per
        # length in use (a scan of every prefix cost 2 ms per new address with 1,000 prefixes)
        self._nets: list[tuple[int, int, dict[int, list[tuple[float, float, Order]]]]] = []
        self._net_hits: dict[str, list[list[tuple[float, float, Order]]]] = {}
        self._name_hits: dict[str, list[list[tuple[float, float, Order]]]] = {}
        if load and self.path is not None:
            self.reload()

    def _index(self) -> None:
        """Every order that ever was in force, by target, with the time it ended: an observation is
        judged against the orders in force at its own time (issue 26: replay of a capture taken
        before an order was lifted decides as the daemon did then)."""
        spans: dict[str, list[tuple[float, float, Order]]] = {}
        end_all = 0.0
        for h in self.history:
            o = h.order
            end = min(h.lifted_at, o.until) if o.until else h.lifted_at
            if end > o.created:
                spans.setdefault(o.target, []).append((o.created, end, o))
                end_all = max(end_all, end)
        inf = math.inf
        for o in self.orders.values():  # at most one in force per target (100,000: a worker's reload, issue 29)
            s = spans.get(o.target)
            span = (o.created, o.until or inf, o)
            if s is None:
                spans[o.target] = [span]
            else:
                s.append(span)
            if span[1] > end_all:
                end_all = span[1]
        for v in spans.values():
            if len(v) > 1:
                v.sort(key=lambda s: -s[0])  # the newest first: a replacement wins over the order it replaced
        self._spans = spans
        self._history_end = end_all
        by_len: dict[tuple[int, int], dict[int, list[tuple[float, float, Order]]]] = {}
        for k, v in spans.items():
            if "/" in k and (net := _net(k)) is not None:
                by_len.setdefault((net[0], net[1]), {})[net[2]] = v
        self._nets = sorted(((ver, plen, t) for (ver, plen), t in by_len.items()), key=lambda n: -n[1])
        self._net_hits = {}
        self._name_hits = {}
        changed()

    # -- the decision store's rows ---------------------------------------------------------------

    def apply(self, changes: Iterable[Change], *, index: bool = True) -> int:
        """Fold the store's rows of this kind, in version order; a row that is not a valid order
        changes nothing and is named in :attr:`refused` (and logged). The number of rows applied."""
        n = 0
        for c in changes:
            if c.version <= self.version:
                continue  # folded already
            self.version = c.version
            if c.kind != self.KIND:
                continue
            try:
                self._apply(c)
                n += 1
            except OrderError as exc:
                why = f"decision {c.version} ({self.KIND} {c.key[:80]!r} by {c.actor or '?'} on {c.gateway or '?'}): {exc}"
                self.refused = [*self.refused[-99:], why]
                self.refused_total += 1
                log.error("%s: refused, the state before it is kept", why)
        if n and index:
            self._index()
        return n

    def _apply(self, c: Change) -> None:
        if c.op == "end":
            o = self.orders.pop(c.key, None)
            if o is not None:
                self.history.append(LiftedOrder(o, c.at, c.actor, c.why))
            return
        if c.op != "set":
            return
        new = order_of(c.key, c.data, c.at, c.actor, self.WHAT)
        old = self.orders.get(c.key)
        if old is not None:  # replaced: the old one is kept in the history
            self.history.append(LiftedOrder(old, c.at, c.actor, f"replaced by order {new.order}"))
        self.orders[c.key] = new

    def reload(self) -> bool:
        """Re-read the snapshot file if it changed (``policy.source``); True when it did. A damaged
        file raises once and keeps the orders in force; it is read again when it changes."""
        if self.path is None:
            return False
        v = version(self.path)
        if v == self.seen:
            return False
        self.seen = v
        if v is None:
            changed = bool(self.orders or self.history)
            self.orders, self.history = {}, []
            self._index()
            return changed
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:  # replaced or removed since the stat: read again next time
            self.seen = _UNREAD
            return False
        except OSError as exc:
            raise OrderError(f"{self.path}: {exc.strerror or exc}") from None
        with gc_paused():
            orders, history, snap = parse_file(raw, self.path)
            self.orders, self.history = orders, history
            self.version = int(snap.get("version", -1)) if snap else -1
            self.snapshot_store = str(snap.get("store")) if snap else None
            self._index()
        return True

    def snapshot(self, store: str | None) -> None:
        """Write the state as the snapshot file (atomic, fsynced) that the workers read, with the
        store's version it holds (``store`` None: a file of its own, without a store version,
        which a daemon imports into its decision store at start)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = self.path.with_suffix(".tmp")
        snap = {"snapshot": {"version": self.version, "store": store, "written": time.time()}} if store is not None else {}
        with open(tmp, "wb") as f:
            f.write(orjson.dumps({**snap,
                                  "orders": [tuple(o) for o in self.orders.values()],  # rows: read fastest
                                  "history": [{"order": h.order._asdict(), "lifted_at": h.lifted_at, "lifted_by": h.lifted_by,
                                               "lift_reason": h.lift_reason} for h in self.history]}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            self.seen = version(self.path)

    # -- a store of its own (tests, a copy of a state directory) ------------------------------------

    def add(self, target: str, order: str, reason: str, until: float = 0.0, by: str = "") -> Order:
        """Put an order in force here and write the file, without a decision store (the daemon
        imports such a file into its store at start). ``beiand block add`` writes the store."""
        self._local(set_entry(self.KIND, target, order, reason, until, by))
        return self.orders[target]

    def remove(self, target: str, by: str = "", reason: str = "") -> Order:
        o = self.orders.get(target)
        if o is None:
            raise OrderError(f"{target}: no {self.WHAT} for it")
        self._local(end_entry(self.KIND, target, by, reason))
        return o

    def _local(self, e: Entry) -> None:
        self.apply([Change(self.version + 1, e.kind, e.key, e.op, e.data, e.at, e.actor, e.why, "")])
        self.snapshot(None)

    def match(self, name: str, server_ip: str, ts: float) -> Order | None:
        """The order in force at ``ts`` covering ``name`` (or a name above it), ``server_ip``, or a
        prefix holding it: the address first, then the longest prefix, then the name."""
        spans = self._spans
        if not spans or (not self.orders and ts >= self._history_end):
            return None  # nothing in force then (the live daemon, once every order is lifted)
        s = spans.get(server_ip)
        if s is not None and (o := _at(s, ts)) is not None:
            return o
        if self._nets:
            for s in self._net_hits_of(server_ip):
                if (o := _at(s, ts)) is not None:
                    return o
        if not name:
            return None
        for s in self.name_hits(name):
            if (o := _at(s, ts)) is not None:
                return o
        return None

    def _net_hits_of(self, server_ip: str) -> list[list[tuple[float, float, Order]]]:
        hits = self._net_hits.get(server_ip)
        if hits is None:
            hits = self._nets_of(server_ip)
            if len(self._net_hits) > 65536:
                self._net_hits.clear()
            self._net_hits[server_ip] = hits
        return hits

    def name_hits(self, name: str) -> list[list[tuple[float, float, Order]]]:
        """The spans of the orders (any time) on ``name`` and every name above it (most names: none)."""
        hits = self._name_hits.get(name)
        if hits is None:
            hits = []
            spans = self._spans
            n = name
            while n:
                s = spans.get(n)
                if s is not None:
                    hits.append(s)
                i = n.find(".")
                n = n[i + 1:] if i >= 0 else ""
            if len(self._name_hits) > 65536:
                self._name_hits.clear()
            self._name_hits[name] = hits
        return hits

    def address_hits(self, ip: str) -> bool:
        """Whether an order (any time) is on the address ``ip`` or a prefix holding it."""
        return ip in self._spans or bool(self._nets and self._net_hits_of(ip))

    def _nets_of(self, server_ip: str) -> list[list[tuple[float, float, Order]]]:
        try:
            ip = ipaddress.ip_address(server_ip)
        except ValueError:
            return []
        x, ver = int(ip), ip.version
        bits = 32 if ver == 4 else 128
        out = []
        for v, plen, table in self._nets:  # longest prefix first
            if v == ver:
                s = table.get(x >> (bits - plen) << (bits - plen))
                if s is not None:
                    out.append(s)
        return out

    def in_force(self, ts: float) -> list[Order]:
        """The orders in force at ``ts`` (those lifted since included)."""
        return [o for s in self._spans.values() if (o := _at(s, ts)) is not None]


_UNREAD = Version(-1, -1, -1)


class ExemptionStore(OrderStore):
    """The operator's exemptions (豁免, ``beiand exempt add``): a name, an address or a prefix that
    is not blocked by the records' verdict (a closure order or a regulator's block still is)."""

    FILE = "exemptions.json"
    KIND = "exemption"
    WHAT = "exemption"


def check_target(target: str) -> str:
    """``target`` as the store keeps it (a normalised name, a canonical address or prefix), or
    OrderError."""
    if not target or not isinstance(target, str):
        raise OrderError("no target")
    if "/" in target:
        try:
            net = ipaddress.ip_network(target)
        except ValueError as exc:
            raise OrderError(f"target {target[:80]!r}: not a CIDR prefix ({exc})") from None
        if str(net) != target:
            raise OrderError(f"target {target[:80]!r}: not in canonical form ({net})")
        return target
    try:
        ip = ipaddress.ip_address(target)
    except ValueError:
        pass
    else:
        if str(ip) != target:
            raise OrderError(f"target {target[:80]!r}: not in canonical form ({ip})")
        return target
    try:
        n = normalise_domain(target)
    except DomainError as exc:
        raise OrderError(f"target {target[:80]!r}: {exc.reason}") from None
    if n != target:
        raise OrderError(f"target {target[:80]!r}: not in normal form ({n})")
    return target


def order_of(target: str, data: dict[str, Any], at: float, actor: str, what: str = "closure order") -> Order:
    """A stored row's order, checked: its target, its number, its end."""
    check_target(target)
    number = data.get("order")
    if not isinstance(number, str) or not number.strip():
        raise OrderError(f"a {what} without its number (order)")
    until = data.get("until", 0.0)
    reason = data.get("reason", "")
    if not isinstance(until, int | float) or isinstance(until, bool) or not math.isfinite(until) or until < 0:
        raise OrderError(f"until {until!r} is not a time")
    if not isinstance(reason, str):
        raise OrderError(f"reason {reason!r} is not text")
    return Order(target, number.strip(), reason, float(at), float(until), actor)


def set_entry(kind: str, target: str, order: str, reason: str, until: float, by: str, now: float | None = None) -> Entry:
    """The row that puts an order (or an exemption) in force, checked before it is written."""
    if not order.strip():
        raise OrderError("--order: the order number is required (it goes into every log record and the report)")
    at = time.time() if now is None else now
    data = {"order": order.strip(), "reason": reason.strip(), "until": until}
    order_of(target, data, at, by)
    return Entry(kind, target, "set", data, at, by, reason.strip())


def end_entry(kind: str, target: str, by: str, reason: str, now: float | None = None) -> Entry:
    return Entry(kind, target, "end", {}, time.time() if now is None else now, by, reason.strip())


def parse_file(raw: bytes, path: Path) -> tuple[dict[str, Order], list[LiftedOrder], dict[str, Any]]:
    """An orders file: the snapshot the daemon writes, or the file of a beiand before the decision
    store (no ``snapshot`` key); OrderError names the file when it is damaged."""
    try:
        data = orjson.loads(raw)
        rows = data.get("orders", [])
        if rows and isinstance(rows[0], list):  # a snapshot: [target, order, reason, created, until, created_by]
            make = Order._make
            orders = {o[0]: make(o) for o in rows}
        else:  # a file of a beiand before the decision store
            orders = {o["target"]: Order(**o) for o in rows}
        history = [LiftedOrder(Order(**h["order"]), h["lifted_at"], h.get("lifted_by", ""), h.get("lift_reason", ""))
                   for h in data.get("history", [])]
        for o in orders.values():
            if "/" in o.target and _net(o.target) is None:
                raise ValueError(f"{o.target!r} is not a CIDR prefix")
        snap = data.get("snapshot") or {}
        if not isinstance(snap, dict):
            raise ValueError("snapshot: not an object")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise OrderError(f"{path}: damaged: {exc}") from None
    return orders, history, snap


def legacy_entries(kind: str, orders: dict[str, Order], history: list[LiftedOrder]) -> list[Entry]:
    """The rows that hold what an orders file of a beiand before the decision store held: each
    lifted order put in force and lifted (with its own times, who and why), then those in force."""
    out: list[Entry] = []
    for h in sorted(history, key=lambda h: h.lifted_at):
        o = h.order
        out.append(Entry(kind, o.target, "set", {"order": o.order, "reason": o.reason, "until": o.until}, o.created,
                         o.created_by, o.reason))
        out.append(Entry(kind, o.target, "end", {}, h.lifted_at, h.lifted_by, h.lift_reason))
    for o in sorted(orders.values(), key=lambda o: o.created):
        out.append(Entry(kind, o.target, "set", {"order": o.order, "reason": o.reason, "until": o.until}, o.created,
                         o.created_by, o.reason))
    return out


def _at(spans: list[tuple[float, float, Order]], ts: float) -> Order | None:
    for start, end, o in spans:
        if start <= ts < end:
            return o
    return None
