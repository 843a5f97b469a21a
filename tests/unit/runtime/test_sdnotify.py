"""sd_notify without libsystemd: messages arrive, and a manager that stops reading never blocks the daemon."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from beiand.runtime.sdnotify import sd_notify, watchdog_interval


def test_messages_arrive_and_a_full_socket_never_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert sd_notify("READY=1\nSTATUS=ok")
    assert s.recv(100) == b"READY=1\nSTATUS=ok"
    t0 = time.monotonic()
    results = [sd_notify("WATCHDOG=1") for _ in range(500)]  # nobody reads: the queue fills
    assert time.monotonic() - t0 < 2
    assert results[0] and not results[-1]
    s.close()


def test_watchdog_interval_is_half_the_usec_and_only_for_our_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sd_notify("READY=1")
