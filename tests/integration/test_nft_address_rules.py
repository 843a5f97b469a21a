"""An overlay's address rule cuts its traffic on any port, in beiand's own nftables table on the
gateway (issue 26: an ISMS filter on 203.0.113.5 TCP 22 was acked and SSH still connected).

The lab's client connects through the gateway to two plain TCP listeners on one hosted address:
:22 (standing in for SSH, a port beiand never watches) and :80. Twenty connects per port go out at
once, non-blocking; a connect whose SYN is dropped is still pending when the others are done."""

from __future__ import annotations

import os
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from beiand.enforce.nft import Nft
from beiand.lab.netns import CLIENT_IP, SERVER_IPS, Lab, in_netns
from beiand.model import AddressRule

pytestmark = pytest.mark.integration

SERVER = SERVER_IPS[0]
PORTS = (22, 80)
TRIES = 20

LISTENER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[2:] or (22, 80)):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port))
    s.listen(256)
    sel.register(s, selectors.EVENT_READ)
sel.register(sys.stdin, selectors.EVENT_READ)  # closed when the test's process ends, however it ends
print("listening", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is sys.stdin:
            sys.exit(0)
        conn, _ = key.fileobj.accept()
        conn.close()
"""


class Gateway(NamedTuple):
    lab: Lab
    nft: Nft  # one for the whole module, as the daemon holds one: built in the gateway, which it acts on


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    with Lab(prefix="na") as lb:
        p = lb.spawn(lb.srv, [sys.executable, "-c", LISTENER, SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
        assert p.stdout is not None and p.stderr is not None
        assert p.stdout.readline() == b"listening\n", p.stderr.read()  # or it died: why
        nft = in_netns(lb.gw, Nft)
        in_netns(lb.gw, nft.setup)
        yield Gateway(lb, nft)
        in_netns(lb.gw, nft.teardown)
        assert p.stdin is not None
        p.stdin.close()


def sync(gw: Gateway, rules: list[AddressRule]) -> int:
    """Apply ``rules`` in the gateway (in its namespace too: without python3-nftables, Nft runs nft)."""
    return in_netns(gw.lab.gw, lambda: gw.nft.sync_addresses(rules, time.time()))


def completed(lb: Lab, port: int, timeout: float = 1.0, server: str = SERVER) -> int:
    """How many of TRIES connects from the client to server:port complete within ``timeout``."""
    socks = in_netns(lb.cli, lambda: [socket.socket() for _ in range(TRIES)])  # sockets stay in their namespace
    sel = selectors.DefaultSelector()
    done = 0
    try:
        for s in socks:
            s.setblocking(False)
            s.connect_ex((server, port))
            sel.register(s, selectors.EVENT_WRITE)
        pending = len(socks)
        deadline = time.monotonic() + timeout
        while pending and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                sel.unregister(key.fileobj)
                pending -= 1
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                done += sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    finally:
        sel.close()
        for s in socks:
            s.close()
    return done


def outcomes(gw: Gateway) -> dict[int, int]:
    return {port: completed(gw.lab, port) for port in PORTS}


def test_a_port_rule_cuts_that_port_only_and_an_address_rule_every_port(gw: Gateway) -> None:
    assert outcomes(gw) == {22: TRIES, 80: TRIES}  # the lab works before any rule

    assert sync(gw, [AddressRule(SERVER, "tcp", (22, 22), ref="isms-filter-1")]) == 1
    assert outcomes(gw) == {22: 0, 80: TRIES}

    assert sync(gw, [AddressRule(SERVER, ref="order-1")]) == 1
    assert outcomes(gw) == {22: 0, 80: 0}

    assert sync(gw, []) == 0
    assert outcomes(gw) == {22: TRIES, 80: TRIES}


def test_a_range_with_any_protocol_and_a_client_rule_cut_too(gw: Gateway) -> None:
    assert sync(gw, [AddressRule("198.51.100.1-198.51.100.15", "", (20, 25), ref="isms-filter-2")]) == 2  # tcp and udp
    assert outcomes(gw) == {22: 0, 80: TRIES}

    assert sync(gw, [AddressRule(CLIENT_IP, "tcp", (80, 80), ref="isms-filter-3", src=True)]) == 1
    assert outcomes(gw) == {22: TRIES, 80: 0}

    sync(gw, [])
    assert outcomes(gw) == {22: TRIES, 80: TRIES}


def test_writing_the_rules_again_opens_no_gap(gw: Gateway) -> None:
    """sync_addresses flushes and refills the sets in one transaction: SYNs sent all the while it
    runs, again and again, never get through. (Deleting the sets and making them again, with their
    rules, in one transaction let 5 to 9 of some 2,500 through here: a new concatenated set's
    elements are published after its rules.)"""
    rules = [AddressRule(SERVER, "tcp", (22, 22), ref="isms-filter-4")]
    sync(gw, rules)
    cap = min(3000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200)
    spraying, syncing = threading.Event(), threading.Event()
    syncing.set()
    socks: list[socket.socket] = []

    def spray() -> None:  # in the client namespace: connects, one after the other, while the gateway syncs
        while syncing.is_set() and len(socks) < cap:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((SERVER, 22))
            socks.append(s)
            spraying.set()

    sprayer = threading.Thread(target=in_netns, args=(gw.lab.cli, spray))
    sprayer.start()
    try:
        assert spraying.wait(10)
        for _ in range(30):
            sync(gw, rules)
    finally:
        syncing.clear()
        sprayer.join()
    sel = selectors.DefaultSelector()
    try:
        for s in socks:
            sel.register(s, selectors.EVENT_WRITE)
        through = [k for k, _ in sel.select(1.0) if isinstance(k.fileobj, socket.socket)
                   and k.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0]
    finally:
        sel.close()
        for s in socks:
            s.close()
    assert len(socks) >= 100 and through == [], (len(socks), len(through))
    sync(gw, [])
