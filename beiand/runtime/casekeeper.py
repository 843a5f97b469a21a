"""The daemon's side of sponsor cases (issue 31; docs/cases.md): open them, notify, escalate, resolve.

The supervisor hands every row of the active-resource view (name, server, account, verdict, first
and last seen, hits: what the workers already send, so the verdict path does nothing more) to
:meth:`CaseKeeper.observe`; a verdict in ``cases.auto_open`` on a hosted name is a finding. Every
``cases.pass_interval`` seconds, :meth:`CaseKeeper.step`, in the keeper's own thread:

1. under the decision store's write lock, folds the cases (one fold per store: every gateway of a
   fleet sees one case, and two gateways that find the same site write one ``open``), opens a
   case per new finding, adds evidence to an open one (at most one row per ``evidence_interval``),
   closes what resolved (the records now file the name: rectified; not served for
   ``resolve_after_days``: not-served) and escalates what is past its deadline (取消接入: the
   ``case`` overlay blocks its names per flow in enforce prefixes);
2. sends what is due, each notice in its own transaction (the case re-read first, so two gateways
   with a relay never send one notice twice): the notice (the deadline is ``cases.rectify_days``
   working days from it) and the reminder ``remind_days`` working days before the deadline. A
   notice that cannot be sent (no contact for the account, a template that does not render, the
   relay refusing) is logged, counted (``beiand_case_notices_total{result="failed"}``, the alert
   ``BeiandCaseNoticesFailing``) and tried again after ``notice_retry``: the case stays open and is
   never escalated without a notice.

Without ``cases.smtp_host`` no mail is sent: a person sends the notice and records it
(``beiand cases notify``), and the deadline runs from then.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from beiand.model import VerdictKind
from beiand.policy.cases import KIND, LIFTED_BY_FILING, SETTLED_BY_PERSON, Case, CaseStore, event
from beiand.policy.verdict import Policy
from beiand.policy.workdays import CalendarError, WorkCalendar, load_calendar
from beiand.runtime.notices import NoticeError, Relay, Templates, load_contacts, notice_values, send_mail
from beiand.runtime.settings import Config
from beiand.store import DecisionStore, Entry, StoreError

log = logging.getLogger("beiand.cases")

ACTOR = "beiand"  # who the daemon's own steps are by (the gateway is in every row too)
DAY = 86400.0
MAX_PENDING = 100_000  # findings waiting for a pass (beyond: dropped and counted; the access log has them)
# A test's clock (the lab's end-to-end test moves it past a deadline): a file holding seconds to
# add to the wall clock. Never set in production.
CLOCK_ENV = "BEIAND_TEST_CLOCK_OFFSET_FILE"


def wall_clock() -> float:
    path = os.environ.get(CLOCK_ENV)
    if not path:
        return time.time()
    try:
        return time.time() + float(Path(path).read_text().strip() or 0)
    except (OSError, ValueError):
        return time.time()


@dataclass
class Seen:
    """What the workers saw of one finding since it was last written."""

    first: float
    last: float
    hits: int = 0
    servers: set[str] = field(default_factory=set)

    def add(self, first: float, last: float, hits: int, server: str) -> None:
        self.first = min(self.first, first)
        self.last = max(self.last, last)
        self.hits += hits
        if len(self.servers) < 16:
            self.servers.add(server)

    def merge(self, o: Seen) -> None:
        self.first = min(self.first, o.first)
        self.last = max(self.last, o.last)
        self.hits += o.hits
        for srv in o.servers:
            if len(self.servers) >= 16:
                break
            self.servers.add(srv)


@dataclass
class PassResult:
    opened: int = 0
    evidence: int = 0
    resolved: int = 0
    escalated: int = 0
    notices: int = 0
    failed: int = 0
    capped: int = 0
    seconds: float = 0.0


class CaseKeeper:
    """See the module. ``opener`` gives a store connection (the keeper keeps it); ``policy`` the
    records the daemon judges with now; ``clock`` the time of a pass."""

    def __init__(self, cfg: Config, opener: Callable[[], DecisionStore], policy: Callable[[], Policy],
                 registry: CollectorRegistry | None = None, clock: Callable[[], float] = wall_clock,
                 send: Callable[[Relay, list[str], str, str], str] = send_mail) -> None:
        self.cfg = cfg
        self._open = opener
        self.policy = policy
        self.clock = clock
        self.send = send
        self.store: DecisionStore | None = None
        self.cases = CaseStore()
        self.auto = frozenset(self.cfg.cases.auto_open)
        self.lock = threading.Lock()
        self.pending: dict[tuple[str, str, str], Seen] = {}  # (account, finding, name) → seen since the last pass
        self.unwritten: dict[str, Seen] = {}  # case key → evidence not written yet (evidence_interval)
        self.evidence_at: dict[str, float] = {}  # case key → when its evidence was last written
        self.seen_at: dict[str, float] = {}  # case key → when the workers last saw it (written or not)
        self.retry_at: dict[str, float] = {}  # case key → when a failed notice may be tried again
        self.errors: dict[str, str] = {}  # case key → why its last notice failed
        self.failures: dict[str, int] = {}  # case key → notices failed in a row (the retry backs off)
        self.minute: list[float] = []  # notices sent in the last minute (rate limit)
        self.watch: dict[tuple[str, str], list[str]] = {}  # (account, name) → open cases on it
        self.served: dict[tuple[str, str], float] = {}  # (account, name) of open cases → last seen since the last pass
        self.refused: set[str] = set()  # keys whose opening the fold refused: not written again
        self.bad_accounts: set[str] = set()
        self.dropped = 0  # findings dropped with MAX_PENDING waiting
        self._keep: list[tuple[tuple[str, str, str], Seen]] = []  # findings a pass leaves for the next
        self.counts: dict[str, int] = {}  # cases by state, as of the last pass (status(): no walk of the fold)
        self.error = ""  # why the last pass failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.calendar = WorkCalendar()
        self.templates = Templates(cfg.cases.templates_dir)
        self.contacts: dict[str, list[str]] = {}
        self.relay: Relay | None = None
        self.reload(cfg)
        r = registry or CollectorRegistry()
        self.m_cases = Gauge("beiand_cases", "sponsor cases by state (issue 31)", ["state"], registry=r)
        self.m_notices = Counter("beiand_case_notices", "notices and reminders to sponsors, by kind and result (sent, failed)",
                                 ["kind", "result"], registry=r)
        self.m_escalations = Counter("beiand_case_escalations", "cases escalated at their deadline (取消接入)", registry=r)
        self.m_opened = Counter("beiand_cases_opened", "cases opened by the daemon, by finding", ["finding"], registry=r)
        self.m_resolved = Counter("beiand_cases_resolved", "cases closed by the daemon, by reason", ["reason"], registry=r)
        self.m_unsent = Gauge("beiand_case_notices_unsent", "open cases whose notice could not be sent (no contact, a "
                              "template, the relay): they wait and are never escalated", registry=r)
        self.m_pass = Gauge("beiand_case_pass_seconds", "how long the last periodic pass took", registry=r)
        self.m_last = Gauge("beiand_case_pass_timestamp_seconds", "when the last periodic pass succeeded", registry=r)
        self.m_errors = Counter("beiand_case_pass_errors", "periodic passes that failed (the store, the disk)", registry=r)
        self.m_capped = Counter("beiand_cases_capped", "new cases left for a later pass (cases.max_new_per_account in one "
                                "pass: a scan of made-up names?)", registry=r)
        self.m_last.set(time.time())  # the start counts as a pass: BeiandCasesNotKept fires when none follows

    def reload(self, cfg: Config) -> None:
        """The settings, calendar, templates and contacts of a (re)loaded config; a bad one keeps
        the previous and is logged (check-config names it before a reload)."""
        c = cfg.cases
        try:
            self.calendar = load_calendar(c.holidays_file)
        except CalendarError as exc:
            log.error("cases.holidays_file: %s (the calendar before it is kept)", "; ".join(exc.problems[:3]))
        try:
            self.contacts = load_contacts(c.contacts_file) if c.contacts_file is not None else {}
        except NoticeError as exc:
            log.error("cases.contacts_file: %s (the contacts before it are kept)", exc)
        self.templates = Templates(c.templates_dir)
        password = ""
        if c.smtp_password_file is not None:
            from beiand.runtime.wiring import StateError, read_secret

            try:
                password = read_secret(c.smtp_password_file, cfg.daemon.secret_permissions).decode().rstrip("\r\n")
            except (OSError, StateError, UnicodeDecodeError) as exc:
                log.error("cases.smtp_password_file: %s: no notice can be sent", exc)
        self.relay = Relay(c.smtp_host, c.smtp_port, c.smtp_starttls, c.smtp_user, password, c.smtp_ca_file, c.smtp_timeout,
                           c.mail_from) if c.smtp_host else None
        self.cfg, self.auto = cfg, frozenset(c.auto_open)

    # -- from the workers ---------------------------------------------------------------------

    def observe(self, rows: Iterable[Sequence[Any]]) -> None:
        """Rows of the active-resource view (name, server, port, account, verdict, kind, action,
        first, last, hits): the findings among them wait for the next pass, and the names of open
        cases about filed sites (no 备案号, …) count as served whatever their verdict."""
        auto, watch = self.auto, self.watch
        with self.lock:
            pending, served = self.pending, self.served
            for name, sip, _port, account, verdict, kind, _action, first, last, hits in rows:
                if not name or not account or kind == "dns-answer":  # an answer is not a site served
                    continue
                if watch and (account, name) in watch:
                    served[(account, name)] = max(served.get((account, name), 0.0), last)
                if verdict not in auto:
                    continue
                k = (account, verdict, name)
                s = pending.get(k)
                if s is None:
                    if len(pending) >= MAX_PENDING:
                        self.dropped += 1
                        continue  # the access log has them all; the next rows bring them back
                    pending[k] = s = Seen(first, last)
                s.add(first, last, int(hits), sip)

    # -- the periodic pass --------------------------------------------------------------------

    def _store(self) -> DecisionStore:
        if self.store is None:
            self.store = self._open()
        return self.store

    def step(self) -> PassResult:
        """One pass (see the module); StoreError when the store does not answer (the findings wait).
        The keeper's fold only ever takes rows the store committed (read after the commit), so a
        commit that fails leaves it as the store is."""
        t0 = time.perf_counter()
        now = self.clock()
        res = PassResult()
        with self.lock:
            pending, self.pending = self.pending, {}
            served, self.served = self.served, {}
        for (account, name), t in served.items():
            for key in self.watch.get((account, name), ()):
                self.seen_at[key] = max(self.seen_at.get(key, 0.0), t)
        self._keep = []
        try:
            store = self._store()
            with store.transaction() as tx:
                self.cases.apply(tx.changes(self.cases.version, (KIND,)))
                entries = self._findings(pending, now, res) + self._lifecycle(now, res)
                if entries:
                    tx.append(entries)
            if entries:
                self.cases.apply(store.changes(self.cases.version, (KIND,)))
                self._check_written(entries)
        except BaseException:
            with self.lock:  # not written: they wait for the next pass
                for k, s in pending.items():
                    cur = self.pending.get(k)
                    if cur is None:
                        self.pending[k] = s
                    else:
                        cur.merge(s)
            self._drop_store()
            raise
        with self.lock:  # findings not ready yet (too few hits, over the cap): back for the next pass
            for k, seen in self._keep:
                cur = self.pending.get(k)
                if cur is None:
                    self.pending[k] = seen
                else:
                    cur.merge(seen)
        self._keep = []
        self._notices(now, res)
        self._prune()
        self._watch()
        res.seconds = time.perf_counter() - t0
        self._metrics(res)
        return res

    def _check_written(self, entries: list[Entry]) -> None:
        """A row this keeper wrote that the fold refused (another writer's row came first, or a key
        beiand cannot parse) is said once and not written again for that key."""
        for e in entries:
            if e.data.get("event") == "open" and e.key not in self.cases.cases and e.key not in self.refused:
                self.refused.add(e.key)
                log.error("case %s: the store's fold refused its opening (%s); not opened again", e.key,
                          self.cases.refused[-1] if self.cases.refused else "?")

    def _watch(self) -> None:
        """The (account, name) of every open case, for :meth:`observe`."""
        w: dict[tuple[str, str], list[str]] = {}
        for c in self.cases.cases.values():
            if c.open:
                for n in c.names:
                    w.setdefault((c.account, n), []).append(c.key)
        self.watch = w

    def _prune(self) -> None:
        """Forget what is kept per case once the case is closed (the maps stay as large as the open cases)."""
        cases = self.cases.cases
        for m in (self.evidence_at, self.seen_at, self.retry_at, self.errors, self.unwritten, self.failures):
            for key in [k for k in m if (c := cases.get(k)) is None or not c.open]:
                del m[key]

    def _drop_store(self) -> None:
        if self.store is not None:
            try:
                self.store.close()
            except StoreError:
                pass
            self.store = None

    def _findings(self, pending: dict[tuple[str, str, str], Seen], now: float, res: PassResult) -> list[Entry]:
        out: list[Entry] = []
        cs = self.cases
        new_per_account: dict[str, int] = {}
        cfg = self.cfg.cases
        for (account, finding, name), s in pending.items():
            last = cs.current(account, finding, name)
            if last is None or not last.open:
                if last is not None and last.close_reason in SETTLED_BY_PERSON:
                    continue  # a person judged this finding: the daemon does not open it again
                if last is not None and last.close_reason == "rectified" and now - last.closed_at < DAY:
                    continue  # filed a day ago: another gateway of the fleet may not have the new records yet
                if "|" in account or "#" in account:
                    if account not in self.bad_accounts:
                        self.bad_accounts.add(account)
                        log.error("cases: account %r holds '|' or '#': no case is opened for it (rename it in the inventory)",
                                  account)
                    continue
                if s.hits < cfg.min_hits:  # a few hits are anyone's probe: the finding waits for more (a day at most)
                    if now - s.last < DAY:
                        self._keep.append(((account, finding, name), s))
                    continue
                if finding in LIFTED_BY_FILING and self._filed(name, sorted(s.servers), now):
                    continue  # filed since (a reload between the flow and this pass)
                key = cs.next_key(account, finding, name)
                if key in self.refused:
                    continue
                n = new_per_account.get(account, 0)
                if n >= cfg.max_new_per_account:
                    res.capped += 1
                    self._keep.append(((account, finding, name), s))  # the next pass takes them
                    continue
                new_per_account[account] = n + 1
                out.append(event(key, "open", ACTOR, f"the daemon's verdict: {finding}", now, names=[name],
                                 first_seen=s.first, last_seen=s.last, hits=s.hits, servers=sorted(s.servers)))
                self.evidence_at[key] = now
                self.seen_at[key] = s.last
                res.opened += 1
                self.m_opened.labels(finding).inc()
                continue
            self.seen_at[last.key] = max(self.seen_at.get(last.key, 0.0), s.last)
            u = self.unwritten.get(last.key)
            if u is None:
                self.unwritten[last.key] = Seen(s.first, s.last, s.hits, set(s.servers))
            else:
                u.merge(s)
        for key, u in list(self.unwritten.items()):
            c = cs.cases.get(key)
            if c is None or not c.open:
                del self.unwritten[key]
                continue
            if now - self.evidence_at.get(key, 0.0) < cfg.evidence_interval:
                continue
            out.append(event(key, "evidence", ACTOR, "seen again", now, first_seen=u.first, last_seen=u.last, hits=u.hits,
                             servers=sorted(u.servers - {""})))
            self.evidence_at[key] = now
            del self.unwritten[key]
            res.evidence += 1
        if res.capped:
            self.m_capped.inc(res.capped)
        return out

    def _filed(self, name: str, servers: Sequence[str], now: float) -> bool:
        policy = self.policy()
        for ip in servers or [""]:
            try:
                d, _prefix, _assumed = policy.lookup(name, ip, now)
            except Exception:  # a name the records cannot judge: not filed
                return False
            if d.verdict.verdict is not VerdictKind.FILED:
                return False
        return True

    def last_seen(self, c: Case) -> float:
        return max(c.last_seen, self.seen_at.get(c.key, 0.0))

    def _lifecycle(self, now: float, res: PassResult) -> list[Entry]:
        """Resolutions and escalations due now."""
        out: list[Entry] = []
        resolve_after = self.cfg.cases.resolve_after_days * DAY
        for c in self.cases.cases.values():
            if not c.open:
                continue
            if c.finding in LIFTED_BY_FILING and all(self._filed(n, c.servers, now) for n in c.names):
                out.append(event(c.key, "close", ACTOR, "the records now file the name here (rectified)", now, reason="rectified"))
                res.resolved += 1
                self.m_resolved.labels("rectified").inc()
            elif (resolve_after and now - self.last_seen(c) >= resolve_after and c.state not in ("appealed", "escalated")
                  and c.finding != "shell"):  # a shell is never served: that is its finding
                # (an escalated site is blocked, not gone: its case stays until a person or a filing ends it)
                out.append(event(c.key, "close", ACTOR, f"not served for {self.cfg.cases.resolve_after_days} days", now,
                                 reason="not-served"))
                res.resolved += 1
                self.m_resolved.labels("not-served").inc()
            elif self.cfg.cases.escalate and c.state == "notified" and c.due(now):
                out.append(event(c.key, "escalate", ACTOR, "整改期限 passed without rectification: 取消接入 for the site", now))
                res.escalated += 1
                self.m_escalations.inc()
        return out

    # -- notices ------------------------------------------------------------------------------

    def _due_notice(self, c: Case, now: float) -> str:
        """"notice", "reminder" or "" for a case now (nothing while a gateway's claim to send holds)."""
        if c.sending_until > now:
            return ""
        if c.state == "open" and not c.notified_at:
            return "notice"
        if c.state == "notified" and not c.reminded_at and self.cfg.cases.remind_days and c.deadline > now:
            remind_from = self.calendar.before(c.deadline, self.cfg.cases.remind_days)
            if now >= remind_from and c.notified_at < remind_from:
                return "reminder"
        return ""

    def _notices(self, now: float, res: PassResult) -> None:
        if self.relay is None:
            return
        t = time.monotonic()
        self.minute = [x for x in self.minute if t - x < 60]
        retry = self.cfg.cases.notice_retry
        for c in list(self.cases.cases.values()):
            if len(self.minute) >= self.cfg.cases.notices_per_minute:
                return
            kind = self._due_notice(c, now)
            if not kind:
                if c.key in self.errors and c.sending_until <= now:  # no longer due (a person notified, extended, closed)
                    self.errors.pop(c.key, None)
                    self.retry_at.pop(c.key, None)
                    self.failures.pop(c.key, None)
                continue
            if self.retry_at.get(c.key, 0.0) > now:
                continue
            try:
                if self._send(c.key, kind, now):
                    res.notices += 1
                self.errors.pop(c.key, None)
                self.retry_at.pop(c.key, None)
                self.failures.pop(c.key, None)
            except NoticeError as exc:
                res.failed += 1
                self.m_notices.labels(kind, "failed").inc()
                n = self.failures[c.key] = self.failures.get(c.key, 0) + 1
                wait = min(retry * 2 ** (n - 1), max(retry, 6 * 3600.0))  # backs off: the relay is not hammered
                if self.errors.get(c.key) != str(exc):
                    log.error("case %s: the %s could not be sent: %s (the case stays %s; tried again in %.0f s)", c.key, kind,
                              exc, c.state, wait)
                self.errors[c.key] = str(exc)
                self.retry_at[c.key] = now + wait
            self.minute.append(time.monotonic())

    def _send(self, key: str, kind: str, now: float) -> bool:
        """One notice: claimed under the store's write lock (the case as the store holds it now; a
        ``sending`` row that other gateways respect until it runs out), sent without the lock (an
        SMTP conversation never holds the fleet's writers), recorded under the lock. False: not due
        any more, or another gateway's claim holds it. NoticeError: nothing was sent; the claim
        runs out and the notice is tried again."""
        assert self.relay is not None
        cfg = self.cfg.cases
        store = self._store()
        with store.transaction() as tx:
            self.cases.apply(tx.changes(self.cases.version, (KIND,)))
            c = self.cases.cases.get(key)
            if c is None or self._due_notice(c, now) != kind:
                return False
            to = self.contacts.get(c.account)
            if not to:
                raise NoticeError(f"no contact for account {c.account!r} (cases.contacts_file)")
            deadline = c.deadline if kind == "reminder" else max(self.calendar.deadline(now, cfg.rectify_days), c.deadline)
            values = notice_values(c, deadline, cfg.rectify_days, self.cfg.enforce.contact, self.cfg.enforce.provider_name)
            subject, body = self.templates.render(kind, c.finding, values)
            lease = now + 3 * cfg.smtp_timeout + 30
            tx.append([event(key, "sending", ACTOR, f"{kind} to {', '.join(to)}", now, until=lease)])
        mid = self.send(self.relay, to, subject, body)
        why = f"mail to {', '.join(to)} ({mid})"
        with store.transaction() as tx:
            tx.append([event(key, "notify", ACTOR, why, now, deadline=deadline) if kind == "notice"
                       else event(key, "remind", ACTOR, why, now)])
        self.cases.apply(store.changes(self.cases.version, (KIND,)))
        self.m_notices.labels(kind, "sent").inc()
        log.info("case %s: %s sent to %s", key, kind, ", ".join(to))
        return True

    def _metrics(self, res: PassResult) -> None:
        counts = self.cases.by_state()
        for state, n in counts.items():
            self.m_cases.labels(state).set(n)
        self.counts = counts
        self.m_unsent.set(sum(1 for k in self.errors if (c := self.cases.cases.get(k)) is not None and c.open))
        self.m_pass.set(res.seconds)
        self.m_last.set(time.time())

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.cases.pass_interval):
            try:
                res = self.step()
                self.error = ""
                if res.opened or res.resolved or res.escalated or res.notices:
                    log.info("cases: %d opened, %d resolved, %d escalated, %d notice(s) sent, %d failed (%.3f s)", res.opened,
                             res.resolved, res.escalated, res.notices, res.failed, res.seconds)
            except StoreError as exc:
                self.m_errors.inc()
                if str(exc) != self.error:
                    log.error("cases: the decision store: %s (the findings wait for the next pass)", exc)
                self.error = str(exc)
            except Exception as exc:  # a bug must not stop the keeper: said, counted, tried again
                self.m_errors.inc()
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("cases: periodic pass")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="beiand-cases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=40)
            if self._thread.is_alive():
                return
        self._drop_store()

    def status(self) -> dict[str, Any]:
        """``/api/v1/status``'s cases: counts by state, notices waiting, the last error."""
        return {"by_state": dict(self.counts), "version": self.cases.version, "notices_failing": len(self.errors),
                "relay": f"{self.relay.host}:{self.relay.port}" if self.relay is not None else None, "error": self.error or None}
