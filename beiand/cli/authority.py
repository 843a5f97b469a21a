"""``beiand records authority import|list|report|settle|withdraw``: the authority's lists of unfiled sites
(上级下发未备案网站, 501号 art. 5(7), 7(4); docs/authority.md).

``import FILE`` reads a list (CSV or XLSX, GB18030 or UTF-8, Chinese or English headers), names each
bad row (``file:line: field: what was expected``) and imports the rest into the decision store, so
every gateway following it applies the list (``policy.authority``). For each entry it tells, from
this gateway's records, inventory and access log, whether the site is hosted here and filed: a
hosted site the records do not file opens a sponsor case (``beiand cases``, finding ``authority``)
and is blocked per flow in ``enforce`` prefixes (``authority.block``); a site the records file is a
conflict for a person (``settle``), never blocked; anything else is "not hosted here". The same
file imported again writes nothing. ``report LIST`` is the 处理结果 to the authority, entry by entry;
``withdraw`` ends a listing the authority took back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from beiand.cli.block import _operator, decisions, transaction
from beiand.cli.common import CliError, err, out, policy_args, policy_setup, table, write_report
from beiand.cli.logs import fmt_time
from beiand.policy.authority import (
    BLOCKED,
    CONFLICT,
    FLAGGED,
    KIND,
    NOT_HOSTED,
    OUTCOMES,
    Assessment,
    AuthorityBook,
    AuthorityLists,
    Listed,
    Served,
    assess,
    imported_note,
    listed_entry,
    note,
)
from beiand.policy.cases import KIND as CASE_KIND
from beiand.policy.cases import CaseStore, event
from beiand.records import ImportRefused
from beiand.records.authority import AuthorityEntry, read_list
from beiand.runtime.settings import AuthoritySection
from beiand.store import Change, Entry, StoreError

# The 处理结果 report's columns, Chinese as the authority's template has them
REPORT_COLUMNS = ("清单编号", "网站域名/IP", "下发日期", "处理期限", "是否本单位接入", "用户账号", "接入地址", "备案核验", "处理结果",
                  "处理时间", "工单编号", "证据查询")
_CASE_STATES = {"open": "待通知", "notified": "整改中", "appealed": "申诉中", "escalated": "已取消接入", "closed": "已关闭"}


def _t(ts: float) -> str:
    return fmt_time(int(ts * 1000)) if ts else ""


def _served(args: argparse.Namespace, cfg: Any, entries: list[AuthorityEntry], days: int, now: float) -> dict[str, list[Served]]:
    """Per listed name, what the access log shows of it and of the names below it in the last
    ``days`` (server addresses, hits, first and last seen); {} without an access log (said)."""
    from beiand.cli.logs import records_source, unreachable

    names = {e.target for e in entries if not e.is_address}
    if not names:
        return {}
    try:
        src = records_source(args, cfg, "no access log")
    except CliError:
        err("beiand: note: no access log here (--log-dir, or accesslog.directory of the config): a listed name counts as "
            "hosted only by the address its row gives")
        return {}
    from beiand.sinks.clickhouse import ClickHouseError

    try:
        summary = src.summaries(int((now - days * 86400) * 1000), int((now + 60) * 1000))
    except ClickHouseError as exc:
        raise CliError(unreachable(exc)) from None
    acc: dict[tuple[str, str, str], list[float]] = {}
    for k, v in summary.items():
        name, server = k[0], k[1]
        n = name
        while n:  # the listed name the record's name is, or is below
            if n in names:
                row = acc.setdefault((n, name, server), [0.0, float("inf"), 0.0])
                row[0] += v[2]
                row[1] = min(row[1], v[0] / 1000)
                row[2] = max(row[2], v[1] / 1000)
            i = n.find(".")
            n = n[i + 1:] if i >= 0 else ""
    got: dict[str, list[Served]] = {}
    for (listed, name, server), (hits, first, last) in sorted(acc.items()):
        got.setdefault(listed, []).append(Served(name, server, int(hits), first, last))
    return got


def cmd_import(args: argparse.Namespace) -> int:
    try:
        f = read_list(args.file, args.list or "")
    except ImportRefused as exc:
        raise CliError(str(exc)) from None
    for i, _ref, _text in f.rejected:
        err(f"rejected: {i}")
    for i in f.issues:
        if all(i is not r[0] for r in f.rejected):
            err(f"note: {i}")
    setup = policy_setup(args, quiet=True)
    cfg = setup.config
    default = AuthoritySection()
    days = args.seen_days or (cfg.authority.seen_days if cfg is not None else default.seen_days)
    block = cfg.authority.block if cfg is not None else default.block
    now = time.time()
    served = _served(args, cfg, f.entries, days, now)
    who = _operator(args)
    # once per content (and list reference given for rows without one): the same file again writes nothing
    digest = f.sha256 if not args.list else hashlib.sha256(f"{f.sha256}|{args.list}".encode()).hexdigest()
    results: list[tuple[AuthorityEntry, Assessment | None, list[str], str]] = []
    store = decisions(args)
    try:
        with store.transaction() as tx:
            if tx.imported(f.path, digest):
                err(f"{f.path}: imported already (sha256 {f.sha256[:16]}…): nothing written")
                _summary(f.entries, [], already=True)
                return 1 if f.rejected else 0
            book = AuthorityBook(None, load=False)
            book.apply(tx.changes(0, (KIND,)))
            cs = CaseStore()
            cs.apply(tx.changes(0, (CASE_KIND,)))
            rows: list[Entry] = []
            written = 0
            for e in f.entries:
                held = book.orders.get(e.target)
                if held is not None and held.order == e.list_ref:
                    results.append((e, None, [], "listed already in force (an earlier import)"))
                    continue
                a = assess(e, setup.policy, served.get(e.target, []), now, block)
                rows.append(listed_entry(e, f.sha256, who, now))
                cases = _open_cases(cs, e, a, who, now, rows) if a.outcome in (BLOCKED, FLAGGED) else []
                rows.append(note(e.target, "assessed", who, f"import of {Path(f.path).name}: {OUTCOMES[a.outcome]}", now,
                                 list=e.list_ref, cases=cases, **a.data()))
                written += 1
                results.append((e, a, cases, ""))
            rows.append(imported_note(f, who, now, written, args.list or ""))
            tx.append(rows)
            tx.note_import(f.path, digest, len(rows))
            version = tx.head
    except StoreError as exc:
        raise CliError(f"{exc} (nothing was written)") from None
    finally:
        store.close()
    err(f"decision store {store.url}: version {version}")
    _summary(f.entries, results)
    if f.rejected:
        err(f"exit status 1: {len(f.rejected)} row(s) rejected, named above; the rest of {f.path} is imported")
    return 1 if f.rejected else 0


def _open_cases(cs: CaseStore, e: AuthorityEntry, a: Assessment, who: str, now: float, rows: list[Entry]) -> list[str]:
    """A sponsor case (finding ``authority``) per account serving the site, unless one is open (its
    key is named); the rows go to ``rows``, checked by folding them first."""
    keys = []
    for account in a.accounts:
        last = cs.current(account, "authority", e.target)
        if last is not None and last.open:
            keys.append(last.key)
            continue
        key = cs.next_key(account, "authority", e.target)
        c = event(key, "open", who, f"authority list {e.list_ref} ({e.listed}): {e.source}"[:500], now, names=[e.target],
                  first_seen=a.first_seen or now, last_seen=a.last_seen or now, hits=a.hits, servers=list(a.servers))
        refused = cs.refused_total
        cs.apply([Change(cs.version + 1, c.kind, c.key, c.op, c.data, c.at, c.actor, c.why, "")])
        if cs.refused_total != refused:
            raise CliError(f"{e.source}: case {key}: {cs.refused[-1]} (nothing was written)")
        rows.append(c)
        keys.append(key)
    return keys


def _summary(entries: list[AuthorityEntry], results: list[tuple[AuthorityEntry, Assessment | None, list[str], str]],
             already: bool = False) -> None:
    if already:
        out(f"{len(entries)} entr(ies) of the file: in the store since the first import (beiand records authority list)")
        return
    table([[e.list_ref, e.target, "-" if a is None else ("yes" if a.hosted_by else "no"),
            "-" if a is None else ", ".join(a.accounts) or "-", skipped or (OUTCOMES[a.outcome] if a else ""),
            ", ".join(cases) or "-"] for e, a, cases, skipped in results],
          ["list (清单)", "site", "hosted here", "account (用户账号)", "outcome (处理结果)", "case"])
    counts: dict[str, int] = {}
    for _e, a, _c, _s in results:
        if a is not None:
            counts[a.outcome] = counts.get(a.outcome, 0) + 1
    out(f"\n{sum(counts.values())} imported: {counts.get(BLOCKED, 0)} blocked, {counts.get(FLAGGED, 0)} flagged, "
        f"{counts.get(CONFLICT, 0)} conflict(s) for a person, {counts.get(NOT_HOSTED, 0)} not hosted here")


def _fold(args: argparse.Namespace) -> tuple[AuthorityLists, CaseStore]:
    store = decisions(args)
    try:
        lists = AuthorityLists()
        lists.apply(store.changes(0, (KIND,)))
        cs = CaseStore()
        cs.apply(store.changes(0, (CASE_KIND,)))
        return lists, cs
    except StoreError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()


def evidence_query(e: Listed) -> str:
    """The command line that shows the access-log records of a listed site since it was listed."""
    day = time.strftime("%Y-%m-%d", time.localtime(e.at))
    what = f"--server {e.target}" if ":" in e.target or e.target.replace(".", "").isdigit() else f"--suffix {e.target}"
    return f"beiand logs query {what} --since {day}"


def _verdict_text(e: Listed) -> str:
    a = e.assessed
    if not a:
        return ""
    words = {"filed": "已备案", "unfiled": "未备案", "mismatch": "接入信息不准确", "inactive": "备案已注销或未生效", "exempt": "豁免",
             "not-hosted": "非本单位接入"}
    v = str(a.get("verdict", ""))
    return f"{words.get(v, v)} ({v})" + (f" {a['filing']}" if a.get("filing") else "")


def report_rows(lists: AuthorityLists, cs: CaseStore, list_ref: str) -> list[list[str]]:
    """One row per entry of the list (and per row of its files that was not imported), with REPORT_COLUMNS."""
    rows: list[list[str]] = []
    for e in lists.lists().get(list_ref, []):
        a = e.assessed
        done = OUTCOMES.get(e.outcome, e.outcome or "待核查")
        when = e.assessed_at
        case_keys = [str(k) for k in a.get("cases", [])]
        for k in case_keys:
            c = cs.cases.get(k)
            if c is not None:
                done += f"; 工单 {k}: {_CASE_STATES.get(c.state, c.state)}" + (f" ({c.close_reason})" if c.close_reason else "")
                when = max(when, c.steps[-1].at if c.steps else 0.0)
        if e.outcome == BLOCKED:
            done += f"; 自 {_t(e.at)} 起阻断 (blocked per flow in enforce prefixes from then)"
        if e.settled_at:
            done += f"; 已人工核实 (settled by {e.settled.get('by') or '-'}): {e.settled.get('why', '')}"
            when = max(when, e.settled_at)
        if e.withdrawn_at:
            done += f"; 已撤销 {_t(e.withdrawn_at)} (withdrawn)"
        hosted = "是" if a.get("hosted") else ("否" if a else "")
        rows.append([e.list_ref, e.target, e.listed, e.deadline, hosted, ", ".join(a.get("accounts", [])),
                     ", ".join(a.get("servers", [])), _verdict_text(e), done, _t(when), ", ".join(case_keys), evidence_query(e)])
    for r in lists.rejected(list_ref):
        rows.append([list_ref, str(r.get("site") or ""), "", "", "", "", "", "",
                     f"格式错误，未导入 (rejected): {r.get('source')}: {r.get('field')}: {r.get('reason')}", _t(float(r["at"])), "", ""])
    return rows


def cmd_report(args: argparse.Namespace) -> int:
    lists, cs = _fold(args)
    known = set(lists.lists()) | {ref for c in lists.imports for ref in c.data.get("lists", [])}
    if args.list not in known:
        raise CliError(f"{args.list!r}: no such list in the decision store" + (f" (lists: {', '.join(sorted(known)[:10])})"
                                                                                 if known else " (none imported yet)"))
    rows = report_rows(lists, cs, args.list)
    write_report(rows, REPORT_COLUMNS, args.format, args.output, "处理结果", "entr(ies)")
    return 0


def list_rows(lists: AuthorityLists) -> list[dict[str, Any]]:
    rows = []
    for ref, entries in sorted(lists.lists().items()):
        counts = {o: sum(1 for e in entries if e.outcome == o) for o in (BLOCKED, FLAGGED, CONFLICT, NOT_HOSTED)}
        rows.append({"list": ref, "entries": len(entries), "imported": _t(min(e.at for e in entries)),
                     "by": ", ".join(sorted({e.by for e in entries if e.by})), "blocked": counts[BLOCKED], "flagged": counts[FLAGGED],
                     "conflicts": sum(1 for e in entries if e.open_conflict), "not_hosted": counts[NOT_HOSTED],
                     "rejected": len(lists.rejected(ref)),
                     "deadline": min((e.deadline for e in entries if e.deadline), default="")})
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    lists, _cs = _fold(args)
    rows = list_rows(lists)
    if args.json:
        for r in rows:
            out(json.dumps(r, ensure_ascii=False))
        return 0
    table([[r["list"], r["entries"], r["imported"], r["deadline"] or "-", r["blocked"], r["flagged"], r["conflicts"],
            r["not_hosted"], r["rejected"]] for r in rows],
          ["list (清单编号)", "entries", "imported", "deadline (处理期限)", "blocked", "flagged", "conflicts", "not hosted",
           "rejected"])
    open_conflicts = lists.conflicts()
    if open_conflicts:
        err(f"{open_conflicts} conflict(s) for a person: the records file a listed site (beiand records authority report LIST; "
            "settle with beiand records authority settle LIST SITE --reason …)")
    return 0


def cmd_settle(args: argparse.Namespace) -> int:
    from beiand.records.authority import site_target

    try:
        target, _ = site_target(args.site)
    except ValueError as exc:
        raise CliError(f"{args.site!r}: {exc}") from None
    with transaction(args) as tx:
        lists = AuthorityLists()
        lists.apply(tx.changes(0, (KIND,)))
        e = lists.entries.get((args.list, target))
        if e is None:
            raise CliError(f"{target}: not on list {args.list!r} (nothing was written)")
        if e.outcome != CONFLICT:
            raise CliError(f"{target}: not a conflict on list {args.list!r} ({e.outcome or 'not assessed'}; nothing was written)")
        tx.append([note(target, "settled", _operator(args), args.reason, time.time(), list=args.list)])
    out(f"{target} on list {args.list}: conflict settled ({args.reason})")
    return 0


def cmd_withdraw(args: argparse.Namespace) -> int:
    """The authority took a site off its list (or a person lifts a listing entered by mistake): an
    ``end`` row; the listing stays in the history and the report, and every gateway stops applying it."""
    from beiand.policy.orders import end_entry
    from beiand.records.authority import site_target

    try:
        target, _ = site_target(args.site)
    except ValueError as exc:
        raise CliError(f"{args.site!r}: {exc}") from None
    with transaction(args) as tx:
        book = AuthorityBook(None, load=False)
        book.apply(tx.changes(0, (KIND,)))
        held = book.orders.get(target)
        if held is None or held.order != args.list:
            raise CliError(f"{target}: no listing on {args.list!r} in force" + (f" (it is listed on {held.order!r})" if held
                                                                                 else "") + " (nothing was written)")
        tx.append([end_entry(KIND, target, _operator(args), args.reason)])
    out(f"{target}: listing on {args.list} withdrawn ({args.reason}); every gateway stops applying it")
    return 0


def add_parsers(rsub: Any) -> None:
    """``records authority …`` under ``beiand records``."""
    ap = rsub.add_parser("authority", help="the authority's lists of unfiled sites (上级下发未备案网站): import, list, report, settle, "
                          "withdraw")
    asub = ap.add_subparsers(dest="authority_command", required=True)

    def store_args(x: argparse.ArgumentParser, by: bool = False, policy: bool = False) -> None:
        if policy:
            policy_args(x)  # --config, --records, --inventory, --state-dir, --store (the decision store), ...
        else:
            x.add_argument("--config", metavar="FILE", help="(default /etc/beiand/beiand.toml)")
            x.add_argument("--state-dir", metavar="DIR", help="the gateway's state directory: its SQLite decision store")
            x.add_argument("--store", metavar="URL", help="the decision store (default: store.url of the config)")
        if by:
            x.add_argument("--by", metavar="WHO", help="who acts (default: the login, SUDO_USER first)")

    im = asub.add_parser("import", help="import a list (CSV or XLSX): every gateway applies it; bad rows named, the rest imported")
    im.add_argument("file", metavar="FILE")
    im.add_argument("--list", metavar="REF", help="the list's reference (清单编号 / 文号) for rows without one")
    im.add_argument("--log-dir", metavar="DIR", help="the access log that tells whether a listed name is served here "
                    "(default: accesslog.directory of the config)")
    im.add_argument("--local", action="store_true", help="read this gateway's log even when ClickHouse is configured")
    im.add_argument("--seen-days", type=int, metavar="N", help="days of the access log read (default authority.seen_days)")
    store_args(im, by=True, policy=True)
    im.set_defaults(func=cmd_import)
    ls = asub.add_parser("list", help="the lists imported, with what was found and done")
    ls.add_argument("--json", action="store_true")
    store_args(ls)
    ls.set_defaults(func=cmd_list)
    rp = asub.add_parser("report", help="the 处理结果 of a list, entry by entry (XLSX, CSV, JSON)")
    rp.add_argument("list", metavar="LIST", help="the list's reference (清单编号)")
    rp.add_argument("--format", choices=("xlsx", "csv", "json"), default="csv")
    rp.add_argument("--output", metavar="FILE", help="write here (required for XLSX)")
    store_args(rp)
    rp.set_defaults(func=cmd_report)
    st = asub.add_parser("settle", help="a person settles a conflict (the records file a listed site): recorded with who and why")
    st.add_argument("list", metavar="LIST")
    st.add_argument("site", metavar="SITE")
    st.add_argument("--reason", required=True, help="what was found (e.g. the filing checked in the MIIT system)")
    store_args(st, by=True)
    st.set_defaults(func=cmd_settle)
    wd = asub.add_parser("withdraw", help="the authority took a site off its list: every gateway stops applying it (kept in the "
                         "history and the report)")
    wd.add_argument("list", metavar="LIST")
    wd.add_argument("site", metavar="SITE")
    wd.add_argument("--reason", required=True, help="e.g. the authority's notice withdrawing it")
    store_args(wd, by=True)
    wd.set_defaults(func=cmd_withdraw)
