"""The decision: hosted inventory, Observation → Verdict → Decision, and the overlays.

``verdict.py`` holds ``Policy`` (the records' verdict, cached); ``overlays.py`` the ``Decider``
(the verdict, then closure orders, the regulator's commands, exemptions and grace, evaluated at
the observation's time: the final ``Decision``); ``orders.py`` the authority's closure orders
(关停指令); ``matcher.py`` the compiled rule sets of the regulator's commands; ``inventory.py``
the hosted prefixes and their accounts. Deciding never acts: the sinks and the enforcer act on
the returned ``Decision`` (DESIGN.md).
"""

from __future__ import annotations

from beiand.policy.overlays import Decider, lookup_answer
from beiand.policy.verdict import REASONS, Policy, PolicyConfig, PolicyError

__all__ = ["REASONS", "Decider", "Policy", "PolicyConfig", "PolicyError", "lookup_answer"]
