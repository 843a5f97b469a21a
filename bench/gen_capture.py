"""A realistic mixed capture for the replay benchmark.

    python bench/gen_capture.py OUT.pcap [--packets N] [--new-flows | --conn-flows]

Long-lived flows with bulk data in both directions (most packets, as on a real link), new TLS
connections (real ClientHellos from Python's ssl; some split over segments), HTTP requests,
DNS answers (UDP and TCP), QUIC Initials (aioquic), 20% IPv6. ``--new-flows``: every packet
opens a new flow (a SYN flood / scan), to show flow state stays bounded. ``--conn-flows``: every
packet opens a new flow into or out of hosted space on any port (issue 19, connection records):
TCP SYNs and first UDP datagrams, 20% IPv6, 10% from a hosted host out.
Writes ``OUT.names`` (every name put in) and ``OUT.records.csv`` / ``OUT.inventory.csv``.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys

from beiand.lab import traffic as t

HOSTED4, HOSTED6 = "198.51.100.", "2001:db8:100::"


def frame(src: bytes, dst: bytes, v6: bool, proto: int, l4: bytes) -> bytes:
    if v6:
        ip = struct.pack("!IHBB", 0x60000000, len(l4), proto, 64) + src + dst
        return t.MAC_B + t.MAC_A + b"\x86\xdd" + ip + l4
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0) + src + dst
    return t.MAC_B + t.MAC_A + b"\x08\x00" + ip + l4


def tcp_l4(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0) + payload


def udp_l4(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--new-flows", action="store_true")
    ap.add_argument("--conn-flows", action="store_true")
    a = ap.parse_args()
    rng = random.Random(42)
    names: set[str] = set()
    w = t.PcapWriter(a.out)
    ts = 1_750_000_000.0
    n = 0

    def emit(fr: bytes) -> None:
        nonlocal ts, n
        ts += 0.00001
        w.write(ts, fr)
        n += 1

    def addr(i: int, v6: bool, hosted: bool) -> bytes:
        if v6:
            return t.inet((HOSTED6 if hosted else "2001:db8:1::") + format(i % 65000 + 1, "x"))
        if hosted:
            return t.inet(HOSTED4 + str(i % 250 + 1))
        return t.inet(f"10.{(i >> 8) & 255}.{i & 255}.{i % 250 + 1}")

    if a.conn_flows:
        data = b"\x01" * 32
        for i in range(a.packets):
            v6 = i % 5 == 0
            hosted = addr(i, v6, True)
            outside = t.inet(f"2001:db8:1::{i & 0xFFFF:x}:{(i >> 16) & 0xFFFF:x}") if v6 else struct.pack("!I", 0x0A000000 + i)
            cport, sport = 1024 + i % 60000, 1 + (i * 7919) % 65535
            src, dst = (hosted, outside) if i % 10 == 1 else (outside, hosted)
            if i % 3:
                emit(frame(src, dst, v6, 6, tcp_l4(cport, sport, i, 0, 0x02)))
            else:
                emit(frame(src, dst, v6, 17, udp_l4(cport, sport if sport != 53 else 54, data)))
        w.close()
        write_policy(a.out)
        return

    if a.new_flows:
        payload = b"\x00" * 100
        for i in range(a.packets):
            src = struct.pack("!I", 0x0A000000 + i)
            emit(frame(src, addr(i, False, True), False, 6, tcp_l4(1024 + i % 60000, 443, i, 0, 0x18, payload)))
        w.close()
        return

    hellos = []
    for i in range(300):
        sni = f"site{i}.example{'-cn' if i % 3 else ''}.com.cn" if i % 5 else f"unfiled{i}.example.xyz"
        hellos.append((sni, t.client_hello(sni, ["h2", "http/1.1"], big=(i % 10 == 0))))
    quics = [(f"q{i}.example.top", t.quic_initial_datagrams(f"q{i}.example.top", 1 if i % 2 else 0x6B3343CF)) for i in range(60)]
    bulk = b"\xab" * 1448
    # long-lived flows: (client, server, v6, cport, sport, c_seq, s_seq)
    flows = []
    for i in range(2000):
        v6 = i % 5 == 0
        flows.append([addr(1000 + i, v6, False), addr(i, v6, True), v6, 20000 + i, 443, 1000, 9000])
    port = 30000
    while n < a.packets:
        r = rng.random()
        if r < 0.85:  # bulk on a long-lived flow: mostly server to client, some uploads and ACKs
            f = flows[rng.randrange(len(flows))]
            c, s, v6, cp, sp = f[0], f[1], f[2], f[3], f[4]
            x = rng.random()
            if x < 0.6:
                emit(frame(s, c, v6, 6, tcp_l4(sp, cp, f[6], f[5], 0x10, bulk)))
                f[6] += 1448
            elif x < 0.9:
                emit(frame(c, s, v6, 6, tcp_l4(cp, sp, f[5], f[6], 0x10)))
            else:
                emit(frame(c, s, v6, 6, tcp_l4(cp, sp, f[5], f[6], 0x18, bulk[:600])))
                f[5] += 600
        elif r < 0.93:  # a new TLS connection: handshake, ClientHello (maybe split), some response
            port = port + 1 if port < 65000 else 30000
            v6 = rng.random() < 0.2
            c, s = addr(port, v6, False), addr(rng.randrange(250), v6, True)
            sni, hello = hellos[rng.randrange(len(hellos))]
            names.add(sni)
            emit(frame(c, s, v6, 6, tcp_l4(port, 443, 100, 0, 0x02)))
            emit(frame(s, c, v6, 6, tcp_l4(443, port, 500, 101, 0x12)))
            emit(frame(c, s, v6, 6, tcp_l4(port, 443, 101, 501, 0x10)))
            for off in range(0, len(hello), 1400):
                emit(frame(c, s, v6, 6, tcp_l4(port, 443, 101 + off, 501, 0x18, hello[off : off + 1400])))
            for k in range(3):
                emit(frame(s, c, v6, 6, tcp_l4(443, port, 501 + k * 1448, 101 + len(hello), 0x10, bulk)))
        elif r < 0.96:  # HTTP
            port = port + 1 if port < 65000 else 30000
            c, s = addr(port, False, False), addr(rng.randrange(250), False, True)
            host = f"www{rng.randrange(500)}.example.org"
            names.add(host)
            req = f"GET /index.html HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n".encode()
            emit(frame(c, s, False, 6, tcp_l4(port, 80, 100, 0, 0x02)))
            emit(frame(c, s, False, 6, tcp_l4(port, 80, 101, 501, 0x18, req)))
            emit(frame(s, c, False, 6, tcp_l4(80, port, 501, 101 + len(req), 0x18, bulk)))
        elif r < 0.995:  # DNS answer
            q = f"d{rng.randrange(3000)}.example.net"
            names.add(q)
            wire = t.dns_response(q, [HOSTED4 + str(rng.randrange(1, 250))])
            emit(frame(t.inet("192.0.2.53"), addr(rng.randrange(5000), False, False), False, 17,
                       udp_l4(53, 1024 + rng.randrange(60000), wire)))
        else:  # QUIC
            port = port + 1 if port < 65000 else 30000
            sni, dgs = quics[rng.randrange(len(quics))]
            names.add(sni)
            c, s = addr(port, False, False), addr(rng.randrange(250), False, True)
            for dg in dgs:
                emit(frame(c, s, False, 17, udp_l4(port, 443, dg)))
    w.close()
    with open(a.out + ".names", "w", encoding="utf-8") as f:
        f.write("\n".join(sorted(names)) + "\n")
    write_policy(a.out)
    print(f"{a.out}: {n} packets, {len(names)} names", file=sys.stderr)


def write_policy(out: str) -> None:
    with open(out + ".records.csv", "w", encoding="utf-8") as f:
        f.write("备案号,主办单位,域名,接入商,状态\n")
        for i in range(1, 150):
            f.write(f"京ICP备{10000000 + i}号-1,主办{i},site{i}.example-cn.com.cn,示例云计算有限公司,正常\n")
    with open(out + ".inventory.csv", "w", encoding="utf-8") as f:
        f.write("prefix,account,site,state,mode\n198.51.100.0/24,cust-1,bj,active,\n2001:db8:100::/48,cust-2,sh,active,\n")


if __name__ == "__main__":
    main()
