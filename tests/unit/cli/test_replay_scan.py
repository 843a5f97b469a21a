"""`beiand replay` of a port scan (issue 32): 100,000 SYNs write a few attempts summaries, while the
established flows sent during the scan each keep their own record."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest

from beiand.accesslog import Query, query
from beiand.cli.main import main
from beiand.lab import traffic as t

SCANNER = "203.0.113.66"
HOSTED = [f"198.51.100.{20 + i}" for i in range(5)]
RECORDS = """备案号,主办单位,域名,接入商,状态
京ICP备10000001号-1,主办1,site1.example.cn,示例云计算有限公司,正常
"""
T0 = 1_790_000_000.0


def _frame(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int) -> bytes:
    # Ethernet + IPv4 + TCP without checksums (the decoder reads none): built with struct, not scapy,
    # so that 130,000 frames take well under a second
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 40, 0, 0x4000, 64, 6, 0) + src + dst
    return t.MAC_B + t.MAC_A + b"\x08\x00" + ip + struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 65535, 0, 0)


def scan_capture(path: Path, syns: int, seconds: float = 1.7) -> list[tuple[str, int, str, int]]:
    """``syns`` SYNs from one scanner with random source ports to random ports of five hosted
    addresses, a third refused by the server's RST (the rest unanswered), and eight established
    HTTPS and HTTP flows from other clients interleaved. Returns the established flows."""
    rng = random.Random(32)
    scanner = t.inet(SCANNER)
    hosted = [t.inet(h) for h in HOSTED]
    step = seconds / syns
    established: list[tuple[str, int, str, int]] = []
    sessions: dict[int, list[bytes]] = {}
    for k in range(8):
        client, server, port = f"192.0.2.{10 + k}", HOSTED[k % 5], 443 if k % 2 else 80
        data = t.client_hello("site1.example.cn") if port == 443 else b"GET / HTTP/1.1\r\nHost: site1.example.cn\r\n\r\n"
        sessions[(k + 1) * syns // 9] = t.tcp_session(client, server, 50000 + k, port, data)
        established.append((client, 50000 + k, server, port))
    with t.PcapWriter(path) as w:
        for i in range(syns):
            ts = T0 + i * step
            dst, cport, sport = hosted[rng.randrange(5)], rng.randrange(1024, 65536), rng.randrange(1, 65536)
            w.write(ts, _frame(scanner, dst, cport, sport, i, 0, 0x02))
            if i % 3 == 0:
                w.write(ts + step / 2, _frame(dst, scanner, sport, cport, 0, i + 1, 0x14))
            for j, f in enumerate(sessions.get(i, ())):
                w.write(ts + j * step / 8, f)
    return established


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("policy")
    (d / "r.csv").write_text(RECORDS, encoding="utf-8")
    (d / "i.csv").write_text("prefix,account,site,state,mode\n198.51.100.0/24,cust-1,bj,active,\n", encoding="utf-8")
    return ["--records", str(d / "r.csv"), "--inventory", str(d / "i.csv")]


def _replay(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[dict[str, object]]:
    main(["replay", *argv])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_100k_syn_scan_writes_a_few_summaries_and_every_established_flow_its_record(
        tmp_path: Path, policy: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    pcap = tmp_path / "scan.pcap"
    established = scan_capture(pcap, 100_000)
    lines = _replay(capsys, [str(pcap), *policy, "--json", "--log-dir", str(tmp_path / "log"), "--gateway", "gw"])
    logged = list(query(tmp_path / "log", Query()))
    assert len(logged) == len(lines) <= 30  # not 100,000: bounded by the hosted addresses and windows
    summaries = [x for x in lines if str(x["reason"]).startswith("not-named:attempts")]
    assert sorted(x["server"].rsplit(":", 1)[0] for x in summaries) == HOSTED  # type: ignore[union-attr]
    counts = [dict(w.split("=", 1) for w in str(x["reason"]).split()[1:]) for x in summaries]
    assert sum(int(c["n"]) for c in counts) == 100_000
    assert sum(int(c["refused"]) for c in counts) == 33_334
    assert all(c["sources"] == "1" and c["distinct"] == "1024+" for c in counts)
    assert all(x["client"].startswith(SCANNER + ":") and x["kind"] == "conn" for x in summaries)  # type: ignore[union-attr]
    # every established flow has its own record, named and decided as without the scan
    own = {(x["client"], x["server"]) for x in lines if x not in summaries}
    assert own == {(f"{c}:{cp}", f"{s}:{sp}") for c, cp, s, sp in established}
    assert {x["name"] for x in lines if x not in summaries} == {"site1.example.cn"}
    assert {r.reason.split()[0] for r in logged if r.kind == "conn"} == {"not-named:attempts"}


def test_each_writes_a_record_per_attempt(tmp_path: Path, policy: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    pcap = tmp_path / "scan.pcap"
    established = scan_capture(pcap, 2_000)
    lines = _replay(capsys, [str(pcap), *policy, "--json", "--attempts", "each"])
    assert len(lines) == 2_000 + len(established)
    assert not [x for x in lines if str(x["reason"]).startswith("not-named:attempts")]
    summarised = _replay(capsys, [str(pcap), *policy, "--json", "--workers", "2"])
    assert len(summarised) <= 2 * 5 + len(established)  # one summary per address and window in each worker at most
