"""``beiand lab``: the daemon on a real (namespaced) network, on this machine.

Builds the lab (beiand.lab.netns), writes sample records, inventory and a config, starts
``beiand run`` in the gateway namespace, drives real traffic from the client namespace (curl
over HTTP/1.1 and HTTPS with TLS 1.2 and 1.3, a QUIC client, DNS queries), then shows what
beiand saw and decided, and where its metrics and log are. Cleans up after itself, also on
Ctrl-C. Needs root (network namespaces).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from beiand.lab.netns import DNS_IP, ZONE, Lab, in_netns

PORT = 9640

QUIC_CLIENT = """
import asyncio, ssl, sys
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration
async def main(name, ip, port):
    c = QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE, server_name=name)
    try:
        async with connect(ip, port, configuration=c, wait_connected=True) as p:
            await p.ping()
        print("ok")
    except Exception as e:
        print("failed", type(e).__name__)
try:
    asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 443), 5))
except Exception as e:
    print("failed", type(e).__name__)
"""


def write_config(workdir: Path, files: dict[str, str], workers: int = 2, interfaces: tuple[str, ...] = ("gw0",),
                 extra: str = "", capture_extra: str = "") -> Path:
    from beiand.records.generate import OUR_PROVIDER

    cfg = workdir / "beiand.toml"
    cfg.write_text(f"""# written by beiand lab
[daemon]
gateway = "lab-gw"
workers = {workers}
state_dir = "{workdir / 'state'}"
watch_interval = 1.0

[capture]
interfaces = {json.dumps(list(interfaces))}
{capture_extra}

[records]
files = ["{files['records']}"]
provider = "{OUR_PROVIDER}"

[inventory]
file = "{files['inventory']}"

[accesslog]
directory = "{workdir / 'log'}"
commit_interval = 0.2

[server]
listen = "127.0.0.1:{PORT}"
{extra}
""", encoding="utf-8")
    return cfg


def http_get(lab: Lab, path: str, port: int = PORT, timeout: float = 5) -> tuple[int, bytes]:
    """GET from the daemon's server inside the gateway namespace."""
    def get() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
                return int(r.status), bytes(r.read())
        except urllib.error.HTTPError as e:
            return int(e.code), bytes(e.read())

    return in_netns(lab.gw, get)


def wait_ready(lab: Lab, proc: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"beiand run exited with {proc.returncode}")
        try:
            if http_get(lab, "/readyz", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("beiand did not become ready")


def curl(lab: Lab, url: str, name: str, ip: str, *opts: str) -> tuple[int, bytes]:
    port = 443 if url.startswith("https") else 80
    r = lab.run(lab.cli, ["curl", "-s", "-k", "-m", "5", "--resolve", f"{name}:{port}:{ip}", *opts, url], capture_output=True)
    return r.returncode, r.stdout


def drive(lab: Lab) -> dict[str, Any]:
    """Real traffic from the client namespace; returns what each client got."""
    out: dict[str, Any] = {}
    for name, ip in ZONE.items():
        out[f"https:{name}"] = curl(lab, f"https://{name}/", name, ip, "--tlsv1.3")[0]
    out["https12:api.shapp.cn"] = curl(lab, "https://api.shapp.cn/", "api.shapp.cn", ZONE["api.shapp.cn"], "--tls-max", "1.2")[0]
    for name in ("shop.example.net", "old.example.org", "www.example.com.cn"):
        out[f"http:{name}"] = curl(lab, f"http://{name}/", name, ZONE[name], "--http1.1")[0]
    # IP-only: a TLS connection without SNI to the IP-filed address and to an unfiled one.
    for ip in ("198.51.100.30", "198.51.100.31"):
        out[f"ip:{ip}"] = lab.run(lab.cli, ["curl", "-s", "-k", "-m", "5", f"https://{ip}/"], capture_output=True).returncode
    try:
        import aioquic  # noqa: F401

        r = lab.run(lab.cli, [sys.executable, "-c", QUIC_CLIENT, "quic-unfiled.example.top", ZONE["quic-unfiled.example.top"]],
                    capture_output=True)
        out["quic:quic-unfiled.example.top"] = r.stdout.decode().strip()
    except ImportError:
        out["quic:quic-unfiled.example.top"] = "skipped (aioquic not installed)"

    def dns_queries() -> dict[str, str]:
        import dns.message
        import dns.query

        res = {}
        for name in ("www.example.com.cn", "unfiled.example.xyz"):
            for tcp in (False, True):
                q = dns.message.make_query(name, "A")
                a = (dns.query.tcp if tcp else dns.query.udp)(q, DNS_IP, timeout=3)
                res[f"dns{'-tcp' if tcp else ''}:{name}"] = ",".join(r.to_text() for rr in a.answer for r in rr)
        return res

    out.update(in_netns(lab.cli, dns_queries))
    return out


def main(workdir: str | None, keep: bool, run: Callable[[Sequence[str]], int] | None = None) -> int:
    """``run``: the CLI's ``main``, for the ``beiand logs`` commands shown at the end (the lab does not import the CLI)."""
    from beiand.lab.demo import build

    if os.geteuid() != 0:
        sys.stderr.write("beiand lab needs root (it creates network namespaces); try: sudo make demo\n")
        return 2
    wd = Path(workdir or tempfile.mkdtemp(prefix="beiand-lab-"))
    wd.mkdir(parents=True, exist_ok=True)
    files = build(wd / "samples")
    # Part of the hosted space enforces (198.51.100.8/29: .10 filed, .11 unfiled, .12 filed elsewhere,
    # .13 cancelled, .14 unfiled QUIC); the rest stays in dry-run. Inline: NFQUEUE holds the first packets.
    inv = Path(files["inventory"])
    inv.write_text(inv.read_text() + "198.51.100.8/29,cust-0001,bj-yz-1,active,enforce\n", encoding="utf-8")
    cfg = write_config(wd, files, extra='\n[enforce]\ninline = true\ncontact = "400-000-0000"\nprovider_name = "示例云计算有限公司"\n')
    lab = Lab()
    try:
        print(f"lab: building namespaces {lab.cli} (client) → {lab.gw} (gateway, beiand) → {lab.srv} (hosted servers)")
        lab.build()
        lab.start_servers(wd)
        logf = open(wd / "beiand.log", "ab")  # noqa: SIM115
        daemon = lab.spawn(lab.gw, [sys.executable, "-m", "beiand.cli", "run", "--config", str(cfg)], stdout=logf, stderr=logf)
        wait_ready(lab, daemon)
        print(f"beiand run: ready in {lab.gw}, capturing on gw0 with 2 workers, inline enforcement (config {cfg})\n")
        print("traffic from the client (curl HTTPS TLS 1.3/1.2, HTTP/1.1, IP-only, QUIC, DNS over UDP and TCP);")
        print("curl exit code 0 = answered (for HTTP: possibly beiand's block page, below), 35/56 = connection reset by beiand")
        print("(198.51.100.8/29 enforces; the rest of 198.51.100.0/24 is dry-run):")
        for k, v in drive(lab).items():
            print(f"  {k:40} {v}")
        _, page = curl(lab, "http://shop.example.net/", "shop.example.net", "198.51.100.12", "-i")
        print("\nwhat a blocked HTTP client sees (shop.example.net is filed through another 接入商):")
        for line in page.decode(errors="replace").splitlines()[:2] + [ln for ln in page.decode(errors="replace").splitlines()
                                                                        if "<h1>" in ln or "<h2" in ln]:
            print("  " + line.strip())
        time.sleep(1.5)  # one snapshot round and a group commit
        _, body = http_get(lab, "/api/v1/observations")
        rows = json.loads(body)
        print("\nwhat beiand saw and decided (/api/v1/observations):")
        print(f"  {'name':28} {'server':20} {'kind':10} {'verdict':9} {'action':6} {'account':10} hits")
        for r in sorted(rows, key=lambda r: (r["verdict"], r["name"])):
            print(f"  {r['name'] or '(ip-only)':28} {r['server']:20} {r['kind']:10} {r['verdict']:9} {r['action']:6} "
                  f"{r['account']:10} {r['hits']}")
        _, metrics = http_get(lab, "/metrics")
        print("\nmetrics (http://127.0.0.1:9640/metrics inside the gateway namespace), a few of them:")
        for line in metrics.decode().splitlines():
            if line.startswith(("beiand_verdicts_total", "beiand_observations_total", "beiand_accesslog_records_total",
                                "beiand_capture_kernel_drops_total", "beiand_workers_running")):
                print("  " + line)
        print(f"\naccess log (Order 292 art. 14): {wd / 'log'}")
        print(f"  beiand logs query --log-dir {wd / 'log'} --verdict unfiled")
        print(f"  beiand logs verify --log-dir {wd / 'log'}")
        if keep:
            print("\nrunning; Ctrl-C to stop and clean up")
            while daemon.poll() is None:
                time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        lab.close()
        print(f"\nlab removed (namespaces, servers, daemon); files kept in {wd}")
        cli_main = run or (lambda argv: 0)
        if (wd / "log").exists():
            print("\n$ beiand logs query --verdict unfiled")
            cli_main(["logs", "query", "--log-dir", str(wd / "log"), "--verdict", "unfiled", "--limit", "12"])
            print("\n$ beiand logs verify")
            cli_main(["logs", "verify", "--log-dir", str(wd / "log")])
