"""The regulator's commands in force: persisted in the state directory, applied by every worker.

The main process (the ``idc_command`` endpoint, ``beiand isms``) writes ``<state_dir>/isms/
commands.json`` atomically; each worker's :class:`CommandRules` re-reads it when it changes
(``policy.source``; the decider calls ``reload`` four times a second), so a command applies within a
second on every worker and survives restarts, exactly like closure orders (policy/orders.py).

Rules combine as ISMS.md §6 says: AND across subtypes, OR within one. A command holding a rule
beiand cannot carry out (keyword, attachment content) is refused whole (a partial rule over-
blocks) with ack resultCode 2, never stored and never silently dropped.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from beiand.isms.wire.codes import RULE_NAMES, AckResult, RuleSubtype, SecurityType
from beiand.isms.wire.model import ActivePeriod, BasicData, CodeList, ListEntry, Rule, SecurityCommand
from beiand.model import AddressRule, Observation, Overlay, Transport
from beiand.policy.matcher import Compiled, Intervals, Matcher, RuleError, ip_int, ip_range, port_range
from beiand.policy.overlays import Hit, hit
from beiand.policy.source import Version, changed, version
from beiand.records.domains import DomainError, normalise_domain
from beiand.records.importer import gc_paused
from beiand.store import Change, DecisionStore, Entry

__all__ = ["AddressCuts", "CommandRules", "CommandStore", "Compiled", "Matcher", "Outcome", "RuleError", "address_rules",
           "compile_command", "house_scope", "inventory_houses", "reach", "unsupported"]
log = logging.getLogger(__name__)
MAX_SEEN = 100_000  # commandSequence values kept for duplicate detection
SUPPORTED = frozenset({RuleSubtype.DOMAIN, RuleSubtype.URL, RuleSubtype.SRC_IP, RuleSubtype.DST_IP, RuleSubtype.SRC_PORT,
                       RuleSubtype.DST_PORT, RuleSubtype.PROTOCOL})
_WHY = {RuleSubtype.KEYWORD: "no content inspection"}


@dataclass(frozen=True)
class Outcome:
    """What applying one item did: the ack's resultCode (0 all, 1 some, 2 none) and msgInfo."""

    result: AckResult
    msg: str
    reason: str = ""  # metric label for a refusal: unsupported-subtype, bad-value, unknown-command


def unsupported(c: SecurityCommand) -> str:
    """ISMS.md §6's msgInfo for the first rule beiand cannot carry out, or ""."""
    for r in c.rules:
        if r.subtype not in SUPPORTED:
            why = _WHY.get(RuleSubtype(r.subtype)) if r.subtype in RuleSubtype._value2member_map_ else None
            return f"unsupported: subtype {r.subtype} {RULE_NAMES.get(r.subtype, '未知')} ({why or 'unknown rule type'})"
    return ""


_PROTO = {1: Transport.TCP, 2: Transport.UDP}


def house_scope(c: SecurityCommand, houses: dict[str, list[list[Any]]], own: str) -> list[tuple[int, int, int]] | None:
    """The server-address ranges a command's ``range/houseId*`` limits it to: [] every flow (no
    houseId, or this gateway's own house without basic data), the segments of the listed houses
    the basic data (type 0) knows, or None when it names no house this beiand serves."""
    if not c.house_ids or (own and own in c.house_ids and own not in houses):
        return []
    out = []
    for h in c.house_ids:
        for a, b, _reserved in houses.get(h, ()):
            with contextlib.suppress(RuleError):
                out.append(ip_range(a, b))
    if out:
        return out
    return [] if not own and not houses else None


def inventory_houses(prefixes: Iterable[Any]) -> dict[str, list[list[Any]]]:
    """houseId → the segments of the inventory's prefixes that name it (its house column), closed
    prefixes left out: what a command for that house covers where the basic data is silent."""
    out: dict[str, list[list[Any]]] = {}
    for p in prefixes:
        if p.house and str(getattr(p.state, "value", p.state)) != "closed":
            net = ipaddress.ip_network(p.prefix)
            out.setdefault(p.house, []).append([str(net.network_address), str(net.broadcast_address), False])
    return out


def compile_command(c: SecurityCommand, subdomains: bool = True, houses: list[tuple[int, int, int]] | None = None,
                    start: float = -math.inf, end: float = math.inf) -> Compiled:
    """A command's rules, compiled, in force from ``start`` (when it was applied) to ``end`` (when it
    was deleted or replaced) within its own effectTime..expiredTime."""
    by = Overlay.ISMS_FILTER if c.type == SecurityType.FILTER else Overlay.ISMS_MONITOR
    out = Compiled(hit(by, str(c.command_id)), start=max(start, c.effect_time or -math.inf),
                   end=min(end, c.expired_time or math.inf))
    for r in c.rules:
        v, e = r.value_start.strip(), r.value_end.strip()
        if r.subtype == RuleSubtype.DOMAIN:
            try:
                out.domains.append(normalise_domain(v.removeprefix("*.")))
            except DomainError as exc:
                raise RuleError(f"domain {v[:80]!r}: {exc.reason}") from None
        elif r.subtype == RuleSubtype.URL:
            u = v.split("://", 1)[-1]
            host, _, path = u.partition("/")
            try:
                out.urls.append((normalise_domain(host.split(":")[0]), "/" + path))
            except DomainError as exc:
                raise RuleError(f"URL {v[:80]!r}: {exc.reason}") from None
        elif r.subtype in (RuleSubtype.SRC_IP, RuleSubtype.DST_IP):
            (out.src if r.subtype == RuleSubtype.SRC_IP else out.dst).append(ip_range(v, e))
        elif r.subtype in (RuleSubtype.SRC_PORT, RuleSubtype.DST_PORT):
            (out.sports if r.subtype == RuleSubtype.SRC_PORT else out.dports).append(port_range(v, e))
        elif r.subtype == RuleSubtype.PROTOCOL:
            try:
                out.protos.add(_PROTO[int(v)])
            except (ValueError, KeyError):
                raise RuleError(f"protocol {v!r}: expected 1 (TCP) or 2 (UDP)") from None
        else:
            raise RuleError(unsupported(c))
    if not subdomains:
        out.domains = ["=" + d for d in out.domains]
    out.houses = list(houses or ())
    return out


_NFT_PROTO = {1: "tcp", 2: "udp"}
_NFT_SUBTYPES = frozenset({RuleSubtype.DST_IP, RuleSubtype.DST_PORT, RuleSubtype.PROTOCOL})


def _net(lo: str, hi: str) -> str:
    """An address, a CIDR prefix or a range ``lo-hi``, as nftables takes it."""
    lo, hi = lo.strip(), hi.strip()
    if not hi or hi == lo:
        return str(ipaddress.ip_network(lo, strict=False)) if "/" in lo else lo
    return f"{lo}-{hi}"


def address_rules(c: SecurityCommand) -> list[AddressRule] | None:
    """The nftables form of a filter command that names no domain or URL: a destination address
    (range, prefix) with, optionally, destination ports and a protocol, or a source address
    alone; cut on every port, in every mode. None when the command has no such form (a domain or
    URL rule acts on named flows; source ports, or a source address with more, only on the
    watched ports)."""
    if c.type != SecurityType.FILTER or c.house_ids:
        return None  # a command for some houses only: nftables would cut it in every house (acked partial)
    kinds = {r.subtype for r in c.rules}
    ref = f"isms:{c.command_id}"
    until = c.expired_time or 0.0
    if kinds == {RuleSubtype.SRC_IP}:
        return [AddressRule(_net(r.value_start, r.value_end), until=until, ref=ref, src=True) for r in c.rules]
    if RuleSubtype.DST_IP not in kinds or not kinds <= _NFT_SUBTYPES:
        return None
    nets = [_net(r.value_start, r.value_end) for r in c.rules if r.subtype == RuleSubtype.DST_IP]
    ports: list[tuple[int, int] | None] = [port_range(r.value_start, r.value_end) for r in c.rules
                                           if r.subtype == RuleSubtype.DST_PORT] or [None]
    protos = sorted({_NFT_PROTO[int(r.value_start)] for r in c.rules if r.subtype == RuleSubtype.PROTOCOL}) or [""]
    return [AddressRule(n, pr, po, until, ref) for n in nets for pr in protos for po in ports]


def _uncapped(rules: list[AddressRule]) -> str:
    return ""


@dataclass(frozen=True)
class AddressCuts:
    """Whether beiand can cut a command's addresses in nftables, for its ack: the daemon sets the
    store's once its enforcement is set up (runtime.housekeeping), from whether nftables came up."""

    unavailable: str = ""  # why nftables cannot cut at all ("": it can)
    over_cap: Callable[[list[AddressRule]], str] = _uncapped  # why these rules alone would not all be written ("": they would)

    def problem(self, rules: list[AddressRule]) -> str:
        if self.unavailable:
            return f"nftables unavailable ({self.unavailable})"
        return self.over_cap(rules)


_CUTS = AddressCuts()


def reach(c: SecurityCommand, cuts: AddressCuts = _CUTS) -> tuple[AckResult, str]:
    """What beiand carries out of a (supported) command, for its ack (ISMS.md §6: 0 all, 1 some)."""
    kinds = {r.subtype for r in c.rules}
    what = "filter" if c.type == SecurityType.FILTER else "monitor"
    if kinds & {RuleSubtype.DOMAIN, RuleSubtype.URL}:
        note = "; URL rules match HTTP/1.x request lines only (TLS and QUIC hide the path)" if RuleSubtype.URL in kinds else ""
        return AckResult.ALL, f"{what} in force{note}"
    names = ", ".join(f"{k} {RULE_NAMES.get(k, '')}".strip() for k in sorted(kinds))
    watched = f"partial: {what} on {names} acts only on the flows whose name beiand reads (the watched ports), not on every port"
    rules = address_rules(c)
    if rules is None:
        return AckResult.SOME, watched
    why = cuts.problem(rules)
    if why:
        return AckResult.SOME, f"{watched}: not cut in nftables: {why}"
    return AckResult.ALL, f"{what} in force: cut in nftables on every port"


# -- the persisted state ---------------------------------------------------------------------


def _cmd_to_json(c: SecurityCommand) -> dict[str, Any]:
    # by hand, not dataclasses.asdict (a deep copy: seconds for a 50,000-rule command)
    return {"command_id": c.command_id, "type": c.type, "operation": c.operation,
            "rules": [[r.subtype, r.value_start, r.value_end, list(r.keyword_range)] for r in c.rules],
            "block": c.block, "log": c.log, "report": c.report, "reason": c.reason, "effect_time": c.effect_time,
            "expired_time": c.expired_time, "house_ids": list(c.house_ids), "owner": c.owner, "time_stamp": c.time_stamp}


def _cmd_from_json(d: dict[str, Any]) -> SecurityCommand:
    d = dict(d)
    d["rules"] = tuple(Rule(r[0], r[1], r[2], tuple(r[3])) for r in d["rules"])
    d["house_ids"] = tuple(d.get("house_ids", ()))
    return SecurityCommand(**d)


@dataclass
class State:
    commands: dict[int, SecurityCommand] = field(default_factory=dict)
    lists: dict[str, ListEntry] = field(default_factory=dict)  # "<kind>:<commandId>"
    code_lists: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    active_period_s: int = 0
    sequences: list[int] = field(default_factory=list)  # commandSequence values seen (idempotency)
    refused: list[dict[str, Any]] = field(default_factory=list)  # the last refusals, for `beiand isms commands`
    history: list[dict[str, Any]] = field(default_factory=list)  # deleted or replaced commands
    # type 0 idcInfoManage (CU-lite): houseId → [[start, end, reserved], ...]; DT 2 switch (None: the profile's)
    houses: dict[str, list[list[Any]]] = field(default_factory=dict)
    dt2: bool | None = None
    # when each command ("<commandId>") and list entry ("<kind>:<commandId>") in force was applied:
    # replay judges a capture against the commands in force at each packet's time (issue 26)
    applied: dict[str, float] = field(default_factory=dict)


ISMS_KINDS = ("isms-command", "isms-list", "isms-house", "isms-codes", "isms-setting", "isms-sequence", "isms-refused")
ACTOR = "isms"  # who wrote a command's row: the regulator, through the ISMS endpoint


class CommandStore:
    """The regulator's commands: folded from the decision store's ``isms-*`` rows (:meth:`apply`),
    written there by the ISMS endpoint (:meth:`writing`), and kept as the snapshot
    ``<state_dir>/isms/commands.json`` (:meth:`snapshot`) that every worker reads (:meth:`reload`)."""

    FILE = "commands.json"

    def __init__(self, state_dir: Path, subdomains: bool = True, house_id: str = "", load: bool = True,
                 decisions: DecisionStore | None = None) -> None:
        """``load`` False: start empty (the first ``reload`` reads the file); ``decisions``: where
        :meth:`writing` writes (None: the file itself, for a store of its own)."""
        self.dir = Path(state_dir) / "isms"
        self.path = self.dir / self.FILE
        self.subdomains = subdomains
        self.house_id = house_id
        self.state = State()
        self.seen: Version | None = _UNREAD  # the version last read, good or damaged
        self.cuts = _CUTS  # the daemon's, once its nftables is set up
        self._house_index: Intervals | None = None
        self.version = 0  # the decision store's version the state is folded to (-1: fold again from nothing)
        self.decisions = decisions
        self.pending: list[Entry] = []  # rows the mutations below owe the store (written by `writing`)
        self.lock = threading.RLock()  # writing() holds it: a reload of the snapshot waits for no write
        self.refused_rows: list[str] = []  # rows of the store refused (invalid), the last 100
        self.refused_total = 0
        self.refused_versions: list[int] = []  # their versions: a gateway's heartbeat says it enforces none of them
        self.legacy = False  # the file read was written by a beiand before the decision store
        self.snapshot_store: str | None = None  # the store the snapshot read was written from
        # The houses the inventory names (its house column: houseId → its prefixes as segments):
        # a command for some houses applies to their prefixes where the basic data (type 0) does
        # not list them (issue 30: the fleet's gateways and the licence's CU know their houses so)
        self.inventory_houses: dict[str, list[list[Any]]] = {}
        if load:
            self.reload()

    # -- the decision store ------------------------------------------------------------------

    def apply(self, changes: Iterable[Change]) -> int:
        """Fold the store's ``isms-*`` rows in version order; a row that does not hold what its kind
        needs changes nothing and is named in :attr:`refused_rows`. The number applied."""
        n = 0
        for c in changes:
            if c.version <= self.version:
                continue  # folded already
            self.version = c.version
            if c.kind not in ISMS_KINDS:
                continue
            try:
                self._apply(c)
                n += 1
            except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuleError) as exc:
                why = f"decision {c.version} ({c.kind} {c.key[:80]!r} on {c.gateway or '?'}): {exc}"
                self.refused_rows = [*self.refused_rows[-99:], why]
                self.refused_versions = [*self.refused_versions[-99:], c.version]
                self.refused_total += 1
                log.error("isms: %s: refused, the state before it is kept", why)
        if n:
            self._house_index = None
        return n

    def _apply(self, c: Change) -> None:
        st, d = self.state, c.data
        if c.kind == "isms-command":
            cid = int(c.key)
            if c.op == "set":
                cmd = _cmd_from_json(d)
                if cmd.command_id != cid:
                    raise ValueError(f"commandId {cmd.command_id} in a row for {cid}")
                why = unsupported(cmd)
                if why:
                    raise RuleError(why)
                compile_command(cmd, self.subdomains)
                old = st.commands.get(cid)
                if old is not None:
                    self._ended({"command": _cmd_to_json(old)}, c.key, c.at, "replaced")
                st.commands[cid] = cmd
                st.applied[c.key] = c.at
            elif c.op == "end":
                old = st.commands.pop(cid, None)
                if old is not None:
                    self._ended({"command": _cmd_to_json(old)}, c.key, c.at, c.why or "deleted")
        elif c.kind == "isms-list":
            if c.op == "set":
                e = ListEntry(**d)
                if f"{e.kind}:{e.command_id}" != c.key:
                    raise ValueError(f"{e.kind}:{e.command_id} in a row for {c.key}")
                old_e = st.lists.get(c.key)
                if old_e is not None:
                    self._ended({"list": asdict(old_e)}, c.key, c.at, "replaced")
                st.lists[c.key] = e
                st.applied[c.key] = c.at
            elif c.op == "end":
                old_e = st.lists.pop(c.key, None)
                if old_e is not None:
                    self._ended({"list": asdict(old_e)}, c.key, c.at, c.why or "deleted")
        elif c.kind == "isms-house":
            if c.op == "set":
                st.houses[c.key] = [[str(a), str(b), r] for a, b, r in d["segments"]]
            elif c.op == "end":
                st.houses.pop(c.key, None)
        elif c.kind == "isms-codes" and c.op == "set":
            st.code_lists[c.key] = list(d["rows"])
        elif c.kind == "isms-setting" and c.op == "set":
            if c.key == "active_period_s":
                st.active_period_s = int(d["value"])
            elif c.key == "dt2":
                st.dt2 = None if d["value"] is None else bool(d["value"])
        elif c.kind == "isms-sequence":
            st.sequences.append(int(c.key))
            if len(st.sequences) > 2 * MAX_SEEN:
                del st.sequences[:-MAX_SEEN]
        elif c.kind == "isms-refused":
            st.refused.append(dict(d))
            if len(st.refused) > 2000:
                del st.refused[:-1000]

    def _owe(self, kind: str, key: str, op: str, data: dict[str, Any], now: float, why: str = "") -> None:
        self.pending.append(Entry(kind, key, op, data, now, ACTOR, why))

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Apply commands inside: under the decision store's write lock, the state first catches up
        with what others wrote, then the rows the changes owe are written in one transaction (no
        lost update between a gateway's CU-lite and any other writer). A store that cannot be
        written raises StoreError and the state goes back to the snapshot (nothing half-held, the
        refused command nowhere). Without a decision store (a store of its own): the file is written."""
        with self.lock:
            if self.decisions is None:
                self.pending = []
                yield
                self.pending = []
                self.save()
                return
            head = self.version
            try:
                with self.decisions.transaction() as tx:
                    if self.version < 0:
                        self.state, self.version = State(), 0
                    self.apply(tx.changes(self.version, ISMS_KINDS))
                    self.pending = []
                    yield
                    if self.pending:
                        tx.append(self.pending)
                    head = tx.head
            except BaseException:
                self.pending = []
                self._back_to_snapshot()
                raise
            self.pending = []
            self.version = max(self.version, head)

    def _back_to_snapshot(self) -> None:
        """What was applied in memory was not written: the state of the snapshot instead (the
        next write catches up from its version)."""
        self.state, self.version, self.seen, self._house_index = State(), 0, _UNREAD, None
        try:
            self.reload()
        except RuleError as exc:
            log.error("isms: %s: folded again from the store at the next write", exc)
            self.version = -1

    def sync(self) -> None:
        """Catch up with the store (a reader that is not the follower: ``beiand isms commands``)."""
        if self.decisions is None:
            return
        if self.version < 0:
            self.state, self.version = State(), 0
        self.apply(self.decisions.changes(self.version, ISMS_KINDS))

    def snapshot(self, store: str) -> None:
        """Write the state as the snapshot file the workers read, with its store version."""
        self.save(snapshot={"version": self.version, "store": store, "written": time.time()})

    def legacy_entries(self) -> list[Entry]:
        """The rows holding what a commands file of a beiand before the decision store held (the
        state just read from it): history first (each put in force and ended at its own times),
        then what is in force, the houses, code lists, settings, sequences and refusals."""
        st, out = self.state, []
        for h in st.history:
            start, end = h.get("applied"), h.get("ended")
            if end is None:
                continue
            if "command" in h:
                key, kind, data = str(h["command"]["command_id"]), "isms-command", h["command"]
            elif "list" in h:
                key, kind, data = f"{h['list']['kind']}:{h['list']['command_id']}", "isms-list", h["list"]
            else:
                continue
            out.append(Entry(kind, key, "set", data, float(start if start is not None else end), ACTOR, "imported"))
            out.append(Entry(kind, key, "end", {}, float(end), ACTOR, str(h.get("why", "deleted"))))
        for cid, c in st.commands.items():
            out.append(Entry("isms-command", str(cid), "set", _cmd_to_json(c), st.applied.get(str(cid), time.time()), ACTOR))
        for key, e in st.lists.items():
            out.append(Entry("isms-list", key, "set", asdict(e), st.applied.get(key, time.time()), ACTOR))
        now = time.time()
        for hid, segs in st.houses.items():
            out.append(Entry("isms-house", hid, "set", {"segments": segs}, now, ACTOR))
        for name, rows in st.code_lists.items():
            out.append(Entry("isms-codes", name, "set", {"rows": rows}, now, ACTOR))
        if st.active_period_s:
            out.append(Entry("isms-setting", "active_period_s", "set", {"value": st.active_period_s}, now, ACTOR))
        if st.dt2 is not None:
            out.append(Entry("isms-setting", "dt2", "set", {"value": st.dt2}, now, ACTOR))
        out += [Entry("isms-sequence", str(q), "note", {}, now, ACTOR) for q in st.sequences[-MAX_SEEN:]]
        out += [Entry("isms-refused", str(r.get("commandId", "")) or "?", "note", dict(r), float(r.get("at", now)), ACTOR,
                      str(r.get("why", ""))) for r in st.refused[-1000:]]
        return out

    def reload(self) -> bool:
        """Re-read the file if it changed (``policy.source``); True when it did. No file keeps
        what is held; a damaged file raises once, keeps the state, and is read again when it changes."""
        v = version(self.path)
        if v == self.seen:
            return False
        self.seen = v
        if v is None:
            return False
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:  # replaced or removed since the stat: read again next time
            self.seen = _UNREAD
            return False
        except OSError as exc:
            raise RuleError(f"{self.path}: {exc.strerror or exc}") from None
        try:
            d = orjson.loads(raw)
            st = State(
                commands={int(k): _cmd_from_json(v) for k, v in d.get("commands", {}).items()},
                lists={k: ListEntry(**v) for k, v in d.get("lists", {}).items()},
                code_lists=d.get("code_lists", {}), active_period_s=int(d.get("active_period_s", 0)),
                sequences=[int(x) for x in d.get("sequences", [])], refused=d.get("refused", []),
                history=d.get("history", []), houses={str(k): [list(x) for x in v] for k, v in d.get("houses", {}).items()},
                dt2=d.get("dt2"), applied={str(k): float(v) for k, v in d.get("applied", {}).items()})
            snap = d.get("snapshot")
            snap_version = int(snap["version"]) if isinstance(snap, dict) else -1
            snap_store = str(snap.get("store")) if isinstance(snap, dict) else None
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise RuleError(f"{self.path}: damaged: {exc}") from None
        if 0 <= snap_version < self.version:
            return False  # older than what this store already holds (a writer ahead of the snapshot)
        self.state = st
        self.version = snap_version
        self.snapshot_store = snap_store
        self.legacy = snap_version < 0
        self._house_index = None
        return True

    def save(self, snapshot: dict[str, Any] | None = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        st = self.state
        data = {"commands": {str(k): _cmd_to_json(v) for k, v in st.commands.items()},
                "lists": {k: asdict(v) for k, v in st.lists.items()}, "code_lists": st.code_lists,
                "active_period_s": st.active_period_s, "sequences": st.sequences[-MAX_SEEN:],
                "refused": st.refused[-1000:], "history": st.history[-10000:],
                "houses": st.houses, "dt2": st.dt2, "applied": st.applied}
        if snapshot is not None:
            data["snapshot"] = snapshot
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            self.seen = version(self.path)

    # -- applying ----------------------------------------------------------------------------

    def seen_sequence(self, seq: int) -> bool:
        return seq in self.state.sequences

    def note_sequence(self, seq: int, now: float | None = None) -> None:
        self.state.sequences.append(seq)
        self._owe("isms-sequence", str(seq), "note", {}, time.time() if now is None else now)

    def is_duplicate(self, c: SecurityCommand) -> bool:
        """The same command (same id, same content) sent again: refused (ISMS.md §2, 999)."""
        old = self.state.commands.get(c.command_id)
        return old is not None and c.operation == 0 and old == c

    def apply_security(self, c: SecurityCommand, now: float) -> Outcome:
        if c.house_ids and house_scope(c, self.scopes(), self.house_id) is None:
            known = ", ".join(sorted({self.house_id, *self.scopes()} - {""}))
            return Outcome(AckResult.NONE, f"not for this house ({known})", "other-house")
        if c.operation == 1:
            old = self.state.commands.pop(c.command_id, None)
            if old is None:
                return Outcome(AckResult.NONE, f"delete: no command {c.command_id} in force", "unknown-command")
            self._ended({"command": _cmd_to_json(old)}, str(c.command_id), now, "deleted")
            self._owe("isms-command", str(c.command_id), "end", {}, now, "deleted")
            return Outcome(AckResult.ALL, "deleted")
        why = unsupported(c)
        if why:
            self._refuse(c.command_id, why, now)
            return Outcome(AckResult.NONE, why, "unsupported-subtype")
        try:
            compile_command(c, self.subdomains)
        except RuleError as exc:
            self._refuse(c.command_id, str(exc), now)
            return Outcome(AckResult.NONE, f"bad rule: {exc}", "bad-value")
        old = self.state.commands.get(c.command_id)
        if old is not None:
            self._ended({"command": _cmd_to_json(old)}, str(c.command_id), now, "replaced")
        self.state.commands[c.command_id] = c
        self.state.applied[str(c.command_id)] = now
        self._owe("isms-command", str(c.command_id), "set", _cmd_to_json(c), now, c.reason)
        result, msg = reach(c, self.cuts)
        return Outcome(result, msg)

    def _ended(self, entry: dict[str, Any], key: str, now: float, why: str) -> None:
        """A command or list entry leaves force: into the history with when it was applied and ended."""
        applied = self.state.applied.pop(key, None)
        self.state.history.append({**entry, "applied": applied, "ended": now, "why": why})

    def apply_list(self, e: ListEntry, now: float) -> Outcome:
        key = f"{e.kind}:{e.command_id}"
        if e.operation == 1:
            old = self.state.lists.pop(key, None)
            if old is None:
                return Outcome(AckResult.NONE, f"delete: no {e.kind} {e.command_id}", "unknown-command")
            self._ended({"list": asdict(old)}, key, now, "deleted")
            self._owe("isms-list", key, "end", {}, now, "deleted")
            return Outcome(AckResult.ALL, "deleted")
        try:
            for v in _split(e.contents):
                if e.type == 1:
                    normalise_domain(v.removeprefix("*."))
                else:
                    ip_range(*(v.split("-", 1) if "-" in v else (v, "")))
        except (DomainError, RuleError) as exc:
            self._refuse(e.command_id, str(exc), now)
            return Outcome(AckResult.NONE, f"bad entry: {exc}", "bad-value")
        old = self.state.lists.get(key)
        if old is not None:
            self._ended({"list": asdict(old)}, key, now, "replaced")
        self.state.lists[key] = e
        self.state.applied[key] = now
        self._owe("isms-list", key, "set", asdict(e), now)
        return Outcome(AckResult.ALL, f"{e.kind} in force")

    def apply_code_list(self, c: CodeList) -> Outcome:
        self.state.code_lists.update(c.tables)
        for name, rows in c.tables.items():
            self._owe("isms-codes", name, "set", {"rows": rows}, time.time())
        return Outcome(AckResult.ALL, f"stored: {', '.join(sorted(c.tables)) or 'no tables'}")

    def apply_period(self, p: ActivePeriod) -> Outcome:
        self.state.active_period_s = p.period_s
        self._owe("isms-setting", "active_period_s", "set", {"value": p.period_s}, time.time())
        return Outcome(AckResult.ALL, f"active-resource period {p.period_s} s")

    def apply_basic(self, b: BasicData) -> Outcome:
        """Type 0 ``idcInfoManage``: the houses and their IP ranges (per-prefix houseId, DT 2 codes 1 and 3)."""
        for h in b.houses:
            if not h.house_id:
                return Outcome(AckResult.NONE, "bad basic data: a house without houseId", "bad-value")
        now = time.time()
        for h in b.houses:
            if b.operation == 1:
                self.state.houses.pop(h.house_id, None)
                self._owe("isms-house", h.house_id, "end", {}, now)
            else:
                self.state.houses[h.house_id] = [[g.start, g.end, g.reserved] for g in h.segments]
                self._owe("isms-house", h.house_id, "set", {"segments": self.state.houses[h.house_id]}, now)
        if b.monitor in (1, 2):
            self.state.dt2 = b.monitor == 1
            self._owe("isms-setting", "dt2", "set", {"value": self.state.dt2}, now)
        self._house_index = None
        what = "deleted" if b.operation == 1 else "stored"
        n = sum(len(h.segments) for h in b.houses)
        dt2 = {1: "; DT 2 on", 2: "; DT 2 off"}.get(b.monitor, "")
        return Outcome(AckResult.ALL, f"basic data {what}: {len(b.houses)} house(s), {n} IP segment(s){dt2}")

    def scopes(self) -> dict[str, list[list[Any]]]:
        """The houses a command's ``range/houseId`` can name: the basic data's (type 0), and the
        inventory's for those it does not list."""
        if not self.inventory_houses:
            return self.state.houses
        return {**self.inventory_houses, **self.state.houses}

    def _houses(self) -> Intervals:
        if self._house_index is None:
            items = []
            for hid, segs in self.state.houses.items():
                for a, b, reserved in segs:
                    try:
                        items.append((ip_range(a, b), _HouseSeg(hid, bool(reserved))))
                    except RuleError:
                        continue
            self._house_index = Intervals(items)  # type: ignore[arg-type]
        return self._house_index

    def house_segment(self, ip: str) -> tuple[str, bool] | None:
        """(houseId, reserved) of the registered segment holding ``ip``, or None (not registered)."""
        try:
            k = ip_int(ip)
        except ValueError:
            return None
        for seg in self._houses().find(*k):
            return seg.house_id, seg.reserved  # type: ignore[attr-defined]
        return None

    def house_of(self, ip: str) -> str:
        """The houseId of ``ip`` from the basic data (type 0), else ``isms.house_id`` (one per gateway)."""
        if self.state.houses:
            seg = self.house_segment(ip)
            if seg is not None:
                return seg[0]
        return self.house_id

    def in_house(self, house_ids: Iterable[str]) -> Callable[[SecurityCommand], bool]:
        """For commandQuery's houseId*: a command for any of them (or for every house)."""
        want = {h for h in house_ids if h}
        return lambda c: not want or not c.house_ids or bool(want & set(c.house_ids))

    def _refuse(self, command_id: int, why: str, now: float) -> None:
        self.state.refused.append({"commandId": command_id, "why": why, "at": now})
        self._owe("isms-refused", str(command_id), "note", {"commandId": command_id, "why": why, "at": now}, now, why)

    # -- matching ----------------------------------------------------------------------------

    def compiled(self, since: float = -math.inf) -> list[Compiled]:
        """Every command and list entry in force since ``since`` (the history's with the time they
        left force; all of them by default), compiled: the matcher picks those in force at each
        observation's time."""
        st = self.state
        out: list[Compiled] = []
        for c in st.commands.values():
            self._compile(out, c, st.applied.get(str(c.command_id), -math.inf), math.inf)
        for e in st.lists.values():
            self._compile_list(out, e, st.applied.get(f"{e.kind}:{e.command_id}", -math.inf), math.inf)
        for h in st.history:
            try:
                end = float(h["ended"])
                if end <= since:
                    continue
                start = -math.inf if h.get("applied") is None else float(h["applied"])
                if "command" in h:
                    self._compile(out, _cmd_from_json(h["command"]), start, end)
                elif "list" in h:
                    self._compile_list(out, ListEntry(**h["list"]), start, end)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("isms: history entry skipped: %s", exc)
        return out

    def _compile(self, out: list[Compiled], c: SecurityCommand, start: float, end: float) -> None:
        scope = house_scope(c, self.scopes(), self.house_id)
        if scope is None:  # its houses left the basic data since: applies nowhere here
            return
        try:
            out.append(compile_command(c, self.subdomains, scope, start, end))
        except RuleError as exc:  # stored before a change of beiand: say so, keep the rest
            log.error("isms: command %d: %s", c.command_id, exc)

    def _compile_list(self, out: list[Compiled], e: ListEntry, start: float, end: float) -> None:
        by = Overlay.ISMS_BLACKLIST if e.kind == "blacklist" else Overlay.ISMS_NOFILTER
        cl = Compiled(hit(by, str(e.command_id)), start=start, end=end)
        try:
            for v in _split(e.contents):
                if e.type == 1:
                    cl.domains.append(normalise_domain(v.removeprefix("*.")))
                else:
                    cl.dst.append(ip_range(*(v.split("-", 1) if "-" in v else (v, ""))))
        except (DomainError, RuleError) as exc:
            log.error("isms: %s %d: %s", e.kind, e.command_id, exc)
            return
        out.append(cl)

    def next_change(self, ts: float) -> float:
        """The first effectTime after ``ts`` of a command that cuts by address (inf: none): when
        :meth:`addresses` gains it. Ends need no sync (nftables elements time out)."""
        st = self.state
        return min((c.effect_time for c in st.commands.values() if c.effect_time > ts and address_rules(c)
                    and house_scope(c, self.scopes(), self.house_id) is not None), default=math.inf)

    def addresses(self, ts: float) -> list[AddressRule]:
        """What the commands and blacklist entries in force at ``ts`` cut by address (nftables)."""
        st = self.state
        out: list[AddressRule] = []
        for c in st.commands.values():
            if house_scope(c, self.scopes(), self.house_id) is None:
                continue
            if not (c.effect_time or -math.inf) <= ts < (c.expired_time or math.inf):
                continue
            rules = address_rules(c)
            if rules:
                out.extend(rules)
        for e in st.lists.values():
            if e.kind == "blacklist" and e.type != 1:
                out.extend(AddressRule(_net(*(v.split("-", 1) if "-" in v else (v, ""))), ref=f"isms-blacklist:{e.command_id}")
                           for v in _split(e.contents))
        return out


_UNREAD = Version(-1, -1, -1)


@dataclass(frozen=True)
class _HouseSeg:
    house_id: str
    reserved: bool


def _split(contents: str) -> list[str]:
    return [v.strip() for v in contents.replace(";", ",").replace("\n", ",").split(",") if v.strip()]


class CommandRules:
    """The regulator's commands as a policy overlay (``beiand.policy.overlays.Layer``): every
    command and list entry in force, compiled, each within the time it was in force; the decider
    evaluates them at each observation's time. ``reload`` re-reads the file when it changed.

    ``live`` (the daemon's workers): the history's entries that left force more than
    ``LIVE_HISTORY_S`` ago are not compiled (up to 10,000 of them, on every reload); replay and
    lookups (``live`` False) judge old captures, so they compile the whole history. A damaged file
    at start leaves the overlay empty (``error`` says why) until the file is mended.
    """

    name = "isms"
    LIVE_HISTORY_S = 3600.0  # an observation is never older than this on a live worker

    def __init__(self, state_dir: Path, subdomains: bool = True, house_id: str = "", *, live: bool = False,
                 store: CommandStore | None = None, houses: dict[str, list[list[Any]]] | None = None) -> None:
        """``store``: commands already folded (from the decision store) instead of the snapshot file;
        ``houses``: the inventory's (:func:`inventory_houses`)."""
        self.store = store if store is not None else CommandStore(state_dir, subdomains, house_id, load=False)
        if houses:
            self.store.inventory_houses = houses
        self.live = live
        self.matcher = Matcher(())
        self._known_names: Callable[[str], list[Compiled] | None] | None = None
        self._keyed = True
        self.errors = 0  # damaged versions of the file met
        self.error = ""  # what is wrong with the file now ("" when it was read)
        self._next: tuple[CommandStore, Matcher, Callable[[str], list[Compiled] | None] | None, bool] | None = None
        self._next_error = ""
        self._old: tuple[CommandStore, Matcher] | None = None
        if store is not None:
            self._build()
        else:
            self._read()

    def _compile(self, store: CommandStore) -> tuple[Matcher, Callable[[str], list[Compiled] | None] | None, bool]:
        compiled = store.compiled(since=time.time() - self.LIVE_HISTORY_S if self.live else -math.inf)
        matcher = Matcher(compiled)
        known = matcher._names.get if matcher.names_only and matcher.count else None
        # Layer.keyed: with name rules only (no URL, source, port or protocol part), a command
        # matches by the name (within its houses' server addresses) or not at all.
        keyed = all(not (c.urls or c.src or c.sports or c.dports or c.protos) for c in compiled)
        return matcher, known, keyed

    def _build(self) -> None:
        self.matcher, self._known_names, self._keyed = self._compile(self.store)
        changed()

    def prepare(self) -> None:
        """Read a changed snapshot and compile it beside the commands in force (outside the
        worker's lock); :meth:`reload` swaps it in."""
        self._old = None  # what was swapped out last time, freed here, outside the lock
        st = self.store
        if self._next is not None or self._next_error:
            return
        v = version(st.path)
        if v is None or v == st.seen:
            return
        nxt = CommandStore(st.dir.parent, st.subdomains, st.house_id, load=False)
        nxt.seen, nxt.inventory_houses = st.seen, st.inventory_houses
        try:
            with gc_paused():
                if nxt.reload():
                    self._next = (nxt, *self._compile(nxt))
        except RuleError as exc:  # this damaged version is read once: reload counts it
            st.seen = nxt.seen
            self._next_error = str(exc)

    def keyed(self) -> bool:
        return not self.matcher.count or (self._keyed and self.matcher.names_only)

    def rule_names(self) -> Collection[str]:
        return self.matcher.by_name.keys()

    def address_clear(self, ip: str) -> bool:
        return self.matcher.names_only  # with address rules it is not keyed: never asked

    def _read(self) -> bool:
        seen = self.store.seen
        try:
            with gc_paused():
                changed = self.store.reload()
                if changed:
                    self._build()
        except RuleError as exc:  # a damaged file keeps the commands in force
            self.errors += 1
            self.error = str(exc)
            return False
        if self.store.seen != seen:  # another version, read well (or no file)
            self.error = ""
        return changed

    def reload(self) -> bool:
        if self._next is not None or self._next_error:
            nxt, err = self._next, self._next_error
            self._next, self._next_error = None, ""
            if nxt is None:
                self.errors += 1
                self.error = err
                log.error("%s (the commands in force are kept; read again when the file changes)", err)
                return False
            self._old = (self.store, self.matcher)  # freed by the next prepare(), not under the lock
            self.store, self.matcher, self._known_names, self._keyed = nxt
            self.error = ""
            changed()
            return True
        errors = self.errors
        changed_ = self._read()
        if self.errors != errors:
            log.error("%s (the commands in force are kept; read again when the file changes)", self.error)
        return changed_

    def match(self, obs: Observation) -> Hit | None:
        # The hot path (every decision on every worker): with only name rules in force, a name seen
        # before that no command names costs one bound dict lookup.
        known_names = self._known_names
        if known_names is not None:
            n = obs.name
            if not n:
                return None
            known = known_names(n)
            if known is not None and not known:
                return None
        m = self.matcher
        if not m.count:
            return None
        return m.match(obs)

    def addresses(self, ts: float) -> list[AddressRule]:
        return self.store.addresses(ts)

    def next_change(self, ts: float) -> float:
        return self.store.next_change(ts)

    def metrics(self) -> dict[str, float]:
        st = self.store.state
        return {"rules": len(st.commands) + len(st.lists), "errors": self.errors, "version": self.store.version}
