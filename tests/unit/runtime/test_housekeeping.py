"""Housekeeping: background jobs run beside the capture loop; the overlays' address cuts into nftables."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from unittest import mock

from beiand.model import AddressRule
from beiand.policy.orders import OrderStore
from beiand.policy.overlays import Decider, OrderLayer
from beiand.runtime.housekeeping import Housekeeping, every


def test_every_runs_the_job_in_its_own_thread_and_survives_a_failure() -> None:
    ran = threading.Event()
    calls: list[int] = []

    def job() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first run fails")
        ran.set()

    t = every(0.01, job, "test-job", first=0)
    assert t.daemon and t.name == "test-job"
    assert ran.wait(2) and len(calls) >= 2


class FakeNft:
    def __init__(self) -> None:
        self.synced: list[list[AddressRule]] = []

    def sync_addresses(self, rules: list[AddressRule], now: float) -> int:
        self.synced.append(list(rules))
        return len(rules)


def test_sync_addresses_puts_every_overlays_address_cuts_into_nftables(tmp_path: Path) -> None:
    """Issue 26: closure orders on an address (and the regulator's address filters) are cut in
    nftables, from the overlays' one reload path; a name order is the decider's, never nftables'."""
    hk = Housekeeping(mock.Mock(), mock.Mock())
    assert hk.sync_addresses() is False  # no overlays yet
    nft = FakeNft()
    hk.nft, hk.decider = nft, Decider(mock.Mock(), [OrderLayer(OrderStore(tmp_path))])  # type: ignore[assignment]
    assert hk.sync_addresses(force=True) is False and nft.synced == [[]]
    writer = OrderStore(tmp_path)  # `beiand block add` in another process
    time.sleep(0.01)
    writer.add("bad.example.com", "关停-2026-001", "test")
    writer.add("203.0.113.0/24", "关停-2026-002", "test")
    assert hk.sync_addresses() is True
    assert nft.synced[-1] == [AddressRule("203.0.113.0/24", ref="关停-2026-002")]
    assert hk.sync_addresses() is False and len(nft.synced) == 2  # nothing changed: nftables left alone


def test_retention_metrics_give_the_log_s_bytes_and_bytes_per_sealed_record(tmp_path: Path) -> None:
    """issue 19: BeiandAccessLogRetentionDoesNotFit multiplies the record rate (connection records
    included) by the bytes a sealed record costs on this log: both come from housekeeping."""
    from beiand.accesslog import AccessLog, LogConfig
    from beiand.runtime.metrics import Metrics
    from tests.unit.accesslog.helpers import rec

    with AccessLog(LogConfig(tmp_path / "log")) as alog:
        for day in range(2):
            for i in range(500):
                alog.append(rec(i, day))
            alog.flush()
    state = mock.Mock()
    state.config.accesslog.directory = tmp_path / "log"
    state.config.accesslog.hmac_key_file = None
    state.config.accesslog.retention_days = 184
    m = Metrics([], "test")
    Housekeeping(state, m).retire_and_verify()
    sealed = next((tmp_path / "log").glob("*/w0.sealed"))
    assert m.log_bytes_per_record._value.get() == sealed.stat().st_size / 500
    assert m.log_held._value.get() == sum(p.stat().st_size for p in (tmp_path / "log").glob("*/w0.*") if p.suffix != ".mark")


def test_a_rule_nftables_cannot_take_is_left_out_and_the_others_kept() -> None:
    good, bad = AddressRule("203.0.113.5", "tcp", (22, 22), ref="isms:1"), AddressRule("not-an-address", ref="isms:2")
    assert Housekeeping.valid([bad, good], 0.0) == [good]
