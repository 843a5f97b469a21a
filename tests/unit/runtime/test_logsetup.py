"""The daemon's own log lines: journal (priority prefix, no timestamp), text, json."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from beiand.runtime import logsetup


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _emit(fmt, environ=None):
    buf = io.StringIO()
    chosen = logsetup.configure(fmt, stream=buf, environ=environ or {})
    log = logging.getLogger("beiand.x")
    log.info("hello %s", "world")
    log.warning("careful", extra={"iface": "eth1"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    return chosen, buf.getvalue().splitlines()


def test_journal_lines_carry_a_priority_and_no_timestamp():
    chosen, lines = _emit("journal")
    assert chosen == "journal"
    assert lines[0] == "<6>beiand.x: hello world"
    assert lines[1] == "<4>beiand.x: careful"
    assert lines[2] == "<3>beiand.x: failed"
    assert all(ln.startswith("<3>") for ln in lines[2:]) and any("ValueError: boom" in ln for ln in lines)


def test_text_elsewhere_keeps_the_timestamped_format():
    chosen, lines = _emit("auto", environ={})
    assert chosen == "text"
    assert lines[0].endswith(" INFO beiand.x: hello world") and lines[0][:4].isdigit()


def test_json_one_object_a_line_with_structured_fields():
    _, lines = _emit("json")
    docs = [json.loads(ln) for ln in lines]
    assert [d["level"] for d in docs] == ["info", "warning", "error"]
    assert docs[0]["message"] == "hello world" and docs[0]["logger"] == "beiand.x" and docs[0]["time"].endswith("Z")
    assert docs[1]["iface"] == "eth1"
    assert "ValueError: boom" in docs[2]["exc"]


def test_auto_is_journal_only_when_journal_stream_names_stderr(tmp_path):
    with open(tmp_path / "err", "w") as f:
        st = os.fstat(f.fileno())
        assert logsetup.resolve("auto", f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}) == "journal"
        assert logsetup.resolve("auto", f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}) == "text"  # stderr redirected
        assert logsetup.resolve("auto", f, {"JOURNAL_STREAM": "junk"}) == "text"
        assert logsetup.resolve("auto", f, {"JOURNAL_STREAM": "\u00b2:\u00b3"}) == "text"
        assert logsetup.resolve("json", f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}) == "json"


def test_daemon_under_systemd_logs_for_the_journal(tmp_path):
    """`beiand run` with stderr on the stream JOURNAL_STREAM names (as systemd sets it up)."""
    err = tmp_path / "stderr"
    with open(err, "w") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        r = subprocess.run([sys.executable, "-m", "beiand.cli", "run", "--config", str(tmp_path / "missing.toml")],
                           stderr=f, stdout=subprocess.DEVNULL, env=env, timeout=60)
    assert r.returncode == 2
    lines = err.read_text().splitlines()
    assert lines[0].startswith("<3>beiand: ") and all(ln.startswith("<3>") for ln in lines), lines
    assert "missing.toml" in err.read_text() and " ERROR " not in err.read_text()
