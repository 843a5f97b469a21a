"""``beiand audit`` against a lab on loopback: an authoritative DNS server (dnspython), TLS
servers with certificates naming filed and unfiled sites, homepages with a correct, missing,
wrong or unlinked filing number. The audit must report exactly the planted findings."""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from aiohttp import web

from beiand.cli import main
from beiand.lab import traffic as t
from beiand.lab.labservers import make_cert
from beiand.records.generate import OUR_PROVIDER

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

ZONE = {
    "good.audit.test": "127.0.1.10", "nonum.audit.test": "127.0.1.10", "wrongnum.audit.test": "127.0.1.10",
    "nolink.audit.test": "127.0.1.10", "moved.audit.test": "203.0.113.5", "unfiled.audit.test": "127.0.1.11",
    "api.app.audit.test": "127.0.1.12",
}
LINK = '<a href="https://beian.miit.gov.cn/" target="_blank">{n}</a>'
PAGES = {
    "good.audit.test": "<footer>" + LINK.format(n="京ICP备20260001号-1") + "</footer>",
    "nonum.audit.test": "<footer>© 2026 无备案号</footer>",
    "wrongnum.audit.test": "<footer>" + LINK.format(n="沪ICP备99999999号-3") + "</footer>",
    "nolink.audit.test": "<footer>京ICP备20260004号-1</footer>",
}
RECORDS = [
    ["京ICP备20260001号-1", "甲公司", "网站", "good.audit.test;moved.audit.test", "", OUR_PROVIDER, "正常"],
    ["京ICP备20260002号-1", "乙公司", "网站", "nonum.audit.test", "", OUR_PROVIDER, "正常"],
    ["京ICP备20260003号-1", "丙公司", "网站", "wrongnum.audit.test", "", OUR_PROVIDER, "正常"],
    ["京ICP备20260004号-1", "丁公司", "网站", "nolink.audit.test", "", OUR_PROVIDER, "正常"],
    ["京ICP备20260005号-1A", "戊公司", "APP", "api.app.audit.test", "", OUR_PROVIDER, "正常"],
    ["京ICP备20260006号-1", "己公司", "网站", "never.audit.test", "", OUR_PROVIDER, "正常"],
    ["京ICP备20260007号-1", "庚公司", "网站", "", "127.0.1.20;127.0.2.20", OUR_PROVIDER, "正常"],
    ["京ICP备20260008号-1", "辛公司", "网站", "", "198.18.0.1", OUR_PROVIDER, "正常"],
    ["京ICP备20260009号-1", "壬公司", "网站", "old.audit.test", "", OUR_PROVIDER, "已注销"],
    ["沪ICP备20260010号-1", "癸公司", "网站", "other.audit.test", "", "某某数据有限公司", "正常"],
]
INVENTORY = ("prefix,account,site,state,mode\n127.0.1.0/24,cust-a,lab,active,monitor\n127.0.2.0/24,cust-b,lab,active,monitor\n"
             "127.0.3.0/24,cust-c,lab,pending,monitor\n")
EXPECTED = {
    ("unfiled-served", "seen-unfiled.audit.test"), ("mismatch-served", "other.audit.test"), ("cancelled-served", "old.audit.test"),
    ("pending-prefix-traffic", "127.0.3.0/24"), ("filed-never-seen", "京ICP备20260006号-1"),
    ("filing-ip-not-hosted", "京ICP备20260008号-1"), ("filing-ip-other-account", "京ICP备20260007号-1"),
    ("dns-moved-away", "moved.audit.test"), ("dns-unfiled-points-here", "unfiled.audit.test"),
    ("tls-san-unfiled", "extra.unfiled.test"), ("tls-san-unfiled", "unfiled.audit.test"),
    ("homepage-no-number", "nonum.audit.test"), ("homepage-wrong-number", "wrongnum.audit.test"),
    ("homepage-not-linked", "nolink.audit.test"), ("app-domain-unreachable", "api.app.audit.test"),
    ("authority-listed-hosted", "unfiled.audit.test"),
}


class _Dns(asyncio.DatagramProtocol):
    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
        import dns.flags
        import dns.message
        import dns.rcode
        import dns.rdatatype
        import dns.rrset

        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA
        qn = q.question[0].name.to_text().rstrip(".")
        if qn in ZONE:
            if q.question[0].rdtype == dns.rdatatype.A:
                r.answer.append(dns.rrset.from_text(qn + ".", 60, "IN", "A", ZONE[qn]))
        else:
            r.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(r.to_wire(), addr)


def _serve(wd: Path, ready: threading.Event, stop: list) -> None:  # type: ignore[type-arg]
    async def page(req: web.Request) -> web.Response:
        host = (req.host or "").split(":")[0]
        return web.Response(text=f"<html><body><h1>{host}</h1>{PAGES.get(host, '')}</body></html>", content_type="text/html")

    async def run() -> None:
        app = web.Application()
        app.router.add_get("/", page)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        c10 = make_cert(wd / "c10", [*PAGES, "extra.unfiled.test"]) if (wd / "c10").mkdir() is None else None
        c11 = make_cert(wd / "c11", ["unfiled.audit.test"]) if (wd / "c11").mkdir() is None else None
        for ip, cert in (("127.0.1.10", c10), ("127.0.1.11", c11)):
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            assert cert is not None
            ctx.load_cert_chain(*cert)
            await web.TCPSite(runner, ip, 443, ssl_context=ctx).start()
            await web.TCPSite(runner, ip, 80).start()
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(_Dns, local_addr=("127.0.1.53", 53))
        ready.set()
        while not stop:
            await asyncio.sleep(0.1)
        await runner.cleanup()

    asyncio.run(run())


@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # type: ignore[no-untyped-def]
    wd = tmp_path_factory.mktemp("audit")
    stop: list[int] = []
    ready = threading.Event()
    th = threading.Thread(target=_serve, args=(wd, ready, stop), daemon=True)
    th.start()
    assert ready.wait(20), "audit lab servers did not start"
    rec = wd / "records.csv"
    with rec.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["备案号", "主办单位", "服务类型", "域名", "IP", "接入商", "状态"])
        w.writerows(RECORDS)
    inv = wd / "inventory.csv"
    inv.write_text(INVENTORY)
    # What the gateway saw: every filed site (so none is "never seen" but the planted one), an
    # unfiled, a mismatched and a cancelled name, and traffic on the pending prefix.
    frames = []
    port = 30000
    for name, ip in [("good.audit.test", "127.0.1.10"), ("nonum.audit.test", "127.0.1.10"), ("wrongnum.audit.test", "127.0.1.10"),
                     ("nolink.audit.test", "127.0.1.10"), ("moved.audit.test", "127.0.1.10"), ("api.app.audit.test", "127.0.1.12"),
                     ("seen-unfiled.audit.test", "127.0.1.11"), ("other.audit.test", "127.0.1.10"), ("old.audit.test", "127.0.1.10"),
                     ("good.audit.test", "127.0.3.5")]:
        port += 1
        frames.extend(t.tcp_session("10.9.0.1", ip, port, 443, t.client_hello(name)))
    pcap = wd / "seen.pcap"
    t.write_pcap(pcap, frames)
    auth = wd / "authority.csv"
    auth.write_text("域名,说明\nunfiled.audit.test,未备案\nelsewhere.example.org,未备案\n", encoding="utf-8")
    yield {"wd": wd, "records": rec, "inventory": inv, "pcap": pcap, "authority": auth}
    stop.append(1)
    th.join(10)


def audit(lab, capsys, *extra: str) -> tuple[int, dict]:  # type: ignore[no-untyped-def, type-arg]
    rc = main(["audit", "--records", str(lab["records"]), "--inventory", str(lab["inventory"]), "--provider", OUR_PROVIDER,
               "--pcap", str(lab["pcap"]), "--probe", "--resolver", "127.0.1.53:53", "--timeout", "2", "--quiet",
               "--authority-list", str(lab["authority"]), "--format", "json", *extra])
    return rc, json.loads(capsys.readouterr().out)


def test_the_audit_reports_exactly_the_planted_findings(lab, capsys) -> None:  # type: ignore[no-untyped-def]
    rc, rep = audit(lab, capsys)
    got = {(f["kind"], f["subject"]) for f in rep["findings"]}
    assert got == EXPECTED, f"missing {EXPECTED - got}, unexpected {got - EXPECTED}"
    assert rc == 1
    assert all(f["rule"] and f["what_to_do"] for f in rep["findings"])
    sev = [f["severity"] for f in rep["findings"]]
    assert sev == sorted(sev, key=["high", "medium", "low"].index)
    auth = {a["entry"]: a for a in rep["authority"]}
    assert auth["unfiled.audit.test"]["hosted"] and auth["unfiled.audit.test"]["verdict"] == "unfiled"
    assert not auth["elsewhere.example.org"]["hosted"]
    res = {r["name"]: r for r in rep["resources"]}
    assert res["seen-unfiled.audit.test"]["registrable_domain"] == "audit.test" and res["seen-unfiled.audit.test"]["hits"] == 1


def test_html_report_renders_in_chromium_and_matches_the_json(lab, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed (scripts/system-deps installs it)"
    _, rep = audit(lab, capsys)
    html_path = tmp_path / "report.html"
    rc = main(["audit", "--records", str(lab["records"]), "--inventory", str(lab["inventory"]), "--provider", OUR_PROVIDER,
               "--pcap", str(lab["pcap"]), "--probe", "--resolver", "127.0.1.53:53", "--timeout", "2", "--quiet",
               "--authority-list", str(lab["authority"]), "--format", "html", "--out", str(html_path)])
    assert rc == 1
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--user-data-dir=" + str(tmp_path / "prof")]
    dom = subprocess.run([chromium, *flags, "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    s = rep["summary"]
    for el, value in (("n-findings", s["findings"]), ("n-high", s["high"]), ("n-medium", s["medium"]), ("n-low", s["low"]),
                      ("n-resources", s["resources"]), ("n-unfiled", s["unfiled_resources"])):
        assert f'id="{el}">{value}<' in dom, el  # filled in by the page's script: it ran
    assert dom.count("<tr class=") == s["findings"]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "audit-report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1280,2400", html_path.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000


def test_exit_codes_and_other_formats(lab, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clean = tmp_path / "clean.pcap"
    t.write_pcap(clean, t.tcp_session("10.9.0.1", "127.0.1.10", 40000, 443, t.client_hello("good.audit.test")))
    rec = tmp_path / "r.csv"
    rec.write_text("备案号,主办单位,服务类型,域名,接入商,状态\n京ICP备20260001号-1,甲公司,网站,good.audit.test," + OUR_PROVIDER + ",正常\n")
    assert main(["audit", "--records", str(rec), "--inventory", str(lab["inventory"]), "--provider", OUR_PROVIDER,
                 "--pcap", str(clean)]) == 0
    capsys.readouterr()
    assert main(["audit", "--records", str(lab["records"]), "--inventory", str(lab["inventory"]), "--pcap", str(lab["pcap"]),
                 "--provider", OUR_PROVIDER, "--format", "csv"]) == 1
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0][:3] == ["severity", "kind", "subject"] and len(rows) > 5
    assert main(["audit", "--records", "/nonexistent.csv", "--pcap", str(lab["pcap"])]) == 2
    assert main(["audit", "--records", str(lab["records"]), "--log-dir", "/nonexistent"]) == 2
    bad = tmp_path / "auth.csv"
    bad.write_text("foo,bar\n1,2\n")
    assert main(["audit", "--records", str(lab["records"]), "--pcap", str(lab["pcap"]), "--authority-list", str(bad)]) == 2
    assert "no column named domain" in capsys.readouterr().err
    rd = tmp_path / "reports"
    assert main(["audit", "--records", str(lab["records"]), "--inventory", str(lab["inventory"]), "--pcap", str(lab["pcap"]),
                 "--report-dir", str(rd), "--keep", "1"]) == 1
    assert (rd / "latest.html").exists() and json.loads((rd / "latest.json").read_text())["summary"]["findings"] > 0
