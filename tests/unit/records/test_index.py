from hypothesis import given, settings
from hypothesis import strategies as st

from beiand.model import Filing, FilingStatus, ServiceType
from beiand.records.index import RecordIndex


def filing(number, domains=(), ips=()):
    return Filing(number, "s", ServiceType.WEBSITE, tuple(domains), tuple(ips), "p", FilingStatus.ACTIVE)


def test_coverage():
    a = filing("a", ["example.com.cn"])
    b = filing("b", ["shop.example.com.cn"])
    idx = RecordIndex([a, b])
    assert idx.covering("example.com.cn") == ("example.com.cn", (a,))
    assert idx.covering("x.y.example.com.cn") == ("example.com.cn", (a,))
    assert idx.covering("x.shop.example.com.cn") == ("shop.example.com.cn", (b,))
    assert idx.covering("com.cn") is None
    assert idx.covering("other.com.cn") is None
    assert idx.covering("notexample.com.cn") is None


def test_several_filings_for_one_name_and_ips():
    a, b = filing("a", ["x.com"], ["198.51.100.1"]), filing("b", ["x.com"], ["198.51.100.1"])
    idx = RecordIndex([a, b])
    assert idx.covering("www.x.com") == ("x.com", (a, b))
    assert idx.by_address("198.51.100.1") == (a, b) and idx.by_address("198.51.100.2") == ()
    assert idx.stats().domains == 1


LABELS = st.sampled_from(["a", "b", "c", "www", "shop", "api"])
SUFFIX = st.sampled_from(["example.com", "example.cn", "other.com.cn"])


@settings(max_examples=200)
@given(st.lists(st.tuples(st.lists(LABELS, max_size=2), SUFFIX), max_size=12),
       st.lists(st.tuples(st.lists(LABELS, max_size=4), SUFFIX), min_size=1, max_size=20))
def test_lookup_agrees_with_brute_force(records, queries):
    filings = [filing(str(i), [".".join([*labels, suffix])]) for i, (labels, suffix) in enumerate(records)]
    idx = RecordIndex(filings)
    for labels, suffix in queries:
        name = ".".join([*labels, suffix])
        # reference: every filing listing the name or a parent of it; the most specific wins
        cands = [(d, f) for f in filings for d in f.domains if name == d or name.endswith("." + d)]
        got = idx.covering(name)
        if not cands:
            assert got is None
        else:
            best = max(len(d) for d, _ in cands)
            assert got is not None and got[0] == next(d for d, _ in cands if len(d) == best)
            assert set(got[1]) == {f for d, f in cands if len(d) == best}
