import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from beiand.model import ServiceType
from beiand.records.numbers import PROVINCES, FilingNumberError, clean, find_filing_numbers, parse_filing_number


@pytest.mark.parametrize(
    ("text", "canonical", "serial", "stype", "licensed"),
    [
        ("京ICP备12345678号", "京ICP备12345678号", None, None, False),
        ("京ICP备2023000001号", "京ICP备2023000001号", None, None, False),
        ("京ICP备12345678号-1", "京ICP备12345678号-1", 1, ServiceType.WEBSITE, False),
        ("京ICP备12345678号-3A", "京ICP备12345678号-3A", 3, ServiceType.APP, False),
        ("京ICP备12345678号-4X", "京ICP备12345678号-4X", 4, ServiceType.MINI_PROGRAM, False),
        ("京ICP备12345678号-5K", "京ICP备12345678号-5K", 5, ServiceType.QUICK_APP, False),
        ("京ICP备12345678号-4x", "京ICP备12345678号-4X", 4, ServiceType.MINI_PROGRAM, False),
        ("京ICP证030173号-1", "京ICP证030173号-1", 1, ServiceType.WEBSITE, True),
        ("粤B2-20090059-5", "粤B2-20090059-5", 5, ServiceType.WEBSITE, True),
        ("粤B2-20090059", "粤B2-20090059", None, None, True),
        # what real exports and footers contain
        ("京ＩＣＰ备１２３４５６７８号－１", "京ICP备12345678号-1", 1, ServiceType.WEBSITE, False),
        (" 京 ICP 备 12345678 号 — 2 ", "京ICP备12345678号-2", 2, ServiceType.WEBSITE, False),
        ("京ICP备12345678-1", "京ICP备12345678号-1", 1, ServiceType.WEBSITE, False),  # missing 号
        ("京icp备12345678号-1", "京ICP备12345678号-1", 1, ServiceType.WEBSITE, False),
    ],
)
def test_valid_numbers(text, canonical, serial, stype, licensed):
    n = parse_filing_number(text)
    assert n.text == canonical and str(n) == canonical
    assert n.serial == serial and n.service_type == stype and n.licensed == licensed
    assert n.province == canonical[0]
    assert not n.warning


@pytest.mark.parametrize("province", list(PROVINCES))
def test_every_province(province):
    assert parse_filing_number(f"{province}ICP备12345678号-1").province == province


@pytest.mark.parametrize(("alias", "formal"), [("川", "蜀"), ("贵", "黔"), ("云", "滇"), ("甘", "陇")])
def test_province_aliases_warn(alias, formal):
    n = parse_filing_number(f"{alias}ICP备12345678号-2")
    assert n.province == formal and n.text == f"{formal}ICP备12345678号-2"
    assert alias in n.warning and formal in n.warning


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("粤公网安备44030502008569号", "public-security"),
        ("京公网安备11010802020000号", "public-security"),
        ("京ICP备12345678号-1B", "unknown service suffix"),
        ("京ICP备1234567号", "7 digits"),
        ("京ICP备123456789号", "9 digits"),
        ("XICP备12345678号", "unknown province"),
        ("港ICP备12345678号-1", "unknown province"),
        ("京ICP证03017号-1", "ICP licence"),
        ("粤B2-2009005-5", "licence number"),
        ("京ICP备12345678号-0", "positive"),
        ("京ICP备12345678号-01", "leading zeros"),
        ("", "empty"),
        ("hello", "not a filing number"),
    ],
)
def test_rejected_numbers(text, reason):
    with pytest.raises(FilingNumberError) as exc:
        parse_filing_number(text)
    assert reason in exc.value.reason


def test_numbers_compare_by_canonical_text():
    assert parse_filing_number("京ＩＣＰ备１２３４５６７８号－１") == parse_filing_number("京ICP备12345678号-1")
    assert len({parse_filing_number("京ICP备12345678号-1"), parse_filing_number("京ICP备12345678-1")}) == 1


def test_find_in_footer():
    html = "<a href='https://beian.miit.gov.cn'>京ICP备12345678号-1</a> 粤公网安备44030502008569号 ©2024"
    assert [n.text for n in find_filing_numbers(html)] == ["京ICP备12345678号-1"]


@given(st.text())
@example("京ICP备12345678号-1")
@example("粤公网安备44030502008569号")
def test_parse_never_raises_anything_else(text):
    try:
        n = parse_filing_number(text)
    except FilingNumberError:
        return
    assert parse_filing_number(n.text) == n  # the canonical text parses to itself


@given(st.text())
def test_clean_idempotent(text):
    assert clean(clean(text)) == clean(text)


@given(st.sampled_from(PROVINCES), st.integers(10**7, 10**8 - 1), st.integers(1, 999), st.sampled_from(["", "A", "X", "K"]))
def test_generated_numbers_roundtrip(p, digits, serial, letter):
    n = parse_filing_number(f"{p}ICP备{digits}号-{serial}{letter}")
    assert (n.province, n.serial) == (p, serial)
    assert parse_filing_number(n.text.replace("-", "－").replace("ICP", "ＩＣＰ")) == n
