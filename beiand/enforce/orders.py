"""Closure orders from the authority (关停指令, REGULATIONS.md O6): persisted in the state
directory, atomic writes, read by the daemon within a second of a change."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path


class OrderError(ValueError):
    pass


@dataclass(frozen=True)
class Order:
    target: str  # a normalised name (the name and every name below it) or an IP address
    order: str  # the order's number/reference as the authority gave it
    reason: str
    created: float
    until: float = 0.0  # 0: until removed

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.target)
            return True
        except ValueError:
            return False

    def active(self, now: float) -> bool:
        return self.until == 0 or now < self.until


class OrderStore:
    FILE = "orders.json"

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / self.FILE
        self._mtime = -1.0
        self.orders: dict[str, Order] = {}
        self.reload()

    def reload(self) -> bool:
        """Re-read the file if it changed; True when it did."""
        try:
            m = self.path.stat().st_mtime
        except FileNotFoundError:
            changed = bool(self.orders)
            self.orders, self._mtime = {}, -1.0
            return changed
        if m == self._mtime:
            return False
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.orders = {o["target"]: Order(**o) for o in data.get("orders", [])}
        except (ValueError, TypeError, KeyError) as exc:
            raise OrderError(f"{self.path}: damaged: {exc}") from None
        self._mtime = m
        return True

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"orders": [asdict(o) for o in self.orders.values()]}, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            self._mtime = self.path.stat().st_mtime

    def add(self, target: str, order: str, reason: str, until: float = 0.0) -> Order:
        if not order.strip():
            raise OrderError("--order: the order number is required (it goes into every log record and the report)")
        o = Order(target, order.strip(), reason.strip(), time.time(), until)
        self.orders[target] = o
        self._save()
        return o

    def remove(self, target: str) -> Order:
        o = self.orders.pop(target, None)
        if o is None:
            raise OrderError(f"{target}: no closure order for it")
        self._save()
        return o

    def match(self, name: str, server_ip: str, now: float) -> Order | None:
        """The order covering ``name`` (or a name above it) or ``server_ip``."""
        if not self.orders:
            return None
        o = self.orders.get(server_ip)
        if o is not None and o.active(now):
            return o
        n = name
        while n:
            o = self.orders.get(n)
            if o is not None and o.active(now):
                return o
            i = n.find(".")
            n = n[i + 1:] if i >= 0 else ""
        return None
