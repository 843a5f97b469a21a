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


def test_the_unit_and_usage_are_part_of_an_inventory_row(tmp_path: Path) -> None:
    """使用单位 and 使用方式 (docs/ip-report.md) survive the register; a change of either alone is a
    new version; a row without them keeps its old (6-element) content, so an upgrade changes nothing."""
    f = tmp_path / "inv.csv"
    f.write_text("prefix,account,site,state,mode,unit,usage\n198.51.100.0/24,cust-1,bj-1,active,enforce,A公司,静态分配\n"
                 "203.0.113.0/24,cust-2,bj-1,active,enforce,,\n")
    inv = load_inventory(f)
    for p in inv.prefixes:
        assert prefix_of(prefix_row(p).data, p.source) == p
    assert inv.prefixes[0].unit == "A公司" and inv.prefixes[0].usage == "静态分配"
    assert prefix_row(inv.prefixes[1]).data == '["203.0.113.0/24","cust-2","bj-1","active","enforce",""]'
    s = SqliteStore(tmp_path / "s.sqlite", "gw")
    s.migrate()
    publish_inventory(s, inv, sources=[str(f)])
    f.write_text(f.read_text().replace("A公司", "B公司"))
    v = publish_inventory(s, load_inventory(f), sources=[str(f)])
    assert v.version == 2 and v.summary["changed"] == 1
    _, rows = reg.fetch(s, "inventory", 2)
    assert inventory_of(rows).lookup("198.51.100.1").unit == "B公司"  # type: ignore[union-attr]
