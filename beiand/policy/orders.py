"""Closure orders from the authority (关停指令, REGULATIONS.md O6): persisted in the state
directory, atomic writes, read by the daemon within a second of a change.

A target is a name (the name and every name below it), an address, or a CIDR prefix: the only
way beiand ever blocks a whole host or prefix (REGULATIONS.md: blocking is per name or per flow
otherwise). A lifted order stays in the history with who lifted it, when and why: the execution
report (501号 art. 16(4)) needs it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from beiand.errors import BeiandError
from beiand.policy.source import Version, version


class OrderError(BeiandError, ValueError):
    pass


@dataclass(frozen=True)
class Order:
    target: str  # a normalised name (the name and every name below it), an IP address or a CIDR prefix
    order: str  # the order's number/reference as the authority gave it
    reason: str
    created: float
    until: float = 0.0  # 0: until removed
    created_by: str = ""  # who entered it (the operator's login)

    @property
    def is_ip(self) -> bool:
        """An address or a CIDR prefix (all traffic to it is cut), not a name."""
        try:
            ipaddress.ip_network(self.target)
            return True
        except ValueError:
            return False

    def active(self, now: float) -> bool:
        return self.until == 0 or now < self.until


@dataclass(frozen=True)
class LiftedOrder:
    """An order as it was, and who lifted it, when and why (kept for the execution report)."""

    order: Order
    lifted_at: float
    lifted_by: str
    lift_reason: str


class OrderStore:
    FILE = "orders.json"

    def __init__(self, state_dir: Path, load: bool = True) -> None:
        """``load`` False: start empty (the first ``reload`` reads the file)."""
        self.path = Path(state_dir) / self.FILE
        self.seen: Version | None = _UNREAD  # the version last read, good or damaged
        self.orders: dict[str, Order] = {}
        self.history: list[LiftedOrder] = []
        self._spans: dict[str, list[tuple[float, float, Order]]] = {}
        self._history_end = 0.0
        self._nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, list[tuple[float, float, Order]]]] = []
        self._net_hits: dict[str, list[list[tuple[float, float, Order]]]] = {}
        if load:
            self.reload()

    def _index(self) -> None:
        """Every order that ever was in force, by target, with the time it ended: an observation is
        judged against the orders in force at its own time (issue 26: replay of a capture taken
        before an order was lifted decides as the daemon did then)."""
        spans: dict[str, list[tuple[float, float, Order]]] = {}
        for h in self.history:
            o = h.order
            end = min(h.lifted_at, o.until) if o.until else h.lifted_at
            if end > o.created:
                spans.setdefault(o.target, []).append((o.created, end, o))
        for o in self.orders.values():
            spans.setdefault(o.target, []).append((o.created, o.until or math.inf, o))
        for v in spans.values():
            v.sort(key=lambda s: -s[0])  # the newest first: a replacement wins over the order it replaced
        self._spans = spans
        self._history_end = max((e for v in spans.values() for _, e, _ in v), default=0.0)
        self._nets = sorted(((ipaddress.ip_network(k), v) for k, v in spans.items() if "/" in k), key=lambda n: -n[0].prefixlen)
        self._net_hits = {}

    def reload(self) -> bool:
        """Re-read the file if it changed (``policy.source``); True when it did. A damaged file
        raises once and keeps the orders in force; it is read again when it changes."""
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
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:  # replaced or removed since the stat: read again next time
            self.seen = _UNREAD
            return False
        except OSError as exc:
            raise OrderError(f"{self.path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
            orders = {o["target"]: Order(**o) for o in data.get("orders", [])}
            history = [LiftedOrder(Order(**h["order"]), h["lifted_at"], h.get("lifted_by", ""), h.get("lift_reason", ""))
                       for h in data.get("history", [])]
            for o in orders.values():
                if "/" in o.target:
                    ipaddress.ip_network(o.target)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise OrderError(f"{self.path}: damaged: {exc}") from None
        self.orders, self.history = orders, history
        self._index()
        return True

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"orders": [asdict(o) for o in self.orders.values()],
                       "history": [{"order": asdict(h.order), "lifted_at": h.lifted_at, "lifted_by": h.lifted_by,
                                    "lift_reason": h.lift_reason} for h in self.history]},
                      f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            self.seen = version(self.path)
        self._index()

    def add(self, target: str, order: str, reason: str, until: float = 0.0, by: str = "") -> Order:
        if not order.strip():
            raise OrderError("--order: the order number is required (it goes into every log record and the report)")
        o = Order(target, order.strip(), reason.strip(), time.time(), until, by)
        old = self.orders.get(target)
        if old is not None:  # replaced: the old one is kept in the history
            self.history.append(LiftedOrder(old, o.created, by, f"replaced by order {o.order}"))
        self.orders[target] = o
        self._save()
        return o

    def remove(self, target: str, by: str = "", reason: str = "") -> Order:
        o = self.orders.pop(target, None)
        if o is None:
            raise OrderError(f"{target}: no closure order for it")
        self.history.append(LiftedOrder(o, time.time(), by, reason.strip()))
        self._save()
        return o

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
            hits = self._net_hits.get(server_ip)
            if hits is None:
                hits = self._nets_of(server_ip)
                if len(self._net_hits) > 65536:
                    self._net_hits.clear()
                self._net_hits[server_ip] = hits
            for s in hits:
                if (o := _at(s, ts)) is not None:
                    return o
        n = name
        while n:
            s = spans.get(n)
            if s is not None and (o := _at(s, ts)) is not None:
                return o
            i = n.find(".")
            n = n[i + 1:] if i >= 0 else ""
        return None

    def _nets_of(self, server_ip: str) -> list[list[tuple[float, float, Order]]]:
        try:
            ip = ipaddress.ip_address(server_ip)
        except ValueError:
            return []
        return [s for net, s in self._nets if ip.version == net.version and ip in net]  # longest prefix first

    def in_force(self, ts: float) -> list[Order]:
        """The orders in force at ``ts`` (those lifted since included)."""
        return [o for s in self._spans.values() if (o := _at(s, ts)) is not None]


_UNREAD = Version(-1, -1, -1)


def _at(spans: list[tuple[float, float, Order]], ts: float) -> Order | None:
    for start, end, o in spans:
        if start <= ts < end:
            return o
    return None
