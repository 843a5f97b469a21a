"""The inventory's history: who held a hosted address at a past time.

Every inventory load that takes effect is recorded with the time it did, under the state
directory::

    <state_dir>/inventory-history/
      loads.jsonl               {"ts_ms": ..., "sha256": ..., "file": "<sha256>.csv", "source": "/etc/beiand/inventory.csv"}
      <sha256>.csv              the file as loaded (content-addressed: an unchanged reload adds a line, no copy)

A request about a past time ("who held 198.51.100.7 on 2026-11-20 at 08:00?") is answered from
the load in effect then, not from today's inventory (``beiand records holder IP --at TIME``,
the ``holder`` column of ``beiand logs query``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from beiand.errors import BeiandError
from beiand.policy.inventory import HostedPrefix, Inventory, InventoryError, load_inventory

HISTORY = "inventory-history"
LOADS = "loads.jsonl"


class HistoryError(BeiandError):
    pass


def history_dir(state_dir: Path) -> Path:
    return Path(state_dir) / HISTORY


def record_load(state_dir: Path, inventory_file: Path | None, ts_ms: int) -> dict[str, object]:
    """Record that the inventory in ``inventory_file`` (None: no inventory, nothing hosted) took
    effect at ``ts_ms``; returns the entry. The copy is written (and fsynced) before the line that
    names it."""
    d = history_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o750)
    if inventory_file is None:
        entry: dict[str, object] = {"ts_ms": ts_ms, "sha256": "", "file": "", "source": ""}
    else:
        data = Path(inventory_file).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        suffix = ".toml" if Path(inventory_file).suffix.lower() == ".toml" else ".csv"
        name = sha + suffix
        snap = d / name
        if not snap.exists():
            tmp = d / (name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, snap)
        entry = {"ts_ms": ts_ms, "sha256": sha, "file": name, "source": str(inventory_file)}
    line = json.dumps(entry, sort_keys=True, ensure_ascii=False).encode() + b"\n"
    fd = os.open(d / LOADS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
    return entry


@dataclass(frozen=True)
class Held:
    account: str  # "" when no hosted prefix held the address
    prefix: HostedPrefix | None
    loaded_ms: int  # when the inventory in effect then took effect (0: before the first recorded load)
    source: str  # the inventory file it was loaded from, and its SHA-256


class Holders:
    """Answers "which account held this address at that time" from the recorded loads."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = history_dir(state_dir)
        self.loads: list[dict[str, object]] = []
        path = self.dir / LOADS
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise HistoryError(f"{path}: {exc.strerror}") from None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
                if not isinstance(e, dict) or not isinstance(e.get("ts_ms"), int):
                    raise ValueError("not a load entry")
            except ValueError as exc:
                raise HistoryError(f"{path}:{n}: {exc}") from None
            self.loads.append(e)
        self.loads.sort(key=lambda e: int(str(e["ts_ms"])))
        self._times = [int(str(e["ts_ms"])) for e in self.loads]
        self._inv: dict[str, Inventory] = {}

    def _inventory(self, entry: dict[str, object]) -> Inventory:
        name = str(entry.get("file") or "")
        if not name:
            return Inventory([])
        inv = self._inv.get(name)
        if inv is None:
            try:
                inv = load_inventory(self.dir / name)
            except InventoryError as exc:
                raise HistoryError(f"{self.dir / name}: {exc.problems[0]}") from None
            self._inv[name] = inv
        return inv

    def timeline(self, until_ms: int | None = None) -> list[tuple[int, Inventory]]:
        """Every recorded load up to ``until_ms`` (all when None), in time order, with the
        inventory it put in force (the IP地址备案 report reads what changed from it)."""
        return [(int(str(e["ts_ms"])), self._inventory(e)) for e in self.loads
                if until_ms is None or int(str(e["ts_ms"])) <= until_ms]

    def at(self, ip: str, ts_ms: int) -> Held:
        i = bisect_right(self._times, ts_ms)
        if i == 0:
            return Held("", None, 0, "")
        e = self.loads[i - 1]
        hit = self._inventory(e).lookup(ip)
        sha = str(e.get("sha256", ""))[:16]
        return Held(hit.account if hit else "", hit, int(str(e["ts_ms"])), f"{e.get('source', '')} (sha256 {sha})")

    def holder(self, ip: str, ts_ms: int) -> str:
        return self.at(ip, ts_ms).account
