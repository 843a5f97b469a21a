"""Issue 32 item 2: names on any port. The lab's sites also answer on ports no one watches (HTTP on
8888, HTTPS on 3000, QUIC on UDP 4433); a filed and an unfiled name share one address. Inline, the
filed site is served and the unfiled one is not, on each; another protocol on an odd port to an
address no filing lists is neither named nor judged (it would be blocked by its address if it
were); passive, the same flows are named and judged in the access log."""

from __future__ import annotations

import sys
import time

import pytest

from beiand.accesslog import Query, query
from beiand.lab.labdemo import QUIC_CLIENT
from beiand.lab.netns import ODD_HTTP_PORT, ODD_QUIC_PORT, ODD_TLS_PORT, Lab
from tests.integration.inlinelab import daemon_lab, keepalive, queue_ids, server_closed

pytestmark = pytest.mark.integration

FILED, UNFILED, SHARED = "www.example.com.cn", "unfiled.example.xyz", "198.51.100.11"

# A line protocol on an odd port (SSH's greeting, then commands): an echo server in the server namespace.
ECHO_SERVER = r"""
import socket, sys, threading
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
open(sys.argv[3], "w").close()
def serve(c):
    with c:
        while data := c.recv(4096):
            c.sendall(data)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
ECHO_CLIENT = r"""
import socket, sys
lines = [b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", b"EHLO mail.example.com\r\n", b"GET key\r\n",
         b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, b"QUIT\r\n"]
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    for line in lines:
        s.sendall(line)
        got = b""
        while len(got) < len(line):
            got += s.recv(4096)
        assert got == line, (got, line)
print("echoed", len(lines))
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from daemon_lab(tmp_path_factory, "anyport", "inline = true\nmax_blocks_per_minute = 100000")


@pytest.fixture(scope="module")
def passive(tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from daemon_lab(tmp_path_factory, "anyport-passive", "inline = false\nmax_blocks_per_minute = 100000")


def curl(lb: Lab, name: str, ip: str, scheme: str, port: int, sport: int) -> tuple[int, bytes, str]:
    r = lb.run(lb.cli, ["curl", "-s", "-k", "-m", "5", "--local-port", str(sport), "-o", "-", "-w", "\n%{http_code}",
                        "--resolve", f"{name}:{port}:{ip}", f"{scheme}://{name}:{port}/"], capture_output=True)
    body, _, code = r.stdout.rpartition(b"\n")
    return r.returncode, body, code.decode()


def quic(lb: Lab, name: str, ip: str, port: int) -> str:
    return lb.run(lb.cli, [sys.executable, "-c", QUIC_CLIENT, name, ip, str(port)], capture_output=True, text=True).stdout.strip()


def records(wd, t_ms: int, want, timeout: float = 20.0) -> list:  # type: ignore[no-untyped-def]
    """The access-log records since ``t_ms`` once ``want(records)`` holds (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        recs = list(query(wd / "log", Query(since_ms=t_ms)))
        if want(recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.2)


def test_odd_port_sites_inline(lab) -> None:  # type: ignore[no-untyped-def]
    """HTTP on 8888, HTTPS on 3000, QUIC on 4433: the filed name served, the unfiled one on the same
    address refused (the block page, a reset, a dropped Initial), each in the access log."""
    lb, wd = lab["lab"], lab["wd"]
    t_ms = int(time.time() * 1000)
    for i, (scheme, port) in enumerate((("http", ODD_HTTP_PORT), ("https", ODD_TLS_PORT))):
        rc, body, code = curl(lb, FILED, SHARED, scheme, port, 42000 + 2 * i)
        assert rc == 0 and code == "200" and f"hello from {FILED}".encode() in body, (scheme, rc, code, body[:200])
        rc, body, code = curl(lb, UNFILED, SHARED, scheme, port, 42001 + 2 * i)
        assert b"hello from" not in body and code != "200", (scheme, rc, code, body[:200])
        if scheme == "http":
            assert code == "451" and "未备案".encode() in body, body[:300]
    assert quic(lb, FILED, "198.51.100.10", ODD_QUIC_PORT) == "ok"
    assert quic(lb, "quic-unfiled.example.top", "198.51.100.14", ODD_QUIC_PORT).startswith("failed")
    recs = records(wd, t_ms, lambda rs: len({(r.name, r.server_port) for r in rs if r.kind != "conn"}) >= 6)
    got = {(r.name, r.server_port): (r.verdict, r.action) for r in recs if r.kind != "conn"}
    assert got == {
        (FILED, ODD_HTTP_PORT): ("filed", "log"), (UNFILED, ODD_HTTP_PORT): ("unfiled", "block"),
        (FILED, ODD_TLS_PORT): ("filed", "log"), (UNFILED, ODD_TLS_PORT): ("unfiled", "block"),
        (FILED, ODD_QUIC_PORT): ("filed", "log"), ("quic-unfiled.example.top", ODD_QUIC_PORT): ("unfiled", "block"),
    }, got


def test_a_keep_alive_host_switch_on_an_odd_port_is_refused(lab) -> None:  # type: ignore[no-untyped-def]
    lb = lab["lab"]
    answers = keepalive(lb, f"{FILED},{UNFILED}", f"{SHARED}:{ODD_HTTP_PORT}", 42010, 2)
    assert answers[0].endswith("200") and answers[1].endswith("451"), answers
    answers = keepalive(lb, f"{UNFILED},{FILED}", f"{SHARED}:{ODD_HTTP_PORT}", 42011, 2, pipeline=True)
    assert answers[0].endswith("451") and not any("200" in a for a in answers[1:]), answers


def test_another_protocol_on_an_odd_port_is_not_judged(lab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A line protocol (SSH's greeting, SMTP's EHLO, Redis' GET key, bytes that start like TLS but
    are not its first) to an address no filing lists: judged by its address it would be blocked;
    it is neither named nor judged, and at most a packet or two of it waits in the queue."""
    lb = lab["lab"]
    ready = tmp_path / "echo-ready"
    server = lb.spawn(lb.srv, [sys.executable, "-c", ECHO_SERVER, SHARED, "7777", str(ready)])
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert time.monotonic() < deadline and server.poll() is None, "the echo server did not start"
            time.sleep(0.05)
        before = queue_ids(lb)
        for _ in range(3):
            r = lb.run(lb.cli, [sys.executable, "-c", ECHO_CLIENT, SHARED, "7777"], capture_output=True, text=True)
            assert r.stdout.strip() == "echoed 5", r.stderr[-2000:]
        assert queue_ids(lb) - before <= 2 * 3  # the first segment (and, short, the one after) per connection
    finally:
        server.kill()
        server.wait()


def test_odd_port_sites_passive(passive) -> None:  # type: ignore[no-untyped-def]
    """Passive (the capture filter passes an odd port's first segment): named and judged the same."""
    lb, wd = passive["lab"], passive["wd"]
    t_ms = int(time.time() * 1000)
    curl(lb, FILED, SHARED, "http", ODD_HTTP_PORT, 42100)
    curl(lb, UNFILED, SHARED, "http", ODD_HTTP_PORT, 42101)
    curl(lb, FILED, SHARED, "https", ODD_TLS_PORT, 42102)
    curl(lb, UNFILED, SHARED, "https", ODD_TLS_PORT, 42103)
    quic(lb, FILED, "198.51.100.10", ODD_QUIC_PORT)
    quic(lb, "quic-unfiled.example.top", "198.51.100.14", ODD_QUIC_PORT)
    keepalive(lb, f"{FILED},{UNFILED}", f"{SHARED}:{ODD_HTTP_PORT}", 42104, 2)
    recs = records(wd, t_ms, lambda rs: len({(r.name, r.server_port, r.client_port) for r in rs if r.kind != "conn"}) >= 8)
    got = {(r.name, r.server_port, r.client_port if r.transport == "tcp" else 0): (r.verdict, r.action)
           for r in recs if r.kind != "conn"}
    assert got == {
        (FILED, ODD_HTTP_PORT, 42100): ("filed", "log"), (UNFILED, ODD_HTTP_PORT, 42101): ("unfiled", "block"),
        (FILED, ODD_TLS_PORT, 42102): ("filed", "log"), (UNFILED, ODD_TLS_PORT, 42103): ("unfiled", "block"),
        (FILED, ODD_QUIC_PORT, 0): ("filed", "log"), ("quic-unfiled.example.top", ODD_QUIC_PORT, 0): ("unfiled", "block"),
        (FILED, ODD_HTTP_PORT, 42104): ("filed", "log"), (UNFILED, ODD_HTTP_PORT, 42104): ("unfiled", "block"),
    }, got


# A keep-alive client's tricks after a filed first request: the unfiled request behind empty lines,
# its method cut to one byte (two sends, Nagle off), a head longer than 16 KiB with its Host first.
# Prints the first answer's status line, then what came for the second ("closed" if nothing).
TRICK = r"""
import socket, struct, sys, time
ip, port, sport, trick = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(5)
s.bind(("0.0.0.0", sport))
s.connect((ip, port))
def answer():
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        return type(exc).__name__
    return data.split(b"\r\n")[0].decode() if data else "closed"
s.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com.cn\r\n\r\n")
out = [answer()]
second = b"GET /2 HTTP/1.1\r\nHost: unfiled.example.xyz\r\n\r\n"
try:
    if trick == "crlf":
        s.sendall(b"\r\n" + second)
    elif trick == "cut":
        s.sendall(second[:1]); time.sleep(0.2); s.sendall(second[1:])
    elif trick == "long":
        pad = b"".join(b"X-Pad-%d: " % i + b"a" * 7000 + b"\r\n" for i in range(3))  # each line within a server's limit
        s.sendall(b"GET /2 HTTP/1.1\r\nHost: unfiled.example.xyz\r\n" + pad + b"\r\n")
    elif trick == "long-late":  # the Host after 16 KiB of header lines
        pad = b"".join(b"X-Pad-%d: " % i + b"a" * 7000 + b"\r\n" for i in range(3))
        s.sendall(b"GET /2 HTTP/1.1\r\n" + pad + b"Host: unfiled.example.xyz\r\n\r\n")
    elif trick == "chunked":  # a chunked POST to the filed site first, then the unfiled request
        s.sendall(b"POST /c HTTP/1.1\r\nHost: www.example.com.cn\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        out.append(answer())
        s.sendall(second)
    elif trick == "body":  # a filed POST's body ends in the segment that starts the unfiled request
        s.sendall(b"POST /p HTTP/1.1\r\nHost: www.example.com.cn\r\nContent-Length: 5\r\n\r\n")
        time.sleep(0.2)
        s.sendall(b"hello" + second)
        out.append(answer())
    elif trick == "purge":  # a method llhttp takes, outside the common ones
        s.sendall(b"PURGE /2 HTTP/1.1\r\nHost: unfiled.example.xyz\r\n\r\n")
    out.append(answer())
except OSError as exc:
    out.append(type(exc).__name__)
print("|".join(out))
"""


TRICKS = ["crlf", "cut", "long", "long-late", "chunked", "body", "purge"]


@pytest.mark.parametrize("port", [80, ODD_HTTP_PORT])
@pytest.mark.parametrize("trick", TRICKS)
def test_keep_alive_tricks_do_not_reach_the_unfiled_site(lab, port, trick) -> None:  # type: ignore[no-untyped-def]
    """The attack run's findings (issue 32) and item 1's open gaps: the filed requests are served,
    the unfiled one never is."""
    lb = lab["lab"]
    sport = 42200 + 10 * TRICKS.index(trick) + (port == ODD_HTTP_PORT)
    out = lb.run(lb.cli, [sys.executable, "-c", TRICK, SHARED, str(port), str(sport), trick], capture_output=True,
                 text=True).stdout.strip().split("|")
    server_closed(lb, sport)
    status = [o.split(" ")[1] if o.startswith("HTTP/") else o for o in out]
    filed = 3 if trick in ("chunked", "body") else 2
    assert status[:filed - 1] == ["200"] * (filed - 1) and len(out) == filed and status[-1] != "200", out


# A real OpenSSL handshake whose ClientHello records are reshaped as OpenSSL still accepts them: an
# empty handshake record first, or the ClientHello's first byte alone in a record. Prints what came.
TLS_TRICK = r"""
import re, socket, ssl, struct, sys, time
ip, port, trick = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
i, o = ssl.MemoryBIO(), ssl.MemoryBIO(); t = ctx.wrap_bio(i, o, server_hostname="unfiled.example.xyz")
try:
    t.do_handshake()
except ssl.SSLWantReadError:
    pass
ch = o.read(); hs = ch[5:]
if trick == "zerorec":
    wire = b"\x16\x03\x01\x00\x00" + ch
else:
    wire = b"\x16" + ch[1:3] + b"\x00\x01" + hs[:1] + b"\x16" + ch[1:3] + struct.pack(">H", len(hs) - 1) + hs[1:]
s = socket.create_connection((ip, port), timeout=5)
s.sendall(wire)
try:
    while True:
        try:
            t.do_handshake(); break
        except ssl.SSLWantReadError:
            d = s.recv(65536)
            if not d:
                raise ConnectionError("closed")
            i.write(d); x = o.read(); x and s.sendall(x)
    x = o.read(); x and s.sendall(x)
    t.write(b"GET / HTTP/1.1\r\nHost: unfiled.example.xyz\r\nConnection: close\r\n\r\n"); s.sendall(o.read())
    got = b""
    while (d := s.recv(65536)):
        i.write(d)
        try:
            while (r := t.read(65536)):
                got += r
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
    print("served" if b"hello from unfiled" in got else "handshake")
except (OSError, ssl.SSLError, ConnectionError) as e:
    print("refused", type(e).__name__)
"""


@pytest.mark.parametrize("port", [443, ODD_TLS_PORT])
@pytest.mark.parametrize("trick", ["zerorec", "refrag1"])
def test_tls_records_reshaped_do_not_hide_the_name(lab, port, trick) -> None:  # type: ignore[no-untyped-def]
    lb = lab["lab"]
    out = lb.run(lb.cli, [sys.executable, "-c", TLS_TRICK, SHARED, str(port), trick], capture_output=True, text=True)
    assert out.stdout.startswith("refused"), (out.stdout, out.stderr[-1000:])
