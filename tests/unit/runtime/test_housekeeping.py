"""Housekeeping: background jobs run beside the capture loop; the overlays' address cuts into nftables."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from beiand.enforce.nft import ADDRESS_SETS, address_elements
from beiand.model import AddressRule
from beiand.policy.orders import OrderStore
from beiand.policy.overlays import Decider, OrderLayer
from beiand.runtime.housekeeping import Housekeeping, every
from beiand.runtime.metrics import Metrics


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
    """nftables as the housekeeping's sync thread sees it: what was written, the table in place or not."""

    via = "fake"

    def __init__(self) -> None:
        self.written: list[dict[str, list[Any]]] = []
        self.wrote = threading.Event()
        self.gate = threading.Event()  # a write waits for it: a slow nftables
        self.gate.set()
        self.entered = threading.Event()
        self.present = True
        self.setups = 0

    def write_addresses(self, elements: dict[str, list[Any]], timeout: float | None = None) -> int:
        self.entered.set()
        assert self.gate.wait(10)
        self.written.append(elements)
        self.wrote.set()
        return sum(len(es) for es in elements.values())

    def sync_addresses(self, rules: list[AddressRule], now: float) -> int:
        return self.write_addresses(address_elements(rules, now))

    def in_place(self) -> bool:
        return self.present

    def setup(self) -> None:
        self.setups += 1
        self.present = True


def ip4(elements: dict[str, list[Any]]) -> list[Any]:
    return elements["ip4"]


def settle(hk: Housekeeping, n: int, nft: FakeNft, timeout: float = 5.0) -> None:
    """Tick the supervisor's loop until ``n`` writes reached nftables and nothing is left in flight."""
    deadline = time.monotonic() + timeout
    hk.sync_addresses()
    while time.monotonic() < deadline and (len(nft.written) < n or hk.syncing()):
        nft.wrote.wait(0.02)
        nft.wrote.clear()
        hk.sync_addresses()
    assert len(nft.written) >= n and not hk.syncing(), (len(nft.written), n)


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def housekeeping(tmp_path: Path, *layers: Any, clock: Any = time.time) -> tuple[Housekeeping, FakeNft]:
    hk = Housekeeping(mock.Mock(), Metrics([], "test"), clock=clock)
    nft = FakeNft()
    hk.nft, hk.decider = nft, Decider(mock.Mock(), list(layers) or [OrderLayer(OrderStore(tmp_path))])  # type: ignore[assignment]
    return hk, nft


def sample(hk: Housekeeping, name: str, **labels: str) -> float | None:
    return hk.metrics.registry.get_sample_value(name, labels or None)


def test_sync_addresses_puts_every_overlays_address_cuts_into_nftables(tmp_path: Path) -> None:
    """Issue 26: closure orders on an address (and the regulator's address filters) are cut in
    nftables, from the overlays' one reload path; a name order is the decider's, never nftables'."""
    assert Housekeeping(mock.Mock(), mock.Mock()).sync_addresses() is False  # no overlays yet
    hk, nft = housekeeping(tmp_path)
    assert hk.sync_addresses(force=True) is False
    settle(hk, 1, nft)
    assert nft.written == [{n: [] for n in ADDRESS_SETS}]
    writer = OrderStore(tmp_path)  # `beiand block add` in another process
    time.sleep(0.01)
    writer.add("bad.example.com", "关停-2026-001", "test")
    writer.add("203.0.113.0/24", "关停-2026-002", "test")
    assert hk.sync_addresses() is True
    settle(hk, 2, nft)
    assert ip4(nft.written[-1]) == [{"prefix": {"addr": "203.0.113.0", "len": 24}}]
    assert hk.sync_addresses() is False and len(nft.written) == 2  # nothing changed: nftables left alone
    assert sample(hk, "beiand_nftables_address_rules") == 1 and sample(hk, "beiand_nftables_address_elements", kind="all") == 1
    assert sample(hk, "beiand_nftables_syncs_total", result="ok") == 2


def test_the_sync_runs_off_the_loop_one_at_a_time_and_the_newest_rule_set_wins(tmp_path: Path) -> None:
    """Writing 10,000 elements took 4.4 s inside the supervisor's loop (/metrics, ISMS and the
    watchdog stalled): the loop hands the rules to one thread and never waits for nftables."""
    hk, nft = housekeeping(tmp_path)
    nft.gate.clear()  # nftables is slow: the first write hangs until the test lets it go
    call = threading.Thread(target=hk.sync_addresses, kwargs={"force": True}, daemon=True)
    call.start()
    call.join(2)
    assert not call.is_alive(), "the loop waited for nftables"
    assert nft.entered.wait(5)
    writer = OrderStore(tmp_path)
    for i, net in enumerate(("203.0.113.1", "203.0.113.3")):
        time.sleep(0.01)
        writer.add(net, f"关停-2026-01{i}", "test")
        assert hk.sync_addresses() is True  # returns at once: the first write is still in flight
        assert hk.syncing() and len(nft.written) == 0
    nft.gate.set()
    settle(hk, 2, nft)
    assert [ip4(e) for e in nft.written] == [[], ["203.0.113.1", "203.0.113.3"]]  # the rule set in between never went


def test_rules_beyond_the_cap_are_left_out_whole_logged_by_reference_and_counted(tmp_path: Path, caplog: Any) -> None:
    hk, nft = housekeeping(tmp_path)
    hk.cap = 2
    writer = OrderStore(tmp_path)
    for i in range(3):
        writer.add(f"203.0.113.{i * 2}", f"关停-2026-02{i}", "test")
    with caplog.at_level(logging.ERROR, logger="beiand"):
        hk.sync_addresses(force=True)
        settle(hk, 1, nft)
    assert ip4(nft.written[-1]) == ["203.0.113.0", "203.0.113.2"]
    assert "关停-2026-022" in caplog.text and "over the cap" in caplog.text
    assert sample(hk, "beiand_nftables_address_rules_left_out", reason="over-cap") == 1
    assert sample(hk, "beiand_nftables_address_rules_left_out", reason="invalid") == 0
    assert sample(hk, "beiand_nftables_address_rules") == 2
    assert sample(hk, "beiand_nftables_address_elements_cap", kind="all") == 2


def test_a_rule_nftables_cannot_take_is_left_out_and_the_others_kept(tmp_path: Path, caplog: Any) -> None:
    good, bad = AddressRule("203.0.113.5", ref="isms:1"), AddressRule("not-an-address", ref="isms:2")
    layer = mock.Mock(spec=["reload", "addresses", "next_change", "metrics", "match", "name"])
    layer.reload.return_value, layer.addresses.return_value, layer.next_change.return_value = False, [bad, good], math.inf
    hk, nft = housekeeping(tmp_path, layer)
    with caplog.at_level(logging.ERROR, logger="beiand"):
        hk.sync_addresses(force=True)
        settle(hk, 1, nft)
    assert ip4(nft.written[-1]) == ["203.0.113.5"] and "isms:2" in caplog.text
    assert sample(hk, "beiand_nftables_address_rules_left_out", reason="invalid") == 1


def test_a_command_enters_nftables_within_a_tick_of_its_effect_time(tmp_path: Path) -> None:
    """Issue 26: a command with a later effectTime reached nftables up to RESYNC_S (10 s) late:
    the next sync is due at the earliest start among the overlays."""
    from beiand.isms.store import CommandRules
    from tests.unit.isms.test_store import cmd, store_with

    clock = Clock()
    start = clock.t + 5
    store_with(tmp_path, cmd(1, 2, (5, "203.0.113.5", ""), effect=start))
    hk, nft = housekeeping(tmp_path, CommandRules(tmp_path), clock=clock)
    hk.sync_addresses(force=True)
    settle(hk, 1, nft)
    assert ip4(nft.written[-1]) == []  # not yet in force
    clock.t = start - 0.1
    settle(hk, 1, nft)
    assert len(nft.written) == 1
    clock.t = start + 0.1  # the next tick after it starts (the loop ticks every 0.2 s)
    settle(hk, 2, nft)
    assert ip4(nft.written[-1]) == ["203.0.113.5"]


def test_an_end_is_the_elements_timeout_counted_from_the_write(tmp_path: Path) -> None:
    """Ends need no sync: each element carries its rule's end as a timeout, reckoned when the
    sync thread writes it (a rule set that waited for a slow write does not outlast its end)."""
    clock = Clock()
    writer = OrderStore(tmp_path)
    o = writer.add("203.0.113.9", "关停-2026-030", "test", until=clock.t + 100)
    clock.t = max(clock.t, o.created)
    hk, nft = housekeeping(tmp_path, clock=clock)
    nft.gate.clear()
    hk.sync_addresses(force=True)
    assert nft.entered.wait(5)
    nft.gate.set()
    settle(hk, 1, nft)
    nft.entered.clear()
    nft.gate.clear()
    hk.sync_addresses(force=True)  # in flight
    assert nft.entered.wait(5)
    hk.sync_addresses(force=True)  # queued behind it
    clock.t += 40  # the queued one is written 40 s later
    nft.gate.set()
    settle(hk, 3, nft)
    assert ip4(nft.written[-1]) == [{"elem": {"val": "203.0.113.9", "timeout": math.ceil(o.until - clock.t)}}]


def test_a_table_gone_is_made_again_on_the_periodic_resync(tmp_path: Path, caplog: Any) -> None:
    """`nft flush ruleset` (or deleting table inet beiand) silently ended every address cut: the
    periodic resync looks for the table, makes it again and writes the rules, once, and counts it."""
    clock = Clock()
    writer = OrderStore(tmp_path)
    writer.add("203.0.113.7", "关停-2026-040", "test")
    clock.t = max(clock.t, writer.orders["203.0.113.7"].created + 1)
    hk, nft = housekeeping(tmp_path, clock=clock)
    hk.sync_addresses(force=True)
    settle(hk, 1, nft)
    nft.present = False  # someone ran `nft flush ruleset`
    clock.t += hk.RESYNC_S
    with caplog.at_level(logging.WARNING, logger="beiand"):
        settle(hk, 2, nft)
        clock.t += hk.RESYNC_S
        settle(hk, 2, nft)
    assert nft.setups == 1 and len(nft.written) == 2 and ip4(nft.written[-1]) == ["203.0.113.7"]
    assert caplog.text.count("was gone") == 1
    assert sample(hk, "beiand_nftables_table_recreated_total") == 1


def test_cuts_say_why_nftables_cannot_cut_and_what_is_over_the_cap(tmp_path: Path) -> None:
    hk = Housekeeping(mock.Mock(), Metrics([], "test"))
    hk.set_nft(None, "neither python3-nftables nor the nft command is installed")
    assert hk.cuts.unavailable == "neither python3-nftables nor the nft command is installed"
    assert sample(hk, "beiand_nftables_available") == 0
    hk, _ = housekeeping(tmp_path)
    hk.set_nft(hk.nft, "")
    assert hk.cuts.unavailable == "" and sample(hk, "beiand_nftables_available") == 1
    hk.cap = 2
    assert hk.cuts.over_cap([AddressRule("203.0.113.1"), AddressRule("203.0.113.3")]) == ""
    assert "over the cap of 2" in hk.cuts.over_cap([AddressRule(f"203.0.113.{i * 2}") for i in range(3)])


def test_retention_metrics_give_the_log_s_bytes_and_bytes_per_sealed_record(tmp_path: Path) -> None:
    """issue 19: BeiandAccessLogRetentionDoesNotFit multiplies the record rate (connection records
    included) by the bytes a sealed record costs on this log: both come from housekeeping."""
    from beiand.accesslog import AccessLog, LogConfig
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


@pytest.mark.integration
def test_after_nft_flush_ruleset_the_table_and_the_cuts_come_back(tmp_path: Path) -> None:
    """The same with real nftables, in a network namespace of the test's own."""
    if os.geteuid() != 0:
        pytest.fail("nftables in a network namespace needs root")
    from pyroute2 import netns

    from beiand.enforce.nft import Nft
    from beiand.lab.netns import in_netns

    ns = f"hk{uuid.uuid4().hex[:8]}"
    netns.create(ns)
    clock = Clock()
    writer = OrderStore(tmp_path)
    writer.add("203.0.113.7", "关停-2026-050", "test")
    clock.t = max(clock.t, writer.orders["203.0.113.7"].created + 1)

    def run() -> tuple[list[str], list[str]]:  # in the namespace: so are the sync thread and any nft it starts
        nft = Nft()
        nft.setup()
        hk = Housekeeping(mock.Mock(), Metrics([], "test"), clock=clock)
        hk.set_nft(nft)
        hk.decider = Decider(mock.Mock(), [OrderLayer(OrderStore(tmp_path))])
        try:
            hk.sync_addresses(force=True)
            before = wait_for(hk, lambda: listed(nft))
            subprocess.run(["nft", "flush", "ruleset"], check=True)
            clock.t += hk.RESYNC_S
            after = wait_for(hk, lambda: listed(nft))
            assert sample(hk, "beiand_nftables_table_recreated_total") == 1
            return before, after
        finally:
            hk.close()
            nft.teardown()

    try:
        before, after = in_netns(ns, run)
    finally:
        netns.remove(ns)
    assert before == after == ["203.0.113.7"]


def listed(nft: Any) -> list[str]:
    try:
        return [str(e) for e in nft.elements("ip4")]
    except Exception:
        return []


def wait_for(hk: Housekeeping, got: Callable[[], list[str]], timeout: float = 10.0) -> list[str]:
    """Tick the loop until ``got()`` gives something and no write is in flight."""
    deadline = time.monotonic() + timeout
    hk.sync_addresses()
    while time.monotonic() < deadline and (hk.syncing() or not got()):
        time.sleep(0.02)
        hk.sync_addresses()
    return got()


def test_ip_report_metrics_count_overdue_changes_until_the_report_is_marked_filed(tmp_path: Path) -> None:
    """Issue 35: beiand_ip_report_overdue_changes (the alert BeiandIpReportOverdue) from the inventory
    history and the decision store's ip-report rows; a report marked as filed clears it."""
    import dataclasses
    import datetime as dt

    from beiand.policy.history import record_load
    from beiand.policy.inventory import load_inventory
    from beiand.policy.workdays import WorkCalendar
    from beiand.report import ipreport
    from beiand.runtime.decisions import open_decisions
    from beiand.runtime.settings import Config

    bj = dt.timezone(dt.timedelta(hours=8))
    friday = dt.datetime(2026, 12, 4, 18, tzinfo=bj).timestamp()
    inv = tmp_path / "inv.csv"
    inv.write_text("prefix,account\n198.51.100.0/24,cust-1\n", encoding="utf-8")
    record_load(tmp_path, inv, int(friday * 1000))
    base = Config()
    cfg = dataclasses.replace(base, daemon=dataclasses.replace(base.daemon, state_dir=tmp_path))
    open_decisions(cfg).close()  # the store the daemon's follower creates at start
    now = [dt.datetime(2026, 12, 11, 12, tzinfo=bj).timestamp()]
    m = Metrics([], "test")
    hk = Housekeeping(mock.Mock(config=cfg), m, clock=lambda: now[0])
    elsewhere = dataclasses.replace(cfg, daemon=dataclasses.replace(cfg.daemon, state_dir=tmp_path / "none"))
    Housekeeping(mock.Mock(config=elsewhere), m).ip_report_metrics()  # no history: logged, nothing set
    assert m.registry.get_sample_value("beiand_ip_report_unreported_changes") == 0

    def value(name: str) -> float | None:
        return m.registry.get_sample_value(name)

    hk.ip_report_metrics()
    assert value("beiand_ip_report_unreported_changes") == 1 and value("beiand_ip_report_overdue_changes") == 0
    now[0] = dt.datetime(2026, 12, 12, 0, tzinfo=bj).timestamp()  # the fifth working day is over
    hk.ip_report_metrics()
    assert value("beiand_ip_report_overdue_changes") == 1 and value("beiand_ip_report_last_reported_timestamp_seconds") == 0
    store = open_decisions(cfg)
    try:
        report = ipreport.build([(int(friday * 1000), load_inventory(inv))], None, WorkCalendar(), now[0])
        store.append([ipreport.reported_entry(report, "ops", "filed", now[0])])
    finally:
        store.close()
    hk.ip_report_metrics()
    assert value("beiand_ip_report_overdue_changes") == 0 and value("beiand_ip_report_unreported_changes") == 0
    assert value("beiand_ip_report_last_reported_timestamp_seconds") == now[0]
