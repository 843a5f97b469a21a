"""How much the kernel filter lets through (issue 15): the share of frames the BPF program passes on
the replay bench capture (bench/gen_capture.py), and whether it passes every frame the decoder names.

    python bench/bench_bpf.py [--packets N] [--keep DIR] [--encap vxlan,qinq] [--program-from REV] [--connections]
                              [--many-ports] [--watched-only]

The program is run by ``beiand.capture.bpf.run`` (the kernel's semantics, in Python) on every frame.
"bulk" is every frame the decoder names nothing from (handshakes, ACKs, server data, uploads);
"named" the frames that complete an observation. ``--encap`` wraps every frame of the capture in
the given encapsulations (innermost first, ``beiand.lab.encap.STEPS``), as on a mirror port or
an overlay; ``--program-from REV`` takes ``beiand/capture/bpf.py`` from a git revision (the
"before" figure; that older file builds Ethernet programs only). ``--connections``: the program with
connection records on (issue 19: TCP SYN/FIN/RST and UDP on any port also pass).

Issue 32 (names on any port, on by default): ``--many-ports`` moves each flow of the capture from
its watched server port to one of ``MANY_PORTS`` (a third stay where they are; the choice is a hash
of the flow, so a flow keeps one port), the mix of a link where sites sit on many ports;
``--watched-only`` builds the program without any-port naming (``capture.any_port = false``, and
every program before issue 32). The bar: bulk passed on the many-port mix at most 1.5x of what the
program before issue 32 passed on the watched-ports mix.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from types import ModuleType

from beiand.capture import bpf as current_bpf
from beiand.capture import read_capture
from beiand.lab import encap
from beiand.net.decoder import Decoder, DecoderConfig

HERE = Path(__file__).parent
TCP, UDP = (80, 443, 8080, 8443), (443,)
# where sites and services sit on a link with traffic on many ports: web on odd ports, SSH, databases, mail, games
MANY_PORTS = (3000, 8888, 8000, 9000, 5000, 8001, 8081, 9443, 4443, 2053, 2083, 2096, 22, 25, 587, 993, 3306, 5432, 6379, 27017,
              1935, 5222, 7777, 27015, 51820, 1194, 4433, 10443, 18080, 60000)


def many_ports(frame: bytes) -> bytes:
    """The frame with its flow's server port (a watched one) moved to one of ``MANY_PORTS``, by a hash
    of the client's address and port (Ethernet + IPv4/IPv6 without options or extensions; else as is)."""
    if frame[12:14] == b"\x08\x00" and frame[14] == 0x45:
        l4, proto, addrs = 34, frame[23], frame[26:34]
    elif frame[12:14] == b"\x86\xdd" and frame[20] in (6, 17):
        l4, proto, addrs = 54, frame[20], frame[22:54]
    else:
        return frame
    if proto not in (6, 17) or len(frame) < l4 + 4:
        return frame
    sport, dport = int.from_bytes(frame[l4:l4 + 2], "big"), int.from_bytes(frame[l4 + 2:l4 + 4], "big")
    watched = TCP if proto == 6 else UDP
    if dport in watched:
        at, client = l4 + 2, (addrs[: len(addrs) // 2], sport)
    elif sport in watched:
        at, client = l4, (addrs[len(addrs) // 2 :], dport)
    else:
        return frame
    h = zlib.crc32(client[0] + client[1].to_bytes(2, "big")) % (len(MANY_PORTS) * 3 // 2)
    if h >= len(MANY_PORTS):
        return frame  # a third stay on their watched port
    return frame[:at] + MANY_PORTS[h].to_bytes(2, "big") + frame[at + 2:]


def program_module(rev: str | None) -> ModuleType:
    if not rev:
        return current_bpf
    src = subprocess.run(["git", "-C", str(HERE.parent), "show", f"{rev}:beiand/capture/bpf.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="beiand-bpf-")) / "bpf_old.py"
    path.write_text(src, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("bpf_old", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bpf_old"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--keep", help="directory for the capture (reused if present; bench_replay.py's --keep works)")
    ap.add_argument("--encap", default="", help="comma-separated encapsulation steps around every frame")
    ap.add_argument("--program-from", default="", help="git revision of beiand/capture/bpf.py to measure instead")
    ap.add_argument("--connections", action="store_true", help="the program with connection records on (issue 19)")
    ap.add_argument("--many-ports", action="store_true", help="move each flow to one of many server ports (issue 32)")
    ap.add_argument("--watched-only", action="store_true", help="the program without any-port naming (issue 32)")
    a = ap.parse_args()
    d = Path(a.keep or tempfile.mkdtemp(prefix="beiand-bench-"))
    d.mkdir(parents=True, exist_ok=True)
    pcap = d / "mix.pcap"
    if not pcap.exists():
        subprocess.run([sys.executable, str(HERE / "gen_capture.py"), str(pcap), "--packets", str(a.packets)], check=True)
    steps = [s for s in a.encap.split(",") if s]
    mod = program_module(a.program_from)
    kw = {"connections": True} if a.connections else {}
    if not a.watched_only and "any_port" in mod.build.__kwdefaults__:
        kw["any_port"] = True  # the daemon's default since issue 32
    prog = mod.build(TCP, UDP, **kw)
    counted = getattr(mod, "run_counted", None) or current_bpf.run_counted  # the older file lacks it: same semantics
    dec = Decoder(DecoderConfig(any_port="any_port" in kw, odd_rest=False))  # a live passive decoder
    frames = named = bulk = passed_named = passed_bulk = bulk_steps = 0
    t0 = time.perf_counter()
    for ts, lt, frame in read_capture(pcap):
        if frames >= a.packets:
            break
        if a.many_ports:
            frame = many_ports(frame)
        if steps:
            frame = encap.wrap(frame[14:], steps)
        frames += 1
        verdict, cost = counted(prog, frame)
        ok = verdict > 0
        if dec.feed(ts, frame, lt):
            named += 1
            passed_named += ok
        else:
            bulk += 1
            passed_bulk += ok
            bulk_steps += cost
    secs = time.perf_counter() - t0
    label = ((a.program_from or "working tree") + (", connection records on" if a.connections else "")
             + (", any port" if "any_port" in kw else ", watched ports only") + (", many-port mix" if a.many_ports else ""))
    print(f"program from {label}: {len(prog)} instructions; capture {pcap} ({frames} frames)"
          f"{', inside ' + '/'.join(steps) if steps else ''}")
    print(f"  bulk frames passed:  {passed_bulk}/{bulk} = {100 * passed_bulk / max(bulk, 1):.2f}%"
          f"  ({bulk_steps / max(bulk, 1):.1f} instructions per bulk frame)")
    print(f"  named frames passed: {passed_named}/{named} = {100 * passed_named / max(named, 1):.2f}%")
    print(f"  all frames passed:   {passed_bulk + passed_named}/{frames} = {100 * (passed_bulk + passed_named) / max(frames, 1):.2f}%"
          f"  ({secs:.1f} s in the Python interpreter)")


if __name__ == "__main__":
    main()
