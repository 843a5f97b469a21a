"""Issue 19: ``beiand run`` logs every new flow into or out of hosted space, on any port.

Real veths and the real daemon (two capture workers) on the lab's gateway: SSH-like TCP on port
2222, a UDP service on port 27015, a hosted host connecting out, the same TCP service over IPv6
and a named HTTPS flow. Each gives exactly one access-log record; the named one carries its name
and verdict with the connection's fields.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from beiand.lab.demo import build
from beiand.lab.labdemo import wait_ready, write_config
from beiand.lab.netns import CLIENT_IP, Lab
from tests.integration.connlab import C6, S6, UNNAMED_SERVICES, add_ipv6

pytestmark = pytest.mark.integration

SSH_IP, UDP_IP, OUT_IP, TLS_IP = "198.51.100.10", "198.51.100.11", "198.51.100.12", "198.51.100.10"

SERVICES = UNNAMED_SERVICES + r"""
threading.Thread(target=ssh, daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
open(sys.argv[1], "w").close()
threading.Event().wait()
"""

CLIENT = r"""
import json, socket, ssl, sys
ssh_ip, udp_ip, tls_ip, s6 = sys.argv[1:5]
out = {}
s = socket.create_connection((ssh_ip, 2222), timeout=5)
out["ssh"] = s.getsockname()[1]; s.recv(100); s.sendall(b"SSH-2.0-client\r\n"); s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5); u.connect((udp_ip, 27015))
for i in range(3):
    u.send(b"ping %d" % i); u.recv(100)
out["udp"] = u.getsockname()[1]; u.close()
s = socket.create_connection((s6, 2222), timeout=5)
out["ssh6"] = s.getsockname()[1]; s.recv(100); s.sendall(b"SSH-2.0-client\r\n"); s.close()
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with socket.create_connection((tls_ip, 443), timeout=5) as raw:
    out["tls"] = raw.getsockname()[1]
    with ctx.wrap_socket(raw, server_hostname="www.example.com.cn") as t:
        t.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com.cn\r\nConnection: close\r\n\r\n")
        while t.recv(4096):
            pass
print(json.dumps(out))
"""

LISTEN = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8000)); s.listen(4); open(sys.argv[1], "w").close()
c, _ = s.accept(); c.recv(100); c.sendall(b"hello"); c.close()
"""

OUTBOUND = r"""
import socket, sys
s = socket.socket(); s.bind((sys.argv[1], 0)); s.settimeout(5); s.connect((sys.argv[2], 8000))
port = s.getsockname()[1]; s.sendall(b"hi from a hosted host"); s.recv(100); s.close(); print(port)
"""


def _wait_file(path: Path, proc: object) -> None:
    deadline = time.monotonic() + 15
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    wd = tmp_path_factory.mktemp("conns")
    files = build(wd / "samples")
    cfg = write_config(wd, files, extra="\n[connections]\nwindow = 2.0\n")
    with Lab() as lb:
        add_ipv6(lb)
        lb.start_servers(wd)
        svc_ready, listen_ready = wd / "svc.ready", wd / "listen.ready"
        svc = lb.spawn(lb.srv, [sys.executable, "-c", SERVICES, str(svc_ready), UDP_IP])
        listener = lb.spawn(lb.cli, [sys.executable, "-c", LISTEN, str(listen_ready)])
        _wait_file(svc_ready, svc)
        _wait_file(listen_ready, listener)
        with open(wd / "beiand.log", "ab") as logf:
            daemon = lb.spawn(lb.gw, [sys.executable, "-m", "beiand.cli", "run", "--config", str(cfg)], stdout=logf,
                              stderr=logf)
        wait_ready(lb, daemon)
        r = lb.run(lb.cli, [sys.executable, "-c", CLIENT, SSH_IP, UDP_IP, TLS_IP, S6], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        ports = json.loads(r.stdout)
        r = lb.run(lb.srv, [sys.executable, "-c", OUTBOUND, OUT_IP, CLIENT_IP], capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        ports["out"] = int(r.stdout)
        time.sleep(5.0)  # the 2 s window closes and a quiet worker writes the records (once a second)
        from beiand.accesslog import Query, query

        running = list(query(wd / "log", Query()))
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        yield {"ports": ports, "running": running, "records": list(query(wd / "log", Query())), "wd": wd}


def _mine(recs, client_port: int):  # type: ignore[no-untyped-def]
    return [r for r in recs if r.client_port == client_port]


def test_ssh_on_port_2222_is_one_connection_record(lab) -> None:  # type: ignore[no-untyped-def]
    (r,) = _mine(lab["running"], lab["ports"]["ssh"])  # written while running: its window closed
    assert (r.client_ip, r.server_ip, r.server_port, r.transport) == (CLIENT_IP, SSH_IP, 2222, "tcp")
    assert (r.kind, r.verdict, r.reason, r.direction, r.account, r.gateway) == (
        "conn", "unnamed", "not-named:unwatched-port", "in", "cust-0001", "lab-gw")
    # live, the kernel passes a TCP flow's SYN, SYN+ACK (issue 32), FINs and RSTs on such a port, not its bulk
    assert 3 <= r.packets <= 6 and r.octets >= r.packets * 40
    assert _mine(lab["records"], lab["ports"]["ssh"]) == [r]  # and no second one at shutdown


def test_udp_service_on_an_odd_port_is_one_record_with_its_datagrams(lab) -> None:  # type: ignore[no-untyped-def]
    (r,) = _mine(lab["records"], lab["ports"]["udp"])
    assert (r.server_ip, r.server_port, r.transport, r.kind, r.direction) == (UDP_IP, 27015, "udp", "conn", "in")
    assert r.packets == 6  # three datagrams and three answers, coalesced


def test_hosted_host_connecting_out(lab) -> None:  # type: ignore[no-untyped-def]
    (r,) = _mine(lab["records"], lab["ports"]["out"])
    assert (r.client_ip, r.server_ip, r.server_port, r.kind, r.direction, r.account) == (
        OUT_IP, CLIENT_IP, 8000, "conn", "out", "cust-0001")


def test_ipv6_flow(lab) -> None:  # type: ignore[no-untyped-def]
    (r,) = [x for x in _mine(lab["records"], lab["ports"]["ssh6"]) if x.client_ip == C6]
    assert (r.server_ip, r.server_port, r.kind, r.direction, r.account) == (S6, 2222, "conn", "in", "cust-0002")
    assert 3 <= r.packets <= 6 and r.octets >= r.packets * 60


def test_named_https_flow_is_one_record_with_name_verdict_and_connection(lab) -> None:  # type: ignore[no-untyped-def]
    (r,) = _mine(lab["records"], lab["ports"]["tls"])
    assert (r.kind, r.name, r.server_ip, r.server_port, r.direction) == ("tls-sni", "www.example.com.cn", TLS_IP, 443, "in")
    assert r.verdict == "filed" and r.account == "cust-0001"
    assert r.packets >= 2 and r.octets > 300  # the SYN and the ClientHello at least


def test_nothing_else_was_logged(lab) -> None:  # type: ignore[no-untyped-def]
    mine = set(lab["ports"].values())
    others = [r for r in lab["records"] if r.client_port not in mine and r.server_port not in (53,)]
    # the lab's own DNS answers aside, no record for any other flow
    assert not [r for r in others if r.kind == "conn"], others
