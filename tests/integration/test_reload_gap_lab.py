"""A records reload replaces the workers with no gap (found by issue 31's lab test): inline, the
main process holds each worker's queue, so while a worker is replaced the kernel keeps the
packets for the next one instead of passing them unjudged (``--queue-bypass``); the replacement
is built and joins the capture before the old worker stops, and opens the log partition after.
Traffic sent through several reloads: no unfiled site served, every flow in the access log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from beiand.accesslog import Query, query
from beiand.lab.demo import build
from beiand.lab.labdemo import http_get, wait_ready, write_config
from beiand.lab.netns import Lab

pytestmark = pytest.mark.integration

INVENTORY = """prefix,account,site,state,mode
198.51.100.0/28,cust-enf,bj,active,enforce
"""
FILED, UNFILED, IP = "www.example.com.cn", "unfiled.example.xyz", "198.51.100.11"
FIRST_PORT = 43000

# One request per connection, from a new source port each, for as long as the file "stop" is
# absent; a line per connection: source port, host, what came back.
CLIENT = r"""
import socket, struct, sys, os, time
ip, stop, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
hosts = sys.argv[4:]
i = 0
while not os.path.exists(stop):
    host = hosts[i % len(hosts)]
    sport = first + i
    i += 1
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(10)
    try:
        s.bind(("0.0.0.0", sport))
        s.connect((ip, 80))
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        got = data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"
    except OSError as exc:
        got = type(exc).__name__
    s.close()
    print(sport, host, got, flush=True)
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    wd = tmp_path_factory.mktemp("reloadgap")
    files = build(wd / "samples")
    Path(files["inventory"]).write_text(INVENTORY)
    cfg = write_config(wd, files, extra='\n[enforce]\ninline = true\nmax_blocks_per_minute = 100000\n'
                       'min_verdicts_for_share = 1000000\n')
    with Lab() as lb:
        lb.start_servers(wd)
        with open(wd / "beiand.log", "ab") as logf:
            daemon = lb.spawn(lb.gw, [sys.executable, "-m", "beiand.cli", "run", "--config", str(cfg)], stdout=logf, stderr=logf)
        wait_ready(lb, daemon)
        yield {"lab": lb, "daemon": daemon, "wd": wd}
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)


def status(lb: Lab) -> dict[str, object]:
    out: dict[str, object] = json.loads(http_get(lb, "/api/v1/status")[1])
    return out


def reloaded(lb: Lab, before: float) -> bool:
    st = status(lb)
    workers = st["workers"]
    assert isinstance(workers, list)
    return st["records_loaded_at"] != before and len(workers) == 2 and all(w["ready"] and w["alive"] for w in workers)


def test_no_flow_passes_unjudged_or_unlogged_through_reloads(lab) -> None:  # type: ignore[no-untyped-def]
    lb, wd, daemon = lab["lab"], lab["wd"], lab["daemon"]
    stop = wd / "client.stop"
    t_ms = int(time.time() * 1000)
    client = lb.spawn(lb.cli, [sys.executable, "-c", CLIENT, IP, str(stop), str(FIRST_PORT), UNFILED, FILED],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(5):
            before = status(lb)["records_loaded_at"]
            assert isinstance(before, float)
            daemon.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while not reloaded(lb, before):
                assert time.monotonic() < deadline, f"no reload: {status(lb)}"
                time.sleep(0.05)
    finally:
        stop.write_text("stop")
        out, _ = client.communicate(timeout=60)
    lines = [ln.split(" ", 2) for ln in out.decode().splitlines() if ln.strip()]
    assert len(lines) >= 20, out[-2000:]
    served = [ln for ln in lines if ln[1] == UNFILED and " 200" in ln[2]]
    assert not served, f"an unfiled site served during a reload: {served}"
    wrong = [ln for ln in lines if (ln[1] == UNFILED and " 451" not in ln[2]) or (ln[1] == FILED and " 200" not in ln[2])]
    assert not wrong, f"{len(wrong)} of {len(lines)} answered otherwise: {wrong[:10]}"
    # every flow in the access log, with its verdict
    deadline = time.monotonic() + 20
    while True:
        recs = {r.client_port: r for r in query(wd / "log", Query(since_ms=t_ms)) if r.server_ip == IP and r.kind == "http-host"}
        missing = [ln for ln in lines if int(ln[0]) not in recs]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing, f"{len(missing)} of {len(lines)} flows not in the access log: {missing[:10]}"
    assert all(recs[int(ln[0])].verdict == ("unfiled" if ln[1] == UNFILED else "filed") for ln in lines)
