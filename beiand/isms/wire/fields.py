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
    dt: int  # data type (ISMS.md §4); 0: the fileLoad envelope; DT 1: ``element`` is a path below <basicInfo>
    element: str  # the XML element, as the row carries it
    kind: str  # id, text, time, int, ip, port, protocol, flag, code; DT 1 also date, group (holds elements)
    source: str  # the beiand fact it comes from ("" : beiand cannot know it; written empty)
    mark: str  # 2+, 1, ≠ (ISMS.md's marks)


def _person(path: str, whose: str, mark: str) -> tuple[Field, ...]:
    """A person element (责任人 / 联系人): name, idType (zjlx), id, tel, mobile, email (com.idc's sample only:
    the PHP CU and com.act keep a reference to a person table there, so the children are mark 1)."""
    return (Field(1, path, "group", f"basic file: {whose}", mark),
            *(Field(1, f"{path}/{e}", k, f"basic file: {whose}.{key}", "1") for e, k, key in (
                ("name", "text", "name"), ("idType", "code", "id_type"), ("id", "text", "id"), ("tel", "text", "tel"),
                ("mobile", "text", "mobile"), ("email", "text", "email"))))


_H = "houseInfo"
_S = "userInfo/info/serviceInfo"
# DT 1 基础数据 (basicInfo): beiand's reconstruction (docs/isms.md "DT 1 basic data"). ``element`` is the path
# below <basicInfo>; ``group`` rows are elements that hold others. Sources: com.idc (a Sichuan IDC/ISP CU in
# Java: JAXB classes com/idc/model/*.java and a sample file in com/idc/utils/IspDynamicProxy.java), the PHP
# nusoap CU's MySQL schema (tables idc_info, idc_houseinfo, idc_ipseginfo, idc_userinfo, idc_serviceinfo,
# idc_household_inter, idc_ipseg), com.act (com/act/idc/entity/IsmsxIdcBasicInfoEntity.java). Facts beiand
# cannot know (basic file keys absent) are written empty, never invented.
_BASIC_INFO: tuple[Field, ...] = (
    Field(1, "idcId", "text", "isms.idc_id (许可证号)", "2+"),
    Field(1, "idcName", "text", "basic file: idc.name (经营者名称)", "2+"),
    Field(1, "idcAdd", "text", "basic file: idc.address (经营者通信地址)", "2+"),
    Field(1, "idcZip", "text", "basic file: idc.zip", "2+"),
    Field(1, "corp", "text", "basic file: idc.corp (企业法人)", "2+"),
    *_person("idcOfficer", "idc.officer (网络信息安全责任人)", "2+"),
    *_person("emergencyContact", "idc.emergency_contact (应急联系人)", "2+"),
    Field(1, "houseCount", "int", "houses written", "1"),
    Field(1, _H, "group", "one per inventory site (机房) and per [[house]] of the basic file", "2+"),
    Field(1, f"{_H}/houseId", "text", "HostedPrefix.site (机房) / house.id", "2+"),
    Field(1, f"{_H}/houseName", "text", "house.name", "2+"),
    Field(1, f"{_H}/houseType", "code", "house.type (jfxz 机房性质: 1 租用, 2 自建, 999 其他)", "2+"),
    Field(1, f"{_H}/houseProvince", "code", "house.province (行政区划代码)", "2+"),
    Field(1, f"{_H}/houseCity", "code", "house.city", "2+"),
    Field(1, f"{_H}/houseCounty", "code", "house.county", "2+"),
    Field(1, f"{_H}/houseAdd", "text", "house.address", "2+"),
    Field(1, f"{_H}/houseZip", "text", "house.zip", "2+"),
    *_person(f"{_H}/houseOfficer", "house.officer (机房网络信息安全责任人)", "2+"),
    Field(1, f"{_H}/gatewayInfo", "group", "house.gateway (互联网出入口)", "1"),
    Field(1, f"{_H}/gatewayInfo/id", "id", "house.gateway.id, else a stable id from the house and the gateway IP", "1"),
    Field(1, f"{_H}/gatewayInfo/bandWidth", "int", "house.gateway.bandwidth (Mbps)", "1"),
    Field(1, f"{_H}/gatewayInfo/linkType", "code", "house.gateway.link_type", "1"),
    Field(1, f"{_H}/gatewayInfo/accessUnit", "text", "house.gateway.access_unit", "1"),
    Field(1, f"{_H}/gatewayInfo/gatewayIp", "ip", "house.gateway.ip", "1"),
    Field(1, f"{_H}/ipSegInfo", "group", "one per active or pending HostedPrefix of the site (closed: left out)", "2+"),
    Field(1, f"{_H}/ipSegInfo/id", "id", "a stable id from the prefix", "2+"),
    Field(1, f"{_H}/ipSegInfo/startIp", "ip", "HostedPrefix.prefix: first address", "2+"),
    Field(1, f"{_H}/ipSegInfo/endIp", "ip", "HostedPrefix.prefix: last address", "2+"),
    Field(1, f"{_H}/ipSegInfo/type", "code", "HostedPrefix.state: active → 0 静态, pending → 2 保留 (com.idc's codes)", "≠"),
    Field(1, f"{_H}/ipSegInfo/user", "text", "account.unit_name, else HostedPrefix.account (用户账号)", "2+"),
    Field(1, f"{_H}/ipSegInfo/idType", "code", "account.id_type", "1"),
    Field(1, f"{_H}/ipSegInfo/idNumber", "text", "account.id_number", "2+"),
    Field(1, f"{_H}/ipSegInfo/useTime", "date", "", "2+"),
    Field(1, f"{_H}/ipSegInfo/sourceUnit", "text", "house.source_unit (来源单位)", "2+"),
    Field(1, f"{_H}/ipSegInfo/allocationUnit", "text", "house.allocation_unit (分配单位)", "2+"),
    Field(1, "userInfo", "group", "one per inventory account (用户账号) with an active or pending prefix", "2+"),
    Field(1, "userInfo/id", "id", "a stable id from the account (com.idc's sample writes <idcId> here)", "≠"),
    Field(1, "userInfo/nature", "code", "account.nature (用户属性)", "2+"),
    Field(1, "userInfo/info", "group", "the unit's facts (com.idc wraps them; the PHP CU's table is flat)", "1"),
    Field(1, "userInfo/info/unitName", "text", "account.unit_name", "2+"),
    Field(1, "userInfo/info/unitNature", "code", "account.unit_nature (dwsx 单位属性)", "2+"),
    Field(1, "userInfo/info/idType", "code", "account.id_type (zjlx 证件类型)", "2+"),
    Field(1, "userInfo/info/idNumber", "text", "account.id_number", "2+"),
    *_person("userInfo/info/officer", "account.officer", "2+"),
    Field(1, "userInfo/info/add", "text", "account.address", "2+"),
    Field(1, "userInfo/info/zipCode", "text", "account.zip", "2+"),
    Field(1, _S, "group", "one per Filing in force served from the account's prefixes", "2+"),
    Field(1, f"{_S}/serviceId", "id", "a stable id from Filing.number", "2+"),
    Field(1, f"{_S}/serviceContent", "code", "account.service_content (fwnr); beiand does not classify content", "2+"),
    Field(1, f"{_S}/regType", "code", "account.reg_type", "2+"),
    Field(1, f"{_S}/regId", "text", "Filing.number (备案号)", "2+"),
    Field(1, f"{_S}/setMode", "code", "account.set_mode (jrfs 接入方式)", "2+"),
    Field(1, f"{_S}/business", "code", "idc.business (1 IDC, 2 ISP)", "2+"),
    Field(1, f"{_S}/domain", "group", "one per Filing.domains", "1"),
    Field(1, f"{_S}/domain/id", "id", "a stable id from the filing and the domain", "1"),
    Field(1, f"{_S}/domain/name", "text", "Filing.domains (IDNA A-label)", "1"),
    Field(1, f"{_S}/housesHoldInfo", "group", "one per house the filing's listed IPs are served from (占用机房)", "1"),
    Field(1, f"{_S}/housesHoldInfo/hhId", "id", "a stable id from the filing, the account and the house", "2+"),
    Field(1, f"{_S}/housesHoldInfo/houseId", "text", "HostedPrefix.site of the prefix holding the IP", "2+"),
    Field(1, f"{_S}/housesHoldInfo/bandWidth", "int", "", "2+"),
    Field(1, f"{_S}/housesHoldInfo/ipSeg", "group", "one per Filing.ips entry in that house", "2+"),
    Field(1, f"{_S}/housesHoldInfo/ipSeg/startIp", "ip", "Filing.ips entry: first address", "2+"),
    Field(1, f"{_S}/housesHoldInfo/ipSeg/endIp", "ip", "Filing.ips entry: last address", "2+"),
    Field(1, f"{_S}/housesHoldInfo/distributeTime", "date", "", "2+"),
    Field(1, "userInfo/info/registerTime", "date", "account.register_time", "2+"),
    Field(1, "userInfo/info/serviceRegTime", "date", "account.service_reg_time", "1"),
    Field(1, "timeStamp", "time", "when the file is written (Beijing time)", "2+"),
)

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
    Field(7, "houseAmount", "int", "houses reported for: a gateway 1; beiand isms serve the licence's (inventory, basic data, "
          "gateways)", "1"),
    Field(7, "errHouseAmount", "int", "faulty houses: a gateway serving it down or not capturing, or none serving it", "1"),
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
    # -- DT 1 基础数据 (basicInfo): element paths below the root (see _BASIC_INFO above) --
    *_BASIC_INFO,
)

# beiand verdict → DT 9 illegalType (ISMS.md §6); ``mismatch`` follows the profile.
VERDICT_ILLEGAL_TYPE = {"unfiled": 1, "inactive": 1}
REPORTED_VERDICTS = frozenset({"unfiled", "inactive", "mismatch"})
PROTOCOL = {"tcp": 1, "udp": 2}  # ISMI: 1 TCP, 2 UDP, not IANA (ISMS.md §5)


def row_elements(dt: int) -> tuple[str, ...]:
    """The row elements of a data type, in table order (the order the writer emits them)."""
    return tuple(f.element for f in FIELDS if f.dt == dt)


def element_paths(dt: int) -> tuple[str, ...]:
    """The element paths a profile's ``elements`` may rename: DT 1's rows (paths below <basicInfo>) and
    DT 6's row element and its children (``command``, ``command/commandId``, ...), both beiand's
    reconstruction (ISMS.md names their roots only)."""
    if dt == 6:
        return ("command", *(f"command/{e}" for e in row_elements(6)))
    return row_elements(dt)

