"""``beiand run`` alone in a fresh network namespace, capturing on its loopback.

Smaller than the lab (no client or hosted namespace, no servers): for tests that need the real
daemon process (signals, reloads, metrics, the API) but little traffic. Everything it starts
(the namespace, the daemon, optionally a ClickHouse server inside the namespace) goes away on
:meth:`NsDaemon.close`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyroute2 import NetNS, netns

from beiand.lab.netns import in_netns, setns, stop_processes
from beiand.lab.traffic import dns_response
from beiand.records.generate import HEADER, OUR_PROVIDER

PORT = 9640
HOSTED = "198.51.100.0/24"


def write_records(path: Path, n: int, first: int = 0) -> None:
    """``n`` active website filings of this provider: ``site<i>.example.cn``, numbers 京ICP备1000<i>号-1."""
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i in range(first, first + n):
            w.writerow([f"京ICP备{10_000_000 + i}号-1", f"示例{i}有限公司", "网站", f"站点{i}", f"site{i}.example.cn", "",
                        OUR_PROVIDER, "正常", "2024-01-01"])


def metric(text: str, name: str) -> float:
    """Sum of the samples of ``name`` (with any labels), or of exactly ``name{…}`` when given."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            if key == name or key.startswith(name + "{") or ("{" in name and key == name):
                total += float(value)
    return total


class NsDaemon:
    def __init__(self, wd: Path, records: int = 100, workers: int = 1, extra: str = "", records_extra: str = "",
                 daemon_extra: str = "", gateway: str = "ns-gw") -> None:
        self.wd = wd
        wd.mkdir(parents=True, exist_ok=True)
        self.ns = f"bdr{uuid.uuid4().hex[:8]}"
        self.records = wd / "records.csv"
        write_records(self.records, records)
        inv = wd / "inventory.csv"
        inv.write_text(f"prefix,account,site,state,mode\n{HOSTED},cust-0001,bj-1,active,monitor\n", encoding="utf-8")
        self.token = "s3cret"
        (wd / "token").write_text(self.token + "\n")
        (wd / "token").chmod(0o600)  # a secret must be private (issue 17)
        self.config = wd / "beiand.toml"
        self.config.write_text(f"""
[daemon]
gateway = "{gateway}"
workers = {workers}
state_dir = "{wd / 'state'}"
{daemon_extra}

[capture]
interfaces = ["lo"]

[records]
files = ["{self.records}"]
provider = "{OUR_PROVIDER}"
{records_extra}

[inventory]
file = "{inv}"

[accesslog]
directory = "{wd / 'log'}"
commit_interval = 0.2
{extra}

[server]
listen = "127.0.0.1:{PORT}"
token_file = "{wd / 'token'}"
""", encoding="utf-8")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        netns.create(self.ns)
        with NetNS(self.ns) as n:
            n.link("set", index=n.link_lookup(ifname="lo")[0], state="up")

    def spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as f:
            p = subprocess.Popen(argv, preexec_fn=lambda: setns(self.ns), stdout=f, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def start(self, timeout: float = 30) -> None:
        self.proc = self.spawn([sys.executable, "-m", "beiand.cli", "run", "--config", str(self.config)], self.wd / "beiand.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"beiand run exited with {self.proc.returncode}: {self.log()[-3000:]}")
            with contextlib.suppress(OSError):
                if self.get("/readyz", timeout=1)[0] == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError("beiand did not become ready: " + self.log()[-3000:])

    def log(self) -> str:
        return (self.wd / "beiand.log").read_text(errors="replace")

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        def get() -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{path}", timeout=timeout) as r:
                    return int(r.status), bytes(r.read())
            except urllib.error.HTTPError as e:
                return int(e.code), bytes(e.read())

        return in_netns(self.ns, get)

    def json(self, path: str) -> Any:
        return json.loads(self.get(path)[1])

    def metrics(self) -> str:
        return self.get("/metrics")[1].decode()

    def post(self, path: str) -> int:
        def post() -> int:
            req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", method="POST",
                                         headers={"Authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return int(e.code)

        return in_netns(self.ns, post)

    def verdict(self, name: str, server: str = "198.51.100.10") -> str:
        return str(self.json(f"/api/v1/lookup?name={name}&server={server}")["verdict"])

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def wait_metric(self, name: str, above: float, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if metric(m, name) > above or time.monotonic() > deadline:
                return m
            time.sleep(0.1)

    def wait_for(self, ok: Callable[[str], bool], timeout: float = 30, what: str = "") -> str:
        """The metrics text once ``ok(text)``; fails the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if ok(m):
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached in {timeout} s: {what}\n" + "\n".join(
                    ln for ln in m.splitlines() if ln.startswith(("beiand_clickhouse", "beiand_verdicts", "beiand_reload"))))
            time.sleep(0.2)

    def dns_answers(self, names: list[str], addr: str = "198.51.100.10") -> None:
        """DNS answers on the namespace's loopback (the daemon captures them), one per name."""

        def send() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 53))
                for i, name in enumerate(names):
                    s.sendto(dns_response(name, [addr], qid=i & 0xFFFF), ("127.0.0.1", 40000))

        in_netns(self.ns, send)

    def close(self) -> None:
        stop_processes(self.procs, 30)
        with contextlib.suppress(OSError, FileNotFoundError):
            netns.remove(self.ns)


def link(ns_a: str, ns_b: str, if_a: str, if_b: str, addr_a: str, addr_b: str, prefixlen: int = 24) -> None:
    """A veth pair between two network namespaces, each end addressed and up."""
    from pyroute2 import IPRoute, NetNS

    with IPRoute() as ip:
        ip.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b})
        ip.link("set", index=ip.link_lookup(ifname=if_a)[0], net_ns_fd=ns_a)
        ip.link("set", index=ip.link_lookup(ifname=if_b)[0], net_ns_fd=ns_b)
    for ns, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
        with NetNS(ns) as h:
            idx = h.link_lookup(ifname=ifname)[0]
            h.addr("add", index=idx, address=addr, prefixlen=prefixlen)
            h.link("set", index=idx, state="up")


def require_root() -> None:
    if os.geteuid() != 0:
        import pytest

        pytest.fail("needs root (network namespaces)")
