import pytest

from beiand.model import Mode, PrefixState
from beiand.policy.inventory import InventoryError, load_inventory


def test_csv_and_longest_prefix_match(tmp_path):
    p = tmp_path / "inv.csv"
    p.write_text("prefix,account,site,state,mode\n198.51.100.0/24,cust-a,bj-1,active,\n"
                 "198.51.100.128/25,cust-b,bj-1,pending,enforce\n2001:db8::/32,cust-c,sh-2,,dry-run\n"
                 "# comment\n\n", encoding="utf-8")
    inv = load_inventory(p)
    assert inv.lookup("198.51.100.5").account == "cust-a"
    hit = inv.lookup("198.51.100.200")
    assert (hit.account, hit.state, hit.mode) == ("cust-b", PrefixState.PENDING, Mode.ENFORCE)
    assert inv.lookup("2001:db8:1::1").mode is Mode.DRY_RUN and inv.lookup("2001:db8:1::1").state is PrefixState.ACTIVE
    assert inv.lookup("203.0.113.1") is None and inv.lookup("not-an-ip") is None
    assert inv.lookup("198.51.100.5") is inv.lookup("198.51.100.5")  # cached


def test_chinese_headers_and_toml(tmp_path):
    p = tmp_path / "inv.csv"
    p.write_text("地址段,用户账号,机房,状态,模式\n203.0.113.0/24,客户甲,bj-1,预分配,阻断\n", encoding="utf-8")
    hit = load_inventory(p).lookup("203.0.113.9")
    assert (hit.account, hit.state, hit.mode) == ("客户甲", PrefixState.PENDING, Mode.ENFORCE)
    t = tmp_path / "inv.toml"
    t.write_text('[[prefix]]\nprefix = "203.0.113.0/24"\naccount = "a"\nstate = "closed"\n', encoding="utf-8")
    assert load_inventory(t).lookup("203.0.113.1").state is PrefixState.CLOSED


def test_errors_name_file_line_field(tmp_path):
    p = tmp_path / "inv.csv"
    p.write_text("prefix,account,site,state,mode\n198.51.100.1/24,a,,,\n10.0.0.0/8,,,,\n10.1.0.0/16,b,,weird,\n"
                 "10.2.0.0/16,c,,,loud\n192.0.2.0/24,d,,,\n192.0.2.0/24,e,,,\nbogus,f,,,\n", encoding="utf-8")
    with pytest.raises(InventoryError) as exc:
        load_inventory(p)
    probs = exc.value.problems
    assert probs[0] == f"{p}:2: prefix (地址段): '198.51.100.1/24' has host bits set; did you mean 198.51.100.0/24?"
    assert probs[1].startswith(f"{p}:3: account (用户账号): empty")
    assert probs[2].startswith(f"{p}:4: state (状态):")
    assert probs[3].startswith(f"{p}:5: mode (模式):")
    assert probs[4].startswith(f"{p}:8: prefix (地址段): 'bogus'")
    assert probs[5] == f"{p}:7: prefix (地址段): 192.0.2.0/24 already listed at {p}:6"
    t = tmp_path / "bad.toml"
    t.write_text('[[prefix]]\nprefix = "10.0.0.0/8"\naccount = "a"\ncolour = "red"\n', encoding="utf-8")
    with pytest.raises(InventoryError, match="colour: unknown key"):
        load_inventory(t)
    with pytest.raises(InventoryError, match="header"):
        (tmp_path / "h.csv").write_text("a,b\n", encoding="utf-8")
        load_inventory(tmp_path / "h.csv")


def test_the_house_column_names_the_isms_house_of_each_prefix(tmp_path):
    """Issue 30: the inventory names the house (机房编号, ISMS houseId) of each prefix; no column: ""."""
    p = tmp_path / "inv.csv"
    p.write_text("地址段,用户账号,机房,机房编号\n203.0.113.0/24,a,bj-1,H1\n198.51.100.0/24,b,sh-1,\n", encoding="utf-8")
    inv = load_inventory(p)
    assert inv.lookup("203.0.113.9").house == "H1" and inv.lookup("198.51.100.1").house == ""
    t = tmp_path / "inv.toml"
    t.write_text('[[prefix]]\nprefix = "203.0.113.0/24"\naccount = "a"\nhouse = "H2"\n', encoding="utf-8")
    assert load_inventory(t).lookup("203.0.113.1").house == "H2"
    p.write_text("prefix,account,house\n203.0.113.0/24,a,H 1\n", encoding="utf-8")
    with pytest.raises(InventoryError, match=r"inv.csv:2: house \(机房编号\)"):
        load_inventory(p)


def test_the_unit_and_usage_columns_are_what_the_ip_report_files(tmp_path):
    """Issue 35: 使用单位 and 使用方式 (IP地址备案, 501号 art. 19) are optional columns; none: ""."""
    p = tmp_path / "inv.csv"
    p.write_text("地址段,用户账号,使用单位,使用方式\n203.0.113.0/24,a,北京示例科技有限公司,IDC托管\n198.51.100.0/24,b,,\n",
                 encoding="utf-8")
    inv = load_inventory(p)
    assert (inv.lookup("203.0.113.9").unit, inv.lookup("203.0.113.9").usage) == ("北京示例科技有限公司", "IDC托管")
    assert (inv.lookup("198.51.100.1").unit, inv.lookup("198.51.100.1").usage) == ("", "")
    t = tmp_path / "inv.toml"
    t.write_text('[[prefix]]\nprefix = "203.0.113.0/24"\naccount = "a"\nunit = "U"\nusage = "专线"\n', encoding="utf-8")
    assert load_inventory(t).lookup("203.0.113.1").usage == "专线"
