"""CU-lite (ISMS.md §1): beiand serves SMMS itself, uploads its data files over SFTP to a real
OpenSSH server (Debian's openssh-server, in a network namespace) and calls ``idc_commandack``
on the SMMS double, which checks the envelope with its own code."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from beiand.runtime.isms import IsmsRuntime
from beiand.runtime.settings import parse_config
from tests import isms_double as dbl
from tests.integration.nsdaemon import require_root
from tests.unit.cli.test_isms import make_config

pytestmark = pytest.mark.integration
NS_IP, HOST_IP = "10.203.7.2", "10.203.7.1"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """An sshd in its own namespace; (url, key file, the directory SMMS reads)."""
    require_root()
    if not shutil.which("/usr/sbin/sshd"):
        pytest.fail("needs Debian's openssh-server (apt-get install openssh-server)")
    tag = uuid.uuid4().hex[:6]
    ns, a, b = f"smms{tag}", f"sa{tag}", f"sb{tag}"
    d = tmp_path / "sshd"
    d.mkdir()
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host"))
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client"))
    shutil.copy(d / "client.pub", d / "authorized_keys")
    drop = tmp_path / "smms-drop"
    drop.mkdir()
    (d / "sshd_config").write_text(
        f"Port 2222\nListenAddress {NS_IP}\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        f"Subsystem sftp internal-sftp\nPidFile {d / 'pid'}\n")
    os.makedirs("/run/sshd", exist_ok=True)
    proc = None
    # pyroute2 and setns, not `ip -n` / `ip netns exec`: those remount /sys and fail in a chroot
    # (fresh-machine), as beiand.lab's namespaces do.
    from pyroute2 import IPRoute, NetNS, netns

    from beiand.lab.netns import setns

    created = False
    try:
        netns.create(ns)
        created = True
        with IPRoute() as ip:
            ip.link("add", ifname=a, kind="veth", peer={"ifname": b})
            ia = ip.link_lookup(ifname=a)[0]
            ip.link("set", index=ip.link_lookup(ifname=b)[0], net_ns_fd=ns)
            ip.addr("add", index=ia, address=HOST_IP, prefixlen=30)
            ip.link("set", index=ia, state="up")
        with NetNS(ns) as n:
            ib = n.link_lookup(ifname=b)[0]
            n.addr("add", index=ib, address=NS_IP, prefixlen=30)
            n.link("set", index=ib, state="up")
            n.link("set", index=n.link_lookup(ifname="lo")[0], state="up")
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")], preexec_fn=lambda: setns(ns),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while time.time() < deadline:
            r = subprocess.run(["ss", "-ltn"], capture_output=True, text=True, preexec_fn=lambda: setns(ns))
            if ":2222" in r.stdout:
                break
            time.sleep(0.1)
        else:
            pytest.fail("sshd did not start")
        yield f"sftp://root@{NS_IP}:2222{drop}", d / "client", drop
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(5)
        with IPRoute() as ip:
            for idx in ip.link_lookup(ifname=a):
                ip.link("del", index=idx)
        if created:
            netns.remove(ns)


def test_uploads_reach_sftp_and_acks_reach_smms(tmp_path: Path, sshd: tuple[str, Path, Path]) -> None:
    url, key, drop = sshd
    ack = dbl.AckServer()
    try:
        cfgfile = make_config(tmp_path)
        text = cfgfile.read_text() + f'mode = "cu-lite"\nack_url = "{ack.url}"\nupload_url = "{url}"\nupload_key_file = "{key}"\n'
        cfg = parse_config(text, str(cfgfile))
        rt = IsmsRuntime(cfg)
        smms = dbl.Smms("")
        p = smms.params(dbl.command_xml(31, 2, [(1, "bad.example", "")]).encode(), 2)
        assert rt.service.handle({k: str(v) for k, v in p.items()}).code == 0
        p = smms.params(dbl.command_xml(32, 2, [(3, "关键字", "")]).encode(), 2)
        assert rt.service.handle({k: str(v) for k, v in p.items()}).code == 0
        written = rt.run_due(["heartbeat", "report"])
        assert written["7"] == 1
        got = sorted(drop.rglob("*.xml"))
        assert {g.parent.parent.name for g in got} == {"4", "5", "7", "8", "9"}
        assert not list(drop.rglob("*.tmp"))
        hb = dbl.unpack_file(next(g for g in got if g.parent.parent.name == "7").read_bytes())
        assert b"<activeState>" in hb and f"<idcId>{dbl.IDC_ID}</idcId>".encode() in hb
        assert not list(rt.spool.directory.glob("[0-9]*/*/*.xml"))  # moved to sent/
        assert ack.calls == [(0, "ok")]
        assert [(a["commandId"], a["resultCode"]) for a in ack.acks] == [("31", "0"), ("32", "2")]
        assert ack.acks[1]["msgInfo"].startswith("unsupported: subtype 3")
        # SMMS's verdict files in 999/ are read back
        (drop / "999").mkdir()
        (drop / "999" / f"9-{got[0].name}-0").write_text("")
        assert rt.uploader is not None and rt.uploader.answers() == [(9, got[0].name, 0)]
    finally:
        ack.close()


def test_ftp_upload_where_the_province_uses_ftp(tmp_path: Path) -> None:
    import threading

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    drop = tmp_path / "ftp-drop"
    drop.mkdir()
    auth = DummyAuthorizer()
    auth.add_user("isms", "pw-0f-the-province", str(drop), perm="elradfmwMT")
    handler = type("H", (FTPHandler,), {"authorizer": auth})
    server = FTPServer(("127.0.0.1", 0), handler)
    port = server.socket.getsockname()[1]
    t = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.1, "blocking": True}, daemon=True)
    t.start()
    pw = tmp_path / "ftp-password"
    pw.write_text("pw-0f-the-province\n")
    os.chmod(pw, 0o600)
    ack = dbl.AckServer()
    try:
        cfgfile = make_config(tmp_path)
        text = cfgfile.read_text() + (f'mode = "cu-lite"\nack_url = "{ack.url}"\nupload_url = "ftp://isms@127.0.0.1:{port}/"\n'
                                      f'upload_key_file = "{pw}"\n')
        rt = IsmsRuntime(parse_config(text, str(cfgfile)))
        rt.run_due(["heartbeat"])
        got = sorted(drop.rglob("*.xml"))
        assert [g.parent.parent.name for g in got] == ["7"] and not list(drop.rglob("*.tmp"))
        assert b"<activeState>" in dbl.unpack_file(got[0].read_bytes())
        (drop / "999").mkdir()
        (drop / "999" / f"7-{got[0].name}-0").write_text("")
        assert rt.uploader is not None and rt.uploader.answers() == [(7, got[0].name, 0)]
        # a wrong password: the file stays in the spool for the next round, counted
        pw.write_text("wrong\n")
        rt.run_due(["heartbeat"])
        assert len(rt.spool.pending()) == 1 and rt.uploader.failed == 1
    finally:
        ack.close()
        server.close_all()
