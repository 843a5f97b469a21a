"""Rules from outside the policy that the enforcer applies like closure orders.

The enforcer knows only this interface; the regulator's commands (``beiand.report.isms``) are
one implementation, wired in by the daemon, so ``enforce`` imports nothing above it.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from beiand.model import Observation


class RuleHit(NamedTuple):
    rule: str  # into Decision.rule: "order:<ref>" for a block (the access log's order column), else a flag rule
    effect: str  # "block" (like a closure order), "flag" (monitor), "exempt" (an allowlist entry)


class ExtraRules(Protocol):
    def reload(self) -> bool:
        """Re-read the rules if they changed (called about four times a second by each worker)."""
        ...

    def match(self, obs: Observation, now: float) -> RuleHit | None: ...
