"""Observation + records + inventory → Verdict → Decision.

Deciding never acts (DESIGN.md): ``Policy.decide`` returns a ``Decision``; sinks act on it.
The hot path is one call per observation, cached by (name, server address) in a bounded dict.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from beiand.errors import BeiandError
from beiand.model import Action, Decision, Filing, FilingStatus, Mode, Observation, PrefixState, Verdict, VerdictKind
from beiand.policy.inventory import HostedPrefix, Inventory
from beiand.records.domains import is_ip_literal
from beiand.records.index import RecordIndex

MAX_ACCESS_PENDING_GRACE_DAYS = 45  # providers keep 接入审核中 at most 45 days (REGULATIONS.md)
_CHINA_TZ = dt.timezone(dt.timedelta(hours=8))
# Coverage precedence (REGULATIONS.md, "Website and APP filings can overlap"): over every filing
# covering a name, filed beats drift on an unlisted IP of our own filing, which beats another
# provider's or an expired pending filing, which beats an inactive one.
_RANK = {VerdictKind.FILED: 4, VerdictKind.MISMATCH: 2, VerdictKind.INACTIVE: 1}
_IP_DRIFT_RANK = 3
# Separators between the legal entities named in one 接入商 cell (a site on several clouds).
_PROVIDER_SPLIT = re.compile(r"[;,、；，|/\n]+")


def provider_key(name: str) -> str:
    """A 接入商 name as compared: NFKC (full-width brackets, digits), no outer space, case-folded."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


def provider_names(cell: str) -> frozenset[str]:
    """Every provider a 接入商 cell may name: the whole cell, its parts, and their words."""
    whole = provider_key(cell)
    out = {whole}
    for part in _PROVIDER_SPLIT.split(whole):
        part = part.strip()
        if part:
            out.add(part)
            out.update(part.split())
    out.discard("")
    return frozenset(out)


class PolicyError(BeiandError, ValueError):
    pass


@dataclass(frozen=True)
class PolicyConfig:
    """What the operator decides: who we are, what is exempt, the default modes."""

    provider: str = ""  # this provider's name as filings spell their 接入商; "" (and no providers) skips the check
    providers: tuple[str, ...] = ()  # more legal entities of this provider (records.provider as a list)
    allow_names: frozenset[str] = frozenset()  # exact names
    allow_suffixes: tuple[str, ...] = ()  # the name and everything below it
    allow_prefixes: tuple[str, ...] = ()  # server prefixes (CIDR)
    default_mode: Mode = Mode.MONITOR  # passive by default (DESIGN.md failure rules)
    pending_mode: Mode | None = None  # mode for `pending` prefixes without their own; None: default_mode
    access_pending_grace_days: int = 30

    def __post_init__(self) -> None:
        if not 0 <= self.access_pending_grace_days <= MAX_ACCESS_PENDING_GRACE_DAYS:
            raise PolicyError(
                f"access_pending_grace_days: {self.access_pending_grace_days} is outside 0..{MAX_ACCESS_PENDING_GRACE_DAYS} "
                "(an access filing may wait for the authority at most 45 days)"
            )
        for p in self.allow_prefixes:
            try:
                ipaddress.ip_network(p)
            except ValueError:
                raise PolicyError(f"allow_prefixes: {p!r} is not a CIDR prefix") from None


# Every reason a verdict can carry (docs/verdicts.md explains each; the corpus covers each).
REASONS = frozenset({
    "not-in-inventory", "prefix-closed", "allowlist-name", "allowlist-suffix", "allowlist-prefix", "ip-not-filed",
    "no-filing", "name-not-in-filing", "filing-revoked", "filing-cancelled", "filing-under-review", "other-provider",
    "ip-not-listed", "access-pending-grace", "access-pending-expired", "filed", "filed-provider-unchecked",
})

_NOT_IN_INVENTORY = Verdict(VerdictKind.NOT_HOSTED, None, "not-in-inventory")
_PREFIX_CLOSED = Verdict(VerdictKind.NOT_HOSTED, None, "prefix-closed")
_PASS = {v: f"pass:{v.value}" for v in (VerdictKind.FILED, VerdictKind.EXEMPT, VerdictKind.NOT_HOSTED)}
_IP_NOT_FILED = Verdict(VerdictKind.UNFILED, None, "ip-not-filed")
_NO_FILING = Verdict(VerdictKind.UNFILED, None, "no-filing")
_NAME_NOT_IN_FILING = Verdict(VerdictKind.UNFILED, None, "name-not-in-filing")
_ALLOW_NAME = Verdict(VerdictKind.EXEMPT, None, "allowlist-name")
_ALLOW_SUFFIX = Verdict(VerdictKind.EXEMPT, None, "allowlist-suffix")
_ALLOW_PREFIX = Verdict(VerdictKind.EXEMPT, None, "allowlist-prefix")
# What a lookup without a server (or without any inventory) is judged under.
ASSUMED_HOSTED = HostedPrefix("(assumed hosted)", "", "", PrefixState.ACTIVE, None)


class Policy:
    """The decision function of beiand, bound to one records index and one inventory."""

    CACHE_MAX = 1 << 17

    def __init__(self, records: RecordIndex, inventory: Inventory, config: PolicyConfig | None = None) -> None:
        self.records = records
        self.inventory = inventory
        self.config = config or PolicyConfig()
        cfg = self.config
        self._providers = frozenset(provider_key(p) for p in (cfg.provider, *cfg.providers) if p.strip())
        self._ours: dict[str, bool] = {}  # 接入商 cell → names this provider
        self._allow_names = frozenset(cfg.allow_names)
        self._allow_suffixes = frozenset(s.lstrip("*.").lower() for s in cfg.allow_suffixes)
        self._allow_inv = Inventory(
            HostedPrefix(str(ipaddress.ip_network(p)), "allowlist", "", PrefixState.ACTIVE, None) for p in cfg.allow_prefixes
        )
        self._grace_s = cfg.access_pending_grace_days * 86400.0
        self._deadline: dict[str, float] = {}
        self._cache: dict[str, dict[str, Decision]] = {}
        self._cached = 0

    @property
    def provider_checked(self) -> bool:
        return bool(self._providers)

    def is_ours(self, access_provider: str) -> bool:
        """Whether a filing's 接入商 cell names this provider (any of its legal entities)."""
        hit = self._ours.get(access_provider)
        if hit is None:
            hit = not self._providers.isdisjoint(provider_names(access_provider))
            if len(self._ours) < 100_000:
                self._ours[access_provider] = hit
        return hit

    # -- the hot path -------------------------------------------------------------------

    def decide(self, obs: Observation) -> Decision:
        """The decision for one observation: cached per (server address, name), bounded."""
        per_ip = self._cache.get(obs.server_ip)
        if per_ip is not None:
            hit = per_ip.get(obs.name)
            if hit is not None:
                return hit
        prefix = self.inventory.lookup(obs.server_ip)
        verdict, timed = self._verdict(obs.name, obs.server_ip, obs.ts, prefix)
        decision = self._decision(verdict, prefix)
        if not timed:
            if self._cached >= self.CACHE_MAX:  # every entry counts, new address or not (issue 28, 18)
                self._cache.clear()
                self._cached = 0
                per_ip = None
            if per_ip is None:
                per_ip = self._cache[obs.server_ip] = {}
            per_ip[obs.name] = decision
            self._cached += 1
        return decision

    # -- pieces, also used by `records lookup` and the audit ------------------------------

    def lookup(self, name: str, server_ip: str, ts: float, *, no_inventory_means_hosted: bool = False
               ) -> tuple[Decision, HostedPrefix | None, str]:
        """The answer of ``records lookup`` and ``/api/v1/lookup`` (one function, one answer).

        ``name`` normalised ("" for an address alone), ``server_ip`` canonical ("" when not given).
        Returns the decision, the hosted prefix it was judged under, and what was assumed ("" for
        nothing): without a server, the name is judged as if served from hosted space with no IP
        check; ``no_inventory_means_hosted`` (the CLI given no inventory at all) does the same for
        a server outside an empty inventory. A server outside a loaded inventory is ``not-hosted``,
        exactly as the daemon decides its traffic.
        """
        assumed = ""
        if not server_ip:
            prefix: HostedPrefix | None = ASSUMED_HOSTED
            assumed = "no server given: judged as if served from hosted space, without the filing's IP list"
        else:
            prefix = self.inventory.lookup(server_ip)
            if prefix is None and no_inventory_means_hosted and not len(self.inventory):
                prefix = ASSUMED_HOSTED
                assumed = "no inventory given: the server was assumed to be in hosted space"
        decision = self._decision(self._verdict(name, server_ip, ts, prefix)[0], prefix)
        return decision, (None if prefix is ASSUMED_HOSTED else prefix), assumed

    def verdict(self, name: str, server_ip: str, ts: float) -> Verdict:
        return self._verdict(name, server_ip, ts, self.inventory.lookup(server_ip))[0]

    def judge(self, name: str, server_ip: str, ts: float, prefix: HostedPrefix | None) -> Decision:
        """The decision for ``name`` served from ``prefix`` (uncached; for lookups and audits)."""
        return self._decision(self._verdict(name, server_ip, ts, prefix)[0], prefix)

    def _verdict(self, name: str, server_ip: str, ts: float, prefix: HostedPrefix | None) -> tuple[Verdict, bool]:
        if prefix is None:
            return _NOT_IN_INVENTORY, False
        if prefix.state is PrefixState.CLOSED:
            return _PREFIX_CLOSED, False
        if name:
            if name in self._allow_names:
                return _ALLOW_NAME, False
            if self._allow_suffixes:
                cand = name
                while True:
                    if cand in self._allow_suffixes:
                        return _ALLOW_SUFFIX, False
                    dot = cand.find(".")
                    if dot < 0:
                        break
                    cand = cand[dot + 1 :]
        if server_ip and self._allow_inv.prefixes and self._allow_inv.lookup(server_ip) is not None:
            return _ALLOW_PREFIX, False
        if not name or is_ip_literal(name):
            # Order 33 art. 5: sites reachable only by IP address need filing too.
            filings = self.records.by_address(server_ip)
            if not filings:
                return _IP_NOT_FILED, False
            return self._best(filings, server_ip, ts, check_ip=False)
        covering = self.records.covering_all(name)
        if not covering:
            # Order 33 art. 5 ¶2: a name missing from every filing's domain list is unfiled for that
            # name, even when the same server IP is filed for other names (adding it takes a change
            # filing first: Order 33 art. 14; Order 292 art. 11 ¶3).
            return (_NAME_NOT_IN_FILING if self.records.has_address(server_ip) else _NO_FILING), False
        # Every filing covering the name decides together, most specific first (ties go to it).
        return self._best(covering, server_ip, ts, check_ip=True)

    def _best(self, filings: Iterable[Filing], server_ip: str, ts: float, check_ip: bool) -> tuple[Verdict, bool]:
        best: Verdict | None = None
        best_rank = 0
        timed = False
        for f in filings:
            v, t = self._judge(f, server_ip, ts, check_ip)
            timed = timed or t
            rank = _IP_DRIFT_RANK if v.reason == "ip-not-listed" else _RANK[v.verdict]
            if rank > best_rank:
                best, best_rank = v, rank
                if v.verdict is VerdictKind.FILED:
                    break
        assert best is not None
        return best, timed

    def _judge(self, f: Filing, server_ip: str, ts: float, check_ip: bool) -> tuple[Verdict, bool]:
        kind, reason, timed = self._judge_kind(f, server_ip, ts, check_ip)
        return Verdict(kind, f, reason), timed

    def _judge_kind(self, f: Filing, server_ip: str, ts: float, check_ip: bool) -> tuple[VerdictKind, str, bool]:
        status = f.status
        # Order 33 art. 18, 501号 art. 15(5): cancelled or revoked filings stop access.
        if status is FilingStatus.REVOKED:
            return VerdictKind.INACTIVE, "filing-revoked", False
        if status is FilingStatus.CANCELLED:
            return VerdictKind.INACTIVE, "filing-cancelled", False
        if status is FilingStatus.UNDER_REVIEW:
            return VerdictKind.INACTIVE, "filing-under-review", False
        # 接入备案: the filing must name the provider that actually serves it (Order 33 art. 19).
        # 取消接入: this provider's access record ended (the filing may be served elsewhere now):
        # the same as a filing through another provider, never 注销 (issue 28).
        if status is FilingStatus.ACCESS_CANCELLED or (self._providers and not self.is_ours(f.access_provider)):
            return VerdictKind.MISMATCH, "other-provider", False
        if check_ip and f.ips and server_ip and not self.records.lists_ip(f, server_ip):
            # 501号 art. 7(3): domain/IP in use must match the filing.
            return VerdictKind.MISMATCH, "ip-not-listed", False
        if status is FilingStatus.ACCESS_PENDING:
            if ts <= self._pending_deadline(f):
                return VerdictKind.FILED, "access-pending-grace", True
            return VerdictKind.MISMATCH, "access-pending-expired", True
        # ACTIVE, and UNMAPPED: a status word nobody mapped keeps the filing in force (issue 13).
        return VerdictKind.FILED, "filed" if self._providers else "filed-provider-unchecked", False

    def _pending_deadline(self, f: Filing) -> float:
        d = self._deadline.get(f.number)
        if d is None:
            day = dt.date.fromisoformat(f.reviewed)
            start = dt.datetime(day.year, day.month, day.day, tzinfo=_CHINA_TZ).timestamp()
            d = self._deadline[f.number] = start + 86400.0 + self._grace_s
        return d

    def _decision(self, verdict: Verdict, prefix: HostedPrefix | None) -> Decision:
        if prefix is None:
            return Decision(verdict, Action.LOG, "pass:not-hosted", self.config.default_mode, "", "")
        mode: Mode = prefix.mode or self.config.default_mode
        if prefix.mode is None and prefix.state is PrefixState.PENDING and self.config.pending_mode is not None:
            mode = self.config.pending_mode
        v = verdict.verdict
        if v in _PASS:
            return Decision(verdict, Action.LOG, _PASS[v], mode, prefix.account, prefix.site)
        if v is VerdictKind.MISMATCH and verdict.reason == "ip-not-listed":
            # Filed through us, served from an unlisted IP: drift to correct, not a block.
            return Decision(verdict, Action.FLAG, "flag:ip-not-listed", mode, prefix.account, prefix.site)
        scope = "pending-prefix:" if prefix.state is PrefixState.PENDING else ""
        if mode is Mode.ENFORCE:
            return Decision(verdict, Action.BLOCK, f"enforce:{scope}{v.value}", mode, prefix.account, prefix.site)
        if mode is Mode.DRY_RUN:
            return Decision(verdict, Action.FLAG, f"dry-run:would-block:{scope}{v.value}", mode, prefix.account, prefix.site)
        return Decision(verdict, Action.FLAG, f"monitor:{scope}{v.value}", mode, prefix.account, prefix.site)
