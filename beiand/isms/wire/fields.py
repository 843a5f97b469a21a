"""The one mapping table (ISMS.md §6-§7): beiand fact → data type, element, code, and how sure.

Every element a report writer emits comes from :data:`FIELDS` (``row_elements``), and a test
fails when a writer emits an element with no row here, or a row names an element no writer
fills. ``mark`` carries ISMS.md's confidence: ``2+`` two or more implementations agree, ``1``
one only, ``≠`` they disagree. A fact beiand cannot know is ``""`` in ``source``: its element is
written empty, never invented (ISMS.md §7).

When the operator's spec or XSD says otherwise, correct the row here (and the XSD beside it),
or override the element name in the province profile; nothing else needs to change.
"""

from __future__ import annotations

from typing import NamedTuple


class Field(NamedTuple):
    dt: int  # data type (ISMS.md §4); 0: the fileLoad envelope
    element: str  # the XML element, as the row carries it
    kind: str  # id, text, time, int, ip, port, protocol, flag, code
    source: str  # the beiand fact it comes from ("" : beiand cannot know it; written empty)
    mark: str  # 2+, 1, ≠ (ISMS.md's marks)


FIELDS: tuple[Field, ...] = (
    # -- fileLoad envelope (ISMS.md §2) --
    Field(0, "idcId", "text", "isms.idc_id (许可证号)", "2+"),
    Field(0, "provinceId", "text", "isms.province_id (v3.x only)", "1"),
    Field(0, "dataUpload", "text", "the packed, encrypted report", "2+"),
    Field(0, "encryptAlgorithm", "code", "isms.encrypt", "2+"),
    Field(0, "hashAlgorithm", "code", "isms.hash", "2+"),
    Field(0, "compressionFormat", "code", "isms.compression", "2+"),
    Field(0, "dataHash", "text", "keyed hash over the packed report", "2+"),
    Field(0, "commandVersion", "text", "the profile's commandVersion", "2+"),
    # -- DT 3 logQueryResult: one row per AccessRecord in the window --
    Field(3, "srcIp", "ip", "AccessRecord.client_ip", "2+"),
    Field(3, "destIp", "ip", "AccessRecord.server_ip", "2+"),
    Field(3, "srcPort", "port", "AccessRecord.client_port", "2+"),
    Field(3, "destPort", "port", "AccessRecord.server_port", "2+"),
    Field(3, "protocol", "protocol", "AccessRecord.transport: tcp 1, udp 2", "2+"),
    Field(3, "accessTime", "time", "AccessRecord.ts_ms, UTC → UTC+8", "2+"),
    Field(3, "url", "text", "AccessRecord.name for http-host records (the Host; beiand logs no path)", "2+"),
    Field(3, "houseId", "text", "the basic data's (type 0) house of the server IP, else isms.house_id", "2+"),
    # -- DT 4 monitorResult / DT 5 filterResult: rows from access-log records under a command --
    *(Field(dt, e, k, s, m) for dt in (4, 5) for e, k, s, m in (
        ("commandId", "id", "AccessRecord.order (isms:<commandId>)", "2+"),
        ("houseId", "text", "the basic data's (type 0) house of the server IP, else isms.house_id", "2+"),
        ("srcIp", "ip", "AccessRecord.client_ip", "2+"),
        ("destIp", "ip", "AccessRecord.server_ip", "2+"),
        ("srcPort", "port", "AccessRecord.client_port", "2+"),
        ("destPort", "port", "AccessRecord.server_port", "2+"),
        ("protocol", "protocol", "AccessRecord.transport", "2+"),
        ("domain", "text", "AccessRecord.name", "2+"),
        ("url", "text", "", "2+"),  # beiand logs no request path
        ("gatherTime", "time", "AccessRecord.ts_ms, UTC+8", "2+"),
    )),
    # -- DT 7 activeState --
    Field(7, "houseAmount", "int", "houses this beiand serves (isms.house_id: 1)", "1"),
    Field(7, "errHouseAmount", "int", "houses whose capture is down", "1"),
    Field(7, "errHouseId", "text", "those houses", "1"),
    # -- DT 8 activeResources (IP and domain rows): per (name, IP, port, protocol) aggregate --
    Field(8, "ip", "ip", "AccessRecord.server_ip", "2+"),
    Field(8, "port", "port", "AccessRecord.server_port", "2+"),
    Field(8, "protocol", "protocol", "AccessRecord.transport", "2+"),
    Field(8, "houseId", "text", "the basic data's (type 0) house of the server IP, else isms.house_id", "2+"),
    Field(8, "firstFound", "time", "first ts of the aggregate (UTC+8)", "2+"),
    Field(8, "lastFound", "time", "last ts of the aggregate (UTC+8)", "2+"),
    Field(8, "visitsCount", "int", "records in the aggregate", "2+"),
    Field(8, "block", "flag", "any record with action block", "2+"),
    Field(8, "domain", "text", "AccessRecord.name (domain rows)", "2+"),
    Field(8, "topDomain", "text", "registrable_domain(name) (PSL)", "2+"),
    Field(8, "topDomainFlag", "flag", "0: the name is its own registrable domain", "1"),
    # -- DT 9 illegalWeb: unfiled / inactive / mismatch aggregates --
    Field(9, "houseId", "text", "the basic data's (type 0) house of the server IP, else isms.house_id", "2+"),
    Field(9, "ip", "ip", "AccessRecord.server_ip", "2+"),
    Field(9, "port", "port", "AccessRecord.server_port", "2+"),
    Field(9, "domain", "text", "AccessRecord.name", "2+"),
    Field(9, "url", "text", "", "2+"),
    Field(9, "serviceType", "code", "fwnr: 24 其他 (beiand does not classify content)", "2+"),
    Field(9, "firstFound", "time", "first ts (UTC+8)", "2+"),
    Field(9, "lastFound", "time", "last ts (UTC+8)", "2+"),
    Field(9, "visitCount", "int", "records in the aggregate", "2+"),
    Field(9, "protocol", "protocol", "AccessRecord.transport", "2+"),
    Field(9, "block", "flag", "any record with action block", "2+"),
    Field(9, "illegalType", "code", "verdict: unfiled/inactive → 1; mismatch → 999 (profile: 1)", "2+"),
    Field(9, "currentState", "flag", "block → 1 已处置, else 0 未处置", "2+"),
    Field(9, "icpError", "flag", "1 for every DT 9 row beiand writes (备案异常)", "1"),
    Field(9, "regError", "code", "", "1"),
    Field(9, "regDomain", "text", "mismatch: the filed name that covers the name seen (from the records in force)", "1"),
    Field(9, "trueDomain", "text", "mismatch: the name seen", "1"),
    # -- DT 2 基础数据监测异常 (idcMonitor): DT 9's shape; regError 2, and 1/3 from the basic data (type 0) --
    *(Field(2, f.element, f.kind, f.source, "1") for f in (
        Field(2, "houseId", "text", "the basic data's (type 0) house of the server IP, else isms.house_id", ""),
        Field(2, "ip", "ip", "AccessRecord.server_ip", ""),
        Field(2, "port", "port", "AccessRecord.server_port", ""), Field(2, "domain", "text", "AccessRecord.name", ""),
        Field(2, "url", "text", "", ""),  # DT 9's shape (ISMS.md §4; issue 28)
        Field(2, "serviceType", "code", "fwnr: 24 其他 (beiand does not classify content)", ""),
        Field(2, "firstFound", "time", "first ts (UTC+8)", ""), Field(2, "lastFound", "time", "last ts (UTC+8)", ""),
        Field(2, "visitCount", "int", "records in the aggregate", ""), Field(2, "protocol", "protocol", "AccessRecord.transport", ""),
        Field(2, "block", "flag", "any record with action block", ""),
        Field(2, "illegalType", "code", "verdict: unfiled/inactive → 1; else the profile's mismatch type (999)", ""),
        Field(2, "currentState", "flag", "block → 1 已处置, else 0 未处置", ""),
        Field(2, "regError", "code", "2 IP登记域名有误: mismatch/ip-not-listed; with basic data 3 未登记 (IP in no "
              "segment), 1 登记保留实际为占用 (reserved segment)", ""),
        Field(2, "regDomain", "text", "the filed name that covers the name seen (from the records in force)", ""),
        Field(2, "trueDomain", "text", "the name seen", ""),
    )),
    # -- DT 6 管理指令查询结果 (commandQueryResult): the commands in force (answer to commandQuery, types 3 and 6).
    # ISMS.md names the root only (mark 1: Aotain): the row elements are beiand's, to correct from the operator's XSD --
    Field(6, "commandId", "id", "the command's commandId (blacklist/noFilter: theirs)", "1"),
    Field(6, "type", "code", "ack type: 1 monitor, 2 filter, 5 noFilter, 6 blacklist", "1"),
    Field(6, "houseId", "text", "range/houseId* joined by ',' (empty: every house)", "1"),
    Field(6, "effectTime", "time", "time/effectTime (empty: at once)", "1"),
    Field(6, "expiredTime", "time", "time/expiredTime (empty: until deleted)", "1"),
    Field(6, "ruleAmount", "int", "rules (list entries) in the command", "1"),
    Field(6, "rules", "text", "the first rules as subtype:valueStart[-valueEnd];… (≤ 1024 characters)", "1"),
    Field(6, "state", "code", "1 in force now, 0 outside its effectTime..expiredTime window", "1"),
    # -- DT 10 指令执行情况: per command (idc_commandack in CU-lite; a spool file for the CU in EU mode) --
    Field(10, "houseId", "text", "isms.house_id", "2+"),
    Field(10, "commandId", "id", "the command's commandId", "2+"),
    Field(10, "type", "code", "ack type: 1 monitor, 2 filter, 3 基础数据, 4 codeList, 5 noFilter, 6 blacklist, 7, 8", "2+"),
    Field(10, "resultCode", "code", "0 all executed, 1 some, 2 none", "1"),
    Field(10, "msgInfo", "text", "what was done, or why not (unsupported: ...)", "2+"),
)

# beiand verdict → DT 9 illegalType (ISMS.md §6); ``mismatch`` follows the profile.
VERDICT_ILLEGAL_TYPE = {"unfiled": 1, "inactive": 1}
REPORTED_VERDICTS = frozenset({"unfiled", "inactive", "mismatch"})
PROTOCOL = {"tcp": 1, "udp": 2}  # ISMI: 1 TCP, 2 UDP, not IANA (ISMS.md §5)


def row_elements(dt: int) -> tuple[str, ...]:
    """The row elements of a data type, in table order (the order the writer emits them)."""
    return tuple(f.element for f in FIELDS if f.dt == dt)
