"""The passive audit: from the access log (or a capture) over a window, no traffic sent."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from beiand.model import FilingStatus, PrefixState
from beiand.policy.inventory import Inventory
from beiand.records.domains import registrable_domain
from beiand.records.index import RecordIndex, entry_addresses
from beiand.report.audit.findings import Finding
from beiand.report.resource import ActiveResource

# (name, server, port, account, verdict, kind, action, reason, filing) → [first_ms, last_ms, hits]
Summary = Mapping[tuple[str, str, int, str, str, str, str, str, str], list[int]]


Resource = ActiveResource  # the one active-resource row (beiand.report.resource)


def resources(summary: Summary) -> list[ActiveResource]:
    """Every name and IP-only service seen in hosted space, merged across servers and kinds."""
    out: dict[tuple[str, str, str], ActiveResource] = {}
    for (name, server, port, account, verdict, kind, action, reason, filing), (first, last, hits) in summary.items():
        subject = name or f"{server}:{port}"
        key = (subject, account, verdict)
        r = out.get(key)
        if r is None:
            r = out[key] = ActiveResource(subject, (registrable_domain(name) or "") if name else "", set(), account,
                                          "ip-only" if not name else kind, verdict, reason, filing, first / 1000, last / 1000, 0, False)
        r.servers.add(f"{server}:{port}" if port else server)
        r.first_seen = min(r.first_seen, first / 1000)
        r.last_seen = max(r.last_seen, last / 1000)
        r.hits += hits
        r.blocked = r.blocked or action == "block"
    return sorted(out.values(), key=lambda r: (-r.hits, r.name))


_IN_FORCE = (FilingStatus.ACTIVE, FilingStatus.UNMAPPED)


def findings(summary: Summary, index: RecordIndex, inventory: Inventory,
             is_ours: Callable[[str], bool] | None = None) -> list[Finding]:
    """Findings from what was seen; ``is_ours(接入商 cell)`` says which filings are this provider's (None: all)."""
    out: list[Finding] = []
    res = resources(summary)
    for r in res:
        common = {"account": r.account, "server": ", ".join(sorted(r.servers)), "filing": r.filing,
                  "first_seen": r.first_seen, "last_seen": r.last_seen, "hits": r.hits}
        if r.verdict == "unfiled":
            out.append(Finding("unfiled-blocked" if r.blocked else "unfiled-served", r.name, r.reason, **common))  # type: ignore[arg-type]
        elif r.verdict == "mismatch":
            kind = "name-on-unlisted-ip" if r.reason == "ip-not-listed" else "mismatch-served"
            out.append(Finding(kind, r.name, r.reason, **common))  # type: ignore[arg-type]
        elif r.verdict == "inactive":
            out.append(Finding("cancelled-served", r.name, r.reason, **common))  # type: ignore[arg-type]
    # Pending prefixes serving traffic.
    pending: dict[str, Finding] = {}
    for (name, server, _port, account, _v, _k, _a, _r, _f), (first, last, hits) in summary.items():
        p = inventory.lookup(server)
        if p is not None and p.state is PrefixState.PENDING:
            pf = pending.get(p.prefix)
            if pf is None:
                pf = pending[p.prefix] = Finding("pending-prefix-traffic", p.prefix, "", account=account, first_seen=first / 1000,
                                                 last_seen=last / 1000)
            pf.hits += hits
            pf.first_seen = min(pf.first_seen, first / 1000)
            pf.last_seen = max(pf.last_seen, last / 1000)
            if name and len(pf.detail) < 200:
                pf.detail = ", ".join(sorted(set(filter(None, [*pf.detail.split(", "), name]))))
    out.extend(pending.values())
    # Record drift: filings of this provider.
    # A filed domain counts as seen when it or any name below it was seen.
    seen: set[str] = set()
    for n in {k[0] for k in summary if k[0]}:
        while n and n not in seen:
            seen.add(n)
            i = n.find(".")
            n = n[i + 1:] if i >= 0 else ""
    ours = [f for f in index.filings if is_ours is None or is_ours(f.access_provider)]
    for f in ours:
        if f.status in _IN_FORCE and f.domains and not any(d in seen for d in f.domains):
            out.append(Finding("filed-never-seen", f.number, ", ".join(f.domains), filing=f.number))
        accounts = {}
        for entry in f.ips:
            # a range or prefix: both ends must be hosted (and by one account)
            for ip in entry_addresses(entry):
                p = inventory.lookup(ip)
                if p is None:
                    out.append(Finding("filing-ip-not-hosted", f.number, entry, filing=f.number, server=entry))
                    break
                accounts[ip] = p.account
        if len(set(accounts.values())) > 1:
            out.append(Finding("filing-ip-other-account", f.number,
                               ", ".join(f"{ip} ({a})" for ip, a in sorted(accounts.items())), filing=f.number))
    return out
