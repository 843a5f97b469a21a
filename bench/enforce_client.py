"""Client side of bench_enforce.py, run inside the client namespace.

    python enforce_client.py MODE NAME IP COUNT CONCURRENCY

MODE https: connect, send a ClientHello for NAME, wait for the first server byte.
MODE https-big: the same with a ClientHello past one MTU (about 2.8 KB, as a browser's with an
     ML-KEM key share), written at once: one TSO/GSO super-packet (issue 36).
MODE https-split: the ClientHello in two writes (TCP_NODELAY): two packets, the name in the second.
MODE http:  connect, send a GET for NAME, read the answer.
MODE http-keepalive: one connection, 20 GETs for NAME one after the other (issue 32: each later
     request head is queued and judged too); the latencies are those of requests 2 to 20.
Prints one JSON line: connections, how many received any byte from the server (TLS record /
"hello from"), how many got the block page, resets, other errors, and first-byte latencies.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

sys.path.insert(0, sys.argv[6] if len(sys.argv) > 6 else ".")
from beiand.lab.traffic import client_hello


def keepalive(name: str, ip: str, res: dict, lock: threading.Lock, n: int = 20) -> None:  # type: ignore[type-arg]
    s = socket.socket()
    s.settimeout(3)
    lats, outcome = [], "server-bytes"
    try:
        s.connect((ip, 80))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(n):
            t0 = time.perf_counter()
            s.sendall(f"GET /{i} HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
            data = s.recv(65536)
            if i:
                lats.append(time.perf_counter() - t0)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
            if b"hello from" not in body:
                outcome = "other"
                break
    except OSError:
        outcome = "error"
    finally:
        s.close()
    with lock:
        res[outcome] = res.get(outcome, 0) + 1
        if outcome == "server-bytes":
            res.setdefault("lat", []).extend(lats)


def one(mode: str, name: str, ip: str, res: dict, lock: threading.Lock) -> None:  # type: ignore[type-arg]
    if mode == "http-keepalive":
        keepalive(name, ip, res, lock)
        return
    s = socket.socket()
    s.settimeout(3)
    outcome = "error"
    lat = None
    try:
        tls = mode.startswith("https")
        s.connect((ip, 443 if tls else 80))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = client_hello(name, big=mode == "https-big") if tls else \
            f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode()
        t0 = time.perf_counter()
        if mode == "https-split":
            s.sendall(payload[:100])
            s.sendall(payload[100:])
        else:
            s.sendall(payload)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            if not data:
                lat = time.perf_counter() - t0
            data += chunk
            if tls and data[:1] == b"\x16":
                break
        if tls:
            outcome = "server-bytes" if data[:1] == b"\x16" else ("no-bytes" if not data else "other")
        else:
            outcome = ("server-bytes" if b"hello from" in data else "block-page" if b" 451 " in data[:20]
                       else "no-bytes" if not data else "other")
    except ConnectionResetError:
        outcome = "reset"
    except OSError:
        outcome = "error"
    finally:
        s.close()
    with lock:
        res[outcome] = res.get(outcome, 0) + 1
        if lat is not None and outcome == "server-bytes":
            res.setdefault("lat", []).append(lat)


def main() -> None:
    mode, name, ip, count, conc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    res: dict = {}  # type: ignore[type-arg]
    lock = threading.Lock()
    sem = threading.Semaphore(conc)
    threads = []
    t0 = time.perf_counter()

    def run(i: int) -> None:
        try:
            one(mode, name.replace("{i}", str(i)), ip, res, lock)
        finally:
            sem.release()

    for i in range(count):
        sem.acquire()
        t = threading.Thread(target=run, args=(i,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    res["seconds"] = time.perf_counter() - t0
    lat = sorted(res.pop("lat", []))
    if lat:
        res["first_byte_p50_ms"] = lat[len(lat) // 2] * 1e3
        res["first_byte_p99_ms"] = lat[min(len(lat) - 1, len(lat) * 99 // 100)] * 1e3
        res["lat_ms"] = [round(v * 1e3, 4) for v in lat]  # to pool rounds (bench_enforce.py --rounds)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
