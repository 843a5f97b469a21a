import idna
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from beiand.records.domains import DomainError, is_ip_literal, is_public_suffix, normalise_domain, registrable_domain


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Example.COM.cn.", "example.com.cn"),
        ("例子.中国", "xn--fsqu00a.xn--fiqs8s"),
        ("xn--fsqu00a.xn--fiqs8s", "xn--fsqu00a.xn--fiqs8s"),
        ("例子。中国", "xn--fsqu00a.xn--fiqs8s"),  # ideographic full stop
        ("ＥＸＡＭＰＬＥ.com", "example.com"),  # full-width letters (UTS-46 mapping)
        ("Straße.de", "xn--strae-oqa.de"),  # IDNA 2008: ß is kept, not mapped to ss
        ("a-b.example.com", "a-b.example.com"),
    ],
)
def test_normalise(raw, norm):
    assert normalise_domain(raw) == norm


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("a..b.com", "empty label"),
        ("-a.com", "hyphen"),
        ("a_b.com", "not allowed"),
        ("x" * 64 + ".com", "at most 63"),
        (("a" * 60 + ".") * 5 + "com", "at most 253"),
        ("xn--zz.com", "punycode"),
        ("exa mple.com", "not allowed"),
    ],
)
def test_invalid(raw, reason):
    with pytest.raises(DomainError) as exc:
        normalise_domain(raw)
    assert reason in exc.value.reason


@pytest.mark.parametrize(
    ("name", "reg"),
    [
        ("a.b.example.com.cn", "example.com.cn"),
        ("example.com.cn", "example.com.cn"),
        ("www.example.com", "example.com"),
        ("foo.github.io", "foo.github.io"),  # private suffix: per name
        ("a.foo.github.io", "foo.github.io"),
        ("com.cn", None),
        ("github.io", None),
        ("cn", None),
        ("www.xn--fsqu00a.xn--fiqs8s", "xn--fsqu00a.xn--fiqs8s"),
        ("x.y.ck", "x.y.ck"),  # wildcard rule *.ck
        ("www.ck", "www.ck"),  # exception rule !www.ck
    ],
)
def test_registrable(name, reg):
    assert registrable_domain(name) == reg
    assert is_public_suffix(name) == (reg is None)


def test_ip_literals():
    assert is_ip_literal("198.51.100.1") and is_ip_literal("2001:db8::1") and is_ip_literal("[2001:db8::1]")
    assert not is_ip_literal("example.com") and not is_ip_literal("1.2.3.4.example.com") and not is_ip_literal("")


LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789例子测试商城中国", min_size=1, max_size=12)


@given(st.lists(LABEL, min_size=1, max_size=4), st.sampled_from(["com", "cn", "中国", "com.cn", "公司"]))
def test_normalise_is_idempotent_and_agrees_with_idna(labels, tld):
    raw = ".".join(labels) + "." + tld
    try:
        ref = idna.encode(raw, uts46=True).decode()
    except idna.IDNAError:
        ref = None
    try:
        got = normalise_domain(raw)
    except DomainError:
        assert ref is None or len(ref) > 253
        return
    assert got == ref
    assert normalise_domain(got) == got
    assert normalise_domain(got.upper() + ".") == got


@given(st.text(max_size=80))
def test_normalise_never_raises_other_errors(raw):
    try:
        out = normalise_domain(raw)
    except DomainError:
        return
    assume(out)
    assert normalise_domain(out) == out and out.isascii()
