"""Commands in force, applied by the enforcer exactly like closure orders (beiand/isms/store.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from beiand.enforce import Enforcer, EnforceSettings
from beiand.isms.store import CommandRules, CommandStore, Matcher, compile_command
from beiand.isms.wire.model import Rule, SecurityCommand
from beiand.model import Action, Decision, Kind, Mode, Observation, Transport, Verdict, VerdictKind
from beiand.sinks.accesslog import to_record


class Inj:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def reset_both(self, *a: Any, **k: Any) -> None:
        self.calls.append(("reset", *a[:4]))

    def block_page(self, *a: Any, **k: Any) -> None:
        self.calls.append(("page", *a[:4]))


def obs(name: str, server: str = "203.0.113.5", port: int = 443, client: str = "198.51.100.7", cport: int = 40000,
        transport: Transport = Transport.TCP, kind: Kind = Kind.TLS_SNI, detail: str = "") -> Observation:
    return Observation(100.0, client, cport, server, port, transport, kind, name, name, (), detail, 1, 1, 0)


FILED = Decision(Verdict(VerdictKind.FILED, None, "filed"), Action.LOG, "pass:filed", Mode.MONITOR, "acct")


def cmd(cid: int, typ: int, *rules: tuple[int, str, str], op: int = 0, effect: float = 0, expired: float = 0) -> SecurityCommand:
    return SecurityCommand(cid, typ, op, tuple(Rule(s, a, b) for s, a, b in rules), effect_time=effect, expired_time=expired)


def store_with(tmp_path: Path, *cs: SecurityCommand) -> CommandStore:
    s = CommandStore(tmp_path, house_id="H1")
    for c in cs:
        assert s.apply_security(c, 0.0).result == 0, c
    s.save()
    return s


def test_filter_blocks_per_flow_like_an_order_and_logs_the_command(tmp_path: Path) -> None:
    store_with(tmp_path, cmd(42, 2, (1, "bad.example", "")))
    inj = Inj()
    now = [100.0]
    # a breaker that would be open and a grace period: a command, like an order, is not subject to them
    e = Enforcer(EnforceSettings(grace_seconds=3600, max_blocks_per_minute=1), inj, None, None, clock=lambda: now[0],
                 rules=CommandRules(tmp_path))
    e.breaker.open = True
    d = e(obs("www.bad.example"), FILED)
    assert (d.action, d.rule) == (Action.BLOCK, "order:isms:42")
    assert inj.calls == [("reset", "198.51.100.7", 40000, "203.0.113.5", 443)]  # this flow only
    assert to_record(obs("www.bad.example"), d).order == "isms:42"  # the access log's order column
    assert e(obs("notbad.example"), FILED).action is Action.LOG  # label boundary
    # HTTP gets the block page, DNS answers are only flagged, like orders
    assert e(obs("bad.example", kind=Kind.HTTP_HOST, port=80), FILED).action is Action.BLOCK and inj.calls[-1][0] == "page"
    assert e(obs("bad.example", kind=Kind.DNS_ANSWER), FILED).action is Action.FLAG


def test_monitor_only_flags(tmp_path: Path) -> None:
    store_with(tmp_path, cmd(7, 1, (1, "watch.example", "")))
    inj = Inj()
    e = Enforcer(EnforceSettings(), inj, None, None, rules=CommandRules(tmp_path))
    d = e(obs("watch.example"), FILED)
    assert (d.action, d.rule, inj.calls) == (Action.FLAG, "order:isms-monitor:7", [])
    assert to_record(obs("watch.example"), d).order == "isms-monitor:7"


def test_effect_and_expiry_follow_the_clock(tmp_path: Path) -> None:
    store_with(tmp_path, cmd(1, 2, (1, "t.example", ""), effect=1000.0, expired=2000.0))
    r = CommandRules(tmp_path)
    assert r.match(obs("t.example"), 999.0) is None
    assert r.match(obs("t.example"), 1000.0) is not None
    assert r.match(obs("t.example"), 2000.0) is None  # expired: stops applying without a reload


def test_and_across_subtypes_or_within(tmp_path: Path) -> None:
    store_with(tmp_path, cmd(1, 2, (5, "10.0.0.0", "10.0.0.255"), (5, "10.9.0.0/16", ""), (7, "80", ""), (7, "8000", "8100"),
                             (8, "1", "")))
    r = CommandRules(tmp_path)
    assert r.match(obs("", server="10.0.0.7", port=80, kind=Kind.IP_ONLY), 0)
    assert r.match(obs("", server="10.9.3.3", port=8080, kind=Kind.IP_ONLY), 0)
    assert r.match(obs("", server="10.0.0.7", port=443), 0) is None
    assert r.match(obs("", server="10.0.0.7", port=80, transport=Transport.UDP), 0) is None
    assert r.match(obs("", server="10.0.1.7", port=80), 0) is None


def test_source_ip_and_url_rules(tmp_path: Path) -> None:
    store_with(tmp_path, cmd(1, 2, (4, "192.0.2.10", "")), cmd(2, 2, (2, "http://u.example/bad/", "")))
    r = CommandRules(tmp_path)
    assert r.match(obs("x.example", client="192.0.2.10"), 0) == ("order:isms:1", "block")
    assert r.match(obs("u.example", kind=Kind.HTTP_HOST, detail="method=GET target=/bad/page"), 0) == ("order:isms:2", "block")
    assert r.match(obs("u.example", kind=Kind.HTTP_HOST, detail="method=GET target=/good"), 0) is None
    assert r.match(obs("u.example"), 0) is None  # TLS hides the path: a URL rule never blocks the whole name


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
    assert r.match(obs("a.example"), 0) is not None


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
    want = {c.hit.rule for c, (lo, w) in zip(cs, ranges, strict=True) if lo <= probe <= min(lo + w, 2**32 - 1)}
    got = {c.hit.rule for c in m.candidates(obs("", server=ip, client="::1"))}
    assert got == want
