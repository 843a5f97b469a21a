"""Issue 13: a filed site is never blocked by what others send to its shared IP.

Two filed sites and one unfiled site on one hosted IP in ``enforce`` (inline). A client sends an
HTTP/1.0 request without ``Host``, a TLS ClientHello without SNI and a port scan; then both
filed sites answer 100 of 100 requests over HTTPS and over HTTP while the unfiled one is
blocked. The filings list no address (so an unnamed flow to the IP is ``unfiled`` and blocked):
one names several 接入商 in one cell and is under a change review (变更审核中), real export shapes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from beiand.lab.labdemo import http_get, wait_ready, write_config
from beiand.lab.netns import Lab
from beiand.records.generate import OUR_PROVIDER

pytestmark = pytest.mark.integration

SHARED_IP = "198.51.100.11"
RECORDS = f"""备案号,主办单位,服务类型,网站名称,域名,IP,接入商,状态,审核时间
京ICP备30000001号-1,甲公司,网站,甲,alpha.example.cn,,{OUR_PROVIDER},正常,2024-01-02
京ICP备30000002号-1,乙公司,网站,乙,beta.example.cn,,"某某数据有限公司；{OUR_PROVIDER}",变更审核中,2024-01-02
京ICP备30000003号-1,丙公司,网站,丙,ranged.example.cn,198.51.100.64/28,{OUR_PROVIDER},正常,2024-01-02
"""
INVENTORY = "prefix,account,site,state,mode\n198.51.100.0/24,cust-shared,bj,active,enforce\n"

CLIENT = r"""
import json, socket, ssl, sys
ip = sys.argv[1]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE

def https(name):
    try:
        with socket.create_connection((ip, 443), timeout=3) as s:
            with ctx.wrap_socket(s, server_hostname=name) as t:
                t.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := t.recv(4096):
                    data += chunk
        return data.startswith(b"HTTP/1.1 200") and f"hello from {name}".encode() in data
    except (OSError, ssl.SSLError):
        return False

def http(name):
    try:
        with socket.create_connection((ip, 80), timeout=3) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return data
    except OSError:
        return b""

def hostile():
    # HTTP/1.0 without Host
    try:
        with socket.create_connection((ip, 80), timeout=3) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            s.recv(4096)
    except OSError:
        pass
    # TLS without SNI
    try:
        with socket.create_connection((ip, 443), timeout=3) as s:
            with ctx.wrap_socket(s) as t:
                t.sendall(b"GET / HTTP/1.0\r\n\r\n"); t.recv(4096)
    except (OSError, ssl.SSLError):
        pass
    # a port scan that also sends a probe where a port answers (as nmap -sV does)
    for port in list(range(20, 100)) + [443, 8080, 8443]:
        try:
            with socket.create_connection((ip, port), timeout=0.3) as s:
                s.sendall(b"\r\n\r\n")
                s.settimeout(0.3)
                try:
                    s.recv(100)
                except OSError:
                    pass
        except OSError:
            pass

if sys.argv[2] == "hostile":
    hostile(); print("{}")
else:
    n = int(sys.argv[2])
    out = {}
    for name in ("alpha.example.cn", "beta.example.cn"):
        out[f"https:{name}"] = sum(https(name) for _ in range(n))
        out[f"http:{name}"] = sum(b"hello from " + name.encode() in http(name) for _ in range(n))
    out["https:gamma.example.xyz"] = https("gamma.example.xyz")
    page = http("gamma.example.xyz")
    out["http:gamma.example.xyz"] = page.split(b"\r\n", 1)[0].decode(errors="replace")
    out["page-chinese-first"] = page.find("该网站未在本网络备案".encode()) >= 0
    print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    wd = tmp_path_factory.mktemp("shared-ip")
    files = {"records": str(wd / "records.csv"), "inventory": str(wd / "inventory.csv")}
    Path(files["records"]).write_text(RECORDS, encoding="utf-8")
    Path(files["inventory"]).write_text(INVENTORY, encoding="utf-8")
    cfg = write_config(wd, files, extra='\n[enforce]\ninline = true\nmax_blocks_per_minute = 600\n')
    with Lab() as lb:
        lb.start_servers(wd)
        with open(wd / "beiand.log", "ab") as logf:
            daemon = lb.spawn(lb.gw, [sys.executable, "-m", "beiand.cli", "run", "--config", str(cfg)], stdout=logf, stderr=logf)
        wait_ready(lb, daemon)
        yield {"lab": lb, "wd": wd}
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)


def _client(lb: Lab, *args: str) -> dict[str, object]:
    r = lb.run(lb.cli, [sys.executable, "-c", CLIENT, SHARED_IP, *args], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_hostile_unnamed_traffic_does_not_take_filed_sites_on_the_shared_ip_offline(lab) -> None:  # type: ignore[no-untyped-def]
    lb = lab["lab"]
    _client(lb, "hostile")
    got = _client(lb, "100")
    assert got["https:alpha.example.cn"] == 100 and got["http:alpha.example.cn"] == 100, got
    assert got["https:beta.example.cn"] == 100 and got["http:beta.example.cn"] == 100, got
    # the unfiled site on the same IP is blocked (reset / the block page), Chinese first
    assert got["https:gamma.example.xyz"] is False, got
    assert str(got["http:gamma.example.xyz"]).startswith("HTTP/1.1 451"), got
    assert got["page-chinese-first"] is True
    # nothing host-wide was put into nftables: the only sets are closure orders and QUIC flows
    sets = lb.run(lb.gw, ["nft", "-j", "list", "table", "inet", "beiand"], capture_output=True, text=True).stdout
    assert SHARED_IP not in sets, sets[:2000]
    # the Host-less and SNI-less flows were logged as ip-only and blocked one by one
    obs = json.loads(http_get(lb, "/api/v1/observations?limit=1000")[1])
    ip_only = [o for o in obs if not o["name"] and o["server"].startswith(SHARED_IP)]
    assert ip_only and all(o["verdict"] == "unfiled" and o["action"] == "block" for o in ip_only), ip_only
    assert {o["server"] for o in ip_only} >= {f"{SHARED_IP}:80", f"{SHARED_IP}:443"}, ip_only


def test_records_lookup_and_the_daemon_give_one_answer(lab, capsys) -> None:  # type: ignore[no-untyped-def]
    """Issue 13: `records lookup --config` and /api/v1/lookup decide from the same config."""
    from urllib.parse import urlencode

    from beiand.cli import main

    lb, cfg = lab["lab"], lab["wd"] / "beiand.toml"
    cases = [("alpha.example.cn", SHARED_IP), ("www.beta.example.cn", SHARED_IP), ("gamma.example.xyz", SHARED_IP),
             ("ranged.example.cn", "198.51.100.70"), ("ranged.example.cn", SHARED_IP), ("alpha.example.cn", "192.0.2.1"),
             ("alpha.example.cn", None), ("gamma.example.xyz", None), (SHARED_IP, None), ("198.51.100.70", None)]
    for name, server in cases:
        argv = ["records", "lookup", "--config", str(cfg), "--json", name] + (["--server", server] if server else [])
        main(argv)
        cli = json.loads(capsys.readouterr().out)
        q = {"ip": name} if name[0].isdigit() else {"name": name, **({"server": server} if server else {})}
        api = json.loads(http_get(lb, "/api/v1/lookup?" + urlencode(q))[1])
        keys = ("verdict", "reason", "action", "rule", "account", "assumed", "hosted")
        assert {k: cli[k] for k in keys} == {k: api[k] for k in keys}, (name, server, cli, api)
        assert (cli["filing"] or {}).get("number") == (api["filing"] or {}).get("number")
        if server is None and not name[0].isdigit():
            assert "no server given" in cli["assumed"]
