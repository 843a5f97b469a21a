"""Regenerate the corpus: ``python tests/corpus/make_corpus.py``.

Each case is a folder with ``input.pcap``, ``expect.jsonl`` (one decision per line: kind, name,
server, verdict, reason, action) and a README giving purpose and provenance. The records and
inventory every case is judged against are ``records.csv`` and ``inventory.csv`` here; the
policy is: provider 示例云计算有限公司, allowlist name ``status.example-cdn.com``, suffix
``trusted.example``, prefix ``198.51.100.250/32``, access-pending grace 30 days.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from beiand.lab import encap
from beiand.lab import traffic as t

HERE = Path(__file__).parent
C = "192.0.2.10"
T0 = 1_750_000_000.0  # 2025-06-15: access-pending filings reviewed 2025-06-01 are in grace

CASES: dict[str, dict] = {
    "tls-filed": {"readme": "TLS 1.3 ClientHello (Python ssl) for a filed name on its filed IP.",
                  "sessions": [("198.51.100.10", 443, ("tls", "www.example.com.cn"))],
                  "expect": [("tls-sni", "www.example.com.cn", "198.51.100.10", "filed", "filed", "log")]},
    "tls-idn-split": {"readme": "ClientHello for an IDN (例子.中国) padded past one segment, sent in 3 segments out of order.",
                      "sessions": [("198.51.100.10", 443, ("tls-big", "www.xn--fsqu00a.xn--fiqs8s"), [2, 0, 1])],
                      "expect": [("tls-sni", "www.xn--fsqu00a.xn--fiqs8s", "198.51.100.10", "filed", "filed", "log")]},
    "tls-unfiled-enforced": {"readme": "Unfiled name on an enforce prefix: block.",
                             "sessions": [("203.0.113.10", 443, ("tls", "unfiled.example.xyz"))],
                             "expect": [("tls-sni", "unfiled.example.xyz", "203.0.113.10", "unfiled", "no-filing", "block")]},
    "http-mismatch-provider": {"readme": "HTTP Host of a name filed through another provider (接入商).",
                               "sessions": [("198.51.100.12", 80, ("http", "shop.example.net"))],
                               "expect": [("http-host", "shop.example.net", "198.51.100.12", "mismatch", "other-provider", "flag")]},
    "http-ip-drift": {"readme": "A filed name served from an IP its filing does not list (O4 drift).",
                      "sessions": [("198.51.100.21", 8080, ("http", "api.shapp.cn"))],
                      "expect": [("http-host", "api.shapp.cn", "198.51.100.21", "mismatch", "ip-not-listed", "flag")]},
    "http-inactive": {"readme": "Cancelled (注销), revoked (吊销) and under-review filings.",
                      "sessions": [("198.51.100.13", 80, ("http", "old.example.org")), ("198.51.100.13", 80, ("http", "bad.example.org")),
                                   ("198.51.100.13", 80, ("http", "new.example.org"))],
                      "expect": [("http-host", "old.example.org", "198.51.100.13", "inactive", "filing-cancelled", "flag"),
                                 ("http-host", "bad.example.org", "198.51.100.13", "inactive", "filing-revoked", "flag"),
                                 ("http-host", "new.example.org", "198.51.100.13", "inactive", "filing-under-review", "flag")]},
    "quic-unfiled": {"readme": "QUIC v1 and v2 Initials from aioquic for unfiled names.",
                     "quic": [("198.51.100.14", "quic1.example.top", 1), ("198.51.100.14", "quic2.example.top", 0x6B3343CF)],
                     "expect": [("quic-sni", "quic1.example.top", "198.51.100.14", "unfiled", "no-filing", "flag"),
                                ("quic-sni", "quic2.example.top", "198.51.100.14", "unfiled", "no-filing", "flag")]},
    "ip-only": {"readme": "TLS without SNI: to a filed IP, an unfiled IP, and an unknown protocol to an IP whose filing lists other names.",
                "sessions": [("198.51.100.30", 443, ("tls", None)), ("198.51.100.31", 443, ("tls", None)),
                             ("198.51.100.30", 443, ("raw", b"\x00\x01\x02binary")), ("198.51.100.30", 443, ("tls", "extra.example.biz"))],
                "expect": [("ip-only", "", "198.51.100.30", "filed", "filed", "log"), ("ip-only", "", "198.51.100.31", "unfiled", "ip-not-filed", "flag"),
                           ("ip-only", "", "198.51.100.30", "filed", "filed", "log"),
                           ("tls-sni", "extra.example.biz", "198.51.100.30", "unfiled", "name-not-in-filing", "flag")]},
    "dns-answers": {"readme": "DNS answers (dnspython) pointing names at hosted and non-hosted addresses, with a CNAME chain.",
                    "dns": [("www.example.com.cn", ["198.51.100.10"], []), ("cdn.unfiled.example.xyz", ["198.51.100.11"], ["edge.cdn.example.net"]),
                            ("elsewhere.example.com", ["100.64.1.1"], [])],
                    "expect": [("dns-answer", "www.example.com.cn", "198.51.100.10", "filed", "filed", "log"),
                               ("dns-answer", "cdn.unfiled.example.xyz", "198.51.100.11", "unfiled", "no-filing", "flag")]},
    "exempt-and-not-hosted": {"readme": "Allowlisted name, suffix and prefix; a server outside hosted space; a closed prefix.",
                              "sessions": [("198.51.100.40", 443, ("tls", "status.example-cdn.com")), ("198.51.100.40", 443, ("tls", "a.trusted.example")),
                                           ("198.51.100.250", 443, ("tls", "anything.example")), ("100.64.0.1", 443, ("tls", "www.example.com.cn")),
                                           ("192.0.2.200", 443, ("tls", "www.example.com.cn"))],
                              "expect": [("tls-sni", "status.example-cdn.com", "198.51.100.40", "exempt", "allowlist-name", "log"),
                                         ("tls-sni", "a.trusted.example", "198.51.100.40", "exempt", "allowlist-suffix", "log"),
                                         ("tls-sni", "anything.example", "198.51.100.250", "exempt", "allowlist-prefix", "log"),
                                         ("tls-sni", "www.example.com.cn", "100.64.0.1", "not-hosted", "not-in-inventory", "log"),
                                         ("tls-sni", "www.example.com.cn", "192.0.2.200", "not-hosted", "prefix-closed", "log")]},
    "access-pending": {"readme": "接入审核中 filings: one inside its 30-day grace, one past it.",
                       "sessions": [("198.51.100.15", 443, ("tls", "pending.example.cn")), ("198.51.100.15", 443, ("tls", "late.example.cn"))],
                       "expect": [("tls-sni", "pending.example.cn", "198.51.100.15", "filed", "access-pending-grace", "log"),
                                  ("tls-sni", "late.example.cn", "198.51.100.15", "mismatch", "access-pending-expired", "flag")]},
    "encapsulated": {"readme": "Names inside the encapsulations of IDC links and mirror ports (issue 15): QinQ inside VXLAN, "
                                "GTP-U with an extension header, PPPoE with a compressed PPP protocol field inside GRE, "
                                "MPLS inside Geneve, ERSPAN II, VLAN inside IP-in-IP; a draft-29 QUIC Initial and a "
                                "Google QUIC Q043 CHLO among them.",
                     "wrapped": [(("qinq", "vxlan"), ("198.51.100.10", 443, ("tls", "www.example.com.cn"))),
                                 (("gtpu-ext",), ("203.0.113.10", 443, ("tls", "unfiled.example.xyz"))),
                                 (("pppoe-compressed", "gre"), ("198.51.100.12", 80, ("http", "shop.example.net"))),
                                 (("mpls", "geneve"), ("198.51.100.14", 443, ("quic-draft29", "quic29.example.top"))),
                                 (("erspan",), ("198.51.100.14", 443, ("gquic", "gq.example.top"))),
                                 (("vlan", "ipip"), ("198.51.100.10", 53, ("dns", "www.example.com.cn")))],
                     "expect": [("tls-sni", "www.example.com.cn", "198.51.100.10", "filed", "filed", "log"),
                                ("tls-sni", "unfiled.example.xyz", "203.0.113.10", "unfiled", "no-filing", "block"),
                                ("http-host", "shop.example.net", "198.51.100.12", "mismatch", "other-provider", "flag"),
                                ("quic-sni", "quic29.example.top", "198.51.100.14", "unfiled", "no-filing", "flag"),
                                ("quic-sni", "gq.example.top", "198.51.100.14", "unfiled", "no-filing", "flag"),
                                ("dns-answer", "www.example.com.cn", "198.51.100.10", "filed", "filed", "log")]},
    "conn-records": {"readme": "Connection records (issue 19): SSH-like TCP on port 2222 and a UDP service on 27015 into "
                              "hosted space (no name: kind conn), a hosted host connecting out (named TLS: its name with "
                              "the not-hosted verdict; and unnamed, to port 25), and a flow between two outside hosts "
                              "(no record). Connection records carry a direction.",
                     "raw": [("tcp", C, "198.51.100.60", 40100, 2222, b"SSH-2.0-corpus\r\n"),
                             ("udp", C, "203.0.113.61", 40101, 27015, b"\x01game"),
                             ("tls", "198.51.100.62", "192.0.2.9", 40102, 443, "outside.example.com"),
                             ("tcp", "198.51.100.62", "192.0.2.9", 40103, 25, b"EHLO corpus\r\n"),
                             ("tcp", C, "192.0.2.9", 40104, 22, b"SSH-2.0-corpus\r\n")],
                     "expect": [("tls-sni", "outside.example.com", "192.0.2.9", "not-hosted", "not-in-inventory", "log", "out"),
                                ("tls-sni", "outside.example.com", "192.0.2.9", "not-hosted", "not-in-inventory", "log"),
                                ("conn", "", "198.51.100.60", "unnamed", "not-named:unwatched-port", "log", "in"),
                                ("conn", "", "203.0.113.61", "unnamed", "not-named:unwatched-port", "log", "in"),
                                ("conn", "", "192.0.2.9", "unnamed", "not-named:unwatched-port", "log", "out")]},
}
RECORDS = """备案号,主办单位,服务类型,网站名称,域名,IP,接入商,状态,审核时间
京ICP备12345678号-1,北京示例科技有限公司,网站,示例官网,example.com.cn;例子.中国,,示例云计算有限公司,正常,2024-03-01
沪ICP备2023000001号-2A,上海应用有限公司,APP,示例APP,api.shapp.cn,198.51.100.20,示例云计算有限公司,正常,2024-05-20
粤B2-20090059-5,深圳经营性有限公司,网站,商城,shop.example.net,,某某数据有限公司,正常,2023-01-01
浙ICP备87654321号-1,杭州注销有限公司,网站,旧站,old.example.org,,示例云计算有限公司,已注销,2020-01-01
浙ICP备87654322号-1,杭州吊销有限公司,网站,坏站,bad.example.org,,示例云计算有限公司,已吊销,2020-01-01
浙ICP备87654323号-1,杭州新站有限公司,网站,新站,new.example.org,,示例云计算有限公司,审核中,2025-06-10
京ICP备11112222号-1,北京IP站有限公司,网站,IP站,other.example.biz,198.51.100.30,示例云计算有限公司,正常,2024-01-01
苏ICP备20250601号-1,苏州待接入有限公司,网站,待接入,pending.example.cn,,示例云计算有限公司,接入审核中,2025-06-01
苏ICP备20250401号-1,苏州过期有限公司,网站,过期,late.example.cn,,示例云计算有限公司,接入审核中,2025-04-01
"""
INVENTORY = """prefix,account,site,state,mode
198.51.100.0/24,cust-0001,bj-yz-1,active,
203.0.113.0/24,cust-0003,gz-1,active,enforce
192.0.2.128/25,cust-old,sh-1,closed,
"""


def build_case(name: str, spec: dict) -> None:
    d = HERE / name
    d.mkdir(exist_ok=True)
    frames: list[bytes] = []
    port = 40000
    for sess in spec.get("sessions", []):
        server, dport, (what, arg), *order = sess
        port += 1
        if what == "tls":
            data = t.client_hello(arg, ["h2", "http/1.1"])
        elif what == "tls-big":
            data = t.client_hello(arg, ["h2"], big=True)
        elif what == "http":
            data = f"GET / HTTP/1.1\r\nHost: {arg}\r\nUser-Agent: corpus\r\n\r\n".encode()
        else:
            data = arg
        frames += t.tcp_session(C, server, port, dport, data, segment=1200, order=order[0] if order else None)
    for server, sni, version in spec.get("quic", []):
        port += 1
        frames += [t.udp(C, server, port, 443, dg) for dg in t.quic_initial_datagrams(sni, version)]
    for qname, addrs, cnames in spec.get("dns", []):
        port += 1
        frames.append(t.udp("192.0.2.53", C, 53, port, t.dns_response(qname, addrs, cnames)))
    for steps, (server, dport, (what, arg)) in spec.get("wrapped", []):
        port += 1
        if what == "quic-draft29":  # draft-ietf-quic-tls-29 section 5.2 salt
            inner = [t.udp(C, server, port, dport, t.quic_initial(arg, 0xFF00001D, bytes.fromhex(
                "afbfec289993d24c9e9786f19c6111e04390a899"), dcid=port.to_bytes(8, "big")))]
        elif what == "gquic":
            inner = [t.udp(C, server, port, dport, t.gquic_chlo(arg, b"Q043"))]
        elif what == "dns":
            inner = [t.udp("192.0.2.53", C, 53, port, t.dns_response(arg, [server]))]
        elif what == "http":
            inner = t.tcp_session(C, server, port, dport, f"GET / HTTP/1.1\r\nHost: {arg}\r\n\r\n".encode())
        else:
            inner = t.tcp_session(C, server, port, dport, t.client_hello(arg, ["h2"]))
        frames += [encap.wrap(f[14:], list(steps)) for f in inner]
    for what, client, server, cport, sport, data in spec.get("raw", []):
        if what == "udp":
            frames += [t.udp(client, server, cport, sport, data), t.udp(server, client, sport, cport, data)]
        else:
            payload = t.client_hello(data, ["h2"]) if what == "tls" else data
            frames += t.tcp_session(client, server, cport, sport, payload)
            frames.append(t.tcp(server, client, sport, cport, 5001, 1001 + len(payload), 0x10))
    t.write_pcap(d / "input.pcap", frames, t0=T0)
    keys = ("kind", "name", "server", "verdict", "reason", "action", "direction")  # direction: connection records
    (d / "expect.jsonl").write_text("".join(json.dumps(dict(zip(keys, e, strict=False)), ensure_ascii=False) + "\n"
                                            for e in spec["expect"]), encoding="utf-8")
    (d / "README.md").write_text(f"# {name}\n\n{spec['readme']}\n\nProvenance: generated by `tests/corpus/make_corpus.py` "
                                 "(real ClientHellos from Python's ssl, QUIC Initials from aioquic, DNS from dnspython; "
                                 "frames built with struct).\n", encoding="utf-8")


def main() -> None:
    (HERE / "records.csv").write_text(RECORDS, encoding="utf-8")
    (HERE / "inventory.csv").write_text(INVENTORY, encoding="utf-8")
    only = set(sys.argv[1:])  # case names: rebuild only these (ClientHellos differ on every run)
    for name, spec in CASES.items():
        if not only or name in only:
            build_case(name, spec)


if __name__ == "__main__":
    sys.exit(main())
