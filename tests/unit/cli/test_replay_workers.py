"""`beiand replay --workers N`: shards of one capture add up to the whole, flow for flow."""

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import beiand.capture.pcap as pcap
from beiand.capture import CaptureReader
from beiand.capture.pcap import shard_key
from beiand.cli import main
from beiand.lab import traffic as t
from beiand.lab.demo import build
from beiand.net.decoder import Decoder

WATCHED = frozenset({80, 443, 8080, 8443})


def _fragments(src: str, dst: str, payload: bytes, ident: int) -> list[bytes]:
    """One UDP datagram (a DNS answer from port 53) cut into IPv4 fragments of 64 bytes."""
    udp = struct.pack("!HHHH", 53, 40000 + ident, 8 + len(payload), 0) + payload
    out = []
    for off in range(0, len(udp), 64):
        part = udp[off : off + 64]
        more = 0x2000 if off + 64 < len(udp) else 0
        out.append(t.ether(t.ip_header(src, dst, 17, len(part), ident=ident, frag=more | (off >> 3)) + part))
    return out


def _mixed_capture() -> list[bytes]:
    """Many clients and servers: TLS (split, out of order), HTTP, IPv6, VLAN tags, QUIC, DNS
    answers whole and fragmented, bulk both ways, and frames that are not IP at all."""
    frames: list[bytes] = []
    for i in range(40):
        cli, srv = f"10.0.{i // 7}.{i + 1}", f"198.51.100.{i % 9 + 1}"
        hello = t.client_hello(f"s{i}.example.com.cn", ["h2"], big=i % 4 == 0)
        frames += t.tcp_session(cli, srv, 30000 + i, 443, hello, order=[1, 0, 2] if i % 4 == 0 else None)
        frames.append(t.tcp(srv, cli, 443, 30000 + i, 5001, 1, 0x10, b"\xab" * 900))  # the answer
        frames.append(t.tcp(cli, srv, 30000 + i, 443, 1, 5001, 0x10))  # a bare ACK
    for i in range(10):
        frames += t.tcp_session(f"2001:db8:1::{i + 1}", "2001:db8:100::7", 31000 + i, 80,
                                f"GET / HTTP/1.1\r\nHost: v6-{i}.example.org\r\n\r\n".encode())
        frames.append(t.udp(f"10.9.0.{i + 1}", "198.51.100.20", 32000 + i, 53, b"q" * 20, vlan=[100 + i]))
        frames.append(t.tcp(f"10.8.0.{i + 1}", "198.51.100.21", 33000 + i, 8080, 7, 0, 0x02, vlan=[7, 8]))
        frames.append(t.tcp(f"10.8.0.{i + 1}", "198.51.100.21", 33000 + i, 8080, 8, 1, 0x18,
                            f"GET /x HTTP/1.1\r\nHost: vlan-{i}.example.net\r\n\r\n".encode(), vlan=[7, 8]))
        answer = t.dns_response(f"d{i}.example.net", [f"198.51.100.{i + 30}"], cnames=[f"c{i}.cdn.example"] * 6)
        frames += _fragments("192.0.2.53", f"10.7.0.{i + 1}", answer, ident=500 + i)
        frames.append(t.udp("192.0.2.53", f"10.6.0.{i + 1}", 53, 41000 + i, t.dns_response(f"u{i}.example.net", ["198.51.100.40"])))
        frames.append(b"\xff" * 12 + b"\x08\x06" + b"\x00" * 28)  # ARP: no IP header
    for i, dg in enumerate(t.quic_initial_datagrams("q.example.top")):
        frames.append(t.udp("10.5.0.1", "198.51.100.50", 44000, 443, dg) if i < 8 else dg)
    return frames


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    frames = _mixed_capture()
    t.write_pcap(d / "mixed.pcap", frames)
    return d / "mixed.pcap", frames


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_partition_every_record(capture, n):
    path, frames = capture
    seen = []
    for k in range(n):
        r = CaptureReader(path, shard=(k, n))
        mine = [f for _, _, f in r]
        assert r.records == len(frames)  # every reader still counts the whole file
        assert all(shard_key(f, 1) % n == k for f in mine)
        seen += mine
    assert sorted(seen) == sorted(frames)


def test_shard_key_keeps_flows_and_fragments_together():
    a = t.tcp("10.0.0.1", "198.51.100.1", 1000, 443, 1, 0, 0x02)
    b = t.tcp("10.0.0.1", "198.51.100.1", 1000, 443, 2, 1, 0x18, b"x" * 300, vlan=[5])
    frags = _fragments("192.0.2.53", "10.0.0.9", b"y" * 300, ident=9)
    assert shard_key(a, 1) == shard_key(b, 1) == shard_key(a[14:], 101) == shard_key(b"\x00" * 14 + b"\x08\x00" + a[14:], 113)
    assert len({shard_key(f, 1) for f in frags}) == 1 and len(frags) > 2
    v6 = t.udp("2001:db8::1", "2001:db8::2", 5, 443, b"z")
    assert shard_key(v6, 1) == shard_key(v6[14:], 229)
    # the server's answers (its SYN+ACK, its RST) go with the client's packets (connection records, issue 32)
    assert shard_key(t.tcp("198.51.100.1", "10.0.0.1", 443, 1000, 9, 2, 0x12), 1) == shard_key(a, 1)
    assert shard_key(t.udp("2001:db8::2", "2001:db8::1", 443, 5, b"z"), 1) == shard_key(v6, 1)
    assert shard_key(b"", 1) == shard_key(b"\x00\x01", 276) == shard_key(b"\x45", 101) == shard_key(b"x" * 60, 147) == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk=st.integers(min_value=1, max_value=4000), n=st.integers(min_value=1, max_value=3))
def test_chunk_boundaries_change_nothing(capture, monkeypatch, chunk, n):
    path, _frames = capture
    whole = [(ts, f) for k in range(n) for ts, _, f in CaptureReader(path, shard=(k, n))]
    monkeypatch.setattr(pcap, "CHUNK", chunk)  # records straddle chunk boundaries everywhere
    cut = [(ts, f) for k in range(n) for ts, _, f in CaptureReader(path, shard=(k, n))]
    assert cut == whole
    # and with the user-space capture filter on, the observations are the same
    d = Decoder()
    obs = [o for k in range(n) for ts, lt, f in CaptureReader(path, skip_tcp_from=WATCHED, shard=(k, n))
           for o in d.feed(ts, f, lt)] + d.flush()
    d2 = Decoder()
    ref = [o for ts, f in whole for o in d2.feed(ts, f, 1)] + d2.flush()
    assert sorted(obs) == sorted(ref)


def test_truncated_file_with_small_chunks(capture, monkeypatch, tmp_path):
    path, frames = capture
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(path.read_bytes()[:-5])
    monkeypatch.setattr(pcap, "CHUNK", 333)
    r = CaptureReader(cut)
    assert [f for _, _, f in r] == frames[:-1] and r.truncated and r.records == len(frames) - 1


def _replay(capsys, argv):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_workers_decide_exactly_as_one_process(capture, capsys, tmp_path):
    path, _ = capture
    demo = build(tmp_path / "demo")
    common = ["replay", str(path), demo["pcap"], "--records", demo["records"], "--inventory", str(tmp_path / "inv.csv"), "--json"]
    (tmp_path / "inv.csv").write_text("prefix,account,site,state,mode\n198.51.100.0/24,c1,bj,active,\n"
                                      "2001:db8:100::/48,c2,sh,active,\n", encoding="utf-8")
    rc1, out1, err1 = _replay(capsys, [*common, "--workers", "1", "--log-dir", str(tmp_path / "log1")])
    rc3, out3, err3 = _replay(capsys, [*common, "--workers", "3", "--log-dir", str(tmp_path / "log3")])
    one, three = out1.splitlines(), out3.splitlines()
    assert rc1 == rc3 == 1
    assert len(one) > 60 and sorted(one) == sorted(three)
    names = {json.loads(line)["name"] for line in three}
    assert {"s0.example.com.cn", "s4.example.com.cn", "v6-3.example.org", "vlan-9.example.net", "d4.example.net",
            "u1.example.net", "q.example.top", "api.shapp.cn"} <= names
    # One capture alone: the merged lines are in time order, as one process writes them.
    single = ["replay", str(path), "--records", demo["records"], "--inventory", str(tmp_path / "inv.csv"), "--json"]
    _, alone1, _ = _replay(capsys, [*single, "--workers", "1"])
    _, alone3, _ = _replay(capsys, [*single, "--workers", "3"])
    stamps = [json.loads(line)["ts"] for line in alone3.splitlines()]
    assert len(stamps) > 60 and stamps == sorted(stamps) and sorted(alone3.splitlines()) == sorted(alone1.splitlines())
    assert "by 3 workers" in err3
    assert err1.split("packets ")[1].split(" (")[0] == err3.split("packets ")[1].split(" (")[0]  # same record count
    written = [int(e.split("access log: ")[1].split(" ")[0]) for e in (err1, err3)]
    assert written[0] == written[1] == len(one)
    assert main(["logs", "verify", "--log-dir", str(tmp_path / "log3")]) == 0
    assert len(list((tmp_path / "log3").glob("*/w*.open"))) == 3  # one partition chain per worker


@pytest.mark.parametrize("workers", ["1", "2"])
def test_json_lines_held_on_disk_come_out_as_from_memory(capture, capsys, tmp_path, monkeypatch, workers):
    """Issue 28: the lines held back for time order go to disk beyond a memory budget; the output,
    one process's or the merge of the workers', is the same line for line."""
    import beiand.sinks.jsonlines as jsonlines

    path, _ = capture
    demo = build(tmp_path / "demo")
    (tmp_path / "inv.csv").write_text("prefix,account,site,state,mode\n198.51.100.0/24,c1,bj,active,\n"
                                      "2001:db8:100::/48,c2,sh,active,\n", encoding="utf-8")
    argv = ["replay", str(path), "--records", demo["records"], "--inventory", str(tmp_path / "inv.csv"), "--json", "--workers", workers]
    _, in_memory, _ = _replay(capsys, argv)
    monkeypatch.setattr(jsonlines, "HOLD_BYTES", 0)  # every line to disk, each its own run,
    monkeypatch.setattr(jsonlines, "MAX_RUNS", 3)  # and the runs merged into one again and again
    _, on_disk, _ = _replay(capsys, argv)
    stamps = [json.loads(line)["ts"] for line in on_disk.splitlines()]
    assert on_disk == in_memory and len(stamps) > 60 and stamps == sorted(stamps)
    assert any(json.loads(line)["kind"] == "conn" for line in on_disk.splitlines())


def test_summary_table_adds_up_over_workers(capture, capsys, tmp_path):
    path, _ = capture
    demo = build(tmp_path / "demo")
    argv = ["replay", str(path), "--records", demo["records"]]
    _, out1, _ = _replay(capsys, [*argv, "--workers", "1"])
    _, out2, _ = _replay(capsys, [*argv, "--workers", "2"])
    assert out1.split("\npackets")[0] == out2.split("\npackets")[0]  # the table and the top names


def test_a_worker_error_is_reported_once(capture, capsys, tmp_path):
    path, _ = capture
    bad = bytearray(path.read_bytes())
    bad[len(bad) // 2 : len(bad) // 2 + 64] = b"\xff" * 64  # a corrupt record header in the middle
    (tmp_path / "bad.pcap").write_bytes(bytes(bad))
    demo = build(tmp_path / "demo")
    rc, _, err = _replay(capsys, ["replay", str(tmp_path / "bad.pcap"), "--records", demo["records"], "--workers", "2"])
    assert rc == 2 and err.count("corrupt file") == 1
    rc, _, err = _replay(capsys, ["replay", str(path), "--records", demo["records"], "--workers", "0"])
    assert rc == 2 and "--workers 0: expected 1..64" in err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_reader_that_goes_away_ends_the_run_quietly(tmp_path, workers):
    import subprocess
    import sys

    hello = t.client_hello("gone.example.com.cn")
    frames = [f for i in range(1500) for f in t.tcp_session(f"10.1.{i // 250}.{i % 250 + 1}", "198.51.100.9", 30000 + i, 443, hello)]
    t.write_pcap(tmp_path / "many.pcap", frames)  # ~1,500 JSON lines: more than a pipe holds
    demo = build(tmp_path / "demo")
    p = subprocess.Popen([sys.executable, "-m", "beiand.cli", "replay", str(tmp_path / "many.pcap"), "--records", demo["records"],
                          "--inventory", demo["inventory"], "--json", "--workers", workers],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    first = json.loads(p.stdout.readline())
    p.stdout.close()  # as `| head -1` does
    err = p.stderr.read().decode()
    assert p.wait(60) == 0 and first["name"] == "gone.example.com.cn"
    assert "Traceback" not in err and "Broken pipe" not in err


@pytest.mark.parametrize("shard", [(0, 1), (0, 2), (1, 2), (2, 3)])
def test_pcap_and_pcapng_select_the_same_frames(capture, tmp_path, shard):
    path, frames = capture
    ng = tmp_path / "mixed.pcapng"
    t.write_pcapng(ng, [(0, 1_700_000_000 + i * 0.001, f) for i, f in enumerate(frames)], [1])
    a, b = CaptureReader(path, skip_tcp_from=WATCHED, shard=shard), CaptureReader(ng, skip_tcp_from=WATCHED, shard=shard)
    got_a, got_b = [f for _, _, f in a], [f for _, _, f in b]
    assert got_a == got_b and a.records == b.records == len(frames)
    assert a.prefiltered == b.prefiltered > 0  # the servers' answers and the bare ACKs
