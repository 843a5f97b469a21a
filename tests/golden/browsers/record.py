"""Record the first client bytes of real browsers (issue 36), for the inline/replay property test.

Run as root from the project's directory: ``.venv/bin/python -m tests.golden.browsers.record``. It
builds the lab (no beiand), loads ``https://www.example.com.cn/`` with Debian's Chromium over TCP and
QUIC and with Firefox ESR over TCP, captures the client's interface and writes here:

- ``<browser>-tcp.clienthello``: the TLS records of the first ClientHello that names the host;
- ``chromium-quic.initials``: the client's first UDP datagrams of that QUIC connection (each a
  2-byte length and the datagram), as sent: Initial packets, their CRYPTO frames shuffled;
- ``chromium-quic.clienthello``: the ClientHello handshake message they carry (decrypted);
- ``VERSIONS``: the browsers' versions.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from beiand.lab.browsers import PACKET_OUTGOING, Browsers, Sniffer, _spawn
from beiand.lab.netns import Lab
from beiand.net.quic import QuicInitialReader

HERE = Path(__file__).parent
NAME, IP = "www.example.com.cn", "198.51.100.10"


def _l4(frame: bytes) -> tuple[int, int, int, bytes] | None:
    """(protocol, source port, destination port, payload) of an Ethernet + IPv4 frame."""
    if frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0xF) * 4
    total = int.from_bytes(frame[16:18], "big") or len(frame) - 14
    l4, end = 14 + ihl, min(14 + total, len(frame))
    sport, dport = int.from_bytes(frame[l4 : l4 + 2], "big"), int.from_bytes(frame[l4 + 2 : l4 + 4], "big")
    if frame[23] == 6:
        return 6, sport, dport, frame[l4 + (frame[l4 + 12] >> 4) * 4 : end]
    if frame[23] == 17:
        return 17, sport, dport, frame[l4 + 8 : end]
    return None


def record(b: Browsers, lab: Lab, browser: str) -> list[tuple[int, int, bytes]]:
    """The client's outgoing (protocol, port, payload) to port 443 during one load."""
    client = Sniffer(lab.cli, "cl0")
    try:
        argv = _argv(b, browser)
        _spawn(lab.cli, argv, b.env, 25)
    finally:
        frames = client.stop()
    out = []
    for _, ptype, f in frames:
        if ptype != PACKET_OUTGOING:
            continue
        x = _l4(f)
        if x and x[2] == 443 and x[3]:
            out.append((x[0], x[1], x[3]))
    return out


def _argv(b: Browsers, browser: str) -> list[str]:
    url = f"https://{NAME}/record"
    if browser == "firefox-tcp":
        b._firefox_prefs(IP)
        return ["firefox-esr", "--headless", "--no-remote", "--profile", str(b.firefox_profile), "--screenshot",
                str(b.wd / "firefox.png"), url]
    argv = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", f"--user-data-dir={b.chromium_profile}",
            "--ignore-certificate-errors", f"--ignore-certificate-errors-spki-list={b.spki}",
            f"--host-resolver-rules=MAP {NAME} {IP}", "--timeout=8000"]
    argv += ["--enable-quic", f"--origin-to-force-quic-on={NAME}:443"] if browser == "chromium-quic" else ["--disable-quic"]
    return [*argv, "--dump-dom", url]


def main() -> int:
    wd = Path(tempfile.mkdtemp(prefix="beiand-record-"))
    versions = []
    with Lab() as lab:
        lab.start_servers(wd)
        b = Browsers(lab, wd, wd / "requests.log", wd / "lab-cert.pem")
        for browser in ("chromium-tcp", "firefox-tcp", "chromium-quic"):
            sent = record(b, lab, browser)
            if browser.endswith("tcp"):
                first_port = next(p for proto, p, d in sent if proto == 6 and d[:1] == b"\x16" and NAME.encode() in b"".join(
                    x for q, pp, x in sent if pp == p))
                data = b"".join(d for proto, p, d in sent if proto == 6 and p == first_port)
                n, hello = 0, b""
                while n + 5 <= len(data) and data[n] == 0x16:  # the handshake records, nothing after them
                    ln = int.from_bytes(data[n + 3 : n + 5], "big")
                    hello += data[n : n + 5 + ln]
                    n += 5 + ln
                (HERE / f"{browser}.clienthello").write_bytes(hello)
            else:
                port = next(p for proto, p, d in sent if proto == 17)
                datagrams = []
                reader = QuicInitialReader()
                for proto, p, d in sent:
                    if proto == 17 and p == port and d[0] & 0x80 and not (d[0] >> 4) & 3:  # long header, Initial
                        datagrams.append(d)
                        if reader.feed(d) is not None:
                            break
                (HERE / "chromium-quic.initials").write_bytes(b"".join(len(d).to_bytes(2, "big") + d for d in datagrams))
                (HERE / "chromium-quic.clienthello").write_bytes(reader.crypto.buf)
        for cmd in (["chromium", "--version"], ["firefox-esr", "--version"]):
            versions.append(subprocess.run(cmd, capture_output=True, text=True, env=b.env).stdout.strip())
    (HERE / "VERSIONS").write_text("\n".join(versions) + "\n")
    shutil.rmtree(wd, ignore_errors=True)
    for p in sorted(HERE.iterdir()):
        print(p.name, p.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
