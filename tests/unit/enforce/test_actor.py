"""Enforcement pieces without the network: packets, block page, orders, breaker, the enforcer."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from beiand.enforce import Breaker, Enforcer, EnforceSettings, block_page
from beiand.enforce.nfqueue import rule_specs
from beiand.enforce.packets import RST, checksum, tcp_packet
from beiand.model import Action, Decision, Kind, Mode, Observation, Outcome, Overlay, Transport, Verdict, VerdictKind
from beiand.net.decoder import LINKTYPE_RAW, Decoder
from beiand.policy.orders import OrderError, OrderStore


def test_tcp_packets_have_valid_checksums_v4_and_v6() -> None:
    p4 = tcp_packet("198.51.100.1", "192.0.2.2", 443, 40000, 1000, 0, RST)
    assert checksum(p4[:20]) == 0  # the IPv4 header sums to zero with its checksum
    pseudo = p4[12:20] + b"\0\x06" + (len(p4) - 20).to_bytes(2, "big")
    assert checksum(pseudo + p4[20:]) == 0
    p6 = tcp_packet("2001:db8::1", "2001:db8::2", 443, 40000, 7, 9, RST, b"x")
    pseudo6 = p6[8:40] + (len(p6) - 40).to_bytes(4, "big") + b"\0\0\0\x06"
    assert checksum(pseudo6 + p6[40:]) == 0


def test_block_page_is_chinese_first_and_complete() -> None:
    page = block_page("bad.example.xyz", "400-000-0000", "示例云")
    head, _, body = page.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 451 ") and f"Content-Length: {len(body)}".encode() in head
    text = body.decode()
    assert text.index("该网站未在本网络备案") < text.index("This site is not filed")
    assert "bad.example.xyz" in text and "https://beian.miit.gov.cn" in text and "400-000-0000" in text
    assert "<script" not in block_page("<script>x</script>").decode()


def test_orders_persist_match_names_below_and_expire(tmp_path: Path) -> None:
    st = OrderStore(tmp_path)
    st.add("bad.example.cn", "京通管〔2026〕1号", "ordered")
    st.add("198.51.100.9", "京通管〔2026〕2号", "", until=time.time() - 1)
    again = OrderStore(tmp_path)
    assert again.match("www.bad.example.cn", "198.51.100.1", time.time()).order == "京通管〔2026〕1号"  # type: ignore[union-attr]
    assert again.match("good.example.cn", "198.51.100.9", time.time()) is None  # expired
    with pytest.raises(OrderError):
        st.add("x.cn", " ", "")
    st.remove("bad.example.cn")
    with pytest.raises(OrderError):
        st.remove("bad.example.cn")
    (tmp_path / "orders.json").write_text("{broken")
    with pytest.raises(OrderError, match="damaged"):
        OrderStore(tmp_path)


def test_breaker_opens_on_block_rate_and_on_unfiled_share_and_closes() -> None:
    b = Breaker(max_blocks=5, max_share=0.5, min_verdicts=10)
    for _ in range(6):
        b.record(100.0, True, True)
    assert b.open and "blocks" in b.why
    b.close()
    assert not b.open
    for i in range(20):
        b.record(200.0, i % 4 != 0, False)  # 75% unfiled
    assert b.open and "broken records feed" in b.why


def obs(name: str = "bad.example.xyz", kind: Kind = Kind.TLS_SNI) -> Observation:
    return Observation(time.time(), "192.0.2.2", 40000, "198.51.100.11", 443, Transport.TCP, kind, name, name, (), "", 100, 200, 50)


def decision(action: Action = Action.BLOCK) -> Decision:
    return Decision(Verdict(VerdictKind.UNFILED, None, "no-filing"), action, "enforce:unfiled", Mode.ENFORCE, "cust", "")


class FakeInjector:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def reset_both(self, *a: object, **kw: object) -> None:
        self.calls.append(("reset", a))

    def block_page(self, *a: object, **kw: object) -> None:
        self.calls.append(("page", a))


def test_enforcer_acts_only_on_blocks_and_reports_the_breaker_as_its_outcome() -> None:
    """Issue 26: the enforcer acts on a finished decision and never rewrites it; what it could not
    do is its outcome. Orders (decided by the policy's overlay) are carried out past the breaker."""
    inj = FakeInjector()
    e = Enforcer(EnforceSettings(inline=True, max_blocks_per_minute=3), inj, None)  # type: ignore[arg-type]
    flag = e(obs(), decision(Action.FLAG))
    assert flag == (decision(Action.FLAG), False, Outcome.NONE) and not inj.calls
    done = e.enforce(obs(), decision())
    assert done == (decision(), True, Outcome.DONE) and inj.calls[-1][0] == "reset"  # inline: the verdict is a value
    # the client gets a RST at its ack number, from the server
    assert inj.calls[-1][1][:7] == ("192.0.2.2", 40000, "198.51.100.11", 443, 100, 200, 50)
    assert e(obs(kind=Kind.HTTP_HOST), decision()).outcome is Outcome.DONE and inj.calls[-1][0] == "page"
    n = len(inj.calls)
    assert e(obs(kind=Kind.DNS_ANSWER), decision()).outcome is Outcome.NONE and len(inj.calls) == n  # not a connection
    for _ in range(5):
        e(obs(), decision())
    assert e.breaker.open
    held = e(obs(), decision())
    assert held == (decision(), False, Outcome.BREAKER_OPEN)  # the decision as decided, the outcome beside it
    ordered = decision()._replace(by=Overlay.ORDER, ref="京通管〔2026〕3号", rule="order:京通管〔2026〕3号")
    assert e(obs(), ordered) == (ordered, True, Outcome.DONE)  # orders are executed even with the breaker open
    assert e.outcomes == {Outcome.DONE: 3, Outcome.BREAKER_OPEN: 6}


def test_a_failed_action_is_counted_and_its_outcome_logged_beside_the_decision() -> None:
    from beiand.sinks.accesslog import to_record

    class Broken(FakeInjector):
        def reset_both(self, *a: object, **kw: object) -> None:
            raise OSError("no route")

    e = Enforcer(EnforceSettings(), Broken(), None)  # type: ignore[arg-type]
    d, _drop, outcome = e(obs(), decision())
    assert d == decision() and outcome is Outcome.FAILED and e.errors == {"reset": 1}
    rec = to_record(obs(), d, outcome=outcome)
    assert (rec.action, rec.outcome) == ("flag", "failed")  # the log says what was done, and why
    assert to_record(obs(), d, outcome=Outcome.DONE).action == "block"


def test_decoder_gives_the_tcp_sequence_the_enforcer_needs() -> None:
    from beiand.lab import traffic as t

    frame = t.tcp("192.0.2.2", "198.51.100.11", 40000, 443, 5000, ack=777, payload=t.client_hello("a.example.cn"))
    got = Decoder().feed(0.0, frame[14:], LINKTYPE_RAW)
    assert got and got[0].tcp_seq == 5000 and got[0].tcp_ack == 777 and got[0].tcp_len == len(frame) - 54


def test_nfqueue_rules_are_bypass_connbytes_and_balanced() -> None:
    rules = rule_specs([443, 80], [443], 4, 2, 8)
    jumps = [r.spec for r in rules if r.chain == "FORWARD"]
    # TCP's first packets, the rest of a later HTTP head, later heads and what could hide one (issue 32); UDP's first
    assert len(jumps) == 6
    for s in (jumps[0], jumps[5]):
        assert "--connbytes" in s and "0:8" in s and "beiand" in s
    (queue,) = [r.spec for r in rules if "NFQUEUE" in r.spec]
    assert "--queue-bypass" in queue and "4:5" in queue
    assert any("--queue-num" in r.spec for r in rule_specs([443], [], 0, 1, 8))


class FakeNft:
    def __init__(self) -> None:
        self.added: list[tuple[str, object, int]] = []

    def add(self, set_name: str, value: object, timeout: int = 0) -> None:
        self.added.append((set_name, value, timeout))


def test_an_ip_only_block_stops_that_flow_only() -> None:
    """Issue 13: a Host-less request or an SNI-less ClientHello must not black-hole a shared IP:port."""
    inj, nft = FakeInjector(), FakeNft()
    e = Enforcer(EnforceSettings(inline=False), inj, nft)  # type: ignore[arg-type]
    ip_only = obs("", Kind.IP_ONLY)
    assert e(ip_only, decision()).outcome is Outcome.DONE and inj.calls[-1][0] == "reset"
    assert inj.calls[-1][1][:4] == ("192.0.2.2", 40000, "198.51.100.11", 443)  # this connection
    assert nft.added == []  # nothing that blocks other clients or other names on this address
    # QUIC without SNI: the flow's own 4-tuple, never the server alone
    quic = ip_only._replace(transport=Transport.UDP)
    assert e(quic, decision()).outcome is Outcome.DONE
    assert nft.added == [("quic4", ("192.0.2.2", 40000, "198.51.100.11", 443), 30)]


def test_cidr_orders_match_every_address_in_the_prefix_and_lifted_orders_stay_in_history(tmp_path: Path) -> None:
    st = OrderStore(tmp_path)
    st.add("198.51.100.0/24", "京通管〔2026〕4号", "ordered", by="alice")
    st.add("2001:db8:5::/48", "京通管〔2026〕5号", "", by="alice")
    now = time.time()
    assert st.match("", "198.51.100.77", now).order == "京通管〔2026〕4号"  # type: ignore[union-attr]
    assert st.match("a.example.cn", "2001:db8:5::9", now).order == "京通管〔2026〕5号"  # type: ignore[union-attr]
    assert st.match("", "198.51.101.1", now) is None
    st.remove("198.51.100.0/24", by="bob", reason="lifting notice 京通管〔2026〕9号")
    again = OrderStore(tmp_path)
    assert again.match("", "198.51.100.77", time.time() + 1) is None
    # Issue 26: judged at an observation's own time, a lifted order still decides what came before
    # its lifting (replay of a capture taken then decides as the daemon did)
    assert again.match("", "198.51.100.77", now).order == "京通管〔2026〕4号"  # type: ignore[union-attr]
    assert again.match("", "198.51.100.77", again.history[0].order.created - 1) is None  # not before it was entered
    (h,) = again.history
    assert (h.order.order, h.order.created_by, h.lifted_by, h.lift_reason) == ("京通管〔2026〕4号", "alice", "bob",
                                                                              "lifting notice 京通管〔2026〕9号")
    assert h.lifted_at >= h.order.created


def test_block_cli_takes_cidr_targets_and_reports_lifted_orders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from beiand.cli import main

    sd = ["--state-dir", str(tmp_path)]
    assert main(["block", "add", "198.51.100.0/24", "--order", "京通管〔2026〕6号", "--by", "carol", *sd]) == 0
    assert "every address in this prefix" in capsys.readouterr().out
    assert main(["block", "add", "198.51.100.1/24", "--order", "x", *sd]) == 2  # host bits: a typo, refused
    assert "not a CIDR prefix" in capsys.readouterr().err
    assert main(["block", "remove", "198.51.100.0/24", "--reason", "lifted by the authority", "--by", "dave", *sd]) == 0
    capsys.readouterr()
    assert main(["block", "list", "--all", "--json", *sd]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["target"], row["state"], row["created_by"], row["lifted_by"], row["lift_reason"]) == (
        "198.51.100.0/24", "lifted", "carol", "dave", "lifted by the authority")


def test_inline_drop_is_returned_by_the_pipeline_not_left_on_the_enforcer(tmp_path: Path) -> None:
    """The NFQUEUE verdict comes back from Pipeline.feed (True: drop); a non-blocking decision passes."""
    from beiand.enforce.actor import Enforced
    from beiand.runtime.pipeline import Pipeline

    calls = []

    def actor(o: Observation, d: Decision) -> Enforced:
        calls.append(o)
        return Enforced(d, drop=True)

    class Deciding:
        inventory = type("I", (), {"lookup": staticmethod(lambda ip: None)})()

        def decide(self, o: Observation) -> Decision:
            return decision()

    class OneObs:
        def feed(self, ts: float, frame: bytes, linktype: int) -> list[Observation]:
            return [obs()] if frame else []

    pipe = Pipeline(OneObs(), Deciding(), actor=actor)  # type: ignore[arg-type]
    assert pipe.feed(1.0, b"x", LINKTYPE_RAW) is True and len(calls) == 1
    assert pipe.feed(1.0, b"", LINKTYPE_RAW) is False
    assert not hasattr(Enforcer(EnforceSettings()), "drop_current")


def test_the_block_page_is_sent_in_segments_that_fit_any_path() -> None:
    """A block page for a long name (or a page that grew) was one segment over the 1,500-byte MTU:
    the raw send failed (EMSGSIZE), the request was dropped and the visitor saw nothing. Now in
    segments of at most 1,200 bytes of page, in sequence, FIN on the last; the server reset."""
    from beiand.enforce.packets import Injector

    sent: list[tuple[bytes, str]] = []
    inj = Injector.__new__(Injector)
    inj.send = lambda pkt, dst: sent.append((pkt, dst))  # type: ignore[method-assign]
    page = block_page("a" * 60 + ".example.xyz", "400-000-0000", "示例云计算有限公司")
    assert len(page) > 1460
    inj.block_page("192.0.2.2", 40000, "198.51.100.11", 80, 1000, 5000, 80, page, server_saw_segment=False)
    to_client = [p for p, dst in sent if dst == "192.0.2.2"]
    assert len(to_client) >= 2 and all(len(p) <= 1280 for p, _ in sent)
    seqs = [int.from_bytes(p[24:28], "big") for p in to_client]
    payloads = [p[40:] for p in to_client]
    assert b"".join(payloads) == page and seqs == [5000 + sum(map(len, payloads[:i])) for i in range(len(payloads))]
    flags = [p[33] for p in to_client]
    assert all(f & 0x01 == 0 for f in flags[:-1]) and flags[-1] & 0x01  # FIN on the last only
    assert [p[33] & 0x04 for p, dst in sent if dst == "198.51.100.11"] == [0x04]  # the server reset
