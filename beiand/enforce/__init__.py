"""Enforcement (REGULATIONS.md O1, O2, O5, O6): stop unfiled services on the wire, safely.

``Enforcer`` is the pipeline's actor: it carries out a finished ``Decision`` (reset, block page,
nftables entry) and reports its outcome (done, breaker open, failed); closure orders, the
regulator's commands and grace are decided before it, by the policy's overlays.
``Injector`` sends hand-built packets on raw sockets opened once; ``Nft`` manages beiand's own
``inet beiand`` table; ``nfqueue`` is the inline path. Closure orders (关停指令) are the policy's
(``beiand.policy.orders``).
"""

from beiand.enforce.actor import Breaker, Enforcer, EnforceSettings
from beiand.enforce.packets import Injector, block_page

__all__ = ["Breaker", "EnforceSettings", "Enforcer", "Injector", "block_page"]
