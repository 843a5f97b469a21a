"""The active resource: one row type for every reader of "what is served from our address space".

``/api/v1/observations`` (the daemon's live view), ``beiand audit`` (the access log over a window)
and the regulator's reports build this one row; each keeps its own JSON shape for compatibility
(``as_observation``, ``as_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from beiand.records.domains import registrable_domain


@dataclass
class ActiveResource:
    """A service seen in hosted space: a name (or an IP-only server), its account and verdict, when and how often."""

    name: str
    registrable_domain: str | None  # None when the name is itself a public suffix (the API says null)
    servers: set[str]  # "ip:port" (or the bare ip), as seen
    account: str
    kind: str  # dns-answer, tls-sni, http-host, quic-sni, ip-only
    verdict: str
    reason: str
    filing: str  # the filing number (备案号) that decided it, if any
    first_seen: float  # epoch seconds
    last_seen: float
    hits: int
    blocked: bool
    action: str = ""  # log, flag, block: the live view keeps one row per action

    @classmethod
    def of(cls, name: str, server: str, account: str, kind: str, verdict: str, *, reason: str = "", filing: str = "",
           first_seen: float = 0.0, last_seen: float = 0.0, hits: int = 0, action: str = "") -> ActiveResource:
        return cls(name, registrable_domain(name) if name else "", {server}, account, kind, verdict, reason, filing,
                   first_seen, last_seen, hits, action == "block", action)

    def as_dict(self) -> dict[str, Any]:
        """The audit's shape (JSON, CSV, HTML reports)."""
        return {"name": self.name, "registrable_domain": self.registrable_domain, "servers": sorted(self.servers),
                "account": self.account, "kind": self.kind, "verdict": self.verdict, "reason": self.reason, "filing": self.filing,
                "first_seen": self.first_seen, "last_seen": self.last_seen, "hits": self.hits, "blocked": self.blocked}

    def as_observation(self) -> dict[str, Any]:
        """The shape of ``/api/v1/observations`` (one server per row)."""
        return {"name": self.name, "registrable_domain": self.registrable_domain, "server": next(iter(sorted(self.servers)), ""),
                "account": self.account, "kind": self.kind, "verdict": self.verdict, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "hits": self.hits, "blocked": self.blocked, "action": self.action}
