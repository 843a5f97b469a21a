"""Commands in force, decided by the policy's overlay like closure orders (beiand/isms/store.py)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from beiand.enforce import Enforcer, EnforceSettings
from beiand.isms.store import AddressCuts, CommandRules, CommandStore, Matcher, address_rules, compile_command
from beiand.isms.wire.model import ListEntry, Rule, SecurityCommand
from beiand.model import Action, AddressRule, Decision, Kind, Mode, Observation, Outcome, Overlay, Transport, Verdict, VerdictKind
from beiand.policy.overlays import Decider
from beiand.sinks.accesslog import to_record
from tests.unit.policy.test_overlays import UNFILED, Fixed


class Inj:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def reset_both(self, *a: Any, **k: Any) -> None:
        self.calls.append(("reset", *a[:4]))

    def block_page(self, *a: Any, **k: Any) -> None:
        self.calls.append(("page", *a[:4]))


def obs(name: str, server: str = "203.0.113.5", port: int = 443, client: str = "198.51.100.7", cport: int = 40000,
        transport: Transport = Transport.TCP, kind: Kind = Kind.TLS_SNI, target: str = "", ts: float = 100.0) -> Observation:
    return Observation(ts, client, cport, server, port, transport, kind, name, name, (), "", 1, 1, 0, target=target)


FILED = Decision(Verdict(VerdictKind.FILED, None, "filed"), Action.LOG, "pass:filed", Mode.MONITOR, "acct")


def decider(tmp_path: Path, base: Decision = FILED, grace: float = 0.0) -> Decider:
    return Decider(Fixed(base), [CommandRules(tmp_path)], grace_seconds=grace)  # type: ignore[arg-type]


def cmd(cid: int, typ: int, *rules: tuple[int, str, str], op: int = 0, effect: float = 0, expired: float = 0) -> SecurityCommand:
    return SecurityCommand(cid, typ, op, tuple(Rule(s, a, b) for s, a, b in rules), effect_time=effect, expired_time=expired)


def store_with(tmp_path: Path, *cs: SecurityCommand) -> CommandStore:
    s = CommandStore(tmp_path, house_id="H1")
    for c in cs:
        assert s.apply_security(c, 0.0).result in (0, 1), c
    s.save()
    return s


def test_filter_blocks_per_flow_like_an_order_and_logs_the_command(tmp_path: Path) -> None:
    """Issue 26: the command decides (the policy's overlay, typed fields); the enforcer only acts."""
    store_with(tmp_path, cmd(42, 2, (1, "bad.example", "")))
    inj = Inj()
    dec = decider(tmp_path, grace=3600)  # a grace period does not hold a command back, like an order
    e = Enforcer(EnforceSettings(max_blocks_per_minute=1), inj, None)  # type: ignore[arg-type]
    e.breaker.open = True  # nor does an open breaker
    d = dec.decide(obs("www.bad.example"))
    assert (d.action, d.by, d.ref, d.rule) == (Action.BLOCK, Overlay.ISMS_FILTER, "42", "isms-filter:42")
    assert e(obs("www.bad.example"), d).outcome is Outcome.DONE
    assert inj.calls == [("reset", "198.51.100.7", 40000, "203.0.113.5", 443)]  # this flow only
    assert to_record(obs("www.bad.example"), d, outcome=Outcome.DONE).order == "isms:42"  # the access log's order column
    assert dec.decide(obs("notbad.example")).action is Action.LOG  # label boundary
    # HTTP gets the block page, DNS answers are only flagged, like orders
    http = obs("bad.example", kind=Kind.HTTP_HOST, port=80)
    assert dec.decide(http).action is Action.BLOCK and e(http, dec.decide(http)).outcome is Outcome.DONE
    assert inj.calls[-1][0] == "page"
    assert dec.decide(obs("bad.example", kind=Kind.DNS_ANSWER)).action is Action.FLAG


def test_monitor_flags_and_names_the_command_even_where_the_records_already_act(tmp_path: Path) -> None:
    store_with(tmp_path, cmd(7, 1, (1, "watch.example", "")))
    d = decider(tmp_path).decide(obs("watch.example"))
    assert (d.action, d.by, d.rule) == (Action.FLAG, Overlay.ISMS_MONITOR, "isms-monitor:7")
    assert to_record(obs("watch.example"), d).order == "isms-monitor:7"
    # issue 28 (15): a monitored name the records already block stays blocked and gets its DT 4 row
    b = decider(tmp_path, UNFILED).decide(obs("watch.example"))
    assert (b.action, b.rule, to_record(obs("watch.example"), b).order) == (Action.BLOCK, "enforce:unfiled", "isms-monitor:7")


def test_effect_and_expiry_follow_the_observations_time(tmp_path: Path) -> None:
    store_with(tmp_path, cmd(1, 2, (1, "t.example", ""), effect=1000.0, expired=2000.0))
    r = CommandRules(tmp_path)
    assert r.match(obs("t.example", ts=999.0)) is None
    assert r.match(obs("t.example", ts=1000.0)) is not None
    assert r.match(obs("t.example", ts=2000.0)) is None  # expired: stops applying without a reload


def test_a_deleted_command_still_decides_what_came_before_its_deletion(tmp_path: Path) -> None:
    """Issue 26: replay of a capture judges each packet by the commands in force at its time."""
    s = CommandStore(tmp_path)
    assert s.apply_security(cmd(5, 2, (1, "gone.example", "")), 50.0).result == 0
    assert s.apply_list(ListEntry("noFilter", 6, 1, "free.example", 0), 50.0).result == 0
    s.save()
    assert s.apply_security(cmd(5, 2, op=1), 80.0).result == 0
    assert s.apply_list(ListEntry("noFilter", 6, 1, "free.example", 1), 80.0).result == 0
    s.save()
    r = CommandRules(tmp_path)
    assert r.match(obs("gone.example", ts=40.0)) is None  # not yet applied
    assert r.match(obs("gone.example", ts=60.0)) == (Overlay.ISMS_FILTER, "5", "block", 4)
    assert r.match(obs("gone.example", ts=90.0)) is None  # deleted
    assert r.match(obs("free.example", ts=60.0)).by is Overlay.ISMS_NOFILTER  # type: ignore[union-attr]
    assert r.match(obs("free.example", ts=90.0)) is None
    d = Decider(Fixed(UNFILED), [r]).decide(obs("free.example", ts=60.0))  # type: ignore[arg-type]
    assert (d.verdict.verdict, d.action, to_record(obs("free.example"), d).order) == (VerdictKind.EXEMPT, Action.LOG,
                                                                                       "isms-nofilter:6")


def test_and_across_subtypes_or_within(tmp_path: Path) -> None:
    store_with(tmp_path, cmd(1, 2, (5, "10.0.0.0", "10.0.0.255"), (5, "10.9.0.0/16", ""), (7, "80", ""), (7, "8000", "8100"),
                             (8, "1", "")))
    r = CommandRules(tmp_path)
    assert r.match(obs("", server="10.0.0.7", port=80, kind=Kind.IP_ONLY))
    assert r.match(obs("", server="10.9.3.3", port=8080, kind=Kind.IP_ONLY))
    assert r.match(obs("", server="10.0.0.7", port=443)) is None
    assert r.match(obs("", server="10.0.0.7", port=80, transport=Transport.UDP)) is None
    assert r.match(obs("", server="10.0.1.7", port=80)) is None


def test_source_ip_and_url_rules(tmp_path: Path) -> None:
    store_with(tmp_path, cmd(1, 2, (4, "192.0.2.10", "")), cmd(2, 2, (2, "http://u.example/bad/", "")))
    r = CommandRules(tmp_path)
    assert r.match(obs("x.example", client="192.0.2.10"))[:2] == (Overlay.ISMS_FILTER, "1")  # type: ignore[index]
    # the request target is the observation's own field (issue 26), not text in its detail
    assert r.match(obs("u.example", kind=Kind.HTTP_HOST, target="/bad/page"))[:2] == (Overlay.ISMS_FILTER, "2")  # type: ignore[index]
    assert r.match(obs("u.example", kind=Kind.HTTP_HOST, target="/good")) is None
    assert r.match(obs("u.example")) is None  # TLS hides the path: a URL rule never blocks the whole name


def test_address_filters_are_cut_on_every_port_and_acked_by_what_is_done(tmp_path: Path) -> None:
    """Issue 26 (2): an address and port filter goes to nftables (every port, every mode) and is
    acked executed; a rule nftables cannot carry is acked partial (1), never executed (0)."""
    s = CommandStore(tmp_path)
    full = s.apply_security(cmd(1, 2, (5, "203.0.113.5", ""), (7, "22", ""), (8, "1", "")), 10.0)
    assert full.result == 0 and "every port" in full.msg
    assert address_rules(cmd(1, 2, (5, "203.0.113.5", ""), (7, "22", ""), (8, "1", ""))) == [
        AddressRule("203.0.113.5", "tcp", (22, 22), 0.0, "isms:1")]
    assert address_rules(cmd(2, 2, (5, "203.0.113.0/24", ""), (5, "198.51.100.1", "198.51.100.9"))) == [
        AddressRule("203.0.113.0/24", ref="isms:2"), AddressRule("198.51.100.1-198.51.100.9", ref="isms:2")]
    assert address_rules(cmd(3, 2, (4, "192.0.2.0/24", ""))) == [AddressRule("192.0.2.0/24", ref="isms:3", src=True)]
    assert address_rules(cmd(4, 1, (5, "203.0.113.5", ""))) is None  # a monitor never cuts
    part = s.apply_security(cmd(5, 2, (5, "203.0.113.5", ""), (6, "5000", "")), 10.0)  # a source port: watched ports only
    assert part.result == 1 and part.msg.startswith("partial")
    mon = s.apply_security(cmd(6, 1, (5, "203.0.113.6", "")), 10.0)
    assert mon.result == 1
    assert s.apply_list(ListEntry("blacklist", 7, 2, "198.51.100.66", 0), 10.0).result == 0
    assert s.addresses(20.0) == [AddressRule("203.0.113.5", "tcp", (22, 22), 0.0, "isms:1"),
                                 AddressRule("198.51.100.66", ref="isms-blacklist:7")]


def test_an_address_filter_is_acked_partial_when_nftables_cannot_cut(tmp_path: Path) -> None:
    """The daemon says whether it can cut by address (nftables came up or not); without it a
    filter on an address and port is in force for the flows beiand names, not on every port:
    acked partial, naming why, never executed."""
    s = CommandStore(tmp_path)
    s.cuts = AddressCuts(unavailable="neither python3-nftables nor the nft command is installed")
    out = s.apply_security(cmd(1, 2, (5, "203.0.113.5", ""), (7, "22", ""), (8, "1", "")), 10.0)
    assert out.result == 1, out
    assert out.msg.startswith("partial") and "nftables unavailable (neither python3-nftables" in out.msg
    assert "cut in nftables on every port" not in out.msg
    assert s.apply_security(cmd(2, 2, (1, "bad.example", "")), 10.0).result == 0  # a name filter needs no nftables
    assert 1 in s.state.commands  # in force for what beiand names: stored all the same


def test_a_command_whose_address_elements_alone_exceed_the_cap_is_acked_partial(tmp_path: Path) -> None:
    s = CommandStore(tmp_path)
    s.cuts = AddressCuts(over_cap=lambda rules: "3 nftables set elements, over the cap of 2" if len(rules) > 2 else "")
    small = s.apply_security(cmd(1, 2, (5, "203.0.113.5", ""), (5, "203.0.113.7", "")), 10.0)
    assert small.result == 0 and "every port" in small.msg
    big = s.apply_security(cmd(2, 2, (5, "203.0.113.5", ""), (5, "203.0.113.7", ""), (5, "203.0.113.9", "")), 10.0)
    assert big.result == 1 and big.msg.startswith("partial") and "over the cap of 2" in big.msg, big


def test_the_next_change_is_the_earliest_effect_time_still_to_come(tmp_path: Path) -> None:
    """A command with a later effectTime enters the address sets when it starts: the supervisor
    syncs then (Decider.next_change), not up to 10 s later."""
    store_with(tmp_path, cmd(1, 2, (5, "203.0.113.5", ""), effect=500.0), cmd(2, 2, (5, "203.0.113.6", ""), effect=300.0),
               cmd(3, 2, (5, "203.0.113.7", "")))
    r = CommandRules(tmp_path)
    assert r.next_change(100.0) == 300.0 and r.next_change(300.0) == 500.0 and r.next_change(500.0) == math.inf
    assert [a.net for a in r.addresses(300.0)] == ["203.0.113.6", "203.0.113.7"]


def test_delete_replace_and_refusals(tmp_path: Path) -> None:
    s = store_with(tmp_path, cmd(1, 2, (1, "a.example", "")))
    assert s.apply_security(cmd(1, 2, (1, "b.example", "")), 1.0).result == 0  # replaced
    assert s.state.history[-1]["why"] == "replaced"
    assert s.apply_security(cmd(1, 2, op=1), 2.0).result == 0
    assert s.apply_security(cmd(1, 2, op=1), 3.0).result == 2  # nothing to delete
    out = s.apply_security(cmd(9, 2, (1, "k.example", ""), (3, "词", "")), 4.0)
    assert out.result == 2 and out.msg.startswith("unsupported: subtype 3 关键字") and 9 not in s.state.commands
    assert s.apply_security(cmd(10, 2, (5, "not-an-ip", "")), 5.0).msg.startswith("bad rule")
    assert s.apply_security(cmd(11, 2, (99, "x", "")), 5.0).msg.startswith("unsupported: subtype 99")
    other = SecurityCommand(12, 2, 0, (Rule(1, "h.example"),), house_ids=("H9",))
    assert s.apply_security(other, 6.0).msg.startswith("not for this house")


def test_a_damaged_file_keeps_the_commands_in_force(tmp_path: Path) -> None:
    store_with(tmp_path, cmd(1, 2, (1, "a.example", "")))
    r = CommandRules(tmp_path)
    (tmp_path / "isms" / "commands.json").write_text("{broken")
    assert not r.reload()
    assert r.match(obs("a.example")) is not None
    assert (r.errors, r.metrics()["errors"]) == (1, 1) and "damaged" in r.error
    for _ in range(3):  # one damaged version is one error, not one per poll
        assert not r.reload()
    assert r.errors == 1


def test_a_file_damaged_at_start_leaves_the_overlay_empty_until_it_is_mended(tmp_path: Path) -> None:
    """Reviewer (issue 26): a worker whose commands.json was damaged at start decided without the
    regulator's commands until it was restarted, mended file or not."""
    path = tmp_path / "isms" / "commands.json"
    path.parent.mkdir()
    path.write_text("{broken")
    r = CommandRules(tmp_path, live=True)
    assert "damaged" in r.error and r.match(obs("a.example")) is None
    store_with(tmp_path / "mended", cmd(1, 2, (1, "a.example", "")))
    os.replace(tmp_path / "mended" / "isms" / "commands.json", path)  # written whole again
    assert r.reload() and r.error == ""
    assert r.match(obs("a.example")) is not None


def test_a_change_keeping_the_old_mtime_is_read(tmp_path: Path) -> None:
    """Reviewer (issue 26): the mtime alone missed a second write within the timestamp granularity
    or a file restored with its old time (``cp -p``)."""
    s = store_with(tmp_path, cmd(1, 2, (1, "a.example", "")))
    path = tmp_path / "isms" / "commands.json"
    st = path.stat()
    r = CommandRules(tmp_path)
    assert s.apply_security(cmd(2, 2, (1, "b.example", "")), 1.0).result == 0
    s.save()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert r.reload()
    assert r.match(obs("b.example")) is not None


def test_a_live_worker_compiles_only_the_recent_history(tmp_path: Path) -> None:
    """Reviewer (issue 26): every worker compiled the whole history (up to 10,000 commands that left
    force) into its live matcher on every reload; replay still needs all of it."""
    now = time.time()
    s = CommandStore(tmp_path)
    for cid, ended in ((1, now - 2 * 86400), (2, now - 60)):
        assert s.apply_security(cmd(cid, 2, (1, f"c{cid}.example", "")), ended - 100).result == 0
        assert s.apply_security(cmd(cid, 2, op=1), ended).result == 0
    assert s.apply_security(cmd(3, 2, (1, "c3.example", "")), now - 10).result == 0
    s.save()
    live, replay = CommandRules(tmp_path, live=True), CommandRules(tmp_path)
    assert (live.matcher.count, replay.matcher.count) == (2, 3)
    assert replay.match(obs("c1.example", ts=now - 2 * 86400 - 50)) is not None
    assert live.match(obs("c2.example", ts=now - 90)) is not None  # left force a minute ago: still judged
    assert live.match(obs("c3.example", ts=now)) is not None


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**16)), min_size=1, max_size=30),
       st.integers(0, 2**32 - 1))
def test_interval_index_agrees_with_a_scan(ranges: list[tuple[int, int]], probe: int) -> None:
    import ipaddress

    cs = []
    for i, (lo, w) in enumerate(ranges):
        hi = min(lo + w, 2**32 - 1)
        cs.append(compile_command(cmd(i, 2, (5, str(ipaddress.ip_address(lo)), str(ipaddress.ip_address(hi))))))
    m = Matcher(cs)
    ip = str(ipaddress.ip_address(probe))
    want = {c.hit.ref for c, (lo, w) in zip(cs, ranges, strict=True) if lo <= probe <= min(lo + w, 2**32 - 1)}
    got = {c.hit.ref for c in m.candidates(obs("", server=ip, client="::1"))}
    assert got == want


def test_a_command_for_a_house_applies_to_the_prefixes_the_inventory_names_for_it(tmp_path: Path) -> None:
    """Issue 30: without basic data (type 0), the inventory's house column scopes ``range/houseId``:
    a filter for house H2 blocks on H2's prefixes only, even on a gateway serving both houses, and a
    command for a house no one serves is not applied (ack 2), never applied everywhere."""
    from beiand.isms.store import inventory_houses
    from beiand.model import PrefixState
    from beiand.policy.inventory import HostedPrefix

    houses = inventory_houses([HostedPrefix("203.0.113.0/25", "a", "", PrefixState.ACTIVE, None, house="H1"),
                               HostedPrefix("203.0.113.128/25", "b", "", PrefixState.ACTIVE, None, house="H2"),
                               HostedPrefix("198.51.100.0/24", "c", "", PrefixState.CLOSED, None, house="H3")])
    assert houses == {"H1": [["203.0.113.0", "203.0.113.127", False]], "H2": [["203.0.113.128", "203.0.113.255", False]]}
    s = CommandStore(tmp_path)  # no isms.house_id: a fleet gateway, or the licence's CU
    s.inventory_houses = houses
    c = SecurityCommand(5, 2, 0, (Rule(1, "bad.example", ""),), house_ids=("H2",))
    assert s.apply_security(c, 0.0).result == 0
    out = s.apply_security(SecurityCommand(6, 2, 0, (Rule(1, "x.example", ""),), house_ids=("H9",)), 0.0)
    assert out.result == 2 and out.msg == "not for this house (H1, H2)"
    s.save()
    dec = Decider(Fixed(FILED), [CommandRules(tmp_path, houses=houses)])  # type: ignore[arg-type]
    assert dec.decide(obs("bad.example", server="203.0.113.200")).action is Action.BLOCK  # H2
    assert dec.decide(obs("bad.example", server="203.0.113.5")).action is Action.LOG  # H1: not this command's house
