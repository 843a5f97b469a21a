"""The inventory and the NAT feed as register rows (issue 35): each comes back as published."""

from __future__ import annotations

from pathlib import Path

from beiand.policy.inventory import load_inventory
from beiand.policy.nat import NatMapping, NatTable
from beiand.policy.register import (
    inventory_of,
    mapping_of,
    mapping_row,
    nat_of,
    prefix_of,
    prefix_row,
    publish_inventory,
    publish_nat,
)
from beiand.store import register as reg
from beiand.store.sqlite import SqliteStore


def test_inventory_and_nat_round_trip_and_publish(tmp_path: Path) -> None:
    inv_file = tmp_path / "inv.csv"
    inv_file.write_text("prefix,account,site,state,mode\n198.51.100.0/24,cust-1,bj-1,active,enforce\n"
                        "2001:db8::/32,cust-2,sh-1,pending,\n")
    inv = load_inventory(inv_file)
    for p in inv.prefixes:
        assert prefix_of(prefix_row(p).data, p.source) == p
    m = NatMapping("203.0.113.1", 1000, 1999, "10.0.0.5", 2000, "cust-1", 0, 10_000)
    assert mapping_of(mapping_row(m).data) == m
    s = SqliteStore(tmp_path / "s.sqlite", "gw")
    s.migrate()
    v = publish_inventory(s, inv, sources=[str(inv_file)])
    n = publish_nat(s, NatTable([m, m]), sources=[])
    assert v.rows == 2 and n.rows == 1 and v.version == 1 and n.version == 2
    _, rows = reg.fetch(s, "inventory", 2)
    back = inventory_of(rows)
    assert [p.prefix for p in back.prefixes] == sorted(p.prefix for p in inv.prefixes)
    assert back.lookup("198.51.100.9") is not None and back.lookup("198.51.100.9").account == "cust-1"  # type: ignore[union-attr]
    _, rows = reg.fetch(s, "nat", 2)
    assert nat_of(rows).mappings == [m]
