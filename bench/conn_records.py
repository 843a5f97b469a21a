"""Realistic synthetic connection records (issue 19): many clients, ports and accounts, a minute's coalescing.

Used by bench_conn_store.py (bytes per sealed record, query time over 60 days). The shape:

- one gateway worker writing ``rate`` new flows per second (default 5,000: 10k/s over two workers);
- 4,096 hosted addresses in 256 /28s, each /28 held by one of 2,000 accounts;
- clients: 2 million IPv4 and 200,000 IPv6 addresses, drawn Zipf-like (a few busy, most rare),
  ephemeral ports uniformly 32768–60999;
- server ports: 443 40 %, 80 20 %, 22 5 %, 3306/8080/8443/3000/25565 3 % each, else uniform 1024–65535;
- 80 % inbound, 20 % outbound (a hosted host connecting out to an arbitrary address);
- 85 % TCP, 15 % UDP; 40 % of the inbound flows named (TLS SNI / HTTP Host / QUIC SNI) with one of
  20,000 names (each served from one hosted address), filed 90 % of the time; HTTP flows on port 80 carry GET/POST and a URL path;
- coalescing: a record per five-tuple per minute, with geometric packet counts (mean ~12) and octets
  = packets × 40–1500; records are written in time order with 10 % of them up to 60 s late (a
  flow's record is written when its minute closes).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from beiand.model import AccessRecord

PORTS = [(443, 40), (80, 20), (22, 5), (3306, 3), (8080, 3), (8443, 3), (3000, 3), (25565, 3)]


def records(n: int, start_ms: int, rate: float = 5000.0, seed: int = 1, gateway: str = "gw-bj-1/w0") -> Iterator[AccessRecord]:
    rnd = random.Random(seed)
    hosted = [f"198.51.{100 + i // 256}.{i % 256}" for i in range(4096)]
    acct = [f"cust-{rnd.randrange(2000):05d}" for _ in range(256)]
    names = [f"{rnd.choice(['www', 'api', 'img', 'm', 'shop', 'cdn'])}.site{i}.{rnd.choice(['cn', 'com', 'com.cn', 'net'])}"
             for i in range(20_000)]
    filings = [f"京ICP备{10_000_000 + i * 37:08d}号-{1 + i % 3}" for i in range(20_000)]
    paths = ["/", "/index.html", "/api/v1/items", "/login", "/static/app.js", "/favicon.ico", "/img/banner.jpg"]
    step = 1000.0 / rate
    t = float(start_ms)
    for _ in range(n):
        t += rnd.expovariate(1.0) * step
        ts = int(t)
        if rnd.random() < 0.1:
            ts -= rnd.randrange(60_000)
        # Zipf-like: busy clients are many records' clients.
        if rnd.random() < 0.9:
            k = int(2_000_000 * rnd.random() ** 2)
            cip = f"{1 + k % 223}.{(k >> 8) & 255}.{k & 255}.{(k * 7) & 255}"
        else:
            k = int(200_000 * rnd.random() ** 3)
            cip = f"240e:{k >> 16:x}:{k & 0xffff:x}::{(k * 13) & 0xffff:x}"
        cport = rnd.randrange(32768, 61000)
        h = int(4096 * rnd.random() ** 2)
        sip = hosted[h]
        account = acct[h >> 4]
        r = rnd.random() * 100
        sport = 0
        acc = 0
        for p, w in PORTS:
            acc += w
            if r < acc:
                sport = p
                break
        if not sport:
            sport = rnd.randrange(1024, 65536)
        udp = rnd.random() < 0.15
        transport = "udp" if udp else "tcp"
        pk = 1 + int(rnd.expovariate(1 / 12))
        octets = pk * rnd.randrange(40, 1500)
        method = url = ""
        kind, name, verdict, reason, filing = "conn", "", "", "not named", ""
        if rnd.random() < 0.8:
            direction = "in"
            if rnd.random() < 0.4 and sport in (80, 443, 8080, 8443):
                j = int(20_000 * rnd.random() ** 2)
                name = names[j]
                h = (j * 2654435761) % 4096  # a name is served from its own address
                sip, account = hosted[h], acct[h >> 4]
                kind = "quic-sni" if udp else ("http-host" if sport in (80, 8080) else "tls-sni")
                if rnd.random() < 0.9:
                    verdict, reason, filing = "filed", "filed", filings[j]
                else:
                    verdict, reason = "unfiled", "no-filing"
                if kind == "http-host":
                    method = "GET" if rnd.random() < 0.85 else "POST"
                    url = rnd.choice(paths)
        else:
            direction = "out"
            k = rnd.randrange(1 << 24)
            cip, cport, sip = sip, rnd.randrange(32768, 61000), f"{1 + k % 223}.{(k >> 8) & 255}.{k & 255}.{(k * 11) & 255}"
            sport = 443 if rnd.random() < 0.6 else 80 if rnd.random() < 0.5 else 53 if udp else rnd.randrange(1, 65536)
        yield AccessRecord(ts, account, cip, cport, sip, sport, transport, kind, name, verdict, "log", filing, gateway,
                           reason, "", "", "", direction, method, url, pk, octets)
