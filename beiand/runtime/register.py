"""The register on a gateway (DESIGN.md, Fleet: "filing records, inventory"): importing exports as
versions, applying the version in force, and judging with a past one.

* :func:`import_files` (``beiand records import``, and the watched files of a gateway whose
  ``records.source = "store"``): validate as a reload does (named bad rows, the reload guard
  against the version in force), then publish the records, the inventory and the NAT feed as
  versions of the register (``store.register``).
* :class:`Applier` (a thread of the supervisor, ``records.source = "store"``): waits for news of a
  version (PostgreSQL ``NOTIFY`` on the register's channel, with a poll besides), fetches each kind
  by content, checks it, writes the gateway's copy under ``<daemon.state_dir>/register/`` and asks
  for a reload, which builds the new state to the side while the workers keep judging with the
  old one. With the store unreachable the copy stays in force and the gateway starts from it.
* :func:`state_at` / :func:`lookup_policy`: the records and inventory in force at a past time
  (``replay --at``, ``records lookup --at``).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from beiand.policy.inventory import Inventory, InventoryError, load_inventory
from beiand.policy.nat import NatError, NatTable, load_nat
from beiand.policy.register import INVENTORY, NAT, inventory_of, nat_of, publish_inventory, publish_nat
from beiand.records import ImportRefused, load_files
from beiand.records.importer import gc_paused
from beiand.records.index import RecordIndex
from beiand.records.versions import KIND as RECORDS
from beiand.records.versions import file_sha256, filings_of, lookup_keys, publish_filings
from beiand.runtime.settings import Config
from beiand.store import DecisionStore, StoreError
from beiand.store import register as reg

log = logging.getLogger("beiand.register")

DIR = "register"
KINDS = (RECORDS, INVENTORY, NAT)


class ImportProblem(StoreError):
    """An import refused (the reload guard, no valid filing, a bad inventory): nothing published."""


@dataclass(frozen=True)
class Imported:
    kind: str
    version: reg.Version
    new: bool  # False: the same content was in force (nothing published)


def import_files(cfg: Config, store: DecisionStore, records: Sequence[str] = (), inventory: str = "", nat: str = "", *,
                 actor: str = "", why: str = "", strict: bool | None = None,
                 republish: bool = True) -> tuple[list[Imported], list[str]]:
    """Validate and publish; (what was published or found in force, the skipped rows named). Every
    file is read and checked before anything is published; the records are guarded against the
    version in force (``records.max_loss``). ``republish=False``: a file whose content the register
    published before (by SHA-256, from any gateway) is not published again, even when a later
    version replaced it (a drop found at start must not undo the fleet's newer version). Raises
    ImportProblem or StoreError."""
    done: list[Imported] = []
    if not republish:
        records, inventory, nat = _unpublished(store, done, records, inventory, nat)
    skipped: list[str] = []
    filings = None
    if records:
        try:
            result = load_files(records, strict=cfg.records.strict if strict is None else strict,
                                status_map=cfg.records.status_map)
        except (ImportRefused, ValueError) as exc:
            raise ImportProblem(f"records refused: {exc}") from None
        if not result.filings:
            raise ImportProblem(f"records refused: no valid filing in {', '.join(records)} ({result.rows} row(s), "
                                f"{len(result.errors)} error(s)): the version in force stays")
        filings = result.filings
        skipped = [str(e) for e in result.errors]
    inv = None
    if inventory:
        try:
            inv = load_inventory(inventory)
        except InventoryError as exc:
            raise ImportProblem("inventory refused: " + "; ".join(exc.problems[:20])) from None
    feed = None
    if nat:
        try:
            feed = load_nat(nat)
        except NatError as exc:
            raise ImportProblem("NAT feed refused: " + "; ".join(exc.problems[:20])) from None
    steps: list[tuple[str, Callable[[], reg.Version]]] = []
    if filings is not None:
        steps.append((RECORDS, lambda: publish_filings(store, filings, sources=records, max_loss=cfg.records.max_loss,
                                                       actor=actor, why=why)))
    if inv is not None:
        steps.append((INVENTORY, lambda: publish_inventory(store, inv, sources=[inventory], actor=actor, why=why)))
    if feed is not None:
        steps.append((NAT, lambda: publish_nat(store, feed, sources=[nat], actor=actor, why=why)))
    for kind, step in steps:
        try:
            done.append(Imported(kind, step(), True))
        except reg.Unchanged as exc:
            done.append(Imported(kind, exc.version, False))
        except ImportRefused as exc:
            raise ImportProblem(f"records refused: {exc} (records.max_loss = {cfg.records.max_loss:g})") from None
    return done, skipped


def _unpublished(store: DecisionStore, done: list[Imported], records: Sequence[str], inventory: str,
                 nat: str) -> tuple[Sequence[str], str, str]:
    """The files among these whose content no version of their kind was published from; for each
    other, the version it was published as goes to ``done`` (not new)."""
    out: list[Any] = []
    for kind, files in ((RECORDS, list(records)), (INVENTORY, [inventory] if inventory else []), (NAT, [nat] if nat else [])):
        if files:
            try:
                sha = file_sha256(files)
            except OSError:  # read (and named) by the import
                sha = ""
            was = next((v for v in reg.versions(store, kind) if sha and v.source_sha256 == sha), None)
            if was is not None:
                log.warning("register: %s: the register published this content as %s version %d already "
                            "(since replaced or in force): not published again", ", ".join(files), kind, was.version)
                done.append(Imported(kind, was, False))
                files = []
        out.append(files)
    return out[0], out[1][0] if out[1] else "", out[2][0] if out[2] else ""


# -- a gateway's copy --------------------------------------------------------------------------


def copy_path(state_dir: Path, kind: str) -> Path:
    return Path(state_dir) / DIR / f"{kind}.snapshot"


@dataclass(frozen=True)
class Applied:
    """The register as this gateway holds it: the version of each kind (None: none published)."""

    version: int  # the register version all of these are in force at
    records: reg.Version | None
    rows: dict[str, list[tuple[str, str]]]

    def index(self) -> RecordIndex:
        v = self.records
        return RecordIndex(filings_of(self.rows.get(RECORDS, ()), f"register v{v.version}" if v else ""),
                           loaded_at=v.at if v else 0.0, sources=[f"register v{v.version}: {v.source}"] if v else [])

    def inventory(self) -> Inventory:
        return inventory_of(self.rows.get(INVENTORY, ()), "register")

    def nat(self) -> NatTable:
        return nat_of(self.rows.get(NAT, ()), "register")


# The copy fetched (``register/<kind>.snapshot``, the follower's) is kept apart from the last one
# applied (``register/applied/``): a version the running gateway refused (the reload guard) is
# refused again after a restart, which starts from the version it judged with. A load reads a
# candidate (``register/candidate/``: hard links to the fetched files, taken under the follower's
# lock, so a fetch meanwhile does not change what is read) and keeps it as the applied copy once
# accepted.
CANDIDATE = "candidate"
APPLIED = "applied"
_COPY_LOCK = threading.Lock()  # the follower's writes against a load's taking of the candidate


def read_copy(state_dir: Path, where: Path | None = None) -> Applied:
    """This gateway's copy (StoreError: none, or damaged): the one fetched, or the one under
    ``where`` (the candidate, the applied copy)."""
    with gc_paused():  # a million rows: no cycle among them
        return _read_copy(state_dir, where if where is not None else Path(state_dir) / DIR)


def _read_copy(state_dir: Path, base: Path) -> Applied:
    rows: dict[str, list[tuple[str, str]]] = {}
    versions: dict[str, reg.Version] = {}
    at = 0
    for kind in KINDS:
        p = base / copy_path(state_dir, kind).name
        if not p.exists():
            continue
        v, r = reg.read_snapshot(p)
        versions[kind], rows[kind] = v, r
        at = max(at, v.version)
    head = base / "version"
    try:
        at = max(at, int(head.read_text().strip() or 0))
    except (OSError, ValueError):
        pass
    if RECORDS not in versions:
        raise StoreError(f"{base / copy_path(state_dir, RECORDS).name}: no copy of the register's records on this gateway yet")
    return Applied(at, versions.get(RECORDS), rows)


def take_candidate(state_dir: Path) -> Path:
    """The fetched copy as it is now, linked under ``register/candidate/`` for a load to read."""
    top = Path(state_dir) / DIR
    cand = top / CANDIDATE
    with _COPY_LOCK:
        cand.mkdir(parents=True, exist_ok=True, mode=0o750)
        for name in [copy_path(state_dir, k).name for k in KINDS] + ["version"]:
            dst = cand / name
            dst.unlink(missing_ok=True)
            src = top / name
            if src.exists():
                try:
                    os.link(src, dst)
                except OSError:  # a file system without hard links: a copy
                    shutil.copy2(src, dst)
    return cand


def applied_copy(state_dir: Path) -> Path:
    return Path(state_dir) / DIR / APPLIED


def accept_candidate(state_dir: Path) -> None:
    """The candidate read is the copy applied now (what the next start guards the fetched one against)."""
    cand, done = Path(state_dir) / DIR / CANDIDATE, applied_copy(state_dir)
    done.mkdir(parents=True, exist_ok=True, mode=0o750)
    for name in [copy_path(state_dir, k).name for k in KINDS] + ["version"]:
        src = cand / name
        if src.exists():
            os.replace(src, done / name)
        else:
            (done / name).unlink(missing_ok=True)


def fetch_all(store: DecisionStore, version: int) -> Applied:
    """Every kind in force at ``version``, fetched by content and checked."""
    rows: dict[str, list[tuple[str, str]]] = {}
    rec = None
    for kind in KINDS:
        v, r = reg.fetch(store, kind, version)
        if v is not None:
            rows[kind] = r
            if kind == RECORDS:
                rec = v
    return Applied(version, rec, rows)


def write_copy(state_dir: Path, store: DecisionStore, version: int, *, verify: bool = False) -> list[str]:
    """Fetch what changed since the copy and keep it; the kinds written. ``verify``: check each
    copy's content, not only its header (a copy found damaged is fetched again)."""
    with _COPY_LOCK, gc_paused():  # a million rows read, changed and written: no cycle among them
        return _write_copy(state_dir, store, version, verify)


def _write_copy(state_dir: Path, store: DecisionStore, version: int, verify: bool) -> list[str]:
    written = []
    for kind in KINDS:
        v = reg.in_force(store, kind, version)
        if v is None:
            continue
        p = copy_path(state_dir, kind)
        held: reg.Version | None = None
        if p.exists():
            try:
                held = reg.read_snapshot(p)[0] if verify else reg.read_header(p)
                if held.version == v.version and held.sha256 == v.sha256:
                    continue
            except StoreError as exc:
                log.error("%s (fetched again)", exc)
                held = None
        if held is not None and held.version < v.version:
            # the change since the copy (a daily export: thousands of rows, not the million)
            try:
                _, rows_held = reg.read_snapshot(p)
                ended, begun = reg.changes_between(store, kind, held.version, v.version)
                rows = reg.apply_changes(rows_held, ended, begun)
            except StoreError as exc:
                log.error("%s (fetched whole)", exc)
            else:
                try:  # kept only when it hashes to the version's content
                    reg.write_snapshot(p, v, rows.items(), check=True)
                    written.append(f"{kind} v{v.version} ({len(ended)} ended, {len(begun)} begun)")
                    continue
                except StoreError:
                    log.error("register %s: the copy at v%d with the change to v%d is not v%d's content: fetched whole",
                              kind, held.version, v.version, v.version)
        # the whole version, checked against its SHA-256 as it is written (a damaged store is never kept)
        reg.write_snapshot(p, v, reg.rows_at(store, kind, v.version), check=True)
        written.append(f"{kind} v{v.version}")
    mark = Path(state_dir) / DIR / "version"
    mark.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    tmp = mark.with_name("version.tmp")
    tmp.write_text(f"{version}\n")
    tmp.replace(mark)
    return written


class Applier:
    """The supervisor's follower of the register (``records.source = "store"``; see the module)."""

    def __init__(self, cfg: Config, opener: Callable[[], DecisionStore], reload: Callable[[str], None],
                 registry: CollectorRegistry | None = None) -> None:
        self.cfg = cfg
        self.state_dir = cfg.daemon.state_dir
        self._open = opener
        self._reload = reload
        self.store: DecisionStore | None = None
        self.fetched = 0  # the register version of this gateway's copy
        self.applied = 0  # the version the workers judge with (set by the supervisor after a reload)
        self.reachable = False
        self.error = ""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        r = registry or CollectorRegistry()
        self.m_applied = Gauge("beiand_register_applied_version", "the register version (records, inventory, NAT feed) "
                               "this gateway judges with", registry=r)
        self.m_head = Gauge("beiand_register_head_version", "the register's last version in the decision store, as last read",
                            registry=r)
        self.m_up = Gauge("beiand_register_store_up", "1 while the register's store answers; 0: the gateway judges with its "
                          "copy (fails static)", registry=r)
        self._verify = False  # the copy is checked whole at the next fetch (found damaged)
        try:
            self.fetched = read_copy(self.state_dir).version
        except StoreError as exc:
            self.fetched = 0
            self._verify = any(copy_path(self.state_dir, k).exists() for k in KINDS)
            if self._verify:
                log.error("%s: fetched again from the store", exc)

    def wake(self) -> None:
        """News of a version (this gateway imported its drop)."""
        self._wake.set()

    def recheck(self) -> None:
        """A load from the copy failed: check the copy whole at the next step, and fetch again
        what is damaged (a copy whose header is intact says nothing changed otherwise)."""
        self._verify = True
        self._wake.set()

    def sync(self) -> bool:
        """Fetch a newer version into the copy; True when the copy changed."""
        if self.store is None:
            self.store = self._open()
            if hasattr(self.store, "channel"):
                self.store.channel = reg.CHANNEL
        head = reg.head(self.store)
        self.m_head.set(head)
        changed = False
        # taken before the fetch: a recheck asked meanwhile (another thread) is kept for the next step
        verify, self._verify = self._verify, False
        if head != self.fetched or verify:
            try:
                written = write_copy(self.state_dir, self.store, head, verify=verify)
            except BaseException:
                self._verify = self._verify or verify
                raise
            # the first version fetched is loaded even when the copy held it already; after that,
            # only a copy that changed (a recheck of a sound copy, or of nothing, asks for no reload)
            changed = bool(written) or (self.fetched == 0 and head != 0)
            if written:
                log.info("register: version %d fetched (%s)", head, ", ".join(written))
            self.fetched = head
        if not self.reachable:
            self.reachable, self.error = True, ""
            self.m_up.set(1)
        return changed

    def step(self, wait: float) -> None:
        try:
            if self.sync():
                self._reload(f"register version {self.fetched}")
        except StoreError as exc:
            self._down(exc)
        except OSError as exc:  # the disk: the copy in force stays, tried again
            log.error("register copy not written under %s: %s", self.state_dir, exc)
        except Exception as exc:  # a bug must not stop following: say it, and judge with the copy meanwhile
            log.exception("register follower")
            self._down(exc)
        store = self.store
        if store is not None and store.dialect == "postgresql":
            try:  # NOTIFY on the register's channel, or the poll interval
                store.wait(wait)
            except StoreError as exc:
                self._down(exc)
                self._wake.wait(wait)
        else:
            self._wake.wait(wait)
        self._wake.clear()

    def _down(self, exc: BaseException) -> None:
        msg = str(exc) or type(exc).__name__
        if self.reachable or msg != self.error:
            log.error("%s: judging with this gateway's copy of the register (version %d)", msg, self.fetched)
        self.reachable, self.error = False, msg
        self.m_up.set(0)
        if self.store is not None:
            self.store.close()
            self.store = None

    def first_sync(self) -> None:
        try:
            self.sync()
        except StoreError as exc:
            self._down(exc)

    def set_applied(self, version: int) -> None:
        self.applied = version
        self.m_applied.set(version)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step(self.cfg.store.poll_interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="beiand-register", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=40)
        if self.store is not None:
            self.store.close()
            self.store = None

    def status(self) -> dict[str, Any]:
        return {"applied": self.applied, "fetched": self.fetched, "reachable": self.reachable, "error": self.error or None,
                "fails_static": not self.reachable}


# -- the past ----------------------------------------------------------------------------------


def state_at(store: DecisionStore, ts: float) -> tuple[Applied, int]:
    """The register in force at ``ts`` (whole: ``replay --at``), and its version (0: none then)."""
    v = reg.version_at(store, ts)
    return fetch_all(store, v), v


def lookup_rows(store: DecisionStore, names: Sequence[str], ips: Sequence[str], ts: float) -> tuple[Applied, int]:
    """Only the filings that can decide ``names`` (and ``ip``) at ``ts``, and the whole inventory
    then (``records lookup --at``: a few rows, not the whole export)."""
    v = reg.version_at(store, ts)
    keys = sorted({k for n in names for k in lookup_keys(n)} | {k for ip in ips if ip for k in lookup_keys("", ip)})
    rows = {RECORDS: reg.rows_named(store, RECORDS, keys, v)}
    rec = reg.in_force(store, RECORDS, v)
    for kind in (INVENTORY, NAT):
        got, r = reg.fetch(store, kind, v)
        if got is not None:
            rows[kind] = r
    return Applied(v, rec, rows), v


def history_owner(cfg: Config, store: DecisionStore) -> str:
    """Why this gateway may not keep its loaded files in ``store``'s register ("": it may). The
    register of ``records.source = "files"`` is one gateway's history: a PostgreSQL store is a
    fleet's (its gateways take the register with ``records.source = "store"``), and a register
    holding another gateway's versions is not written to (histories would interleave, and gateways
    following the register would apply versions no guard saw)."""
    if store.dialect != "sqlite":
        return (f"the decision store is {store.dialect}, a fleet's: a files-mode gateway keeps no history there "
                "(records.source = \"store\" shares one register; docs/fleet.md)")
    others = sorted({v.gateway for v in reg.versions(store)} - {cfg.gateway})
    if others:
        return (f"the register in {store.url} holds versions of {', '.join(others[:3])}: a files-mode gateway keeps its "
                "history in a store of its own (docs/fleet.md)")
    return ""


def record_loaded(cfg: Config, store: DecisionStore, index: RecordIndex, inventory: Inventory, nat: NatTable, *,
                  actor: str = "beiand run") -> int:
    """``records.source = "files"`` with ``records.history``: keep what was just loaded (validated
    and guarded by the load: not guarded again) as versions; the register version what was loaded
    is in force at (the latest of the versions published or found for it; 0: not kept, see
    :func:`history_owner`)."""
    why_not = history_owner(cfg, store)
    if why_not:
        log.warning("register: the loaded records are not kept as history: %s", why_not)
        return 0
    records = [str(p) for p in cfg.records.files]
    steps: list[Callable[[], reg.Version]] = [
        lambda: publish_filings(store, index.filings, sources=records, max_loss=None, actor=actor, why="loaded")]
    if cfg.inventory.file:
        steps.append(lambda: publish_inventory(store, inventory, sources=[str(cfg.inventory.file)], actor=actor, why="loaded"))
    if cfg.inventory.nat_file:
        steps.append(lambda: publish_nat(store, nat, sources=[str(cfg.inventory.nat_file)], actor=actor, why="loaded"))
    version = 0
    for step in steps:
        try:
            version = max(version, step().version)
        except reg.Unchanged as exc:
            version = max(version, exc.version.version)
    return version
