"""The register on a gateway (issue 35): an import is validated and guarded before anything is
published; a gateway with ``records.source = "store"`` fetches the version by content into its
copy, builds its state from it, and keeps judging with the copy while the store is unreachable."""

from __future__ import annotations

from pathlib import Path

import pytest

from beiand.records.generate import GenConfig, write_csv, write_inventory
from beiand.runtime.decisions import open_decisions
from beiand.runtime.register import Applier, ImportProblem, import_files, read_copy, record_loaded
from beiand.runtime.settings import Config, load_config
from beiand.runtime.wiring import RecordsRefused, StateError, load_state
from beiand.store import StoreError
from beiand.store import register as reg


def _config(tmp_path: Path, source: str = "store") -> Path:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    p = tmp_path / "beiand.toml"
    p.write_text(f'[daemon]\nstate_dir = "{state}"\ngateway = "gw-t"\n[records]\nsource = "{source}"\n'
                 f'[accesslog]\ndirectory = "{tmp_path / "log"}"\n')
    return p


def _published(tmp_path: Path, filings: int) -> tuple[Path, Config]:
    """A store-mode gateway's config file and config, with one export of ``filings`` published."""
    conf = _config(tmp_path)
    cfg = load_config(conf)
    write_csv(str(tmp_path / "a.csv"), GenConfig(filings=filings))
    store = open_decisions(cfg)
    import_files(cfg, store, [str(tmp_path / "a.csv")])
    store.close()
    return conf, cfg


def test_import_then_a_gateway_applies_the_version_and_fails_static(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "beiand.register")
    conf = _config(tmp_path)
    cfg = load_config(conf)
    write_csv(str(tmp_path / "a.csv"), GenConfig(filings=300))
    write_inventory(str(tmp_path / "inv.csv"), GenConfig())
    store = open_decisions(cfg)
    done, skipped = import_files(cfg, store, [str(tmp_path / "a.csv")], str(tmp_path / "inv.csv"), actor="alice")
    assert [(d.kind, d.version.version, d.new) for d in done] == [("records", 1, True), ("inventory", 2, True)]
    assert skipped == []
    # a truncated export: refused before anything is written, named
    write_csv(str(tmp_path / "b.csv"), GenConfig(filings=20))
    with pytest.raises(ImportProblem, match=r"max_loss"):
        import_files(cfg, store, [str(tmp_path / "b.csv")])
    assert reg.head(store) == 2
    store.close()

    reloads: list[str] = []
    ap = Applier(cfg, lambda: open_decisions(cfg), reloads.append)
    ap.step(0.0)
    assert ap.fetched == 2 and reloads == ["register version 2"] and ap.reachable
    state = load_state(str(conf))
    assert state.register_version == 2 and len(state.index.filings) == 300
    assert state.inventory.lookup("198.51.100.7") is not None
    ap.step(0.0)
    assert reloads == ["register version 2"]  # nothing new: no reload
    # the next export: the gateway fetches the change, not the whole export
    lines = (tmp_path / "a.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "a2.csv").write_text("".join(lines[:-5]), encoding="utf-8")
    store = open_decisions(cfg)
    done, _ = import_files(cfg, store, [str(tmp_path / "a2.csv")])
    store.close()
    assert done[0].version.version == 3
    ap.step(0.0)
    assert reloads[-1] == "register version 3"
    assert len(read_copy(cfg.daemon.state_dir).index().filings) == done[0].version.rows < 300
    assert "records v3 (" in caplog.text and "ended" in caplog.text  # the change applied to the copy
    reloads.clear()
    reloads.append("register version 2")

    # the store gone: the copy keeps judging, a new start too
    def gone() -> Config:
        raise StoreError("decision store sqlite:/nowhere: unreachable")

    down = Applier(cfg, gone, reloads.append)  # type: ignore[arg-type]
    down.first_sync()
    assert not down.reachable and down.fetched == 3 and down.status()["fails_static"]
    assert load_state(str(conf)).register_version == 3
    # a damaged copy is never used
    copy = cfg.daemon.state_dir / "register" / "records.snapshot"
    copy.write_bytes(copy.read_bytes()[:-20])
    with pytest.raises(StoreError, match="damaged"):
        read_copy(cfg.daemon.state_dir)
    # … and fetched again whole by the next follower
    again = Applier(cfg, lambda: open_decisions(cfg), reloads.append)
    again.step(0.0)
    assert read_copy(cfg.daemon.state_dir).version == 3 and again.fetched == 3


def test_a_version_losing_too_much_is_refused_by_the_gateway_too(tmp_path: Path) -> None:
    conf = _config(tmp_path)
    cfg = load_config(conf)
    write_csv(str(tmp_path / "a.csv"), GenConfig(filings=200))
    store = open_decisions(cfg)
    import_files(cfg, store, [str(tmp_path / "a.csv")])
    ap = Applier(cfg, lambda: open_decisions(cfg), lambda why: None)
    ap.step(0.0)
    first = load_state(str(conf))
    write_csv(str(tmp_path / "b.csv"), GenConfig(filings=20))
    with pytest.raises(ImportProblem):  # refused at the import …
        import_files(cfg, store, [str(tmp_path / "b.csv")])
    # … and, published unguarded (a writer without the guard), refused by the gateway's reload
    from beiand.records import load_files
    from beiand.records.versions import publish_filings

    publish_filings(store, load_files([tmp_path / "b.csv"]).filings, sources=[tmp_path / "b.csv"], max_loss=None)
    ap.step(0.0)
    with pytest.raises(RecordsRefused, match="max_loss"):
        load_state(str(conf), first)
    store.close()


def test_one_gateway_keeps_what_it_loaded_as_versions(tmp_path: Path) -> None:
    conf = tmp_path / "beiand.toml"
    write_csv(str(tmp_path / "a.csv"), GenConfig(filings=100))
    conf.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[records]\nfiles = ["{tmp_path / "a.csv"}"]\n'
                    f'[accesslog]\ndirectory = "{tmp_path / "log"}"\n')
    state = load_state(str(conf))
    assert state.register_version == 0  # files mode: loaded as today
    store = open_decisions(state.config)
    assert record_loaded(state.config, store, state.index, state.inventory, state.nat) == 1
    assert record_loaded(state.config, store, state.index, state.inventory, state.nat) == 1  # unchanged: no new version
    store.close()


@pytest.mark.parametrize("sep", ["\u2028", "\x85"])
def test_a_name_with_a_line_separator_reaches_the_gateway(tmp_path: Path, sep: str) -> None:
    conf = _config(tmp_path)
    cfg = load_config(conf)
    write_csv(str(tmp_path / "a.csv"), GenConfig(filings=50))
    lines = (tmp_path / "a.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    header = lines[0].split(",")
    i = next(k for k, h in enumerate(header) if "主办单位" in h or "sponsor" in h.lower())
    cells = lines[1].split(",")
    cells[i] = cells[i][:2] + sep + cells[i][2:]
    lines[1] = ",".join(cells)
    (tmp_path / "a.csv").write_text("".join(lines), encoding="utf-8")
    store = open_decisions(cfg)
    import_files(cfg, store, [str(tmp_path / "a.csv")])
    store.close()
    Applier(cfg, lambda: open_decisions(cfg), lambda why: None).step(0.0)
    state = load_state(str(conf))
    assert len(state.index.filings) == 50
    assert any(sep in f.sponsor for f in state.index.filings)


def test_a_copy_that_does_not_decode_fails_static_named(tmp_path: Path) -> None:
    """A copy whose SHA-256 matches but whose rows do not decode (a writer's bug): start fails with
    a StateError naming it, a reload keeps the state in service."""
    conf, cfg = _published(tmp_path, 50)
    Applier(cfg, lambda: open_decisions(cfg), lambda why: None).step(0.0)
    first = load_state(str(conf))
    p = cfg.daemon.state_dir / "register" / "records.snapshot"
    v, rows = reg.read_snapshot(p)
    bad = [(k, "{not json") if n == 0 else (k, d) for n, (k, d) in enumerate(rows)]
    reg.write_snapshot(p, v._replace(sha256=reg.content_sha256(bad)), bad)
    with pytest.raises(StateError, match=r"register version 1: .* does not decode"):
        load_state(str(conf))
    with pytest.raises(StateError):
        load_state(str(conf), first)


def _files_gateway(tmp_path: Path, name: str, records: Path, store: Path) -> Path:
    (tmp_path / name).mkdir()
    p = tmp_path / f"{name}.toml"
    p.write_text(f'[daemon]\nstate_dir = "{tmp_path / name}"\ngateway = "{name}"\n[store]\nurl = "sqlite:{store}"\n'
                 f'[records]\nfiles = ["{records}"]\n[accesslog]\ndirectory = "{tmp_path / name / "log"}"\n')
    return p


def test_files_gateways_sharing_a_store_do_not_interleave_their_history(tmp_path: Path) -> None:
    """records.source = "files" with records.history: the register is one gateway's history; a
    second gateway on the same store keeps none (its records would interleave, and store-mode
    gateways would follow them unguarded), and each gets the version it published or found."""
    from beiand.policy.nat import NatMapping, NatTable
    from beiand.policy.register import publish_nat
    from beiand.runtime.register import lookup_rows

    write_csv(str(tmp_path / "x.csv"), GenConfig(filings=100))
    lines = (tmp_path / "x.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "y.csv").write_text("".join(lines[:-10]), encoding="utf-8")
    shared = tmp_path / "shared.sqlite"
    a = load_state(str(_files_gateway(tmp_path, "gw-a", tmp_path / "x.csv", shared)))
    b = load_state(str(_files_gateway(tmp_path, "gw-b", tmp_path / "y.csv", shared)))
    s = open_decisions(a.config)
    assert record_loaded(a.config, s, a.index, a.inventory, a.nat) == 1
    assert record_loaded(b.config, s, b.index, b.inventory, b.nat) == 0  # not kept: gw-a's register
    assert [v.gateway for v in reg.versions(s)] == ["gw-a"]
    held, _ = lookup_rows(s, [], [], 2e9)
    assert held.records is not None and held.records.rows == len(a.index.filings)
    # the version found in force for what gw-a loaded, not the register's head
    publish_nat(s, NatTable([NatMapping("203.0.113.1", 1000, 1999, "10.0.0.5", 2000, "c", 0, 10)]), sources=[])
    assert reg.head(s) == 2
    assert record_loaded(a.config, s, a.index, a.inventory, a.nat) == 1
    s.close()


def test_a_version_refused_by_the_running_gateway_is_refused_after_a_restart_too(tmp_path: Path) -> None:
    """The copy fetched is kept apart from the last one applied: a restart starts from the version
    the gateway judged with, guards the fetched one against it and says it refused it."""
    conf = _config(tmp_path)
    cfg = load_config(conf)
    write_csv(str(tmp_path / "a.csv"), GenConfig(filings=200))
    store = open_decisions(cfg)
    import_files(cfg, store, [str(tmp_path / "a.csv")])
    Applier(cfg, lambda: open_decisions(cfg), lambda why: None).step(0.0)
    first = load_state(str(conf))
    assert first.register_refused is None
    from beiand.records import load_files
    from beiand.records.versions import publish_filings

    write_csv(str(tmp_path / "b.csv"), GenConfig(filings=20))
    publish_filings(store, load_files([tmp_path / "b.csv"]).filings, sources=[tmp_path / "b.csv"], max_loss=None)
    store.close()
    Applier(cfg, lambda: open_decisions(cfg), lambda why: None).step(0.0)
    with pytest.raises(RecordsRefused):
        load_state(str(conf), first)  # the running gateway refuses version 2
    # a restart: the follower first, then the state with nothing in service
    Applier(cfg, lambda: open_decisions(cfg), lambda why: None).first_sync()
    again = load_state(str(conf))
    assert len(again.index.filings) == 200 and again.register_version == 1
    refused = again.register_refused
    assert refused is not None and refused.offered == 20 and refused.in_service == 200 and "register version 2" in str(refused)
    # a version the guard accepts is applied, and becomes the one a restart starts from
    store = open_decisions(cfg)
    import_files(cfg, store, [str(tmp_path / "a.csv")], strict=False)  # the whole export again: version 3
    store.close()
    Applier(cfg, lambda: open_decisions(cfg), lambda why: None).step(0.0)
    third = load_state(str(conf), again)
    assert third.register_version == 3 and third.register_refused is None
    assert load_state(str(conf)).register_version == 3


def test_a_copy_damaged_under_its_header_is_fetched_again_when_a_load_fails(tmp_path: Path) -> None:
    """Review of issue 35: a copy whose header still names the version in force but whose rows were
    damaged on disk was not fetched again until the next version: every reload failed meanwhile.
    A failed load asks the follower to check its copy whole (``recheck``): fetched again, reloaded."""
    conf, cfg = _published(tmp_path, 50)
    reloads: list[str] = []
    ap = Applier(cfg, lambda: open_decisions(cfg), reloads.append)
    ap.step(0.0)
    assert reloads == ["register version 1"]
    p = cfg.daemon.state_dir / "register" / "records.snapshot"
    raw = bytearray(p.read_bytes())
    raw[-10] ^= 0x01  # a bit flipped in the last row; the header is intact
    p.write_bytes(bytes(raw))
    with pytest.raises(StateError, match="damaged"):
        load_state(str(conf))
    ap.step(0.0)
    assert reloads == ["register version 1"]  # the header says nothing changed
    ap.recheck()
    ap.step(0.0)
    assert reloads == ["register version 1", "register version 1"]
    assert load_state(str(conf)).register_version == 1
    ap.recheck()
    ap.step(0.0)
    assert len(reloads) == 2  # a sound copy checked again: nothing fetched, no reload (no loop)
    ap.stop()


def test_a_recheck_with_nothing_published_asks_for_no_reload(tmp_path: Path) -> None:
    """Review of issue 35: with the follower at version 0 (a store with nothing published), every
    recheck asked for a reload; a reload failing for another reason (a bad config) rechecked again:
    recheck, reload, fail, without end. Only a copy that changed asks for a reload."""
    conf = _config(tmp_path)
    cfg = load_config(conf)
    reloads: list[str] = []
    ap = Applier(cfg, lambda: open_decisions(cfg), reloads.append)
    ap.step(0.0)
    for _ in range(3):
        ap.recheck()
        ap.step(0.0)
    assert reloads == [] and ap.fetched == 0
    ap.stop()


def test_a_recheck_asked_during_a_fetch_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of issue 35: a recheck arriving while the follower was inside a fetch was cleared
    when the fetch ended (the damaged copy then stayed until the next version)."""
    from beiand.runtime import register as rt

    _, cfg = _published(tmp_path, 20)
    ap = Applier(cfg, lambda: open_decisions(cfg), lambda why: None)
    real = rt.write_copy
    seen: list[bool] = []

    def during(*a: object, **k: bool) -> list[str]:
        seen.append(bool(k.get("verify")))
        if len(seen) == 1:
            ap.recheck()  # the supervisor's, from another thread, while this fetch runs
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(rt, "write_copy", during)
    ap.step(0.0)
    ap.step(0.0)
    assert seen == [False, True]
    ap.stop()
