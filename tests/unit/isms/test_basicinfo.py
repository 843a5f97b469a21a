"""DT 1 基础数据 (beiand/isms/basicinfo.py, Spool.write_basic_info): the builder on a small inventory,
the basic-info file and its errors, a hypothesis property over random inventories and filings (every
live prefix once in its house, the file passes basic_info.xsd and unpacks with the double's own
envelope code, every element has a fields.py row), and a fleet-sized file (its time printed)."""

from __future__ import annotations

import ipaddress
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beiand.isms import basicinfo as bi
from beiand.isms.reports import ReportError, Spool
from beiand.isms.wire import fields
from beiand.isms.wire.codec import XSD_DIR, schema
from beiand.isms.wire.envelope import Keys
from beiand.isms.wire.profile import Profile
from beiand.model import Filing, FilingStatus, PrefixState, ServiceType
from beiand.policy.inventory import HostedPrefix
from tests import isms_double as dbl

KEYS = Keys(dbl.USER_KEY, dbl.ENC_KEY, dbl.IV, dbl.AUTH_KEY)
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "isms-basic.toml"
XSD = str(XSD_DIR / "basic_info.xsd")
T0 = 1796000000.0


def hp(prefix: str, account: str, house: str, state: PrefixState = PrefixState.ACTIVE) -> HostedPrefix:
    """A hosted prefix whose inventory row names its house (the ``house`` column, 机房编号)."""
    return HostedPrefix(prefix, account, f"site-{house}" if house else "", state, None, house=house)


def filing(number: str, ips: tuple[str, ...], domains: tuple[str, ...] = ("a.example",), provider: str = "示例网络科技有限公司",
           status: FilingStatus = FilingStatus.ACTIVE) -> Filing:
    return Filing(number, "主办单位", ServiceType.WEBSITE, domains, ips, provider, status)


def spool(tmp_path: Path, **kw: object) -> Spool:
    return Spool(tmp_path / "spool", dbl.IDC_ID, KEYS, Profile(**kw), clock=lambda: T0)  # type: ignore[arg-type]


def unpacked(path: Path) -> ET.Element:
    return ET.fromstring(dbl.unpack_file(path.read_bytes()))


def paths(root: ET.Element) -> set[str]:
    out: set[str] = set()
    stack = [("", root)]
    while stack:
        base, el = stack.pop()
        for c in el:
            p = f"{base}/{c.tag}" if base else str(c.tag)
            out.add(p)
            stack.append((p, c))
    return out


# -- the builder -----------------------------------------------------------------------------


INVENTORY = [hp("203.0.113.0/28", "cust-0001", "bj-yz-1"), hp("203.0.113.16/28", "cust-0002", "sh-1", PrefixState.PENDING),
             hp("198.51.100.0/24", "cust-0001", "bj-yz-1", PrefixState.CLOSED), hp("2001:db8::/48", "cust-0001", "")]
FILINGS = [filing("京ICP备1号-1", ("203.0.113.5", "2001:db8::1")),
           filing("京ICP备2号-1", ("203.0.113.17-203.0.113.18",), ("b.example", "www.b.example")),
           filing("京ICP备3号-1", ("192.0.2.1",)),  # in no prefix: unplaced
           filing("京ICP备4号-1", ("203.0.113.6",), provider="别家公司"),  # another provider's filing
           filing("京ICP备5号-1", ("203.0.113.7",), status=FilingStatus.CANCELLED),
           filing("京ICP备6号-1", ("198.51.100.9",))]  # only in a closed prefix: unplaced


def test_the_tree_of_a_small_inventory() -> None:
    facts = bi.load_basic_file(EXAMPLE)
    root = bi.build("IDC-1", INVENTORY, FILINGS, facts, default_house="H0", time_stamp="2026-12-07 10:00:00")
    assert bi.check_tree(root) == []
    assert not list(schema(XSD).iter_errors(root))
    assert [c.tag for c in root][:9] == ["idcId", "idcName", "idcAdd", "idcZip", "corp", "idcOfficer", "emergencyContact",
                                         "houseCount", "houseInfo"]
    assert root.findtext("idcName") == "示例网络科技有限公司" and root.findtext("idcOfficer/mobile") == "13800000000"
    assert root.findtext("emergencyContact/tel") == ""  # not in the file: empty, never invented
    houses = {h.findtext("houseId"): h for h in root.findall("houseInfo")}
    assert list(houses) == ["bj-yz-1", "H0", "sh-1"] and root.findtext("houseCount") == "3"  # the file's first
    bj = houses["bj-yz-1"]
    assert bj.findtext("houseName") == "北京一号机房" and bj.findtext("houseCounty") == "110105"
    assert bj.findtext("gatewayInfo/gatewayIp") == "203.0.113.1" and bj.findtext("gatewayInfo/bandWidth") == "10000"
    segs = [(s.findtext("startIp"), s.findtext("endIp"), s.findtext("type"), s.findtext("user")) for s in bj.findall("ipSegInfo")]
    assert segs == [("203.0.113.0", "203.0.113.15", "0", "示例客户有限公司")]  # the closed /24 left out
    assert [(s.findtext("startIp"), s.findtext("type"), s.findtext("user")) for s in houses["sh-1"].findall("ipSegInfo")] == [
        ("203.0.113.16", "2", "cust-0002")]  # pending → 2 保留; no unit name → the account
    assert houses["H0"].findtext("ipSegInfo/endIp") == "2001:db8:0:ffff:ffff:ffff:ffff:ffff"
    users = root.findall("userInfo")
    assert len(users) == 2
    u1 = users[0]
    assert u1.findtext("info/unitName") == "示例客户有限公司" and u1.findtext("info/registerTime") == "2024-03-01"
    services = u1.findall("info/serviceInfo")
    assert [s.findtext("regId") for s in services] == ["京ICP备1号-1"]
    s = services[0]
    assert s.findtext("setMode") == "2" and s.findtext("business") == "1" and s.findtext("serviceContent") == ""
    assert [d.findtext("name") for d in s.findall("domain")] == ["a.example"]
    hh = [(h.findtext("houseId"), [(g.findtext("startIp"), g.findtext("endIp")) for g in h.findall("ipSeg")])
          for h in s.findall("housesHoldInfo")]
    assert hh == [("H0", [("2001:db8::1", "2001:db8::1")]), ("bj-yz-1", [("203.0.113.5", "203.0.113.5")])]
    s2 = users[1].find("info/serviceInfo")
    assert s2 is not None and s2.findtext("regId") == "京ICP备2号-1"
    assert s2.findtext("housesHoldInfo/ipSeg/endIp") == "203.0.113.18"
    assert [d.findtext("name") for d in s2.findall("domain")] == ["b.example", "www.b.example"]
    # ids are stable across reports
    again = bi.build("IDC-1", INVENTORY, FILINGS, facts, default_house="H0")
    assert [e.text for e in again.iter("serviceId")] == [e.text for e in root.iter("serviceId")]


def test_placing_filings() -> None:
    p = bi.place_filings(INVENTORY, FILINGS, ("示例网络科技有限公司",))
    assert sorted(p.by_account) == ["cust-0001", "cust-0002"]
    assert p.unplaced == ("京ICP备3号-1", "京ICP备6号-1")  # not 4 (another provider's) nor 5 (cancelled)
    # no provider name known: every filing in force is placed by its IPs
    assert "京ICP备4号-1" in [f.number for f, _ in bi.place_filings(INVENTORY, FILINGS).by_account["cust-0001"]]


def test_without_a_basic_file_the_facts_are_empty(tmp_path: Path) -> None:
    assert bi.load_basic_file(None) == bi.BasicFacts() == bi.load_basic_file(tmp_path / "absent.toml")
    root = bi.build("IDC-1", INVENTORY, FILINGS)
    assert root.findtext("idcName") == "" and root.findtext("houseInfo/houseName") == ""
    assert root.findtext("timeStamp") == ""  # the spool sets it
    (f,) = spool(tmp_path).write_basic_info(root)
    assert not list(schema(XSD).iter_errors(unpacked(f)))


def test_an_element_without_a_fields_row_raises() -> None:
    root = ET.Element("basicInfo")
    with pytest.raises(KeyError, match=r"not in fields\.FIELDS"):
        bi._add(root, "houseInfo/invented")
    root = bi.build("IDC-1", INVENTORY, FILINGS, time_stamp="2026-12-07 10:00:00")
    ET.SubElement(root.find("houseInfo"), "invented")  # type: ignore[arg-type]
    assert bi.check_tree(root) == ["houseInfo/invented: not a DT 1 element (fields.FIELDS)"]


def test_a_tree_that_fails_the_checks_is_not_written(tmp_path: Path) -> None:
    sp = spool(tmp_path)
    root = bi.build("IDC-1", INVENTORY, FILINGS)
    root.find("houseInfo/ipSegInfo/type").text = "x"  # type: ignore[union-attr]
    with pytest.raises(ReportError, match="ipSegInfo/type"):
        sp.write_basic_info(root)
    assert sp.rejected == {1: 1} and not sp.pending()


# -- the basic-info file ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "where"), [
    ("[idc]\nnmae = 'x'\n", "idc.nmae: unknown key"),
    ("[isp]\n", "isp: unknown key"),
    ("[[house]]\nid = 'H1'\ncolour = 1\n", "house[1].colour: unknown key"),
    ("[[house]]\nname = 'no id'\n", "house[1].id: missing"),
    ("[[house]]\nid = 'H1'\n[[house]]\nid = 'H1'\n", "house[2].id: 'H1' already listed as house[1]"),
    ("[[house]]\nid = 'H1'\ntype = 'rented'\n", "house[1].type: 'rented' is not an integer code"),
    ("[[house]]\nid = 'H1'\n[[house.gateway]]\nip = 'not-an-ip'\n", "house[1].gateway[1].ip: 'not-an-ip' is not an IP address"),
    ("[[house]]\nid = 'H1'\n[[house.gateway]]\nbandwidth = '10G'\n", "house[1].gateway[1].bandwidth: '10G' is not a non-negative"),
    ("[idc.officer]\nphone = '1'\n", "idc.officer.phone: unknown key"),
    ("[idc]\nname = true\n", "idc.name: expected a string or an integer, got bool"),
    ("[idc]\nprovider_names = 'x'\n", "idc.provider_names: expected a list"),
    ("[account.c1]\nregister_time = '2024/03/01'\n", "account.c1.register_time: '2024/03/01' is not yyyy-MM-dd"),
    ("[account.c1.officer]\nname = 1.5\n", "account.c1.officer.name: expected a string or an integer, got float"),
    ("house = 3\n", "house: expected [[house]] tables"),
    ("[idc]\nname = \n", "line 2"),  # a TOML syntax error: tomllib names the line
])
def test_a_malformed_basic_file_names_the_file_and_the_key(tmp_path: Path, text: str, where: str) -> None:
    p = tmp_path / "basic.toml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(bi.BasicInfoError) as e:
        bi.load_basic_file(p)
    assert str(e.value).startswith(f"{p}: ") and where in str(e.value), str(e.value)


def test_the_example_file_loads() -> None:
    f = bi.load_basic_file(EXAMPLE)
    assert f.names() == ("示例网络科技有限公司",) and f.house[0].id == "bj-yz-1" and f.account["cust-0001"].set_mode == "2"


# -- hand checks agree with the XSD ----------------------------------------------------------


LEAVES = [f for f in fields.FIELDS if f.dt == 1 and f.kind != "group"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(LEAVES), st.one_of(st.text(max_size=30), st.integers(-5, 2**64).map(str),
                                          st.just("2026-11-29 10:00:00"), st.just("2026-11-29"), st.just("")))
def test_hand_checks_agree_with_the_xsd(f: fields.Field, value: str) -> None:
    value = "".join(ch for ch in value if ch.isprintable())
    root = bi.build("IDC-1", [hp("203.0.113.0/28", "c1", "H1")], [filing("京ICP备1号-1", ("203.0.113.5",))],
                    bi.BasicFacts(house=(bi.HouseFacts(id="H1", gateway=(bi.Gateway(ip="203.0.113.1"),)),)),
                    time_stamp="2026-12-07 10:00:00")
    target = root
    for part in f.element.split("/"):
        nxt = target.find(part)
        assert nxt is not None, f.element
        target = nxt
    target.text = value
    fast_ok, xsd_ok = bi.check_tree(root) == [], not list(schema(XSD).iter_errors(root))
    assert not fast_ok or xsd_ok, (f, value)  # sound: what the hand checks pass, the XSD passes
    if value == value.strip() and not value.startswith(("+", "-0")) and not (value.startswith("0") and len(value) > 1):
        assert fast_ok == xsd_ok, (f, value)


# -- the property ------------------------------------------------------------------------------


SITES = ["H1", "H2", "H3", ""]
ACCOUNTS = ["c1", "c2", "c3"]


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[HostedPrefix], list[Filing]]:
    nets = draw(st.lists(st.tuples(st.integers(0, 255), st.sampled_from([4, 6])), min_size=0, max_size=12, unique=True))
    prefixes = []
    for n, v in nets:
        net = f"10.{n}.0.0/24" if v == 4 else f"2001:db8:{n:x}::/48"
        prefixes.append(hp(net, draw(st.sampled_from(ACCOUNTS)), draw(st.sampled_from(SITES)),
                           draw(st.sampled_from(list(PrefixState)))))
    filings = []
    for i in range(draw(st.integers(0, 10))):
        ips = []
        for _ in range(draw(st.integers(0, 3))):
            n, v = draw(st.tuples(st.integers(0, 255), st.sampled_from([4, 6])))
            host = draw(st.integers(1, 200))
            ips.append(f"10.{n}.0.{host}" if v == 4 else f"2001:db8:{n:x}::{host:x}")
        filings.append(filing(f"京ICP备{i}号-1", tuple(ips), (f"s{i}.example",),
                              status=draw(st.sampled_from(list(FilingStatus)))))
    return prefixes, filings


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fleets())
def test_every_live_prefix_once_in_its_house_and_the_file_is_valid(tmp_path: Path,
                                                                  fleet: tuple[list[HostedPrefix], list[Filing]]) -> None:
    prefixes, filings = fleet
    sp = spool(tmp_path)
    (f,) = sp.write_basic_info(bi.build(dbl.IDC_ID, prefixes, filings, default_house="H0"))
    root = unpacked(f)  # the double's own envelope code (hash checked)
    f.unlink()
    assert not list(schema(XSD).iter_errors(root))  # the whole file, not a sample
    assert paths(root) <= set(fields.element_paths(1))
    seen: dict[str, list[str]] = {}
    for h in root.findall("houseInfo"):
        for s in h.findall("ipSegInfo"):
            seen.setdefault(f"{s.findtext('startIp')}-{s.findtext('endIp')}", []).append(h.findtext("houseId") or "")
    for p in prefixes:
        net = ipaddress.ip_network(p.prefix)
        key = f"{net.network_address}-{net.broadcast_address}"
        if p.state is PrefixState.CLOSED:
            assert key not in seen
        else:
            assert seen.pop(key) == [bi.prefix_house(p, "H0")] == [p.house or "H0"]
    assert not seen
    placed = {s.findtext("regId") for s in root.iter("serviceInfo")}
    in_force = {fl.number for fl in filings if fl.status in bi.IN_FORCE}
    assert placed <= in_force


# -- files: size cap, fleet size -------------------------------------------------------------


def test_userinfo_past_the_size_cap_goes_to_further_files(tmp_path: Path) -> None:
    prefixes = [hp(f"10.{i}.0.0/24", f"c{i:03d}", "H1") for i in range(60)]
    filings = [filing(f"京ICP备{i}号-1", (f"10.{i}.0.1",)) for i in range(60)]
    sp = spool(tmp_path, max_file_bytes=30_000)
    files = sp.write_basic_info(bi.build(dbl.IDC_ID, prefixes, filings))
    assert len(files) > 1
    roots = [unpacked(f) for f in files]
    for r in roots:
        assert not list(schema(XSD).iter_errors(r)) and r.findtext("idcId") == dbl.IDC_ID
    assert len(roots[0].findall("houseInfo")) == 1 and all(not r.findall("houseInfo") for r in roots[1:])
    assert sum(len(r.findall("userInfo")) for r in roots) == 60
    assert all(f.stat().st_size > 0 for f in files)
    with pytest.raises(ReportError, match="max_file_bytes"):
        spool(tmp_path, max_file_bytes=3_000).write_basic_info(bi.build(dbl.IDC_ID, prefixes, filings))


def test_a_fleet_of_5000_prefixes_and_50000_filings(tmp_path: Path) -> None:
    prefixes = [hp(f"10.{i // 256}.{i % 256}.0/24", f"c{i % 700}", f"H{i % 7}", PrefixState.PENDING if i % 10 == 0 else
                   PrefixState.ACTIVE) for i in range(5000)]
    filings = [filing(f"京ICP备{i:08d}号-1", (f"10.{(i % 5000) // 256}.{(i % 5000) % 256}.{1 + i % 200}",),
                      (f"s{i}.example",)) for i in range(50_000)]
    t0 = time.perf_counter()
    tree = bi.build(dbl.IDC_ID, prefixes, filings)
    t1 = time.perf_counter()
    files = spool(tmp_path).write_basic_info(tree)
    t2 = time.perf_counter()
    print(f"\nDT 1, 5,000 prefixes and 50,000 filings: build {t1 - t0:.1f} s, check + write {t2 - t1:.1f} s, "
          f"{len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB")
    roots = [unpacked(f) for f in files]
    assert sum(len(r.findall("houseInfo/ipSegInfo")) for r in roots) == 5000
    assert sum(1 for r in roots for _ in r.iter("serviceInfo")) == 50_000


def test_a_prefixs_house_is_its_house_column_then_the_gateways_then_its_site() -> None:
    """Issue 30: DT 1 and the report rows place an address in one house: the inventory's house
    column (机房编号), else isms.house_id, else the prefix's site."""
    p = HostedPrefix("10.0.0.0/24", "a", "bj-1", PrefixState.ACTIVE, None, house="H7")
    assert bi.prefix_house(p, "H0") == "H7"
    no_house = HostedPrefix("10.0.0.0/24", "a", "bj-1", PrefixState.ACTIVE, None)
    assert bi.prefix_house(no_house, "H0") == "H0" and bi.prefix_house(no_house, "") == "bj-1"
