"""The decider: the records' verdict, then the overlays at the observation's own time (issue 26)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beiand.model import Action, Decision, Kind, Mode, Observation, Overlay, Transport, Verdict, VerdictKind
from beiand.policy.orders import OrderStore
from beiand.policy.overlays import (
    AddressRule,
    Decider,
    Grace,
    Hit,
    OrderLayer,
    hit,
    lookup_answer,
    order_column,
)

FILED = Decision(Verdict(VerdictKind.FILED, None, "filed"), Action.LOG, "pass:filed", Mode.ENFORCE, "acct")
UNFILED = Decision(Verdict(VerdictKind.UNFILED, None, "no-filing"), Action.BLOCK, "enforce:unfiled", Mode.ENFORCE, "acct")


class Fixed:
    inventory = None

    def __init__(self, d: Decision) -> None:
        self.d = d

    def decide(self, o: Observation) -> Decision:
        return self.d

    def lookup(self, name: str, server_ip: str, ts: float, **kw: object) -> tuple[Decision, None, str]:
        return self.d, None, ""


def obs(name: str = "www.bad.example", server: str = "203.0.113.5", ts: float = 1000.0, kind: Kind = Kind.TLS_SNI) -> Observation:
    return Observation(ts, "192.0.2.2", 40000, server, 443, Transport.TCP, kind, name, name)


class Layer:
    """An overlay that always answers the same hit."""

    error = ""

    def __init__(self, h: Hit | None) -> None:
        self.h = h
        self.reloads = 0
        self.starts_at = math.inf

    def reload(self) -> bool:
        self.reloads += 1
        return self.reloads == 1

    def prepare(self) -> None:
        pass

    def match(self, o: Observation) -> Hit | None:
        return self.h

    def addresses(self, ts: float) -> list[AddressRule]:
        return [AddressRule("198.51.100.0/24", ref="x")]

    def next_change(self, ts: float) -> float:
        return self.starts_at if self.starts_at > ts else math.inf

    def metrics(self) -> dict[str, float]:
        return {}

    def keyed(self) -> bool:
        return False  # answers whatever it likes: never skipped

    def rule_names(self) -> list[str]:
        raise AssertionError("not asked of an overlay that is not keyed")

    def address_clear(self, ip: str) -> bool:
        raise AssertionError("not asked of an overlay that is not keyed")


def test_a_closure_order_decides_at_the_observations_time_and_a_lifted_one_decides_what_came_before(tmp_path: Path) -> None:
    store = OrderStore(tmp_path)
    o = store.add("bad.example", "京通管〔2026〕1号", "test")
    net = store.add("198.51.100.0/24", "京通管〔2026〕2号", "test")
    d = Decider(Fixed(FILED), [OrderLayer(store)])  # type: ignore[arg-type]
    got = d.decide(obs(ts=o.created + 1))
    assert (got.action, got.by, got.ref, got.rule) == (Action.BLOCK, Overlay.ORDER, "京通管〔2026〕1号", "order:京通管〔2026〕1号")
    assert order_column(got) == "京通管〔2026〕1号"
    assert d.decide(obs(ts=o.created - 1)) == FILED  # not yet entered
    assert d.decide(obs("a.example", "198.51.100.77", ts=net.created + 1)).ref == "京通管〔2026〕2号"
    time.sleep(0.01)
    store.remove("bad.example", by="op", reason="lifted")
    lifted = store.history[-1].lifted_at
    assert d.decide(obs(ts=lifted + 1)) == FILED
    assert d.decide(obs(ts=lifted - 0.001)).ref == "京通管〔2026〕1号"  # replay of a capture taken before the lift


def test_strongest_overlay_wins_and_a_monitor_never_blocks() -> None:
    order, nofilter, monitor = hit(Overlay.ORDER, "A"), hit(Overlay.ISMS_NOFILTER, "B"), hit(Overlay.ISMS_MONITOR, "C")
    d = Decider(Fixed(UNFILED), [Layer(nofilter), Layer(order), Layer(monitor)])  # type: ignore[arg-type]
    assert d.decide(obs()).by == Overlay.ORDER
    ex = Decider(Fixed(UNFILED), [Layer(monitor), Layer(nofilter)]).decide(obs())  # type: ignore[arg-type]
    assert (ex.verdict.verdict, ex.action, ex.by, order_column(ex)) == (VerdictKind.EXEMPT, Action.LOG, Overlay.ISMS_NOFILTER,
                                                                       "isms-nofilter:B")
    mon = Decider(Fixed(FILED), [Layer(monitor)]).decide(obs())  # type: ignore[arg-type]
    assert (mon.action, mon.verdict.verdict, order_column(mon)) == (Action.FLAG, VerdictKind.FILED, "isms-monitor:C")


def test_grace_is_a_rule_on_observation_time_and_never_holds_an_order_back() -> None:
    d = Decider(Fixed(UNFILED), [], grace_seconds=60)  # type: ignore[arg-type]
    first = d.decide(obs(ts=1000.0))
    assert (first.action, first.by, first.rule) == (Action.FLAG, Overlay.GRACE, "grace:would-block:enforce:unfiled")
    assert d.decide(obs(ts=1059.0)).action is Action.FLAG
    assert d.decide(obs(ts=1060.0)) == UNFILED  # the same name a minute later, by the packets' clock
    assert order_column(first) == ""
    ordered = Decider(Fixed(UNFILED), [Layer(hit(Overlay.ORDER, "A"))], grace_seconds=60)  # type: ignore[arg-type]
    assert ordered.decide(obs("new.example", ts=5.0)).action is Action.BLOCK
    g = Grace(10)
    assert g.apply(obs("", ts=1.0), UNFILED) == UNFILED  # no name: nothing to be new


def test_a_dns_answer_is_flagged_never_blocked() -> None:
    d = Decider(Fixed(UNFILED), [Layer(hit(Overlay.ORDER, "A"))])  # type: ignore[arg-type]
    got = d.decide(obs(kind=Kind.DNS_ANSWER))
    assert (got.action, got.rule, got.by) == (Action.FLAG, "order:A:dns-answer", Overlay.ORDER)


def test_one_reload_path_and_the_address_cuts_of_every_overlay() -> None:
    a, b = Layer(None), Layer(None)
    d = Decider(Fixed(FILED), [a, b])  # type: ignore[arg-type]
    assert d.reload() is True and (a.reloads, b.reloads) == (1, 1)  # every overlay, even after one changed
    assert d.reload() is False
    assert d.addresses(0.0) == [AddressRule("198.51.100.0/24", ref="x")] * 2


def test_the_next_change_is_the_earliest_start_of_any_overlay(tmp_path: Path) -> None:
    """The supervisor syncs nftables when an address rule starts (a command's effectTime, an order
    entered with a later clock), not only at its periodic resync (issue 26: up to 10 s late)."""
    a, b = Layer(None), Layer(None)
    a.starts_at, b.starts_at = 2000.0, 1500.0
    d = Decider(Fixed(FILED), [a, b])  # type: ignore[arg-type]
    assert d.next_change(1000.0) == 1500.0 and d.next_change(1500.0) == 2000.0 and d.next_change(2000.0) == math.inf
    assert Decider(Fixed(FILED)).next_change(1000.0) == math.inf  # type: ignore[arg-type]
    store = OrderStore(tmp_path)
    net = store.add("198.51.100.0/24", "京通管〔2026〕3号", "test")
    store.add("later.example", "京通管〔2026〕4号", "test")  # a name: never an address cut
    orders = OrderLayer(store)
    assert orders.next_change(net.created - 5) == net.created and orders.next_change(net.created) == math.inf


def test_lookup_answers_with_the_overlays() -> None:
    d = Decider(Fixed(FILED), [Layer(hit(Overlay.ISMS_FILTER, "42"))])  # type: ignore[arg-type]
    r = lookup_answer(d, "bad.example", "203.0.113.5", 1.0)
    assert (r["action"], r["order"], r["by"]) == ("block", "isms:42", "isms-filter")
    g = Decider(Fixed(UNFILED), [], grace_seconds=60)  # type: ignore[arg-type]
    assert lookup_answer(g, "new.example", "203.0.113.5", 1.0)["action"] == "block"  # a lookup is not traffic:
    assert not g.grace.first_seen  # type: ignore[union-attr]  # it neither meets the name nor is held by grace


def test_orders_damaged_at_start_stop_a_question_but_not_the_daemon(tmp_path: Path) -> None:
    """Reviewer (issue 26): a worker whose orders.json was damaged at start decided without the
    closure orders until restarted. Live, the overlay starts empty and takes the mended file; a
    command asked about it (replay, lookup) still refuses, naming the file."""
    from beiand.runtime.settings import Config
    from beiand.runtime.wiring import StateError, layers

    (tmp_path / "orders.json").write_text("{broken")
    with pytest.raises(StateError, match=r"orders\.json: damaged"):
        layers(Config(), tmp_path)
    live, exemptions, _cases, _authority = layers(Config(), tmp_path, live=True)
    assert exemptions.error == ""
    assert "damaged" in live.error and live.match(obs()) is None
    for _ in range(3):
        assert not live.reload()
    assert live.metrics()["errors"] == 1  # one damaged version, one error (and one log line)
    writer = OrderStore(tmp_path / "w")
    o = writer.add("bad.example", "京通管〔2026〕3号", "test")
    os.replace(writer.path, tmp_path / "orders.json")
    assert live.reload() and live.error == ""
    assert live.match(obs(ts=o.created + 1)) == hit(Overlay.ORDER, "京通管〔2026〕3号")


def test_an_order_file_changed_under_its_old_mtime_is_read(tmp_path: Path) -> None:
    """Reviewer (issue 26): the mtime alone missed a write within the timestamp granularity or a
    file restored with its old time."""
    writer = OrderStore(tmp_path)
    writer.add("a.example", "1", "test")
    st = writer.path.stat()
    layer = OrderLayer.from_state_dir(tmp_path)
    o = writer.add("b.example", "2", "test")
    os.utime(writer.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert layer.reload()
    assert layer.match(obs("b.example", ts=o.created + 1)) == hit(Overlay.ORDER, "2")


def test_an_exemption_lets_an_unfiled_name_through_but_never_past_a_closure_order(tmp_path: Path) -> None:
    """The operator's exemption (issue 29) ranks with noFilter: the records' block becomes exempt,
    a closure order on the same name still blocks."""
    from beiand.policy.orders import ExemptionStore
    from beiand.policy.overlays import ExemptionLayer

    ex = ExemptionStore(tmp_path)
    ex.add("bad.example", "TICKET-1", "filing in review")
    orders = OrderStore(tmp_path)
    dec = Decider(Fixed(UNFILED), [OrderLayer(orders), ExemptionLayer(ex)])  # type: ignore[arg-type]
    d = dec.decide(obs(ts=ex.orders["bad.example"].created + 1))
    assert d.verdict.verdict is VerdictKind.EXEMPT and d.action is Action.LOG and d.by is Overlay.EXEMPTION
    orders.add("www.bad.example", "京通管〔2026〕9号", "closure")
    d = dec.decide(obs(ts=orders.orders["www.bad.example"].created + 1))
    assert d.action is Action.BLOCK and d.by is Overlay.ORDER
    assert ExemptionLayer(ex).addresses(0) == []


def test_a_name_no_overlay_matches_is_remembered_until_an_overlay_changes(tmp_path: Path) -> None:
    """Issue 29: the decider remembers the names and server addresses no overlay can ever match
    (every overlay matching by those alone); a new order is never missed, at any time."""
    orders = OrderStore(tmp_path)
    layer = OrderLayer.from_state_dir(tmp_path)
    dec = Decider(Fixed(UNFILED), [layer])  # type: ignore[arg-type]
    assert dec.decide(obs(ts=1000.0)).action is Action.BLOCK and not dec.decide(obs(ts=1000.0)).by
    assert dec._names == {"www.bad.example": True} and dec._addrs == {"203.0.113.5": True}
    o = orders.add("bad.example", "京通管〔2026〕5号", "test", until=0.0)
    assert dec.reload()  # the worker's reload: the remembered pairs go
    assert dec.decide(obs(ts=o.created + 1)).by is Overlay.ORDER
    assert not dec.decide(obs(ts=o.created - 1)).by  # before the order
    assert dec.decide(obs(ts=o.created + 2)).by is Overlay.ORDER
    assert dec.decide(obs("other.example", ts=o.created + 2)).action is Action.BLOCK  # records' block, no order
    assert dec._names["other.example"] and not dec._names["www.bad.example"]
    never = Decider(Fixed(UNFILED), [Layer(None)])  # type: ignore[arg-type]
    never.decide(obs())
    assert not never._names


LABELS = ["a", "b", "bad", "example", "cn"]
name_st = st.lists(st.sampled_from(LABELS), min_size=1, max_size=4).map(".".join)
ip_st = st.sampled_from(["203.0.113.5", "203.0.113.6", "198.51.100.1", "198.51.100.200"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(name_st, ip_st, st.just("198.51.100.0/24")), max_size=6), st.lists(name_st, max_size=4),
       st.lists(name_st, max_size=3), st.lists(st.tuples(name_st, ip_st, st.booleans()), min_size=1, max_size=25))
def test_the_fast_path_decides_as_every_overlay_would(tmp_path_factory: pytest.TempPathFactory, orders: list[str],
                                                      commands: list[str], exempt: list[str],
                                                      traffic: list[tuple[str, str, bool]]) -> None:
    """Issue 29: whatever orders, exemptions and (name) commands are in force, the decider's
    remembered names and addresses change no decision: each equals the walk of every overlay."""
    from beiand.isms.store import CommandRules, CommandStore
    from beiand.isms.wire.model import Rule, SecurityCommand
    from beiand.policy.orders import ExemptionStore
    from beiand.policy.overlays import ExemptionLayer

    d = tmp_path_factory.mktemp("fast")
    o, x = OrderStore(d), ExemptionStore(d)
    for i, t in enumerate(orders):
        o.add(t, f"N{i}", "")
    for i, t in enumerate(exempt):
        x.add(t, f"X{i}", "")
    cs = CommandStore(d)
    for i, t in enumerate(commands):
        with cs.writing():
            cs.apply_security(SecurityCommand(command_id=i + 1, type=1, operation=0, rules=(Rule(1, t, ""),), block=1, log=1,
                                              report=1, reason="", effect_time=0.0, expired_time=0.0, house_ids=(), owner="",
                                              time_stamp=""), 1.0)
    layers = [OrderLayer(o), ExemptionLayer(x), CommandRules(d)]
    fast = Decider(Fixed(UNFILED), layers)  # type: ignore[arg-type]
    slow = Decider(Fixed(UNFILED), layers)  # type: ignore[arg-type]
    ts = time.time() + 10
    for _ in range(2):  # the second time from what was remembered
        for name, ip, dns_answer in traffic:
            ob = obs(name, ip, ts=ts, kind=Kind.DNS_ANSWER if dns_answer else Kind.TLS_SNI)
            assert fast.decide(ob) == slow.overlay(ob, UNFILED), (name, ip)


def test_a_changed_snapshot_is_read_beside_the_rules_in_force_and_swapped_in_by_reload(tmp_path: Path) -> None:
    """Issue 29: a worker reads a changed snapshot outside its lock (prepare) so the inline queue
    never waits for a parse; nothing changes until reload() swaps it in; a damaged version is
    counted once and the rules in force are kept."""
    import time as _t

    from beiand.isms.store import CommandRules, CommandStore
    from beiand.isms.wire.model import Rule, SecurityCommand

    writer = OrderStore(tmp_path)
    a = writer.add("a.example", "A", "")
    layer = OrderLayer.from_state_dir(tmp_path)
    b = writer.add("b.example", "B", "")
    layer.prepare()
    assert layer.match(obs("b.example", ts=b.created + 1)) is None  # not yet
    assert layer.reload() and layer.match(obs("b.example", ts=b.created + 1)) == hit(Overlay.ORDER, "B")
    layer.prepare()
    assert not layer.reload()  # nothing new
    (tmp_path / "orders.json").write_text("{broken")
    for _ in range(3):
        layer.prepare()
        layer.reload()
    assert layer.errors == 1 and "damaged" in layer.error
    assert layer.match(obs("a.example", ts=a.created + 1)) == hit(Overlay.ORDER, "A")  # kept
    (tmp_path / "orders.json").unlink()
    layer.prepare()
    assert layer.reload() and layer.match(obs("a.example", ts=a.created + 1)) is None  # removed: emptied in place

    d = tmp_path / "isms-state"
    cs = CommandStore(d)
    rules = CommandRules(d, live=True)
    with cs.writing():
        cs.apply_security(SecurityCommand(command_id=1, type=1, operation=0, rules=(Rule(1, "bad.example", ""),), block=1, log=1,
                                          report=1, reason="", effect_time=0.0, expired_time=0.0, house_ids=(), owner="",
                                          time_stamp=""), _t.time() - 5)
    rules.prepare()
    assert rules.match(obs()) is None
    assert rules.reload() and rules.match(obs(ts=_t.time())) == hit(Overlay.ISMS_MONITOR, "1")  # type 1: a monitor
