"""Helpers of the inline lab tests: the queue's counters, and a keep-alive HTTP client in the
client namespace."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from beiand.lab.demo import build
from beiand.lab.labdemo import wait_ready, write_config
from beiand.lab.netns import Lab

ENFORCED = """prefix,account,site,state,mode
198.51.100.0/28,cust-enf,bj,active,enforce
"""


def daemon_lab(tmp_path_factory: Any, name: str, enforce: str, inventory: str = ENFORCED) -> Iterator[dict[str, Any]]:
    """A module's lab: the namespaces, the servers, ``beiand run`` on the gateway with ``enforce``
    (the lines of its ``[enforce]`` section); stopped with SIGTERM at the end."""
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    wd = tmp_path_factory.mktemp(name)
    files = build(wd / "samples")
    Path(files["inventory"]).write_text(inventory)
    cfg = write_config(wd, files, extra=f"\n[enforce]\n{enforce}\n")
    with Lab() as lb:
        lb.start_servers(wd)
        with open(wd / "beiand.log", "ab") as logf:
            daemon = lb.spawn(lb.gw, [sys.executable, "-m", "beiand.cli", "run", "--config", str(cfg)], stdout=logf, stderr=logf)
        wait_ready(lb, daemon)
        yield {"lab": lb, "daemon": daemon, "wd": wd}
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)


def queued_tcp_packets(lb: Lab) -> int:
    """TCP packets the kernel has sent into beiand's queue so far (the counter of the jump rule)."""
    out = lb.run(lb.gw, ["iptables", "-w", "-L", "FORWARD", "-v", "-x", "-n"], capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines()[2:]]
    return sum(int(r[0]) for r in rows if len(r) > 3 and r[2] in ("beiand", "beiand-more") and r[3] in ("6", "tcp"))


def queue_ids(lb: Lab) -> int:
    """Packets that went through the NFQUEUEs so far (the queues' last ids), TCP and UDP."""
    q = lb.run(lb.gw, ["cat", "/proc/net/netfilter/nfnetlink_queue"], capture_output=True, text=True).stdout
    return sum(int(f[7]) for f in (line.split() for line in q.splitlines()) if len(f) >= 8)


# A client in the client namespace: one TCP connection from a chosen source port, several
# requests on it one after the other (keep-alive), closed with an RST (SO_LINGER 0) so that
# the same 4-tuple can be used again at once. Prints what each answer began with.
KEEPALIVE = r"""
import socket, struct, sys
hosts, (ip, _, port), sport, n = sys.argv[1].split(","), sys.argv[2].partition(":"), int(sys.argv[3]), int(sys.argv[4])
pipeline = len(sys.argv) > 5
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.settimeout(5)
s.bind(("0.0.0.0", sport))
s.connect((ip, int(port or 80)))
out = []
try:
    if pipeline:  # every request in one send
        s.sendall(b"".join(f"GET /{i} HTTP/1.1\r\nHost: {hosts[i % len(hosts)]}\r\n\r\n".encode() for i in range(n)))
    for i in range(n):
        if not pipeline:
            s.sendall(f"GET /{i} HTTP/1.1\r\nHost: {hosts[i % len(hosts)]}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        ln = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0)
        while len(body) < ln:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        out.append(data[:12].decode(errors="replace"))
        if not chunk:
            break
except OSError as exc:
    out.append(type(exc).__name__)
s.close()
print("|".join(out))
"""


def keepalive(lb: Lab, host: str, ip: str, sport: int, n: int, pipeline: bool = False) -> list[str]:
    """``host``: one Host, or several separated by commas (request i uses the i-th, in turn);
    ``ip``: the server's address, ``ip:port`` for another port than 80."""
    r = lb.run(lb.cli, [sys.executable, "-c", KEEPALIVE, host, ip, str(sport), str(n), *(["pipeline"] if pipeline else [])],
               capture_output=True, text=True)
    server_closed(lb, sport)
    return r.stdout.strip().split("|")


def server_closed(lb: Lab, sport: int) -> None:
    """Wait until the server has no socket left for the client's port: the client's RST went
    through the gateway (its conntrack saw the connection end). Without this wait, a next
    connection's SYN on the same 4-tuple can overtake the RST on a loaded machine (the two are
    forwarded from different CPUs' backlogs), ride the old conntrack entry with its ``decided``
    mark, and never be queued: the kernel's resync, not beiand, decides then (it failed once in CI)."""
    deadline = time.monotonic() + 15
    while True:
        out = lb.run(lb.srv, ["ss", "-Htn", "state", "all", f"( dport = :{sport} )"], capture_output=True, text=True).stdout
        if not out.strip():
            return
        assert time.monotonic() < deadline, f"the server still holds the connection from port {sport}: {out}"
        time.sleep(0.05)
