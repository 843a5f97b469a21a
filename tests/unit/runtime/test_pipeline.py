"""The pipeline counts each decision once, by (kind, verdict, action) as acted on (issue 26): that
one counter feeds the observation, verdict, decision and verdict-action metrics and ``replay``'s
summary. Connection records through the pipeline: test_pipeline_connections.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from beiand.enforce.actor import Enforced
from beiand.lab import traffic as t
from beiand.model import Action, Decision, MetricKey, Observation, Outcome, VerdictKind
from beiand.net.decoder import Decoder, DecoderConfig
from beiand.runtime.pipeline import Pipeline, decision_counters
from tests.unit.runtime.test_pipeline_connections import OUT, T0, Collect, policy

K = MetricKey


class Seen:
    """A sink: what reached the sinks, by (kind, verdict, action)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, str]] = Counter()

    def on_decision(self, obs: Observation, d: Decision, outcome: Outcome = Outcome.NONE) -> None:
        acted = Action.FLAG if outcome in (Outcome.FAILED, Outcome.BREAKER_OPEN) else d.action
        self.counts[(obs.kind, d.verdict.verdict, acted)] += 1

    def flush(self) -> None:
        pass


class Failing(Seen):
    def on_decision(self, obs: Observation, d: Decision, outcome: Outcome = Outcome.NONE) -> None:
        raise RuntimeError("a broken sink")


class BlockUnfiled:
    """The records' verdict, with every unfiled name decided ``block``."""

    def __init__(self, tmp_path: Path) -> None:
        self.p = policy(tmp_path)
        self.inventory = self.p.inventory

    def decide(self, obs: Observation) -> Decision:
        d = self.p.decide(obs)
        return d._replace(action=Action.BLOCK) if d.verdict.verdict is VerdictKind.UNFILED else d


def fail_one(obs: Observation, d: Decision) -> Enforced:
    """An enforcer whose first block fails (issue 26: it never changes the decision, only reports its
    outcome): that decision is counted as acted on, a flag, as the access log has it."""
    if d.action is Action.BLOCK and obs.client_port == 40001:
        return Enforced(d, False, Outcome.FAILED)
    return Enforced(d, d.action is Action.BLOCK, Outcome.DONE if d.action is Action.BLOCK else Outcome.NONE)


def frames() -> list[bytes]:
    return [*t.tcp_session(OUT, "198.51.100.5", 40000, 443, t.client_hello("site1.example.cn")),
            *t.tcp_session(OUT, "198.51.100.6", 40001, 443, t.client_hello("bad.example.xyz")),
            *t.tcp_session(OUT, "198.51.100.7", 40002, 443, t.client_hello("bad.example.xyz")),
            *t.tcp_session(OUT, "203.0.113.9", 40003, 443, t.client_hello("elsewhere.example.com")),  # not hosted: not counted
            t.tcp(OUT, "198.51.100.8", 40004, 22, 1, 0, 0x02),  # a connection record: not a decision
            t.udp("198.51.100.53", OUT, 53, 5353, t.dns_response("site1.example.cn", ["198.51.100.5"]))]


def test_each_decision_is_counted_once_as_acted_on_and_as_the_sinks_saw_it(tmp_path: Path) -> None:
    seen = Seen()
    pipe = Pipeline(Decoder(DecoderConfig(conns=True)), BlockUnfiled(tmp_path), [Failing(), seen, Collect()],  # type: ignore[list-item, arg-type]
                    actor=fail_one)
    pipe.run((T0 + i * 0.001, 1, f) for i, f in enumerate(frames()))
    assert pipe.decisions == seen.counts == {("tls-sni", "filed", "log"): 1, ("tls-sni", "unfiled", "block"): 1,
                                             ("tls-sni", "unfiled", "flag"): 1, ("dns-answer", "filed", "log"): 1}
    assert pipe.sink_errors["Failing"] == 4  # a failing sink changes nothing in the count
    assert pipe.verdicts == {"filed": 2, "unfiled": 2} and pipe.kinds == {"tls-sni": 3, "dns-answer": 1}  # views of it
    assert pipe.skipped["not-hosted"] == 1 and pipe.connections == {"in": 2}  # the SYN to port 22, the hosted resolver's answer


def test_metrics_are_the_decision_counters_frame_errors_and_connection_records(tmp_path: Path) -> None:
    pipe = Pipeline(Decoder(DecoderConfig(conns=True)), BlockUnfiled(tmp_path), [Collect()], actor=fail_one)  # type: ignore[list-item, arg-type]
    pipe.run((T0 + i * 0.001, 1, f) for i, f in enumerate(frames()))
    pipe.frame_errors["RecursionError"] += 2
    assert pipe.metrics() == {
        K("beiand_observations", ("tls-sni",)): 3, K("beiand_observations", ("dns-answer",)): 1,
        K("beiand_verdicts", ("filed",)): 2, K("beiand_verdicts", ("unfiled",)): 2,
        K("beiand_decisions", ("log",)): 2, K("beiand_decisions", ("block",)): 1, K("beiand_decisions", ("flag",)): 1,
        K("beiand_verdict_actions", ("filed", "log")): 2, K("beiand_verdict_actions", ("unfiled", "block")): 1,
        K("beiand_verdict_actions", ("unfiled", "flag")): 1,
        K("beiand_decode_errors", ("decide:RecursionError",)): 2, K("beiand_connection_records", ("in",)): 2}
    assert all(type(label) is str for k in pipe.metrics() for label in k.labels)  # plain strings: cheap to pickle


def test_decision_counters_add_up_by_each_label() -> None:
    c = decision_counters({("tls-sni", "unfiled", "flag"): 3, ("quic-sni", "unfiled", "block"): 1, ("tls-sni", "filed", "log"): 2})
    assert c == {K("beiand_observations", ("tls-sni",)): 5, K("beiand_observations", ("quic-sni",)): 1,
                 K("beiand_verdicts", ("unfiled",)): 4, K("beiand_verdicts", ("filed",)): 2,
                 K("beiand_decisions", ("flag",)): 3, K("beiand_decisions", ("block",)): 1, K("beiand_decisions", ("log",)): 2,
                 K("beiand_verdict_actions", ("unfiled", "flag")): 3, K("beiand_verdict_actions", ("unfiled", "block")): 1,
                 K("beiand_verdict_actions", ("filed", "log")): 2}
