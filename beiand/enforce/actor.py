"""The enforcer: the pipeline's actor between the policy's decision and the sinks.

It applies closure orders (any mode), the grace period for newly seen names, the circuit
breaker, and acts: TCP reset, HTTP block page, nftables entries. It never raises: a failed
action is counted and capture goes on. The decision it returns is what was done, so the access
log records the action actually taken, with the rule (and order number) that caused it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from beiand.enforce.nft import Nft
from beiand.enforce.packets import Injector, block_page
from beiand.enforce.rules import ExtraRules
from beiand.model import Action, Decision, Kind, Observation, Transport, VerdictKind
from beiand.policy.orders import OrderStore

log = logging.getLogger(__name__)
_BAD = frozenset({VerdictKind.UNFILED, VerdictKind.MISMATCH, VerdictKind.INACTIVE})


@dataclass(frozen=True)
class EnforceSettings:
    inline: bool = False  # True: the packet carrying the name is held (NFQUEUE) and dropped, so no race
    quic_block_seconds: int = 30
    grace_seconds: int = 0
    max_blocks_per_minute: int = 600
    max_unfiled_share: float = 0.5
    min_verdicts_for_share: int = 200
    contact: str = ""
    provider_name: str = ""


class Breaker:
    """Opens (enforcement falls back to dry-run) when blocks per minute exceed the ceiling or
    the share of bad verdicts jumps: the sign of a broken records feed. Closed by an operator."""

    def __init__(self, max_blocks: int, max_share: float, min_verdicts: int) -> None:
        self.max_blocks, self.max_share, self.min_verdicts = max_blocks, max_share, min_verdicts
        self.window = 0.0
        self.blocks = self.bad = self.total = 0
        self.open = False
        self.why = ""

    def record(self, now: float, bad: bool, block: bool) -> None:
        if now - self.window >= 60:
            self.window, self.blocks, self.bad, self.total = now, 0, 0, 0
        self.total += 1
        self.bad += bad
        self.blocks += block
        if self.open:
            return
        if self.blocks > self.max_blocks:
            self._trip(f"{self.blocks} blocks in the last minute (ceiling {self.max_blocks})")
        elif self.total >= self.min_verdicts and self.bad / self.total > self.max_share:
            self._trip(f"{self.bad} of {self.total} verdicts in the last minute not filed "
                       f"(> {self.max_share:.0%}): a broken records feed?")

    def _trip(self, why: str) -> None:
        self.open, self.why = True, why
        log.error("enforcement circuit breaker OPEN, falling back to dry-run: %s", why)

    def close(self) -> None:
        if self.open:
            log.warning("enforcement circuit breaker closed by the operator")
        self.open, self.why = False, ""
        self.window = 0.0


class Enforced(NamedTuple):
    """What the enforcer did with a decision, and (inline) whether the packet being decided is dropped."""

    decision: Decision
    drop: bool = False


class Enforcer:
    def __init__(self, settings: EnforceSettings, injector: Injector | None = None, nft: Nft | None = None,
                 orders: OrderStore | None = None, clock: Callable[[], float] = time.time,
                 rules: ExtraRules | None = None) -> None:
        self.s = settings
        self.injector = injector
        self.nft = nft
        self.orders = orders
        self.rules = rules  # the regulator's commands (ISMS): applied like closure orders
        self.clock = clock
        self.breaker = Breaker(settings.max_blocks_per_minute, settings.max_unfiled_share, settings.min_verdicts_for_share)
        self.first_seen: OrderedDict[str, float] = OrderedDict()
        self.actions: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.latency: list[float] = []
        self._page_cache: dict[str, bytes] = {}

    def __call__(self, obs: Observation, d: Decision) -> Decision:
        """The decision as acted on (``enforce`` without the inline packet verdict)."""
        return self.enforce(obs, d).decision

    def enforce(self, obs: Observation, d: Decision) -> Enforced:
        """Act on a decision; returns what was done and, inline, whether to drop the packet being
        decided (the NFQUEUE verdict, as a value: no flag on the enforcer to read afterwards)."""
        now = self.clock()
        order = self.orders.match(obs.name, obs.server_ip, now) if self.orders is not None else None
        forced = order is not None
        if order is not None:
            d = d._replace(action=Action.BLOCK, rule=f"order:{order.order}")
        elif self.rules is not None:
            hit = self.rules.match(obs, now)
            if hit is not None:
                if hit.effect == "block":  # a filter command: exactly a closure order
                    forced = True
                    d = d._replace(action=Action.BLOCK, rule=hit.rule)
                elif hit.effect == "exempt":  # noFilter: an allowlist entry
                    d = d._replace(verdict=d.verdict._replace(verdict=VerdictKind.EXEMPT, reason="isms-nofilter"),
                                   action=Action.LOG, rule=hit.rule)
                elif d.action is Action.LOG:  # monitor: flags, never blocks
                    d = d._replace(action=Action.FLAG, rule=hit.rule)
        v = d.verdict.verdict
        self.breaker.record(now, v in _BAD, d.action is Action.BLOCK)
        if d.action is not Action.BLOCK:
            return Enforced(d)
        if obs.kind is Kind.DNS_ANSWER:
            # An answer is not a connection: the connection it leads to is what gets blocked.
            return Enforced(d._replace(action=Action.FLAG, rule=d.rule + ":dns-answer"))
        if not forced:
            if self.breaker.open:
                return Enforced(d._replace(action=Action.FLAG, rule=f"breaker:would-block:{d.rule}"))
            if self.s.grace_seconds and obs.name:
                first = self.first_seen.get(obs.name)
                if first is None:
                    self.first_seen[obs.name] = first = now
                    if len(self.first_seen) > 100_000:
                        self.first_seen.popitem(last=False)
                if now - first < self.s.grace_seconds:
                    return Enforced(d._replace(action=Action.FLAG, rule=f"grace:would-block:{d.rule}"))
        done, drop = self._act(obs, d)
        if not done:
            return Enforced(d._replace(action=Action.FLAG, rule=d.rule + ":action-failed"), drop)
        return Enforced(d, drop)

    def _count(self, what: str) -> None:
        self.actions[what] = self.actions.get(what, 0) + 1

    def _act(self, obs: Observation, d: Decision) -> tuple[bool, bool]:
        """(done, drop the packet being decided when inline)."""
        what = "reset"
        drop = False
        try:
            inline = self.s.inline
            if obs.transport is Transport.UDP:
                what = "quic-drop"
                drop = True
                if self.nft is None:
                    return inline, drop  # inline: dropping the Initial is the action; passive needs nftables
                # This flow only (client address and port, server address and port): other clients and
                # other names on the same server are untouched (REGULATIONS.md: per name or per flow).
                self.nft.add(Nft.set_for(obs.server_ip, "quic"), (obs.client_ip, obs.client_port, obs.server_ip, obs.server_port),
                             self.s.quic_block_seconds)
            else:
                if self.injector is None or not obs.tcp_ack:
                    return False, drop
                drop = True
                seq, ack, ln = obs.tcp_seq, obs.tcp_ack, obs.tcp_len
                if obs.kind is Kind.HTTP_HOST:
                    what = "block-page"
                    page = self._page_cache.get(obs.name)
                    if page is None:
                        page = block_page(obs.name, self.s.contact, self.s.provider_name)
                        if len(self._page_cache) < 10_000:
                            self._page_cache[obs.name] = page
                    self.injector.block_page(obs.client_ip, obs.client_port, obs.server_ip, obs.server_port, seq, ack, ln, page,
                                             server_saw_segment=not inline)
                else:
                    self.injector.reset_both(obs.client_ip, obs.client_port, obs.server_ip, obs.server_port, seq, ack, ln,
                                             server_saw_segment=not inline)
                # An ip-only flow (no Host, no SNI) is reset like any other: never its server address
                # and port for everyone (anyone could black-hole a shared IP with one Host-less
                # request). Host- or prefix-wide blocking is only a closure order (beiand block add).
        except Exception as exc:  # counted, never stops capture
            self.errors[what] = self.errors.get(what, 0) + 1
            log.warning("enforcement %s for %s (%s:%d) failed: %s", what, obs.name or obs.server_ip, obs.server_ip,
                        obs.server_port, exc)
            return False, drop
        self._count(what)
        if len(self.latency) < 10_000:
            self.latency.append(max(0.0, time.time() - obs.ts))
        return True, drop

    def sync_ip_orders(self) -> None:
        """Put every active closure order on an address or prefix into the nftables sets (all traffic)."""
        if self.nft is None or self.orders is None:
            return
        now = self.clock()
        self.nft.flush("ip4")
        self.nft.flush("ip6")
        for o in self.orders.orders.values():
            if o.is_ip and o.active(now):
                self.nft.add(Nft.set_for(o.target, "ip"), Nft.address_or_prefix(o.target), int(o.until - now) if o.until else 0)
