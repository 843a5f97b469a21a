import json

import openpyxl
import pytest

import beiand.records.importer as importer
from beiand.model import FilingStatus, ServiceType
from beiand.records import ImportRefused, build_index, load_file, load_files
from beiand.records.generate import GenConfig, write_csv

HEADER_ZH = "备案号,主办单位,服务类型,网站名称,域名,IP,接入商,状态,审核时间\n"
HEADER_EN = "number,sponsor,service_type,service_name,domains,ips,access_provider,status,reviewed\n"


def write(tmp_path, name, text, encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def test_chinese_headers_and_cells(tmp_path):
    p = write(tmp_path, "a.csv", HEADER_ZH
              + '京ICP备12345678号-1,北京示例有限公司,网站,示例,"example.com.cn; 例子.中国、*.foo.cn\nbar.com",'
                '198.51.100.1，2001:DB8::1,我们,正常,2024/03/01\n'
              + "沪ICP备12345678号-2A,上海有限公司,APP,应用,api.app.cn,,我们,接入审核中,2024年5月20日\n")
    r = load_file(p)
    assert not r.errors
    f, g = r.filings
    assert f.domains == ("example.com.cn", "xn--fsqu00a.xn--fiqs8s", "foo.cn", "bar.com")
    assert f.ips == ("198.51.100.1", "2001:db8::1")
    assert (f.status, f.reviewed, f.service_type, f.province) == (FilingStatus.ACTIVE, "2024-03-01", ServiceType.WEBSITE, "京")
    assert (g.status, g.reviewed, g.service_type) == (FilingStatus.ACCESS_PENDING, "2024-05-20", ServiceType.APP)
    assert f.source == f"{p}:2"


def test_english_headers_bom_and_gb18030(tmp_path):
    text = HEADER_EN + "京ICP备12345678号-1,某公司,website,x,example.com,,p,cancelled,2024-01-01\n"
    for enc in ("utf-8-sig", "gb18030"):
        r = load_file(write(tmp_path, f"{enc}.csv", text, enc))
        assert [f.sponsor for f in r.filings] == ["某公司"], enc
        assert r.filings[0].status is FilingStatus.CANCELLED


def test_bad_rows_are_reported_with_file_line_field(tmp_path):
    p = write(tmp_path, "b.csv", HEADER_ZH
              + "京ICP备12345678号-1,甲,网站,x,a.com,,p,正常,2024-01-01\n"
              + "粤公网安备44030502008569号,乙,网站,x,b.com,,p,正常,2024-01-01\n"
              + "京ICP备12345679号-1,丙,网站,x,com.cn,,p,正常,2024-01-01\n"
              + "京ICP备12345670号-1,丁,网站,x,c.com,999.1.1.1,p,正常,2024-01-01\n"
              + "京ICP备12345671号-1,戊,网站,x,d.com,,p,可疑,2024-01-01\n"
              + "京ICP备12345672号-3A,己,网站,x,e.com,,p,正常,2024-01-01\n"
              + "京ICP备12345673号-1,,网站,x,f.com,,p,正常,2024-01-01\n"
              + "京ICP备12345674号-1,庚,网站,x,g.com,,p,正常,2024-13-01\n"
              + "京ICP备12345675号-1,辛,网站,x\n")
    r = load_file(p)
    assert [f.sponsor for f in r.filings] == ["甲", "戊"]  # an unknown status keeps the filing in force
    assert r.filings[1].status is FilingStatus.UNMAPPED
    assert str(r.warnings[0]).startswith(f"{p}:6: status (状态): unknown status '可疑': kept in force")
    msgs = [str(e) for e in r.errors]
    assert msgs[0] == f"{p}:3: number (备案号): public-security filing (公安备案, 公网安备), not an ICP filing number (备案号)"
    assert msgs[1].startswith(f"{p}:4: domains (域名): com.cn is a public suffix")
    assert msgs[2].startswith(f"{p}:5: ips (IP):")
    assert msgs[3].startswith(f"{p}:7: service_type (服务类型):") and "disagrees" in msgs[3]
    assert msgs[4].startswith(f"{p}:8: sponsor (主办单位): empty")
    assert msgs[5].startswith(f"{p}:9: reviewed:")
    assert msgs[6].startswith(f"{p}:10: row: row has 4 fields")
    with pytest.raises(ImportRefused, match="strict"):
        load_file(p, strict=True)


def test_duplicates(tmp_path):
    p = write(tmp_path, "d.csv", HEADER_ZH
              + "京ICP备12345678号-1,甲,网站,x,a.com,,p,正常,2024-01-01\n"
              + "京ICP备12345678号-1,甲,网站,x,a.com,,p,正常,2024-01-01\n"
              + "京ICP备12345678号-1,甲,网站,x,evil.com,,p,正常,2024-01-01\n")
    r = load_file(p)
    assert len(r.filings) == 1 and r.filings[0].domains == ("a.com",)
    assert "identical" in str(r.warnings[0]) and ":3:" in str(r.warnings[0])
    assert ":4:" in str(r.errors[0]) and "already at" in str(r.errors[0]) and "domains" in str(r.errors[0])


def test_json_and_jsonl(tmp_path):
    items = [{"备案号": "京ICP备12345678号-1", "主办单位": "甲", "域名": ["a.com", "b.com"], "IP": [], "接入商": "p", "状态": "正常"},
             {"number": "bad"}, [1, 2]]
    p = write(tmp_path, "a.json", json.dumps({"filings": items}, ensure_ascii=False))
    r = load_file(p)
    assert r.filings[0].domains == ("a.com", "b.com")
    assert [str(e).split(": ")[0] for e in r.errors] == [f"{p}:item 2", f"{p}:item 3"]
    q = write(tmp_path, "a.jsonl", "\n".join(json.dumps(i, ensure_ascii=False) for i in items[:2]) + "\n{broken\n")
    r = load_file(q)
    assert len(r.filings) == 1 and [e.line for e in r.errors] == [2, 3]
    with pytest.raises(ImportRefused, match=r"a2.json:1: json"):
        load_file(write(tmp_path, "a2.json", "[{"))


def test_xlsx(tmp_path):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["备案号", "主办单位", "域名", "接入商", "状态", "审核时间"])
    ws.append(["京ICP备12345678号-1", "甲", "a.com\nb.com", "p", "正常", None])
    ws.append(["bad", "乙", "c.com", "p", "正常", None])
    p = tmp_path / "a.xlsx"
    wb.save(p)
    r = load_file(p)
    assert r.filings[0].domains == ("a.com", "b.com")
    assert str(r.errors[0]).startswith(f"{p}:row 3: number")
    with pytest.raises(ImportRefused, match="not a readable XLSX"):
        load_file(write(tmp_path, "x.xlsx", "not a zip"))


def test_malformed_files(tmp_path):
    # truncated inside a quoted cell and inside a UTF-8 character
    good = HEADER_ZH + "京ICP备12345678号-1,甲,网站,x,a.com,,p,正常,2024-01-01\n"
    trunc = (good + '京ICP备12345679号-1,乙,网站,x,"b.com;c.').encode()
    (tmp_path / "t.csv").write_bytes(trunc)
    r = load_file(tmp_path / "t.csv")
    assert len(r.filings) == 1 and r.errors
    (tmp_path / "u.csv").write_bytes(good.encode() + "京ICP备12345679号-1,乙".encode()[:-1])
    r = load_file(tmp_path / "u.csv")
    assert len(r.filings) == 1 and any("truncated" in str(w) for w in r.warnings)
    # neither UTF-8 nor GB18030
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81\x30\x81\xff" * 100)
    with pytest.raises(ImportRefused, match="not UTF-8 and not GB18030"):
        load_file(tmp_path / "bin.csv")
    # a 1 MB cell is one bad row, not a crash
    big = HEADER_ZH + "京ICP备12345678号-1,甲,网站,x," + "a" * (1 << 20) + ",,p,正常,2024-01-01\n" + good.split("\n", 1)[1]
    r = load_file(write(tmp_path, "big.csv", big))
    assert len(r.filings) == 1 and "cell is" in str(r.errors[0]) and r.errors[0].line == 2
    with pytest.raises(ImportRefused, match="no filing number column"):
        load_file(write(tmp_path, "h.csv", "foo,bar\n1,2\n"))
    with pytest.raises(ImportRefused, match="no such file"):
        load_file(tmp_path / "missing.csv")


def test_empty_or_shrinking_export_is_refused(tmp_path):
    empty = load_file(write(tmp_path, "e.csv", HEADER_ZH))
    with pytest.raises(ImportRefused, match="no valid filing"):
        build_index(empty)
    full = tmp_path / "full.csv"
    write_csv(str(full), GenConfig(filings=200))
    old = build_index(load_file(full))
    half = tmp_path / "half.csv"
    half.write_text("\n".join(full.read_text(encoding="utf-8").splitlines()[:100]) + "\n", encoding="utf-8")
    with pytest.raises(ImportRefused, match="fewer than the"):
        build_index(load_file(half), previous=old, max_loss=0.2)
    assert build_index(load_file(half), previous=old, max_loss=0.9).filings


def test_parallel_parse_equals_serial(tmp_path, monkeypatch):
    p = tmp_path / "g.csv"
    write_csv(str(p), GenConfig(filings=3000, bad_rows=30, seed=5))
    # duplicates across the split points, and inside the last range: identical and conflicting
    lines = p.read_text(encoding="utf-8").splitlines(keepends=True)
    late = lines[-30:-20]
    conflicting = [line.replace("正常", "已注销", 1) for line in lines[-60:-50]]
    p.write_text("".join(lines + lines[1:40] + late + conflicting), encoding="utf-8")
    monkeypatch.setattr(importer, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(importer, "SPILL_BATCH", 7)  # workers hand their filings on in many batches
    a = load_file(p, workers=1)
    assert sum("different data" in e.reason for e in a.errors) >= 2
    assert sum("identical" in w.reason for w in a.warnings) >= 25
    for n in (2, 3):
        b = load_file(p, workers=n)
        assert a.filings == b.filings and a.rows == b.rows
        assert [str(e) for e in a.errors] == [str(e) for e in b.errors]
        assert [str(w) for w in a.warnings] == [str(w) for w in b.warnings]


def test_generator_bad_rows_are_all_caught(tmp_path):
    p = tmp_path / "g.csv"
    write_csv(str(p), GenConfig(filings=700, bad_rows=70, seed=3))
    r = load_files([p])
    assert sum(1 for e in r.errors if "already at" not in e.reason) == 70


def test_one_reader_per_format_picked_by_suffix() -> None:
    from pathlib import Path

    from beiand.records.formats import csv, json, reader_for, xlsx

    assert reader_for(Path("a.JSON")) is json.rows and reader_for(Path("a.ndjson")) is json.rows
    assert reader_for(Path("a.xlsx")) is xlsx.rows and reader_for(Path("a.xlsm")) is xlsx.rows
    assert reader_for(Path("a.csv")) is csv.rows and reader_for(Path("export")) is csv.rows  # CSV by default
