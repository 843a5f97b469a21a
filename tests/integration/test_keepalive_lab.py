"""Issue 32 item 1: every HTTP/1.x request head of a connection is judged, not only the first (a
filed Host first, then an unfiled one on the same keep-alive connection), inline and passive."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from beiand.accesslog import Query, query
from beiand.lab.demo import build
from beiand.lab.labdemo import wait_ready, write_config
from beiand.lab.netns import Lab
from tests.integration.inlinelab import keepalive, queued_tcp_packets

pytestmark = pytest.mark.integration

INVENTORY = """prefix,account,site,state,mode
198.51.100.0/28,cust-enf,bj,active,enforce
"""


def start(tmp_path_factory, inline: bool):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    wd = tmp_path_factory.mktemp("keepalive")
    files = build(wd / "samples")
    Path(files["inventory"]).write_text(INVENTORY)
    cfg = write_config(wd, files, extra=f"\n[enforce]\ninline = {'true' if inline else 'false'}\nmax_blocks_per_minute = 100000\n")
    with Lab() as lb:
        lb.start_servers(wd)
        with open(wd / "beiand.log", "ab") as logf:
            daemon = lb.spawn(lb.gw, [sys.executable, "-m", "beiand.cli", "run", "--config", str(cfg)], stdout=logf, stderr=logf)
        wait_ready(lb, daemon)
        yield {"lab": lb, "daemon": daemon, "wd": wd}
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from start(tmp_path_factory, inline=True)


@pytest.fixture(scope="module")
def passive(tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from start(tmp_path_factory, inline=False)


def test_every_request_head_of_a_keep_alive_connection_is_judged(lab) -> None:  # type: ignore[no-untyped-def]
    """Issue 32 item 1: a filed Host first, then an unfiled one on the same connection: the second
    request is refused (451, then the connection closed), not served; the other way round, and
    pipelined in one send; a filed keep-alive connection of 100 requests waits one queued packet per head."""
    lb = lab["lab"]
    filed, unfiled = "www.example.com.cn", "unfiled.example.xyz"
    answers = keepalive(lb, f"{filed},{unfiled},{filed}", "198.51.100.11", 41010, 3)
    assert answers[0].endswith("200") and answers[1].endswith("451") and not any("200" in a for a in answers[2:]), answers
    answers = keepalive(lb, f"{unfiled},{filed}", "198.51.100.11", 41011, 2)
    assert answers[0].endswith("451") and not any("200" in a for a in answers[1:]), answers
    answers = keepalive(lb, f"{filed},{unfiled}", "198.51.100.11", 41012, 2, pipeline=True)
    assert answers[0].endswith("451") or (answers[0].endswith("200") and answers[1:2] == ["HTTP/1.1 451"]), answers
    assert not any("200" in a for a in answers[1:]), answers
    before = queued_tcp_packets(lb)
    answers = keepalive(lb, filed, "198.51.100.11", 41013, 100)
    assert len(answers) == 100 and all(a.endswith("200") for a in answers), answers[-3:]
    assert queued_tcp_packets(lb) - before <= 100


def test_passive_names_every_request_head_of_a_connection(passive) -> None:  # type: ignore[no-untyped-def]
    """Passive (the capture, no queue): the later head's unfiled Host is judged and acted on (the
    block page injected; who wins the race with the server's answer is not this test's)."""
    lb, wd = passive["lab"], passive["wd"]
    t_ms = int(time.time() * 1000)
    keepalive(lb, "www.example.com.cn,unfiled.example.xyz", "198.51.100.11", 41020, 2)
    deadline = time.monotonic() + 20
    while True:
        recs = [r for r in query(wd / "log", Query(since_ms=t_ms)) if r.client_port == 41020 and r.kind == "http-host"]
        if {r.name for r in recs} >= {"www.example.com.cn", "unfiled.example.xyz"} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    got = {r.name: (r.verdict, r.action) for r in recs}
    assert got == {"www.example.com.cn": ("filed", "log"), "unfiled.example.xyz": ("unfiled", "block")}, got
