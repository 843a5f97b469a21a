"""The articles beiand cites are the right ones (issue 28, items 1-5, 7, 8; checked against the
seed texts, ``../shared/REGULATIONS.md``): what an inspector reads in the docs, the audit and the
block page. Each wrong citation found once is named here so that it cannot come back."""

from __future__ import annotations

from pathlib import Path

from beiand.enforce.packets import block_page
from beiand.report.audit.findings import KINDS

ROOT = Path(__file__).resolve().parents[2]


def _text(*globs: str) -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for g in globs for p in sorted(ROOT.glob(g))}


SOURCES = _text("beiand/**/*.py", "docs/*.md", "README.md")


def _row(path: str, start: str) -> str:
    return next(line for line in SOURCES[path].splitlines() if line.startswith(start))


def test_no_wrong_citation_is_left() -> None:
    wrong = {
        "Order 33 art. 27, MIIT 2017 No. 501": "501号 is 信部电[2005]501号; art. 27 is the authority's power to close",
        "MIIT 2017 No. 501": "501号 is from 2005, issued by the then 信息产业部",
        "Order 33 art. 22": "a name missing from a filing is unfiled under Order 33 art. 5 ¶2; art. 22 is a penalty",
        "art. 18(2)": "501号 art. 18(2) is the authority's annual review, not the provider's duty",
        "注销接入": "the term is 取消接入",
    }
    found = [(path, bad, why) for path, text in SOURCES.items() for bad, why in wrong.items() if bad in text]
    assert not found, found


def test_the_rows_cite_what_the_issue_found() -> None:
    assert "Order 33 art. 5, 18 ¶1, 19 ¶1" in _row("docs/access-log.md", "| `verdict`, `reason`")
    nif = _row("docs/verdicts.md", "| `unfiled` | `name-not-in-filing`")
    assert nif.endswith("| Order 33 art. 5 ¶2 |") and "Order 292 art. 11 ¶3" in nif and "19" not in nif.split("|")[-2]
    o10 = _row("docs/regulations-map.md", "| O10")
    assert "Order 292 art. 16" not in o10 and "Order 33 art. 19 ¶2" in o10 and "105号 二(十)" in o10
    revoked = _row("docs/verdicts.md", "| `inactive` | `filing-revoked`")
    assert "501号 art. 16(4)" not in revoked and "Order 292 art. 4 ¶2" in revoked and "Order 33 art. 18 ¶2" in revoked
    assert "18(2)" not in KINDS["name-on-unlisted-ip"][1]


def test_the_block_page_names_order_33_by_its_issuer() -> None:
    page = block_page("unfiled.example.xyz", "", "").decode()
    assert "原信息产业部令第33号《非经营性互联网信息服务备案管理办法》" in page
    assert "工业和信息化部\n《非经营性" not in page and "工业和信息化部《非经营性" not in page


def test_the_docs_say_what_the_code_does() -> None:
    """Issue 28 (10, 11): keyword monitoring refused by design, said; the ClickHouse DDL as the
    code creates it; DT 3 with connection records; every access-log format named."""
    from beiand.sinks.clickhouse import ADDED_COLUMNS

    ddl = SOURCES["docs/access-log.md"]
    assert all(col in ddl for col in ADDED_COLUMNS), ADDED_COLUMNS
    assert "refused by design" in _row("docs/regulations-map.md", "| O10") and "refused by design" in SOURCES["docs/isms.md"]
    assert "DT 3 (beiand has only the access log)" not in SOURCES["docs/isms.md"]
    assert "connection records on any port included" in SOURCES["docs/isms.md"]
    assert "format 2" in SOURCES["docs/operations.md"]


def test_what_a_pending_prefix_does_by_default_is_said() -> None:
    """Issue 28 (9): the map promised that pending prefixes serve only filed names, while the
    default (``pending_mode`` empty) monitors them; the docs now say what each setting does."""
    o5 = _row("docs/regulations-map.md", "| O5")
    assert "(pending prefixes serve only filed names)" not in o5
    assert 'pending_mode = "enforce"' in o5 and "default_mode" in o5 and "flagged, not blocked" in o5
