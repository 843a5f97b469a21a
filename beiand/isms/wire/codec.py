"""Versioned XML codecs (ISMS.md §7): one per ``commandVersion``; an unknown version gets 999.

A codec turns the XML of one ``idc_command`` into :mod:`model` values, after XSD validation,
and writes the XML of beiand's data files. Parsing refuses DTDs and entities (defusedxml):
the payload comes from the network. Failures raise :class:`XmlError` with ISMS.md's code:
5 not well-formed or the wrong root for the command type, 6 content (XSD or a value beiand
cannot read).
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

if TYPE_CHECKING:
    import xmlschema

from beiand.errors import BeiandError
from beiand.isms.wire.codes import CommandResult, CommandType
from beiand.isms.wire.model import (
    ActivePeriod,
    BasicData,
    CodeList,
    House,
    IpSegment,
    Item,
    ListEntry,
    LogQuery,
    Query,
    Rule,
    SecurityCommand,
    parse_time,
)

XSD_DIR = Path(__file__).parent / "xsd"
LOG_QUERY_DEFAULT_S = 7200  # no endTime: start + 7200 s (ISMS.md §3, (1))
CODE_TABLES = ("basx", "jrfs", "dwsx", "zjlx", "jfxz", "dllx", "fwnr", "gzlx", "wfwgqk")


XSD_SAMPLE_RULES = 50
_RULE_CHILDREN = ("subtype", "valueStart", "valueEnd", "keywordRange")


def _rule_problem(r: ET.Element) -> str:
    """xsd/command.xsd's ``rule`` type, checked by hand (tests compare it with the XSD)."""
    tags = [c.tag for c in r]
    if r.attrib or (r.text or "").strip():
        return "unexpected attribute or text"
    if tags[:2] != ["subtype", "valueStart"] or any(t not in _RULE_CHILDREN for t in tags):
        return f"children {tags[:6]}: expected subtype, valueStart, [valueEnd], keywordRange*"
    rest = tags[2:]
    if rest and rest[0] == "valueEnd":
        rest = rest[1:]
    if any(t != "keywordRange" for t in rest) or len(rest) > 3:
        return f"children {tags[:6]}: expected subtype, valueStart, [valueEnd], keywordRange* (at most 3)"
    for c in r:
        if len(c) or c.attrib:
            return f"{c.tag}: unexpected child or attribute"
        t = (c.text or "").strip()
        if c.tag in ("subtype", "keywordRange"):
            try:
                v = int(t)
            except ValueError:
                return f"{c.tag}: {t[:40]!r} is not an integer"
            if c.tag == "subtype" and not 1 <= v <= 999:
                return f"subtype: {v} outside 1..999"
            if not -(2**31) <= v < 2**31:
                return f"{c.tag}: {v} out of range"
        elif len(c.text or "") > 1024:
            return f"{c.tag}: longer than 1024 characters"
    return ""


class XmlError(BeiandError, ValueError):
    def __init__(self, code: CommandResult, why: str) -> None:
        super().__init__(why)
        self.code = code
        self.why = why


@functools.lru_cache(maxsize=16)
def schema(path: str) -> xmlschema.XMLSchema11:
    # imported here: xmlschema takes a quarter of a second to import, and every command would pay
    # it (`beiand replay` starts in about that; issue 33), not only those that validate ISMS XML
    import xmlschema

    return xmlschema.XMLSchema11(path)


def _text(el: ET.Element | None, default: str = "") -> str:
    if el is None or el.text is None:
        return default
    return el.text.strip()


def _int(el: ET.Element | None, what: str, default: int | None = None) -> int:
    t = _text(el)
    if not t:
        if default is None:
            raise XmlError(CommandResult.XML_CONTENT, f"{what}: missing")
        return default
    try:
        return int(t)
    except ValueError:
        raise XmlError(CommandResult.XML_CONTENT, f"{what}: {t[:40]!r} is not an integer") from None


def _time(el: ET.Element | None, what: str) -> float:
    try:
        return parse_time(_text(el))
    except ValueError:
        raise XmlError(CommandResult.XML_CONTENT, f"{what}: {_text(el)[:40]!r} is not yyyy-MM-dd HH:mm:ss") from None


class Codec:
    """ISMI v2.0 (the PHP CU's sample): command types 0-6."""

    version = "2.0"
    roots: Mapping[int, frozenset[str]] = {
        CommandType.BASIC_DATA: frozenset({"idcInfoManage"}),
        CommandType.LOG_QUERY: frozenset({"logQuery"}),
        CommandType.SECURITY: frozenset({"command", "blacklist", "noFilter"}),
        CommandType.COMMAND_QUERY: frozenset({"commandQuery"}),
        CommandType.CODE_LIST: frozenset({"codeList"}),
        CommandType.ACTIVE_PERIOD: frozenset({"activeResourcesPeriod"}),
        CommandType.SECURITY_QUERY: frozenset({"queryView", "commandRecord", "commandQuery"}),
    }
    # Types beiand knows exist but does not carry out: answered 999 "unsupported" (ISMS.md §3).
    unsupported_types: frozenset[int] = frozenset({51, 52, 53})
    xsd: Mapping[str, str] = {"command": "command.xsd", "blacklist": "command.xsd", "noFilter": "command.xsd", "logQuery": "queries.xsd",
           "commandQuery": "queries.xsd", "queryView": "queries.xsd", "commandRecord": "queries.xsd",
           "codeList": "queries.xsd", "activeResourcesPeriod": "queries.xsd", "idcInfoManage": "basic.xsd"}

    def __init__(self, xsd_dir: Path = XSD_DIR, validate: bool = True) -> None:
        self.xsd_dir = xsd_dir
        self.validate = validate

    # -- in ----------------------------------------------------------------------------------

    def parse(self, command_type: int, xml: bytes) -> ET.Element:
        if command_type in self.unsupported_types:
            raise XmlError(CommandResult.OTHER, f"unsupported: commandType {command_type}")
        roots = self.roots.get(command_type)
        if roots is None:
            raise XmlError(CommandResult.OTHER, f"unknown commandType {command_type} in version {self.version}")
        try:
            root: ET.Element = DET.fromstring(xml)
        except (ET.ParseError, DefusedXmlException, ValueError) as exc:
            raise XmlError(CommandResult.XML_FORMAT, f"not well-formed XML: {exc}") from None
        if root.tag not in roots:
            raise XmlError(CommandResult.XML_FORMAT, f"root <{str(root.tag)[:40]}> is not one of {sorted(roots)} "
                           f"for commandType {command_type}")
        if self.validate and root.tag in self.xsd:
            errors = list(schema(str(self.xsd_dir / self.xsd[root.tag])).iter_errors(self._sample(root)))
            if errors:
                e = errors[0]
                raise XmlError(CommandResult.XML_CONTENT, f"{e.path or root.tag}: {e.reason}"
                               + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
        return root

    def _sample(self, root: ET.Element) -> ET.Element:
        """A command with many rules: the XSD sees the command with its first rules; every rule gets
        the rule type's checks here (xmlschema takes ~0.1 ms per rule: 5 s for 50,000)."""
        rules = [c for c in root if c.tag == "rule"]
        if len(rules) <= XSD_SAMPLE_RULES:
            return root
        for i, r in enumerate(rules[XSD_SAMPLE_RULES:], XSD_SAMPLE_RULES + 1):
            why = _rule_problem(r)
            if why:
                raise XmlError(CommandResult.XML_CONTENT, f"/command/rule[{i}]: {why}")
        sample = ET.Element(root.tag, root.attrib)
        n = 0
        for c in root:
            if c.tag == "rule":
                n += 1
                if n > XSD_SAMPLE_RULES:
                    continue
            sample.append(c)
        return sample

    def decode(self, command_type: int, xml: bytes) -> Item:
        root = self.parse(command_type, xml)
        tag = root.tag
        if tag == "command":
            return self.security(root)
        if tag in ("blacklist", "noFilter"):
            return ListEntry(tag, _int(root.find("commandId"), "commandId"), _int(root.find("type"), "type"),
                             _text(root.find("contents")), _int(root.find("operationType"), "operationType"),
                             _text(root.find("level")), _text(root.find("timeStamp")))
        if tag == "logQuery":
            return self.log_query(root)
        if tag == "codeList":
            return self.code_list(root)
        if tag == "activeResourcesPeriod":
            return ActivePeriod(_int(root.find("commandId"), "commandId", 0), _int(root.find("period"), "period"))
        if tag == "idcInfoManage":
            return self.basic_data(root)
        fields: dict[str, str] = {}
        for c in root:  # a repeated element (houseId*, controlsId*): its values joined by ","
            if isinstance(c.tag, str):
                fields[c.tag] = f"{fields[c.tag]},{_text(c)}" if c.tag in fields else _text(c)
        return Query(tag, _int(root.find("commandId"), "commandId", 0), fields)

    def basic_data(self, root: ET.Element) -> BasicData:
        """``idcInfoManage`` (xsd/basic.xsd): houses (houseId, houseName, ipSegment*{startIp, endIp, type})."""
        houses = []
        for h in root.findall("house"):
            segs = []
            for g in h.findall("ipSegment"):
                a, b = _text(g.find("startIp")), _text(g.find("endIp"))
                try:
                    lo, hi = ipaddress.ip_address(a), ipaddress.ip_address(b or a)
                except ValueError:
                    raise XmlError(CommandResult.XML_CONTENT, f"house/ipSegment: {a[:40]!r}..{b[:40]!r} is not an address range") from None
                if lo.version != hi.version or int(hi) < int(lo):
                    raise XmlError(CommandResult.XML_CONTENT, f"house/ipSegment: {a}..{b} is not a range")
                segs.append(IpSegment(str(lo), str(hi), _int(g.find("type"), "ipSegment/type", 0) == 1))
            houses.append(House(_text(h.find("houseId")), _text(h.find("houseName")), tuple(segs)))
        # ISMS.md §4: <type> 1/2 turns DT 2 on/off (issue 28); beiand's own <monitor> is still read
        kind = _int(root.find("type"), "type", 0)
        monitor = kind if kind in (1, 2) else _int(root.find("monitor"), "monitor", 0)
        return BasicData(_int(root.find("commandId"), "commandId", 0), tuple(houses),
                         _int(root.find("operationType"), "operationType", 0), monitor)

    def security(self, root: ET.Element) -> SecurityCommand:
        rules = []
        for r in root.iter("rule"):
            rules.append(Rule(_int(r.find("subtype"), "rule/subtype"), _text(r.find("valueStart")), _text(r.find("valueEnd")),
                              tuple(_int(k, "rule/keywordRange") for k in r.findall("keywordRange"))))
        action = root.find("action")
        tm = root.find("time")
        rng = root.find("range")
        op = _int(root.find("operationType"), "operationType")
        if op == 0 and not rules:
            raise XmlError(CommandResult.XML_CONTENT, "command: an add (operationType 0) without any <rule>")
        return SecurityCommand(
            _int(root.find("commandId"), "commandId"), _int(root.find("type"), "type"), op, tuple(rules),
            block=_int(action.find("block") if action is not None else None, "action/block", 0),
            log=_int(action.find("log") if action is not None else None, "action/log", 1),
            report=_int(action.find("report") if action is not None else None, "action/report", 1),
            reason=_text(action.find("reason") if action is not None else None),
            effect_time=_time(tm.find("effectTime") if tm is not None else None, "time/effectTime"),
            expired_time=_time(tm.find("expiredTime") if tm is not None else None, "time/expiredTime"),
            house_ids=tuple(_text(h) for h in rng.findall("houseId")) if rng is not None else (),
            owner=_text(root.find("privilege/owner")), time_stamp=_text(root.find("timeStamp")),
        )

    def log_query(self, root: ET.Element) -> LogQuery:
        info = root.find("commandInfo")
        assert info is not None  # the XSD requires it
        start = _time(info.find("startTime"), "commandInfo/startTime")
        end = _time(info.find("endTime"), "commandInfo/endTime") or start + LOG_QUERY_DEFAULT_S
        if end < start:
            raise XmlError(CommandResult.XML_CONTENT, "commandInfo: endTime before startTime")

        def rng(name: str) -> tuple[str, str]:
            a, b = _text(info.find(f"{name}/startIp")), _text(info.find(f"{name}/endIp"))
            for v in (a, b):
                if v:
                    try:
                        ipaddress.ip_address(v)
                    except ValueError:
                        raise XmlError(CommandResult.XML_CONTENT, f"commandInfo/{name}: {v[:40]!r} is not an IP address") from None
            return a, b or a

        url = _text(info.find("url"))
        if url:
            try:
                url = base64.b64decode(url, validate=True).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                raise XmlError(CommandResult.XML_CONTENT, "commandInfo/url: not base64") from None
        return LogQuery(_int(root.find("commandId"), "commandId"), start, end,
                        tuple(_text(h) for h in info.findall("houseId")), rng("srcIp"), rng("destIp"),
                        _int(info.find("srcPort"), "srcPort", 0), _int(info.find("dstPort"), "dstPort", 0),
                        _int(info.find("protocolType"), "protocolType", 0), url)

    def code_list(self, root: ET.Element) -> CodeList:
        tables: dict[str, list[dict[str, str]]] = {}
        for t in root:
            if not isinstance(t.tag, str):
                continue
            rows = [{c.tag: _text(c) for c in row if isinstance(c.tag, str)} for row in t]
            if any("id" not in r for r in rows):
                raise XmlError(CommandResult.XML_CONTENT, f"codeList/{t.tag}: a row without <id>")
            tables[t.tag] = rows
        return CodeList(tables)

    # -- out ---------------------------------------------------------------------------------

    def data_file(self, root: str, idc_id: str, head: Sequence[tuple[str, str]], rows: Iterable[Mapping[str, Any]],
                  row_tag: str, time_stamp: str, wrap: str = "", wrap_head: Sequence[tuple[str, str]] = ()) -> bytes:
        """One data file: ``<root>`` + head elements + idcId + rows (each under ``row_tag``, all under
        ``wrap`` after ``wrap_head`` when given) + timeStamp. Written as ElementTree writes it
        (``<e />`` when empty; ``&``, ``<``, ``>`` escaped) but as strings: a report may hold a day
        of rows, and a tree of them costs ten times the text (issue 30)."""
        out = [f"<{root}>", *(_element(k, v) for k, v in head)]
        if not any(k == "idcId" for k, _ in head):
            out.append(_element("idcId", idc_id))
        at = len(out)
        if wrap:
            out += [_element(k, v) for k, v in wrap_head]
        open_, close, empty = f"<{row_tag}>", f"</{row_tag}>", f"<{row_tag} />"
        tags: dict[str, tuple[str, str, str]] = {}  # element → its open, close and empty tags
        for row in rows:
            parts = [open_]
            for k, v in row.items():
                tg = tags.get(k)
                if tg is None:
                    tg = tags[k] = (f"<{k}>", f"</{k}>", f"<{k} />")
                t = v if type(v) is str else "" if v is None else str(v)
                if not t:
                    parts.append(tg[2])
                    continue
                if "&" in t or "<" in t or ">" in t:
                    t = t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                if not t.isascii() or not t.isprintable():
                    t = _NOT_XML.sub("\ufffd", t)
                parts += (tg[0], t, tg[1])
            if len(parts) == 1:
                out.append(empty)
            else:
                parts.append(close)
                out.append("".join(parts))
        if wrap:
            out[at:] = [f"<{wrap}>", *out[at:], f"</{wrap}>"] if len(out) > at else [f"<{wrap} />"]
        out += [_element("timeStamp", time_stamp), f"</{root}>"]
        return b'<?xml version="1.0" encoding="UTF-8"?>\n' + "".join(out).encode("utf-8")

    def check_data(self, xml: bytes) -> list[str]:
        """XSD problems of a data file beiand wrote (Aotain validates each file first: so do we)."""
        root = DET.fromstring(xml)
        return [f"{e.path}: {e.reason}" for e in schema(str(self.xsd_dir / "data.xsd")).iter_errors(root)]


# What XML 1.0 cannot hold (C0 controls but tab, newline, CR; lone surrogates, as bytes that are not
# UTF-8 come back from the fleet's copy; U+FFFE/FFFF): written as U+FFFD, so a file always parses.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _element(tag: str, v: Any) -> str:
    if v is None:
        return f"<{tag} />"
    t = v if isinstance(v, str) else str(v)
    if not t:
        return f"<{tag} />"
    if "&" in t or "<" in t or ">" in t:
        t = t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if not t.isascii() or not t.isprintable():
        t = _NOT_XML.sub("\ufffd", t)
    return f"<{tag}>{t}</{tag}>"


class CodecV3(Codec):
    """ISMI v3.0/3.1 (the 2024 harness): adds provinceId and command types 7-12, 30-32, which
    beiand answers as unsupported (traffic capture, malicious files, deep synthesis)."""

    version = "3.0"
    unsupported_types = frozenset({7, 8, 9, 10, 11, 12, 30, 31, 32, 51, 52, 53})


CODECS: dict[str, type[Codec]] = {"2.0": Codec, "3.0": CodecV3, "3.1": CodecV3}


def version_key(v: str) -> str:
    """``v2.0`` → ``2.0``; the key of :data:`CODECS`."""
    return v.strip().lstrip("vV")
