"""What the connection-record lab tests share (issue 19): IPv6 on the lab, and the hosted
services no name is seen for (an SSH-like TCP service on 2222, a UDP service on 27015)."""

from __future__ import annotations

from pathlib import Path

from pyroute2 import NetNS

from beiand.lab.netns import Lab, in_netns

C6, GW6_C, GW6_S, S6 = "2001:db8:1::2", "2001:db8:1::1", "2001:db8:100::1", "2001:db8:100::10"

# Python source for the server namespace: ``ssh()`` (dual-stack, port 2222) and ``udp()`` (on the
# address given as argv[2], port 27015, answering from where the client sent).
UNNAMED_SERVICES = r"""
import socket, sys, threading
def ssh():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", 2222)); s.listen(16)
    while True:
        c, _ = s.accept()
        c.sendall(b"SSH-2.0-OpenSSH_9.2 lab\r\n"); c.recv(100); c.close()
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((sys.argv[2], 27015))
    while True:
        data, peer = u.recvfrom(2048); u.sendto(b"pong " + data, peer)
"""


def add_ipv6(lab: Lab) -> None:
    """The lab is IPv4: give the client and the hosted side IPv6 too (no DAD: usable at once)."""
    for ns in (lab.cli, lab.gw, lab.srv):
        in_netns(ns, lambda: Path("/proc/sys/net/ipv6/conf/all/forwarding").write_text("1\n"))
    for ns, ifname, addr, gw in ((lab.cli, "cl0", C6, GW6_C), (lab.gw, lab.gw_if, GW6_C, None),
                                 (lab.gw, lab.gw_out_if, GW6_S, None), (lab.srv, "srv0", S6, GW6_S)):
        with NetNS(ns) as n:
            idx = n.link_lookup(ifname=ifname)[0]
            n.addr("add", index=idx, address=addr, prefixlen=64, flags=0x02)  # IFA_F_NODAD
            if gw:
                n.route("add", dst="::/0", gateway=gw, family=10)
