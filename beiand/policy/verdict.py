"""Observation + records + inventory → Verdict → Decision.

Deciding never acts (DESIGN.md): ``Policy.decide`` returns a ``Decision``; sinks act on it.
The hot path is one call per observation, cached by (name, server address) in a bounded dict.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import unicodedata
from dataclasses import dataclass

from beiand.errors import BeiandError
from beiand.model import Action, Decision, Filing, FilingStatus, Mode, Observation, PrefixState, Verdict, VerdictKind
from beiand.policy.inventory import HostedPrefix, Inventory
from beiand.records.domains import is_ip_literal
from beiand.records.index import RecordIndex

MAX_ACCESS_PENDING_GRACE_DAYS = 45  # providers keep 接入审核中 at most 45 days (REGULATIONS.md)
_CHINA_TZ = dt.timezone(dt.timedelta(hours=8))
# Enum members bound once: on Python 3.11 each ``VerdictKind.FILED`` is a call of EnumType.__getattr__
# (~0.2 µs) and each ``.value`` one of a Python property; the verdict path names a dozen of them.
_FILED, _MISMATCH, _INACTIVE, _UNFILED = VerdictKind.FILED, VerdictKind.MISMATCH, VerdictKind.INACTIVE, VerdictKind.UNFILED
_REVOKED, _CANCELLED, _UNDER_REVIEW = FilingStatus.REVOKED, FilingStatus.CANCELLED, FilingStatus.UNDER_REVIEW
_ACCESS_CANCELLED, _ACCESS_PENDING = FilingStatus.ACCESS_CANCELLED, FilingStatus.ACCESS_PENDING
_CLOSED, _PENDING = PrefixState.CLOSED, PrefixState.PENDING
_ENFORCE, _DRY_RUN = Mode.ENFORCE, Mode.DRY_RUN
_LOG, _FLAG, _BLOCK = Action.LOG, Action.FLAG, Action.BLOCK
# What a decision turns on besides the records (what ``_verdict`` returns beside the verdict): the
# server and the name (cached per both), the observation's time as well (never cached), or, when no
# filing decides, the verdict and the server alone (one decision per server and reason, shared by names).
_NAME, _TIME, _SERVER = 0, 1, 2
# A NamedTuple built as its own ``__new__`` builds it (``tuple.__new__(cls, values)``): the same value
# without the Python frame of the generated ``__new__``, but no defaults: every field is given.
_new = tuple.__new__
# What each reason a filing is judged with means: (verdict, rank, timed). Coverage precedence
# (REGULATIONS.md, "Website and APP filings can overlap"): over every filing covering a name, filed
# beats drift on an unlisted IP of our own filing, which beats another provider's or an expired
# pending filing, which beats an inactive one. Timed: the verdict turns on the observation's time.
_JUDGED: dict[str, tuple[VerdictKind, int, bool]] = {
    "filing-revoked": (_INACTIVE, 1, False),
    "filing-cancelled": (_INACTIVE, 1, False),
    "filing-under-review": (_INACTIVE, 1, False),
    "other-provider": (_MISMATCH, 2, False),
    "ip-not-listed": (_MISMATCH, 3, False),
    "access-pending-grace": (_FILED, 4, True),
    "access-pending-expired": (_MISMATCH, 2, True),
    "filed": (_FILED, 4, False),
    "filed-provider-unchecked": (_FILED, 4, False),
}
# The reasons a filing covering the name gives only once it was found ours (or with no provider to
# check): filed, or filed but drifting (served from an address it does not list, access pending
# within its grace). An authority's list naming such a site disagrees with the records: a conflict
# for a person, never a block nor a case (policy.authority, issue 35). An expired pending access
# filing is not among them: the records themselves stop it, as another provider's filing.
FILED_HERE_REASONS = frozenset({"filed", "filed-provider-unchecked", "access-pending-grace", "ip-not-listed"})
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


def files_here(verdict: Verdict) -> bool:
    """Whether the records file the name here (a filing of ours covers it, drifting or not) or the
    allowlist exempts it: what an authority's list never blocks (a conflict for a person)."""
    return verdict.verdict is VerdictKind.EXEMPT or (verdict.filing is not None and verdict.reason in FILED_HERE_REASONS)


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


def _rules(head: str) -> tuple[dict[VerdictKind, str], dict[VerdictKind, str]]:
    """The rule of each verdict kind that a mode acts on: under an active prefix, under a pending one."""
    return {k: f"{head}{k.value}" for k in VerdictKind}, {k: f"{head}pending-prefix:{k.value}" for k in VerdictKind}


# Built once: a decision names its rule from these, never formats one.
_ENFORCE_RULES, _DRY_RUN_RULES, _MONITOR_RULES = _rules("enforce:"), _rules("dry-run:would-block:"), _rules("monitor:")
_IP_NOT_FILED = Verdict(VerdictKind.UNFILED, None, "ip-not-filed")
_NO_FILING = Verdict(VerdictKind.UNFILED, None, "no-filing")
_NAME_NOT_IN_FILING = Verdict(VerdictKind.UNFILED, None, "name-not-in-filing")
_ALLOW_NAME = Verdict(VerdictKind.EXEMPT, None, "allowlist-name")
_ALLOW_SUFFIX = Verdict(VerdictKind.EXEMPT, None, "allowlist-suffix")
_ALLOW_PREFIX = Verdict(VerdictKind.EXEMPT, None, "allowlist-prefix")
# What a lookup without a server (or without any inventory) is judged under.
ASSUMED_HOSTED = HostedPrefix("(assumed hosted)", "", "", PrefixState.ACTIVE, None)


class _Server:
    """What a policy knows of one server address: its hosted prefix and what follows from it (the
    mode, the account), whether any filing lists the address, and the decisions that name no filing."""

    __slots__ = ("account", "closed", "decisions", "filed", "mode", "pending", "prefix", "site")

    def __init__(self, prefix: HostedPrefix | None, default_mode: Mode, pending_mode: Mode | None) -> None:
        self.prefix = prefix
        self.filed: bool | None = None  # None: not asked yet
        self.decisions: dict[str, Decision] = {}  # reason → decision, for verdicts without a filing
        if prefix is None:
            self.closed = self.pending = False
            self.mode, self.account, self.site = default_mode, "", ""
            return
        self.closed = prefix.state is _CLOSED
        self.pending = prefix.state is _PENDING
        self.mode = prefix.mode or default_mode
        if self.pending and prefix.mode is None and pending_mode is not None:
            self.mode = pending_mode
        self.account, self.site = prefix.account, prefix.site


class _Policy:
    """The decision function (``Policy`` is the class to use; this one is compiled as a C type)."""

    CACHE_MAX = 1 << 17
    SERVERS_MAX = 1 << 16

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
        self._allow_prefixes = bool(self._allow_inv.prefixes)
        self._default_mode = cfg.default_mode
        self._pending_mode = cfg.pending_mode
        self._filed_reason = "filed" if self._providers else "filed-provider-unchecked"
        self._grace_s = cfg.access_pending_grace_days * 86400.0
        self._deadline: dict[str, float] = {}
        self._cache: dict[str, dict[str, Decision]] = {}
        self._cached = 0
        self._servers: dict[str, _Server] = {}  # server address → what is known of it (the inventory is immutable too)

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
        server_ip = obs.server_ip
        name = obs.name
        per_ip = self._cache.get(server_ip)
        if per_ip is not None:
            hit = per_ip.get(name)
            if hit is not None:
                return hit
        server = self._servers.get(server_ip)
        if server is None:
            server = self._server(server_ip)
        verdict, turns_on = self._verdict(name, server_ip, obs.ts, server, True)
        if turns_on == _SERVER:
            reason = verdict.reason
            decision = server.decisions.get(reason)
            if decision is None:
                decision = server.decisions[reason] = self._decision(verdict, server)
        else:
            decision = self._decision(verdict, server)
        if turns_on != _TIME:
            if self._cached >= self.CACHE_MAX:  # every entry counts, new address or not (issue 28, 18)
                self._cache.clear()
                self._cached = 0
                per_ip = None
            if per_ip is None:
                per_ip = self._cache[server_ip] = {}
            per_ip[name] = decision
            self._cached += 1
        return decision

    def _server(self, server_ip: str) -> _Server:
        if len(self._servers) >= self.SERVERS_MAX:
            self._servers.clear()
        server = self._servers[server_ip] = self._about(self.inventory.lookup(server_ip))
        return server

    def _about(self, prefix: HostedPrefix | None) -> _Server:
        return _Server(prefix, self._default_mode, self._pending_mode)

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
        server = self._about(prefix)
        decision = self._decision(self._verdict(name, server_ip, ts, server, False)[0], server)
        return decision, (None if prefix is ASSUMED_HOSTED else prefix), assumed

    def verdict(self, name: str, server_ip: str, ts: float) -> Verdict:
        return self._verdict(name, server_ip, ts, self._about(self.inventory.lookup(server_ip)), False)[0]

    def judge(self, name: str, server_ip: str, ts: float, prefix: HostedPrefix | None) -> Decision:
        """The decision for ``name`` served from ``prefix`` (uncached; for lookups and audits)."""
        server = self._about(prefix)
        return self._decision(self._verdict(name, server_ip, ts, server, False)[0], server)

    def _verdict(self, name: str, server_ip: str, ts: float, server: _Server, known: bool) -> tuple[Verdict, int]:
        """The records' verdict and what it turns on (``_NAME``, ``_TIME``, ``_SERVER``); ``known``: ``server``
        may keep what it learns."""
        if server.prefix is None:
            return _NOT_IN_INVENTORY, _SERVER
        if server.closed:
            return _PREFIX_CLOSED, _SERVER
        if name:
            if name in self._allow_names:
                return _ALLOW_NAME, _SERVER
            if self._allow_suffixes:
                cand = name
                while True:
                    if cand in self._allow_suffixes:
                        return _ALLOW_SUFFIX, _SERVER
                    dot = cand.find(".")
                    if dot < 0:
                        break
                    cand = cand[dot + 1 :]
        if server_ip and self._allow_prefixes and self._allow_inv.lookup(server_ip) is not None:
            return _ALLOW_PREFIX, _SERVER
        # is_ip_literal's own cheap test first: an IPv4 literal ends in a digit, an IPv6 one holds ":".
        if not name or ((name[-1].isdigit() or ":" in name) and is_ip_literal(name)):
            # Order 33 art. 5: sites reachable only by IP address need filing too.
            filings = self.records.by_address(server_ip)
            if not filings:
                return _IP_NOT_FILED, _SERVER
            return self._best(filings, server_ip, ts, False)
        covering = self.records.covering_all(name)
        if not covering:
            # Order 33 art. 5 ¶2: a name missing from every filing's domain list is unfiled for that
            # name, even when the same server IP is filed for other names (adding it takes a change
            # filing first: Order 33 art. 14; Order 292 art. 11 ¶3).
            if server.filed is None:
                filed = self.records.has_address(server_ip)
                if known:
                    server.filed = filed
            else:
                filed = server.filed
            return (_NAME_NOT_IN_FILING if filed else _NO_FILING), _SERVER
        # Every filing covering the name decides together, most specific first (ties go to it).
        return self._best(covering, server_ip, ts, True)

    def _best(self, filings: tuple[Filing, ...], server_ip: str, ts: float, check_ip: bool) -> tuple[Verdict, int]:
        best: Filing | None = None
        best_reason = ""
        best_rank = 0
        timed = False
        for f in filings:
            reason = self._judge(f, server_ip, ts, check_ip)
            kind, rank, t = _JUDGED[reason]
            timed = timed or t
            if rank > best_rank:
                best, best_reason, best_rank = f, reason, rank
                if kind is _FILED:
                    break
        assert best is not None
        return _new(Verdict, (_JUDGED[best_reason][0], best, best_reason)), (_TIME if timed else _NAME)

    def _judge(self, f: Filing, server_ip: str, ts: float, check_ip: bool) -> str:
        """The reason filing ``f`` gives for ``server_ip`` at ``ts`` (``_JUDGED`` says what it means)."""
        status = f.status
        # Order 33 art. 18, 501号 art. 15(5): cancelled or revoked filings stop access.
        if status is _REVOKED:
            return "filing-revoked"
        if status is _CANCELLED:
            return "filing-cancelled"
        if status is _UNDER_REVIEW:
            return "filing-under-review"
        # 接入备案: the filing must name the provider that actually serves it (Order 33 art. 19).
        # 取消接入: this provider's access record ended (the filing may be served elsewhere now):
        # the same as a filing through another provider, never 注销 (issue 28).
        if status is _ACCESS_CANCELLED:
            return "other-provider"
        if self._providers:
            ours = self._ours.get(f.access_provider)
            if ours is None:
                ours = self.is_ours(f.access_provider)
            if not ours:
                return "other-provider"
        if check_ip and f.ips and server_ip and not self.records.lists_ip(f, server_ip):
            # 501号 art. 7(3): domain/IP in use must match the filing.
            return "ip-not-listed"
        if status is _ACCESS_PENDING:
            return "access-pending-grace" if ts <= self._pending_deadline(f) else "access-pending-expired"
        # ACTIVE, and UNMAPPED: a status word nobody mapped keeps the filing in force (issue 13).
        return self._filed_reason

    def _pending_deadline(self, f: Filing) -> float:
        d = self._deadline.get(f.number)
        if d is None:
            day = dt.date.fromisoformat(f.reviewed)
            start = dt.datetime(day.year, day.month, day.day, tzinfo=_CHINA_TZ).timestamp()
            d = self._deadline[f.number] = start + 86400.0 + self._grace_s
        return d

    def _decision(self, verdict: Verdict, server: _Server) -> Decision:
        if server.prefix is None:
            return _new(Decision, (verdict, _LOG, "pass:not-hosted", server.mode, "", "", "", ""))
        v = verdict.verdict
        rule = _PASS.get(v)
        if rule is not None:
            return _new(Decision, (verdict, _LOG, rule, server.mode, server.account, server.site, "", ""))
        if v is _MISMATCH and verdict.reason == "ip-not-listed":
            # Filed through us, served from an unlisted IP: drift to correct, not a block.
            return _new(Decision, (verdict, _FLAG, "flag:ip-not-listed", server.mode, server.account, server.site, "", ""))
        mode = server.mode
        if mode is _ENFORCE:
            action, rules = _BLOCK, _ENFORCE_RULES
        elif mode is _DRY_RUN:
            action, rules = _FLAG, _DRY_RUN_RULES
        else:
            action, rules = _FLAG, _MONITOR_RULES
        rule = rules[1][v] if server.pending else rules[0][v]
        return _new(Decision, (verdict, action, rule, mode, server.account, server.site, "", ""))


class Policy(_Policy):
    """The decision function of beiand, bound to one records index and one inventory.

    A plain subclass of the compiled ``_Policy``: its class attributes (``CACHE_MAX``) stay
    settable, as a compiled type's are not.
    """

    __slots__ = ()
