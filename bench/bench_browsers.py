"""Real browsers through enforcement (issue 36), in the lab:

    python bench/bench_browsers.py [--loads 20] [--modes inline,passive] [--browsers chromium-tcp,chromium-quic,firefox-tcp]

For each mode and browser (Debian's Chromium over TCP and over QUIC, Firefox ESR over TCP), LOADS
loads of a filed name (www.example.com.cn) and LOADS of an unfiled one (unfiled.example.xyz), both
on 198.51.100.11, through the gateway with ``beiand run`` in enforce. Prints per mode and browser:

- filed loads served (the server answered the load's own path);
- unfiled loads served, unfiled loads whose whole ClientHello reached the server, and unfiled loads
  in which the server's handshake (TLS ServerHello / QUIC Handshake packet) reached the client.

The bar (issue 36): inline, 0 unfiled loads reach the server's handshake over 20 loads per browser
and transport; filed loads served. Needs root, chromium, firefox-esr and certutil.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from beiand.lab.browsers import FILED, SHARED, UNFILED, enforcing_lab


def run_mode(mode: str, browsers: list[str], loads: int) -> None:
    wd = Path(tempfile.mkdtemp(prefix=f"beiand-browsers-{mode}-"))
    with enforcing_lab(mode, wd) as (_, b):
        for browser in browsers:
            t0 = time.monotonic()
            filed_ok = unfiled_served = unfiled_hello = unfiled_handshake = tried = 0
            for _ in range(loads):
                f = b.load(browser, FILED, SHARED)
                filed_ok += f.served
                u = b.load(browser, UNFILED, SHARED)
                tried += bool(u.client_ports)
                unfiled_served += u.served
                unfiled_hello += UNFILED in u.server_hellos
                unfiled_handshake += u.server_handshake > 0
            print(f"{mode:8} {browser:14} filed served {filed_ok}/{loads}   unfiled: tried {tried}/{loads}, "
                  f"served {unfiled_served}, whole ClientHello at the server {unfiled_hello}, "
                  f"server handshake at the client {unfiled_handshake}   ({time.monotonic() - t0:.0f} s)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loads", type=int, default=20)
    ap.add_argument("--modes", default="inline,passive")
    ap.add_argument("--browsers", default="chromium-tcp,chromium-quic,firefox-tcp")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    print(f"load {os.getloadavg()[0]:.2f}; {a.loads} loads of each name per mode and browser")
    for mode in a.modes.split(","):
        run_mode(mode, a.browsers.split(","), a.loads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
