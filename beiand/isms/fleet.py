"""The licence's CU and its fleet (issue 30): what the gateways following the decision store did.

``beiand isms serve`` writes SMMS's commands to the decision store; every gateway applies them
through its overlays and says in its heartbeat (``DecisionStore.gateways``) the version it
applies, the houses (机房) it serves and whether it captures. This module reads those heartbeats
(pure: no I/O, a clock passed in):

- :func:`view`: each gateway of the fleet, up or down (a heartbeat older than
  ``isms.gateway_down_after``, or the last one of a gateway that stopped);
- :class:`AckTracker`: a command's DT 10 ack once every gateway in its scope (its houses; none:
  every gateway) applies it, or at ``isms.ack_wait`` with those that have not counted
  (resultCode 1, or 2 when none has); a down gateway is not waited for. With ``isms.ack_update``,
  a second ack (resultCode 0) once the late ones have (a gateway restarted and caught up);
- :func:`house_states`: DT 7's houses and the faulty ones (a house is faulty while a gateway
  serving it is down or not capturing, or no gateway serves it);
- :func:`basic_mismatches`: the basic data SMMS manages (type 0 ``idcInfoManage``) against the
  inventory: a hosted prefix in no segment of its house, or in another house's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from beiand.isms.basicinfo import prefix_house
from beiand.isms.service import Ack
from beiand.isms.wire.codes import AckResult, AckType

log = logging.getLogger(__name__)
MAX_MSG = 1024
# The acks that say what the gateways did: the overlays every gateway applies. Code lists, basic
# data and the report period are the CU's own state: acked as they are.
FLEET_TYPES = frozenset({AckType.MONITOR, AckType.FILTER, AckType.BLACKLIST, AckType.NO_FILTER})


@dataclass(frozen=True)
class GatewayView:
    name: str
    version: int  # the decision store version every worker of it applies
    heartbeat_at: float
    houses: tuple[str, ...]  # the houses it serves (none known: counted for every house)
    healthy: bool  # capturing, records loaded, log writable
    up: bool
    why: str = ""  # why it is down: "stopped", "silent 42 s"
    isms: bool = True  # it applies the regulator's commands ([isms] on, the overlay loaded)
    refused: frozenset[int] = frozenset()  # store versions whose row it refused as invalid (the last 100)


def not_applied(g: GatewayView, version: int) -> str:
    """Why ``g`` does not enforce the command committed at ``version`` ("" when it does): its
    workers hold an older version, none of them captures, it applies no ISMS command, or it
    refused the row. A version not known (0) is never counted as applied."""
    if version <= 0 or g.version < version:
        return "applying" if g.up else g.why
    if not g.isms:
        return "isms off"
    if version in g.refused:
        return "refused the row"
    if not g.healthy:
        return "not capturing"
    return ""


def view(rows: Iterable[Mapping[str, Any]], now: float, down_after: float, retired_after: float) -> list[GatewayView]:
    """The fleet from the heartbeats: a gateway silent for ``retired_after`` is no longer part of
    it; one silent for ``down_after`` (or three of its own heartbeat intervals, when longer), or
    whose last heartbeat says it stopped, is down."""
    out = []
    for g in rows:
        age = now - float(g.get("heartbeat_at", 0.0))
        if age > retired_after:
            continue
        st = g.get("state") or {}
        if not isinstance(st, Mapping):
            st = {}
        limit = max(down_after, 3 * float(st.get("heartbeat_interval") or 0.0))
        why = "stopped" if st.get("stopped") else (f"silent {age:.0f} s" if age > limit else "")
        houses = tuple(str(h) for h in st.get("houses") or () if str(h))
        refused = frozenset(int(v) for v in st.get("refused") or () if str(v).isdigit())
        out.append(GatewayView(str(g["gateway"]), int(g.get("version", 0)), float(g.get("heartbeat_at", 0.0)), houses,
                               bool(st.get("healthy", True)), not why, why, bool(st.get("isms", True)), refused))
    return sorted(out, key=lambda g: g.name)


def in_scope(g: GatewayView, houses: Sequence[str]) -> bool:
    """A gateway applies a command for ``houses`` (none: every house) when it serves one of them,
    or says nothing of its houses (it applies every command; the matcher limits it by prefix)."""
    return not houses or not g.houses or bool(set(houses) & set(g.houses))


def _names(gws: Sequence[GatewayView], room: int, version: int = 0) -> str:
    parts = []
    for g in gws:
        why = not_applied(g, version) if version else ("" if g.up else g.why)
        parts.append(f"{g.name} ({why})" if why and why != "applying" else g.name)
    out = ""
    for i, p in enumerate(parts):
        nxt = f"{out}, {p}" if out else p
        if len(nxt) > room - 16:  # room for ", … (+NNNNN)"
            return f"{out}, … (+{len(parts) - i})" if out else f"… ({len(parts)})"
        out = nxt
    return out


@dataclass
class _Pending:
    ack: Ack
    since: float
    first: bool = True  # the first ack is still to go
    late: tuple[str, ...] = ()  # the gateways that had not applied it at the first ack


class AckTracker:
    """The acks of the commands written to the decision store, held until the fleet applied them."""

    def __init__(self, wait: float = 10.0, follow: float = 86400.0, update: bool = True) -> None:
        self.wait, self.follow, self.update = wait, follow, update
        self.pending: list[_Pending] = []
        self._ready: list[Ack] = []

    def add(self, acks: Iterable[Ack], now: float) -> None:
        for a in acks:
            if a.type not in FLEET_TYPES or a.result == AckResult.NONE:
                self._ready.append(a)  # nothing for the gateways to apply: as it is
            elif a.houses:  # ISMS.md §3: an ack per commandId and houseId listed, each with its house's gateways
                self.pending += [_Pending(dataclasses.replace(a, house_id=h, houses=(h,)), now) for h in dict.fromkeys(a.houses)]
            else:
                self.pending.append(_Pending(a, now))

    def due(self, gws: Sequence[GatewayView], now: float) -> list[Ack]:
        """The acks to send now (first acks and second ones)."""
        out, self._ready = self._ready, []
        keep = []
        for p in self.pending:
            a = p.ack
            scope = [g for g in gws if in_scope(g, a.houses)]
            todo = [g for g in scope if not_applied(g, a.version)]
            if p.first:
                if any(g.up for g in todo) and now < p.since + self.wait:
                    keep.append(p)  # an up gateway is still applying it
                    continue
                out.append(self._first(a, scope, todo))
                p.first, p.late = False, tuple(g.name for g in todo)
                if todo and self.update and scope:
                    keep.append(p)
            elif not todo:
                late = _names([g for g in scope if g.name in p.late], 300, 0)
                msg = f"{a.msg}; fleet: applied on all {len(scope)} gateway(s) (late: {late})"
                out.append(dataclasses.replace(a, msg=msg[:MAX_MSG]))
            elif now > p.since + self.follow:
                log.warning("isms: command %d (house %s) still not applied on %s after %.0f s: no second ack", a.command_id,
                            a.house_id or "all", ", ".join(g.name for g in todo), now - p.since)
            else:
                keep.append(p)
        self.pending = keep
        return out

    @staticmethod
    def _first(a: Ack, scope: Sequence[GatewayView], todo: Sequence[GatewayView]) -> Ack:
        if not scope:
            where = f"house {a.house_id}" if a.houses else "the licence"
            return dataclasses.replace(a, result=AckResult.NONE,
                                       msg=f"{a.msg}; fleet: no gateway follows the decision store for {where}"[:MAX_MSG])
        done = len(scope) - len(todo)
        result = a.result if not todo else (AckResult.SOME if done else AckResult.NONE)
        msg = f"{a.msg}; fleet: applied on {done} of {len(scope)} gateway(s)"
        if todo:
            msg += f"; not yet: {_names(todo, max(40, MAX_MSG - len(msg) - 12), a.version)}"
        return dataclasses.replace(a, result=result, msg=msg[:MAX_MSG])

    def behind(self, gws: Sequence[GatewayView], now: float) -> tuple[int, float]:
        """(up gateways that have not applied a command they are in scope of, the age of the
        oldest such command): what ``BeiandIsmsGatewayBehind`` alerts on."""
        names: set[str] = set()
        oldest = 0.0
        for p in self.pending:
            late = [g for g in gws if g.up and in_scope(g, p.ack.houses) and not_applied(g, p.ack.version)]
            if late:
                names.update(g.name for g in late)
                oldest = max(oldest, now - p.since)
        return len(names), oldest

    def dump(self) -> list[dict[str, Any]]:
        """The commands followed, as data (the CU keeps them across a restart)."""
        return [{"ack": {"command_id": p.ack.command_id, "type": int(p.ack.type), "result": int(p.ack.result), "msg": p.ack.msg,
                         "house_id": p.ack.house_id, "version": p.ack.version, "houses": list(p.ack.houses)},
                 "since": p.since, "first": p.first, "late": list(p.late)} for p in [*self._held(), *self.pending]]

    def _held(self) -> list[_Pending]:
        return [_Pending(a, 0.0, True) for a in self._ready]  # acked as they are at the next round

    def load(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for r in rows:
            d = r["ack"]
            a = Ack(int(d["command_id"]), AckType(int(d["type"])), AckResult(int(d["result"])), str(d["msg"]),
                    str(d["house_id"]), int(d["version"]), tuple(str(h) for h in d["houses"]))
            if a.type not in FLEET_TYPES or a.result == AckResult.NONE:
                self._ready.append(a)
            else:
                self.pending.append(_Pending(a, float(r["since"]), bool(r["first"]), tuple(str(x) for x in r["late"])))

    def status(self, gws: Sequence[GatewayView]) -> list[dict[str, Any]]:
        return [{"commandId": p.ack.command_id, "houseId": p.ack.house_id, "version": p.ack.version, "since": p.since,
                 "acked": not p.first,
                 "not_applied": [g.name for g in gws if in_scope(g, p.ack.houses) and not_applied(g, p.ack.version)]}
                for p in self.pending]


def house_states(gws: Sequence[GatewayView], houses: Iterable[str]) -> tuple[list[str], list[str]]:
    """DT 7: (every house, the faulty ones). The houses are those given (the inventory's, the basic
    data's) and those the gateways name. A house is faulty while a gateway serving it is down or
    not capturing (its traffic is not wholly watched), or when no gateway serves it. Gateways
    that name no house count for every house."""
    every = sorted(set(houses) | {h for g in gws for h in g.houses})
    faulty = []
    for h in every:
        serving = [g for g in gws if not g.houses or h in g.houses]
        if not serving or any(not (g.up and g.healthy) for g in serving):
            faulty.append(h)
    return every, faulty


def _span(a: str, b: str) -> tuple[int, int, int]:
    lo, hi = ipaddress.ip_address(a), ipaddress.ip_address(b or a)
    return lo.version, int(lo), int(hi)


def basic_mismatches(houses: Mapping[str, Sequence[Sequence[Any]]], prefixes: Iterable[Any], limit: int = 50,
                     own: str = "") -> list[str]:
    """The basic data SMMS manages (type 0: houseId → [[start, end, reserved], ...]) checked
    against the inventory's prefixes (``HostedPrefix``; active and pending, with their ``house``):
    a prefix inside no registered segment (未登记: DT 2 regError 3 once it serves), a prefix
    registered in another house than the inventory names, a prefix in a segment registered as
    reserved (登记保留: regError 1 once it serves). The first ``limit`` problems, each a sentence."""
    segs: list[tuple[int, int, int, str, bool]] = []
    for hid, rows in houses.items():
        for row in rows:
            try:
                v, lo, hi = _span(str(row[0]), str(row[1]))
            except (ValueError, IndexError):
                continue
            segs.append((v, lo, hi, hid, bool(row[2]) if len(row) > 2 else False))
    out: list[str] = []
    for p in prefixes:
        if str(getattr(p.state, "value", p.state)) == "closed":
            continue
        net = ipaddress.ip_network(p.prefix)
        v, lo, hi = net.version, int(net.network_address), int(net.broadcast_address)
        holding = [s for s in segs if s[0] == v and s[1] <= lo and hi <= s[2]]
        house = prefix_house(p, own)  # as DT 1 and the rows place it
        if not holding:
            what = f"{p.prefix} (account {p.account}{', house ' + house if house else ''}): in no IP segment of the basic data (未登记)"
        elif house and all(s[3] != house for s in holding):
            what = f"{p.prefix}: the inventory names house {house}, the basic data {', '.join(sorted({s[3] for s in holding}))}"
        elif any(s[4] for s in holding):
            what = f"{p.prefix} (account {p.account}): registered as reserved (登记保留) but allocated in the inventory"
        else:
            continue
        out.append(what)
        if len(out) >= limit:
            break
    return out
