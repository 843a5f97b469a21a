"""The licence's CU and its fleet (issue 30): gateways from heartbeats, acks held for the fleet,
DT 7's faulty houses, the basic data against the inventory."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from beiand.isms.fleet import AckTracker, GatewayView, basic_mismatches, house_states, in_scope, view
from beiand.isms.service import Ack
from beiand.isms.wire.codes import AckResult, AckType
from beiand.model import PrefixState
from beiand.policy.inventory import HostedPrefix

NOW = 1_800_000_000.0


def row(name: str, version: int, age: float = 1.0, **state: Any) -> dict[str, Any]:
    return {"gateway": name, "version": version, "heartbeat_at": NOW - age, "applied_at": 0.0, "host": "h", "beiand": "x",
            "state": state}


def gw(name: str, version: int, up: bool = True, houses: tuple[str, ...] = (), healthy: bool = True) -> GatewayView:
    return GatewayView(name, version, NOW, houses, healthy, up, "" if up else "stopped")


def test_view_up_down_stopped_retired() -> None:
    gws = view([row("a", 5), row("b", 5, age=40), row("c", 5, stopped=True), row("d", 1, age=8 * 86400),
                row("e", 5, age=40, heartbeat_interval=20.0), row("f", 5, houses=["H1", ""], healthy=False)],
               NOW, down_after=30, retired_after=7 * 86400)
    by = {g.name: g for g in gws}
    assert "d" not in by  # retired: silent for longer than gateway_retired_after
    assert by["a"].up and not by["b"].up and by["b"].why == "silent 40 s"
    assert not by["c"].up and by["c"].why == "stopped"
    assert by["e"].up  # three of its own heartbeat intervals (60 s) have not passed
    assert by["f"].houses == ("H1",) and not by["f"].healthy


def ack(cid: int = 7, version: int = 10, houses: tuple[str, ...] = (), result: AckResult = AckResult.ALL,
        typ: AckType = AckType.FILTER) -> Ack:
    return Ack(cid, typ, result, "filter stored: 1 rule(s)", "", version=version, houses=houses)


def test_an_ack_waits_for_every_up_gateway_then_goes_out_with_the_late_counted() -> None:
    t = AckTracker(wait=10, follow=3600, update=True)
    t.add([ack()], NOW)
    fleet = [gw("a", 10), gw("b", 9), gw("c", 3, up=False)]
    assert t.due(fleet, NOW + 1) == []  # b is up and still applying
    fleet[1] = gw("b", 10)
    (first,) = t.due(fleet, NOW + 2)  # every up gateway applied it; c is down: not waited for
    assert first.result == AckResult.SOME and first.command_id == 7
    assert first.msg == "filter stored: 1 rule(s); fleet: applied on 2 of 3 gateway(s); not yet: c (stopped)"
    assert t.behind(fleet, NOW + 2) == (0, 0.0)  # c is down: not "behind" (its house is faulty instead)
    assert t.due(fleet, NOW + 3) == []
    fleet[2] = gw("c", 11)  # restarted, caught up
    (second,) = t.due(fleet, NOW + 4)
    assert second.result == AckResult.ALL and second.msg.endswith("fleet: applied on all 3 gateway(s) (late: c)")
    assert t.pending == []


def test_at_ack_wait_an_up_gateway_still_applying_is_counted_and_behind() -> None:
    t = AckTracker(wait=5, follow=3600, update=False)
    t.add([ack()], NOW)
    fleet = [gw("a", 9), gw("b", 9)]
    assert t.due(fleet, NOW + 4) == []
    assert t.behind(fleet, NOW + 4) == (2, 4.0)
    (a,) = t.due(fleet, NOW + 5)
    assert a.result == AckResult.NONE and "applied on 0 of 2" in a.msg and "not yet: a, b" in a.msg
    assert t.pending == []  # no second ack without ack_update


def test_an_ack_per_house_listed_each_with_its_own_gateways() -> None:
    t = AckTracker(wait=10)
    t.add([ack(houses=("H1", "H2", "H1"))], NOW)
    fleet = [gw("a", 10, houses=("H1",)), gw("b", 4, houses=("H2",), up=False)]
    acks = sorted(t.due(fleet, NOW + 1), key=lambda a: a.house_id)
    assert [(a.house_id, a.result) for a in acks] == [("H1", AckResult.ALL), ("H2", AckResult.NONE)]
    assert acks[0].msg.endswith("applied on 1 of 1 gateway(s)")


def test_no_gateway_for_the_scope_and_what_needs_no_gateway() -> None:
    t = AckTracker(wait=10)
    t.add([ack(houses=("H9",)), ack(cid=8, result=AckResult.NONE), ack(cid=9, typ=AckType.CODE_LIST)], NOW)
    out = {a.command_id: a for a in t.due([gw("a", 10, houses=("H1",))], NOW)}
    assert out[7].result == AckResult.NONE and out[7].msg.endswith("no gateway follows the decision store for house H9")
    assert out[8].result == AckResult.NONE and out[8].msg == "filter stored: 1 rule(s)"  # as it was: nothing to apply
    assert out[9].result == AckResult.ALL


def test_a_long_list_of_late_gateways_fits_msginfo() -> None:
    t = AckTracker(wait=0)
    t.add([ack()], NOW)
    fleet = [gw(f"gateway-with-a-long-name-{i:04d}", 1, up=False) for i in range(500)]
    (a,) = t.due(fleet, NOW)
    assert len(a.msg) <= 1024 and a.msg.endswith(")") and "(+" in a.msg


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.booleans(), st.sets(st.sampled_from(["H1", "H2", "H3"]), max_size=2)),
                max_size=8),
       st.sets(st.sampled_from(["H1", "H2", "H3"]), max_size=2), st.integers(1, 20))
def test_the_first_ack_never_claims_more_than_the_fleet_did(gws: list[tuple[int, bool, set[str]]], houses: set[str],
                                                             version: int) -> None:
    """Property: resultCode 0 only when every gateway in scope applied the version; the counts in
    msgInfo are those of the gateways in scope; an up gateway that has not applied it is waited
    for until ack_wait."""
    fleet = [gw(f"g{i}", v, up, tuple(sorted(h))) for i, (v, up, h) in enumerate(gws)]
    t = AckTracker(wait=10)
    t.add([ack(version=version, houses=tuple(sorted(houses)))], NOW)
    early = t.due(fleet, NOW)
    late = t.due(fleet, NOW + 10)
    scope_of = {h: [g for g in fleet if in_scope(g, (h,) if houses else ())] for h in (sorted(houses) or [""])}
    for a in early + late:
        scope = scope_of[a.house_id]
        todo = [g for g in scope if g.version < version]
        if a.result == AckResult.ALL:
            assert scope and not todo
        if scope:
            assert f"applied on {len(scope) - len(todo)} of {len(scope)} gateway(s)" in a.msg
    for a in early:
        assert not any(g.up for g in scope_of[a.house_id] if g.version < version)
    assert len(early) + len(late) == len(scope_of)


def test_house_states_faulty_when_a_gateway_is_down_or_not_capturing_or_none_serves() -> None:
    fleet = [gw("a", 1, houses=("H1",)), gw("b", 1, houses=("H1",), up=False), gw("c", 1, houses=("H2",)),
             gw("d", 1, houses=("H3",), healthy=False)]
    assert house_states(fleet, ["H4"]) == (["H1", "H2", "H3", "H4"], ["H1", "H3", "H4"])
    assert house_states([gw("x", 1)], ["H1"]) == (["H1"], [])  # a gateway naming no house serves every house


def p(prefix: str, house: str = "", state: PrefixState = PrefixState.ACTIVE, account: str = "acct") -> HostedPrefix:
    return HostedPrefix(prefix, account, "", state, None, "inv.csv:2", house)


def test_basic_data_against_the_inventory() -> None:
    houses = {"H1": [["198.51.100.0", "198.51.100.255", False]], "H2": [["203.0.113.0", "203.0.113.127", True]],
              "H3": [["2001:db8::", "2001:db8::ffff", False]]}
    prefixes = [p("198.51.100.0/25", "H1"), p("198.51.100.128/25", "H2"), p("203.0.113.0/26", "H2"),
                p("192.0.2.0/24", "H1"), p("192.0.2.0/28", state=PrefixState.CLOSED), p("2001:db8::/120")]
    got = basic_mismatches(houses, prefixes)
    assert got == ["198.51.100.128/25: the inventory names house H2, the basic data H1",
                   "203.0.113.0/26 (account acct): registered as reserved (登记保留) but allocated in the inventory",
                   "192.0.2.0/24 (account acct, house H1): in no IP segment of the basic data (未登记)"]
    assert basic_mismatches(houses, prefixes, limit=1) == got[:1]


def test_a_gateway_that_does_not_enforce_the_command_is_not_counted_as_having_applied_it() -> None:
    """Review of issue 30, F3: the version alone does not make a command enforced: a gateway with no
    worker capturing, one with [isms] off, one that refused the command's row are counted as not
    applied (resultCode 1), each with why."""
    t = AckTracker(wait=0)
    t.add([ack(version=10)], NOW)
    fleet = [gw("a", 10), gw("b", 12, healthy=False), GatewayView("c", 10, NOW, (), True, True, "", isms=False),
             GatewayView("d", 11, NOW, (), True, True, "", refused=frozenset({10})), gw("e", 0)]
    (a,) = t.due(fleet, NOW)
    assert a.result == AckResult.SOME
    assert a.msg.endswith("applied on 1 of 5 gateway(s); not yet: b (not capturing), c (isms off), d (refused the row), e"), a.msg
    t2 = AckTracker(wait=0)
    t2.add([ack(version=0)], NOW)  # a version not known is never counted as applied
    (b,) = t2.due([gw("a", 10)], NOW)
    assert b.result == AckResult.NONE
    v = view([row("x", 3, refused=[2, "7", "x"], isms=False)], NOW, 30, 86400)[0]
    assert v.refused == {2, 7} and not v.isms
