"""``beiand cases``: sponsor cases, from a finding to 整改 or 取消接入 (issue 31; docs/cases.md).

Cases are rows of the decision store (``beiand.policy.cases``): every gateway following it, and
every operator, sees the same cases and every step with who, when and why. These commands open a
case by hand (the authority's list, a finding of the operator's own), record the steps people take
(a notice sent, an extension, an appeal and its decision, a closure), list and show the cases, and
write the report to the 通管局. A step that does not follow from the case's state is refused with
the reason (exit 2) and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from beiand.cli.block import _config, _operator, decisions, transaction
from beiand.cli.common import CliError, err, out, table, write_report
from beiand.cli.logs import DEFAULT_CONFIG, fmt_time, parse_time
from beiand.policy.cases import CLOSE_REASONS, FINDINGS, KIND, Case, CaseStore, case_row, event
from beiand.records.domains import DomainError, normalise_domain
from beiand.store import Entry, StoreError

# The report's columns (the provider's usual template to the 通管局), Chinese first
REPORT_COLUMNS = ("域名", "主办单位/客户", "发现时间", "问题类型", "通知时间", "整改期限", "处理结果", "处理时间")
RESULTS = {"open": "待通知", "notified": "整改中", "appealed": "申诉中", "escalated": "已取消接入", "rectified": "已整改",
           "not-served": "已停止服务", "withdrawn": "已撤销", "appeal-upheld": "申诉成立", "cancelled-by-provider": "已取消接入",
           "other": "已关闭"}


def _fold(args: argparse.Namespace) -> tuple[CaseStore, str]:
    store = decisions(args)
    try:
        cs = CaseStore()
        cs.apply(store.changes(0, (KIND,)))
        return cs, store.url
    except StoreError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()


def _write(args: argparse.Namespace, make: Any) -> Case:
    """Under the store's write lock: fold the cases, make the row from the case as it is now
    (``make(cases) -> Entry``), check it follows (folded on a copy), then write it."""
    with transaction(args) as tx:
        cs = CaseStore()
        cs.apply(tx.changes(0, (KIND,)))
        entry: Entry = make(cs)
        from beiand.store import Change

        trial = CaseStore()
        trial.cases, trial.version = dict(cs.cases), tx.head
        trial.apply([Change(tx.head + 1, entry.kind, entry.key, entry.op, entry.data, entry.at, entry.actor, entry.why, "")])
        if trial.refused:
            raise CliError(trial.refused[-1].split(": ", 1)[1] + " (nothing was written)")
        tx.append([entry])
    return trial.cases[entry.key]


# The audit's findings (report.audit.findings.KINDS) that open a case, by the case's finding
AUDIT_FINDINGS = {
    "unfiled-served": "unfiled", "dns-unfiled-points-here": "unfiled", "tls-san-unfiled": "unfiled",
    "mismatch-served": "mismatch", "name-on-unlisted-ip": "mismatch", "cancelled-served": "inactive",
    "dns-moved-away": "resolves-away", "homepage-no-number": "no-number", "homepage-wrong-number": "no-number",
    "authority-listed-hosted": "authority",
}


def open_from_findings(args: argparse.Namespace, findings: list[Any]) -> tuple[list[str], list[str]]:
    """``audit --open-cases``: a case per finding that names a site and its account, in one
    transaction: (the keys opened, what was left out and why). A finding whose case is open already
    adds nothing (its evidence is the daemon's); one a person closed as withdrawn is not opened again."""
    from beiand.policy.cases import SETTLED_BY_PERSON
    from beiand.store import Change

    now = time.time()
    who = _operator(args)
    opened: list[str] = []
    left: list[str] = []
    store = decisions(args)
    try:
        with store.transaction() as tx:
            cs = CaseStore()
            cs.apply(tx.changes(0, (KIND,)))
            entries: list[Entry] = []
            for f in findings:
                finding = AUDIT_FINDINGS.get(f.kind)
                if finding is None:
                    continue
                if not f.account:
                    left.append(f"{f.kind} {f.subject}: no account (not in hosted space here)")
                    continue
                try:
                    name = normalise_domain(f.subject)
                except DomainError:
                    left.append(f"{f.kind} {f.subject}: not a name")
                    continue
                last = cs.current(f.account, finding, name)
                if last is not None and (last.open or last.close_reason in SETTLED_BY_PERSON):
                    left.append(f"{f.kind} {name}: case {last.key} is {last.state}" + (f" ({last.close_reason})" if
                                                                                       last.close_reason else ""))
                    continue
                key = cs.next_key(f.account, finding, name)
                servers = [x.strip() for x in f.server.split(",") if x.strip()]
                e = event(key, "open", who, f"audit: {f.kind}: {f.detail}"[:500], now, names=[name],
                          first_seen=f.first_seen or now, last_seen=f.last_seen or now, hits=f.hits, servers=servers)
                refused = cs.refused_total
                cs.apply([Change(cs.version + 1, e.kind, e.key, e.op, e.data, e.at, e.actor, e.why, "")])
                if cs.refused_total != refused:
                    left.append(f"{f.kind} {name}: {cs.refused[-1]}")
                    continue
                entries.append(e)
                opened.append(key)
            if entries:
                tx.append(entries)
    except StoreError as exc:
        raise CliError(f"{exc} (no case was opened)") from None
    finally:
        store.close()
    return opened, left


def _calendar(args: argparse.Namespace) -> Any:
    from beiand.policy.workdays import CalendarError, load_calendar

    cfg = _config(args)
    try:
        return cfg, load_calendar(cfg.cases.holidays_file)
    except CalendarError as exc:
        raise CliError("; ".join(exc.problems[:5])) from None


def _case(cs: CaseStore, key: str) -> Case:
    c = cs.cases.get(key)
    if c is None:
        near = [k for k in cs.cases if key in k][:5]
        raise CliError(f"{key}: no such case" + (f" (did you mean {', '.join(near)}?)" if near else ""))
    return c


def _t(ts: float) -> str:
    return fmt_time(int(ts * 1000)) if ts else "-"


def cmd_open(args: argparse.Namespace) -> int:
    if args.finding not in FINDINGS:
        raise CliError(f"--finding {args.finding!r}: one of {', '.join(FINDINGS)}")
    account, name = args.account.strip(), args.name[0].strip().lower().rstrip(".")
    now = time.time()

    def make(cs: CaseStore) -> Entry:
        last = cs.current(account, args.finding, name)
        if last is not None and last.open:
            raise CliError(f"case {last.key} is open already ({last.state})")
        return event(cs.next_key(account, args.finding, name), "open", _operator(args), args.reason or "", now,
                     names=list(args.name))

    c = _write(args, make)
    out(f"case {c.key} opened: {FINDINGS[c.finding]}; {', '.join(c.names)}")
    return 0


def cmd_notify(args: argparse.Namespace) -> int:
    cfg, cal = _calendar(args)
    now = time.time()
    deadline = cal.deadline(now, cfg.cases.rectify_days)
    import datetime as dt

    from beiand.policy.workdays import BEIJING

    year = dt.datetime.fromtimestamp(deadline, BEIJING).date()
    if not cal.covers(year):
        err(f"beiand: warning: cases.holidays_file has no holiday arrangement for {year.year}: weekends only are days off")
    c = _write(args, lambda cs: event(_case(cs, args.key).key, "notify", _operator(args), args.reason or "", now, deadline=deadline))
    out(f"case {c.key}: notice recorded; 整改期限 {_t(c.deadline)} ({cfg.cases.rectify_days} working days)")
    return 0


def deadline_arg(text: str, field: str) -> float:
    """A deadline given on the command line: a date alone is the end of that day in Beijing time
    (as the notices' deadlines), anything else as ``parse_time`` reads it."""
    import datetime as dt
    import re

    from beiand.policy.workdays import BEIJING

    t = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
        try:
            d = dt.date.fromisoformat(t) + dt.timedelta(days=1)
        except ValueError:
            raise CliError(f"{field} {text!r}: not a date") from None
        return dt.datetime(d.year, d.month, d.day, tzinfo=BEIJING).timestamp() - 0.001
    return parse_time(t, field) / 1000


def cmd_extend(args: argparse.Namespace) -> int:
    until = deadline_arg(args.until, "--until")
    now = time.time()
    c = _write(args, lambda cs: event(_case(cs, args.key).key, "extend", _operator(args), args.reason, now, deadline=until))
    out(f"case {c.key}: deadline {_t(c.deadline)} ({c.state})")
    return 0


def cmd_appeal(args: argparse.Namespace) -> int:
    now = time.time()
    name = "appeal" if not (args.upheld or args.rejected) else ("appeal-upheld" if args.upheld else "appeal-rejected")
    data: dict[str, Any] = {}
    if args.rejected:
        cfg, cal = _calendar(args)
        data["deadline"] = deadline_arg(args.until, "--until") if args.until else cal.deadline(now, cfg.cases.rectify_days)
    c = _write(args, lambda cs: event(_case(cs, args.key).key, name, _operator(args), args.reason, now, **data))
    out(f"case {c.key}: {name}; now {c.state}" + (f", deadline {_t(c.deadline)}" if c.state == "notified" else ""))
    return 0


def cmd_close(args: argparse.Namespace) -> int:
    now = time.time()
    c = _write(args, lambda cs: event(_case(cs, args.key).key, "close", _operator(args), args.note or "", now, reason=args.reason))
    out(f"case {c.key}: closed ({c.close_reason})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    cs, _url = _fold(args)
    cases = sorted((c for c in cs.cases.values() if not args.state or c.state == args.state), key=lambda c: c.opened_at)
    if args.json:
        for c in cases:
            out(json.dumps(case_row(c), ensure_ascii=False))
        return 0
    table([[c.key, c.state, _t(c.opened_at), _t(c.deadline), c.hits, ", ".join(c.names[:3])] for c in cases],
          ["case", "state", "opened", "deadline", "hits", "names"])
    counts = cs.by_state()
    err("  ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    cs, _url = _fold(args)
    c = _case(cs, args.key)
    if args.json:
        out(json.dumps(case_row(c), ensure_ascii=False, indent=2))
        return 0
    out(f"case      {c.key}\nfinding   {FINDINGS[c.finding]}\nnames     {', '.join(c.names)}\nstate     {c.state}"
        f"{' (' + c.close_reason + ')' if c.close_reason else ''}\nopened    {_t(c.opened_at)}\ndeadline  {_t(c.deadline)}\n"
        f"seen      {_t(c.first_seen)} .. {_t(c.last_seen)}, {c.hits} record(s), from {', '.join(c.servers) or '-'}")
    out("steps:")
    for s in c.steps:
        out(f"  {_t(s.at)}  {s.event:16} {s.actor or '-':12} {s.why}")
    return 0


def report_rows(cs: CaseStore, since: float, until: float) -> list[list[str]]:
    """One row per case found in [since, until) or closed in it, with REPORT_COLUMNS."""
    rows = []
    for c in sorted(cs.cases.values(), key=lambda c: c.opened_at):
        if not (since <= c.opened_at < until or since <= c.closed_at < until):
            continue
        result = RESULTS.get(c.close_reason if c.state == "closed" else c.state, c.state)
        done = c.closed_at or c.escalated_at
        rows.append([", ".join(c.names), c.account, _t(c.opened_at), FINDINGS[c.finding], _t(c.notified_at), _t(c.deadline),
                     result, _t(done)])
    return rows


def cmd_report(args: argparse.Namespace) -> int:
    since = parse_time(args.since, "--from") / 1000
    until = parse_time(args.until, "--to") / 1000 if args.until else time.time()
    cs, _url = _fold(args)
    rows = report_rows(cs, since, until)
    write_report(rows, REPORT_COLUMNS, args.format, args.output, "备案核查处理情况", "case(s)")
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("cases", help="sponsor cases: from a finding to 整改 or 取消接入 (open, notify, extend, appeal, close, "
                       "list, show, report)")
    csub = p.add_subparsers(dest="cases_command", required=True)

    def common(x: argparse.ArgumentParser, by: bool = False) -> None:
        x.add_argument("--config", metavar="FILE", help=f"(default {DEFAULT_CONFIG})")
        x.add_argument("--state-dir", metavar="DIR", help="the gateway's state directory: its SQLite decision store")
        x.add_argument("--store", metavar="URL", help="the decision store (default: store.url of the config)")
        if by:
            x.add_argument("--by", metavar="WHO", help="who acts (default: the login, SUDO_USER first)")

    o = csub.add_parser("open", help="open a case by hand (the authority's list, an operator's own finding)")
    o.add_argument("--account", required=True, help="the customer account (用户账号) holding the site")
    o.add_argument("--finding", required=True, choices=sorted(FINDINGS))
    o.add_argument("--name", required=True, action="append", help="the site's name (repeat for more)")
    o.add_argument("--reason", default="")
    common(o, by=True)
    o.set_defaults(func=cmd_open)
    n = csub.add_parser("notify", help="record a notice sent to the customer: the deadline is cases.rectify_days working days on")
    n.add_argument("key")
    n.add_argument("--reason", default="", help="how and to whom (e.g. mail to ops@customer)")
    common(n, by=True)
    n.set_defaults(func=cmd_notify)
    e = csub.add_parser("extend", help="move a case's deadline (an escalated case's block lifts)")
    e.add_argument("key")
    e.add_argument("--until", required=True, metavar="TIME")
    e.add_argument("--reason", required=True)
    common(e, by=True)
    e.set_defaults(func=cmd_extend)
    a = csub.add_parser("appeal", help="the customer appeals (escalation held); --upheld / --rejected decides it")
    a.add_argument("key")
    a.add_argument("--reason", required=True)
    g = a.add_mutually_exclusive_group()
    g.add_argument("--upheld", action="store_true", help="the appeal stands: the case closes")
    g.add_argument("--rejected", action="store_true", help="the appeal fails: back to 整改, a new deadline")
    a.add_argument("--until", metavar="TIME", help="with --rejected: the new deadline (default: cases.rectify_days on)")
    common(a, by=True)
    a.set_defaults(func=cmd_appeal)
    c = csub.add_parser("close", help="close a case (it stays with every step)")
    c.add_argument("key")
    c.add_argument("--reason", required=True, choices=CLOSE_REASONS)
    c.add_argument("--note", default="")
    common(c, by=True)
    c.set_defaults(func=cmd_close)
    ls = csub.add_parser("list", help="the cases, by state")
    ls.add_argument("--state", choices=("open", "notified", "appealed", "escalated", "closed"))
    ls.add_argument("--json", action="store_true")
    common(ls)
    ls.set_defaults(func=cmd_list)
    sh = csub.add_parser("show", help="one case with every step, who, when and why")
    sh.add_argument("key")
    sh.add_argument("--json", action="store_true")
    common(sh)
    sh.set_defaults(func=cmd_show)
    rp = csub.add_parser("report", help="the report to the 通管局: cases found or closed in a period (XLSX, CSV, JSON)")
    rp.add_argument("--from", dest="since", required=True, metavar="TIME")
    rp.add_argument("--to", dest="until", metavar="TIME", help="(default: now)")
    rp.add_argument("--format", choices=("xlsx", "csv", "json"), default="csv")
    rp.add_argument("--output", metavar="FILE", help="the XLSX file")
    common(rp)
    rp.set_defaults(func=cmd_report)
