"""The access log's ``order`` column reads back what it wrote (issue 26: one spelling, one place)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from beiand.accesslog.columns import order_column, parse_order_column
from beiand.model import Action, Decision, Mode, Overlay, Verdict, VerdictKind

UNFILED = Decision(Verdict(VerdictKind.UNFILED, None, "no-filing"), Action.BLOCK, "enforce:unfiled", Mode.ENFORCE, "acct")


@given(st.sampled_from([o for o in Overlay if o is not Overlay.GRACE]), st.text(min_size=1, max_size=20))
def test_the_order_column_reads_back_what_it_wrote(by: Overlay, ref: str) -> None:
    d = UNFILED._replace(by=by, ref=ref)
    col = order_column(d)
    back = parse_order_column(col)
    if by is Overlay.ORDER and any(col.startswith(p) for p in ("isms:", "isms-monitor:", "isms-blacklist:", "isms-nofilter:",
                                                                "exemption:", "case:", "authority:")):
        return  # an order number spelled like a command reference: not one the authority issues
    assert back == (by, ref)
    assert parse_order_column("") == (None, "")


def test_what_each_overlay_writes() -> None:
    assert [order_column(UNFILED._replace(by=b, ref="7")) for b in Overlay] == [
        "7", "isms:7", "isms-monitor:7", "isms-blacklist:7", "isms-nofilter:7", "exemption:7", "", "case:7", "authority:7"]
    assert order_column(UNFILED) == ""
