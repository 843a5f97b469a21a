"""The decision: hosted inventory, closure orders, and Observation → Verdict → Decision.

``verdict.py`` holds ``Policy`` (one entry point, ``decide``); ``inventory.py`` the hosted
prefixes and their accounts; ``orders.py`` the authority's closure orders (关停指令). Deciding
never acts: the sinks and the enforcer act on the returned ``Decision`` (DESIGN.md).
"""

from __future__ import annotations

from beiand.policy.verdict import REASONS, Policy, PolicyConfig, PolicyError, lookup_answer

__all__ = ["REASONS", "Policy", "PolicyConfig", "PolicyError", "lookup_answer"]
