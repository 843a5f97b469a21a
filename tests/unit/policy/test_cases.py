"""Sponsor cases folded from the decision store's rows (beiand/policy/cases.py, issue 31)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from beiand.policy.cases import CLOSE_REASONS, STATES, CaseStore, case_key, event
from beiand.store import Change

KEY = case_key("cust-7", "unfiled", "shop.example.com")
T0 = 1_800_000_000.0
DAY = 86400.0


def rows(*entries: Any) -> list[Change]:
    return [Change(i, e.kind, e.key, e.op, e.data, e.at, e.actor, e.why, "gw-a") for i, e in enumerate(entries, 1)]


def test_a_case_from_finding_to_cancellation_and_back() -> None:
    s = CaseStore()
    n = s.apply(rows(
        event(KEY, "open", "beiand", "served unfiled", T0, names=["shop.example.com", "WWW.Shop.Example.com."],
              servers=["198.51.100.11"], hits=3),
        event(KEY, "notify", "beiand", "mail to ops@cust-7", T0 + 60, deadline=T0 + 10 * DAY),
        event(KEY, "remind", "beiand", "2 working days left", T0 + 8 * DAY),
        event(KEY, "escalate", "beiand", "deadline passed", T0 + 10 * DAY + 1),
        event(KEY, "extend", "alice", "filing submitted, waiting for review", T0 + 11 * DAY, deadline=T0 + 20 * DAY),
        event(KEY, "evidence", "beiand", "", T0 + 12 * DAY, first_seen=T0 - DAY, last_seen=T0 + 12 * DAY, hits=5,
              servers=["198.51.100.12"]),
        event(KEY, "close", "beiand", "the filing appeared in the records", T0 + 13 * DAY, reason="rectified"),
    ))
    c = s.cases[KEY]
    assert n == 7 and s.refused == []
    assert (c.account, c.finding, c.names) == ("cust-7", "unfiled", ("shop.example.com", "www.shop.example.com"))
    assert (c.state, c.close_reason, c.hits, c.first_seen) == ("closed", "rectified", 8, T0 - DAY)
    assert c.servers == ("198.51.100.11", "198.51.100.12")
    assert [(x.event, x.actor) for x in c.steps][3:5] == [("escalate", "beiand"), ("extend", "alice")]
    assert s.by_state() == {"open": 0, "notified": 0, "appealed": 0, "escalated": 0, "closed": 1}


def test_what_does_not_follow_is_refused_by_name_and_changes_nothing() -> None:
    s = CaseStore()
    s.apply(rows(
        event(KEY, "open", "beiand", "", T0),
        event(KEY, "escalate", "beiand", "", T0 + 1),  # no deadline yet
        event(KEY, "notify", "beiand", "", T0 + 2, deadline=T0 + DAY),
        event(KEY, "escalate", "beiand", "", T0 + 3),  # too early
        event(KEY, "appeal", "cust-7", "we filed it", T0 + 4),
        event(KEY, "escalate", "beiand", "", T0 + 2 * DAY),  # an appeal holds it
        event(KEY, "open", "beiand", "", T0 + 5),
        event(case_key("cust-7", "bogus", "x.example"), "open", "beiand", "", T0),
        event(case_key("cust-7", "unfiled", "y.example"), "notify", "beiand", "", T0, deadline=T0),
        event(KEY, "close", "beiand", "", T0 + 6, reason="because"),
        event(KEY, "extend", "alice", "", T0 + 7, deadline=T0),  # not in the future
        event(KEY, "teleport", "beiand", "", T0 + 8),
    ))
    assert s.cases[KEY].state == "appealed" and len(s.cases) == 1
    why = [r.split(": ", 1)[1] for r in s.refused]
    assert why == ["escalate: not from state open (only from notified)", "escalate: the deadline has not passed",
                   "escalate: not from state appealed (only from notified)",
                   "open: the case is open already (a new finding opens a new case)",
                   "open: the key is not account|finding|name (findings: unfiled, mismatch, inactive, shell, resolves-away, "
                   "no-number, authority)",
                   "notify: no such case",
                   "close: reason 'because' is not one of " + ", ".join(CLOSE_REASONS),
                   "extend: the new deadline is not in the future",
                   "'teleport': not an event of a case (open, notify, remind, extend, appeal, appeal-rejected, appeal-upheld, "
                   "escalate, evidence, sending, close)"]
    s.apply(rows(*[event(KEY, "open", "x", "", T0)] * 12)[11:])  # version 12 again: folded already, ignored
    assert s.refused_total == 9


EVENTS = ["notify", "remind", "extend", "appeal", "appeal-rejected", "appeal-upheld", "escalate", "evidence", "close"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(EVENTS), st.floats(0, 30), st.floats(0, 30)), max_size=25))
def test_any_sequence_of_events_leaves_a_case_in_a_state_it_can_be_in(seq: list[tuple[str, float, float]]) -> None:
    """Property: whatever rows arrive, a case is in one of its states, escalated only past its
    deadline, never reopened once closed, and every step it took is one the fold accepted."""
    s = CaseStore()
    entries = [event(KEY, "open", "beiand", "", T0)]
    at = T0
    for name, dt, dl in seq:
        at += dt * DAY
        entries.append(event(KEY, name, "x", "", at, deadline=at + dl * DAY - 5 * DAY, first_seen=at, last_seen=at,
                             hits=1, reason="rectified"))
    s.apply(rows(*entries))
    c = s.cases[KEY]
    assert c.state in STATES
    # every row the fold accepted is a step, but evidence (added up) and a claim to send
    kept = [e for e in entries[1:] if e.data["event"] not in ("evidence", "sending")]
    assert len(c.steps) == 1 + len(kept) - (s.refused_total - sum(1 for r in s.refused if r.split(": ", 1)[1].startswith(
        ("evidence", "sending"))))
    closed_at = [x.at for x in c.steps if x.event in ("close", "appeal-upheld")]
    assert len(closed_at) <= 1 and (c.state == "closed") == bool(closed_at)
    if c.state == "escalated":
        assert 0 < c.deadline <= c.escalated_at and c.notified_at > 0  # never escalated without a notice
    if c.state == "notified":
        assert c.notified_at > 0
