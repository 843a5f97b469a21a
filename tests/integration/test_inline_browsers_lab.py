"""Real browsers through enforcement, inline and passive (issue 36).

Chromium and Firefox send ML-KEM key shares, so their ClientHello (about 2 KB) is bigger than
one packet: one TSO/GSO super-packet over TCP, two or more Initial packets over QUIC. Before
issue 36 every one of them reached an unfiled site through inline enforcement. Here Debian's
Chromium (TCP and QUIC) and Firefox ESR (TCP) load a filed and an unfiled name on one shared
address, through the lab's gateway in inline and in passive enforce: the filed page loads; the
unfiled one never does, and inline its server never gets the whole ClientHello nor its client
the server's handshake. A Python ``ssl`` client whose ClientHello passes one MTU in one write,
and an aioquic client whose ClientHello spans three Initial packets, reproduce it without a browser.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import pytest

from beiand.accesslog import Query, query
from beiand.lab.browsers import FILED, SHARED, UNFILED, Browsers, Sniffer, enforcing_lab, named
from beiand.lab.netns import ODD_QUIC_PORT, ODD_TLS_PORT

pytestmark = pytest.mark.integration

LOADS = int(os.environ.get("BEIAND_BROWSER_LOADS", "2"))  # per browser, transport and name


@pytest.fixture(scope="module", params=["inline", "passive"])
def lab(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    mode = request.param
    wd = tmp_path_factory.mktemp(f"browsers-{mode}")
    with enforcing_lab(mode, wd) as (lb, browsers):
        yield {"lab": lb, "mode": mode, "wd": wd, "browsers": browsers}


BROWSERS = ["chromium-tcp", "chromium-quic", "firefox-tcp"]
# issue 32: the same sites on ports no one watches (HTTPS on 3000, QUIC on 4433)
ODD = [("chromium-tcp", ODD_TLS_PORT), ("chromium-quic", ODD_QUIC_PORT), ("firefox-tcp", ODD_TLS_PORT)]


@pytest.mark.parametrize(("browser", "port"), [(b, 443) for b in BROWSERS] + ODD)
def test_a_browser_loads_the_filed_site_and_never_the_unfiled_one(lab, browser, port) -> None:  # type: ignore[no-untyped-def]
    if shutil.which(browser.split("-")[0] if browser.startswith("chromium") else "firefox-esr") is None:
        pytest.fail(f"{browser}: not installed (scripts/system-deps installs it)")
    b: Browsers = lab["browsers"]
    ports: set[int] = set()
    for _ in range(LOADS if port == 443 else 1):
        filed = b.load(browser, FILED, SHARED, port=port)
        assert filed.served, (lab["mode"], filed)
        unfiled = b.load(browser, UNFILED, SHARED, port=port)
        assert unfiled.client_ports, unfiled  # the browser did try
        ports |= unfiled.client_ports
        if lab["mode"] == "inline":
            # the packet that completes the name waits for the verdict: the server never has it
            assert not unfiled.served, unfiled
            assert UNFILED not in unfiled.server_hellos, unfiled
            assert unfiled.server_handshake == 0, unfiled
    if lab["mode"] == "passive":
        # Passive sees a copy and injects resets: a race with the server it wins nearly always, never
        # always (docs/enforcement.md; Chromium 150 on a fresh machine once got the page). What must
        # hold is that every connection the browser made to the unfiled name was named from its
        # ClientHello (never ip-only) and judged and blocked.
        deadline = time.monotonic() + 15  # the access log's group commit
        while True:
            recs = [r for r in query(lab["wd"] / "log", Query()) if r.client_port in ports and r.server_ip == SHARED]
            if {r.client_port for r in recs if r.name == UNFILED} >= ports or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        named_ports = {r.client_port for r in recs if r.name == UNFILED and r.kind in ("tls-sni", "quic-sni")}
        assert named_ports >= ports, (ports, recs)
        assert all(r.action == "block" for r in recs if r.name == UNFILED), recs


# The minimal reproduction (issue 36, 3): a Python ``ssl`` ClientHello padded past one MTU by
# ``n`` ALPN names of 45 bytes, sent in one write (one TSO super-packet on the lab's veth) or in
# writes of at most 1000 bytes. Prints what came back: the ServerHello, or the connection's end.
SSL_CLIENT = r"""
import socket, sys
from beiand.lab.traffic import client_hello
name, ip, n, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
hello = client_hello(name, [f"x-{i:03d}-" + "a" * 39 for i in range(n)] + ["http/1.1"])
s = socket.create_connection((ip, 443), timeout=3)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(0, len(hello), chunk):
    s.sendall(hello[i:i + chunk])
try:
    data = s.recv(65536)
except OSError as exc:
    print(len(hello), "error", type(exc).__name__)
    sys.exit()
print(len(hello), "serverhello" if data[:1] == b"\x16" and data[5:6] == b"\x02" else ("other" if data else "closed"))
"""


@pytest.mark.parametrize(("alpn", "chunk"), [(30, 1 << 16), (30, 1000), (20, 1 << 16)])
def test_a_clienthello_past_one_mtu_is_judged_however_it_is_written(lab, alpn, chunk) -> None:  # type: ignore[no-untyped-def]
    lb = lab["lab"]
    out = {}
    for name in (FILED, UNFILED):
        r = lb.run(lb.cli, [sys.executable, "-c", SSL_CLIENT, name, SHARED, str(alpn), str(chunk)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        out[name] = r.stdout.split()
    assert out[FILED][1] == "serverhello", out
    assert int(out[UNFILED][0]) > 1500 if alpn == 30 else True, out  # past one MTU
    if lab["mode"] == "inline":
        assert out[UNFILED][1] in ("error", "closed"), out  # reset before any server byte
    else:
        assert out[UNFILED][1] != "other", out


# An aioquic client whose ClientHello spans three Initial packets (40 long ALPN values).
QUIC_BIG = r"""
import asyncio, ssl, sys
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration
async def main(name, ip):
    alpn = [f"x-long-alpn-{i:03d}-" + "q" * 60 for i in range(40)] + ["h3"]
    c = QuicConfiguration(is_client=True, alpn_protocols=alpn, verify_mode=ssl.CERT_NONE, server_name=name)
    async with connect(ip, 443, configuration=c, wait_connected=True) as p:
        await p.ping()
    print("ok")
try:
    asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2]), 4))
except Exception as e:
    print("failed", type(e).__name__)
"""


def test_a_quic_clienthello_in_three_initial_packets_is_judged(lab) -> None:  # type: ignore[no-untyped-def]
    lb = lab["lab"]
    server = Sniffer(lb.srv, "srv0")
    try:
        got = {name: lb.run(lb.cli, [sys.executable, "-c", QUIC_BIG, name, SHARED], capture_output=True, text=True).stdout.strip()
               for name in (FILED, UNFILED)}
    finally:
        frames = server.stop()
    assert got[FILED] == "ok", got
    if lab["mode"] == "inline":
        assert got[UNFILED].startswith("failed"), got
        assert UNFILED not in [n for n, _, _ in named(frames, outgoing=False)]  # the server never had the whole ClientHello
    # passive (a mirror): the drop is a race with the server, won nearly always but not always (a full
    # `make test` here once saw the handshake finish first, as issue 36 saw Chromium): the decision is
    # what passive promises, and the access log below must show it
    deadline = time.monotonic() + 15  # the access log: the unfiled flow named quic-sni, not an unnamed connection
    while time.monotonic() < deadline:
        recs = [r for r in query(lab["wd"] / "log", Query()) if r.name == UNFILED and r.kind == "quic-sni"]
        if recs:
            break
        time.sleep(0.2)
    assert recs and all(r.verdict == "unfiled" and r.action == "block" for r in recs), recs
