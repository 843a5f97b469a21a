"""Following the decision store (DESIGN.md, Fleet): open it, import the files of a beiand before
it, fold its rows, write the snapshot every worker reads, and fail static.

The supervisor's :class:`Follower` (a thread) waits for news (PostgreSQL ``LISTEN/NOTIFY``, with a
poll besides; SQLite: a poll every 0.1 s), folds the new rows into closure orders, exemptions and
the regulator's commands (``policy.orders``, ``isms.store``) and writes each changed one as its
snapshot file in ``daemon.state_dir`` (``orders.json``, ``exemptions.json``, ``isms/commands.json``,
each with the store version it holds). Every worker re-reads a changed snapshot within 0.25 s
(``Layer.reload``), so an order reaches every flow within a second of its commit. With the store
unreachable the snapshot stays in force (a gateway started then starts from it): ``/readyz``,
``/api/v1/status``, ``beiand_decision_store_up`` and the alert ``BeiandDecisionStoreUnreachable``
say so, and the follower catches up when the store is back. Each gateway writes a heartbeat with
the version its workers apply (``beiand fleet status``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from beiand import __version__
from beiand.isms.store import CommandStore
from beiand.isms.wire.profile import ProfileError, load_profile
from beiand.policy.authority import KIND as AUTHORITY_KIND
from beiand.policy.authority import AuthorityBook, AuthorityLists
from beiand.policy.cases import KIND as CASE_KIND
from beiand.policy.cases import CaseError, CaseSnapshot
from beiand.policy.orders import ExemptionStore, OrderError, OrderStore, legacy_entries, parse_file
from beiand.policy.source import version
from beiand.records.importer import gc_paused
from beiand.runtime.settings import Config
from beiand.store import DecisionStore, Entry, StoreError, StoreSettings, open_store
from beiand.store.connect import is_postgres

log = logging.getLogger("beiand.decisions")


def store_settings(cfg: Config) -> StoreSettings:
    """``[store]`` with the password read (a secret file is checked again as it is read)."""
    from beiand.runtime.wiring import StateError, read_secret

    s = cfg.store
    password = ""
    if s.password_file is not None and is_postgres(s.url):
        try:
            password = read_secret(s.password_file, cfg.daemon.secret_permissions).decode().strip()
        except (OSError, StateError) as exc:
            raise StoreError(f"store.password_file: {exc}") from None
    return StoreSettings(s.url, password, s.sslmode, s.ca_file, s.cert_file, s.key_file, s.connect_timeout)


def open_decisions(cfg: Config, *, migrate: bool = True, import_files: bool = True, create: bool = True) -> DecisionStore:
    """The configured store, its schema brought up to date when that is safe (``migrate``), and the
    files of a beiand before the store imported once (``import_files``). StoreError says why not."""
    store = open_store(store_settings(cfg), cfg.daemon.state_dir, cfg.gateway, create=create)
    try:
        if migrate:
            for m in store.migrate(auto=True):
                log.info("decision store %s: schema migrated to version %d (%s)", store.url, m.version, m.what)
        else:
            store.check_schema()
        if import_files:
            import_legacy(store, cfg.daemon.state_dir, subdomains(cfg), cfg.isms.house_id)
    except BaseException:
        store.close()
        raise
    return store


def subdomains(cfg: Config) -> bool:
    if not cfg.isms.enabled:
        return True
    try:
        return load_profile(cfg.isms.profile).subdomains
    except ProfileError:
        return True


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _merge(rows: list[Entry], in_force: set[tuple[str, str]], seen: set[tuple[str, str, str, float]]) -> tuple[list[Entry], list[str]]:
    """The rows of an older beiand's file that the store does not hold. Such a file never changes
    what is in force in the store (another gateway's import, or the fleet's orders since, come
    first): a history pair (set, end) on a key in force in the store is left out (folded, it would
    replace the store's rule and lift it), and so is a rule in force in the file whose key is in
    force in the store (the store's is kept; named in the second list)."""
    out: list[Entry] = []
    kept: list[str] = []
    i = 0
    while i < len(rows):
        e = rows[i]
        pair = i + 1 < len(rows) and rows[i + 1].op == "end" and rows[i + 1].key == e.key and rows[i + 1].kind == e.kind
        ident = (e.kind, e.key, str(e.data.get("order", e.data.get("command_id", ""))), e.at)
        if (e.kind, e.key) in in_force:
            if not pair and e.op == "set":
                kept.append(f"{e.kind} {e.key}")
        elif ident not in seen:
            out += rows[i:i + 2] if pair else [e]
        i += 2 if pair else 1
    return out, kept


def import_legacy(store: DecisionStore, state_dir: Path, subdomains: bool = True, house_id: str = "") -> list[str]:
    """Import ``orders.json``, ``exemptions.json`` and ``isms/commands.json`` written by a beiand
    before the decision store (no ``snapshot`` key), or snapshots of another store (``store.url``
    changed: a gateway moving from its SQLite file to the fleet's PostgreSQL keeps its orders),
    once per file content (the store's ``beiand_imports``, whichever gateway imported it); what
    is in force in the store is never changed by it (``_merge``). Logged."""
    done = []
    for cls in (OrderStore, ExemptionStore):
        path = Path(state_dir) / cls.FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            continue
        try:
            orders, history, snap = parse_file(raw, path)
        except OrderError as exc:
            log.error("%s: not imported into the decision store: %s", path, exc)
            continue
        if snap and snap.get("store") in (store.url, None):
            continue  # a snapshot of this store (a snapshot of another one: store.url changed, imported once)
        digest = hashlib.sha256(raw).hexdigest()
        with store.transaction() as tx:
            if tx.imported(str(path), digest):
                continue
            held = cls(None, load=False)
            held.apply(tx.changes(0, (cls.KIND,)))
            seen = {(cls.KIND, h.order.target, h.order.order, h.order.created) for h in held.history}
            entries, kept = _merge(legacy_entries(cls.KIND, orders, history), {(cls.KIND, k) for k in held.orders}, seen)
            tx.append(entries)
            tx.note_import(str(path), digest, len(entries))
        msg = (f"{path}: imported into the decision store {store.url}: {len(orders)} {cls.WHAT}(s) in force, "
               f"{len(history)} lifted ({len(entries)} row(s) written; what the store held already skipped"
               + (f"; the store's own kept for {', '.join(kept[:10])}" if kept else "") + ")")
        log.warning("%s", msg)
        done.append(msg)
    cpath = Path(state_dir) / "isms" / CommandStore.FILE
    if cpath.exists():
        cs = CommandStore(state_dir, subdomains, house_id, load=False)
        try:
            cs.reload()
        except ValueError as exc:
            log.error("%s: not imported into the decision store: %s", cpath, exc)
            return done
        if cs.legacy or cs.snapshot_store not in (store.url, None):
            digest = _sha256(cpath)
            with store.transaction() as tx:
                if not tx.imported(str(cpath), digest):
                    held_c = CommandStore(state_dir, subdomains, house_id, load=False)
                    held_c.apply(tx.changes(0))
                    st = held_c.state
                    in_force = ({("isms-command", str(k)) for k in st.commands} | {("isms-list", k) for k in st.lists}
                                | {("isms-house", k) for k in st.houses} | {("isms-codes", k) for k in st.code_lists}
                                | ({("isms-setting", "active_period_s")} if st.active_period_s else set())
                                | ({("isms-setting", "dt2")} if st.dt2 is not None else set())
                                | {("isms-sequence", str(q)) for q in st.sequences})
                    entries, kept = _merge(cs.legacy_entries(), in_force, set())
                    tx.append(entries)
                    tx.note_import(str(cpath), digest, len(entries))
                    msg = (f"{cpath}: imported into the decision store {store.url}: {len(cs.state.commands)} command(s), "
                           f"{len(cs.state.lists)} list entr(ies) in force, {len(cs.state.history)} ended "
                           f"({len(entries)} row(s) written; what the store held already skipped)")
                    log.warning("%s", msg)
                    done.append(msg)
    return done


class Folded:
    """Closure orders, exemptions, sponsor cases, the authority's lists and the regulator's commands
    folded from one store's rows."""

    def __init__(self, state_dir: Path | None, subdomains: bool = True, house_id: str = "") -> None:
        self.orders = OrderStore(state_dir, load=False)
        self.exemptions = ExemptionStore(state_dir, load=False)
        self.cases = CaseSnapshot(state_dir, load=False)
        self.authority = AuthorityBook(state_dir, load=False)
        self.commands = CommandStore(state_dir or Path("/nonexistent"), subdomains, house_id, load=False)

    @property
    def parts(self) -> tuple[OrderStore, ExemptionStore, CaseSnapshot, AuthorityBook, CommandStore]:
        return self.orders, self.exemptions, self.cases, self.authority, self.commands

    def named(self) -> list[tuple[str, OrderStore | CaseSnapshot | CommandStore]]:
        """Each part with the name of its snapshot (and overlay)."""
        return [("order", self.orders), ("exemption", self.exemptions), ("case", self.cases), ("authority", self.authority),
                ("isms", self.commands)]

    @property
    def version(self) -> int:
        return min(p.version for p in self.parts)

    def apply(self, changes: Sequence[Any]) -> list[str]:
        """Fold ``changes``; the names of the parts whose rules changed."""
        changed = [name for name, part in self.named() if part.apply(changes)]
        for p in self.parts:  # rows of none of them still move every part's version on
            if changes and p.version < changes[-1].version:
                p.version = changes[-1].version
        return changed


def fold_store(cfg: Config, store: DecisionStore) -> Folded:
    """Everything the store holds, folded (replay, lookups and the CLI read this)."""
    f = Folded(None, subdomains(cfg), cfg.isms.house_id)
    f.apply(store.changes(0))
    return f


class Follower:
    """The supervisor's follower of the decision store (see the module)."""

    def __init__(self, cfg: Config, registry: CollectorRegistry | None = None, *,
                 opener: Callable[[], DecisionStore] | None = None) -> None:
        self.cfg = cfg
        self.state_dir = cfg.daemon.state_dir
        self.url = _shown(cfg)
        self._open = opener or (lambda: open_decisions(cfg))
        self.store: DecisionStore | None = None
        self.folded = Folded(self.state_dir, subdomains(cfg), cfg.isms.house_id)
        self.written: dict[str, int] = {}  # snapshot → the version it was last written at
        self.reachable = False
        self.error = ""
        self.down_since = 0.0
        self.last_contact = 0.0
        self.head = 0
        self.applied_at = 0.0
        self.worker_versions: Callable[[], dict[str, float]] = dict  # overlay → the lowest version a worker holds
        # What the licence's CU (beiand isms serve) reads from the heartbeat: the houses (机房) this
        # gateway serves and whether it captures (DT 7), and the version it applies (the acks).
        self.houses: Callable[[], list[str]] = list
        self.healthy: Callable[[], bool] = lambda: True
        self.extra_state: Callable[[], dict[str, Any]] = dict  # more for the heartbeat (the register version applied)
        self._beat: tuple[int, bool, str] = (-1, False, "")  # the applied version and health the last heartbeat carried
        self.stopped = False  # the last heartbeat says so: the CU counts the gateway down at once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_heartbeat = 0.0
        self._stale: set[str] = set()  # snapshots to write even without a change (legacy, damaged, first contact)
        self.write_error = ""  # why the last snapshot write failed ("" when it did not)
        r = registry or CollectorRegistry()
        self.m_up = Gauge("beiand_decision_store_up", "1 while the decision store answers; 0: the gateway enforces its last "
                          "snapshot (fails static)", registry=r)
        self.m_version = Gauge("beiand_decision_store_version", "the store version folded into this gateway's snapshot",
                               registry=r)
        self.m_head = Gauge("beiand_decision_store_head", "the store's last version, as last read", registry=r)
        self.m_applied = Gauge("beiand_decision_store_applied_version", "the version every worker of this gateway applies",
                               registry=r)
        self.m_contact = Gauge("beiand_decision_store_last_contact_timestamp_seconds", "when the store last answered",
                               registry=r)
        self.m_refused = Counter("beiand_decision_store_rows_refused", "rows of the store refused as invalid (the state "
                                 "before each kept)", registry=r)
        self.m_errors = Counter("beiand_decision_store_errors", "failed contacts with the decision store", registry=r)
        self.m_conflicts = Gauge("beiand_authority_conflicts", "entries of the authority's lists of unfiled sites that the "
                                 "records file (a conflict, never blocked): for a person to settle", registry=r)
        self.lists = AuthorityLists()  # the authority's lists, folded for the conflicts (not a snapshot: no worker needs them)
        self._lists_folded = False
        self._refused_seen = 0
        self._load_snapshot()

    # -- the snapshot --------------------------------------------------------------------------

    def _load_snapshot(self) -> None:
        """Start from the snapshot in the state directory: what the workers enforce until the store
        answers. A damaged or pre-store file is folded again from the store (version 0)."""
        ok = True
        for name, part in self.folded.named():
            try:
                part.reload()
            except (OrderError, CaseError, ValueError) as exc:
                log.error("decision snapshot: %s (the store's state replaces it once the store answers)", exc)
                ok = False
                self._stale.add(name)
                continue
            if part.version < 0 or getattr(part, "legacy", False):
                ok = False
                self._stale.add(name)
            elif part.path is None or not part.path.exists():
                self._stale.add(name)  # none yet: written at the first contact
            self.written[name] = max(part.version, 0)
        if not ok:
            self._refold()
        self.m_version.set(self.folded.version)

    def _refold(self) -> None:
        """Fold everything again from the store, and write every snapshot."""
        self.folded = Folded(self.state_dir, subdomains(self.cfg), self.cfg.isms.house_id)
        self._stale = {"order", "exemption", "case", "authority", "isms"}
        self.written = {}
        self.lists, self._lists_folded = AuthorityLists(), False

    def _write(self, names: Sequence[str]) -> None:
        parts = dict(self.folded.named())  # the isms part is written with [isms] off too: its version is the gateway's
        for name in names:
            parts[name].snapshot(self.url)
            self.written[name] = parts[name].version

    # -- one round ----------------------------------------------------------------------------

    def sync(self) -> list[str]:
        """Read what changed since the snapshot, fold it, write the snapshots that changed."""
        if self.store is None:
            self.store = self._open()
            self._check_origin()
        # started from the snapshot: the cases are folded from the store once
        if not self.folded.cases.complete and self.folded.cases.fold_all(self.store.changes(0, (CASE_KIND,))):
            self._stale.add("case")
        changes = self.store.changes(self.folded.version)
        self.last_contact = time.time()
        with gc_paused():  # a fold re-indexes every order: no collection of the whole heap meanwhile
            changed = self.folded.apply(changes) if changes else []
        if not self._lists_folded or any(c.kind == AUTHORITY_KIND for c in changes):
            self.lists.apply(self.store.changes(self.lists.version, (AUTHORITY_KIND,)))
            self._lists_folded = True
            self.m_conflicts.set(self.lists.conflicts())
        self._stale |= set(changed)
        for name, part in self.folded.named():  # a snapshot removed or edited by hand: written again
            if part.path is not None and version(part.path) != part.seen and name in self.written:
                self._stale.add(name)
        write = sorted(self._stale)
        if write:
            try:
                with gc_paused():
                    self._write(write)
            except OSError as exc:  # the disk, not the store: tried again at the next round
                if not self.write_error:
                    log.error("decision snapshot not written (%s): the workers keep version %d until it is", exc,
                              min(self.written.values(), default=0))
                self.write_error = str(exc)
                write = []
            else:
                self._stale = set()
                self.write_error = ""
                self.applied_at = time.time()
                log.info("decision store %s: version %d applied (%s)", self.url, self.folded.version, ", ".join(write))
        self.head = self.folded.version
        refused = sum(p.refused_total for p in self.folded.parts)
        if refused > self._refused_seen:
            self.m_refused.inc(refused - self._refused_seen)
            self._refused_seen = refused
        self.m_version.set(self.folded.version)
        self.m_head.set(self.head)
        self.m_contact.set(self.last_contact)
        return write

    def _check_origin(self) -> None:
        """A snapshot written from another store (``store.url`` changed) or from a later version
        of this one (a store restored from a backup) is not this store's state: fold it all again
        (else the rows numbered up to the snapshot's version would be skipped)."""
        assert self.store is not None
        head = self.store.head()
        other = {p.snapshot_store for _, p in self.folded.named() if p.snapshot_store is not None} - {self.url}
        if other or self.folded.version > head:
            why = (f"written from {', '.join(sorted(other))}" if other else
                   f"at version {self.folded.version}, the store's last is {head} (restored from a backup?)")
            log.warning("decision snapshot %s: folding everything again from %s", why, self.url)
            self._refold()

    def applied(self) -> int:
        """The version every worker applies: the snapshot's, once each worker has read every
        snapshot file as last written; else the lowest a worker holds."""
        held = self.worker_versions()
        if not held:
            return self.folded.version
        low = self.folded.version
        for name, written in list(self.written.items()):
            if name in held and held[name] < written:
                low = min(low, int(held[name]))
        return max(low, 0)

    def _up(self) -> None:
        if not self.reachable:
            if self.down_since:
                log.warning("decision store %s: reachable again after %.0f s; caught up to version %d", self.url,
                            time.time() - self.down_since, self.folded.version)
            self.reachable, self.error, self.down_since = True, "", 0.0
        self.m_up.set(1)

    def _down(self, exc: BaseException) -> None:
        msg = str(exc) or type(exc).__name__
        if self.reachable or not self.down_since or msg != self.error:
            log.error("%s: enforcing the last snapshot (version %d) until the store answers", msg, self.folded.version)
        if not self.down_since:
            self.down_since = time.time()
        self.reachable, self.error = False, msg
        self.m_up.set(0)
        self.m_errors.inc()
        if self.store is not None:
            self.store.close()
            self.store = None

    def heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.store is None:
            return
        v = self.applied()
        self.m_applied.set(v)
        healthy = bool(self.healthy())
        extra = self.extra_state()
        if not force and now < self._next_heartbeat and (v, healthy, repr(extra)) == self._beat:
            return  # a change goes out at once: the CU acks a command when every gateway in scope applies it
        self._next_heartbeat = now + self.cfg.store.heartbeat_interval
        self.store.heartbeat(v, self.applied_at, os.uname().nodename, __version__,
                             {"folded": self.folded.version, "workers": self.worker_versions(), "pid": os.getpid(),
                              "houses": sorted(set(self.houses())), "healthy": healthy,
                              "isms": self.cfg.isms.enabled, "refused": self.folded.commands.refused_versions[-100:],
                              "heartbeat_interval": self.cfg.store.heartbeat_interval, "stopped": self.stopped,
                              **extra})
        self._beat = (v, healthy, repr(extra))

    def step(self, wait: float) -> None:
        """One round: sync, heartbeat, then wait for news (``wait`` s at most)."""
        try:
            self.sync()
            self._up()
            self.heartbeat()
            assert self.store is not None
            if self.store.wait(wait):
                return
        except StoreError as exc:
            self._down(exc)
            self._stop.wait(min(5.0, max(1.0, wait)))
        except Exception as exc:  # a bug must not stop following: say it, count it, try again
            log.exception("decision store follower")
            self._down(exc)
            self._stop.wait(5.0)

    def first_sync(self) -> None:
        """Before the workers start: the store's state, or (unreachable) the snapshot as it is."""
        try:
            self.sync()
            self._up()
            self.heartbeat(force=True)
        except StoreError as exc:
            self._down(exc)
        except OrderError as exc:
            self._down(exc)

    def _run(self) -> None:
        wait = self.cfg.store.poll_interval
        while not self._stop.is_set():
            self.step(wait)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="beiand-decisions", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=40)  # longer than SQLite's busy timeout (30 s)
            if self._thread.is_alive():
                return  # still inside a call on the store: it is the thread's to close
        if self.store is not None:
            self.stopped = True
            with contextlib.suppress(StoreError):
                self.heartbeat(force=True)
            self.store.close()
            self.store = None

    def status(self) -> dict[str, Any]:
        """``/readyz`` details and ``/api/v1/status``: where the decisions come from and whether
        this gateway follows them now or enforces its last snapshot."""
        applied = self.applied()
        return {"store": self.url, "reachable": self.reachable, "error": self.error or None,
                "down_since": self.down_since or None, "last_contact": self.last_contact or None,
                "version": self.folded.version, "applied": applied, "applied_at": self.applied_at or None,
                "fails_static": not self.reachable, "snapshot_error": self.write_error or None,
                "orders": len(self.folded.orders.orders), "exemptions": len(self.folded.exemptions.orders),
                "authority_entries": len(self.folded.authority.orders), "authority_conflicts": self.lists.conflicts(),
                "commands": len(self.folded.commands.state.commands) + len(self.folded.commands.state.lists),
                "refused_rows": (self.folded.orders.refused + self.folded.exemptions.refused + self.folded.authority.refused
                                 + self.folded.commands.refused_rows)[-10:]}


def _shown(cfg: Config) -> str:
    from beiand.store.connect import redact, sqlite_path

    u = cfg.store.url
    return redact(u) if is_postgres(u) else f"sqlite:{sqlite_path(u, cfg.daemon.state_dir)}"


def fleet_rows(cfg: Config) -> tuple[str, int, list[dict[str, Any]]]:
    """(the store as shown to people, its last version, every gateway's heartbeat), read without
    creating or migrating anything (``fleet status``, ``isms status``); StoreError when it does not answer."""
    store = open_decisions(cfg, migrate=False, import_files=False, create=False)
    try:
        return store.url, store.head(), store.gateways()
    finally:
        store.close()


def lag(gateways: list[dict[str, Any]], head: int, now: float | None = None) -> list[dict[str, Any]]:
    """``fleet status``: each gateway with how far behind the store it is (versions, seconds since
    its heartbeat)."""
    t = time.time() if now is None else now
    return [{**g, "behind": max(0, head - g["version"]), "heartbeat_age_s": round(max(0.0, t - g["heartbeat_at"]), 1)}
            for g in gateways]

