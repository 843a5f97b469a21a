"""Issue 32 item 1: every HTTP/1.x request head of a connection is judged, not only the first (a
filed Host first, then an unfiled one on the same keep-alive connection), inline and passive."""

from __future__ import annotations

import time

import pytest

from beiand.accesslog import Query, query
from tests.integration.inlinelab import daemon_lab, keepalive, queued_tcp_packets

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from daemon_lab(tmp_path_factory, "keepalive", "inline = true\nmax_blocks_per_minute = 100000")


@pytest.fixture(scope="module")
def passive(tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from daemon_lab(tmp_path_factory, "keepalive-passive", "inline = false\nmax_blocks_per_minute = 100000")


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
