"""Issue 17 item 4: hostile records files: depth and size limits, every refusal as
``file:line: field: reason``, no traceback for any input, a huge cell never read whole."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beiand.cli import main
from beiand.records import ImportRefused, load_file
from beiand.records.importer import MAX_ITEM

GOOD = {"备案号": "京ICP备12345678号-1", "主办单位": "某某有限公司", "域名": "good.example.cn", "接入商": "P", "审核通过日期": "2020-01-01"}
MiB = 1 << 20


def load(path: Path):
    try:
        return load_file(path, workers=1)
    except ImportRefused as exc:
        return exc


def test_deeply_nested_json_is_refused_with_file_and_line_not_a_recursion_error(tmp_path):
    for name, body in (("deep.json", "[" * 100_000 + "]" * 100_000),
                       ("deepobj.json", '{"filings": ' + '{"a": ' * 50_000 + "1" + "}" * 50_001),
                       ("deep.jsonl", json.dumps(GOOD) + "\n" + "[" * 100_000 + "\n"),
                       ("cell.json", json.dumps([{**GOOD, "域名": [[["x"] * 3] * 3]}]))):
        p = tmp_path / name
        p.write_text(body)
        r = load(p)
        text = str(r) if isinstance(r, ImportRefused) else "\n".join(map(str, r.errors))
        assert text.startswith(str(p) + ":"), text
        assert "nest" in text, text


def test_a_huge_cell_is_refused_unread(tmp_path):
    big = "x" * (24 * MiB)
    cases = {
        "huge.json": json.dumps([GOOD, {**GOOD, "备案号": "京ICP备12345678号-2", "域名": big}, {**GOOD, "备案号": "京ICP备12345678号-3"}]),
        "huge.jsonl": "\n".join(json.dumps(x) for x in (GOOD, {**GOOD, "备案号": "京ICP备12345678号-2", "域名": big})) + "\n",
        "huge.csv": "备案号,主办单位,域名,接入商\n京ICP备12345678号-1,A,a.example.cn,P\n京ICP备12345678号-2,B," + big + ",P\n"
                    "京ICP备12345678号-3,C,c.example.cn,P\n",
    }
    for name, body in cases.items():
        p = tmp_path / name
        p.write_text(body)
        del body
        tracemalloc.start()
        try:
            r = load(p)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert not isinstance(r, ImportRefused), r
        assert len(r.filings) >= 1 and r.errors, name
        assert str(r.errors[0]).startswith(f"{p}:"), str(r.errors[0])
        assert peak < 8 * MiB, f"{name}: {peak / MiB:.1f} MiB traced while refusing a 24 MiB cell"
    p.unlink()
    cases.clear()


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                       lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from([*GOOD, "x"]), c, max_size=5),
                       max_leaves=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(JSONISH, st.sampled_from(["a.json", "a.jsonl", "a.csv"]), st.binary(max_size=40))
def test_fuzzed_records_files_never_raise_past_the_importer(tmp_path, doc, name, junk):
    p = tmp_path / name
    body = json.dumps(doc, ensure_ascii=False).encode() if name != "a.csv" else ("备案号,域名\n" + str(doc)).encode()
    cut = len(body) // 2 if junk[:1] == b"\x00" else len(body)
    p.write_bytes(body[:cut] + junk)
    r = load(p)
    if isinstance(r, ImportRefused):
        assert str(r).startswith(str(p)), str(r)
    else:
        assert all(str(e).startswith(f"{p}:") for e in r.errors)


def test_records_check_prints_no_traceback(tmp_path, capsys):
    p = tmp_path / "deep.json"
    p.write_text("[" * 200_000)
    assert main(["records", "check", str(p)]) != 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert str(p) in captured.err


def test_limits_are_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "records-format.md").read_text(encoding="utf-8")
    assert "MAX_ITEM" in doc or f"{MAX_ITEM // 1024} KiB" in doc or "nesting" in doc


def test_json_list_items_across_chunk_boundaries(tmp_path, monkeypatch):
    from beiand.records.formats import json as json_format

    monkeypatch.setattr(json_format, "_CHUNK", 7)  # every item, string and number cut somewhere
    two = {**GOOD, "备案号": "京ICP备12345678号-2", "主办单位": "乙公司"}
    p = tmp_path / "chunks.json"
    p.write_text("\ufeff[" + json.dumps(GOOD) + " , " + "[" * 3000 + "]" * 3000 + ",12345,\n" + json.dumps(two, ensure_ascii=False)
                 + ', {"备案号": "a\\"b,]"}]')
    r = load(p)
    assert not isinstance(r, ImportRefused), r
    assert sorted(f.number for f in r.filings) == ["京ICP备12345678号-1", "京ICP备12345678号-2"]
    assert [str(e).split(": ", 1)[0] for e in r.errors] == [f"{p}:item 2", f"{p}:item 3", f"{p}:item 5"], r.errors
    for body in ("[" + json.dumps(GOOD)[:-3], "[" + json.dumps(GOOD) + " x ]", "[" + "[" * 3000):
        p.write_text(body)
        r = load(p)
        assert isinstance(r, ImportRefused) and str(r).startswith(f"{p}:"), r
