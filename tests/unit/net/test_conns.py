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
    assert o.ts == T0 and o.packets == 5 and o.detail == "not-named:unwatched-port"
    assert o.octets == 3 * 40 + (40 + 21) + (40 + 11)


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
    assert d.conn_new == sum(1 for o in out if o.kind is Kind.CONN or o.packets)
    assert not d.conn_pending


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
