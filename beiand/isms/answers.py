"""Answers to the query commands (ISMS.md §3-§4), off the request path (they may read a day of log).

* type 1 ``logQuery`` → DT 3 (reports.Reporter.log_query);
* type 3 ``commandQuery`` (and type 6's ``commandQuery``) → DT 6 ``commandQueryResult``: the
  commands and lists in force, for the houses asked (none: all);
* type 6 ``queryView`` {type, content, queryTime} → an ack (DT 10, type 7) whose msgInfo is what
  beiand's aggregates say of that name or address over the day before queryTime (visits, first
  and last seen, blocked, verdicts);
* type 6 ``commandRecord`` {controlsId*} → an ack (type 8) per query: each command's state (in
  force, deleted, replaced, refused, unknown) and the access-log records taken under it that day.

The endpoint queues the query (``CommandService.on_query``); the runtime calls :func:`answer`.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from beiand.accesslog.reader import Query as LogFilter
from beiand.isms.reports import Reporter, _row
from beiand.isms.service import Ack
from beiand.isms.store import CommandStore, _split
from beiand.isms.wire.codes import AckResult, AckType, DataType, RuleSubtype, SecurityType
from beiand.isms.wire.model import LogQuery, Query, format_time, parse_time

DAY_S = 86400
MAX_MSG = 1024


def _rules_text(parts: list[str]) -> str:
    out = ""
    for p in parts:
        if len(out) + len(p) + 1 > MAX_MSG:
            return out + ";…" if len(out) + 2 <= MAX_MSG else out
        out = f"{out};{p}" if out else p
    return out


def command_query_rows(store: CommandStore, house_ids: list[str], now: float) -> Iterator[dict[str, Any]]:
    """DT 6 rows: each command in force (for one of ``house_ids``, or any house when empty), then
    the blacklist and noFilter entries."""
    keep = store.in_house(house_ids)
    for c in sorted(list(store.state.commands.values()), key=lambda c: c.command_id):
        if not keep(c):
            continue
        rules = [f"{r.subtype}:{r.value_start}" + (f"-{r.value_end}" if r.value_end else "") for r in c.rules[:64]]
        yield _row(6, {"commandId": c.command_id, "type": int(AckType.FILTER if c.type == SecurityType.FILTER else AckType.MONITOR),
                       "houseId": ",".join(c.house_ids), "effectTime": format_time(c.effect_time) if c.effect_time else "",
                       "expiredTime": format_time(c.expired_time) if c.expired_time else "", "ruleAmount": len(c.rules),
                       "rules": _rules_text(rules), "state": int(c.active(now))})
    for e in sorted(list(store.state.lists.values()), key=lambda e: (e.kind, e.command_id)):
        vals = _split(e.contents)
        yield _row(6, {"commandId": e.command_id, "type": int(AckType.BLACKLIST if e.kind == "blacklist" else AckType.NO_FILTER),
                       "houseId": "", "effectTime": "", "expiredTime": "", "ruleAmount": len(vals),
                       "rules": _rules_text([f"{int(RuleSubtype.DOMAIN) if e.type == 1 else int(RuleSubtype.DST_IP)}:{v}"
                                             for v in vals[:64]]), "state": 1})


def _query_end(q: Query, now: float) -> float:
    try:
        return parse_time(q.fields.get("queryTime", "")) or now
    except ValueError:
        return now


def query_view(reporter: Reporter, q: Query, now: float) -> Ack:
    """What the aggregates say of a name (and the names below it) or an address."""
    content = q.fields.get("content", "").strip().lower().rstrip(".")
    end = _query_end(q, now)
    net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    try:
        net = ipaddress.ip_network(content, strict=False)
    except ValueError:
        net = None
    hits = first = last = blocked = 0
    verdicts: Counter[str] = Counter()
    for (name, server, _port, _a, verdict, kind, action, _r, _f), (f, la, n) in reporter.source().summaries(
            int((end - DAY_S) * 1000), int(end * 1000)).items():
        if kind == "dns-answer" or not content:
            continue
        if net is not None:
            try:
                if ipaddress.ip_address(server) not in net:
                    continue
            except ValueError:
                continue
        elif not (name == content or name.endswith("." + content)):
            continue
        hits += n
        first = min(first, f) if first else f
        last = max(last, la)
        blocked += n if action == "block" else 0
        verdicts[verdict] += n
    if not content:
        return Ack(q.command_id, AckType.QUERY_VIEW, AckResult.NONE, "queryView: empty content", reporter.store_house())
    if not hits:
        msg = f"{content}: no access in {format_time(end - DAY_S)}..{format_time(end)}"
    else:
        v = ",".join(f"{k}:{n}" for k, n in verdicts.most_common())
        msg = (f"{content}: visits {hits}, firstFound {format_time(first / 1000)}, lastFound {format_time(last / 1000)}, "
               f"blocked {blocked}, verdicts {v}")
    return Ack(q.command_id, AckType.QUERY_VIEW, AckResult.ALL, msg[:MAX_MSG], reporter.store_house())


def command_record(reporter: Reporter, store: CommandStore, q: Query, now: float) -> Ack:
    """Each controlsId: its state and the access-log records taken under it over the last day."""
    ids = [x.strip() for x in q.fields.get("controlsId", "").split(",") if x.strip()]
    counts: Counter[str] = Counter()
    want = set(ids)
    for r in reporter.source().query(LogFilter(since_ms=int((now - DAY_S) * 1000), until_ms=int(now * 1000))):
        o = r.order
        if o.startswith("isms"):
            cid = o.partition(":")[2]
            if cid in want:
                counts[cid] += 1
    ended = {str(h.get("command", {}).get("command_id")): h.get("why", "") for h in store.state.history}
    refused = {str(x.get("commandId")): x.get("why", "") for x in store.state.refused}
    lists = {str(e.command_id): e.kind for e in store.state.lists.values()}
    parts = []
    for cid in ids:
        c = store.state.commands.get(int(cid)) if cid.isascii() and cid.isdigit() else None
        if c is not None:
            st = "in force" if c.active(now) else "outside its window"
        elif cid in lists:
            st = f"{lists[cid]} in force"
        elif cid in ended:
            st = ended[cid]
        elif cid in refused:
            st = "refused: " + str(refused[cid])[:120]
        else:
            st = "unknown"
        parts.append(f"{cid}: {st}, records {counts[cid]}")
    result = AckResult.ALL if ids else AckResult.NONE
    return Ack(q.command_id, AckType.COMMAND_RECORD, result, "; ".join(parts)[:MAX_MSG] or "commandRecord: no controlsId",
               reporter.store_house())


def answer(reporter: Reporter, store: CommandStore, q: LogQuery | Query, now: float
           ) -> tuple[list[tuple[DataType, list[Path]]], list[Ack]]:
    """(data files written, acks to send) for one queued query."""
    if isinstance(q, LogQuery):
        return [(DataType.LOG_QUERY_RESULT, reporter.log_query(q))], []
    if q.root == "commandQuery":
        houses = [h for h in q.fields.get("houseId", "").split(",") if h]
        files = reporter.spool.write(DataType.COMMAND_QUERY_RESULT, command_query_rows(store, houses, now),
                                     (("commandId", str(q.command_id)),))
        return [(DataType.COMMAND_QUERY_RESULT, files)], []
    if q.root == "queryView":
        return [], [query_view(reporter, q, now)]
    if q.root == "commandRecord":
        return [], [command_record(reporter, store, q, now)]
    return [], [Ack(q.command_id, AckType.QUERY_VIEW, AckResult.NONE, f"unsupported: <{q.root}>", reporter.store_house())]
