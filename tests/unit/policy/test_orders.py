"""Closure orders folded from the decision store (issue 29): prefixes by length, longest first."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), min_size=1, max_size=30), st.integers(0, 2**32 - 1))
def test_an_address_is_judged_by_the_longest_prefix_order_holding_it(nets: list[tuple[int, int]], addr: int) -> None:
    """The prefixes are indexed by length (issue 29: a scan of 1,000 prefixes cost 2 ms per new
    address); the answer is the naive scan's."""
    import ipaddress as ipa

    from beiand.policy.orders import OrderStore
    from beiand.store import Change

    s = OrderStore(None, load=False)
    targets = {}
    for i, (x, plen) in enumerate(nets):
        net = ipa.ip_network((x >> (32 - plen) << (32 - plen), plen)) if plen else ipa.ip_network("0.0.0.0/0")
        targets[str(net)] = f"N{i}"
    s.apply([Change(i + 1, "order", t, "set", {"order": n}, 1.0, "", "", "") for i, (t, n) in enumerate(targets.items())])
    ip = ipa.ip_address(addr)
    holding = [n for n in map(ipa.ip_network, targets) if ip in n]
    want = targets[str(max(holding, key=lambda n: n.prefixlen))] if holding else None
    got = s.match("", str(ip), 2.0)
    assert (got.order if got else None) == want
