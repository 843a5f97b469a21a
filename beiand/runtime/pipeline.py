"""The one wiring of beiand's stages, shared by the daemon, ``replay``, ``audit --pcap`` and tests.

frames → ``Decoder`` → Observation → (DNS: is an answered address ours?) → ``Decider`` (the
records' verdict, then the overlays at the observation's time) → Decision → the enforcer (acts,
returns its outcome) → sinks (the decision and the outcome). Deciding never acts; the enforcer
never rewrites a decision (DESIGN.md). One failing sink never stops the others.

Connection records (issue 19): an observation of kind ``conn`` (a flow no name came for) is never
decided, enforced or counted as a verdict: the inventory says whether it went into hosted space
(``in``: the server is ours) or out of it (``out``: the client is), and the sinks that keep
connection records (``on_connection``: the access log, JSON lines) get its record. A named flow
whose server is not ours but whose client is (a hosted host connecting out) is logged the same
way, with its name and the ``not-hosted`` verdict, after the unchanged decision.

Decisions are counted here, once, by (kind, verdict, action) (``Pipeline.decisions``): the daemon's
observation, verdict and decision metrics and ``replay``'s summary are read from that one counter.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

from beiand.enforce.actor import Enforced
from beiand.model import UNNAMED, AccessRecord, Action, Decision, Kind, MetricKey, MetricValues, Observation, Outcome, VerdictKind
from beiand.net.decoder import FRAME_EXCEPTIONS, Decoder
from beiand.policy import Policy
from beiand.policy.overlays import Decider
from beiand.sinks import ConnectionSink, OutputClosed, Sink

log = logging.getLogger("beiand.pipeline")
_tuple_new = tuple.__new__
_CONN = Kind.CONN  # the name operators filter on (before runtime/)


def decision_counters(counts: Mapping[tuple[str, str, str], int]) -> MetricValues:
    """Decisions by (kind, verdict, action) → the observation, verdict, decision and verdict-action counters."""
    c: MetricValues = {}
    for (kind, verdict, action), n in counts.items():
        kind, verdict, action = str(kind), str(verdict), str(action)  # plain strings: an enum member pickles 2x bigger
        for k in (MetricKey("beiand_observations", (kind,)), MetricKey("beiand_verdicts", (verdict,)),
                  MetricKey("beiand_decisions", (action,)), MetricKey("beiand_verdict_actions", (verdict, action))):
            c[k] = c.get(k, 0) + n
    return c


class Pipeline:
    def __init__(self, decoder: Decoder, policy: Policy | Decider, sinks: Sequence[Sink] = (),
                 actor: Callable[[Observation, Decision], Enforced] | None = None, gateway: str = "") -> None:
        self.decoder = decoder
        # The decider (a bare Policy: the records alone, no overlays)
        self.policy = policy if isinstance(policy, Decider) else Decider(policy)
        self.actor = actor  # the enforcer (Enforcer.enforce): acts on a decision and returns what was done
        self.sinks = list(sinks)
        # Every decision into hosted space, as acted on, by (kind, verdict, action): counted once, here.
        self.decisions: Counter[tuple[str, str, str]] = Counter()
        self.skipped: Counter[str] = Counter()
        self.sink_errors: Counter[str] = Counter()
        self.frame_errors: Counter[str] = Counter()  # observations whose decision raised, by exception type
        self.connections: Counter[str] = Counter()  # connection records written, by direction
        self.gateway = gateway  # written into connection records
        # Sinks that keep connection records; none: they are not built at all.
        self.conn_sinks: list[ConnectionSink] = [cast(ConnectionSink, s) for s in self.sinks
                                                 if callable(getattr(s, "on_connection", None))]

    @property
    def verdicts(self) -> Counter[str]:
        """Decisions by verdict (a view of :attr:`decisions`)."""
        out: Counter[str] = Counter()
        for (_, verdict, _), n in self.decisions.items():
            out[verdict] += n
        return out

    @property
    def kinds(self) -> Counter[str]:
        """Decisions by kind of observation (a view of :attr:`decisions`)."""
        out: Counter[str] = Counter()
        for (kind, _, _), n in self.decisions.items():
            out[kind] += n
        return out

    def metrics(self) -> MetricValues:
        """The pipeline's own counters: decisions (observations, verdicts, actions), observations
        whose decision raised (as decode errors ``decide:<exception>``), connection records by direction."""
        m = decision_counters(self.decisions)
        for k, v in self.frame_errors.items():
            m[MetricKey("beiand_decode_errors", (f"decide:{k}",))] = v
        for direction, n in self.connections.items():
            m[MetricKey("beiand_connection_records", (direction,))] = n
        return m

    def feed(self, ts: float, frame: bytes, linktype: int) -> bool:
        """One frame of the live worker: nothing it carries may stop the loop (issue 17). Returns
        True when the enforcer (inline) drops this frame: the NFQUEUE verdict, as a value."""
        obs = self.decoder.feed(ts, frame, linktype)
        return self.decide(obs) if obs else False

    def decide(self, obs: Sequence[Observation], later: list[tuple[Observation, Decision, Outcome]] | None = None) -> bool:
        """Decide and act on the observations one frame completed; True when the enforcer drops
        the frame (inline). A failure to decide is counted, never raised (issue 17). ``later``:
        the decisions are left there for :meth:`record` instead of going to the sinks now (inline:
        the verdict goes out first, the access log is written after)."""
        drop = False
        for o in obs:
            try:
                drop = self._observe(o, later)[1] or drop
            except OutputClosed:
                raise
            except Exception as exc:
                # A bug in deciding, not in the traffic: count it, drop this observation, go on.
                name = type(exc).__name__
                self.frame_errors[name if name in FRAME_EXCEPTIONS else "other"] += 1
                if not self.frame_errors.total() & (self.frame_errors.total() - 1):  # 1, 2, 4, 8...: rate-limited
                    log.error("deciding an observation raised %s (%d so far); dropped", name, self.frame_errors.total())
        return drop

    def tick(self, now: float) -> None:
        """The live worker, about once a second: what the decoder completes without a frame (the
        connection records of a quiet link, issue 19)."""
        for o in self.decoder.tick(now):
            try:
                self._observe(o)
            except OutputClosed:
                raise
            except Exception as exc:
                name = type(exc).__name__
                self.frame_errors[name if name in FRAME_EXCEPTIONS else "other"] += 1

    def run(self, frames: Iterable[tuple[float, int, bytes]]) -> None:
        feed = self.decoder.feed
        observe = self.observe
        connection = self._connection
        for ts, linktype, frame in frames:
            obs = feed(ts, frame, linktype)
            if obs:
                for o in obs:
                    if o.kind is _CONN:  # most of a flood of new flows: straight to its record
                        connection(o, None)
                    else:
                        observe(o)
        self.finish()

    def finish(self) -> None:
        for o in self.decoder.flush():
            self.observe(o)
        for s in self.sinks:
            try:
                s.flush()
            except OutputClosed:
                raise
            except Exception:
                log.exception("sink %s failed to flush", type(s).__name__)
                self.sink_errors[type(s).__name__] += 1

    def observe(self, obs: Observation) -> Decision | None:
        return self._observe(obs)[0]

    def record(self, later: Sequence[tuple[Observation, Decision, Outcome]]) -> None:
        """Hand decisions taken by :meth:`decide` with ``later`` to the sinks."""
        for obs, decision, outcome in later:
            self._sink(obs, decision, outcome)

    def _sink(self, obs: Observation, decision: Decision, outcome: Outcome = Outcome.NONE) -> None:
        for s in self.sinks:
            try:
                s.on_decision(obs, decision, outcome)
            except OutputClosed:
                raise
            except Exception:
                log.exception("sink %s failed", type(s).__name__)
                self.sink_errors[type(s).__name__] += 1

    def _observe(self, obs: Observation, later: list[tuple[Observation, Decision, Outcome]] | None = None
                 ) -> tuple[Decision | None, bool]:
        """The decision as acted on, and whether the enforcer drops the packet (inline)."""
        policy = self.policy
        if obs.kind is Kind.CONN:
            self._connection(obs, None)
            return None, False
        if obs.kind is Kind.DNS_ANSWER:
            # A DNS answer is an observation into hosted space when it points a name at us.
            hosted = [a for a in obs.answers if policy.inventory.lookup(a) is not None]
            if not hosted:
                self.skipped["dns-answer-not-hosted"] += 1
                return None, False
            # obs._replace(server_ip=hosted[0], server_port=0, detail=...), without its keyword handling
            detail = (obs.detail + " " if obs.detail else "") + f"resolver={obs.server_ip}"
            obs = _tuple_new(Observation, (*obs[:3], hosted[0], 0, *obs[5:10], detail, *obs[11:]))
        decision = policy.decide(obs)
        if decision.verdict.verdict is VerdictKind.NOT_HOSTED:
            self.skipped["not-hosted"] += 1
            if obs.packets and self.conn_sinks:  # a named flow: is it a hosted host connecting out?
                self._connection(obs, decision)
            return decision, False
        drop = False
        outcome = Outcome.NONE
        if self.actor is not None:
            try:
                _, drop, outcome = self.actor(obs, decision)
            except Exception:
                log.exception("enforcer failed")
                self.sink_errors["enforcer"] += 1
                outcome = Outcome.FAILED if decision.action is Action.BLOCK else Outcome.NONE
        # counted as the access log has it: a block the enforcer could not carry out is a flag
        acted = Action.FLAG if outcome is Outcome.FAILED or outcome is Outcome.BREAKER_OPEN else decision.action
        self.decisions[(obs.kind, decision.verdict.verdict, acted)] += 1  # StrEnum members hash as their values
        if later is not None:
            later.append((obs, decision, outcome))
        else:
            self._sink(obs, decision, outcome)
        return decision, drop

    def _connection(self, obs: Observation, decision: Decision | None) -> None:
        """The connection record of a flow no name came for (``decision`` None), or of a named flow
        whose server is not hosted: ``in`` when the server is ours, ``out`` when the client is."""
        if not self.conn_sinks:
            return
        lookup = self.policy.inventory.lookup
        direction = "in"
        prefix = lookup(obs.server_ip) if decision is None else None
        if prefix is None:
            prefix = lookup(obs.client_ip)
            direction = "out"
            if prefix is None:
                self.skipped["conn-not-hosted"] += 1
                return
        if decision is None:
            verdict, reason, filing = UNNAMED, obs.detail, ""
        else:
            f = decision.verdict.filing
            verdict, reason, filing = decision.verdict.verdict, decision.verdict.reason, f.number if f is not None else ""
        # tuple.__new__: every field given, without the NamedTuple's keyword handling (hot: one per new flow)
        rec = _tuple_new(AccessRecord, (
            int(obs.ts * 1000), prefix.account, obs.client_ip, obs.client_port, obs.server_ip, obs.server_port, obs.transport,
            obs.kind, obs.name or obs.name_seen, verdict, "log", filing, self.gateway, reason, "", "", "", direction,
            obs.method, obs.url, obs.packets, obs.octets, "", ""))  # outcome, records_version (the access-log sink adds it)
        self.connections[direction] += 1
        for s in self.conn_sinks:
            try:
                s.on_connection(rec)
            except OutputClosed:
                raise
            except Exception:
                log.exception("sink %s failed", type(s).__name__)
                self.sink_errors[type(s).__name__] += 1
