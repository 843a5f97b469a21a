"""Connection records (issue 19): flow starts on any port, one record per flow, coalescing, URL bounds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from beiand.lab import traffic as t
from beiand.model import Kind, Observation, Transport
from beiand.net.conns import bound_url, client_first
from beiand.net.decoder import Decoder, DecoderConfig

C, S, C6, S6 = "192.0.2.10", "198.51.100.10", "2001:db8:1::10", "2001:db8:100::10"
T0 = 1_700_000_000.0


def run(frames: list[tuple[float, bytes]], **cfg: object) -> list[Observation]:
    d = Decoder(DecoderConfig(conns=True, **cfg))  # type: ignore[arg-type]
    out: list[Observation] = []
    for ts, fr in frames:
        out += d.feed(ts, fr)
    out += d.flush()
    return out


def conns(obs: list[Observation]) -> list[Observation]:
    return [o for o in obs if o.kind is Kind.CONN]


def test_ssh_on_an_odd_port_is_one_record_with_counts() -> None:
    frames = [(T0, t.tcp(C, S, 40000, 2222, 1, 0, 0x02)), (T0 + 0.001, t.tcp(S, C, 2222, 40000, 9, 2, 0x12)),
              (T0 + 0.002, t.tcp(C, S, 40000, 2222, 2, 10, 0x10)),
              (T0 + 0.003, t.tcp(S, C, 2222, 40000, 10, 2, 0x18, b"SSH-2.0-OpenSSH_9.2\r\n")),
              (T0 + 0.004, t.tcp(C, S, 40000, 2222, 2, 31, 0x18, b"SSH-2.0-x\r\n"))]
    got = run(frames)
    assert len(got) == 1
    o = got[0]
    assert (o.client_ip, o.client_port, o.server_ip, o.server_port, o.transport) == (C, 40000, S, 2222, Transport.TCP)
    # read at its first bytes (any port, issue 32): not TLS, HTTP or QUIC
    assert o.ts == T0 and o.packets == 5 and o.detail == "not-named:unrecognised"
    assert o.octets == 3 * 40 + (40 + 21) + (40 + 11)
    got = run(frames, any_port=False)
    assert got[0].detail == "not-named:unwatched-port"


def test_named_flow_is_one_record_carrying_the_connection() -> None:
    frames = [(T0 + i * 0.001, f) for i, f in enumerate(t.tcp_session(C, S, 40001, 443, t.client_hello("a.example.cn")))]
    got = run(frames)
    assert [o.kind for o in got] == [Kind.TLS_SNI]
    assert got[0].name == "a.example.cn" and got[0].packets == 3 and got[0].octets > 200


def test_http_request_adds_method_and_bounded_path_without_query() -> None:
    req = b"GET /a/b?user=13800000000&t=1 HTTP/1.1\r\nHost: w.example.cn\r\n\r\n"
    frames = [(T0 + i * 0.001, f) for i, f in enumerate(t.tcp_session(C, S, 40002, 80, req))]
    (o,) = run(frames)
    assert (o.kind, o.method, o.url) == (Kind.HTTP_HOST, "GET", "/a/b")
    assert "13800000000" not in o.url
    (o,) = run(frames, url_query=True)
    assert o.url == "/a/b?user=13800000000&t=1"
    (o,) = run(frames, url_max=3)
    assert o.url == "/a/"


def test_udp_first_datagram_idle_timeout_and_coalescing() -> None:
    def dg(ts: float, back: bool = False) -> tuple[float, bytes]:
        return (ts, t.udp(S, C, 27015, 5000, b"x" * 10) if back else t.udp(C, S, 5000, 27015, b"y" * 20))

    # two datagrams and an answer within the window: one record, 3 packets
    got = conns(run([dg(T0), dg(T0 + 1, True), dg(T0 + 2)], conn_window=10.0, conn_udp_idle=5.0))
    assert len(got) == 1 and got[0].packets == 3 and (got[0].client_ip, got[0].server_port) == (C, 27015)
    # silent longer than the idle timeout, after the window: a new flow, a second record
    got = conns(run([dg(T0), dg(T0 + 30)], conn_window=10.0, conn_udp_idle=5.0))
    assert [o.ts for o in got] == [T0, T0 + 30] and [o.packets for o in got] == [1, 1]
    # silent longer than the idle timeout but inside the window: coalesced into the one record
    got = conns(run([dg(T0), dg(T0 + 7)], conn_window=10.0, conn_udp_idle=5.0))
    assert len(got) == 1 and got[0].packets == 2
    # steady traffic past the window: still the same flow, no second record
    got = conns(run([dg(T0 + k) for k in range(40)], conn_window=10.0, conn_udp_idle=5.0))
    assert len(got) == 1 and got[0].packets == 11  # counted until its record was written


def test_tcp_port_reuse_after_the_window_is_a_new_flow_and_within_it_is_coalesced() -> None:
    syn = t.tcp(C, S, 40000, 2222, 1, 0, 0x02)
    fin = t.tcp(C, S, 40000, 2222, 2, 0, 0x11)
    got = conns(run([(T0, syn), (T0 + 1, fin), (T0 + 2, syn)], conn_window=10.0))
    assert len(got) == 1 and got[0].packets == 3
    got = conns(run([(T0, syn), (T0 + 1, fin), (T0 + 20, syn)], conn_window=10.0))
    assert [o.ts for o in got] == [T0, T0 + 20]


def test_record_written_when_its_window_closes_not_before() -> None:
    d = Decoder(DecoderConfig(conns=True, conn_window=5.0, conn_attempts="each"))
    assert d.feed(T0, t.tcp(C, S, 40000, 2222, 1, 0, 0x02)) == []
    assert conns(d.feed(T0 + 3, t.udp("192.0.2.99", "192.0.2.98", 1, 2, b""))) == []
    out = d.feed(T0 + 6.5, t.udp("192.0.2.99", "192.0.2.98", 1, 2, b""))
    assert [(o.server_port, o.detail) for o in conns(out)] == [(2222, "not-named:unwatched-port")]


def test_flow_waiting_for_its_name_is_held_then_logged_once() -> None:
    """A SYN on 443, the ClientHello 8 s later: with a 2 s window the record waits for the name."""
    d = Decoder(DecoderConfig(conns=True, conn_window=2.0))
    out = list(d.feed(T0, t.tcp(C, S, 40003, 443, 1000, 0, 0x02)))
    for k in range(1, 8):
        out += d.feed(T0 + k, t.udp("192.0.2.99", "192.0.2.98", 1, 2, b""))
    out += d.feed(T0 + 8, t.tcp(C, S, 40003, 443, 1001, 5001, 0x18, t.client_hello("late.example.cn")))
    out += d.flush()
    mine = [o for o in out if o.server_port == 443]
    assert [(o.kind, o.name, o.packets) for o in mine] == [(Kind.TLS_SNI, "late.example.cn", 2)]


def test_syn_only_and_midstream_and_unrecognised_reasons() -> None:
    # a SYN alone on a watched port: the name pipeline forgets it after flow_timeout, the record says so
    tick = t.udp("192.0.2.99", "192.0.2.98", 1, 2, b"")
    syn = [(T0, t.tcp(C, S, 40000, 443, 1, 0, 0x02)), (T0 + 40, tick), (T0 + 80, tick)]
    got = conns(run(syn, conn_attempts="each"))
    assert [o.detail for o in got if o.server_port == 443] == ["not-named:no-data"]
    # summarised (the default): an attempt, never answered
    got = conns(run(syn))
    assert [o.detail.split()[:2] for o in got if o.server_port == 443] == [["not-named:attempts", "n=1"]]
    # answered by the server's SYN+ACK, no data: established, a record of its own
    got = conns(run([syn[0], (T0 + 0.01, t.tcp(S, C, 443, 40000, 7, 2, 0x12)), *syn[1:]]))
    assert [o.detail for o in got if o.server_port == 443] == ["not-named:no-data"]
    got = conns(run([(T0, t.tcp(C, S, 40000, 443, 1, 5, 0x18, b"\x00" * 50))]))
    assert [o.detail for o in got] == ["not-named:midstream"]
    got = run([(T0 + i, f) for i, f in enumerate(t.tcp_session(C, S, 40000, 443, b"\x00" * 50))])
    # the name pipeline gives up (its own ip-only record) and that record is the connection's
    assert [(o.kind, o.detail, o.packets) for o in got] == [(Kind.IP_ONLY, "unknown-protocol", 3)]


def test_server_answer_seen_first_is_oriented_to_the_server() -> None:
    (o,) = conns(run([(T0, t.tcp(S, C, 22, 50000, 1, 5, 0x18, b"x" * 10))]))
    assert (o.client_ip, o.client_port, o.server_ip, o.server_port) == (C, 50000, S, 22)
    (o,) = conns(run([(T0, t.udp(S, C, 53, 50000, b"\0" * 12))]))
    assert (o.client_ip, o.server_port, o.detail) == (C, 53, "not-named:dns")


def test_ipv6_flows() -> None:
    got = conns(run([(T0, t.tcp(C6, S6, 40000, 2222, 1, 0, 0x02)), (T0, t.udp(C6, S6, 5000, 9999, b"z"))]))
    assert sorted((o.transport, o.client_ip, o.server_ip, o.octets) for o in got) == [
        (Transport.TCP, C6, S6, 60), (Transport.UDP, C6, S6, 49)]


def test_off_by_default_and_when_off() -> None:
    d = Decoder()
    assert d.feed(T0, t.tcp(C, S, 40000, 2222, 1, 0, 0x02)) == [] and d.flush() == []


def test_pending_table_is_bounded_oldest_written_early() -> None:
    frames = [(T0 + i * 0.001, t.tcp(C, S, 10000 + i, 2222, 1, 0, 0x02)) for i in range(50)]
    d = Decoder(DecoderConfig(conns=True, conn_max=10, conn_attempts="each"))
    out: list[Observation] = []
    for ts, fr in frames:
        out += d.feed(ts, fr)
        assert len(d.conn_pending) <= 10
    assert len(conns(out)) == 40 and all(o.detail == "not-named:table-full" for o in out)
    assert d.stats["conn:written-early"] == 40
    assert len(conns(d.flush())) == 10


def test_tunnel_outer_flow_is_not_a_connection_its_inner_flow_is() -> None:
    inner = t.tcp(C, S, 40000, 2222, 1, 0, 0x02)
    vx = t.udp("203.0.113.1", "203.0.113.2", 55555, 4789, b"\x08\0\0\0\0\0\x01\0" + inner)
    (o,) = conns(run([(T0, vx)]))
    assert (o.client_ip, o.server_port) == (C, 2222)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from([C, S, C6]), st.integers(1, 65535), st.integers(1, 65535), st.booleans(),
                          st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11, 0x04]), st.binary(max_size=30),
                          st.floats(0, 200)), max_size=40))
def test_every_flow_logged_exactly_once(pkts: list[tuple[str, int, int, bool, int, bytes, float]]) -> None:
    """Whatever arrives, each flow the decoder started is written once: as a conn record or with its name."""
    d = Decoder(DecoderConfig(conns=True, conn_window=10.0, conn_udp_idle=5.0))
    out: list[Observation] = []
    for src, sp, dp, udp, flags, payload, dt in sorted(pkts, key=lambda p: p[-1]):
        dst = S6 if ":" in src else (C if src == S else S)
        fr = t.udp(src, dst, sp, dp, payload) if udp else t.tcp(src, dst, sp, dp, 1, 0, flags, payload)
        out += d.feed(T0 + dt, fr)
    out += d.flush()
    # attempts (issue 32) are counted once, into the summaries
    summaries = [o for o in out if o.kind is Kind.CONN and o.detail.startswith("not-named:attempts")]
    own = sum(1 for o in out if (o.kind is Kind.CONN or o.packets) and o not in summaries)
    assert d.conn_new == own + d.stats["conn:attempts"]
    assert d.stats["conn:attempts"] == sum(int(o.detail.split()[1][2:]) for o in summaries)
    assert len(summaries) == d.stats["conn:attempt-summaries"]
    assert not d.conn_pending and not d.attempts


@given(st.text(max_size=600), st.integers(0, 300), st.booleans())
def test_bound_url_is_bounded_printable_and_queryless(target: str, n: int, keep: bool) -> None:
    u = bound_url(target, n, keep)
    assert len(u) <= n and u.isprintable()
    if not keep:
        assert "?" not in u and "#" not in u


def test_bound_url_absolute_form() -> None:
    assert bound_url("http://a.example.cn/x/y?q=1", 100, False) == "/x/y"
    assert bound_url("http://a.example.cn", 100, False) == "/"
    assert bound_url("/p\tq", 100, False) == "/p%09q"


def test_client_first() -> None:
    ports = frozenset({443, 53})
    assert client_first(0x02, 40000, 22, ports) and not client_first(0x12, 22, 40000, ports)
    assert not client_first(0x10, 443, 40000, ports) and client_first(0x10, 40000, 443, ports)
    assert not client_first(0x10, 22, 40000, ports) and client_first(0x10, 40000, 50000, ports)


def test_records_have_every_observation_field() -> None:
    """The decoder builds them with tuple.__new__ (no defaults filled in): a field added to
    Observation must be added there too."""
    got = run([(T0, t.tcp(C, S, 40000, 2222, 1, 0, 0x02)), (T0, t.udp(C6, S6, 5000, 9999, b"z"))])
    assert got and all(len(o) == len(Observation._fields) and o.method == "" and o.url == "" for o in got)


# -- attempts (issue 32): flows never answered are summarised per server address and window -----

TICK = t.udp("192.0.2.99", "192.0.2.98", 1, 2, b"")


def syn(c: str, s: str, cport: int, sport: int) -> bytes:
    return t.tcp(c, s, cport, sport, 1, 0, 0x02)


def rst(c: str, s: str, cport: int, sport: int) -> bytes:  # the server's refusal (RST+ACK), as Linux sends it
    return t.tcp(s, c, sport, cport, 0, 2, 0x14)


def attempts(obs: list[Observation]) -> list[Observation]:
    return [o for o in obs if o.kind is Kind.CONN and o.detail.startswith("not-named:attempts")]


def own(o: Observation) -> bool:
    """A record of the flow's own (its five-tuple, not-named for whatever reason), not a summary."""
    return o.kind is Kind.CONN and o.detail.startswith("not-named:") and not o.detail.startswith("not-named:attempts")


def fields(o: Observation) -> dict[str, str]:
    return dict(w.split("=", 1) for w in o.detail.split()[1:])


def test_a_syn_alone_is_an_unanswered_attempt_in_a_summary() -> None:
    (o,) = run([(T0, syn(C, S, 40000, 2222))])
    assert (o.kind, o.client_ip, o.client_port, o.server_ip, o.server_port, o.transport) == (
        Kind.CONN, C, 40000, S, 2222, Transport.TCP)
    assert o.detail == "not-named:attempts n=1 refused=0 unanswered=1 sources=1 ports=2222-2222 distinct=1 span=0.0s"
    assert (o.ts, o.packets, o.octets) == (T0, 1, 40)


def test_a_syn_refused_by_the_servers_rst() -> None:
    (o,) = run([(T0, syn(C, S, 40000, 2222)), (T0 + 0.001, rst(C, S, 40000, 2222))])
    assert fields(o)["refused"] == "1" and fields(o)["unanswered"] == "0" and o.packets == 2
    # the client's own RST is no refusal: unanswered still
    (o,) = run([(T0, syn(C, S, 40000, 2222)), (T0 + 0.001, t.tcp(C, S, 40000, 2222, 2, 0, 0x04))])
    assert fields(o)["refused"] == "0" and fields(o)["unanswered"] == "1"


def test_established_flows_keep_their_own_record() -> None:
    sa = t.tcp(S, C, 2222, 40000, 9, 2, 0x12)
    # SYN, SYN+ACK, data: its own record, as before
    data = [(T0, syn(C, S, 40000, 2222)), (T0 + 0.001, sa), (T0 + 0.002, t.tcp(C, S, 40000, 2222, 2, 10, 0x18, b"hello"))]
    assert [(own(o), o.packets) for o in run(data)] == [(True, 3)]
    # SYN, SYN+ACK, no data, FIN: its own record
    fin = [(T0, syn(C, S, 40000, 2222)), (T0 + 0.001, sa), (T0 + 0.002, t.tcp(C, S, 40000, 2222, 2, 10, 0x11))]
    assert [own(o) for o in run(fin)] == [True]
    # SYN+ACK alone answers it
    assert [own(o) for o in run(fin[:2])] == [True]
    # the capture missed the SYN+ACK but the server's data came (or a FIN without data): answered
    assert [own(o) for o in run([fin[0], (T0 + 0.003, t.tcp(S, C, 2222, 40000, 10, 2, 0x18, b"SSH-2.0-x\r\n"))])] == [True]
    assert [own(o) for o in run([fin[0], (T0 + 0.003, t.tcp(S, C, 2222, 40000, 10, 2, 0x11))])] == [True]
    # refused, then a SYN again in the window that the server answers: established
    again = [(T0, syn(C, S, 40000, 2222)), (T0 + 0.001, rst(C, S, 40000, 2222)), (T0 + 1, syn(C, S, 40000, 2222)),
             (T0 + 1.001, sa)]
    assert [own(o) for o in run(again)] == [True]


def test_each_keeps_a_record_per_attempt_as_before() -> None:
    frames = [(T0 + i * 0.001, syn(C, S, 40000 + i, 1000 + i)) for i in range(20)]
    frames += [(T0 + 0.5, rst(C, S, 40000, 1000))]
    got = run(frames, conn_attempts="each")
    assert len(got) == 20 and {o.detail for o in got} == {"not-named:unwatched-port"}
    assert [(o.client_port, o.server_port) for o in sorted(got)] == [(40000 + i, 1000 + i) for i in range(20)]


def test_sources_and_ports_are_counted_with_bounds() -> None:
    from beiand.net.conns import ATTEMPT_PORTS, ATTEMPT_SOURCES

    frames = [(T0 + i * 0.0001, syn(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", S, 1024 + i % 60000, 1 + i % 3000))
              for i in range(4000)]
    frames += [(T0 + 0.5, rst("10.0.0.0", S, 1024, 1)), (T0 + 0.6, syn(C, "198.51.100.99", 40000, 22))]
    got = attempts(run(frames))
    assert [o.server_ip for o in got] == [S, "198.51.100.99"]
    o, one = got
    assert fields(o) == {"n": "4000", "refused": "1", "unanswered": "3999", "sources": f"{ATTEMPT_SOURCES}+",
                         "ports": "1-3000", "distinct": f"{ATTEMPT_PORTS}+", "span": "0.4s"}
    assert (o.client_ip, o.client_port, o.server_port, o.packets) == ("0.0.0.0", 0, 1, 4001)  # several: the placeholder
    assert (one.client_ip, one.client_port) == (C, 40000)
    # exact below the bounds; one source on several ports: that source, port 0 when it used several
    (o,) = run([(T0 + i * 0.01, syn(C, S, 40000 + i % 2, 5000 - i)) for i in range(10)])
    assert (fields(o)["sources"], fields(o)["distinct"], fields(o)["ports"]) == ("1", "10", "4991-5000")
    assert (o.client_ip, o.client_port, o.server_port) == (C, 0, 4991)
    (o,) = run([(T0, syn(C6, S6, 40000, 22)), (T0, syn("2001:db8:1::11", S6, 40000, 23))])
    assert (o.client_ip, o.server_ip, fields(o)["sources"]) == ("::", S6, "2")
    assert len(o.detail) <= 256


def test_the_summary_is_written_a_window_after_its_first_attempt_fell_due() -> None:
    d = Decoder(DecoderConfig(conns=True, conn_window=5.0))
    assert d.feed(T0, syn(C, S, 40000, 2222)) == []
    assert d.feed(T0 + 4, syn(C, S, 40001, 2223)) == []
    assert attempts(d.feed(T0 + 6.5, TICK)) == []  # the first falls due: counted, its summary opens (until T0 + 11.5)
    assert d.stats["conn:attempts"] == 1 and len(d.attempts) == 1
    assert attempts(d.feed(T0 + 9.5, TICK)) == []  # the second falls due: into the open summary
    assert attempts(d.feed(T0 + 11.0, TICK)) == []
    (o,) = attempts(d.feed(T0 + 12.5, TICK))  # (the decoder sweeps at most once a second)
    assert fields(o)["n"] == "2" and fields(o)["span"] == "4.0s" and o.ts == T0
    assert d.stats["conn:attempt-summaries"] == 1 and not d.attempts
    # a later attempt opens a new summary
    assert d.feed(T0 + 20, syn(C, S, 40002, 2224)) == []
    assert attempts(d.feed(T0 + 26, TICK)) == [] and [fields(o)["n"] for o in attempts(d.flush())] == ["1"]


def test_attempts_are_summarised_when_the_pending_table_is_full_too() -> None:
    frames = [(T0 + i * 0.001, syn(C, S, 10000 + i, 2222)) for i in range(50)]
    d = Decoder(DecoderConfig(conns=True, conn_max=10))
    out: list[Observation] = []
    for ts, fr in frames:
        out += d.feed(ts, fr)
    out += d.flush()
    (o,) = out
    assert fields(o)["n"] == "50" and d.stats["conn:written-early"] == 40 and d.stats["conn:attempts"] == 50


def test_summaries_held_are_bounded() -> None:
    """Many servers, each scanned: beyond conn_max / 4 summaries (or conn_max addresses and ports
    held), the oldest is written early; every attempt is still counted once."""
    d = Decoder(DecoderConfig(conns=True, conn_max=64, conn_window=1.0))
    out: list[Observation] = []
    for i in range(3000):
        out += d.feed(T0 + i * 0.001, syn(f"10.0.{i % 7}.1", f"198.51.{i % 200}.{i % 250}", 1024 + i, 1 + i % 400))
        assert len(d.attempts) <= 16 and d._attempts_held <= 64
    out += d.flush()
    assert sum(int(fields(o)["n"]) for o in attempts(out)) == 3000 == d.stats["conn:attempts"]
    assert d.stats["conn:attempt-summaries-early"] > 0
    assert d._attempts_held == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(1024, 1100), st.integers(1, 40),
                          st.sampled_from(["none", "rst", "synack", "data", "fin", "synack-data"]), st.floats(0, 100)),
                max_size=60),
       st.sampled_from([5.0, 30.0]))
def test_established_flows_keep_their_records_and_the_summaries_add_up(
        flows: list[tuple[int, int, int, int, str, float]], window: float) -> None:
    """Any mix of established flows and attempts: every established flow has its own record, and the
    summaries count every attempt once, refused and unanswered adding up."""
    frames: list[tuple[float, bytes]] = []
    seen: dict[tuple[str, int, str, int], str] = {}
    for srv, cli, cport, sport, answer, dt in flows:
        c, s = f"192.0.2.{cli + 1}", f"198.51.100.{srv + 1}"
        if (c, cport, s, sport) in seen:  # one flow per five-tuple (a reuse would coalesce)
            continue
        seen[(c, cport, s, sport)] = answer
        ts = T0 + dt
        frames.append((ts, syn(c, s, cport, sport)))
        if answer == "rst":
            frames.append((ts + 0.001, rst(c, s, cport, sport)))
        if answer.startswith("synack"):
            frames.append((ts + 0.001, t.tcp(s, c, sport, cport, 9, 2, 0x12)))
        if answer.endswith("data"):
            frames.append((ts + 0.002, t.tcp(c, s, cport, sport, 2, 10, 0x18, b"x")))
        if answer == "fin":
            frames.append((ts + 0.002, t.tcp(c, s, cport, sport, 2, 10, 0x11)))
    frames.sort(key=lambda f: f[0])
    got = run(frames, conn_window=window)
    own = {(o.client_ip, o.client_port, o.server_ip, o.server_port) for o in got if o not in attempts(got)}
    established = {k for k, a in seen.items() if a not in ("none", "rst")}
    assert own == established and len(got) - len(attempts(got)) == len(established)
    summaries = [fields(o) for o in attempts(got)]
    assert sum(int(f["n"]) for f in summaries) == sum(1 for a in seen.values() if a in ("none", "rst"))
    assert sum(int(f["refused"]) for f in summaries) == sum(1 for a in seen.values() if a == "rst")
    assert all(int(f["refused"]) + int(f["unanswered"]) == int(f["n"]) for f in summaries)
    # at most one summary per server address and (open) window
    per_server: dict[str, list[float]] = {}
    for o in attempts(got):
        per_server.setdefault(o.server_ip, []).append(o.ts)
    assert all(len(v) <= 2 + 100 / window for v in per_server.values())
