"""The fleet's backend without a server (issue 29): an address that does not answer is a
StoreError naming the store (no password), never a hang or a traceback. The backend against a
real PostgreSQL: tests/integration/test_decision_store.py and test_fleet_decisions.py."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from beiand.store import StoreError, StoreSettings, open_store


def test_a_store_that_does_not_answer_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    store = open_store(StoreSettings(f"postgresql://beiand@127.0.0.1:{port}/beiand", password="hunter2",
                                     connect_timeout=2), tmp_path, "gw")
    t0 = time.monotonic()
    with pytest.raises(StoreError, match=rf"decision store postgresql://beiand@127.0.0.1:{port}/beiand: ") as e:
        store.head()
    assert "hunter2" not in str(e.value) and time.monotonic() - t0 < 10
    with pytest.raises(StoreError):
        store.wait(0.1)
    store.close()
