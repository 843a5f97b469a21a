"""The hosted inventory and the NAT feed as versions of the register (``store.register``), beside
the filing records (``records.versions``): the same publication, history and fetch by content.

An inventory row is a hosted prefix keyed by its prefix; a NAT row is a mapping keyed by its own
content (a feed has no other key: a changed mapping is one ended and one added). The file and line
a row came from are not part of its content.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from beiand.model import Mode, PrefixState
from beiand.policy.inventory import HostedPrefix, Inventory
from beiand.policy.nat import NatMapping, NatTable
from beiand.records.versions import file_sha256
from beiand.store.base import DecisionStore
from beiand.store.register import Delta, RegisterRow, Version, publish, row_hash

INVENTORY = "inventory"
NAT = "nat"


def prefix_row(p: HostedPrefix) -> RegisterRow:
    cells: list[str] = [p.prefix, p.account, p.site, p.state.value, p.mode.value if p.mode else "", p.house]
    if p.unit or p.usage:  # 使用单位, 使用方式 (docs/ip-report.md); without them a row keeps its 6-element content
        cells += [p.unit, p.usage]
    return RegisterRow(p.prefix, orjson.dumps(cells).decode(), (p.prefix,))


def prefix_of(data: str, source: str = "") -> HostedPrefix:
    cells = orjson.loads(data)
    prefix, account, site, state, mode, house = cells[:6]
    unit, usage = cells[6:8] if len(cells) >= 8 else ("", "")
    return HostedPrefix(prefix, account, site, PrefixState(state), Mode(mode) if mode else None, source, house, unit, usage)


def inventory_of(rows: Iterable[tuple[str, str]], source: str = "") -> Inventory:
    return Inventory([prefix_of(d, source) for _, d in sorted(rows)])


def mapping_row(m: NatMapping) -> RegisterRow:
    data = orjson.dumps([m.public_ip, m.port_lo, m.port_hi, m.internal_ip, m.internal_port, m.account, m.valid_from,
                         m.valid_to]).decode()
    return RegisterRow(row_hash(data), data, (m.public_ip, m.internal_ip))


def mapping_of(data: str, source: str = "") -> NatMapping:
    pub, lo, hi, internal, iport, account, vfrom, vto = orjson.loads(data)
    return NatMapping(pub, lo, hi, internal, iport, account, vfrom, vto, source)


def nat_of(rows: Iterable[tuple[str, str]], source: str = "") -> NatTable:
    return NatTable([mapping_of(d, source) for _, d in sorted(rows)])


def _summary(delta: Delta) -> dict[str, Any]:
    return {"rows": delta.in_force - len(delta.removed) + len(delta.added)}


def publish_inventory(store: DecisionStore, inventory: Inventory, *, sources: Sequence[str], actor: str = "", why: str = "",
                      at: float | None = None) -> Version:
    """The inventory's prefixes as the register's new inventory version (``Unchanged``: in force)."""
    return publish(store, INVENTORY, [prefix_row(p) for p in inventory.prefixes], at=at, actor=actor, why=why,
                   source=", ".join(sources), source_sha256=file_sha256(sources) if sources else "", check=_summary)


def publish_nat(store: DecisionStore, nat: NatTable, *, sources: Sequence[str], actor: str = "", why: str = "",
                at: float | None = None) -> Version:
    """The NAT feed's mappings as the register's new NAT version (``Unchanged``: in force)."""
    rows = {r.key: r for r in map(mapping_row, nat.mappings)}  # a mapping listed twice is one row
    return publish(store, NAT, list(rows.values()), at=at, actor=actor, why=why, source=", ".join(sources),
                   source_sha256=file_sha256(sources) if sources else "", check=_summary)
