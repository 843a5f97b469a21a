"""The compiled matcher: its indexes answer what a scan of every rule answers, windows included."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beiand.model import Kind, Observation, Overlay, Transport
from beiand.policy.matcher import Compiled, Matcher, RuleError, ip_range, port_range
from beiand.policy.overlays import hit

NAMES = ["a.example", "b.a.example", "c.example", "x.y.c.example"]
rule = st.builds(
    lambda k, by, names, lo, w, start, span, port: (k, by, names, lo, w, start, span, port),
    st.integers(0, 2), st.sampled_from([Overlay.ISMS_FILTER, Overlay.ISMS_MONITOR, Overlay.ISMS_NOFILTER]),
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=2), st.integers(0, 255), st.integers(0, 64),
    st.integers(0, 100), st.integers(1, 100), st.one_of(st.none(), st.integers(1, 3)))


def _compile(i: int, r: tuple) -> Compiled:  # type: ignore[type-arg]
    k, by, names, lo, w, start, span, port = r
    c = Compiled(hit(by, str(i)), start=float(start), end=float(start + span))
    if k == 0:
        c.domains = list(names)
    elif k == 1:
        c.dst = [(4, int(ipaddress.ip_address("10.0.0.0")) + lo, int(ipaddress.ip_address("10.0.0.0")) + min(255, lo + w))]
    else:
        c.dst = [(4, int(ipaddress.ip_address("10.0.0.0")) + lo, int(ipaddress.ip_address("10.0.0.0")) + lo)]
        c.domains = list(names)
    if port is not None:
        c.dports = [(port, port)]
    return c


def _scan(cs: list[Compiled], o: Observation) -> set[int]:
    best = max((c.hit.priority for c in cs if c.start <= o.ts < c.end and Matcher(())._all(c, o)), default=None)
    return {c.hit.priority for c in cs if c.start <= o.ts < c.end and Matcher(())._all(c, o) and c.hit.priority == best}


@settings(max_examples=150, deadline=None)
@given(st.lists(rule, min_size=1, max_size=12), st.sampled_from([*NAMES, "", "other.example"]), st.integers(0, 255),
       st.integers(0, 4), st.integers(0, 200))
def test_the_indexed_match_is_the_strongest_rule_a_scan_finds_in_force(rules: list, name: str, last: int, port: int, ts: int
                                                                      ) -> None:  # type: ignore[type-arg]
    cs = [_compile(i, r) for i, r in enumerate(rules)]
    o = Observation(float(ts), "192.0.2.1", 40000, f"10.0.0.{last}", port, Transport.TCP, Kind.TLS_SNI, name, name)
    got = Matcher(cs).match(o)
    want = _scan(cs, o)
    assert (got.priority if got is not None else None) == (next(iter(want)) if want else None)


def test_url_rules_read_the_observations_request_target() -> None:
    c = Compiled(hit(Overlay.ISMS_FILTER, "1"), urls=[("u.example", "/bad/")])
    m = Matcher([c])
    http = Observation(1.0, "192.0.2.1", 1, "10.0.0.1", 80, Transport.TCP, Kind.HTTP_HOST, "u.example", "u.example")
    assert m.match(http._replace(target="/bad/x")) is not None
    assert m.match(http._replace(target="/good")) is None
    assert m.match(http._replace(detail="target=/bad/x")) is None  # never parsed out of the free text


def test_bad_values_are_refused_by_name() -> None:
    assert ip_range("10.0.0.0/30", "") == (4, 167772160, 167772163)
    assert port_range("80", "90") == (80, 90)
    for lo, hi in (("10.0.0.9", "10.0.0.1"), ("nope", ""), ("10.0.0.1", "::1")):
        with pytest.raises(RuleError):
            ip_range(lo, hi)
    with pytest.raises(RuleError, match="port"):
        port_range("70000", "")
