"""SMMS's 999/ answers (ISMS.md §2): the per-code policy (retry.py) and the answer-name parsing."""

from __future__ import annotations

from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from beiand.isms.transport.retry import FINAL, KEEP_CLOSED_S, MAX_TRIES, RETRIED, RETRY_AFTER, Tracker, Verdict, classify, decide
from beiand.isms.transport.upload import _ANSWER
from beiand.isms.wire.codes import FileResult


def test_every_file_code_has_a_class() -> None:
    assert {int(c) for c in FileResult} == {0, 999} | {int(c) for c in FINAL | RETRIED}
    assert not FINAL & RETRIED
    assert [decide(c, 1, 0.0) for c in (0, 54, 999)] == [Verdict.ACCEPTED, Verdict.REJECTED, Verdict.WAIT]


@given(st.integers(-(2**31), 2**31), st.integers(1, 10), st.floats(0, 1e6))
def test_decide(code: int, tries: int, since: float) -> None:
    v = decide(code, tries, since)
    c = classify(code)
    if c.verdict is Verdict.RETRY:  # retry codes and unknown ones: 600 s apart, at most 3 tries
        want = Verdict.REJECTED if tries >= MAX_TRIES else (Verdict.RETRY if since >= RETRY_AFTER else Verdict.WAIT)
        assert v is want
    else:
        assert v is c.verdict and code in {0, 999} | {int(x) for x in FINAL}
    assert min((0, code), key=lambda x: classify(x).rank) == 0 or code == 0  # accepted wins


@given(st.integers(1, 99), st.integers(0, 10**20), st.integers(0, 10**6))
def test_answer_names_round_trip(dt: int, name: int, code: int) -> None:
    m = _ANSWER.fullmatch(f"{dt}-{name}.xml-{code}")
    assert m is not None and (int(m.group(1)), m.group(2), int(m.group(3))) == (dt, f"{name}.xml", code)


@given(st.text(max_size=40))
@example("7-1.xml-0\n")
@example("7-\u0661.xml-0")
def test_junk_names_are_ignored_or_parsed_whole(s: str) -> None:
    m = _ANSWER.fullmatch(s)
    assert m is None or (f"{m.group(1)}-{m.group(2)}-{m.group(3)}" == s and s.isascii())


def test_tracker_persists_and_prunes(tmp_path: Path) -> None:
    t = Tracker(tmp_path / "verdicts.json")
    t.uploaded("1.xml", "9", "2026-11-29", 100.0)
    t.uploaded("1.xml", "9", "2026-11-29", 800.0)
    t.uploaded("2.xml", "9", "2026-11-29", 100.0)
    t.close("2.xml", "accepted", 200.0)
    t.save()
    u = Tracker(tmp_path / "verdicts.json")
    e = u.get("1.xml")
    assert e is not None and (e.tries, e.uploaded, e.state) == (2, 800.0, "sent") and u.open()
    u.prune(200.0 + KEEP_CLOSED_S + 1)  # the accepted one goes; the unanswered one 7 days after its last try
    assert set(u.entries) == {"1.xml"}
    u.prune(800.0 + KEEP_CLOSED_S + 1)
    assert not u.entries and not u.open()
