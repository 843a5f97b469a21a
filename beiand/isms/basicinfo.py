"""DT 1 基础数据 (``basicInfo``, ISMS.md §4): the licensee (经营者), its houses (机房) with their IP
segments, its users (用户) and the services (备案) hosted for them, as beiand's reconstruction of
the element tree (docs/isms.md, "DT 1 basic data"; check it against the operator's XSD).

Pure, no I/O besides reading the basic-info file: :func:`load_basic_file` reads the facts beiand
cannot know from the inventory (names, addresses, officers, per-house and per-account facts);
:func:`build` makes the tree from the inventory's hosted prefixes, the filings and those facts;
:func:`check_tree` checks every element by hand (the XSD sees :func:`sample_tree`: xmlschema is
too slow for 50,000 services). Every element comes from ``fields.FIELDS`` (the DT 1 rows, paths
below the root): emitting one without a row raises ``KeyError``. A fact the file does not give is
written empty, never invented (ISMS.md §7).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from beiand.errors import BeiandError
from beiand.isms.wire.fields import FIELDS, element_paths
from beiand.model import Filing, FilingStatus, PrefixState
from beiand.policy.inventory import HostedPrefix, Inventory
from beiand.records.index import entry_addresses

ROOT = "basicInfo"
_PATHS = frozenset(element_paths(1))
KINDS: dict[str, str] = {f.element: f.kind for f in FIELDS if f.dt == 1}

# ipSegInfo/type (IP地址使用方式): com.idc's codes 0 静态, 1 动态, 2 保留 (mark 1). A pending prefix (预分配,
# 501号 art. 11: allocated, filing not yet verified) is reported as reserved.
SEGMENT_TYPE = {PrefixState.ACTIVE: "0", PrefixState.PENDING: "2"}
# Filings reported as hosted services: in force (cancelled, revoked, access-cancelled and first filings
# under review are not services this licensee hosts); an unmapped status is kept in force (issue 13).
IN_FORCE = frozenset({FilingStatus.ACTIVE, FilingStatus.ACCESS_PENDING, FilingStatus.UNMAPPED})


class BasicInfoError(BeiandError, ValueError):
    pass


# -- the basic-info file -----------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """责任人 / 联系人: idcOfficer, emergencyContact, houseOfficer, a unit's officer."""

    name: str = ""
    id_type: str = ""  # zjlx 证件类型
    id: str = ""
    tel: str = ""
    mobile: str = ""
    email: str = ""


@dataclass(frozen=True)
class Gateway:
    """互联网出入口 (gatewayInfo)."""

    id: str = ""
    bandwidth: str = ""  # Mbps
    link_type: str = ""
    access_unit: str = ""
    ip: str = ""


@dataclass(frozen=True)
class HouseFacts:
    id: str = ""  # houseId: as the inventory names it (its house column, else isms.house_id, else its site)
    name: str = ""
    type: str = ""  # jfxz 机房性质: 1 租用, 2 自建, 999 其他
    province: str = ""  # 行政区划代码
    city: str = ""
    county: str = ""
    address: str = ""
    zip: str = ""
    source_unit: str = ""  # ipSegInfo/sourceUnit (来源单位) of the house's segments
    allocation_unit: str = ""  # ipSegInfo/allocationUnit (分配单位)
    officer: Person = Person()
    gateway: tuple[Gateway, ...] = ()


@dataclass(frozen=True)
class AccountFacts:
    """The unit (单位) behind an inventory account (用户账号)."""

    unit_name: str = ""
    nature: str = ""  # 用户属性
    unit_nature: str = ""  # dwsx 单位属性
    id_type: str = ""
    id_number: str = ""
    address: str = ""
    zip: str = ""
    register_time: str = ""
    service_reg_time: str = ""
    set_mode: str = ""  # jrfs 接入方式 of its services
    service_content: str = ""  # fwnr 服务内容 of its services
    reg_type: str = ""
    officer: Person = Person()


@dataclass(frozen=True)
class BasicFacts:
    """What the basic-info file says; empty when there is no file (fields written empty)."""

    name: str = ""  # idcName (经营者名称)
    address: str = ""
    zip: str = ""
    corp: str = ""  # 企业法人
    business: str = ""  # 1 IDC, 2 ISP (com.idc)
    provider_names: tuple[str, ...] = ()  # how filings' 接入商 cell names this licensee; default: (name,)
    officer: Person = Person()
    emergency_contact: Person = Person()
    house: tuple[HouseFacts, ...] = ()
    account: Mapping[str, AccountFacts] = field(default_factory=dict)
    source: str = ""

    def names(self) -> tuple[str, ...]:
        return self.provider_names or ((self.name,) if self.name else ())


_CODE_KEYS = frozenset({"type", "id_type", "province", "city", "county", "business", "nature", "unit_nature",
                        "set_mode", "service_content", "reg_type", "link_type"})
_DATE_KEYS = frozenset({"register_time", "service_reg_time"})
_INT = re.compile(r"^-?[0-9]{1,10}$")
_UINT = re.compile(r"^[0-9]{1,19}$")
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2}( \d{2}:\d{2}:\d{2})?)?$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_IP = re.compile(r"^[0-9A-Fa-f:.]{0,64}$")


def _scalar(v: Any, where: str, key: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise BasicInfoError(f"{where}: {key}: expected a string or an integer, got {type(v).__name__}")
    s = str(v).strip()
    name = key.rsplit(".", 1)[-1]
    if len(s) > 1024:
        raise BasicInfoError(f"{where}: {key}: longer than 1024 characters")
    if name in _CODE_KEYS and s and not (_INT.match(s) and -(2**31) <= int(s) < 2**31):
        raise BasicInfoError(f"{where}: {key}: {s[:40]!r} is not an integer code")
    if name in ("id", "bandwidth") and key.split(".")[-2].startswith("gateway") and s and not _UINT.match(s):
        raise BasicInfoError(f"{where}: {key}: {s[:40]!r} is not a non-negative integer")
    if name in _DATE_KEYS and not _DATE.match(s):
        raise BasicInfoError(f"{where}: {key}: {s[:40]!r} is not yyyy-MM-dd (or yyyy-MM-dd HH:mm:ss)")
    if name == "ip" and s:
        try:
            ipaddress.ip_address(s)
        except ValueError:
            raise BasicInfoError(f"{where}: {key}: {s[:40]!r} is not an IP address") from None
    return s


def _table(cls: type[Any], data: Any, where: str, key: str) -> Any:
    """A dataclass from a TOML table: unknown keys refused, every value checked (``file: key: reason``)."""
    if not isinstance(data, dict):
        raise BasicInfoError(f"{where}: {key}: expected a table")
    known = {f.name for f in dataclasses.fields(cls)} - {"house", "account", "source"}  # those: not under [idc]
    kw: dict[str, Any] = {}
    for k, v in data.items():
        sub = f"{key}.{k}" if key else k
        if k not in known:
            raise BasicInfoError(f"{where}: {sub}: unknown key (known: {', '.join(sorted(known))})")
        if k in ("officer", "emergency_contact"):
            kw[k] = _table(Person, v, where, sub)
        elif k == "gateway":
            if not isinstance(v, list):
                raise BasicInfoError(f"{where}: {sub}: expected [[{key}.gateway]] tables")
            kw[k] = tuple(_table(Gateway, g, where, f"{sub}[{i}]") for i, g in enumerate(v, 1))
        elif k == "provider_names":
            if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
                raise BasicInfoError(f"{where}: {sub}: expected a list of non-empty strings")
            kw[k] = tuple(x.strip() for x in v)
        else:
            kw[k] = _scalar(v, where, sub)
    return cls(**kw)


def load_basic_file(path: Path | None) -> BasicFacts:
    """The basic-info TOML (``[idc]``, ``[[house]]``, ``[account."<account>"]``; docs/isms.md). No
    path, or no such file: empty facts (every such element written empty, never invented)."""
    if path is None or not path.exists():
        return BasicFacts()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BasicInfoError(f"{path}: {exc}") from None
    where = str(path)
    unknown = set(data) - {"idc", "house", "account"}
    if unknown:
        raise BasicInfoError(f"{where}: {sorted(unknown)[0]}: unknown key (known: account, house, idc)")
    idc = data.get("idc", {})
    base: BasicFacts = _table(BasicFacts, idc, where, "idc")
    houses_raw = data.get("house", [])
    if not isinstance(houses_raw, list):
        raise BasicInfoError(f"{where}: house: expected [[house]] tables")
    houses: list[HouseFacts] = []
    seen: dict[str, int] = {}
    for i, h in enumerate(houses_raw, 1):
        hf: HouseFacts = _table(HouseFacts, h, where, f"house[{i}]")
        if not hf.id:
            raise BasicInfoError(f"{where}: house[{i}].id: missing: the houseId (机房编号, as the inventory's house column names it)")
        if hf.id in seen:
            raise BasicInfoError(f"{where}: house[{i}].id: {hf.id!r} already listed as house[{seen[hf.id]}]")
        seen[hf.id] = i
        houses.append(hf)
    acc_raw = data.get("account", {})
    if not isinstance(acc_raw, dict):
        raise BasicInfoError(f"{where}: account: expected [account.\"<inventory account>\"] tables")
    accounts = {str(a): _table(AccountFacts, t, where, f"account.{a}") for a, t in acc_raw.items()}
    return dataclasses.replace(base, house=tuple(houses), account=accounts, source=where)


# -- placing filings -------------------------------------------------------------------------


class Placement(NamedTuple):
    """Filings by account: (filing, {houseId: [(startIp, endIp), …]}) per account; ``unplaced``: the
    numbers of filings in force for this provider none of whose IPs is in an active or pending prefix."""

    by_account: dict[str, list[tuple[Filing, dict[str, list[tuple[str, str]]]]]]
    unplaced: tuple[str, ...]


def _live(prefixes: Iterable[HostedPrefix]) -> list[HostedPrefix]:
    return [p for p in prefixes if p.state is not PrefixState.CLOSED]


def prefix_house(p: HostedPrefix, default_house: str = "") -> str:
    """The house (机房, ISMS houseId) of a hosted prefix: the inventory's house column, else
    ``isms.house_id`` (one house per gateway), else the prefix's site. The reports' rows name the
    same house for its addresses (``reports.Reporter.house``)."""
    return p.house or default_house or p.site


def place_filings(prefixes: Iterable[HostedPrefix], filings: Iterable[Filing], provider_names: tuple[str, ...] = (),
                  default_house: str = "") -> Placement:
    """Each filing in force that names this provider (``provider_names`` in its 接入商 cell; none
    given: every filing) goes under the accounts whose active/pending prefixes hold its listed IPs;
    an address range or CIDR entry goes with the prefix holding its first address (longest-prefix
    match). A filing with no IP in any such prefix goes under no account: it is ``unplaced``."""
    inv = Inventory(_live(prefixes))
    out: dict[str, list[tuple[Filing, dict[str, list[tuple[str, str]]]]]] = {}
    unplaced: list[str] = []
    seen: set[str] = set()
    for f in filings:
        if f.status not in IN_FORCE or f.number in seen:
            continue
        if provider_names and not any(n in f.access_provider for n in provider_names):
            continue
        seen.add(f.number)
        per: dict[str, dict[str, list[tuple[str, str]]]] = {}
        for entry in f.ips:
            try:
                ends = entry_addresses(entry)
            except ValueError:
                continue
            lo, hi = ends[0], ends[-1]
            p = inv.lookup(lo)
            if p is None:
                continue
            per.setdefault(p.account, {}).setdefault(prefix_house(p, default_house), []).append((lo, hi))
        if not per:
            unplaced.append(f.number)
            continue
        for account, houses in per.items():
            out.setdefault(account, []).append((f, houses))
    return Placement(out, tuple(unplaced))


# -- the tree --------------------------------------------------------------------------------


def stable_id(*parts: str) -> str:
    """An id that stays the same across reports for the same thing (56 bits of SHA-256: an xs:long;
    the sources' ids are the ISMS's own database keys, which beiand does not have)."""
    return str(int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:7], "big"))


def _add(parent: ET.Element, path: str, text: str | None = None) -> ET.Element:
    """One element; a path with no DT 1 row in fields.FIELDS is a bug (KeyError)."""
    if path not in _PATHS:
        raise KeyError(f"DT 1: {path} not in fields.FIELDS")
    el = ET.SubElement(parent, path.rpartition("/")[2])
    if text is not None:
        el.text = text
    return el


def _person(parent: ET.Element, path: str, p: Person) -> None:
    el = _add(parent, path)
    for e, v in (("name", p.name), ("idType", p.id_type), ("id", p.id), ("tel", p.tel), ("mobile", p.mobile),
                 ("email", p.email)):
        _add(el, f"{path}/{e}", v)


def build(idc_id: str, prefixes: Iterable[HostedPrefix], filings: Iterable[Filing], facts: BasicFacts | None = None,
          default_house: str = "", time_stamp: str = "", provider_names: tuple[str, ...] = ()) -> ET.Element:
    """The ``basicInfo`` tree: houses = the facts file's ``[[house]]`` (in its order), then the other
    inventory's houses (sorted, :func:`prefix_house`); each house's ipSegInfo = its active and
    pending prefixes (closed ones left out); one userInfo
    per account of those prefixes, with a serviceInfo per filing placed under it (:func:`place_filings`).
    ``timeStamp`` is ``time_stamp`` (the spool sets it when it writes the file)."""
    facts = facts or BasicFacts()
    live = _live(prefixes)
    root = ET.Element(ROOT)
    _add(root, "idcId", idc_id)
    for e, v in (("idcName", facts.name), ("idcAdd", facts.address), ("idcZip", facts.zip), ("corp", facts.corp)):
        _add(root, e, v)
    _person(root, "idcOfficer", facts.officer)
    _person(root, "emergencyContact", facts.emergency_contact)
    house_facts = {h.id: h for h in facts.house}
    by_house: dict[str, list[HostedPrefix]] = {}
    for p in live:
        by_house.setdefault(prefix_house(p, default_house), []).append(p)
    order = [h.id for h in facts.house] + sorted(set(by_house) - set(house_facts))
    _add(root, "houseCount", str(len(order)))
    accounts = {a: facts.account.get(a, AccountFacts()) for a in sorted({p.account for p in live})}
    for hid in order:
        hf = house_facts.get(hid, HouseFacts(id=hid))
        h = _add(root, "houseInfo")
        for e, v in (("houseId", hid), ("houseName", hf.name), ("houseType", hf.type), ("houseProvince", hf.province),
                     ("houseCity", hf.city), ("houseCounty", hf.county), ("houseAdd", hf.address), ("houseZip", hf.zip)):
            _add(h, f"houseInfo/{e}", v)
        _person(h, "houseInfo/houseOfficer", hf.officer)
        for g in hf.gateway:
            gw = _add(h, "houseInfo/gatewayInfo")
            for e, v in (("id", g.id or stable_id("gateway", hid, g.ip)), ("bandWidth", g.bandwidth),
                         ("linkType", g.link_type), ("accessUnit", g.access_unit), ("gatewayIp", g.ip)):
                _add(gw, f"houseInfo/gatewayInfo/{e}", v)
        nets = sorted(((ipaddress.ip_network(p.prefix), p) for p in by_house.get(hid, ())),
                      key=lambda t: (t[0].version, int(t[0].network_address), t[0].prefixlen))
        for net, p in nets:
            a = accounts[p.account]
            s = _add(h, "houseInfo/ipSegInfo")
            for e, v in (("id", stable_id("prefix", p.prefix)), ("startIp", str(net.network_address)),
                         ("endIp", str(net.broadcast_address)), ("type", SEGMENT_TYPE[p.state]),
                         ("user", a.unit_name or p.account), ("idType", a.id_type), ("idNumber", a.id_number),
                         ("useTime", ""), ("sourceUnit", hf.source_unit), ("allocationUnit", hf.allocation_unit)):
                _add(s, f"houseInfo/ipSegInfo/{e}", v)
    placed = place_filings(live, filings, (*provider_names, *facts.names()), default_house).by_account
    svc = "userInfo/info/serviceInfo"
    for account, a in accounts.items():
        u = _add(root, "userInfo")
        _add(u, "userInfo/id", stable_id("account", account))
        _add(u, "userInfo/nature", a.nature)
        info = _add(u, "userInfo/info")
        for e, v in (("unitName", a.unit_name), ("unitNature", a.unit_nature), ("idType", a.id_type),
                     ("idNumber", a.id_number)):
            _add(info, f"userInfo/info/{e}", v)
        _person(info, "userInfo/info/officer", a.officer)
        _add(info, "userInfo/info/add", a.address)
        _add(info, "userInfo/info/zipCode", a.zip)
        for f, houses in sorted(placed.get(account, ()), key=lambda t: t[0].number):
            s = _add(info, svc)
            for e, v in (("serviceId", stable_id("filing", f.number)), ("serviceContent", a.service_content),
                         ("regType", a.reg_type), ("regId", f.number), ("setMode", a.set_mode),
                         ("business", facts.business)):
                _add(s, f"{svc}/{e}", v)
            for name in f.domains:
                d = _add(s, f"{svc}/domain")
                _add(d, f"{svc}/domain/id", stable_id("domain", f.number, name))
                _add(d, f"{svc}/domain/name", name)
            for hid in sorted(houses):
                hh = _add(s, f"{svc}/housesHoldInfo")
                _add(hh, f"{svc}/housesHoldInfo/hhId", stable_id("household", f.number, account, hid))
                _add(hh, f"{svc}/housesHoldInfo/houseId", hid)
                _add(hh, f"{svc}/housesHoldInfo/bandWidth", "")
                for lo, hi in houses[hid]:
                    seg = _add(hh, f"{svc}/housesHoldInfo/ipSeg")
                    _add(seg, f"{svc}/housesHoldInfo/ipSeg/startIp", lo)
                    _add(seg, f"{svc}/housesHoldInfo/ipSeg/endIp", hi)
                _add(hh, f"{svc}/housesHoldInfo/distributeTime", "")
        _add(info, "userInfo/info/registerTime", a.register_time)
        _add(info, "userInfo/info/serviceRegTime", a.service_reg_time)
    _add(root, "timeStamp", time_stamp)
    return root


# -- checks ----------------------------------------------------------------------------------


def _kind_ok(kind: str, t: str) -> bool:
    """xsd/basic_info.xsd's simple types, by hand (a test keeps the two in agreement)."""
    if kind == "text":
        return len(t) <= 1024
    if kind == "time":
        return _TIME.match(t) is not None
    if kind == "date":
        return _DATE.match(t) is not None
    if kind == "ip":
        return _IP.match(t) is not None
    if t == "":
        return True
    if kind == "code":
        return _INT.match(t) is not None and -(2**31) <= int(t) < 2**31
    return _UINT.match(t) is not None and (kind != "id" or int(t) < 2**63)


def check_tree(root: ET.Element) -> list[str]:
    """Every element of a built tree (beiand's names): a DT 1 row, the row's kind, leaves without
    children and groups without text. The first problem, as ``path: reason``."""
    if root.tag != ROOT:
        return [f"root <{root.tag}>: expected <{ROOT}>"]
    stack: list[tuple[str, ET.Element]] = [("", root)]
    while stack:
        base, el = stack.pop()
        for c in el:
            path = f"{base}/{c.tag}" if base else str(c.tag)
            kind = KINDS.get(path)
            if kind is None:
                return [f"{path}: not a DT 1 element (fields.FIELDS)"]
            text = c.text or ""
            if kind == "group":
                if text.strip():
                    return [f"{path}: text in an element that holds others"]
                stack.append((path, c))
            elif len(c):
                return [f"{path}: children in a {kind} element"]
            elif not _kind_ok(kind, text):
                return [f"{path}: {text[:40]!r} is not a valid {kind}"]
    return []


def sample_tree(el: ET.Element, n: int) -> ET.Element:
    """A copy with at most ``n`` of each repeated child at every level: what the XSD validator sees."""
    out = ET.Element(el.tag, el.attrib)
    out.text = el.text
    seen: dict[str, int] = {}
    for c in el:
        k = seen.get(str(c.tag), 0)
        if k < n:
            seen[str(c.tag)] = k + 1
            out.append(sample_tree(c, n))
    return out
