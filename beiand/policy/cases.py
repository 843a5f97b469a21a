"""Sponsor cases (issue 31): from a finding to 整改 or 取消接入, as rows of the decision store.

One case per account and finding (an unfiled, mismatched or inactive service served from the
account's prefixes; the audit's 空壳, 解析境外 and missing-备案号 findings; the authority's list).
Every change to a case is a row of kind ``case`` (``beiand.store``): who, when, why, and the event;
folding the rows in version order gives each case's state, so a fleet of gateways following one
store sees one case, and a disputed cancellation can be followed step by step.

The life of a case (events; anything else is refused by name and changes nothing):

    open ──notify──▶ notified ──(deadline passes)──escalate──▶ escalated (取消接入: its names blocked)
      │                 │ ▲                                        │
      │                 │ └──────extend (a new deadline)───────────┘
      │                 └──appeal──▶ appealed ──appeal-rejected──▶ notified   (appeal-upheld: closed)
      └──────────────────────── close (rectified, not served, withdrawn, …) ──▶ closed

``evidence`` rows add what was seen since (first/last seen, hits, servers); ``remind`` notes the
reminder sent before the deadline. A case is never reopened: a new finding opens a new case.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from beiand.errors import BeiandError
from beiand.policy.source import Version, version
from beiand.records.domains import DomainError, normalise_domain
from beiand.store import Change, Entry

KIND = "case"
# What was found (issue 31; REGULATIONS.md): the daemon's verdicts, the audit's findings, the authority's list
FINDINGS = {
    "unfiled": "未备案 (served without a filing)",
    "mismatch": "接入信息不准确 (filed through another provider, or this address not in the filing)",
    "inactive": "备案已注销或未生效 (the filing was cancelled, or is still under review)",
    "shell": "空壳 (filed, never served)",
    "resolves-away": "解析境外 / 接入信息不准确 (the filed domain resolves away from hosted space)",
    "no-number": "首页未悬挂备案号 (Order 33 art. 13, Order 292 art. 12)",
    "authority": "上级下发未备案网站 (the authority's list)",
}
# Findings about the filing itself: a filing that makes the name filed here resolves them (the
# block lifts with the records reload; the periodic pass closes the case as rectified).
LIFTED_BY_FILING = frozenset({"unfiled", "mismatch", "inactive", "authority"})
# Findings whose escalation blocks the site's flows. A shell (空壳) serves nothing and a name that
# resolves away is not served here: their 取消接入 is done in the 备案 system, and blocking their
# flows would only hit the customer at the moment they do what the notice asks.
BLOCKING = frozenset({"unfiled", "mismatch", "inactive", "authority", "no-number"})
STATES = ("open", "notified", "appealed", "escalated", "closed")
# event → the states it may follow
_FROM = {
    "notify": ("open", "notified"),
    "remind": ("notified",),
    "extend": ("open", "notified", "appealed", "escalated"),
    "appeal": ("open", "notified", "escalated"),
    "appeal-rejected": ("appealed",),
    "appeal-upheld": ("appealed",),
    "escalate": ("notified",),
    "evidence": ("open", "notified", "appealed", "escalated"),
    "sending": ("open", "notified"),
    "close": ("open", "notified", "appealed", "escalated"),
}
CLOSE_REASONS = ("rectified", "not-served", "withdrawn", "appeal-upheld", "cancelled-by-provider", "other")
# A case closed for one of these is a person's judgment that the finding was wrong: the daemon does
# not open the same finding again by itself (a person can, with ``beiand cases open``).
SETTLED_BY_PERSON = ("withdrawn", "appeal-upheld")


class CaseError(BeiandError, ValueError):
    pass


@dataclass(frozen=True)
class Step:
    """One event of a case, as its row said it."""

    at: float
    event: str
    actor: str
    why: str
    version: int = 0


@dataclass(frozen=True)
class Case:
    key: str  # "<account>|<finding>|<name>"
    account: str
    finding: str
    names: tuple[str, ...]  # the site's names (normalised), blocked per flow once escalated
    state: str
    opened_at: float
    deadline: float  # the end of the 整改 period (0: not set yet: no notice sent)
    first_seen: float = 0.0
    last_seen: float = 0.0
    hits: int = 0
    servers: tuple[str, ...] = ()  # the addresses it was served from
    notified_at: float = 0.0
    reminded_at: float = 0.0
    escalated_at: float = 0.0
    closed_at: float = 0.0
    close_reason: str = ""
    steps: tuple[Step, ...] = field(default=())
    sending_until: float = 0.0  # a gateway sends its notice until then (the claim of ``sending``)
    evidence_rows: int = 0  # evidence rows folded in (added up, not kept as steps)

    @property
    def open(self) -> bool:
        return self.state != "closed"

    def due(self, now: float) -> bool:
        """Its deadline has passed and nothing holds it (an appeal does): to escalate."""
        return self.state == "notified" and self.notified_at > 0 and 0 < self.deadline <= now


def case_key(account: str, finding: str, name: str, n: int = 1) -> str:
    """``account|finding|name``; the n-th case of that finding (n > 1: the ones before it closed)
    ends in ``#n``: a case is never reopened."""
    return f"{account}|{finding}|{name}" + (f"#{n}" if n > 1 else "")


def key_parts(key: str) -> tuple[str, str, str]:
    """(account, finding, name) of a case key (a ``#n`` suffix dropped)."""
    account, finding, name = [*key.split("|", 2), "", ""][:3]
    return account, finding, name.split("#", 1)[0]


def _num(d: dict[str, Any], k: str, default: float | None = None) -> float:
    v = d.get(k, default)
    if v is None:
        raise CaseError(f"{k}: missing")
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise CaseError(f"{k}: {v!r} is not a time or a count")
    return float(v)


def _names(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list | tuple) or not v or not all(isinstance(n, str) for n in v):
        raise CaseError(f"names: {v!r}: a list of names is required")
    try:
        out = tuple(normalise_domain(n) for n in v)
    except DomainError as exc:
        raise CaseError(f"names: {exc.reason}") from None
    return tuple(dict.fromkeys(out))


def _servers(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list | tuple) or not all(isinstance(s, str) for s in v):
        raise CaseError(f"servers: {v!r}: a list of addresses is required")
    return tuple(v)


class CaseStore:
    """The cases, folded from the store's ``case`` rows (:meth:`apply`)."""

    def __init__(self) -> None:
        self.cases: dict[str, Case] = {}
        self.version = 0
        self.refused: list[str] = []  # the rows refused, the last 100, each with why
        self.refused_total = 0
        self.latest: dict[str, str] = {}  # account|finding|name → the key of its last case (``#n``)

    def apply(self, changes: Iterable[Change]) -> int:
        n = 0
        for c in changes:
            if c.version <= self.version:
                continue
            self.version = c.version
            if c.kind != KIND:
                continue
            try:
                self._apply(c)
                n += 1
            except (CaseError, KeyError, TypeError, AttributeError) as exc:
                self.refused = [*self.refused[-99:], f"decision {c.version} (case {c.key[:120]!r}): {exc}"]
                self.refused_total += 1
        return n

    def _apply(self, c: Change) -> None:
        d = c.data
        event = d.get("event")
        step = Step(c.at, str(event), c.actor, c.why, c.version)
        old = self.cases.get(c.key)
        if event == "open":
            if old is not None:
                raise CaseError("open: the case is open already (a new finding opens a new case)" if old.open else
                                "open: a closed case is not reopened (a new finding opens a new case)")
            account, finding, name = key_parts(c.key)
            if not account or finding not in FINDINGS or not name:
                raise CaseError(f"open: the key is not account|finding|name (findings: {', '.join(FINDINGS)})")
            names = _names(d.get("names", [name]))
            self.cases[c.key] = Case(c.key, account, finding, names, "open", c.at, _num(d, "deadline", 0.0),
                                     _num(d, "first_seen", c.at), _num(d, "last_seen", c.at), int(_num(d, "hits", 0)),
                                     _servers(d.get("servers", [])), steps=(step,))
            base = "|".join(key_parts(c.key))
            held = self.latest.get(base)
            if held is None or _seq(held) < _seq(c.key):
                self.latest[base] = c.key
            return
        if old is None:
            raise CaseError(f"{event}: no such case")
        allowed = _FROM.get(str(event))
        if allowed is None:
            raise CaseError(f"{event!r}: not an event of a case ({', '.join(['open', *_FROM])})")
        if old.state not in allowed:
            raise CaseError(f"{event}: not from state {old.state} (only from {', '.join(allowed)})")
        steps = (*old.steps, step)
        # A case is "notified" only once a notice went out: an extension or a rejected appeal of a
        # case no notice reached leaves it open, so it is never escalated without a notice.
        told = "notified" if old.notified_at else "open"
        if event == "notify":
            new = replace(old, state="notified", notified_at=c.at, deadline=_num(d, "deadline"), steps=steps, sending_until=0.0)
        elif event == "remind":
            new = replace(old, reminded_at=c.at, steps=steps, sending_until=0.0)
        elif event == "sending":
            new = replace(old, sending_until=_num(d, "until"))
        elif event == "extend":
            until = _num(d, "deadline")
            if until <= c.at:
                raise CaseError("extend: the new deadline is not in the future")
            state = told if old.state in ("open", "escalated", "notified") else old.state  # an escalated case's block lifts
            new = replace(old, state=state, deadline=until, escalated_at=0.0 if state != "escalated" else old.escalated_at,
                          reminded_at=0.0, steps=steps)
        elif event == "appeal":
            new = replace(old, state="appealed", escalated_at=0.0, steps=steps)
        elif event == "appeal-rejected":
            new = replace(old, state=told, deadline=_num(d, "deadline", old.deadline), reminded_at=0.0, steps=steps)
        elif event == "appeal-upheld":
            new = replace(old, state="closed", closed_at=c.at, close_reason="appeal-upheld", steps=steps)
        elif event == "escalate":
            if not old.notified_at:
                raise CaseError("escalate: no notice was sent (a case is never escalated without one)")
            if not (0 < old.deadline <= c.at):
                raise CaseError("escalate: the deadline has not passed")
            new = replace(old, state="escalated", escalated_at=c.at, steps=steps)
        elif event == "evidence":  # added up, not a step: a year of hourly rows would be a long case
            new = replace(old, first_seen=min(old.first_seen, _num(d, "first_seen")), last_seen=max(old.last_seen, _num(d, "last_seen")),
                          hits=old.hits + int(_num(d, "hits", 0)),
                          servers=tuple(dict.fromkeys((*old.servers, *_servers(d.get("servers", [])))))[:32],
                          evidence_rows=old.evidence_rows + 1)
        else:  # close
            reason = d.get("reason")
            if reason not in CLOSE_REASONS:
                raise CaseError(f"close: reason {reason!r} is not one of {', '.join(CLOSE_REASONS)}")
            new = replace(old, state="closed", closed_at=c.at, close_reason=str(reason), steps=steps)
        self.cases[c.key] = new

    # -- what the overlay and the periodic pass read -----------------------------------------

    def current(self, account: str, finding: str, name: str) -> Case | None:
        """The last case of this finding (open or closed), None when there never was one."""
        base = case_key(account, finding, name)
        k = self.latest.get(base)
        return self.cases.get(k) if k is not None else None

    def next_key(self, account: str, finding: str, name: str) -> str:
        """The key a new case of this finding gets (``#n`` after the closed ones)."""
        last = self.current(account, finding, name)
        return case_key(account, finding, name, 1 if last is None else _seq(last.key) + 1)

    def by_state(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for c in self.cases.values():
            out[c.state] += 1
        return out


def _seq(key: str) -> int:
    _, _, n = key.rpartition("#")
    return int(n) if n.isdigit() and "#" in key else 1


def case_row(c: Case) -> dict[str, Any]:
    """A case as ``cases list/show --json`` and ``/api/v1/cases`` give it."""
    return {"key": c.key, "account": c.account, "finding": c.finding, "finding_text": FINDINGS[c.finding],
            "names": list(c.names), "state": c.state, "opened_at": c.opened_at, "deadline": c.deadline or None,
            "notified_at": c.notified_at or None, "reminded_at": c.reminded_at or None, "escalated_at": c.escalated_at or None,
            "closed_at": c.closed_at or None, "close_reason": c.close_reason or None, "first_seen": c.first_seen,
            "last_seen": c.last_seen, "hits": c.hits, "servers": list(c.servers),
            "steps": [{"at": s.at, "event": s.event, "by": s.actor, "why": s.why, "version": s.version} for s in c.steps]}


class CaseSnapshot:
    """The cases as a part of the gateway's folded state (``runtime.decisions.Folded``): every case,
    folded from the store, and the snapshot file ``<state_dir>/cases.json`` that holds only what
    the workers enforce (the escalated cases: their names blocked per flow, :class:`~beiand.policy.
    overlays.CaseLayer`). The snapshot does not hold the whole history, so a gateway that starts
    folds the cases from the store again (version 0) while its workers enforce the file as it is."""

    FILE = "cases.json"
    WHAT = "case"

    def __init__(self, state_dir: Path | None, load: bool = True) -> None:
        self.path = Path(state_dir) / self.FILE if state_dir is not None else None
        self.cases = CaseStore()
        self.seen: Version | None = None
        self.snapshot_store: str | None = None
        self.escalated: dict[str, tuple[str, tuple[str, ...]]] = {}  # key → (account, names)
        # The version of the snapshot read at start: the cases themselves are not in it, so until
        # they are folded from the store again (:meth:`fold_all`, ``complete``) it stands for theirs.
        self.loaded = 0
        self.complete = True
        if load and self.path is not None:
            self.reload()

    @property
    def version(self) -> int:
        return self.cases.version if self.complete else max(self.cases.version, self.loaded)

    @version.setter
    def version(self, v: int) -> None:
        if self.complete:
            self.cases.version = v

    def fold_all(self, changes: Iterable[Change]) -> bool:
        """Fold every case row of the store (a gateway that started from its snapshot), aside, then
        swapped in: a reader never sees half of them."""
        cs = CaseStore()
        cs.apply(changes)
        self.cases, self.complete = cs, True
        now = {c.key: (c.account, c.names) for c in cs.cases.values() if c.state == "escalated" and c.finding in BLOCKING}
        if now == self.escalated:
            return False
        self.escalated = now
        return True

    @property
    def refused_total(self) -> int:
        return self.cases.refused_total

    @property
    def refused(self) -> list[str]:
        return self.cases.refused

    def apply(self, changes: Iterable[Change]) -> bool:
        """Fold ``changes``; True when the escalated cases (what the workers enforce) changed."""
        if not self.cases.apply(changes):
            return False
        now = {c.key: (c.account, c.names) for c in self.cases.cases.values() if c.state == "escalated" and c.finding in BLOCKING}
        if now == self.escalated:
            return False
        self.escalated = now
        return True

    def reload(self) -> bool:
        """Read the snapshot's escalated cases (a gateway starting: enforced until the store answers).
        The cases themselves are folded from the store: the version stays 0."""
        if self.path is None:
            return False
        v = version(self.path)
        if v == self.seen:
            return False
        self.seen = v
        if v is None:
            return False
        self.escalated, self.snapshot_store, self.loaded = read_snapshot(self.path)
        self.complete = False
        return True

    def snapshot(self, store: str | None) -> None:
        """Write the escalated cases (atomic, fsynced) with the store version they come from."""
        if self.path is None:
            return
        write_snapshot(self.path, self.escalated, self.version, store)
        with contextlib.suppress(OSError):
            self.seen = version(self.path)


def write_snapshot(path: Path, escalated: dict[str, tuple[str, tuple[str, ...]]], store_version: int, store: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps({"snapshot": {"version": store_version, "store": store, "written": time.time()},
                              "escalated": [[k, a, list(n)] for k, (a, n) in sorted(escalated.items())]}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_snapshot(path: Path) -> tuple[dict[str, tuple[str, tuple[str, ...]]], str | None, int]:
    """The escalated cases of a snapshot file, the store it was written from and the store's
    version it holds; CaseError names what is wrong with a damaged one."""
    try:
        doc = orjson.loads(path.read_bytes())
        rows = doc["escalated"]
        out = {str(k): (str(a), tuple(str(x) for x in n)) for k, a, n in rows}
        store = doc.get("snapshot", {}).get("store")
        held = int(doc.get("snapshot", {}).get("version", 0))
    except FileNotFoundError:
        return {}, None, 0
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CaseError(f"{path}: not a snapshot of cases ({type(exc).__name__}: {exc})") from None
    return out, None if store is None else str(store), held


def event(key: str, name: str, actor: str, why: str, at: float, **data: Any) -> Entry:
    """The row of one event (``name``) of case ``key``; checked against ``store`` by the caller's
    fold (a refused row changes nothing)."""
    op = "end" if name in ("close", "appeal-upheld") else "set"
    return Entry(KIND, key, op, {"event": name, **data}, at, actor, why)
