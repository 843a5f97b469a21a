"""A records reload replaces the workers with no gap (found by issue 31's lab test): inline, the
main process holds each worker's queue, so while a worker is replaced the kernel keeps the
packets for the next one instead of passing them unjudged (``--queue-bypass``); the replacement
is built and joins the capture before the old worker stops, and opens the log partition after.
Traffic sent through several reloads: no unfiled site served, every flow in the access log."""

from __future__ import annotations

import json
import signal
import time

import pytest

from beiand.accesslog import Query, query
from beiand.lab.labdemo import http_get
from beiand.lab.netns import Lab
from tests.integration.inlinelab import daemon_lab

pytestmark = pytest.mark.integration

FILED, UNFILED, IP = "www.example.com.cn", "unfiled.example.xyz", "198.51.100.11"



@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from daemon_lab(tmp_path_factory, "reloadgap", "inline = true\nmax_blocks_per_minute = 100000\nmin_verdicts_for_share = 1000000")


def status(lb: Lab) -> dict[str, object]:
    out: dict[str, object] = json.loads(http_get(lb, "/api/v1/status")[1])
    return out


def reloaded(lb: Lab, before: float) -> bool:
    st = status(lb)
    workers = st["workers"]
    assert isinstance(workers, list)
    return (st["records_loaded_at"] != before and not st["reloading"] and len(workers) == 2
            and all(w["ready"] and w["alive"] for w in workers))


def curl(lb: Lab, name: str, scheme: str) -> tuple[int, str, int]:
    port = 443 if scheme == "https" else 80
    r = lb.run(lb.cli, ["curl", "-s", "-k", "-m", "5", "-o", "/dev/null", "-w", "%{http_code} %{local_port}", "--resolve",
                        f"{name}:{port}:{IP}", f"{scheme}://{name}/"], capture_output=True, text=True)
    code, _, local = r.stdout.partition(" ")
    return r.returncode, code, int(local or 0)


def test_no_flow_passes_unjudged_or_unlogged_through_reloads(lab) -> None:  # type: ignore[no-untyped-def]
    """The moment a reload is reported (the new records in force), the workers are being replaced:
    a flow then was served unjudged and not logged (5 of 5 before the fix)."""
    lb, wd, daemon = lab["lab"], lab["wd"], lab["daemon"]
    t_ms = int(time.time() * 1000)
    flows: list[tuple[str, str, int, str, int]] = []  # scheme, name, rc, code, client port
    for i in range(6):
        before = status(lb)["records_loaded_at"]
        daemon.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while status(lb)["records_loaded_at"] == before:
            assert time.monotonic() < deadline, f"no reload: {status(lb)}"
        scheme = ("https", "http")[i % 2]
        rc, code, port = curl(lb, UNFILED, scheme)  # at once: the workers are being replaced
        flows.append((scheme, UNFILED, rc, code, port))
        deadline = time.monotonic() + 60
        while not reloaded(lb, before):
            assert time.monotonic() < deadline, f"the reload did not end: {status(lb)}"
            time.sleep(0.05)
        rc, code, port = curl(lb, FILED, scheme)
        flows.append((scheme, FILED, rc, code, port))
    wrong = [f for f in flows if (f[1] == UNFILED and not ((f[0] == "https" and f[2] in (35, 56)) or f[3] == "451"))
             or (f[1] == FILED and (f[2], f[3]) != (0, "200"))]
    assert not wrong, f"answered otherwise (an unfiled site served during a reload?): {wrong}"
    deadline = time.monotonic() + 20
    while True:  # every flow in the access log, with its verdict
        recs = {r.client_port: r for r in query(wd / "log", Query(since_ms=t_ms))
                if r.server_ip == IP and r.kind in ("tls-sni", "http-host")}
        missing = [f for f in flows if f[4] not in recs]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing, f"flows not in the access log: {missing}"
    assert all(recs[f[4]].verdict == ("unfiled" if f[1] == UNFILED else "filed") for f in flows)
