"""接入前核验: whether access may be opened for a filed service (``beiand records check-access``).

501号 art. 11(三)1: before it opens access, the access provider (接入商) looks the filing up and
verifies it. Access may be opened only when every condition holds, each checked on its own so
that a refusal names all that failed, with its article:

* the filing exists in the records (``filing-found``);
* it is in force (``filing-in-force``): 正常, or 接入审核中 within its grace (the same grace as the
  verdict's: REGULATIONS.md, provider practice); 已注销, 已吊销 and 首次备案审核中 are not;
* it names this provider among its 接入商 (``provider-named``; 已取消接入 is an access record of
  this provider that ended: not named any more);
* its IP list covers every address access is opened on (``ips-listed``);
* its domain list covers every name (``names-listed``; a listed domain covers the names below it).

The records are the ones every command loads (``records lookup``: the same files, status map and
provider names), so the check and the daemon's verdicts never disagree on what a filing says.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from beiand.errors import BeiandError, FileProblems
from beiand.model import Filing, FilingStatus
from beiand.policy.inventory import csv_rows
from beiand.policy.verdict import Policy
from beiand.records.domains import DomainError, normalise_domain
from beiand.records.numbers import FilingNumberError, parse_filing_number

_CHINA_TZ = dt.timezone(dt.timedelta(hours=8))
ARTICLE = "501号 art. 11(三)1"
# Each condition: what it says, and the articles that ask for it (REGULATIONS.md; docs/verdicts.md).
CONDITIONS = {
    "filing-found": ("the filing exists in the records (备案号 found)", ARTICLE),
    "filing-in-force": ("the filing is in force (备案有效)", f"{ARTICLE}; Order 33 art. 18"),
    "provider-named": ("the filing names this provider as 接入商 (access provider)", f"{ARTICLE}; Order 33 art. 19 ¶1"),
    "ips-listed": ("the filing's IP list covers the addresses", f"{ARTICLE}; 501号 art. 7(3)"),
    "names-listed": ("the filing's domain list covers the names", f"{ARTICLE}; Order 33 art. 5 ¶2"),
}
_STATUS_ARTICLE = {
    FilingStatus.CANCELLED: "Order 33 art. 18",
    FilingStatus.REVOKED: "Order 292 art. 4 ¶2; Order 33 art. 18 ¶2",
    FilingStatus.UNDER_REVIEW: "Order 33 art. 5",
}
_STATUS_TEXT = {
    FilingStatus.ACTIVE: "正常 (active)",
    FilingStatus.CANCELLED: "已注销 (cancelled)",
    FilingStatus.REVOKED: "已吊销 (revoked)",
    FilingStatus.UNDER_REVIEW: "首次备案审核中 (first filing under review: not filed)",
    FilingStatus.ACCESS_PENDING: "接入审核中 (access filing pending)",
    FilingStatus.ACCESS_CANCELLED: "已取消接入 (this provider's access ended)",
    FilingStatus.UNMAPPED: "a status word nobody mapped (kept in force: records.status_map)",
}


class CheckError(BeiandError, ValueError):
    """A request that cannot be checked (a malformed filing number, address or name)."""


class Condition(NamedTuple):
    condition: str  # a key of CONDITIONS
    ok: bool | None  # None: not checked (the filing was not found)
    article: str
    detail: str


class AccessCheck(NamedTuple):
    """The answer for one filing: may access be opened, and every condition with its article."""

    filing_number: str
    ips: tuple[str, ...]
    names: tuple[str, ...]
    conditions: tuple[Condition, ...]
    filing: Filing | None

    @property
    def may_open(self) -> bool:
        return all(c.ok for c in self.conditions)

    @property
    def failed(self) -> tuple[Condition, ...]:
        return tuple(c for c in self.conditions if c.ok is False)

    def as_dict(self) -> dict[str, object]:
        f = self.filing
        return {"filing": self.filing_number, "ips": list(self.ips), "names": list(self.names), "may_open": self.may_open,
                "sponsor": f.sponsor if f else None, "status": f.status.value if f else None,
                "access_provider": f.access_provider if f else None,
                "failed": [c.condition for c in self.failed],
                "conditions": [{"condition": c.condition, "ok": c.ok, "what": CONDITIONS[c.condition][0], "article": c.article,
                                "detail": c.detail} for c in self.conditions]}


class Request(NamedTuple):
    """One check, parsed: the normalised filing number, canonical addresses, normalised names."""

    filing: str
    ips: tuple[str, ...]
    names: tuple[str, ...]


def parse_request(filing: str, ips: Sequence[str], names: Sequence[str]) -> Request:
    """Check the request's own spelling; :class:`CheckError` names the field and why."""
    try:
        num = parse_filing_number(filing)
    except FilingNumberError as exc:
        raise CheckError(f"filing (备案号) {filing!r}: {exc.reason}") from None
    if num.is_sponsor_only:
        raise CheckError(f"filing (备案号) {filing!r}: a sponsor number (主办单位备案号) names no service: give the service's "
                         f"number, e.g. {num.text}-1")
    out_ips: list[str] = []
    for ip in ips:
        try:
            out_ips.append(str(ipaddress.ip_address(ip.strip().strip("[]"))))
        except ValueError:
            raise CheckError(f"ip {ip!r}: not an IP address") from None
    out_names: list[str] = []
    for n in names:
        try:
            out_names.append(normalise_domain(n))
        except DomainError as exc:
            raise CheckError(f"name (域名) {n!r}: {exc.reason}") from None
    if not out_ips and not out_names:
        raise CheckError("nothing to check: give the addresses (--ip) and/or the names (--name) access is opened for")
    return Request(num.text, tuple(dict.fromkeys(out_ips)), tuple(dict.fromkeys(out_names)))


def _covers(f: Filing, name: str) -> bool:
    """Whether a domain ``f`` lists is ``name`` or a parent of it (the index's suffix walk)."""
    listed = set(f.domains)
    cand = name
    while True:
        if cand in listed:
            return True
        dot = cand.find(".")
        if dot < 0:
            return False
        cand = cand[dot + 1:]


class AccessChecker:
    """Checks requests against one policy's records and provider names."""

    def __init__(self, policy: Policy) -> None:
        if not policy.provider_checked:
            raise CheckError("this provider's name is not configured (records.provider, or --provider): the 接入商 of a "
                             "filing cannot be checked")
        self.policy = policy
        self.by_number = {f.number: f for f in policy.records.filings}

    def check(self, req: Request, ts: float) -> AccessCheck:
        f = self.by_number.get(req.filing)
        if f is None:
            conds = [Condition("filing-found", False, ARTICLE, f"{req.filing} is not in the records (the filing export of "
                                                                   "this provider): the sponsor files first (先备案后接入)")]
            conds += [Condition(k, None, CONDITIONS[k][1], "not checked: no filing") for k in list(CONDITIONS)[1:]]
            return AccessCheck(req.filing, req.ips, req.names, tuple(conds), None)
        conds = [Condition("filing-found", True, ARTICLE, f"{f.number}: {f.sponsor} ({f.source})" if f.source else f.sponsor),
                 self._in_force(f, ts), self._provider(f)]
        if req.ips:
            missing = [ip for ip in req.ips if not self.policy.records.lists_ip(f, ip)]
            listed = ", ".join(f.ips) or "none"
            conds.append(Condition("ips-listed", not missing, CONDITIONS["ips-listed"][1],
                                   f"not listed: {', '.join(missing)} (the filing lists: {listed})" if missing
                                   else f"listed: {', '.join(req.ips)}"))
        if req.names:
            missing = [n for n in req.names if not _covers(f, n)]
            listed = ", ".join(f.domains) or "none"
            conds.append(Condition("names-listed", not missing, CONDITIONS["names-listed"][1],
                                   f"not listed: {', '.join(missing)} (the filing lists: {listed}); a name is added by a "
                                   "change filing first (Order 33 art. 14)" if missing else f"listed: {', '.join(req.names)}"))
        return AccessCheck(req.filing, req.ips, req.names, tuple(conds), f)

    def _in_force(self, f: Filing, ts: float) -> Condition:
        s = f.status
        art = CONDITIONS["filing-in-force"][1]
        text = _STATUS_TEXT.get(s, s.value)
        if s in (FilingStatus.ACTIVE, FilingStatus.UNMAPPED, FilingStatus.ACCESS_CANCELLED):
            # 已取消接入: the filing itself is in force; that it no longer names us is the provider condition
            return Condition("filing-in-force", True, art, text)
        if s is FilingStatus.ACCESS_PENDING:
            grace = self.policy.config.access_pending_grace_days
            try:
                day = dt.date.fromisoformat(f.reviewed)
            except ValueError:
                return Condition("filing-in-force", False, f"{art}; REGULATIONS.md (接入审核中)",
                                 f"{text}, with no review date (审核时间) to count its grace from")
            until = dt.datetime(day.year, day.month, day.day, tzinfo=_CHINA_TZ).timestamp() + 86400.0 * (1 + grace)
            ok = ts <= until
            end = dt.datetime.fromtimestamp(until, _CHINA_TZ).strftime("%Y-%m-%d %H:%M")
            return Condition("filing-in-force", ok, f"{art}; REGULATIONS.md (接入审核中)",
                             f"{text}, reviewed {f.reviewed}: within the {grace}-day grace until {end} (Beijing)" if ok else
                             f"{text}, reviewed {f.reviewed}: its {grace}-day grace ended {end} (Beijing)")
        return Condition("filing-in-force", False, f"{ARTICLE}; {_STATUS_ARTICLE[s]}", text)

    def _provider(self, f: Filing) -> Condition:
        art = CONDITIONS["provider-named"][1]
        if f.status is FilingStatus.ACCESS_CANCELLED:
            return Condition("provider-named", False, art, f"已取消接入: this provider's access record ended (接入商 "
                                                         f"{f.access_provider or 'empty'}); a new 接入备案 comes first")
        if self.policy.is_ours(f.access_provider):
            return Condition("provider-named", True, art, f.access_provider)
        return Condition("provider-named", False, art, f"接入商 {f.access_provider or '(empty)'} is not this provider "
                                                     "(records.provider): the filing's 接入备案 with this provider comes first")


class BatchError(FileProblems):
    """The batch file cannot be read at all (no such file, no header, not JSON)."""


_BATCH_HEADERS = {"filing": "filing", "number": "filing", "备案号": "filing", "ip": "ip", "ips": "ip", "ip地址": "ip",
                  "地址": "ip", "name": "name", "names": "name", "domain": "name", "domains": "name", "域名": "name"}
_SPLIT = str.maketrans({c: " " for c in ";,、；，|\n\t"})


def _cells(v: object, what: str) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return v.translate(_SPLIT).split()
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return [x for x in v if x.strip()]
    raise CheckError(f"{what}: expected a string or a list of strings, got {type(v).__name__}")


def read_batch(path: str) -> list[tuple[str, Request | CheckError]]:
    """The checks of a batch file, each with its ``file:line`` and the request or why it cannot be
    checked: CSV (``filing,ip,name``; 备案号,IP,域名; several addresses or names in a cell separated by
    ``;`` or spaces), JSON (a list of ``{"filing", "ips", "names"}``) or JSON lines. BatchError: the
    file as a whole cannot be read."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise BatchError([f"--batch {p}: cannot read: {exc.strerror}"]) from None
    items: list[tuple[str, dict[str, object]]] = []
    out: list[tuple[str, Request | CheckError]] = []
    if p.suffix.lower() in (".json", ".jsonl", ".ndjson"):
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BatchError([f"--batch {p}: not UTF-8 JSON ({exc.reason} at byte {exc.start})"]) from None
        stripped = text.lstrip()
        if stripped.startswith("["):
            try:
                doc = json.loads(text)
            except ValueError as exc:
                raise BatchError([f"--batch {p}: not JSON: {exc}"]) from None
            for i, item in enumerate(doc, 1):
                items.append((f"{p}: item {i}", item))
        else:
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    items.append((f"{p}:{n}", json.loads(line)))
                except ValueError as exc:
                    out.append((f"{p}:{n}", CheckError(f"not a JSON object: {exc}")))
    else:
        problems: list[str] = []
        try:
            rows = list(csv_rows(p, raw, _BATCH_HEADERS, ("filing",), "filing,ip,name", "备案号,IP,域名", BatchError, problems))
        except BatchError as exc:
            raise BatchError([f"--batch {'; '.join(exc.problems)}"]) from None
        for prob in problems:
            where, _, why = prob.partition(": ")
            out.append((where, CheckError(why)))
        items += [(where, dict(cells)) for where, cells in rows]
    for where, item in items:
        if not isinstance(item, dict):
            out.append((where, CheckError(f"expected an object with filing, ips and names, got {type(item).__name__}")))
            continue
        try:
            filing = item.get("filing", item.get("备案号"))
            if not isinstance(filing, str) or not filing.strip():
                raise CheckError("filing (备案号): missing")
            ips = _cells(item.get("ips", item.get("ip")), "ips")
            names = _cells(item.get("names", item.get("name")), "names")
            out.append((where, parse_request(filing, ips, names)))
        except CheckError as exc:
            out.append((where, exc))
    if not out:
        raise BatchError([f"--batch {p}: no check in it (expected rows filing,ip,name)"])
    return sorted(out, key=lambda wr: _line_key(wr[0]))


def _line_key(where: str) -> tuple[int, str]:
    tail = where.rsplit(":", 1)[-1].strip().removeprefix("item ")
    return (int(tail) if tail.isdigit() else 0, where)
