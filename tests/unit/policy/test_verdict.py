import datetime as dt

import pytest

from beiand.model import Action, Filing, FilingStatus, Kind, Mode, Observation, PrefixState, ServiceType, Transport, VerdictKind
from beiand.policy import Policy, PolicyConfig, PolicyError
from beiand.policy.inventory import HostedPrefix, Inventory
from beiand.records.index import RecordIndex

US = "我们云"
CN = dt.timezone(dt.timedelta(hours=8))


def f(number, domains=(), ips=(), provider=US, status=FilingStatus.ACTIVE, reviewed="2024-01-01"):
    return Filing(number, "主办", ServiceType.WEBSITE, tuple(domains), tuple(ips), provider, status, reviewed)


FILINGS = [
    f("京ICP备10000001号-1", ["filed.cn"]),
    f("京ICP备10000002号-1", ["other.cn"], provider="别家"),
    f("京ICP备10000003号-1", ["gone.cn"], status=FilingStatus.CANCELLED),
    f("京ICP备10000004号-1", ["bad.cn"], status=FilingStatus.REVOKED),
    f("京ICP备10000005号-1", ["new.cn"], status=FilingStatus.UNDER_REVIEW),
    f("京ICP备10000006号-1", ["pending.cn"], status=FilingStatus.ACCESS_PENDING, reviewed="2024-06-01"),
    f("京ICP备10000007号-1", ["pinned.cn"], ips=["198.51.100.7"]),
    f("京ICP备10000008号-1", [], ips=["198.51.100.8"]),
    # the same name filed twice: the cancelled one must not hide the active one
    f("京ICP备10000009号-1", ["moved.cn"], status=FilingStatus.CANCELLED),
    f("京ICP备10000010号-1", ["moved.cn"]),
    # 取消接入 (issue 28, 6): this provider's access ended, the filing lives on (maybe through another 接入商)
    f("京ICP备10000011号-1", ["left.cn"], status=FilingStatus.ACCESS_CANCELLED),
]
INV = Inventory([
    HostedPrefix("198.51.100.0/24", "cust-a", "bj", PrefixState.ACTIVE, None),
    HostedPrefix("198.51.100.128/25", "cust-b", "bj", PrefixState.PENDING, None),
    HostedPrefix("203.0.113.0/24", "cust-c", "sh", PrefixState.ACTIVE, Mode.ENFORCE),
    HostedPrefix("203.0.113.0/28", "cust-d", "sh", PrefixState.ACTIVE, Mode.DRY_RUN),
    HostedPrefix("192.0.2.0/24", "old", "sh", PrefixState.CLOSED, None),
])


def obs(name, server="198.51.100.1", ts=1.7e9):
    return Observation(ts, "10.0.0.1", 5555, server, 443, Transport.TCP, Kind.TLS_SNI if name else Kind.IP_ONLY, name, name)


@pytest.fixture
def policy():
    return Policy(RecordIndex(FILINGS), INV, PolicyConfig(provider=US, allow_names=frozenset({"allowed.example"}),
                                                          allow_suffixes=("trusted.example",), allow_prefixes=("198.51.100.99/32",)))


@pytest.mark.parametrize(
    ("name", "server", "verdict", "reason"),
    [
        ("filed.cn", "198.51.100.1", "filed", "filed"),
        ("a.b.filed.cn", "198.51.100.1", "filed", "filed"),
        ("unfiled.cn", "198.51.100.1", "unfiled", "no-filing"),
        ("notfiled.cn", "198.51.100.8", "unfiled", "name-not-in-filing"),  # O9: beyond the filed scope
        ("other.cn", "198.51.100.1", "mismatch", "other-provider"),
        ("gone.cn", "198.51.100.1", "inactive", "filing-cancelled"),
        ("left.cn", "198.51.100.1", "mismatch", "other-provider"),  # 取消接入 is not 注销
        ("bad.cn", "198.51.100.1", "inactive", "filing-revoked"),
        ("new.cn", "198.51.100.1", "inactive", "filing-under-review"),
        ("pinned.cn", "198.51.100.7", "filed", "filed"),
        ("pinned.cn", "198.51.100.6", "mismatch", "ip-not-listed"),
        ("", "198.51.100.8", "filed", "filed"),
        ("", "198.51.100.9", "unfiled", "ip-not-filed"),
        ("198.51.100.9", "198.51.100.9", "unfiled", "ip-not-filed"),
        ("moved.cn", "198.51.100.1", "filed", "filed"),
        ("allowed.example", "198.51.100.1", "exempt", "allowlist-name"),
        ("x.trusted.example", "198.51.100.1", "exempt", "allowlist-suffix"),
        ("whatever.cn", "198.51.100.99", "exempt", "allowlist-prefix"),
        ("filed.cn", "100.64.0.1", "not-hosted", "not-in-inventory"),
        ("filed.cn", "192.0.2.1", "not-hosted", "prefix-closed"),
    ],
)
def test_verdicts(policy, name, server, verdict, reason):
    d = policy.decide(obs(name, server))
    assert (d.verdict.verdict.value, d.verdict.reason) == (verdict, reason)


def test_access_pending_grace_uses_the_observation_time():
    p = Policy(RecordIndex(FILINGS), INV, PolicyConfig(provider=US, access_pending_grace_days=30))
    reviewed = dt.datetime(2024, 6, 1, tzinfo=CN).timestamp()
    inside = p.decide(obs("pending.cn", ts=reviewed + 30 * 86400))
    assert (inside.verdict.verdict, inside.verdict.reason) == (VerdictKind.FILED, "access-pending-grace")
    after = p.decide(obs("pending.cn", ts=reviewed + 32 * 86400))
    assert (after.verdict.verdict, after.verdict.reason) == (VerdictKind.MISMATCH, "access-pending-expired")
    # not cached: the same name earlier still passes
    assert p.decide(obs("pending.cn", ts=reviewed + 86400)).verdict.verdict is VerdictKind.FILED


def test_grace_is_capped_at_45_days():
    with pytest.raises(PolicyError, match="45"):
        PolicyConfig(access_pending_grace_days=46)
    with pytest.raises(PolicyError, match="allow_prefixes"):
        PolicyConfig(allow_prefixes=("nope",))


def test_provider_unchecked_is_said():
    p = Policy(RecordIndex(FILINGS), INV, PolicyConfig())
    d = p.decide(obs("other.cn"))
    assert (d.verdict.verdict, d.verdict.reason) == (VerdictKind.FILED, "filed-provider-unchecked")
    assert not p.provider_checked


@pytest.mark.parametrize(
    ("server", "mode", "action", "rule"),
    [
        ("198.51.100.1", Mode.MONITOR, Action.FLAG, "monitor:unfiled"),
        ("198.51.100.200", Mode.MONITOR, Action.FLAG, "monitor:pending-prefix:unfiled"),
        ("203.0.113.100", Mode.ENFORCE, Action.BLOCK, "enforce:unfiled"),
        ("203.0.113.5", Mode.DRY_RUN, Action.FLAG, "dry-run:would-block:unfiled"),
    ],
)
def test_modes(policy, server, mode, action, rule):
    d = policy.decide(obs("unfiled.cn", server))
    assert (d.mode, d.action, d.rule) == (mode, action, rule)
    ok = policy.decide(obs("filed.cn", server))
    assert ok.action is Action.LOG and ok.rule == "pass:filed"


def test_pending_mode_and_ip_drift_is_flag_only():
    p = Policy(RecordIndex(FILINGS), INV, PolicyConfig(provider=US, default_mode=Mode.ENFORCE, pending_mode=Mode.DRY_RUN))
    assert p.decide(obs("unfiled.cn", "198.51.100.200")).rule == "dry-run:would-block:pending-prefix:unfiled"
    d = p.decide(obs("pinned.cn", "198.51.100.6"))
    assert (d.action, d.rule) == (Action.FLAG, "flag:ip-not-listed")
    assert p.decide(obs("other.cn")).action is Action.BLOCK


def test_account_and_cache(policy):
    d = policy.decide(obs("filed.cn", "198.51.100.200"))
    assert (d.account, d.site) == ("cust-b", "bj")
    assert policy.decide(obs("filed.cn", "198.51.100.200")) is d


def test_the_cache_is_bounded_for_names_on_addresses_already_seen(policy, monkeypatch):
    """Issue 28 (18): the bound was checked only when a new server address came, so the names met
    on a few hosted addresses (shared hosting, a CDN) filled it without end (a 10M-packet replay:
    437k decisions cached against a bound of 131k)."""
    monkeypatch.setattr(type(policy), "CACHE_MAX", 8)
    for i in range(100):
        d = policy.decide(obs(f"n{i}.example.cn", "198.51.100.200"))
        assert sum(len(v) for v in policy._cache.values()) <= 8
    assert policy.decide(obs("n99.example.cn", "198.51.100.200")) is d  # still a cache


def test_access_cancelled_is_its_own_status_not_cancelled() -> None:
    """Issue 28 (6): 取消接入 ends one provider's access record; the filing survives (the site may
    be served through another provider now). Mapped to 注销 it was judged inactive and reported to
    the regulator as 未备案 (DT 9 illegalType 1); it is judged like a filing through another provider."""
    from beiand.records.importer import STATUS

    assert STATUS["取消接入"] is STATUS["已取消接入"] is FilingStatus.ACCESS_CANCELLED
    assert STATUS["注销"] is STATUS["已注销"] is FilingStatus.CANCELLED


def test_every_decision_has_every_field(policy):
    """Issue 33 builds decisions with tuple.__new__ (no Python __new__, so no field defaults): each
    path still gives a whole Decision, the overlay fields empty, and a whole Verdict."""
    from beiand.model import Decision, Verdict

    cases = [("filed.cn", "198.51.100.1"), ("unfiled.cn", "198.51.100.1"), ("notfiled.cn", "198.51.100.8"), ("other.cn", "198.51.100.1"),
             ("pinned.cn", "198.51.100.6"), ("pending.cn", "198.51.100.1"), ("allowed.example", "198.51.100.1"),
             ("x.trusted.example", "198.51.100.1"), ("filed.cn", "198.51.100.99"), ("", "198.51.100.8"), ("", "198.51.100.1"),
             ("filed.cn", "192.0.2.1"), ("filed.cn", "203.0.113.1"), ("unfiled.cn", "203.0.113.5"), ("unfiled.cn", "198.51.100.200"),
             ("filed.cn", "8.8.8.8")]
    for name, server in cases:
        for d in (policy.decide(obs(name, server)), policy.judge(name, server, 1.7e9, INV.lookup(server)),
                  policy.lookup(name, server, 1.7e9)[0]):
            assert len(d) == len(Decision._fields) and (d.by, d.ref) == ("", ""), (name, server, d)
            assert d == Decision(d.verdict, d.action, d.rule, d.mode, d.account, d.site), (name, server)
            assert len(d.verdict) == len(Verdict._fields), (name, server)
