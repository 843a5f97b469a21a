"""The overlays: closure orders, the regulator's commands, exemptions and grace, on top of the
records' verdict, evaluated at the observation's own time (DESIGN.md: a decision is finished
where it is decided).

One :class:`Decider` (the records' verdict from :class:`~beiand.policy.verdict.Policy`, then every
overlay) gives the final :class:`~beiand.model.Decision`, with the overlay that decided it and its
reference in typed fields (``by``, ``ref``). The daemon's workers, ``replay``, ``records lookup``,
``/api/v1/lookup``, ``audit --pcap`` and the corpus build the same decider from the same config
and state directory (``runtime.wiring.decider``), so they decide alike; the enforcer only acts
on what it returns.

An overlay (:class:`Layer`) answers ``match(obs)`` (the rule in force at ``obs.ts`` that covers
the observation, or None), ``reload()`` (re-read its source; True when it changed: every worker
calls it about four times a second, the one reload path for every overlay), ``addresses(ts)``
(what it cuts by address whatever the port: nftables sets), ``next_change(ts)`` (when ``addresses``
next gains a rule: the supervisor writes nftables then) and ``metrics()``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from beiand.accesslog.columns import order_column
from beiand.model import Action, AddressRule, Decision, Kind, MetricKey, MetricValues, Mode, Observation, Overlay, Transport, VerdictKind
from beiand.policy.cases import LIFTED_BY_FILING, CaseError, CaseSnapshot, key_parts, read_snapshot
from beiand.policy.inventory import HostedPrefix
from beiand.policy.orders import ExemptionStore, OrderError, OrderStore
from beiand.policy.source import CHANGES, changed, version
from beiand.policy.verdict import Policy, files_here

log = logging.getLogger(__name__)


class Effect:
    BLOCK = "block"  # like a closure order: blocked in every mode, past the breaker and grace
    EXEMPT = "exempt"  # an allowlist entry: the verdict becomes exempt
    FLAG = "flag"  # a monitor: flagged (never blocked by it), the command named in the record
    # a sponsor case past its deadline: blocked per flow where the prefix enforces, flagged
    # elsewhere; nothing once the records say the name is filed (rectified: the block lifts at once)
    CASE = "case"
    # a site on the authority's list (上级下发未备案网站): blocked per flow where the prefix enforces,
    # flagged elsewhere, like a closure order from the time it was listed; nothing where the records
    # file the name (a conflict for a person, never a silent block: policy.authority)
    LISTED = "listed"


# Which overlay wins when several match: a closure order, then a regulator's block, its
# exemption (noFilter), its monitor.
# An operator's exemption ranks with noFilter: it never lifts the authority's or the regulator's block.
# A sponsor case's escalation ranks below an exemption (the operator's judgment wins) and above a monitor.
# The authority's list ranks with the regulator's blocks: an operator's exemption does not lift it.
PRIORITY = {Overlay.ORDER: 5, Overlay.ISMS_FILTER: 4, Overlay.ISMS_BLACKLIST: 4, Overlay.AUTHORITY: 4, Overlay.ISMS_NOFILTER: 3,
            Overlay.EXEMPTION: 3, Overlay.CASE: 2, Overlay.ISMS_MONITOR: 1}
_EFFECT = {Overlay.ORDER: Effect.BLOCK, Overlay.ISMS_FILTER: Effect.BLOCK, Overlay.ISMS_BLACKLIST: Effect.BLOCK,
           Overlay.ISMS_NOFILTER: Effect.EXEMPT, Overlay.EXEMPTION: Effect.EXEMPT, Overlay.ISMS_MONITOR: Effect.FLAG,
           Overlay.CASE: Effect.CASE, Overlay.AUTHORITY: Effect.LISTED}


class Hit(NamedTuple):
    """An overlay's rule covering an observation: which overlay, its reference, what it does."""

    by: Overlay
    ref: str
    effect: str
    priority: int


def hit(by: Overlay, ref: str) -> Hit:
    return Hit(by, ref, _EFFECT[by], PRIORITY[by])


class Layer(Protocol):
    """One overlay's source of rules; ``name`` labels its metrics (``order``, ``isms``)."""

    name: str
    error: str  # what is wrong with the source now ("" when it was read): the rules before it stay in force

    def reload(self) -> bool:
        """Re-read the rules if they changed; True when they did (a damaged source keeps the old
        ones, is logged once, and is read again when it changes)."""
        ...

    def prepare(self) -> None:
        """Read changed rules beside those in force, off the decision path; :meth:`reload` swaps
        them in (a worker prepares outside its lock and reloads under it)."""
        ...

    def match(self, obs: Observation) -> Hit | None:
        """The rule in force at ``obs.ts`` that covers ``obs`` (the strongest, when several do)."""
        ...

    def addresses(self, ts: float) -> list[AddressRule]:
        """The rules in force at ``ts`` that cut traffic by address, whatever the port."""
        ...

    def next_change(self, ts: float) -> float:
        """The first start after ``ts`` of a rule :meth:`addresses` gives (inf: none). Ends need
        no answer: nftables elements carry their rule's end as a timeout."""
        ...

    def metrics(self) -> Mapping[str, float]: ...

    def keyed(self) -> bool:
        """Whether :meth:`match` can match only by the observation's name or its server address
        (not a client address, a port, a URL): then the decider asks the two below once per name
        and per address, and skips the overlays for what none of them can ever match."""
        ...

    def rule_names(self) -> Collection[str]:
        """The names its rules are keyed on (any time): a rule can match a name only if the name
        or a name above it is one of these (``=name``: that name alone). Addresses may be in it."""
        ...

    def address_clear(self, ip: str) -> bool:
        """No rule of this overlay matches by the server address ``ip`` (any time)."""
        ...


class OrderLayer:
    """Closure orders (关停指令, ``beiand block add``) as an overlay: the snapshot ``<state_dir>/
    orders.json`` the supervisor writes from the decision store (or a store folded in memory).
    A damaged file at start leaves the overlay empty (``error`` says why) until the file is mended."""

    name = "order"
    overlay = Overlay.ORDER
    STORE: type[OrderStore] = OrderStore

    def __init__(self, store: OrderStore) -> None:
        self.store = store
        self.errors = 0  # damaged versions of the file met
        self.error = ""  # what is wrong with the file now ("" when it was read)
        self._next: OrderStore | None = None  # read by prepare(), swapped in by reload()
        self._next_error = ""
        self._old: OrderStore | None = None

    @classmethod
    def from_state_dir(cls, state_dir: Path) -> OrderLayer:
        layer = cls(cls.STORE(state_dir, load=False))
        layer._read()
        return layer

    def _read(self) -> bool:
        seen = self.store.seen
        try:
            changed = self.store.reload()
        except OrderError as exc:  # a damaged file keeps the orders in force
            self.errors += 1
            self.error = str(exc)
            return False
        if self.store.seen != seen:  # another version, read well (or no file)
            self.error = ""
        return changed

    def prepare(self) -> None:
        """Read a changed snapshot into a new store beside the one in force: the worker does it
        outside its lock, so the inline queue's decisions never wait for a parse (50,000 orders:
        ~120 ms); :meth:`reload` then swaps it in."""
        self._old = None  # the store swapped out last time, freed here, outside the lock
        path = self.store.path
        if self._next is not None or self._next_error or path is None:
            return
        v = version(path)
        if v is None or v == self.store.seen:
            return  # unchanged, or removed (reload empties the store in place)
        nxt = self.STORE(path.parent, load=False)
        nxt.seen = self.store.seen
        try:
            if nxt.reload():
                self._next = nxt
        except OrderError as exc:  # this damaged version is read once: reload counts it
            self.store.seen = nxt.seen
            self._next_error = str(exc)

    def reload(self) -> bool:
        if self._next is not None or self._next_error:
            nxt, err = self._next, self._next_error
            self._next, self._next_error = None, ""
            if nxt is None:
                self.errors += 1
                self.error = err
                log.error("%s (the %ss in force are kept; read again when the file changes)", err, self.store.WHAT)
                return False
            # The old store is kept until the next prepare(): freeing 50,000 orders took 12 ms,
            # under the lock.
            self._old, self.store, self.error = self.store, nxt, ""
            changed()
            return True
        errors = self.errors
        changed_ = self._read()
        if self.errors != errors:
            log.error("%s (the %ss in force are kept; read again when the file changes)", self.error, self.store.WHAT)
        return changed_

    def match(self, obs: Observation) -> Hit | None:
        o = self.store.match(obs.name, obs.server_ip, obs.ts)
        return hit(self.overlay, o.order) if o is not None else None

    def addresses(self, ts: float) -> list[AddressRule]:
        return [AddressRule(o.target, until=o.until, ref=o.order) for o in self.store.orders.values()
                if o.is_ip and o.created <= ts and o.active(ts)]

    def next_change(self, ts: float) -> float:
        """An order starts when it is entered: later than ``ts`` only for a clock ahead of ours."""
        return min((o.created for o in self.store.orders.values() if o.created > ts and o.is_ip), default=math.inf)

    def keyed(self) -> bool:
        return True

    def rule_names(self) -> Collection[str]:
        return self.store._spans.keys()

    def address_clear(self, ip: str) -> bool:
        return not self.store.address_hits(ip)

    def metrics(self) -> Mapping[str, float]:
        """Orders in force now, reloads that met a damaged file, the decision store's version held."""
        return {"rules": len(self.store.orders), "errors": self.errors, "version": self.store.version}


class ExemptionLayer(OrderLayer):
    """The operator's exemptions (豁免, ``beiand exempt add``): ``<state_dir>/exemptions.json``. An
    exempt name or address is logged, never blocked by the records' verdict or grace; a closure
    order or a regulator's block still wins (``PRIORITY``). Nothing is cut by address."""

    name = "exemption"
    overlay = Overlay.EXEMPTION
    STORE = ExemptionStore

    def addresses(self, ts: float) -> list[AddressRule]:
        return []

    def next_change(self, ts: float) -> float:
        return math.inf


class CaseLayer:
    """Sponsor cases past their deadline (取消接入 for the site, ``beiand cases``; issue 31) as an
    overlay: the escalated cases of the snapshot ``<state_dir>/cases.json`` the supervisor writes
    from the decision store (or of cases folded in memory). A case covers its names exactly (not
    the names below them) on its own account's prefixes; what it does there is :data:`Effect.CASE`."""

    name = "case"

    def __init__(self, snapshot: CaseSnapshot) -> None:
        self.snapshot = snapshot
        self.errors = 0
        self.error = ""
        self._names: dict[str, str] = {}  # name → its cases' keys (CASE_SEP between them)
        self._hits: dict[str, Hit] = {}
        self._index()

    @classmethod
    def from_state_dir(cls, state_dir: Path) -> CaseLayer:
        layer = cls(CaseSnapshot(state_dir, load=False))
        layer.reload()
        return layer

    def _index(self) -> None:
        by_name: dict[str, list[str]] = {}
        for key, (_account, names) in sorted(self.snapshot.escalated.items()):
            for n in names:
                by_name.setdefault(n, []).append(key)
        # name → the keys of every case on it (one per account), in one reference: apply_case picks the decision's account's
        self._names = {n: CASE_SEP.join(keys) for n, keys in by_name.items()}
        self._hits = {n: hit(Overlay.CASE, ref) for n, ref in self._names.items()}  # built once, not per flow

    def prepare(self) -> None:
        pass  # a snapshot of escalated cases is small: read under the lock

    def reload(self) -> bool:
        snap = self.snapshot
        if snap.path is None:  # folded in memory: what it holds now
            before = self._names
            self._index()
            if self._names == before:
                return False
            changed()
            return True
        v = version(snap.path)
        if v == snap.seen:
            return False
        snap.seen = v
        try:
            snap.escalated, snap.snapshot_store, _ = read_snapshot(snap.path) if v is not None else ({}, None, 0)
        except CaseError as exc:  # a damaged file keeps the cases in force
            self.errors += 1
            self.error = str(exc)
            log.error("%s (the escalated cases in force are kept; read again when the file changes)", exc)
            return False
        self.error = ""
        self._index()
        changed()
        return True

    def match(self, obs: Observation) -> Hit | None:
        return self._hits.get(obs.name) if obs.name else None

    def addresses(self, ts: float) -> list[AddressRule]:
        return []  # per flow, never the host

    def next_change(self, ts: float) -> float:
        return math.inf

    def keyed(self) -> bool:
        return True

    def rule_names(self) -> Collection[str]:
        return {"=" + n for n in self._names}

    def address_clear(self, ip: str) -> bool:
        return True

    def metrics(self) -> Mapping[str, float]:
        return {"rules": len(self.snapshot.escalated), "errors": self.errors}


class Grace:
    """``enforce.grace_seconds``: a name first met (at the observation's time) is flagged, not
    blocked, for that long: a policy rule on observation time, never on the wall clock."""

    MAX_NAMES = 100_000

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.first_seen: OrderedDict[str, float] = OrderedDict()

    def apply(self, obs: Observation, d: Decision) -> Decision:
        name = obs.name
        if not name:
            return d
        first = self.first_seen.get(name)
        if first is None:
            self.first_seen[name] = first = obs.ts
            if len(self.first_seen) > self.MAX_NAMES:
                self.first_seen.popitem(last=False)
        if obs.ts - first < self.seconds:
            return d._replace(action=Action.FLAG, rule=f"grace:would-block:{d.rule}", by=Overlay.GRACE, ref="")
        return d




CASE_SEP = "\x1f"  # between the keys of the cases on one name (a key holds no control character)


@functools.lru_cache(maxsize=65536)
def _case_refs(ref: str) -> tuple[tuple[str, str, bool, bool], ...]:
    """(key, account, lifted by a filing, the authority's list) of each case a CaseLayer hit names,
    parsed once per reference."""
    out = []
    for key in ref.split(CASE_SEP):
        account, finding, _ = key_parts(key)
        out.append((key, account, finding in LIFTED_BY_FILING, finding == "authority"))
    return tuple(out)


def apply_case(d: Decision, h: Hit) -> Decision | None:
    """The decision once an escalated case decided it; None when no case of the hit applies: only
    the case of the decision's own account; never an exempt verdict; a case about the filing itself
    (unfiled, mismatched, inactive, the authority's list) only while the records still say the name
    is not filed here (a filing that arrives with a records reload lifts the block on the next
    flow); a case about a filed site (no 备案号) until it is closed. A case of the authority's list
    never blocks a name the records file here, a filing of ours served from an address it does not
    list included (a conflict for a person: policy.authority; issue 35)."""
    v = d.verdict.verdict
    if v is VerdictKind.EXEMPT:
        return None
    for ref, account, lifted, listed in _case_refs(h.ref):
        if account != d.account or (v is VerdictKind.FILED and lifted) or (listed and files_here(d.verdict)):
            continue
        if d.mode is Mode.ENFORCE:
            return d._replace(action=Action.BLOCK, rule=f"{h.by}:{ref}", by=h.by, ref=ref)
        return d._replace(action=Action.FLAG, rule=f"{h.by}:would-block:{ref}", by=h.by, ref=ref)
    return None


def apply_hit(d: Decision, h: Hit) -> Decision:
    """The decision once an overlay's rule decided it (a case's hit: :func:`apply_case`)."""
    if h.effect == Effect.BLOCK:
        return d._replace(action=Action.BLOCK, rule=f"{h.by}:{h.ref}", by=h.by, ref=h.ref)
    if h.effect == Effect.LISTED:  # per flow: blocked where the prefix enforces, flagged elsewhere
        if d.mode is Mode.ENFORCE:
            return d._replace(action=Action.BLOCK, rule=f"{h.by}:{h.ref}", by=h.by, ref=h.ref)
        return d._replace(action=Action.FLAG if d.action is Action.LOG else d.action, rule=f"{h.by}:would-block:{h.ref}",
                          by=h.by, ref=h.ref)
    if h.effect == Effect.EXEMPT:  # noFilter: an allowlist entry
        return d._replace(verdict=d.verdict._replace(verdict=VerdictKind.EXEMPT, reason=h.by), action=Action.LOG,
                          rule=f"{h.by}:{h.ref}", by=h.by, ref=h.ref)
    # A monitor flags and never blocks; a flow the records already flag or block keeps its action,
    # and the record names the command (its DT 4 row: issue 28).
    return d._replace(action=Action.FLAG if d.action is Action.LOG else d.action, rule=f"{h.by}:{h.ref}" if d.action is
                      Action.LOG else d.rule, by=h.by, ref=h.ref)


_NOT_HOSTED, _BLOCK = VerdictKind.NOT_HOSTED, Action.BLOCK
_CHANGES = CHANGES


class Decider:
    """The records' verdict and the overlays → the final decision (the daemon's and replay's)."""

    MAX_SEEN = 200_000

    def __init__(self, policy: Policy, layers: Sequence[Layer] = (), grace_seconds: float = 0.0) -> None:
        self.policy = policy
        self.inventory = policy.inventory
        self.layers = list(layers)
        self.grace = Grace(grace_seconds) if grace_seconds > 0 else None
        # When every overlay can match only by name or server address (Layer.keyed), the names and
        # addresses that none of them can ever match are remembered (True) and skip the walk of
        # every overlay: with 100,000 orders and commands in force that walk cost a third of the
        # verdict rate (issue 29); a name or address met again costs one lookup each.
        self._names: dict[str, bool] = {}
        self._addrs: dict[str, bool] = {}
        self._keyed = False
        self._rule_names: set[str] = set()  # every overlay's rule names (Layer.rule_names)
        self._exact = False  # some are exact ("=name")
        self._gen = -1  # policy.source.CHANGES when they were last emptied

    def decide(self, obs: Observation) -> Decision:
        d = self.policy.decide(obs)
        if d.verdict.verdict is _NOT_HOSTED or (not self.layers and d.action is not _BLOCK):
            return d  # the hot path: no overlay can change it (grace and DNS answers act on blocks only)
        if _CHANGES[0] != self._gen:  # an overlay's rules changed: forget
            self._names, self._addrs = {}, {}
            self._keyed = all(layer.keyed() for layer in self.layers)
            if self._keyed:
                self._rule_names = set().union(*(layer.rule_names() for layer in self.layers))
                self._exact = any(k[:1] == "=" for k in self._rule_names)
            self._gen = _CHANGES[0]
        if self._keyed:
            name_ok = self._names.get(obs.name)
            if name_ok is None:
                name_ok = self._learn(self._names, obs.name, True)
            if name_ok:
                ip_ok = self._addrs.get(obs.server_ip)
                if ip_ok is None:
                    ip_ok = self._learn(self._addrs, obs.server_ip, False)
                if ip_ok:
                    return d if d.action is not _BLOCK else self._unmatched(obs, d, True)
        return self.overlay(obs, d)

    def _learn(self, seen: dict[str, bool], key: str, name: bool) -> bool:
        if name:  # one walk of the name's labels over every overlay's rule names at once
            names = self._rule_names
            ok = not (self._exact and "=" + key in names)
            n = key
            while ok and n:
                if n in names:
                    ok = False
                i = n.find(".")
                n = n[i + 1:] if i >= 0 else ""
        else:
            ok = all(layer.address_clear(key) for layer in self.layers)
        if len(seen) >= self.MAX_SEEN:
            seen.clear()
        seen[key] = ok
        return ok

    def overlay(self, obs: Observation, d: Decision, grace: bool = True) -> Decision:
        """``d`` (the records' decision for ``obs``) with the overlays in force at ``obs.ts``;
        ``grace`` False: a question, not traffic (a lookup neither meets a name nor is held by grace)."""
        best: Hit | None = None
        case: Hit | None = None
        for layer in self.layers:
            h = layer.match(obs)
            if h is None:
                continue
            if h.effect == Effect.CASE:  # it may not apply (another account's case): weighed below
                case = h
            elif h.by is Overlay.AUTHORITY and files_here(d.verdict):
                # the records file it here (drift included: an unlisted address, access pending): a
                # conflict for a person, never a block (policy.authority)
                continue
            elif best is None or h.priority > best.priority:
                best = h
        if case is not None and (best is None or case.priority > best.priority):
            decided = apply_case(d, case)
            if decided is not None:
                return decided if obs.kind is not Kind.DNS_ANSWER else decided._replace(
                    action=Action.FLAG if decided.action is Action.BLOCK else decided.action, rule=decided.rule + ":dns-answer")
        if best is None:
            return d if d.action is not Action.BLOCK else self._unmatched(obs, d, grace)
        d = apply_hit(d, best)
        if d.action is Action.BLOCK and obs.kind is Kind.DNS_ANSWER:
            # An answer is not a connection: the connection it leads to is what gets blocked.
            d = d._replace(action=Action.FLAG, rule=d.rule + ":dns-answer")
        return d

    def _unmatched(self, obs: Observation, d: Decision, grace: bool) -> Decision:
        """A block of the records' verdict that no overlay changed: grace, then DNS answers."""
        if grace and self.grace is not None:
            d = self.grace.apply(obs, d)
        if obs.kind is Kind.DNS_ANSWER and d.action is Action.BLOCK:
            d = d._replace(action=Action.FLAG, rule=d.rule + ":dns-answer")
        return d

    def rebind(self, policy: Policy) -> None:
        """Decide with a reloaded policy (new records or inventory), the overlays kept."""
        self.policy, self.inventory = policy, policy.inventory

    def prepare(self) -> None:
        """Every overlay reads a changed source beside the rules in force (outside the worker's
        lock); the next :meth:`reload` swaps them in."""
        for layer in self.layers:
            layer.prepare()

    def reload(self) -> bool:
        """Every overlay re-reads its source; True when any changed (the one reload path)."""
        changed = False
        for layer in self.layers:
            changed = layer.reload() or changed
        return changed

    def addresses(self, ts: float) -> list[AddressRule]:
        return [a for layer in self.layers for a in layer.addresses(ts)]

    def next_change(self, ts: float) -> float:
        """When :meth:`addresses` next gains a rule, over every overlay (inf: never)."""
        return min((layer.next_change(ts) for layer in self.layers), default=math.inf)

    def metrics(self) -> MetricValues:
        """Per overlay: the rules in force (``beiand_overlay_rules``), the reloads that met a
        damaged file (``beiand_overlay_reload_errors``) and whether the file is damaged now
        (``beiand_overlay_damaged``); the worker adds its own label."""
        out: MetricValues = {}
        for layer in self.layers:
            m = layer.metrics()
            out[MetricKey("beiand_overlay_rules", (layer.name,))] = m.get("rules", 0)
            out[MetricKey("beiand_overlay_reload_errors", (layer.name,))] = m.get("errors", 0)
            out[MetricKey("beiand_overlay_damaged", (layer.name,))] = 1.0 if layer.error else 0.0
            if "version" in m:
                out[MetricKey("beiand_overlay_version", (layer.name,))] = m["version"]
        return out

    def lookup(self, name: str, server_ip: str, ts: float, port: int = 0, *, no_inventory_means_hosted: bool = False
               ) -> tuple[Decision, HostedPrefix | None, str]:
        """``Policy.lookup`` with the overlays in force at ``ts`` (``records lookup``, ``/api/v1/lookup``)."""
        d, prefix, assumed = self.policy.lookup(name, server_ip, ts, no_inventory_means_hosted=no_inventory_means_hosted)
        if d.verdict.verdict is VerdictKind.NOT_HOSTED:
            return d, prefix, assumed
        obs = Observation(ts, "", 0, server_ip, port, Transport.TCP, Kind.TLS_SNI if name else Kind.IP_ONLY, name, name)
        return self.overlay(obs, d, grace=False), prefix, assumed


def lookup_answer(decider: Decider | Policy, name: str, server_ip: str, ts: float, port: int = 0, *,
                  no_inventory_means_hosted: bool = False) -> dict[str, object]:
    """One lookup as the CLI's ``--json`` and ``/api/v1/lookup`` both print it: the records'
    verdict and the overlays in force at ``ts`` (a bare ``Policy``: the records alone)."""
    dec = decider if isinstance(decider, Decider) else Decider(decider)
    d, prefix, assumed = dec.lookup(name, server_ip, ts, port, no_inventory_means_hosted=no_inventory_means_hosted)
    f = d.verdict.filing
    return {
        "name": name, "server": server_ip or None, "hosted": prefix is not None if server_ip else None,
        "assumed": assumed or None, "verdict": d.verdict.verdict.value, "reason": d.verdict.reason,
        "action": d.action.value, "rule": d.rule, "mode": d.mode.value, "account": d.account,
        "order": order_column(d) or None, "by": d.by or None,
        "filing": None if f is None else {
            "number": f.number, "sponsor": f.sponsor, "service_type": f.service_type.value, "status": f.status.value,
            "access_provider": f.access_provider, "domains": list(f.domains), "ips": list(f.ips), "source": f.source,
        },
    }
