"""CU-lite over FTPS (ftplib.FTP_TLS against pyftpdlib's TLS_FTPHandler, TLS required on control
and data), and SMMS's ``999/<DT>-<name>-<code>`` answers acted on per code (retry.py): accepted,
rejected for good, or sent again 600 s later, at most 3 tries."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from beiand.runtime.isms import IsmsRuntime
from beiand.runtime.settings import parse_config
from tests import isms_double as dbl
from tests.unit.cli.test_isms import make_config

pytestmark = pytest.mark.integration
PW = "pw-0f-the-province"


@pytest.fixture
def ftps(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """(port, the drop SMMS reads, the server's certificate)."""
    handlers = pytest.importorskip("pyftpdlib.handlers")
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.servers import FTPServer

    cert = tmp_path / "ftps.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(cert), "-out", str(cert)],
                   check=True, capture_output=True)
    drop = tmp_path / "ftps-drop"
    drop.mkdir()
    auth = DummyAuthorizer()
    auth.add_user("isms", PW, str(drop), perm="elradfmwMT")
    handler = type("H", (handlers.TLS_FTPHandler,), {"authorizer": auth, "certfile": str(cert),
                                                     "tls_control_required": True, "tls_data_required": True})
    server = FTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.1, "blocking": True}, daemon=True)
    t.start()
    try:
        yield server.socket.getsockname()[1], drop, cert
    finally:
        server.close_all()


def runtime(tmp_path: Path, url: str, ack_url: str) -> IsmsRuntime:
    pw = tmp_path / "ftp-password"
    pw.write_text(PW + "\n")
    os.chmod(pw, 0o600)
    cfgfile = make_config(tmp_path)
    text = cfgfile.read_text() + f'mode = "cu-lite"\nack_url = "{ack_url}"\nupload_url = "{url}"\nupload_key_file = "{pw}"\n'
    return IsmsRuntime(parse_config(text, str(cfgfile)))


def test_ftps_upload_and_smms_answers(tmp_path: Path, ftps: tuple[int, Path, Path]) -> None:
    port, drop, cert = ftps
    ack = dbl.AckServer()
    try:
        rt = runtime(tmp_path, f"ftps://isms@127.0.0.1:{port}/", ack.url)
        up = rt.uploader
        assert up is not None
        (rt.spool.directory).mkdir(parents=True, exist_ok=True)
        # the province's CA, pinned like known_hosts; without it the self-signed server is refused
        rt.run_due(["heartbeat"])
        assert up.failed == 1 and len(rt.spool.pending()) == 1 and not list(drop.rglob("*.xml"))
        (rt.spool.directory / "ftps-ca.pem").write_bytes(cert.read_bytes())
        now = [1_800_000_000.0]
        up.clock = lambda: now[0]
        rt.run_due([])
        (a,) = sorted(drop.rglob("*.xml"))
        assert a.parent.parent.name == "7" and b"<activeState>" in dbl.unpack_file(a.read_bytes())
        rt.run_due(["heartbeat"])
        rt.run_due(["heartbeat"])
        b, c = sorted(p for p in drop.rglob("*.xml") if p.name != a.name)
        (drop / "999").mkdir()
        # a: hash failed (2) → sent again 600 s later, up to 3 tries, then rejected for good
        (drop / "999" / f"7-{a.name}-2").write_text("")
        (drop / "999" / f"7-{b.name}-54").write_text("")  # b: wrong node content: rejected at once
        (drop / "999" / f"7-{c.name}-999").write_text("")  # c: still processing, then processed
        now[0] += 100
        rt.run_due([])
        assert up.verdicts[("7", "rejected")] == 1 and up.verdicts[("7", "retried")] == 0
        assert (rt.spool.directory / "rejected" / "7" / b.parent.name / b.name).exists()
        (drop / "999" / f"7-{c.name}-0").write_text("")
        a.unlink()
        for tries in (2, 3):
            now[0] += 601
            rt.run_due([])
            assert a.exists() and up.tracker.entries[a.name].tries == tries
            a.unlink()
        assert up.verdicts[("7", "retried")] == 2 and up.verdicts[("7", "accepted")] == 1
        now[0] += 601
        rt.run_due([])
        assert not a.exists() and up.verdicts[("7", "rejected")] == 2
        assert (rt.spool.directory / "rejected" / "7" / a.parent.name / a.name).exists()
        assert {e.state for e in up.tracker.entries.values()} == {"accepted", "rejected"}
        # metrics: beiand_isms_reports_total{dt="7", result=...} (BeiandIsmsReportRejected fires on "rejected")
        reg = rt.metrics.reports
        assert reg.labels("7", "rejected")._value.get() == 2 and reg.labels("7", "retried")._value.get() == 2
    finally:
        ack.close()
