"""Province profiles (beiand/isms/wire/profile.py): the ``elements`` table renames beiand's reconstructed
element names (DT 1 basicInfo, DT 6 commandQueryResult rows) when those files are written; unknown paths
and names that are not XML NCNames are refused naming the key; a renamed file is validated against the
operator's XSD (``xsd_dir``) when it has one, else its XSD check is skipped and logged once."""

from __future__ import annotations

import logging
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from beiand.isms import basicinfo as bi
from beiand.isms.reports import ReportError, Spool, rename_elements
from beiand.isms.wire import fields
from beiand.isms.wire.codec import XSD_DIR, schema
from beiand.isms.wire.codes import DataType
from beiand.isms.wire.envelope import Keys
from beiand.isms.wire.profile import RENAMEABLE, Profile, ProfileError, load_profile
from beiand.model import Filing, FilingStatus, PrefixState, ServiceType
from beiand.policy.inventory import HostedPrefix
from tests import isms_double as dbl

KEYS = Keys(dbl.USER_KEY, dbl.ENC_KEY, dbl.IV, dbl.AUTH_KEY)
PREFIXES = [HostedPrefix("203.0.113.0/28", "c1", "H1", PrefixState.ACTIVE, None)]


def profile(tmp_path: Path, text: str) -> Profile:
    p = tmp_path / "profile.toml"
    p.write_text(text, encoding="utf-8")
    return load_profile(p)


def unpacked(path: Path) -> ET.Element:
    return ET.fromstring(dbl.unpack_file(path.read_bytes()))


def test_elements_are_read(tmp_path: Path) -> None:
    p = profile(tmp_path, '[elements]\n"houseInfo/houseName" = "houseNm"\n"command/rules" = "rule"\n"idcAdd" = "idcAdd"\n')
    assert p.elements == {"houseInfo/houseName": "houseNm", "command/rules": "rule", "idcAdd": "idcAdd"}
    assert p.renames(1) == {"houseInfo/houseName": "houseNm"}  # a name kept as it is is no rename
    assert p.renames(6) == {"command/rules": "rule"} and p.renames(9) == {}
    assert Profile().renames(1) == {}


@pytest.mark.parametrize(("text", "why"), [
    ('[elements]\n"houseInfo/houseNom" = "x"\n', "elements: houseInfo/houseNom: not a reconstructed element path"),
    ('[elements]\n"record/ip" = "x"\n', "elements: record/ip: not a reconstructed element path"),  # DT 9: not renameable
    ('[elements]\n"houseInfo/houseName" = "1house"\n', "elements: houseInfo/houseName: '1house' is not an XML element name"),
    ('[elements]\n"houseInfo/houseName" = "a:b"\n', "elements: houseInfo/houseName: 'a:b' is not an XML element name"),
    ('[elements]\n"houseInfo/houseName" = 3\n', "elements: houseInfo/houseName: '3' is not an XML element name"),
    ('elements = "x"\n', "elements: expected a table"),
])
def test_bad_elements_are_refused_naming_the_key(tmp_path: Path, text: str, why: str) -> None:
    with pytest.raises(ProfileError) as e:
        profile(tmp_path, text)
    assert str(e.value).startswith(str(tmp_path / "profile.toml")) and why in str(e.value), str(e.value)


def test_every_reconstructed_path_is_renameable() -> None:
    assert RENAMEABLE[1] == {f.element for f in fields.FIELDS if f.dt == 1}
    assert RENAMEABLE[6] == {"command"} | {f"command/{f.element}" for f in fields.FIELDS if f.dt == 6}


def test_rename_elements_by_path() -> None:
    root = ET.fromstring("<r><a><name/><b><name/></b></a><name/></r>")
    changed = rename_elements(root, {"a/b/name": "nm", "name": "top"})
    assert ET.tostring(root) == b"<r><a><name /><b><nm /></b></a><top /></r>"
    for el, tag in changed:
        el.tag = tag
    assert ET.tostring(root) == b"<r><a><name /><b><name /></b></a><name /></r>"


def test_dt1_renamed_without_the_operators_xsd_is_written_unchecked_and_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = profile(tmp_path, '[elements]\n"houseInfo/houseName" = "houseNm"\n"userInfo/info/serviceInfo/regId" = "icpNo"\n'
                          '"houseInfo" = "house"\n')
    sp = Spool(tmp_path / "spool", dbl.IDC_ID, KEYS, p, clock=lambda: 1796000000.0)
    tree = bi.build(dbl.IDC_ID, PREFIXES, [Filing("京ICP备1号-1", "s", ServiceType.WEBSITE, ("a.example",), ("203.0.113.5",), "",
                                                  FilingStatus.ACTIVE)])
    with caplog.at_level(logging.WARNING, logger="beiand.isms.reports"):
        (f,) = sp.write_basic_info(tree)
        sp.write_basic_info(tree)
    root = unpacked(f)
    assert root.find("house/houseNm") is not None and root.find("houseInfo") is None
    assert root.findtext("userInfo/info/serviceInfo/icpNo") == "京ICP备1号-1"
    assert tree.find("houseInfo/houseName") is not None  # the caller's tree keeps beiand's names
    assert len([r for r in caplog.records if "basic_info.xsd" in r.getMessage()]) == 1
    assert list(schema(str(XSD_DIR / "basic_info.xsd")).iter_errors(root))  # the built-in XSD no longer matches


def test_dt1_renamed_is_validated_against_the_operators_xsd(tmp_path: Path) -> None:
    ops = tmp_path / "xsd"
    shutil.copytree(XSD_DIR, ops)
    xsd = (ops / "basic_info.xsd").read_text(encoding="utf-8")
    (ops / "basic_info.xsd").write_text(xsd.replace('name="houseName"', 'name="houseNm"'), encoding="utf-8")
    (tmp_path / "profile.toml").write_text('xsd_dir = "xsd"\n[elements]\n"houseInfo/houseName" = "houseNm"\n', encoding="utf-8")
    p = load_profile(tmp_path / "profile.toml")
    sp = Spool(tmp_path / "spool", dbl.IDC_ID, KEYS, p, clock=lambda: 1796000000.0)
    (f,) = sp.write_basic_info(bi.build(dbl.IDC_ID, PREFIXES, []))
    assert unpacked(f).find("houseInfo/houseNm") is not None
    # a rename the operator's XSD does not know: refused, not written
    (tmp_path / "profile.toml").write_text('xsd_dir = "xsd"\n[elements]\n"houseInfo/houseZip" = "houseZipCode"\n',
                                           encoding="utf-8")
    sp2 = Spool(tmp_path / "spool2", dbl.IDC_ID, KEYS, load_profile(tmp_path / "profile.toml"), clock=lambda: 1796000000.0)
    with pytest.raises(ReportError, match="DT 1: not written"):
        sp2.write_basic_info(bi.build(dbl.IDC_ID, PREFIXES, []))
    assert not sp2.pending()


def test_dt6_rows_renamed(tmp_path: Path) -> None:
    p = profile(tmp_path, '[elements]\n"command" = "commandInfo"\n"command/rules" = "rule"\n')
    sp = Spool(tmp_path / "spool", dbl.IDC_ID, KEYS, p, clock=lambda: 1796000000.0)
    (f,) = sp.write(DataType.COMMAND_QUERY_RESULT, [{"commandId": 7, "type": 2, "houseId": "H1", "ruleAmount": 1,
                                                     "rules": "1:bad.example", "state": 1}], (("commandId", "3"),))
    root = unpacked(f)
    assert root.tag == "commandQueryResult" and root.findtext("commandId") == "3"  # the root and head: not renamed
    assert root.findtext("commandInfo/rule") == "1:bad.example" and root.findtext("commandInfo/commandId") == "7"
    assert root.find("command") is None
    with pytest.raises(ReportError):  # the hand checks still see the rows as built
        sp.write(DataType.COMMAND_QUERY_RESULT, [{"commandId": "x"}])
