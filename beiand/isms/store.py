"""The regulator's commands in force: persisted in the state directory, applied by every worker.

The main process (the ``idc_command`` endpoint, ``beiand isms``) writes ``<state_dir>/isms/
commands.json`` atomically; each worker's :class:`CommandRules` re-reads it when its mtime
changes (the enforcer calls ``reload`` four times a second), so a command applies within a
second on every worker and survives restarts, exactly like closure orders (enforce/orders.py).

Rules combine as ISMS.md §6 says: AND across subtypes, OR within one. A command holding a rule
beiand cannot carry out (keyword, attachment content) is refused whole (a partial rule over-
blocks) with ack resultCode 2, never stored and never silently dropped.
"""

from __future__ import annotations

import bisect
import contextlib
import ipaddress
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from beiand.enforce.rules import RuleHit
from beiand.errors import BeiandError
from beiand.isms.wire.codes import RULE_NAMES, AckResult, RuleSubtype, SecurityType
from beiand.isms.wire.model import ActivePeriod, BasicData, CodeList, ListEntry, Rule, SecurityCommand
from beiand.model import Observation, Transport
from beiand.records.domains import DomainError, normalise_domain

log = logging.getLogger(__name__)
MAX_SEEN = 100_000  # commandSequence values kept for duplicate detection
SUPPORTED = frozenset({RuleSubtype.DOMAIN, RuleSubtype.URL, RuleSubtype.SRC_IP, RuleSubtype.DST_IP, RuleSubtype.SRC_PORT,
                       RuleSubtype.DST_PORT, RuleSubtype.PROTOCOL})
_WHY = {RuleSubtype.KEYWORD: "no content inspection"}


_NO_CANDIDATES: list[Any] = []  # shared by every name no command names (never mutated)


class RuleError(BeiandError, ValueError):
    pass


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


# -- compiled matching -----------------------------------------------------------------------


def _ip_range(lo: str, hi: str) -> tuple[int, int, int]:
    """(version, first, last) of an address, a CIDR prefix, or valueStart..valueEnd."""
    try:
        if "/" in lo and not hi:
            n = ipaddress.ip_network(lo, strict=False)
            return n.version, int(n.network_address), int(n.broadcast_address)
        a = ipaddress.ip_address(lo)
        b = ipaddress.ip_address(hi) if hi else a
    except ValueError:
        raise RuleError(f"{lo!r}..{hi!r}: not an IP address, range or prefix") from None
    if a.version != b.version or int(b) < int(a):
        raise RuleError(f"{lo}..{hi}: not a range")
    return a.version, int(a), int(b)


def _port_range(lo: str, hi: str) -> tuple[int, int]:
    try:
        a = int(lo)
        b = int(hi) if hi else a
    except ValueError:
        raise RuleError(f"{lo!r}..{hi!r}: not a port") from None
    if not 0 <= a <= b <= 65535:
        raise RuleError(f"{lo}..{hi}: not a port range")
    return a, b


_PROTO = {1: Transport.TCP, 2: Transport.UDP}


@dataclass
class Compiled:
    """One command's rules, compiled: OR within each list, AND across non-empty lists."""

    hit: RuleHit
    priority: int  # block 3 > exempt 2 > flag 1
    domains: list[str] = field(default_factory=list)
    urls: list[tuple[str, str]] = field(default_factory=list)  # (host, path prefix)
    src: list[tuple[int, int, int]] = field(default_factory=list)
    dst: list[tuple[int, int, int]] = field(default_factory=list)
    sports: list[tuple[int, int]] = field(default_factory=list)
    dports: list[tuple[int, int]] = field(default_factory=list)
    protos: set[Transport] = field(default_factory=set)
    houses: list[tuple[int, int, int]] = field(default_factory=list)  # range/houseId → their segments (type 0): server IP in one


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
                out.append(_ip_range(a, b))
    if out:
        return out
    return [] if not own and not houses else None


def compile_command(c: SecurityCommand, subdomains: bool = True, houses: list[tuple[int, int, int]] | None = None) -> Compiled:
    if c.type == SecurityType.FILTER:
        hit = RuleHit(f"order:isms:{c.command_id}", "block")
    else:
        hit = RuleHit(f"order:isms-monitor:{c.command_id}", "flag")  # the order column: DT 4 reads it
    out = Compiled(hit, 3 if hit.effect == "block" else 1)
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
            (out.src if r.subtype == RuleSubtype.SRC_IP else out.dst).append(_ip_range(v, e))
        elif r.subtype in (RuleSubtype.SRC_PORT, RuleSubtype.DST_PORT):
            (out.sports if r.subtype == RuleSubtype.SRC_PORT else out.dports).append(_port_range(v, e))
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


def _ip_int(ip: str) -> tuple[int, int]:
    a = ipaddress.ip_address(ip)
    return a.version, int(a)


class _Intervals:
    """Address intervals → commands: sorted by start, with a running maximum of the ends, so a
    lookup walks back only over intervals that can still contain the address."""

    def __init__(self, items: Iterable[tuple[tuple[int, int, int], Compiled]]) -> None:
        rows = sorted(((v, lo, hi, id(c), c) for (v, lo, hi), c in items), key=lambda r: r[:3])
        self.keys = [(v, lo) for v, lo, _, _, _ in rows]
        self.rows = rows
        self.maxend: list[tuple[int, int]] = []
        m = (0, -1)
        for v, _, hi, _, _ in rows:
            m = max(m, (v, hi))
            self.maxend.append(m)

    def find(self, v: int, ip: int) -> Iterable[Compiled]:
        i = bisect.bisect_right(self.keys, (v, ip)) - 1
        while i >= 0 and self.maxend[i] >= (v, ip):
            rv, lo, hi, _, c = self.rows[i]
            if rv == v and lo <= ip <= hi:
                yield c
            i -= 1


class Matcher:
    """All commands in force, indexed: a name walks its labels, an address one dict and interval lookups."""

    def __init__(self, compiled: Iterable[Compiled]) -> None:
        self.by_name: dict[str, list[Compiled]] = {}
        self.by_addr: dict[tuple[int, int], list[Compiled]] = {}
        ranges: list[tuple[tuple[int, int, int], Compiled]] = []
        self.rest: list[Compiled] = []
        self.count = 0
        for c in compiled:
            self.count += 1
            if c.domains or c.urls:
                for d in c.domains:
                    self.by_name.setdefault(d, []).append(c)
                for h, _ in c.urls:
                    self.by_name.setdefault("=" + h, []).append(c)
            elif c.dst or c.src:
                for v, lo, hi in c.dst or c.src:
                    if lo == hi:
                        self.by_addr.setdefault((v, lo), []).append(c)
                    else:
                        ranges.append(((v, lo, hi), c))
            else:
                self.rest.append(c)
        self.ranges = _Intervals(ranges)
        self.exact = any(k[0] == "=" for k in self.by_name)  # exact-name entries (URL hosts, subdomains = false)
        self._names: dict[str, list[Compiled]] = {}  # name → its name candidates (most names: none)
        self.names_only = not (self.by_addr or ranges or self.rest)  # every command has a domain or URL rule
        self._ip_cache: dict[str, tuple[int, int] | None] = {}

    def _ip(self, ip: str) -> tuple[int, int] | None:
        hit = self._ip_cache.get(ip, False)
        if hit is False:
            try:
                hit = _ip_int(ip)
            except ValueError:
                hit = None
            if len(self._ip_cache) > 65536:
                self._ip_cache.clear()
            self._ip_cache[ip] = hit
        return hit  # type: ignore[return-value]

    def candidates(self, obs: Observation) -> list[Compiled]:
        out: list[Compiled] = []
        n = obs.name
        if n and self.by_name:
            hit = self._names.get(n)
            if hit is None:
                hit = self._name_candidates(n)
                if len(self._names) >= 65536:
                    self._names.clear()
                self._names[n] = hit
            if hit:
                out.extend(hit)
        if self.by_addr or self.ranges.rows:
            for ip in (obs.server_ip, obs.client_ip):
                k = self._ip(ip)
                if k is not None:
                    out.extend(self.by_addr.get(k, ()))
                    out.extend(self.ranges.find(*k))
        if self.rest:
            out.extend(self.rest)
        return out

    def _name_candidates(self, n: str) -> list[Compiled]:
        by_name = self.by_name
        out: list[Compiled] = []
        if self.exact:
            out.extend(by_name.get("=" + n, ()))
        while True:
            hit = by_name.get(n)
            if hit is not None:
                out.extend(hit)
            i = n.find(".")
            if i < 0:
                return out or _NO_CANDIDATES
            n = n[i + 1:]

    def match(self, obs: Observation) -> RuleHit | None:
        if not self.count:
            return None
        cands = self.candidates(obs)
        if not cands:  # the common case: one dict lookup per label
            return None
        best: Compiled | None = None
        for c in cands:
            if (best is None or c.priority > best.priority) and self._all(c, obs):
                best = c
        return best.hit if best is not None else None

    def _all(self, c: Compiled, obs: Observation) -> bool:
        if c.domains or c.urls:
            ok = False
            n = obs.name
            if c.domains and n:
                ok = any(n == d or n.endswith("." + d) if d[0] != "=" else n == d[1:] for d in c.domains)
            if not ok and c.urls and n and "target=" in obs.detail:
                # URL rules: HTTP/1.x request lines only (TLS and QUIC hide the path; ISMS.md §6)
                target = obs.detail.split("target=", 1)[1].split(" ", 1)[0]
                ok = any(n == h and target.startswith(p) for h, p in c.urls)
            if not ok:
                return False
        if c.dst and not self._in(c.dst, obs.server_ip):
            return False
        if c.src and not self._in(c.src, obs.client_ip):
            return False
        if c.dports and not any(lo <= obs.server_port <= hi for lo, hi in c.dports):
            return False
        if c.sports and not any(lo <= obs.client_port <= hi for lo, hi in c.sports):
            return False
        if c.protos and obs.transport not in c.protos:
            return False
        return not c.houses or self._in(c.houses, obs.server_ip)

    def _in(self, rs: list[tuple[int, int, int]], ip: str) -> bool:
        k = self._ip(ip)
        return k is not None and any(v == k[0] and lo <= k[1] <= hi for v, lo, hi in rs)


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


class CommandStore:
    """Read-write view of ``<state_dir>/isms/commands.json`` (the main process only writes)."""

    FILE = "commands.json"

    def __init__(self, state_dir: Path, subdomains: bool = True, house_id: str = "") -> None:
        self.dir = Path(state_dir) / "isms"
        self.path = self.dir / self.FILE
        self.subdomains = subdomains
        self.house_id = house_id
        self.state = State()
        self._mtime = -1.0
        self._house_index: _Intervals | None = None
        self.reload()

    def reload(self) -> bool:
        try:
            m = self.path.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return False
        if m == self._mtime:
            return False
        try:
            d = orjson.loads(self.path.read_bytes())
            st = State(
                commands={int(k): _cmd_from_json(v) for k, v in d.get("commands", {}).items()},
                lists={k: ListEntry(**v) for k, v in d.get("lists", {}).items()},
                code_lists=d.get("code_lists", {}), active_period_s=int(d.get("active_period_s", 0)),
                sequences=[int(x) for x in d.get("sequences", [])], refused=d.get("refused", []),
                history=d.get("history", []), houses={str(k): [list(x) for x in v] for k, v in d.get("houses", {}).items()},
                dt2=d.get("dt2"))
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise RuleError(f"{self.path}: damaged: {exc}") from None
        self.state, self._mtime = st, m
        self._house_index = None
        return True

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        st = self.state
        data = {"commands": {str(k): _cmd_to_json(v) for k, v in st.commands.items()},
                "lists": {k: asdict(v) for k, v in st.lists.items()}, "code_lists": st.code_lists,
                "active_period_s": st.active_period_s, "sequences": st.sequences[-MAX_SEEN:],
                "refused": st.refused[-1000:], "history": st.history[-10000:],
                "houses": st.houses, "dt2": st.dt2}
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            self._mtime = self.path.stat().st_mtime_ns / 1e9

    # -- applying ----------------------------------------------------------------------------

    def seen_sequence(self, seq: int) -> bool:
        return seq in self.state.sequences

    def note_sequence(self, seq: int) -> None:
        self.state.sequences.append(seq)

    def is_duplicate(self, c: SecurityCommand) -> bool:
        """The same command (same id, same content) sent again: refused (ISMS.md §2, 999)."""
        old = self.state.commands.get(c.command_id)
        return old is not None and c.operation == 0 and old == c

    def apply_security(self, c: SecurityCommand, now: float) -> Outcome:
        if c.house_ids and house_scope(c, self.state.houses, self.house_id) is None:
            known = ", ".join(sorted({self.house_id, *self.state.houses} - {""}))
            return Outcome(AckResult.NONE, f"not for this house ({known})", "other-house")
        if c.operation == 1:
            old = self.state.commands.pop(c.command_id, None)
            if old is None:
                return Outcome(AckResult.NONE, f"delete: no command {c.command_id} in force", "unknown-command")
            self.state.history.append({"command": _cmd_to_json(old), "ended": now, "why": "deleted"})
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
            self.state.history.append({"command": _cmd_to_json(old), "ended": now, "why": "replaced"})
        self.state.commands[c.command_id] = c
        note = ""
        if any(r.subtype == RuleSubtype.URL for r in c.rules):
            note = "; URL rules match HTTP/1.x request lines only (TLS and QUIC hide the path)"
        return Outcome(AckResult.ALL, ("filter" if c.type == SecurityType.FILTER else "monitor") + " in force" + note)

    def apply_list(self, e: ListEntry, now: float) -> Outcome:
        key = f"{e.kind}:{e.command_id}"
        if e.operation == 1:
            if self.state.lists.pop(key, None) is None:
                return Outcome(AckResult.NONE, f"delete: no {e.kind} {e.command_id}", "unknown-command")
            return Outcome(AckResult.ALL, "deleted")
        try:
            for v in _split(e.contents):
                if e.type == 1:
                    normalise_domain(v.removeprefix("*."))
                else:
                    _ip_range(*(v.split("-", 1) if "-" in v else (v, "")))
        except (DomainError, RuleError) as exc:
            self._refuse(e.command_id, str(exc), now)
            return Outcome(AckResult.NONE, f"bad entry: {exc}", "bad-value")
        self.state.lists[key] = e
        return Outcome(AckResult.ALL, f"{e.kind} in force")

    def apply_code_list(self, c: CodeList) -> Outcome:
        self.state.code_lists.update(c.tables)
        return Outcome(AckResult.ALL, f"stored: {', '.join(sorted(c.tables)) or 'no tables'}")

    def apply_period(self, p: ActivePeriod) -> Outcome:
        self.state.active_period_s = p.period_s
        return Outcome(AckResult.ALL, f"active-resource period {p.period_s} s")

    def apply_basic(self, b: BasicData) -> Outcome:
        """Type 0 ``idcInfoManage``: the houses and their IP ranges (per-prefix houseId, DT 2 codes 1 and 3)."""
        for h in b.houses:
            if not h.house_id:
                return Outcome(AckResult.NONE, "bad basic data: a house without houseId", "bad-value")
        for h in b.houses:
            if b.operation == 1:
                self.state.houses.pop(h.house_id, None)
            else:
                self.state.houses[h.house_id] = [[g.start, g.end, g.reserved] for g in h.segments]
        if b.monitor in (1, 2):
            self.state.dt2 = b.monitor == 1
        self._house_index = None
        what = "deleted" if b.operation == 1 else "stored"
        n = sum(len(h.segments) for h in b.houses)
        dt2 = {1: "; DT 2 on", 2: "; DT 2 off"}.get(b.monitor, "")
        return Outcome(AckResult.ALL, f"basic data {what}: {len(b.houses)} house(s), {n} IP segment(s){dt2}")

    def _houses(self) -> _Intervals:
        if self._house_index is None:
            items = []
            for hid, segs in self.state.houses.items():
                for a, b, reserved in segs:
                    try:
                        items.append((_ip_range(a, b), _HouseSeg(hid, bool(reserved))))
                    except RuleError:
                        continue
            self._house_index = _Intervals(items)  # type: ignore[arg-type]
        return self._house_index

    def house_segment(self, ip: str) -> tuple[str, bool] | None:
        """(houseId, reserved) of the registered segment holding ``ip``, or None (not registered)."""
        try:
            k = _ip_int(ip)
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

    # -- matching ----------------------------------------------------------------------------

    def compiled(self) -> list[Compiled]:
        out = []
        for c in self.state.commands.values():
            scope = house_scope(c, self.state.houses, self.house_id)
            if scope is None:  # its houses left the basic data since: applies nowhere here
                continue
            try:
                out.append(compile_command(c, self.subdomains, scope))
            except RuleError as exc:  # stored before a change of beiand: say so, keep the rest
                log.error("isms: command %d: %s", c.command_id, exc)
        for e in self.state.lists.values():
            kind = "blacklist" if e.kind == "blacklist" else "nofilter"
            hit = RuleHit(f"order:isms-{kind}:{e.command_id}", "block") if kind == "blacklist" else \
                RuleHit(f"isms-nofilter:{e.command_id}", "exempt")
            cl = Compiled(hit, 3 if kind == "blacklist" else 2)
            for v in _split(e.contents):
                if e.type == 1:
                    cl.domains.append(normalise_domain(v.removeprefix("*.")))
                else:
                    cl.dst.append(_ip_range(*(v.split("-", 1) if "-" in v else (v, ""))))
            out.append(cl)
        return out


@dataclass(frozen=True)
class _HouseSeg:
    house_id: str
    reserved: bool


def _split(contents: str) -> list[str]:
    return [v.strip() for v in contents.replace(";", ",").replace("\n", ",").split(",") if v.strip()]


class CommandRules:
    """The enforcer's view (``beiand.enforce.rules.ExtraRules``): commands in force, reloaded on change.

    A command whose effectTime has not come or whose expiredTime has passed does not apply; the
    time windows are checked per match against the injected clock, so no reload is needed then.
    """

    def __init__(self, state_dir: Path, subdomains: bool = True, house_id: str = "") -> None:
        self.store = CommandStore(state_dir, subdomains, house_id)
        self._windows: dict[str, tuple[float, float]] = {}
        self.matcher = Matcher(())
        self._known_names: Callable[[str], list[Compiled] | None] | None = None
        self._build()

    def _build(self) -> None:
        self.matcher = Matcher(self.store.compiled())
        self._known_names = self.matcher._names.get if self.matcher.names_only and self.matcher.count else None
        self._windows = {f"order:isms:{c.command_id}" if c.type == SecurityType.FILTER else f"order:isms-monitor:{c.command_id}":
                         (c.effect_time, c.expired_time) for c in self.store.state.commands.values()}

    def reload(self) -> bool:
        try:
            changed = self.store.reload()
        except RuleError as exc:  # a damaged file keeps the commands in force
            log.error("%s", exc)
            return False
        if changed:
            self._build()
        return changed

    def match(self, obs: Observation, now: float) -> RuleHit | None:
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
        hit = m.match(obs)
        if hit is None:
            return None
        w = self._windows.get(hit.rule)
        if w is not None and not (w[0] <= now and (w[1] == 0 or now < w[1])):
            # the best hit is outside its window: look at the others (rare: only then the slow path)
            best = None
            for c in self.matcher.candidates(obs):
                cw = self._windows.get(c.hit.rule)
                if cw is not None and not (cw[0] <= now and (cw[1] == 0 or now < cw[1])):
                    continue
                if (best is None or c.priority > best.priority) and self.matcher._all(c, obs):
                    best = c
            return best.hit if best is not None else None
        return hit
