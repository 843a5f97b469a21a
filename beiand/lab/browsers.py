"""Real browsers through the lab's gateway (issue 36): Debian's Chromium over TCP and QUIC and
Firefox ESR over TCP load a page from the hosted namespace, and what crossed the wire is read
back from captures on both ends.

A load is judged by what happened, not by what the browser printed:

- ``served``: the lab's servers answered the load's own path (``Lab.start_servers(requests=…)``);
- ``server_hellos``: names whose whole ClientHello reached the server (beiand's own decoder,
  passive, on a capture of the hosted side's interface): an inline block lets none through;
- ``server_handshake``: the server's handshake reached the client for a connection that named
  the load's host (a TLS ServerHello, or a QUIC Handshake packet, on a capture of the client's
  interface).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from beiand.lab.netns import Lab, in_netns, setns
from beiand.model import Kind
from beiand.net.decoder import LINKTYPE_ETHERNET, Decoder, DecoderConfig

PACKET_OUTGOING = 4
_NAMED = {Kind.TLS_SNI, Kind.QUIC_SNI, Kind.HTTP_HOST}


class Sniffer:
    """Every frame on one interface of a namespace (AF_PACKET, both directions), in a thread."""

    def __init__(self, ns: str, ifname: str) -> None:
        def open_socket() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            s.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE
            s.bind((ifname, 0))
            s.settimeout(0.05)
            return s

        self.sock = in_netns(ns, open_socket)
        self.frames: list[tuple[float, int, bytes]] = []  # (time, packet type, frame)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(1 << 18)
            except TimeoutError:
                continue
            self.frames.append((time.time(), addr[2], data))

    def stop(self) -> list[tuple[float, int, bytes]]:
        self._stop.set()
        self._thread.join()
        self.sock.setblocking(False)
        while True:  # what is still waiting in the socket
            try:
                data, addr = self.sock.recvfrom(1 << 18)
            except BlockingIOError:
                break
            self.frames.append((time.time(), addr[2], data))
        self.sock.close()
        return self.frames


def named(frames: list[tuple[float, int, bytes]], outgoing: bool | None) -> list[tuple[str, int, str]]:
    """(name, client port, kind) of every whole ClientHello / request head in the frames, decoded by
    beiand's passive decoder; ``outgoing``: only frames sent (True) or received (False) there."""
    d = Decoder(DecoderConfig(tcp_ports=frozenset({80, 443}), udp_ports=frozenset({443})))
    out = []
    for ts, ptype, frame in frames:
        if outgoing is not None and (ptype == PACKET_OUTGOING) != outgoing:
            continue
        out += [o for o in d.feed(ts, frame, LINKTYPE_ETHERNET) if o.kind in _NAMED]
    return [(o.name, o.client_port, str(o.kind)) for o in out]


def _quic_handshake_packet(d: bytes) -> bool:
    """A server datagram that holds a QUIC v1/v2 Handshake packet (coalesced packets walked)."""
    off = 0
    while off + 7 <= len(d) and d[off] & 0x80:
        version = int.from_bytes(d[off + 1 : off + 5], "big")
        ptype = (d[off] >> 4) & 3
        handshake = 3 if version == 0x6B3343CF else 2
        if ptype == handshake:
            return True
        p = off + 5
        p += 1 + d[p]  # DCID
        if p >= len(d):
            return False
        p += 1 + d[p]  # SCID
        initial = 1 if version == 0x6B3343CF else 0
        if ptype == initial:
            n, p = _varint(d, p)
            p += n  # token
        if ptype == (0 if version == 0x6B3343CF else 3):  # Retry: no length
            return False
        n, p = _varint(d, p)
        off = p + n
    return False


def _varint(d: bytes, p: int) -> tuple[int, int]:
    if p >= len(d):
        return 1 << 30, p
    ln = 1 << (d[p] >> 6)
    v = d[p] & 0x3F
    for i in range(1, ln):
        v = (v << 8) | (d[p + i] if p + i < len(d) else 0)
    return v, p + ln


def server_handshakes(frames: list[tuple[float, int, bytes]], ports: set[int], server_port: int = 443) -> int:
    """Server → client packets on the client ports given that carry the server's handshake: a TLS
    ServerHello (TCP from ``server_port``) or a QUIC Handshake packet (UDP from it). IPv4, Ethernet."""
    n = 0
    for _, ptype, f in frames:
        if ptype == PACKET_OUTGOING or len(f) < 34 or f[12:14] != b"\x08\x00":
            continue
        ihl = (f[14] & 0xF) * 4
        l4 = 14 + ihl
        proto = f[23]
        if len(f) < l4 + 8:
            continue
        sport, dport = int.from_bytes(f[l4 : l4 + 2], "big"), int.from_bytes(f[l4 + 2 : l4 + 4], "big")
        if sport != server_port or dport not in ports:
            continue
        if proto == 6:
            pay = f[l4 + ((f[l4 + 12] >> 4) * 4) :]
            if len(pay) > 5 and pay[0] == 0x16 and pay[5] == 0x02:
                n += 1
        elif proto == 17 and _quic_handshake_packet(f[l4 + 8 :]):
            n += 1
    return n


@dataclass
class Load:
    """What one browser load did."""

    browser: str
    name: str
    path: str
    rc: int | None
    served: bool
    server_hellos: list[str] = field(default_factory=list)  # names whose whole ClientHello reached the server
    client_ports: set[int] = field(default_factory=set)  # the client's connections that named the host
    server_handshake: int = 0  # server handshakes that reached the client on those connections
    output: str = ""


def _spawn(ns: str, argv: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Run ``argv`` in the namespace, in its own session; the whole session is killed after ``timeout``."""

    def pre() -> None:
        setns(ns)
        os.setsid()

    p = subprocess.Popen(argv, preexec_fn=pre, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        return None, out.decode(errors="replace")
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # helpers left behind by the browser
        except ProcessLookupError:
            pass


class Browsers:
    """Debian's Chromium and Firefox ESR in the lab's client namespace, one profile each per run."""

    def __init__(self, lab: Lab, wd: Path, requests: Path, cert: Path) -> None:
        self.lab = lab
        self.wd = wd
        self.requests = requests
        self.home = wd / "home"
        self.home.mkdir(exist_ok=True)
        self.chromium_profile = wd / "chromium-profile"
        self.firefox_profile = wd / "firefox-profile"
        shutil.rmtree(self.firefox_profile, ignore_errors=True)
        self.firefox_profile.mkdir()
        if shutil.which("certutil"):  # the lab's CA trusted: the filed page loads in Firefox
            subprocess.run(["certutil", "-N", "-d", f"sql:{self.firefox_profile}", "--empty-password"], check=True,
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
            subprocess.run(["certutil", "-A", "-d", f"sql:{self.firefox_profile}", "-n", "beiand-lab", "-t", "C,,",
                            "-i", str(cert.with_name("lab-ca.pem"))], check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        # Chromium's QUIC checks certificates its own way: --ignore-certificate-errors is not enough there,
        # the key's hash is (base64 of the SHA-256 of the SubjectPublicKeyInfo).
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        spki = x509.load_pem_x509_certificate(cert.read_bytes()).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.spki = base64.b64encode(hashlib.sha256(spki).digest()).decode()
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home), "LANG": "C.UTF-8",
                    "XDG_RUNTIME_DIR": str(self.home), "MOZ_HEADLESS": "1"}

    def _firefox_prefs(self, ip: str) -> None:
        prefs = {
            "network.dns.forceResolve": ip, "network.trr.mode": 5, "network.http.http3.enable": False,
            "network.connectivity-service.enabled": False, "network.captive-portal-service.enabled": False,
            "browser.shell.checkDefaultBrowser": False, "app.update.enabled": False, "app.update.auto": False,
            "datareporting.policy.dataSubmissionEnabled": False, "datareporting.healthreport.uploadEnabled": False,
            "toolkit.telemetry.enabled": False, "toolkit.telemetry.server": "", "browser.safebrowsing.malware.enabled": False,
            "browser.safebrowsing.phishing.enabled": False, "browser.safebrowsing.downloads.enabled": False,
            "extensions.update.enabled": False, "extensions.getAddons.cache.enabled": False,
            "browser.startup.homepage_override.mstone": "ignore", "browser.aboutwelcome.enabled": False,
            "network.prefetch-next": False, "network.dns.disablePrefetch": True, "network.predictor.enabled": False,
            "security.OCSP.enabled": 0, "browser.newtabpage.enabled": False, "browser.startup.page": 0,
            "services.settings.server": "http://127.0.0.1:9/", "remote-settings.disabled": True,
            "network.proxy.type": 0, "media.gmp-manager.url": "http://127.0.0.1:9/",
        }
        lines = []
        for k, v in prefs.items():
            val = ("true" if v else "false") if isinstance(v, bool) else (str(v) if isinstance(v, int) else f'"{v}"')
            lines.append(f'user_pref("{k}", {val});')
        (self.firefox_profile / "user.js").write_text("\n".join(lines) + "\n")

    def load(self, browser: str, name: str, ip: str, timeout: float = 25.0, port: int = 443) -> Load:
        """Load ``https://name[:port]/<unique path>`` with ``browser`` (``chromium-tcp``, ``chromium-quic``,
        ``firefox-tcp``), the name resolved to ``ip``; the captures tell what crossed."""
        path = f"/load-{uuid.uuid4().hex[:12]}"
        url = f"https://{name}{path}" if port == 443 else f"https://{name}:{port}{path}"
        if browser.startswith("chromium"):
            argv = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--disable-features=MediaRouter,OptimizationHints",
                    f"--user-data-dir={self.chromium_profile}", "--ignore-certificate-errors",
                    f"--ignore-certificate-errors-spki-list={self.spki}",
                    f"--host-resolver-rules=MAP {name} {ip}", "--timeout=8000"]
            argv += (["--enable-quic", f"--origin-to-force-quic-on={name}:{port}"] if browser == "chromium-quic"
                     else ["--disable-quic"])
            argv += ["--dump-dom", url]
        else:
            self._firefox_prefs(ip)
            argv = ["firefox-esr", "--headless", "--no-remote", "--profile", str(self.firefox_profile),
                    "--screenshot", str(self.wd / "firefox.png"), url]
        lab = self.lab
        client = Sniffer(lab.cli, "cl0")
        server = Sniffer(lab.srv, "srv0")
        try:
            rc, out = _spawn(lab.cli, argv, self.env, timeout)
        finally:
            cframes = client.stop()
            sframes = server.stop()
        host = name if port == 443 else f"{name}:{port}"  # the Host the server logs
        served = self.requests.exists() and f"{host} {path}\n" in self.requests.read_text()
        hellos = [n for n, _, _ in named(sframes, outgoing=False)]
        ports = {p for n, p, _ in named(cframes, outgoing=True) if n == name}
        return Load(browser, name, path, rc, served, hellos, ports, server_handshakes(cframes, ports, port), out[-2000:])


SHARED = "198.51.100.11"  # a filed and an unfiled name on one address
FILED, UNFILED = "www.example.com.cn", "unfiled.example.xyz"
INVENTORY = "prefix,account,site,state,mode\n198.51.100.0/24,cust-enf,bj,active,enforce\n"


@contextlib.contextmanager
def enforcing_lab(mode: str, wd: Path) -> Iterator[tuple[Lab, Browsers]]:
    """The lab with ``beiand run`` on its gateway in enforce (``mode``: ``inline`` or ``passive``)
    over all of 198.51.100.0/24, its servers logging their requests, and the browsers; the daemon
    stopped at the end (SIGTERM: its rules and tables removed)."""
    import sys

    from beiand.lab.demo import build
    from beiand.lab.labdemo import wait_ready, write_config

    files = build(wd / "samples")
    Path(files["inventory"]).write_text(INVENTORY)
    # A browser's background connections (Firefox's to Mozilla's services, all resolved to the lab's
    # address) are unfiled names, blocked and retried: the breaker must not take them for a broken feed.
    extra = "\n[enforce]\n" + ("inline = true\n" if mode == "inline" else "") + \
        "max_blocks_per_minute = 100000\nmin_verdicts_for_share = 1000000\n"
    cfg = write_config(wd, files, extra=extra)
    requests = wd / "requests.log"
    with Lab() as lb:
        lb.start_servers(wd, requests=requests)
        with open(wd / "beiand.log", "ab") as logf:
            daemon = lb.spawn(lb.gw, [sys.executable, "-m", "beiand.cli", "run", "--config", str(cfg)], stdout=logf, stderr=logf)
        wait_ready(lb, daemon)
        try:
            yield lb, Browsers(lb, wd, requests, wd / "lab-cert.pem")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
