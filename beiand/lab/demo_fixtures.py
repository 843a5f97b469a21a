"""Generate the demo's samples: a filing export, an inventory and a capture.

``beiand demo`` ships their output as package data (``beiand/demo_data/``), made ahead of time
by ``python -m beiand.lab.demo_fixtures beiand/demo_data``, so a plain install replays it
without the traffic builders (aioquic, dnspython at build time only). The traffic holds filed,
unfiled, other-provider (mismatch), cancelled, IDN, IP-only, QUIC and DNS cases so every verdict
shows. ``tests/unit/test_demo.py`` checks that the shipped files still match this generator.
"""

from __future__ import annotations

import csv
from pathlib import Path

from beiand.lab import traffic as t
from beiand.records.generate import OUR_PROVIDER

HOSTED = "198.51.100.0/24"
RECORDS = [
    # number, sponsor, type, name, domains, ips, provider, status, reviewed
    ["京ICP备12345678号-1", "北京示例科技有限公司", "网站", "示例官网", "example.com.cn;例子.中国", "", OUR_PROVIDER, "正常", "2024-03-01"],
    ["沪ICP备2023000001号-2A", "上海应用有限公司", "APP", "示例APP", "api.shapp.cn", "198.51.100.20", OUR_PROVIDER, "正常", "2024-05-20"],
    ["粤B2-20090059-5", "深圳经营性有限公司", "网站", "商城", "shop.example.net", "", "某某数据有限公司", "正常", "2023-01-01"],
    ["浙ICP备87654321号-1", "杭州注销有限公司", "网站", "旧站", "old.example.org", "", OUR_PROVIDER, "已注销", "2020-01-01"],
    ["京ICP备11112222号-1", "北京IP站有限公司", "网站", "IP站", "", "198.51.100.30", OUR_PROVIDER, "正常", "2024-01-01"],
]


def generate(workdir: str | Path) -> dict[str, str]:
    d = Path(workdir)
    d.mkdir(parents=True, exist_ok=True)
    rec = d / "records.csv"
    with rec.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["备案号", "主办单位", "服务类型", "网站名称", "域名", "IP", "接入商", "状态", "审核时间"])
        w.writerows(RECORDS)
    inv = d / "inventory.csv"
    inv.write_text(f"prefix,account,site,state,mode\n{HOSTED},cust-0001,bj-yz-1,active,dry-run\n"
                   "2001:db8:100::/48,cust-0002,sh-jq-2,active,\n", encoding="utf-8")
    cli = "192.0.2.10"
    frames: list[bytes] = []
    port = 40000

    def session(server: str, dport: int, data: bytes, **kw: object) -> None:
        nonlocal port
        port += 1
        frames.extend(t.tcp_session(cli, server, port, dport, data, **kw))  # type: ignore[arg-type]

    session("198.51.100.10", 443, t.client_hello("www.example.com.cn", ["h2", "http/1.1"]))
    session("198.51.100.10", 443, t.client_hello("例子.中国".encode("idna").decode()))
    session("198.51.100.20", 443, t.client_hello("api.shapp.cn", big=True), order=[1, 0, 2])
    session("198.51.100.11", 443, t.client_hello("unfiled.example.xyz"))
    session("198.51.100.12", 80, b"GET / HTTP/1.1\r\nHost: shop.example.net\r\n\r\n")
    session("198.51.100.13", 8080, b"GET /a HTTP/1.1\r\nHost: old.example.org:8080\r\n\r\nGET /b HTTP/1.1\r\nHost: old.example.org\r\n\r\n")
    session("198.51.100.30", 443, t.client_hello(None))
    session("198.51.100.31", 443, t.client_hello(None))
    session("203.0.113.5", 443, t.client_hello("elsewhere.example.com"))  # not hosted: not logged
    for dg in t.quic_initial_datagrams("quic-unfiled.example.top"):
        frames.append(t.udp(cli, "198.51.100.14", 50000, 443, dg))
    frames.append(t.udp("192.0.2.53", cli, 53, 33333, t.dns_response("www.example.com.cn", ["198.51.100.10"])))
    frames.append(t.udp("192.0.2.53", cli, 53, 33334, t.dns_response("cdn.unfiled.example.xyz", ["198.51.100.11"],
                                                                      cnames=["edge.cdn.example.net"])))
    pcap = d / "demo.pcap"
    t.write_pcap(pcap, frames)
    return {"records": str(rec), "inventory": str(inv), "pcap": str(pcap)}


if __name__ == "__main__":
    import sys

    print(generate(sys.argv[1] if len(sys.argv) > 1 else "beiand/demo_data"))
