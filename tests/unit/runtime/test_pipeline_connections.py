"""Connection records through the pipeline (issue 19): direction from the inventory, one record per
flow, named flows decided as before, the sinks that keep them."""

from __future__ import annotations

import io
import json
from pathlib import Path

from beiand.accesslog import AccessLog, LogConfig, Query, query
from beiand.lab import traffic as t
from beiand.model import AccessRecord, Kind, MetricKey, Observation
from beiand.net.decoder import Decoder, DecoderConfig
from beiand.policy import Policy, PolicyConfig
from beiand.policy.inventory import load_inventory
from beiand.records import build_index, load_file
from beiand.runtime.pipeline import Pipeline
from beiand.sinks.accesslog import AccessLogSink, to_record
from beiand.sinks.jsonlines import JsonLines

T0 = 1_790_000_000.0
OUT = "192.0.2.77"  # not hosted
RECORDS = """备案号,主办单位,域名,接入商,状态
京ICP备10000001号-1,主办1,site1.example.cn,示例云计算有限公司,正常
"""


class Collect:
    def __init__(self) -> None:
        self.recs: list[AccessRecord] = []
        self.decided: list[Observation] = []

    def on_decision(self, obs: Observation, d: object, outcome: object = None) -> None:
        self.decided.append(obs)

    def on_connection(self, rec: AccessRecord) -> None:
        self.recs.append(rec)

    def flush(self) -> None:
        pass


def policy(tmp_path: Path) -> Policy:
    (tmp_path / "r.csv").write_text(RECORDS, encoding="utf-8")
    (tmp_path / "i.csv").write_text("prefix,account,site,state,mode\n198.51.100.0/24,cust-1,bj,active,\n"
                                    "2001:db8:100::/48,cust-6,sh,active,\n", encoding="utf-8")
    return Policy(build_index(load_file(tmp_path / "r.csv")), load_inventory(tmp_path / "i.csv"),
                  PolicyConfig(provider="示例云计算有限公司"))


def run(tmp_path: Path, frames: list[bytes], **cfg: object) -> tuple[Pipeline, Collect]:
    col = Collect()
    pipe = Pipeline(Decoder(DecoderConfig(conns=True, **cfg)), policy(tmp_path), [col], gateway="gw-1")  # type: ignore[arg-type]
    pipe.run((T0 + i * 0.001, 1, f) for i, f in enumerate(frames))
    return pipe, col


def test_into_and_out_of_hosted_space_and_neither(tmp_path: Path) -> None:
    frames = [t.tcp(OUT, "198.51.100.5", 40000, 22, 1, 0, 0x02),  # in
              t.udp("198.51.100.6", OUT, 5000, 3478, b"stun"),  # out: a hosted host's datagram
              t.tcp(OUT, "203.0.113.9", 40001, 22, 1, 0, 0x02),  # neither end hosted: no record
              t.tcp("2001:db8:1::1", "2001:db8:100::5", 40002, 8000, 1, 0, 0x02)]
    pipe, col = run(tmp_path, frames)
    got = {(r.server_ip, r.server_port): r for r in col.recs}
    assert set(got) == {("198.51.100.5", 22), (OUT, 3478), ("2001:db8:100::5", 8000)}
    r = got[("198.51.100.5", 22)]
    assert (r.direction, r.account, r.kind, r.verdict, r.action, r.gateway, r.packets) == (
        "in", "cust-1", "conn", "unnamed", "log", "gw-1", 1)
    r = got[(OUT, 3478)]
    assert (r.direction, r.account, r.client_ip, r.transport) == ("out", "cust-1", "198.51.100.6", "udp")
    assert got[("2001:db8:100::5", 8000)].account == "cust-6"
    assert pipe.skipped["conn-not-hosted"] == 1 and pipe.connections == {"in": 2, "out": 1}
    # never decided, never a verdict
    assert not col.decided and not pipe.verdicts and not pipe.kinds
    assert all(len(r) == len(AccessRecord._fields) for r in col.recs)


def test_named_flow_in_is_decided_as_before_and_logged_once(tmp_path: Path) -> None:
    frames = t.tcp_session(OUT, "198.51.100.5", 40003, 443, t.client_hello("site1.example.cn"))
    pipe, col = run(tmp_path, frames)
    assert not col.recs  # its record is the decision's
    (obs,) = col.decided
    assert obs.kind is Kind.TLS_SNI and obs.packets == 3
    assert pipe.verdicts == {"filed": 1}
    rec = to_record(obs, pipe.policy.decide(obs), "gw-1")
    assert (rec.direction, rec.packets, rec.octets, rec.name, rec.verdict) == ("in", 3, obs.octets, "site1.example.cn", "filed")


def test_named_flow_out_of_hosted_space(tmp_path: Path) -> None:
    frames = t.tcp_session("198.51.100.6", OUT, 40004, 443, t.client_hello("www.outside.example"))
    pipe, col = run(tmp_path, frames)
    (r,) = col.recs
    assert (r.direction, r.kind, r.name, r.verdict, r.reason, r.account) == (
        "out", "tls-sni", "www.outside.example", "not-hosted", "not-in-inventory", "cust-1")
    assert pipe.skipped["not-hosted"] == 1 and not pipe.verdicts  # the decision as before: not hosted, no verdict


def test_http_method_and_url_reach_the_log(tmp_path: Path) -> None:
    req = b"POST /login?phone=13800000000 HTTP/1.1\r\nHost: site1.example.cn\r\n\r\n"
    alog = AccessLog(LogConfig(tmp_path / "log", gateway="gw-1"))
    pipe = Pipeline(Decoder(DecoderConfig(conns=True)), policy(tmp_path), [AccessLogSink(alog, "gw-1")], gateway="gw-1")
    frames = [*t.tcp_session(OUT, "198.51.100.5", 40005, 80, req), t.tcp(OUT, "198.51.100.5", 40006, 2222, 1, 0, 0x02)]
    pipe.run((T0 + i * 0.001, 1, f) for i, f in enumerate(frames))
    alog.close()
    recs = sorted(query(tmp_path / "log", Query()), key=lambda r: r.client_port)
    assert [(r.kind, r.method, r.url, r.direction) for r in recs] == [
        ("http-host", "POST", "/login", "in"), ("conn", "", "", "in")]
    # the SYN to 2222 was never answered: an attempt, in its server's summary (issue 32), from its one client
    assert recs[1].gateway == "gw-1" and recs[1].reason.startswith("not-named:attempts n=1 refused=0 unanswered=1 sources=1 ")
    assert (recs[1].client_ip, recs[1].client_port, recs[1].server_port) == (OUT, 40006, 2222)


def test_json_lines_show_connection_records_in_time_order(tmp_path: Path) -> None:
    out = io.BytesIO()
    pipe = Pipeline(Decoder(DecoderConfig(conns=True, conn_window=5.0)), policy(tmp_path), [JsonLines(out, reorder=40.0)])
    frames = [(T0, t.tcp(OUT, "198.51.100.5", 40000, 22, 1, 0, 0x02))]
    frames += [(T0 + 6 + i, f) for i, f in enumerate(t.tcp_session(OUT, "198.51.100.5", 40007, 443,
                                                                     t.client_hello("site1.example.cn")))]
    pipe.run((ts, 1, f) for ts, f in frames)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(x["kind"], x["direction"]) for x in lines] == [("conn", "in"), ("tls-sni", "in")]
    assert [x["ts"] for x in lines] == sorted(x["ts"] for x in lines)


def test_quiet_link_tick_writes_records_whose_window_closed(tmp_path: Path) -> None:
    col = Collect()
    pipe = Pipeline(Decoder(DecoderConfig(conns=True, conn_window=2.0, conn_attempts="each")), policy(tmp_path), [col])
    pipe.feed(T0, t.tcp(OUT, "198.51.100.5", 40000, 22, 1, 0, 0x02), 1)
    pipe.tick(T0 + 1.5)
    assert not col.recs
    pipe.tick(T0 + 3.0)
    assert [r.server_port for r in col.recs] == [22]


def test_attempts_summary_reaches_the_connection_sinks_when_its_window_closes(tmp_path: Path) -> None:
    """Issue 32: a scan's SYNs (refused by the server's RST, or unanswered) become one record per
    server address, written by the pipeline's connection sinks (the daemon's path: worker → pipeline)
    a window after the first attempt fell due; an established flow meanwhile keeps its own."""
    col = Collect()
    out = io.BytesIO()
    pipe = Pipeline(Decoder(DecoderConfig(conns=True, conn_window=2.0)), policy(tmp_path), [col, JsonLines(out)])
    srv = "198.51.100.5"
    for i in range(50):
        pipe.feed(T0 + i * 0.01, t.tcp(f"192.0.2.{100 + i % 3}", srv, 40000 + i, 1000 + i, 1, 0, 0x02), 1)
        if i % 2:
            pipe.feed(T0 + i * 0.01 + 0.001, t.tcp(srv, f"192.0.2.{100 + i % 3}", 1000 + i, 40000 + i, 0, 2, 0x14), 1)
    for i, f in enumerate([t.tcp(OUT, srv, 41000, 22, 1, 0, 0x02), t.tcp(srv, OUT, 22, 41000, 9, 2, 0x12),
                           t.tcp(OUT, srv, 41000, 22, 2, 10, 0x18, b"SSH-2.0-x\r\n")]):
        pipe.feed(T0 + 0.6 + i * 0.001, f, 1)
    pipe.tick(T0 + 2.7)  # the attempts fell due: counted, the summary opens; the established flow's record
    assert [(r.server_port, r.client_port, r.reason.split()[0] == "not-named:attempts") for r in col.recs] == [
        (22, 41000, False)]
    pipe.tick(T0 + 3.5)
    assert len(col.recs) == 1
    pipe.tick(T0 + 5.0)
    (r,) = col.recs[1:]
    assert (r.kind, r.verdict, r.direction, r.account, r.server_ip, r.server_port, r.client_ip, r.client_port) == (
        "conn", "unnamed", "in", "cust-1", srv, 1000, "0.0.0.0", 0)
    assert r.reason == "not-named:attempts n=50 refused=25 unanswered=25 sources=3 ports=1000-1049 distinct=50 span=0.5s"
    assert (r.packets, r.octets, r.ts_ms) == (75, 75 * 40, int(T0 * 1000))
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(x["client"], x["reason"].split()[0]) for x in lines] == [(f"{OUT}:41000", col.recs[0].reason),
                                                                       ("0.0.0.0:0", "not-named:attempts")]
    assert pipe.decoder.metrics()[MetricKey("beiand_connection_attempts", ("refused",))] == 25


def test_no_connection_sink_no_records_built(tmp_path: Path) -> None:
    pipe = Pipeline(Decoder(DecoderConfig(conns=True)), policy(tmp_path), [])
    pipe.run([(T0, 1, t.tcp(OUT, "198.51.100.5", 40000, 22, 1, 0, 0x02))])
    assert not pipe.connections
