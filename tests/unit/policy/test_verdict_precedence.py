"""Coverage precedence (issue 13, REGULATIONS.md "Website and APP filings can overlap").

The verdict for a name is decided over every filing that covers it: its own listing and every
parent listing within the registrable domain. An active filing through this provider wins over
any inactive, pending or other-provider filing, at any depth.
"""

from hypothesis import example, given, settings
from hypothesis import strategies as st

from beiand.model import Filing, FilingStatus, PrefixState, ServiceType, VerdictKind
from beiand.policy import Policy, PolicyConfig
from beiand.policy.inventory import HostedPrefix, Inventory
from beiand.records.index import RecordIndex

US = "我们云"
INV = Inventory([HostedPrefix("198.51.100.0/24", "cust", "bj", PrefixState.ACTIVE, None)])
TS = 1.7e9


def test_a_cancelled_app_filing_does_not_override_an_active_website_filing():
    web = Filing("京ICP备10000001号-1", "甲", ServiceType.WEBSITE, ("example.com",), (), US, FilingStatus.ACTIVE)
    for status in (FilingStatus.CANCELLED, FilingStatus.UNDER_REVIEW, FilingStatus.REVOKED):
        app = Filing("京ICP备10000002号-2A", "乙", ServiceType.APP, ("api.example.com",), (), US, status)
        p = Policy(RecordIndex([app, web]), INV, PolicyConfig(provider=US))
        v = p.verdict("api.example.com", "198.51.100.1", TS)
        assert (v.verdict, v.filing) == (VerdictKind.FILED, web), status
        v = p.verdict("x.api.example.com", "198.51.100.1", TS)
        assert (v.verdict, v.filing) == (VerdictKind.FILED, web), status
        # the APP's own name, without the website filing, stays inactive
        alone = Policy(RecordIndex([app]), INV, PolicyConfig(provider=US))
        assert alone.verdict("api.example.com", "198.51.100.1", TS).verdict is VerdictKind.INACTIVE


def test_an_other_provider_listing_below_does_not_override_ours_above():
    ours = Filing("京ICP备10000001号-1", "甲", ServiceType.WEBSITE, ("example.com",), (), US, FilingStatus.ACTIVE)
    theirs = Filing("京ICP备10000003号-1", "甲", ServiceType.WEBSITE, ("shop.example.com",), (), "别家", FilingStatus.ACTIVE)
    p = Policy(RecordIndex([theirs, ours]), INV, PolicyConfig(provider=US))
    assert p.verdict("shop.example.com", "198.51.100.1", TS).filing == ours


# -- property: the policy against a brute-force reference ------------------------------------

LABEL = st.sampled_from(["www", "api", "shop", "m"])
BASE = st.sampled_from(["example.com", "example.com.cn", "other.cn"])
STATUS = st.sampled_from([FilingStatus.ACTIVE, FilingStatus.CANCELLED, FilingStatus.REVOKED, FilingStatus.UNDER_REVIEW,
                          FilingStatus.ACCESS_PENDING, FilingStatus.UNMAPPED])
PROVIDER = st.sampled_from([US, "别家", f"别家；{US}"])
IPS = st.sampled_from([(), ("198.51.100.1",), ("198.51.100.2",), ("198.51.100.0-198.51.100.9",), ("198.51.100.128/25",)])
TYPE = st.sampled_from(list(ServiceType))
FILING = st.tuples(st.lists(LABEL, max_size=2), BASE, STATUS, PROVIDER, IPS, TYPE, st.booleans())
RANK = {VerdictKind.FILED: 3, VerdictKind.MISMATCH: 2, VerdictKind.INACTIVE: 1}


def _reference(filings, name, server):
    """Every filing that lists the name or a parent of it, judged alone; the best verdict wins."""
    import ipaddress

    def lists_ip(f):
        ip = ipaddress.ip_address(server)
        for cell in f.ips:
            if "-" in cell:
                lo, hi = (ipaddress.ip_address(x) for x in cell.split("-"))
                if lo <= ip <= hi:
                    return True
            elif ip in ipaddress.ip_network(cell):
                return True
        return False

    best = None
    for f in filings:
        if not any(name == d or name.endswith("." + d) for d in f.domains):
            continue
        if f.status in (FilingStatus.CANCELLED, FilingStatus.REVOKED, FilingStatus.UNDER_REVIEW):
            v = VerdictKind.INACTIVE
        elif US not in [p.strip() for p in f.access_provider.replace("；", ";").split(";")] or (f.ips and not lists_ip(f)):
            v = VerdictKind.MISMATCH
        else:
            v = VerdictKind.FILED  # active, unmapped (kept in force) or pending within its grace
        if best is None or RANK[v] > RANK[best]:
            best = v
    return VerdictKind.UNFILED if best is None else best


@settings(max_examples=300, deadline=None)
@given(st.lists(FILING, min_size=1, max_size=8), st.lists(LABEL, max_size=3), BASE, st.sampled_from(["198.51.100.1", "198.51.100.200"]))
@example([(["api"], "example.com", FilingStatus.CANCELLED, US, (), ServiceType.APP, False),
          ([], "example.com", FilingStatus.ACTIVE, US, (), ServiceType.WEBSITE, False)], ["api"], "example.com", "198.51.100.1")
def test_precedence_agrees_with_brute_force(specs, labels, base, server):
    filings = []
    for i, (flabels, fbase, status, provider, ips, stype, _) in enumerate(specs):
        domain = ".".join([*flabels, fbase])
        filings.append(Filing(f"京ICP备{10000000 + i}号-1", "主办", stype, (domain,), ips, provider, status, "2024-01-01"))
    name = ".".join([*labels, base])
    policy = Policy(RecordIndex(filings), INV, PolicyConfig(provider=US, access_pending_grace_days=45))
    got = policy.verdict(name, server, dt_ts := 1704038400.0)  # 2024-01-01: pending filings within their grace
    assert dt_ts
    assert got.verdict is _reference(filings, name, server), (name, server, filings, got)
    if got.verdict is VerdictKind.FILED:
        assert got.filing in filings and got.filing.status not in (FilingStatus.CANCELLED, FilingStatus.REVOKED)
