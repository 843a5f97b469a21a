"""``[isms]`` reloaded in place (SIGHUP → Daemon.reload → IsmsRuntime.reload): the endpoint, over
real HTTP with the SMMS double, follows rotated secrets, a new idcId and a new profile; keys that
need a restart are kept and listed; a bad profile or secret leaves everything as it was."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

import pytest

from beiand.runtime.isms import IsmsRuntime
from beiand.runtime.settings import parse_config
from tests import isms_double as dbl
from tests.unit.cli.test_isms import make_config

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_reload_applies_isms_settings_in_place(tmp_path: Path) -> None:
    cfgfile = make_config(tmp_path)
    port = free_port()
    base = cfgfile.read_text() + f'listen = "127.0.0.1:{port}"\n'
    rt = IsmsRuntime(parse_config(base, str(cfgfile)))
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(rt.start())
        started.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(10)
    try:
        smms = dbl.Smms(f"http://127.0.0.1:{port}/isms/idc_command")
        period = "<activeResourcesPeriod><commandId>7</commandId><period>3600</period></activeResourcesPeriod>"
        assert smms.send(period, 5)[0] == 0
        # rotate the user key, change idcId and house, a profile reading type 5 as 基础数据查询, another listen
        (tmp_path / "secrets" / "user_key").write_bytes(b"rotated-user-key\n")
        prof = tmp_path / "province.toml"
        prof.write_text('type5 = "basic-query"\n')
        new = (base.replace(f'idc_id = "{dbl.IDC_ID}"', 'idc_id = "A2.B1-NEW"').replace('house_id = "H1"', 'house_id = "H9"')
               + f'profile = "{prof}"\n').replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")
        assert rt.reload(parse_config(new, str(cfgfile))) == ["listen"]
        assert rt.status()["restart_needed"] == ["listen"] and rt.cfg.isms.listen == f"127.0.0.1:{port}"
        assert smms.send(period, 5)[0] == 999  # the old idcId
        smms.idc_id = "A2.B1-NEW"
        assert smms.send(period, 5)[0] == 1  # the old user key
        smms.user_key = b"rotated-user-key"
        code, msg = smms.send(period, 5)
        assert code == 999 and "basic-query" not in msg and "commandType 5" in msg  # the new profile
        assert rt.store.house_id == "H9" and rt.reporter.house_id == "H9"
        assert smms.send(dbl.command_xml(1, 2, [(1, "bad.example", "")]), 2)[0] == 0
        assert rt.service.acks[-1].house_id == "H9"
        # a bad profile: refused, nothing changed
        prof.write_text('type5 = "nonsense"\n')
        with pytest.raises(ValueError):
            rt.reload(parse_config(new, str(cfgfile)))
        assert rt.cfg.isms.idc_id == "A2.B1-NEW" and rt.profile.type5 == "basic-query"
        os.chmod(tmp_path / "secrets" / "user_key", 0o644)  # a secret readable by others: refused too
        prof.write_text("")
        with pytest.raises(ValueError):
            rt.reload(parse_config(new, str(cfgfile)))
        assert rt.profile.type5 == "basic-query"
    finally:
        asyncio.run_coroutine_threadsafe(rt.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
