"""The active-resource view's plumbing: workers pass rows on in small messages; the main process
keeps a bounded view without scanning it per insert."""

import types

from beiand.model import Action, Decision, Kind, Mode, Observation, Transport, Verdict, VerdictKind
from beiand.runtime import supervisor
from beiand.runtime.ipc import Rows, Snapshot
from beiand.runtime.supervisor import Daemon, Worker
from beiand.sinks import active
from beiand.sinks.active import ActiveResourceAggregate as _Aggregate

UNFILED = Decision(Verdict(VerdictKind.UNFILED, None, "no-filing"), Action.FLAG, "monitor:unfiled", Mode.MONITOR, "cust-1", "bj")


def obs(i: int, ts: float = 1.0) -> Observation:
    name = f"n{i}.example.com"
    return Observation(ts, "10.0.0.1", 40000, "198.51.100.7", 443, Transport.TCP, Kind.TLS_SNI, name, name)


def test_rows_leave_in_small_messages_with_their_hits():
    agg = _Aggregate()
    for i in range(1000):
        agg.on_decision(obs(i), UNFILED)
    agg.on_decision(obs(7, ts=5.0), UNFILED)
    sizes, rows = [], []
    while batch := agg.take():
        sizes.append(len(batch))
        rows += batch
    assert sizes == [128] * 7 + [104]
    assert len({r[0] for r in rows}) == 1000
    seven = next(r for r in rows if r[0] == "n7.example.com")
    # plain strings, not enum members: cheap to pickle, equal to what the API shows
    assert seven[4:7] == ("unfiled", "tls-sni", "flag") and type(seven[4]) is str
    assert seven[7:] == (1.0, 5.0, 2)
    agg.on_decision(obs(7, ts=6.0), UNFILED)
    assert agg.take() == [(*seven[:7], 1.0, 6.0, 1)]  # hits since the last take


def test_rows_beyond_the_bound_are_counted_not_kept(monkeypatch):
    monkeypatch.setattr(active, "MAX_CHANGED_ROWS", 10)
    agg = _Aggregate()
    for i in range(25):
        agg.on_decision(obs(i), UNFILED)
    assert len(agg.changed) == 10 and agg.view_dropped == 15
    agg.on_decision(obs(3), UNFILED)  # already waiting: still counted in its row
    assert agg.view_dropped == 15 and agg.rows[next(k for k in agg.rows if k[0] == "n3.example.com")][2] == 2


def test_main_process_view_is_bounded_and_keeps_the_recent(monkeypatch):
    monkeypatch.setattr(supervisor, "MAX_VIEW_ROWS", 100)
    d = Daemon.__new__(Daemon)  # only the view: no config, no workers started
    d.obs = {}
    d.keeper = types.SimpleNamespace(observe=lambda rows: None)  # type: ignore[assignment]
    w = Worker(0, None, None)  # type: ignore[arg-type]
    agg = _Aggregate()
    for i in range(250):
        agg.on_decision(obs(i, ts=float(i)), UNFILED)
    rows = sorted(agg.take(1000), key=lambda r: r[8])  # as they arrive over time
    for k in range(0, len(rows), 37):
        d._handle(w, Rows(rows[k : k + 37]))  # rows-only messages carry no counters
    assert 90 <= len(d.obs) <= 100
    assert min(v[1] for v in d.obs.values()) >= 150  # the oldest were forgotten first
    d._handle(w, Rows([(*next(iter(d.obs)), 0.5, 300.0, 4)]))
    first = next(iter(d.obs.values()))
    assert first[0] == 0.5 and first[1] == 300.0 and first[2] == 5


def test_load_state_applies_records_max_loss_against_the_state_in_service(tmp_path):
    """The guard of every reload, without a daemon: the new config's max_loss against the index in service."""
    import os

    import pytest

    from beiand.records.generate import HEADER, OUR_PROVIDER
    from beiand.runtime.wiring import RecordsRefused, load_state

    def write_records(path, n):
        rows = [",".join(HEADER)] + [f"京ICP备{10_000_000 + i}号-1,示例{i}有限公司,网站,站点{i},site{i}.example.cn,,{OUR_PROVIDER},正常,2024-01-01"
                                     for i in range(n)]
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")

    rec = tmp_path / "r.csv"
    conf = tmp_path / "beiand.toml"

    def config(max_loss: float) -> str:
        conf.write_text(f'[records]\nfiles = ["{rec}"]\nprovider = "{OUR_PROVIDER}"\nmax_loss = {max_loss}\nmax_age_hours = 1\n')
        return str(conf)

    write_records(rec, 100)
    os.utime(rec, (1_000_000.0, 1_000_000.0))
    first = load_state(config(0.5))
    assert len(first.index.filings) == 100 and first.records_mtime == 1_000_000.0
    write_records(rec, 60)  # 40% lost: within 0.5
    assert len(load_state(config(0.5), first).index.filings) == 60
    with pytest.raises(RecordsRefused) as exc:
        load_state(config(0.3), first)  # the same file, a stricter bound: refused
    assert exc.value.offered == 60 and exc.value.in_service == 100 and exc.value.files == [str(rec)]
    assert str(rec) in str(exc.value) and "records.max_loss = 0.3" in str(exc.value)
    assert len(load_state(config(0.3)).index.filings) == 60  # no index in service (start): nothing to compare


def test_workers_report_the_full_chain_head_for_the_status_api(tmp_path):
    """/api/v1/status shows each worker's log position with the chain head in full (issue 14):
    a line of it is an anchor `beiand logs verify --anchors` reads."""
    import json
    from unittest import mock

    from beiand.accesslog import AccessLog, LogConfig
    from beiand.accesslog.reader import parse_anchor_line
    from tests.unit.accesslog.helpers import rec

    with AccessLog(LogConfig(tmp_path)) as log:
        for i in range(10):
            log.append(rec(i))
        log.flush()
        pos = log.position
    assert pos["count"] == 10 and len(pos["head"]) == 64 and pos["partition"] == "2026-09-21/w0"
    assert parse_anchor_line(json.dumps(pos), "status") is not None
    d = Daemon.__new__(Daemon)
    d.obs, d.latencies, d.metrics, d.workers = {}, [], mock.Mock(), {}
    w = Worker(0, None, None)  # type: ignore[arg-type]
    d._handle(w, Snapshot({}, [], [], [], [], accesslog=pos))
    assert w.accesslog == pos


def test_a_bad_nat_feed_is_refused_naming_file_and_line_and_the_inventory_history_is_recorded(tmp_path):
    """issue 19: inventory.nat_file is loaded like the inventory: a bad reload raises (the
    supervisor keeps the state in service); every load that takes effect goes into the history."""
    import pytest

    from beiand.policy.history import Holders
    from beiand.records.generate import HEADER, OUR_PROVIDER
    from beiand.runtime.wiring import StateError, load_state, note_inventory

    rec = tmp_path / "r.csv"
    rec.write_text(",".join(HEADER) + f"\n京ICP备10000000号-1,示例有限公司,网站,站点,site.example.cn,,{OUR_PROVIDER},正常,2024-01-01\n",
                   encoding="utf-8")
    inv = tmp_path / "inventory.csv"
    inv.write_text("prefix,account\n198.51.100.0/24,cust-1\n")
    nat = tmp_path / "nat.csv"
    nat.write_text("public,internal,account\n203.0.113.5:22,198.51.100.7,cust-1\n")
    conf = tmp_path / "beiand.toml"
    conf.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[records]\nfiles = ["{rec}"]\nprovider = "{OUR_PROVIDER}"\n'
                    f'[inventory]\nfile = "{inv}"\nnat_file = "{nat}"\n')
    first = load_state(str(conf))
    assert len(first.nat) == 1 and first.nat.other_side("198.51.100.7", 22, 0) == "203.0.113.5:22"
    note_inventory(first)
    nat.write_text("public,internal,account\n203.0.113.5:22,198.51.100.7,\n")
    with pytest.raises(StateError, match=rf"inventory.nat_file invalid: {nat}:2: account"):
        load_state(str(conf), first)
    h = Holders(tmp_path / "state")
    assert h.holder("198.51.100.7", int(first.loaded_at * 1000)) == "cust-1"


def test_without_nftables_the_isms_acks_an_address_filter_partial(tmp_path, monkeypatch):
    """The supervisor logged "nftables unavailable" and the regulator was still told "cut in
    nftables on every port": the command store learns from the supervisor's enforcement setup."""
    from types import SimpleNamespace
    from unittest import mock

    from beiand.enforce.nft import NftError
    from beiand.isms.store import CommandStore
    from beiand.isms.wire.model import Rule, SecurityCommand
    from beiand.policy.overlays import Decider
    from beiand.runtime.housekeeping import Housekeeping
    from beiand.runtime.metrics import Metrics

    def no_nft():
        raise NftError("neither python3-nftables nor the nft command is installed")

    monkeypatch.setattr(supervisor, "Nft", no_nft)
    monkeypatch.setattr(supervisor, "decider", lambda cfg, policy, live=False: Decider(mock.Mock()))
    d = Daemon.__new__(Daemon)
    d.state = mock.Mock()
    d.state.config.enforce.inline = False
    d.housekeeping = Housekeeping(d.state, Metrics())
    d._rules = {}
    d._setup_enforcement()
    d.isms = SimpleNamespace(store=CommandStore(tmp_path))
    d._share_cuts()
    out = d.isms.store.apply_security(SecurityCommand(1, 2, 0, (Rule(5, "203.0.113.5"), Rule(7, "22"), Rule(8, "1"))), 1.0)
    assert out.result == 1 and "nftables unavailable (neither python3-nftables" in out.msg, out


def test_a_drop_not_imported_because_the_store_failed_is_tried_again(tmp_path, monkeypatch):
    """records.source = "store": a drop whose import failed (the store briefly unreachable) is
    imported at the next poll, and the failure is counted; a refused one is not tried again."""
    from beiand.records.generate import GenConfig, write_csv
    from beiand.runtime import supervisor as sup
    from beiand.runtime.metrics import Metrics
    from beiand.runtime.settings import load_config
    from beiand.store import StoreError
    from beiand.store import register as reg

    write_csv(str(tmp_path / "a.csv"), GenConfig(filings=30))
    conf = tmp_path / "beiand.toml"
    conf.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\ngateway = "gw-t"\n'
                    f'[records]\nsource = "store"\nfiles = ["{tmp_path / "a.csv"}"]\n'
                    f'[accesslog]\ndirectory = "{tmp_path / "log"}"\n')
    cfg = load_config(conf)
    d = sup.Daemon.__new__(sup.Daemon)
    d.metrics, d.refused, d.refused_count, d.register, d._drop = Metrics([], "test"), None, 0, None, {}
    real = sup.open_decisions

    def down(c):
        raise StoreError("decision store: unreachable")

    monkeypatch.setattr(sup, "open_decisions", down)
    d._import_drop(cfg)
    assert d.metrics.registry.get_sample_value("beiand_register_drop_import_failures_total") == 1
    assert d.refused is None  # not a refusal: the store failed
    monkeypatch.setattr(sup, "open_decisions", real)
    d._import_drop(cfg)  # the same files, the store back: imported now
    store = real(cfg)
    assert reg.head(store) == 1
    store.close()
    write_csv(str(tmp_path / "a.csv"), GenConfig(filings=3))  # refused (records.max_loss): not tried again
    d._import_drop(cfg)
    assert d.refused is not None and d.refused_count == 1
    d._import_drop(cfg)
    assert d.refused_count == 1


def test_a_stale_drop_at_start_does_not_undo_a_newer_version(tmp_path):
    """Review of issue 35: a store-mode gateway starting without its mark (a new state directory)
    whose drop still holds an export the register already published, and replaced since, published
    it again: the whole fleet went back to the old records. At start, an export the register has
    published before is not published again; a change of the drop while running still is (an
    operator's deliberate revert)."""
    import os

    from beiand.records.generate import GenConfig, write_csv
    from beiand.runtime import supervisor as sup
    from beiand.runtime.decisions import open_decisions
    from beiand.runtime.metrics import Metrics
    from beiand.runtime.register import import_files
    from beiand.runtime.settings import load_config
    from beiand.store import register as reg

    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    write_csv(str(old), GenConfig(filings=40))
    write_csv(str(new), GenConfig(filings=44))
    conf = tmp_path / "beiand.toml"
    conf.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\ngateway = "gw-t"\n'
                    f'[records]\nsource = "store"\nfiles = ["{old}"]\n'
                    f'[accesslog]\ndirectory = "{tmp_path / "log"}"\n')
    cfg = load_config(conf)
    store = open_decisions(cfg)
    import_files(cfg, store, [str(old)])  # version 1: this export, once
    import_files(cfg, store, [str(new)])  # version 2: the next one, from another gateway
    store.close()
    d = sup.Daemon.__new__(sup.Daemon)
    d.metrics, d.refused, d.refused_count, d.register, d._drop = Metrics([], "test"), None, 0, None, {}
    d._import_drop(cfg, at_start=True)
    store = open_decisions(cfg)
    assert reg.head(store) == 2 and reg.in_force(store, "records", 2).rows == 44  # not undone
    store.close()
    os.utime(old, (os.path.getmtime(old) + 5, os.path.getmtime(old) + 5))  # touched while running: imported
    d._import_drop(cfg)
    store = open_decisions(cfg)
    assert reg.head(store) == 3 and reg.in_force(store, "records", 3).rows == 40
    store.close()
