"""The enforcer: the pipeline's actor between the decision and the sinks.

It acts on a finished :class:`~beiand.model.Decision` (closure orders, the regulator's commands
and grace are the policy's overlays: ``beiand.policy.overlays``): TCP reset, HTTP block page,
nftables entries. It never rewrites a verdict or an action (DESIGN.md); what it could not do is
its own :class:`~beiand.model.Outcome` (the circuit breaker is open, the action failed), logged
beside the decision. It never raises: a failed action is counted and capture goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from beiand.enforce.nft import Nft
from beiand.enforce.packets import Injector, block_page
from beiand.model import FORCED, Action, Decision, Kind, MetricKey, MetricValues, Observation, Outcome, Transport, VerdictKind

log = logging.getLogger(__name__)
_BAD = frozenset({VerdictKind.UNFILED, VerdictKind.MISMATCH, VerdictKind.INACTIVE})


@dataclass(frozen=True)
class EnforceSettings:
    inline: bool = False  # True: the packet carrying the name is held (NFQUEUE) and dropped, so no race
    quic_block_seconds: int = 30
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
    """What the enforcer did with a decision: the decision (unchanged), whether the packet being
    decided is dropped (inline: the NFQUEUE verdict, as a value) and the outcome."""

    decision: Decision
    drop: bool = False
    outcome: Outcome = Outcome.NONE


class Enforcer:
    def __init__(self, settings: EnforceSettings, injector: Injector | None = None, nft: Nft | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.s = settings
        self.injector = injector
        self.nft = nft
        self.clock = clock
        self.breaker = Breaker(settings.max_blocks_per_minute, settings.max_unfiled_share, settings.min_verdicts_for_share)
        self.actions: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.outcomes: dict[str, int] = {}
        self.latency: list[float] = []
        self._page_cache: dict[str, bytes] = {}

    def __call__(self, obs: Observation, d: Decision) -> Enforced:
        return self.enforce(obs, d)

    def enforce(self, obs: Observation, d: Decision) -> Enforced:
        """Act on a decision; returns it unchanged with, inline, whether to drop the packet being
        decided and what was done (the outcome, logged beside the decision)."""
        block = d.action is Action.BLOCK
        self.breaker.record(obs.ts, d.verdict.verdict in _BAD, block)
        if not block or obs.kind is Kind.DNS_ANSWER:  # an answer is never blocked (the decider flags it)
            return Enforced(d)
        if self.breaker.open and d.by not in FORCED:
            self._outcome(Outcome.BREAKER_OPEN)
            return Enforced(d, False, Outcome.BREAKER_OPEN)
        done, drop = self._act(obs, d)
        outcome = Outcome.DONE if done else Outcome.FAILED
        self._outcome(outcome)
        return Enforced(d, drop, outcome)

    def _outcome(self, o: Outcome) -> None:
        self.outcomes[o] = self.outcomes.get(o, 0) + 1

    def metrics(self) -> MetricValues:
        """The enforcer's counters: actions done and failed, by what, and blocks by outcome."""
        out: MetricValues = {MetricKey("beiand_enforcement_actions", (k,)): v for k, v in self.actions.items()}
        out.update({MetricKey("beiand_enforcement_errors", (k,)): v for k, v in self.errors.items()})
        out.update({MetricKey("beiand_enforcement_outcomes", (str(k),)): v for k, v in self.outcomes.items()})
        return out

    def take_latency(self) -> list[float]:
        """The action latencies (seconds from the packet to the action) since the last call."""
        lat, self.latency = self.latency, []
        return lat

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
