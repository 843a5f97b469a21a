"""A self-contained lab on this machine, built with pyroute2 (no shell scripts):

    client ns ── veth ── gateway ns (beiand captures here, forwards) ── veth ── hosted ns (servers)
    192.0.2.2          192.0.2.1 | 198.51.100.1                       198.51.100.0/24

The hosted namespace serves several names over HTTP, HTTPS and QUIC, and DNS, on the demo's
addresses (records: beiand.lab.demo). Used by ``beiand lab`` (the README's demo), the integration
tests and the benchmarks. Everything is removed by :meth:`Lab.close`, also after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute, NetNS, netns

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
CLIENT_IP, GW_CLIENT_IP, GW_HOSTED_IP = "192.0.2.2", "192.0.2.1", "198.51.100.1"
DNS_IP = "198.51.100.53"
SERVER_IPS = ["198.51.100.10", "198.51.100.11", "198.51.100.12", "198.51.100.13", "198.51.100.14", "198.51.100.20",
              "198.51.100.30", "198.51.100.31", DNS_IP]
ODD_HTTP_PORT, ODD_TLS_PORT, ODD_QUIC_PORT = 8888, 3000, 4433  # the lab's sites on ports no one watches (issue 32)
# name → address it is served from (and answered by the lab's DNS server)
ZONE = {
    "www.example.com.cn": "198.51.100.10",  # filed for us
    "xn--fsqu00a.xn--fiqs8s": "198.51.100.10",  # 例子.中国, filed
    "api.shapp.cn": "198.51.100.20",  # filed (APP), its IP listed
    "unfiled.example.xyz": "198.51.100.11",  # no filing
    "quic-unfiled.example.top": "198.51.100.14",  # no filing, QUIC
    "shop.example.net": "198.51.100.12",  # filed through another provider: mismatch
    "old.example.org": "198.51.100.13",  # cancelled
}

_libc = ctypes.CDLL(None, use_errno=True)


def setns(name: str) -> None:
    """Move the calling thread (or a child before exec) into a named network namespace."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread inside the namespace (setns switches only the calling thread)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            setns(name)
            box["v"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["e"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]  # type: ignore[no-any-return]


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM to every process still running, then wait for each; SIGKILL after ``timeout``."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Lab:
    def __init__(self, prefix: str = "bd") -> None:
        tag = uuid.uuid4().hex[:6]
        self.cli, self.gw, self.srv = f"{prefix}c{tag}", f"{prefix}g{tag}", f"{prefix}s{tag}"
        self.gw_if, self.gw_out_if = "gw0", "gw1"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._built = False

    # -- topology ---------------------------------------------------------------------------

    def build(self) -> Lab:
        for ns in (self.cli, self.gw, self.srv):
            netns.create(ns)
        self._built = True
        tag = self.cli[-6:]
        with IPRoute() as ip:
            a, b, c, d = f"c{tag}", f"g{tag}", f"h{tag}", f"s{tag}"
            ip.link("add", ifname=a, kind="veth", peer={"ifname": b})
            ip.link("add", ifname=c, kind="veth", peer={"ifname": d})
            for ifname, ns in ((a, self.cli), (b, self.gw), (c, self.gw), (d, self.srv)):
                idx = ip.link_lookup(ifname=ifname)[0]
                ip.link("set", index=idx, net_ns_fd=ns)
        self._conf(self.cli, f"c{tag}", "cl0", [(CLIENT_IP, 24)], GW_CLIENT_IP)
        self._conf(self.gw, f"g{tag}", self.gw_if, [(GW_CLIENT_IP, 24)], None)
        self._conf(self.gw, f"h{tag}", self.gw_out_if, [(GW_HOSTED_IP, 24)], None)
        self._conf(self.srv, f"s{tag}", "srv0", [(x, 24) for x in SERVER_IPS], GW_HOSTED_IP)
        in_netns(self.gw, lambda: Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n"))
        return self

    @staticmethod
    def _conf(ns: str, old: str, new: str, addrs: Sequence[tuple[str, int]], gateway: str | None) -> None:
        with NetNS(ns) as n:
            idx = n.link_lookup(ifname=old)[0]
            n.link("set", index=idx, ifname=new)
            for addr, plen in addrs:
                n.addr("add", index=idx, address=addr, prefixlen=plen)
            n.link("set", index=idx, state="up")
            lo = n.link_lookup(ifname="lo")[0]
            n.link("set", index=lo, state="up")
            if gateway:
                n.route("add", dst="0.0.0.0/0", gateway=gateway)

    # -- processes --------------------------------------------------------------------------

    def spawn(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start a process inside a namespace (setns in the child before exec)."""
        p = subprocess.Popen(list(argv), preexec_fn=lambda: setns(ns), **kw)
        self.procs.append(p)
        return p

    def run(self, ns: str, argv: Sequence[str], timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(list(argv), preexec_fn=lambda: setns(ns), timeout=timeout, **kw)

    def start_servers(self, workdir: Path, requests: Path | None = None) -> subprocess.Popen[bytes]:
        """HTTP :80 and :8080, HTTPS :443, QUIC udp/443, DNS :53 in the hosted namespace;
        ``requests``: a file the servers append ``host path`` to for every request they answer."""
        ready = workdir / "servers.ready"
        extra = ["--requests", str(requests)] if requests is not None else []
        p = self.spawn(self.srv, [sys.executable, "-m", "beiand.lab.labservers", "--dir", str(workdir), "--ready", str(ready),
                                  *extra],
                       stdout=open(workdir / "servers.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        deadline = time.monotonic() + 30
        while not ready.exists():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("lab servers did not start: " + (workdir / "servers.log").read_text()[-2000:])
            time.sleep(0.05)
        return p

    def close(self) -> None:
        stop_processes(self.procs, 10)
        self.procs.clear()
        if self._built:
            for ns in (self.cli, self.gw, self.srv):
                with contextlib.suppress(OSError, FileNotFoundError):
                    netns.remove(ns)
            self._built = False

    def __enter__(self) -> Lab:
        return self.build()

    def __exit__(self, *exc: object) -> None:
        self.close()
