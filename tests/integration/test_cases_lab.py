"""Sponsor cases end to end in the lab (issue 31): an unfiled site served from an enforce prefix is
found, its sponsor gets the notice through a real SMTP relay (STARTTLS, login), a reminder before
the deadline, 取消接入 at the deadline (the case overlay blocks the site's flows inline: HTTPS
reset, HTTP 451, a filed name on the same server untouched), the block lifts when a records reload
files the name, the case closes as rectified, and the report to the 通管局 says so.

The daemon's keeper reads its clock through ``BEIAND_TEST_CLOCK_OFFSET_FILE`` (seconds added to the
wall clock at each pass): the test moves it into the reminder window and past the deadline. Packets
keep real time, and ``enforce.grace_seconds`` is long, so the records' verdict only flags the site
until the case escalates."""

from __future__ import annotations

import csv
import datetime as dt
import email
import email.policy
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from ipaddress import ip_network
from pathlib import Path
from typing import Any, TypeVar

import pytest

from beiand.accesslog import Query, query
from beiand.lab.demo import build
from beiand.lab.labdemo import PORT, http_get, in_netns, wait_ready, write_config
from beiand.lab.netns import Lab
from beiand.model import AccessRecord
from beiand.policy.workdays import BEIJING, WorkCalendar
from beiand.records.generate import OUR_PROVIDER
from tests.integration.nsdaemon import metric

pytestmark = pytest.mark.integration

INVENTORY = """prefix,account,site,state,mode
198.51.100.0/28,cust-enf,bj,active,enforce
198.51.100.16/28,cust-dry,bj,active,dry-run
198.51.100.24/29,cust-mon,bj,active,monitor
198.51.100.48/28,cust-dns,bj,active,monitor
"""
SITE, FILED, IP = "unfiled.example.xyz", "www.example.com.cn", "198.51.100.11"
KEY = f"cust-enf|unfiled|{SITE}"
CONTACT = "ops@cust-enf.example"
TOKEN = "cases-t0ken"
RECTIFY_DAYS, REMIND_DAYS = 5, 2
REPO = Path(__file__).resolve().parents[2]

T = TypeVar("T")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    wd = tmp_path_factory.mktemp("cases")
    files = build(wd / "samples")
    Path(files["inventory"]).write_text(INVENTORY)
    maildir = wd / "mail"
    maildir.mkdir()
    password = wd / "smtp-password"
    password.write_text("relay-pa55\n")
    password.chmod(0o600)  # a secret must be private (issue 17)
    contacts = wd / "contacts.csv"
    contacts.write_text(f"account,email\ncust-enf,{CONTACT}\n")
    clock = wd / "clock-offset"
    clock.write_text("0\n")
    token = wd / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    port = 20000 + os.getpid() % 20000  # in the gateway namespace: the test's own
    cfg = write_config(wd, files, extra=f'token_file = "{token}"\n\n[enforce]\ninline = true\nmax_blocks_per_minute = 100000\ngrace_seconds = 8640000\n'
                       'contact = "400-000-0000"\nprovider_name = "示例云计算有限公司"\n\n'
                       f'[cases]\npass_interval = 0.5\nsmtp_host = "localhost"\nsmtp_port = {port}\nsmtp_user = "beiand"\n'
                       f'smtp_password_file = "{password}"\nsmtp_ca_file = "{maildir / "lab-ca.pem"}"\n'
                       f'mail_from = "beian@provider.example"\ncontacts_file = "{contacts}"\nrectify_days = {RECTIFY_DAYS}\n'
                       f'remind_days = {REMIND_DAYS}\nevidence_interval = 1\nmin_hits = 1\n')
    t0 = time.time() - 60
    with Lab() as lb:
        lb.start_servers(wd)
        lo = lb.run(lb.gw, ["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True).stdout.decode()
        assert "127.0.0.1" in lo, lo  # the relay and the daemon's HTTP listen on the gateway's loopback
        ready = wd / "relay.ready"
        with open(wd / "relay.log", "ab") as relay_log:
            relay = lb.spawn(lb.gw, [sys.executable, "-m", "tests.smtp_relay", "--port", str(port), "--dir", str(maildir),
                                     "--ready", str(ready)], cwd=str(REPO), stdout=relay_log, stderr=relay_log,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert relay.poll() is None and time.monotonic() < deadline, \
                f"the SMTP relay did not start (exit {relay.poll()}): {(wd / 'relay.log').read_text()[-2000:]}"
            time.sleep(0.05)
        env = {**os.environ, "BEIAND_TEST_CLOCK_OFFSET_FILE": str(clock)}
        with open(wd / "beiand.log", "ab") as logf:
            daemon = lb.spawn(lb.gw, [sys.executable, "-m", "beiand.cli", "run", "--config", str(cfg)], stdout=logf, stderr=logf,
                              env=env)
        wait_ready(lb, daemon)
        state: dict[str, Any] = {"lab": lb, "daemon": daemon, "wd": wd, "cfg": cfg, "files": files, "maildir": maildir,
                                 "clock": clock, "t0": t0, "done": set()}
        yield state
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        assert daemon.returncode == 0, (daemon.returncode, log_tail(wd))
        # A clean stop removes beiand's rules (its chain and the mangle rule too) and table.
        for tool in ("iptables", "ip6tables"):
            for table in ("filter", "mangle"):
                rules = lb.run(lb.gw, [tool, "-t", table, "-S"], capture_output=True).stdout.decode()
                assert "beiand" not in rules, (tool, table, rules)
        tables = lb.run(lb.gw, ["nft", "list", "tables"], capture_output=True).stdout.decode()
        assert "beiand" not in tables


# -- helpers ----------------------------------------------------------------------------------


def curl(lb: Lab, name: str, ip: str, scheme: str = "https") -> tuple[int, bytes, str]:
    port = 443 if scheme == "https" else 80
    r = lb.run(lb.cli, ["curl", "-s", "-k", "-m", "5", "-o", "-", "-w", "\n%{http_code}", "--resolve", f"{name}:{port}:{ip}",
                        f"{scheme}://{name}/"], capture_output=True)
    body, _, code = r.stdout.rpartition(b"\n")
    return r.returncode, body, code.decode()


def curl_flow(lb: Lab, name: str, ip: str, scheme: str = "https") -> tuple[int, bytes, str, int]:
    """:func:`curl` and the client's port (the flow's record in the access log)."""
    port = 443 if scheme == "https" else 80
    r = lb.run(lb.cli, ["curl", "-s", "-k", "-m", "5", "-o", "-", "-w", "\n%{http_code} %{local_port}", "--resolve",
                        f"{name}:{port}:{ip}", f"{scheme}://{name}/"], capture_output=True)
    body, _, tail = r.stdout.rpartition(b"\n")
    code, _, local = tail.decode().partition(" ")
    return r.returncode, body, code, int(local or 0)


def flow_record(wd: Path, client_port: int, server_port: int, timeout: float = 5) -> AccessRecord | None:
    """The access log's record of one flow from the client's port, once committed (None: none came)."""
    deadline = time.monotonic() + timeout
    while True:
        recs = [r for r in query(wd / "log", Query(server=ip_network(IP), port=server_port))
                if r.client_port == client_port and r.name]
        if recs or time.monotonic() > deadline:
            return recs[-1] if recs else None
        time.sleep(0.2)


def log_tail(wd: Path, n: int = 3000) -> str:
    try:
        return (wd / "beiand.log").read_text(errors="replace")[-n:]
    except OSError as exc:
        return f"(no log: {exc})"


def wait_for(what: str, probe: Callable[[], T], ok: Callable[[T], bool], timeout: float, seen: Callable[[T], str] = repr) -> T:
    """Poll ``probe`` until ``ok`` holds of its value or ``timeout`` seconds passed; the assertion
    says what was waited for and what was seen last."""
    deadline = time.monotonic() + timeout
    while True:
        v = probe()
        if ok(v):
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}; last seen: {seen(v)}")
        time.sleep(0.2)


def mails(maildir: Path) -> list[Path]:
    return sorted(maildir.glob("*.eml"))


def parse(p: Path) -> EmailMessage:
    msg = email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def body_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None, msg
    return str(part.get_content())


def cli(lab: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    """``beiand ARGS --config CFG`` (the store is the SQLite file in the state directory)."""
    return subprocess.run([sys.executable, "-m", "beiand.cli", *args, "--config", str(lab["cfg"])], capture_output=True,
                          text=True, timeout=60, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})


def show(lab: dict[str, Any]) -> dict[str, Any]:
    """The case as ``beiand cases show KEY --json`` gives it ({"error": ...} while there is none);
    a store busy for a moment is asked again."""
    deadline = time.monotonic() + 10
    while True:
        r = cli(lab, "cases", "show", KEY, "--json")
        if r.returncode == 0:
            out: dict[str, Any] = json.loads(r.stdout)
            return out
        if "no such case" in r.stderr or time.monotonic() > deadline:
            return {"error": r.stderr.strip()[-500:]}
        time.sleep(0.2)


def api_cases(lab: dict[str, Any]) -> list[dict[str, Any]]:
    assert http_get(lab["lab"], "/api/v1/cases")[0] == 401  # customers' contacts: only with the token

    def get() -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{PORT}/api/v1/cases", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status), bytes(r.read())

    code, body = in_netns(lab["lab"].gw, get)
    assert code == 200, (code, body[:300])
    rows: list[dict[str, Any]] = json.loads(body)
    return rows


def api_case(lab: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in api_cases(lab) if c["key"] == KEY), {})


def set_clock(lab: dict[str, Any], at: float) -> None:
    """Move the keeper's clock so that it reads ``at`` now (whole file, atomically)."""
    p: Path = lab["clock"]
    tmp = p.with_suffix(".tmp")
    tmp.write_text(f"{at - time.time():.3f}\n")
    os.replace(tmp, p)


def passes(lab: dict[str, Any]) -> float:
    """When the keeper's last pass succeeded (wall clock), from /metrics."""
    return metric(http_get(lab["lab"], "/metrics")[1].decode(), "beiand_case_pass_timestamp_seconds")


def beijing(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, BEIJING).strftime("%Y-%m-%d %H:%M")


def after(lab: dict[str, Any], step: str) -> None:
    """Each test goes on from where the one before it left the case."""
    if step not in lab["done"]:
        pytest.fail(f"the step before ({step}) did not pass: nothing to go on from")


def case_seen(c: dict[str, Any]) -> str:
    return json.dumps({k: c.get(k) for k in ("state", "deadline", "notified_at", "reminded_at", "escalated_at", "closed_at",
                                             "close_reason", "error")}, ensure_ascii=False) + \
        " steps: " + ", ".join(s["event"] for s in c.get("steps", []))


# -- the case, step by step (in order: one lab) -------------------------------------------------


def test_an_unfiled_site_in_grace_is_served_and_its_sponsor_gets_the_notice(lab) -> None:  # type: ignore[no-untyped-def]
    lb, wd, maildir = lab["lab"], lab["wd"], lab["maildir"]
    rc, body, code, port = curl_flow(lb, SITE, IP)
    assert rc == 0 and code == "200" and body.startswith(f"hello from {SITE}".encode()), (rc, code, body[:200])
    rec = flow_record(wd, port, 443)  # judged unfiled, only flagged (grace)
    assert rec is not None and rec.verdict == "unfiled" and rec.action == "flag" and rec.account == "cust-enf", rec

    wait_for("the notice at the relay", lambda: mails(maildir), lambda m: len(m) >= 1, 30,
             lambda m: f"{[p.name for p in m]}; relay log: {(wd / 'relay.log').read_text()[-1000:]}; daemon log: {log_tail(wd)}")
    notice = parse(mails(maildir)[0])
    assert [a.addr_spec for a in notice["To"].addresses] == [CONTACT], str(notice["To"])
    assert notice["From"].addresses[0].addr_spec == "beian@provider.example", str(notice["From"])
    assert SITE in str(notice["Subject"]) and KEY in str(notice["Subject"]), str(notice["Subject"])
    text = body_of(notice)
    assert "整改期限" in text and "deadline" in text, text
    assert text.index("整改期限") < text.index("deadline"), text  # Chinese first
    assert "Order 292 art. 4" in text and "国务院令第292号" in text, text
    assert "北京时间" in text and "Beijing time" in text, text

    c = wait_for("the case notified (cases show)", lambda: show(lab), lambda c: c.get("state") == "notified", 15, case_seen)
    assert c["account"] == "cust-enf" and c["finding"] == "unfiled" and c["names"] == [SITE], c
    assert IP in c["servers"], c
    deadline = float(c["deadline"])
    # The deadline: the end (Beijing) of the RECTIFY_DAYS-th working day after the notice's day.
    assert deadline == pytest.approx(WorkCalendar().deadline(float(c["notified_at"]), RECTIFY_DAYS), abs=0.01), c
    assert dt.datetime.fromtimestamp(deadline + 0.001, BEIJING).time() == dt.time(0, 0), beijing(deadline)
    assert beijing(deadline) in text, (beijing(deadline), text)
    row = wait_for("the case in /api/v1/cases", lambda: api_case(lab), lambda r: r.get("state") == "notified", 15, case_seen)
    assert row["deadline"] == pytest.approx(deadline) and row["names"] == [SITE], row
    lab["deadline"] = deadline
    lab["done"].add("notice")


def test_the_reminder_goes_out_once_inside_its_window(lab) -> None:  # type: ignore[no-untyped-def]
    after(lab, "notice")
    wd, maildir, deadline = lab["wd"], lab["maildir"], lab["deadline"]
    # The window opens at the start (Beijing) of the REMIND_DAYS-th working day before the deadline's
    # day; 30 hours before the deadline is the evening before the deadline's day: inside it.
    remind_from = WorkCalendar().before(deadline, REMIND_DAYS)
    at = deadline - 30 * 3600
    assert remind_from <= at < deadline, (beijing(remind_from), beijing(at), beijing(deadline))
    assert len(mails(maildir)) == 1, [p.name for p in mails(maildir)]  # nothing before the window
    set_clock(lab, at)
    wait_for("the reminder at the relay", lambda: mails(maildir), lambda m: len(m) >= 2, 30,
             lambda m: f"{[p.name for p in m]}; case: {case_seen(show(lab))}; daemon log: {log_tail(wd)}")
    reminder = parse(mails(maildir)[1])
    assert [a.addr_spec for a in reminder["To"].addresses] == [CONTACT], str(reminder["To"])
    assert SITE in str(reminder["Subject"]), str(reminder["Subject"])
    text = body_of(reminder)
    assert "即将届满" in text and beijing(deadline) in text, text
    c = wait_for("the reminder recorded", lambda: show(lab), lambda c: bool(c.get("reminded_at")), 15, case_seen)
    assert c["state"] == "notified" and c["deadline"] == pytest.approx(deadline), case_seen(c)
    # Only one: several more passes (each one sees the window) send nothing more.
    before = passes(lab)
    wait_for("three more seconds of the keeper's passes", lambda: passes(lab), lambda t: t >= before + 3, 30)
    assert len(mails(maildir)) == 2, [p.name for p in mails(maildir)]
    assert [s["event"] for s in show(lab)["steps"]].count("remind") == 1, case_seen(show(lab))
    lab["done"].add("reminder")


def test_at_the_deadline_the_case_escalates_and_blocks_that_site_only(lab) -> None:  # type: ignore[no-untyped-def]
    after(lab, "reminder")
    lb, wd, deadline = lab["lab"], lab["wd"], lab["deadline"]
    t_ms = int(time.time() * 1000)
    set_clock(lab, deadline + 120)
    c = wait_for("the case escalated (cases show)", lambda: show(lab), lambda c: c.get("state") == "escalated", 15,
                 lambda c: f"{case_seen(c)}; daemon log: {log_tail(wd)}")
    assert float(c["escalated_at"]) >= deadline, case_seen(c)
    wait_for("the case escalated in /api/v1/cases", lambda: api_case(lab), lambda r: r.get("state") == "escalated", 15, case_seen)

    # 取消接入: the workers take the case overlay's snapshot within a few seconds.
    rc, body, code = wait_for("HTTPS to the site reset", lambda: curl(lb, SITE, IP), lambda r: r[0] in (35, 56), 15,
                              lambda r: f"{r[0]} {r[2]} {r[1][:100]!r}; daemon log: {log_tail(wd)}")
    assert body == b"" and code == "000", (rc, code, body[:200])
    rc, body, code = wait_for("HTTP to the site blocked (451)", lambda: curl(lb, SITE, IP, "http"), lambda r: r[2] == "451", 15,
                              lambda r: f"{r[0]} {r[2]} {r[1][:100]!r}")
    assert b"hello from" not in body and SITE in body.decode(errors="replace"), body[:300]
    for scheme in ("https", "http"):  # the filed name on the same server keeps working
        rc, body, code = curl(lb, FILED, IP, scheme)
        assert rc == 0 and code == "200" and body.startswith(f"hello from {FILED}".encode()), (scheme, rc, code, body[:200])

    def blocked() -> list[Any]:
        return [r for r in query(wd / "log", Query(name=SITE, since_ms=t_ms)) if r.server_ip == IP]

    recs = wait_for("the case's blocks in the access log", blocked,
                    lambda rs: {r.kind for r in rs if r.order == f"case:{KEY}" and r.action == "block"} >= {"tls-sni", "http-host"}, 15,
                    lambda rs: repr([(r.kind, r.action, r.order) for r in rs]))
    kinds = {r.kind for r in recs if r.order == f"case:{KEY}" and r.action == "block"}
    assert kinds == {"tls-sni", "http-host"}, [(r.kind, r.action, r.order) for r in recs]
    assert not [r for r in query(wd / "log", Query(name=FILED, since_ms=t_ms)) if r.action == "block"]
    lab["done"].add("escalated")


def test_a_filing_lifts_the_block_and_closes_the_case_as_rectified(lab) -> None:  # type: ignore[no-untyped-def]
    after(lab, "escalated")
    lb, wd = lab["lab"], lab["wd"]
    records = Path(lab["files"]["records"])
    text = records.read_text(encoding="utf-8")
    header = next(csv.reader(io.StringIO(text)))
    assert header == ["备案号", "主办单位", "服务类型", "网站名称", "域名", "IP", "接入商", "状态", "审核时间"], header
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(["京ICP备99999999号-1", "示例整改科技有限公司", "网站", "整改站", SITE, "",
                                                   OUR_PROVIDER, "正常", dt.date.today().isoformat()])
    st0 = json.loads(http_get(lb, "/api/v1/status")[1])
    tmp = records.with_name(records.name + ".new")
    tmp.write_text(text + ("" if text.endswith("\n") else "\n") + buf.getvalue(), encoding="utf-8")
    os.replace(tmp, records)  # one whole file for the watcher

    st = wait_for("the records reload", lambda: json.loads(http_get(lb, "/api/v1/status")[1]),
                  lambda s: s["records_loaded_at"] != st0["records_loaded_at"], 30,
                  lambda s: f"{s['records_loaded_at']} {s['records']}; daemon log: {log_tail(wd)}")
    reloaded = time.monotonic()
    assert st["filings"] == st0["filings"] + 1, (st0["filings"], st["filings"], st["records"])
    # Lifted: a flow served and judged filed (its record in the access log). A flow served without a
    # record went by while the workers were being replaced (fail-open): it does not count.
    served: list[tuple[float, int]] = []  # (seconds after the reload was reported, the client's port)
    deadline = reloaded + 15
    lifted: tuple[float, AccessRecord] | None = None
    while lifted is None:
        rc, body, code, port = curl_flow(lb, SITE, IP)
        if rc == 0 and code == "200":
            assert body.startswith(f"hello from {SITE}".encode()), body[:200]
            served.append((round(time.monotonic() - reloaded, 2), port))
        for t, p in served:  # records come with the log's next group commit
            rec = flow_record(wd, p, 443, timeout=0)
            if rec is not None and rec.verdict == "filed":
                lifted = (t, rec)
                break
        assert lifted is not None or time.monotonic() < deadline, f"HTTPS to the site not served and judged filed: {rc} " \
            f"{code} {body[:100]!r}; served: {served}; daemon log: {log_tail(wd)}"
        time.sleep(0.1)
    t, rec = lifted
    unjudged = [(x, p) for x, p in served if x < t and flow_record(wd, p, 443, timeout=0) is None]
    print(f"\nthe block lifted {t:.2f} s after the reload was reported (a flow served and logged as filed, {rec.filing_number}); "
          f"served before it without a record in the access log: {unjudged or 'none'}")
    assert rec.action == "log" and rec.order == "" and rec.filing_number == "京ICP备99999999号-1", rec
    rc, body, code = curl(lb, SITE, IP, "http")
    assert rc == 0 and code == "200" and body.startswith(f"hello from {SITE}".encode()), (rc, code, body[:200])

    c = wait_for("the case closed as rectified", lambda: show(lab), lambda c: c.get("state") == "closed", 15,
                 lambda c: f"{case_seen(c)}; daemon log: {log_tail(wd)}")
    assert c["close_reason"] == "rectified", case_seen(c)
    assert c["steps"][-1]["event"] == "close" and "rectified" in c["steps"][-1]["why"], c["steps"][-1]
    row = wait_for("the case closed in /api/v1/cases", lambda: api_case(lab), lambda r: r.get("state") == "closed", 15, case_seen)
    assert row["close_reason"] == "rectified", case_seen(row)
    assert len(mails(lab["maildir"])) == 2, [p.name for p in mails(lab["maildir"])]  # nothing more was sent
    lab["done"].add("rectified")


def test_the_report_to_the_authority_holds_the_rectified_case(lab) -> None:  # type: ignore[no-untyped-def]
    from openpyxl import load_workbook

    after(lab, "rectified")
    out = lab["wd"] / "report.xlsx"
    r = cli(lab, "cases", "report", "--from", f"{lab['t0']:.0f}", "--format", "xlsx", "--output", str(out))
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    ws = load_workbook(out).active
    assert ws is not None
    rows = [[("" if v is None else str(v)) for v in row] for row in ws.iter_rows(values_only=True)]
    assert rows[0] == ["域名", "主办单位/客户", "发现时间", "问题类型", "通知时间", "整改期限", "处理结果", "处理时间"], rows[0]
    mine = [dict(zip(rows[0], row, strict=True)) for row in rows[1:] if row[0] == SITE]
    assert len(mine) == 1, rows
    assert mine[0]["处理结果"] == "已整改" and mine[0]["主办单位/客户"] == "cust-enf", mine[0]
    assert mine[0]["通知时间"] not in ("", "-") and mine[0]["整改期限"] not in ("", "-") and mine[0]["处理时间"] not in ("", "-"), mine[0]
