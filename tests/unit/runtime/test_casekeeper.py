"""The daemon's side of sponsor cases: findings → cases in the decision store (SQLite), notices
through a real SMTP relay, reminders, deadlines, escalation, resolution; a clock the test moves."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from beiand.model import Action, Decision, Kind, Mode, Observation, Transport, Verdict, VerdictKind
from beiand.policy.cases import CaseSnapshot, CaseStore, event
from beiand.policy.overlays import CaseLayer, Decider
from beiand.policy.workdays import BEIJING
from beiand.runtime.casekeeper import CaseKeeper
from beiand.runtime.decisions import Follower, open_decisions
from beiand.runtime.notices import Relay
from beiand.runtime.settings import CasesSection, Config, DaemonSection
from tests.smtp_relay import PASSWORD, USER
from tests.smtp_relay import Relay as SmtpRelay

MON = dt.datetime(2026, 3, 2, 10, 0, tzinfo=BEIJING).timestamp()  # a Monday, 10:00 Beijing time
DAY = 86400.0


class Records:
    """The records the daemon judges with now: the names in ``filed`` are filed here."""

    def __init__(self) -> None:
        self.filed: set[str] = set()

    def lookup(self, name: str, ip: str, ts: float, **kw: Any) -> tuple[Decision, None, str]:
        v = VerdictKind.FILED if name in self.filed else VerdictKind.UNFILED
        return Decision(Verdict(v, None, "x"), Action.LOG, "", Mode.ENFORCE, "cust-1"), None, ""


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Pol:
    """Records that decide every observation alike (the case overlay is what is tested)."""

    inventory = None

    def __init__(self, d: Decision) -> None:
        self.d = d

    def decide(self, o: Observation) -> Decision:
        return self.d


def row(name: str, account: str = "cust-1", verdict: str = "unfiled", t: float = MON, hits: int = 3) -> tuple[Any, ...]:
    return (name, "198.51.100.11", 443, account, verdict, "tls-sni", "flag", t - 60, t, hits)


def config(tmp_path: Path, gateway: str = "gw-1", **cases: Any) -> Config:
    contacts = tmp_path / "contacts.csv"
    if not contacts.exists():
        contacts.write_text("account,email\ncust-1,ops@cust1.example\n")
    kw: dict[str, Any] = {"contacts_file": contacts, "rectify_days": 5, "remind_days": 2, "min_hits": 1, "evidence_interval": 3600.0,
                          **cases}
    return Config(daemon=DaemonSection(gateway=gateway, state_dir=tmp_path / "state"), cases=CasesSection(**kw))


class Sent:
    def __init__(self) -> None:
        self.mails: list[tuple[list[str], str, str]] = []
        self.fail = ""

    def __call__(self, relay: Relay, to: list[str], subject: str, body: str) -> str:
        if self.fail:
            from beiand.runtime.notices import NoticeError

            raise NoticeError(self.fail)
        self.mails.append((to, subject, body))
        return f"<{len(self.mails)}@test>"


def keeper(cfg: Config, clock: Clock, records: Records, sent: Any = None) -> CaseKeeper:
    return CaseKeeper(cfg, lambda: open_decisions(cfg), lambda: records, clock=clock, send=sent or Sent())  # type: ignore[arg-type, return-value]


def cases(cfg: Config) -> CaseStore:
    s = open_decisions(cfg)
    try:
        cs = CaseStore()
        cs.apply(s.changes(0))
        return cs
    finally:
        s.close()


def test_the_lifecycle_open_notice_reminder_escalation_then_rectified(tmp_path: Path) -> None:
    cfg = config(tmp_path, smtp_host="localhost", mail_from="beian@provider.example")
    clock, records, sent = Clock(MON), Records(), Sent()
    k = keeper(cfg, clock, records, sent)
    k.observe([row("shop.example.xyz"), row("www.example.com.cn", verdict="filed"), row("", verdict="unfiled"),
               row("x.example.xyz", account="")])
    res = k.step()
    assert res.opened == 1 and res.notices == 1  # opened and notified in one pass
    c = cases(cfg).cases["cust-1|unfiled|shop.example.xyz"]
    assert c.state == "notified" and c.hits == 3 and c.servers == ("198.51.100.11",)
    # 5 working days from Monday: the end of next Monday, Beijing time
    assert c.deadline == dt.datetime(2026, 3, 10, tzinfo=BEIJING).timestamp() - 0.001
    to, subject, body = sent.mails[0]
    assert to == ["ops@cust1.example"] and "shop.example.xyz" in subject and "2026-03-09 23:59" in body
    assert [s.event for s in c.steps] == ["open", "notify"] and "ops@cust1.example" in c.steps[1].why
    clock.t = MON + 4 * DAY  # Friday: 2 working days before the deadline's day is Thursday
    assert k.step().notices == 1 and "即将届满" in sent.mails[1][2]
    clock.t = MON + 5 * DAY
    assert k.step().notices == 0  # one reminder
    clock.t = MON + 8 * DAY  # Tuesday after: past the deadline
    assert k.step().escalated == 1
    c = cases(cfg).cases[c.key]
    assert c.state == "escalated" and c.steps[-1].actor == "beiand"
    # The snapshot the workers read, and the overlay: blocked per flow in enforce, flagged elsewhere
    f = Follower(cfg)
    f.sync()
    layer = CaseLayer.from_state_dir(cfg.daemon.state_dir)
    assert layer.metrics()["rules"] == 1
    obs = Observation(MON, "203.0.113.5", 50000, "198.51.100.11", 443, Transport.TCP, Kind.TLS_SNI, "shop.example.xyz",
                      "shop.example.xyz")
    base = Decision(Verdict(VerdictKind.UNFILED, None, "no-filing"), Action.FLAG, "grace", Mode.ENFORCE, "cust-1")

    d = Decider(Pol(base), [layer]).decide(obs)  # type: ignore[arg-type]
    assert d.action is Action.BLOCK and d.by == "case" and d.ref == c.key
    d = Decider(Pol(base._replace(mode=Mode.MONITOR)), [layer]).decide(obs)  # type: ignore[arg-type]
    assert d.action is Action.FLAG and d.rule.startswith("case:would-block:")
    d = Decider(Pol(base._replace(account="cust-2")), [layer]).decide(obs)  # type: ignore[arg-type]
    assert d.by == ""  # another account's prefix: not this case
    filed = base._replace(verdict=Verdict(VerdictKind.FILED, None, "filed"), action=Action.LOG)
    assert Decider(Pol(filed), [layer]).decide(obs).action is Action.LOG  # filed since: lifted at once
    other = obs._replace(name="www.shop.example.xyz", name_seen="www.shop.example.xyz")
    assert Decider(Pol(base), [layer]).decide(other).by == ""  # the names themselves, not below
    # The filing arrives: the next pass closes the case as rectified, and the snapshot empties
    records.filed.add("shop.example.xyz")
    assert k.step().resolved == 1
    c = cases(cfg).cases[c.key]
    assert c.state == "closed" and c.close_reason == "rectified"
    f.sync()
    assert layer.reload() and layer.metrics()["rules"] == 0
    # A gateway of the fleet without the new records yet still judges it unfiled: no new case within
    # a day of the rectification; a day later it is a new finding, a new case.
    records.filed.discard("shop.example.xyz")
    k.observe([row("shop.example.xyz", t=clock.t)])
    assert k.step().opened == 0
    clock.t += DAY + 1
    k.observe([row("shop.example.xyz", t=clock.t)])
    assert k.step().opened == 1 and cases(cfg).cases["cust-1|unfiled|shop.example.xyz#2"].state == "notified"
    f.stop()
    k.stop()


def test_no_relay_no_mail_and_no_deadline_until_a_person_records_the_notice(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    clock, records, sent = Clock(MON), Records(), Sent()
    k = keeper(cfg, clock, records, sent)
    k.observe([row("a.example.xyz")])
    k.step()
    clock.t = MON + 60 * DAY
    k.observe([row("a.example.xyz", t=clock.t)])
    assert k.step().escalated == 0 and not sent.mails
    assert cases(cfg).cases["cust-1|unfiled|a.example.xyz"].state == "open"
    k.stop()


def test_failed_notices_are_counted_kept_open_and_retried(tmp_path: Path) -> None:
    (tmp_path / "contacts.csv").write_text("account,email\ncust-1,ops@cust1.example\n")
    cfg = config(tmp_path, smtp_host="localhost", mail_from="b@p.example", notice_retry=600.0)
    clock, records, sent = Clock(MON), Records(), Sent()
    k = keeper(cfg, clock, records, sent)
    k.observe([row("a.example.xyz"), row("b.example.xyz", account="cust-9")])  # cust-9: no contact
    sent.fail = "smtp localhost:587: ConnectionRefusedError"
    res = k.step()
    assert res.opened == 2 and res.notices == 0 and res.failed == 2
    assert k.status()["notices_failing"] == 2 and k.m_unsent._value.get() == 2
    assert "no contact for account 'cust-9'" in k.errors["cust-9|unfiled|b.example.xyz"]
    clock.t = MON + 60  # before notice_retry: not tried again
    assert k.step().failed == 0
    sent.fail = ""
    clock.t = MON + 601
    res = k.step()
    assert res.notices == 1 and res.failed == 1  # the relay is back; cust-9 still has no contact
    cs = cases(cfg)
    assert cs.cases["cust-1|unfiled|a.example.xyz"].state == "notified"
    assert cs.cases["cust-9|unfiled|b.example.xyz"].state == "open"  # never escalated without a notice
    clock.t = MON + 90 * DAY
    k.observe([row("b.example.xyz", account="cust-9", t=clock.t)])
    assert cases(cfg).cases["cust-9|unfiled|b.example.xyz"].state == "open"
    k.stop()


def test_a_template_that_does_not_render_keeps_the_case_open(tmp_path: Path) -> None:
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "unfiled.txt").write_text("Subject: x $nope\n\nbody\n")
    cfg = config(tmp_path, smtp_host="localhost", mail_from="b@p.example", templates_dir=tmp_path / "tpl")
    k = keeper(cfg, Clock(MON), Records())
    k.observe([row("a.example.xyz")])
    assert k.step().failed == 1
    assert "unfiled.txt: $nope is not a field" in k.errors["cust-1|unfiled|a.example.xyz"]
    assert cases(cfg).cases["cust-1|unfiled|a.example.xyz"].state == "open"
    k.stop()


def test_extension_moves_the_deadline_and_an_appeal_holds_escalation(tmp_path: Path) -> None:
    cfg = config(tmp_path, smtp_host="localhost", mail_from="b@p.example")
    clock, records = Clock(MON), Records()
    k = keeper(cfg, clock, records)
    k.observe([row("a.example.xyz"), row("b.example.xyz")])
    k.step()
    store = open_decisions(cfg)
    store.append([event("cust-1|unfiled|a.example.xyz", "extend", "ops", "customer asked", MON + DAY, deadline=MON + 20 * DAY),
                  event("cust-1|unfiled|b.example.xyz", "appeal", "ops", "says it is filed", MON + DAY)])
    store.close()
    clock.t = MON + 10 * DAY
    for n in ("a", "b"):
        k.observe([row(f"{n}.example.xyz", t=clock.t)])
    assert k.step().escalated == 0
    cs = cases(cfg)
    assert cs.cases["cust-1|unfiled|a.example.xyz"].state == "notified" and cs.cases["cust-1|unfiled|b.example.xyz"].state == "appealed"
    clock.t = MON + 21 * DAY
    k.observe([row("a.example.xyz", t=clock.t)])
    assert k.step().escalated == 1
    k.stop()


def test_two_gateways_see_one_case_and_a_restart_loses_nothing(tmp_path: Path) -> None:
    cfg1 = config(tmp_path, "gw-1", smtp_host="localhost", mail_from="b@p.example")
    cfg2 = config(tmp_path, "gw-2", smtp_host="localhost", mail_from="b@p.example")
    clock, records, sent = Clock(MON), Records(), Sent()
    k1, k2 = keeper(cfg1, clock, records, sent), keeper(cfg2, clock, records, sent)
    k1.observe([row("a.example.xyz", hits=2)])
    k2.observe([row("a.example.xyz", hits=5)])
    assert k1.step().opened == 1
    assert k2.step().opened == 0  # the same finding: evidence for the open case, not a second one
    assert len(sent.mails) == 1  # one notice, though both gateways have a relay
    k1.stop()
    # gw-1 restarts: a new keeper folds the store; nothing is sent or opened again
    k1 = keeper(cfg1, clock, records, sent)
    assert k1.step().opened == 0 and len(sent.mails) == 1
    clock.t = MON + 2 * 3600
    k2.observe([row("a.example.xyz", t=clock.t, hits=7)])
    assert k2.step().evidence == 1
    clock.t += 60
    k2.observe([row("a.example.xyz", t=clock.t, hits=1)])
    assert k2.step().evidence == 0  # at most one evidence row per evidence_interval: added up meanwhile
    clock.t += 3600
    assert k2.step().evidence == 1
    c = cases(cfg1).cases["cust-1|unfiled|a.example.xyz"]
    assert c.hits == 2 + 5 + 7 + 1 and c.last_seen == MON + 2 * 3600 + 60 and len(cases(cfg1).cases) == 1
    k1.stop()
    k2.stop()


def test_not_served_closes_and_a_new_finding_opens_a_new_case_unless_withdrawn(tmp_path: Path) -> None:
    cfg = config(tmp_path, resolve_after_days=3)
    clock, records = Clock(MON), Records()
    k = keeper(cfg, clock, records)
    k.observe([row("a.example.xyz"), row("b.example.xyz")])
    k.step()
    clock.t = MON + 4 * DAY
    assert k.step().resolved == 2
    assert cases(cfg).cases["cust-1|unfiled|a.example.xyz"].close_reason == "not-served"
    store = open_decisions(cfg)  # a person reopens b by hand and withdraws it: a false finding
    store.append([event("cust-1|unfiled|b.example.xyz#2", "open", "ops", "", clock.t, names=["b.example.xyz"])])
    store.append([event("cust-1|unfiled|b.example.xyz#2", "close", "ops", "our own test site", clock.t, reason="withdrawn")])
    store.close()
    k.observe([row("a.example.xyz", t=clock.t), row("b.example.xyz", t=clock.t)])
    assert k.step().opened == 1
    cs = cases(cfg)
    assert cs.cases["cust-1|unfiled|a.example.xyz#2"].state == "open" and "cust-1|unfiled|b.example.xyz#3" not in cs.cases
    k.stop()


def test_a_name_filed_since_the_flow_opens_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    records = Records()
    records.filed.add("a.example.xyz")
    k = keeper(cfg, Clock(MON), records)
    k.observe([row("a.example.xyz")])
    assert k.step().opened == 0
    k.stop()


def test_a_store_away_keeps_the_findings_for_the_next_pass(tmp_path: Path) -> None:
    from beiand.store import StoreError

    cfg = config(tmp_path)
    calls = [0]

    def opener() -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise StoreError("decision store x: connection refused")
        return open_decisions(cfg)

    k = CaseKeeper(cfg, opener, lambda: Records(), clock=Clock(MON))  # type: ignore[arg-type, return-value]
    k.observe([row("a.example.xyz")])
    with pytest.raises(StoreError):
        k.step()
    assert k.step().opened == 1
    k.stop()


def test_the_snapshot_of_a_restarted_gateway_is_enforced_until_the_store_folds(tmp_path: Path) -> None:
    cfg = config(tmp_path, smtp_host="localhost", mail_from="b@p.example")
    clock = Clock(MON)
    k = keeper(cfg, clock, Records())
    k.observe([row("a.example.xyz")])
    k.step()
    clock.t = MON + 10 * DAY
    k.observe([row("a.example.xyz", t=clock.t)])
    k.step()
    k.stop()
    Follower(cfg).first_sync()
    snap = CaseSnapshot(cfg.daemon.state_dir)
    assert list(snap.escalated) == ["cust-1|unfiled|a.example.xyz"] and not snap.complete and snap.version > 0
    f = Follower(cfg)  # restarted: folds every case again, the snapshot unchanged
    assert "case" not in f.sync()
    assert f.folded.cases.complete and f.folded.cases.cases.cases["cust-1|unfiled|a.example.xyz"].state == "escalated"
    f.stop()


def test_notices_through_a_real_relay(tmp_path: Path) -> None:
    with SmtpRelay(tmp_path) as relay:
        pw = tmp_path / "smtp-password"
        pw.write_text(PASSWORD + "\n")
        pw.chmod(0o600)
        cfg = config(tmp_path, smtp_host="localhost", smtp_port=relay.port, smtp_user=USER, smtp_password_file=pw,
                     smtp_ca_file=relay.ca_file, mail_from="beian@provider.example")
        from beiand.runtime.settings import _semantic

        assert not [p for p in _semantic(cfg, "", "beiand.toml") if "cases" in p]
        k = CaseKeeper(cfg, lambda: open_decisions(cfg), lambda: Records(), clock=Clock(MON))  # type: ignore[arg-type, return-value]
        k.observe([row("shop.example.xyz")])
        assert k.step().notices == 1
        msg = relay.handler.wait(1)[0]
        assert msg["To"] == "ops@cust1.example" and "shop.example.xyz" in msg["Subject"]
        body = msg.get_content()
        assert body.index("整改期限") < body.index("deadline") and "未备案" in body and "Order 292 art. 4" in body
        k.stop()


# -- what the review of the first version found ------------------------------------------------


def test_an_extension_before_any_notice_never_escalates(tmp_path: Path) -> None:
    cfg = config(tmp_path, smtp_host="localhost", mail_from="b@p.example")
    clock, sent = Clock(MON), Sent()
    k = keeper(cfg, clock, Records(), sent)
    sent.fail = "smtp localhost:587: ConnectionRefusedError"
    k.observe([row("a.example.xyz")])
    k.step()
    store = open_decisions(cfg)  # a person extends the case whose notice never went out
    store.append([event("cust-1|unfiled|a.example.xyz", "extend", "ops", "asked", MON + 60, deadline=MON + DAY)])
    store.close()
    clock.t = MON + 2 * DAY
    k.observe([row("a.example.xyz", t=clock.t)])
    k.step()
    c = cases(cfg).cases["cust-1|unfiled|a.example.xyz"]
    assert c.state == "open" and not c.escalated_at  # still waiting for its notice
    sent.fail = ""
    clock.t += 7 * 3600  # past the backed-off retry
    assert k.step().notices == 1
    c = cases(cfg).cases[c.key]
    # the notice carries the later of the two deadlines: the extension is not taken back
    assert c.state == "notified" and c.deadline >= MON + DAY and not k.errors
    k.stop()


def test_a_commit_that_fails_leaves_the_keepers_fold_as_the_store_is(tmp_path: Path) -> None:
    from contextlib import contextmanager

    from beiand.store import StoreError

    cfg = config(tmp_path)
    fail = [True]

    def opener() -> Any:
        s = open_decisions(cfg)
        real = s.transaction

        @contextmanager
        def tx() -> Any:
            with real() as t:
                yield t
                if fail[0]:
                    fail[0] = False
                    raise StoreError("decision store x: the commit failed")  # rolled back

        s.transaction = tx  # type: ignore[method-assign]
        return s

    k = CaseKeeper(cfg, opener, lambda: Records(), clock=Clock(MON))  # type: ignore[arg-type, return-value]
    k.observe([row("a.example.xyz")])
    with pytest.raises(StoreError):
        k.step()
    assert "cust-1|unfiled|a.example.xyz" not in k.cases.cases and not cases(cfg).cases
    assert k.step().opened == 1 and cases(cfg).cases["cust-1|unfiled|a.example.xyz"].state == "open"
    k.stop()


def test_a_mail_is_sent_without_the_stores_write_lock(tmp_path: Path) -> None:
    cfg = config(tmp_path, smtp_host="localhost", mail_from="b@p.example")
    other: list[int] = []

    def send(relay: Relay, to: list[str], subject: str, body: str) -> str:
        s = open_decisions(cfg)  # another writer (a closure order, a heartbeat) while the relay talks
        try:
            other.append(s.append([event("cust-2|unfiled|z.example.xyz", "open", "ops", "", MON, names=["z.example.xyz"])]))
        finally:
            s.close()
        return "<1@test>"

    k = keeper(cfg, Clock(MON), Records(), send)
    k.observe([row("a.example.xyz")])
    assert k.step().notices == 1 and other
    steps = [s.event for s in cases(cfg).cases["cust-1|unfiled|a.example.xyz"].steps]
    assert steps == ["open", "notify"]  # the claim to send is not a step; the notice is
    k.stop()


def test_another_gateways_claim_to_send_is_respected(tmp_path: Path) -> None:
    cfg = config(tmp_path, smtp_host="localhost", mail_from="b@p.example")
    store = open_decisions(cfg)
    store.append([event("cust-1|unfiled|a.example.xyz", "open", "x", "", MON, names=["a.example.xyz"]),
                  event("cust-1|unfiled|a.example.xyz", "sending", "gw-2", "notice", MON, until=MON + 60)])
    store.close()
    clock, sent = Clock(MON + 1), Sent()
    k = keeper(cfg, clock, Records(), sent)
    assert k.step().notices == 0 and not sent.mails  # gw-2 is sending it
    clock.t = MON + 61  # its claim ran out (it died mid-send): sent here
    assert k.step().notices == 1 and len(sent.mails) == 1
    k.stop()


def test_cases_of_two_accounts_on_one_name_and_what_a_case_does_not_decide(tmp_path: Path) -> None:
    snap = CaseSnapshot(None)
    snap.escalated = {"alpha|unfiled|x.example.xyz": ("alpha", ("x.example.xyz",)),
                      "beta|unfiled|x.example.xyz": ("beta", ("x.example.xyz",))}
    layer = CaseLayer(snap)

    from beiand.policy.overlays import Grace

    obs = Observation(MON, "203.0.113.5", 50000, "198.51.100.11", 443, Transport.TCP, Kind.TLS_SNI, "x.example.xyz", "x.example.xyz")
    base = Decision(Verdict(VerdictKind.UNFILED, None, "no-filing"), Action.BLOCK, "enforce:unfiled", Mode.ENFORCE, "alpha")
    for account in ("alpha", "beta"):
        d = Decider(Pol(base._replace(account=account)), [layer]).decide(obs)  # type: ignore[arg-type]
        assert d.action is Action.BLOCK and d.ref == f"{account}|unfiled|x.example.xyz"
    # a third account's site of that name: no case of its own; its grace holds as without the cases
    dec = Decider(Pol(base._replace(account="gamma")), [layer], grace_seconds=3600)  # type: ignore[arg-type]
    d = dec.decide(obs)
    assert d.action is Action.FLAG and d.by == "grace"
    assert isinstance(dec.grace, Grace)


def test_a_case_about_a_filed_site_counts_its_flows_and_an_escalated_one_is_not_closed_as_not_served(tmp_path: Path) -> None:
    cfg = config(tmp_path, smtp_host="localhost", mail_from="b@p.example", resolve_after_days=3)
    store = open_decisions(cfg)
    store.append([event("cust-1|no-number|www.a.example.com", "open", "audit", "", MON, names=["www.a.example.com"]),
                  event("cust-1|shell|s.example.com", "open", "audit", "", MON, names=["s.example.com"])])
    store.close()
    clock, records = Clock(MON), Records()
    records.filed |= {"www.a.example.com", "s.example.com"}
    k = keeper(cfg, clock, records)
    k.step()  # notices
    for day in range(1, 12):  # served every day, filed (no 备案号 on its homepage)
        clock.t = MON + day * DAY
        k.observe([row("www.a.example.com", verdict="filed", t=clock.t)])
        k.step()
    cs = cases(cfg)
    assert cs.cases["cust-1|no-number|www.a.example.com"].state == "escalated"  # not closed as not-served
    assert cs.cases["cust-1|shell|s.example.com"].state == "escalated"
    f = Follower(cfg)
    f.sync()
    assert list(f.folded.cases.escalated) == ["cust-1|no-number|www.a.example.com"]  # a shell's 取消接入 blocks nothing
    clock.t += 30 * DAY  # no more flows: an escalated site is blocked, not gone
    k.step()
    assert cases(cfg).cases["cust-1|no-number|www.a.example.com"].state == "escalated"
    f.stop()
    k.stop()


def test_made_up_names_few_hits_answers_and_odd_accounts_open_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path, min_hits=5, max_new_per_account=3)
    k = keeper(cfg, Clock(MON), Records())
    k.observe([row("once.example.xyz", hits=1), ("dns.example.xyz", "198.51.100.11", 0, "cust-1", "unfiled", "dns-answer", "flag",
                                                  MON, MON, 50), row("x.example.xyz", account="a|b", hits=9)])
    assert k.step().opened == 0
    k.observe([row("once.example.xyz", hits=4)])  # 5 in all: a site served
    assert k.step().opened == 1
    k.observe([row(f"made-up{i}.example.xyz", hits=9) for i in range(10)])
    r = k.step()
    assert r.opened == 3 and r.capped == 7 and k.m_capped._value.get() == 7
    assert k.step().opened == 3  # the rest, a few at a time
    assert len(cases(cfg).cases) == 7 and not any("|a|b" in key or key.startswith("a|b") for key in cases(cfg).cases)
    k.stop()


def test_a_password_file_that_is_not_text_is_said_not_a_crash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pw = tmp_path / "pw"
    pw.write_bytes(b"\xff\xfe\n")
    pw.chmod(0o600)
    cfg = config(tmp_path, smtp_host="localhost", mail_from="b@p.example", smtp_user="u", smtp_password_file=pw)
    k = keeper(cfg, Clock(MON), Records())
    assert k.relay is not None and "secret" not in repr(k.relay) and "cases.smtp_password_file" in caplog.text
    pw.write_text(" pass word \n")
    k.reload(cfg)
    assert k.relay is not None and k.relay.password == " pass word "  # only the line end is taken off
    k.stop()
