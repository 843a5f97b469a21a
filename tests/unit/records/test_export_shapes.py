"""Filing exports in their real shapes (issue 13): every shape gives ``filed``, never a block.

Each case is one row as real enterprise-side exports (企业侧备案系统) write it: an IP cell with a
range or a CIDR prefix, 变更审核中 (a change filing under review: the filing stays in force), a
status word nobody mapped, a 接入商 cell naming several providers, and a provider that files
under several legal entities. Each is read from CSV (UTF-8 and GB18030), JSON and XLSX.
"""

import json

import openpyxl
import pytest

from beiand.model import FilingStatus, Kind, Observation, PrefixState, Transport, VerdictKind
from beiand.policy import Policy, PolicyConfig
from beiand.policy.inventory import HostedPrefix, Inventory
from beiand.records import build_index, load_files
from beiand.records.importer import load_file

US = ("我们云计算有限公司", "我们云（北京）数据有限公司")  # one provider, two legal entities
HEADER = ["备案号", "主办单位", "服务类型", "网站名称", "域名", "IP", "接入商", "状态", "审核时间"]
ROWS = [
    # (number, domain, ip cell, provider cell, status) → the server the name is served from
    (["京ICP备20000001号-1", "甲公司", "网站", "区间", "range.cn", "203.0.113.10-203.0.113.20", US[0], "正常", "2024-01-02"],
     "203.0.113.15"),
    (["京ICP备20000002号-1", "乙公司", "网站", "前缀", "cidr.cn", "203.0.113.64/28", US[0], "正常", "2024-01-02"], "203.0.113.70"),
    (["京ICP备20000003号-1", "丙公司", "网站", "六", "six.cn", "2001:db8:1::/48，2001:db8:2::1-2001:db8:2::ff", US[0], "正常",
      "2024-01-02"], "2001:db8:2::80"),
    (["京ICP备20000004号-1", "丁公司", "网站", "变更", "change.cn", "", US[0], "变更审核中", "2024-01-02"], "203.0.113.1"),
    (["京ICP备20000005号-1", "戊公司", "网站", "未知", "unknown-status.cn", "", US[0], "待复核", "2024-01-02"], "203.0.113.1"),
    (["京ICP备20000006号-1", "己公司", "网站", "多云", "multi.cn", "", f"某某数据有限公司；{US[0]}", "正常", "2024-01-02"],
     "203.0.113.1"),
    (["京ICP备20000007号-1", "庚公司", "网站", "二号", "entity.cn", "", US[1], "正常", "2024-01-02"], "203.0.113.1"),
    (["京ICP备20000008号-1", "辛公司", "网站", "多云", "multi2.cn", "", f"某某数据有限公司, {US[1]}", "正常", "2024-01-02"],
     "203.0.113.1"),
]
INV = Inventory([HostedPrefix("203.0.113.0/24", "cust", "bj", PrefixState.ACTIVE, None),
                 HostedPrefix("2001:db8::/32", "cust6", "bj", PrefixState.ACTIVE, None)])


def _csv(tmp_path, encoding):
    p = tmp_path / f"export-{encoding}.csv"
    lines = [",".join(HEADER)] + [",".join(f'"{c}"' for c in row) for row, _ in ROWS]
    p.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return p


def _json(tmp_path, _):
    p = tmp_path / "export.json"
    p.write_text(json.dumps([dict(zip(HEADER, row, strict=True)) for row, _ in ROWS], ensure_ascii=False), "utf-8")
    return p


def _xlsx(tmp_path, _):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(HEADER)
    for row, _ in ROWS:
        ws.append(row)
    p = tmp_path / "export.xlsx"
    wb.save(p)
    return p


@pytest.mark.parametrize(("writer", "encoding"), [(_csv, "utf-8"), (_csv, "gb18030"), (_json, "utf-8"), (_xlsx, "utf-8")])
def test_every_real_export_shape_gives_filed(tmp_path, writer, encoding):
    path = writer(tmp_path, encoding)
    result = load_files([path])
    assert not result.errors, [str(e) for e in result.errors]
    assert len(result.filings) == len(ROWS)
    # a status nobody mapped is kept in force and reported, never a reason to drop the row
    assert [str(w) for w in result.warnings if "待复核" in str(w)], result.warnings
    policy = Policy(build_index(result), INV, PolicyConfig(providers=US))
    for row, server in ROWS:
        name = row[4]
        d = policy.decide(Observation(1.7e9, "10.0.0.1", 40000, server, 443, Transport.TCP, Kind.TLS_SNI, name, name))
        assert d.verdict.verdict is VerdictKind.FILED, (name, d)
        assert d.verdict.filing is not None and d.verdict.filing.number == row[0]


def test_ip_only_access_matches_ranges_and_prefixes(tmp_path):
    policy = Policy(build_index(load_files([_csv(tmp_path, "utf-8")])), INV, PolicyConfig(providers=US))
    for server, number in (("203.0.113.10", "京ICP备20000001号-1"), ("203.0.113.20", "京ICP备20000001号-1"),
                           ("203.0.113.79", "京ICP备20000002号-1"), ("2001:db8:1:ffff::9", "京ICP备20000003号-1")):
        v = policy.verdict("", server, 1.7e9)
        assert (v.verdict, v.filing.number if v.filing else None) == (VerdictKind.FILED, number), server
    for server in ("203.0.113.9", "203.0.113.21", "203.0.113.80", "2001:db8:2::100"):
        assert policy.verdict("", server, 1.7e9).verdict is VerdictKind.UNFILED, server
    # a name filed with a range but served outside it is drift (flag), not unfiled
    v = policy.verdict("range.cn", "203.0.113.30", 1.7e9)
    assert (v.verdict, v.reason) == (VerdictKind.MISMATCH, "ip-not-listed")


def test_ranges_are_kept_as_ranges(tmp_path):
    r = load_files([_csv(tmp_path, "utf-8")])
    by = {f.domains[0]: f for f in r.filings}
    assert by["range.cn"].ips == ("203.0.113.10-203.0.113.20",)
    assert by["cidr.cn"].ips == ("203.0.113.64/28",)
    assert by["six.cn"].ips == ("2001:db8:1::/48", "2001:db8:2::1-2001:db8:2::ff")
    assert by["change.cn"].status is FilingStatus.ACTIVE
    assert by["unknown-status.cn"].status is FilingStatus.UNMAPPED


def test_a_slash_8_does_not_expand(tmp_path):
    p = tmp_path / "big.csv"
    p.write_text("备案号,主办单位,域名,IP,接入商\n京ICP备20000009号-1,甲,big.cn,10.0.0.0/8,p\n"
                 "京ICP备20000010号-1,乙,huge.cn,2001:db8::/32,p\n", "utf-8")
    idx = build_index(load_files([p]))
    assert idx.stats().ips < 10
    assert [f.number for f in idx.by_address("10.200.3.4")] == ["京ICP备20000009号-1"]
    assert [f.number for f in idx.by_address("2001:db8:ffff::1")] == ["京ICP备20000010号-1"]
    assert idx.by_address("11.0.0.0") == ()


@pytest.mark.parametrize(("cell", "why"), [
    ("203.0.113.20-203.0.113.10", "ends before it starts"),
    ("203.0.113.1-2001:db8::1", "mixes IPv4 and IPv6"),
    ("203.0.113.1/33", "not an IP address, range or CIDR prefix"),
    ("example", "not an IP address, range or CIDR prefix"),
])
def test_bad_ip_cells_name_the_field(tmp_path, cell, why):
    p = tmp_path / "bad.csv"
    p.write_text(f'备案号,主办单位,域名,IP,接入商\n京ICP备20000011号-1,甲,bad.cn,"{cell}",p\n', "utf-8")
    r = load_file(p)
    assert not r.filings
    assert str(r.errors[0]).startswith(f"{p}:2: ips (IP): ") and why in str(r.errors[0]), str(r.errors[0])


def test_a_prefix_with_host_bits_is_read_as_the_prefix_with_a_warning(tmp_path):
    p = tmp_path / "host.csv"
    p.write_text('备案号,主办单位,域名,IP,接入商\n京ICP备20000011号-1,甲,host.cn,"203.0.113.1/24",p\n', "utf-8")
    r = load_file(p)
    assert r.filings[0].ips == ("203.0.113.0/24",)
    assert "host bits set" in str(r.warnings[0]) and str(r.warnings[0]).startswith(f"{p}:2: ips (IP): ")


def test_status_map_from_the_config_extends_the_vocabulary(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("备案号,主办单位,域名,接入商,状态\n京ICP备20000012号-1,甲,a.cn,p,待复核\n京ICP备20000013号-1,乙,b.cn,p,已撤销\n",
                 "utf-8")
    r = load_files([p], status_map={"待复核": "active", "已撤销": "cancelled"})
    assert [f.status for f in r.filings] == [FilingStatus.ACTIVE, FilingStatus.CANCELLED]
    assert not r.warnings
    with pytest.raises(ValueError, match=r"已撤销.*expected one of"):
        load_files([p], status_map={"已撤销": "gone"})


def test_status_vocabulary_as_exports_spell_it(tmp_path):
    from beiand.records.importer import STATUS
    expected = {"正常": "active", "已注销": "cancelled", "注销": "cancelled", "变更审核中": "active", "接入审核中": "access-pending",
                "首次备案审核中": "under-review", "已吊销": "revoked"}
    for text, status in expected.items():
        assert STATUS[text].value == status, text


# -- the IP cell parser: property tests ------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from beiand.records.importer import canonical_ip_entry  # noqa: E402
from beiand.records.index import RecordIndex, ip_interval  # noqa: E402

V4 = st.integers(0, 2**32 - 1).map(lambda x: str(__import__("ipaddress").IPv4Address(x)))


@settings(max_examples=300)
@given(st.text(alphabet="0123456789abcdef.:/-~ 至", max_size=40))
def test_ip_cell_parser_only_raises_value_error_and_is_idempotent(text):
    try:
        entry, _ = canonical_ip_entry(text)
    except ValueError:
        return
    assert canonical_ip_entry(entry) == (entry, "")


@settings(max_examples=200)
@given(st.lists(st.tuples(V4, st.integers(0, 300)), min_size=1, max_size=12), st.lists(V4, min_size=1, max_size=20))
def test_interval_index_agrees_with_brute_force(ranges, probes):
    import ipaddress

    from beiand.model import Filing, FilingStatus, ServiceType

    filings = []
    for i, (lo, width) in enumerate(ranges):
        hi = str(ipaddress.IPv4Address(min(2**32 - 1, int(ipaddress.IPv4Address(lo)) + width)))
        cell, _ = canonical_ip_entry(f"{lo}-{hi}")
        filings.append(Filing(f"n{i}", "s", ServiceType.WEBSITE, (), (cell,), "p", FilingStatus.ACTIVE))
    idx = RecordIndex(filings)
    for p in probes + [lo for lo, _ in ranges]:
        x = int(ipaddress.IPv4Address(p))
        want = set()
        for f in filings:
            iv = ip_interval(f.ips[0])
            if (iv is None and f.ips[0] == p) or (iv is not None and iv[1] <= x <= iv[2]):
                want.add(f)
        assert set(idx.by_address(p)) == want, p
        assert all(idx.lists_ip(f, p) == (f in want) for f in filings)
