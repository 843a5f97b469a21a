"""ISMI data files (ISMS.md §4) from what beiand logged, written to a spool a CU collects.

Every row is built from :mod:`fields` (one element list per data type); each file is checked
against the XSD before it is written (Aotain validates each file first), packed in the
``<fileLoad>`` envelope, and named ``<DT>/<yyyy-MM-dd>/<unix-seconds><10-digit seq>.xml``,
written as ``.tmp`` then renamed (ISMS.md §2). Rows beyond the profile's per-file cap go to
further files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as DET

from beiand.accesslog.columns import parse_order_column
from beiand.accesslog.reader import Query as LogFilter
from beiand.accesslog.source import Activity, LocalRecords, RecordSource, activity_of, only
from beiand.errors import BeiandError
from beiand.isms.basicinfo import check_tree, prefix_house, sample_tree
from beiand.isms.wire.codec import CODECS, XSD_DIR, Codec, schema, version_key
from beiand.isms.wire.codes import Compression, DataType, EncryptAlgorithm, HashAlgorithm
from beiand.isms.wire.envelope import Keys, pack
from beiand.isms.wire.fields import FIELDS, PROTOCOL, REPORTED_VERDICTS, VERDICT_ILLEGAL_TYPE, row_elements
from beiand.isms.wire.model import BEIJING, LogQuery, format_time
from beiand.isms.wire.profile import Profile
from beiand.model import AccessRecord, Overlay
from beiand.records.domains import registrable_domain

ROOTS = {DataType.BASIC_INFO: "basicInfo", DataType.IDC_MONITOR: "idcMonitor", DataType.COMMAND_QUERY_RESULT: "commandQueryResult",
         DataType.LOG_QUERY_RESULT: "logQueryResult", DataType.MONITOR_RESULT: "monitorResult",
         DataType.FILTER_RESULT: "filterResult", DataType.ACTIVE_STATE: "activeState",
         DataType.ACTIVE_RESOURCES: "activeResources", DataType.ILLEGAL_WEB: "illegalWeb", DataType.COMMAND_ACK: "commandAck"}
ROW_TAG = {DataType.IDC_MONITOR: "record", DataType.COMMAND_QUERY_RESULT: "command",
           DataType.LOG_QUERY_RESULT: "log", DataType.MONITOR_RESULT: "log", DataType.FILTER_RESULT: "log",
           DataType.ACTIVE_RESOURCES: "record", DataType.ILLEGAL_WEB: "record", DataType.COMMAND_ACK: "ack"}
SERVICE_TYPE_OTHER = 24  # fwnr 24 其他: beiand does not classify content
log = logging.getLogger(__name__)


class ReportError(BeiandError, ValueError):
    pass


HouseOf = str | Callable[[str], str]  # one houseId per gateway, or the basic data's per prefix (type 0)


def _house(h: HouseOf) -> Callable[[str], str]:
    return h if callable(h) else (lambda _ip: h)


XSD_SAMPLE_ROWS = 20  # rows of each file the XSD validator sees; every row gets the field checks below
_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})?$")
_IP = re.compile(r"^[0-9A-Fa-f:.]{0,64}$")
_UINT = re.compile(r"^[0-9]{1,19}$")  # ASCII digits only: "²".isdigit() is True
_INT = re.compile(r"^-?[0-9]{1,10}$")


def _kind_ok(kind: str, v: Any) -> bool:
    """The XSD's simple types (xsd/common.xsd, data.xsd) for one value, fast: xmlschema validates a
    row in ~0.2 ms, too slow for a day of rows; these checks agree with it (tests compare them)."""
    t = "" if v is None else str(v)
    if kind == "text":
        return len(t) <= 1024
    if kind == "time":
        return _TIME.match(t) is not None
    if kind == "ip":
        return _IP.match(t) is not None
    if kind == "code":
        return t == "" or (_INT.match(t) is not None and -(2**31) <= int(t) < 2**31)
    if _UINT.match(t) is None:
        return False
    n = int(t)
    return {"port": n <= 65535, "protocol": n <= 2, "flag": n <= 1, "id": True, "int": True}.get(kind, True)


_INT_TOP = {"port": 65535, "protocol": 2, "flag": 1, "id": 10**19 - 1, "int": 10**19 - 1}


@functools.lru_cache(maxsize=32)
def _kinds(dt_: int) -> dict[str, str]:
    return {f.element: f.kind for f in FIELDS if f.dt == dt_}


def check_rows(dt_: int, rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """:func:`_kind_ok` for every cell, inline for the values the writers make (ints in range,
    times and addresses by their patterns, text by length): a day of the fleet is millions of
    rows, each checked (issue 30)."""
    kinds = _kinds(dt_)
    top, time_m, ip_m = _INT_TOP, _TIME.match, _IP.match
    for i, row in enumerate(rows):
        for k, v in row.items():
            kind = kinds.get(k)
            if kind is None:
                return [f"row {i + 1}: {k}: not a DT {dt_} element"]
            if type(v) is int:
                hi = top.get(kind)
                ok = (0 <= v <= hi) if hi is not None else _kind_ok(kind, v)
            elif type(v) is str:
                ok = (len(v) <= 1024 if kind == "text" else time_m(v) is not None if kind == "time"
                      else ip_m(v) is not None if kind == "ip" else _kind_ok(kind, v))
            else:
                ok = _kind_ok(kind, v)
            if not ok:
                return [f"row {i + 1}: {k}: {str(v)[:40]!r} is not a valid {kind}"]
    return []


def _proto(kind: str, transport: str = "") -> int:
    if transport:
        return PROTOCOL.get(transport, 1)
    return 2 if kind == "quic-sni" else 1


def _t(ms: int) -> str:
    return _second(ms // 1000)


@functools.lru_cache(maxsize=1 << 18)
def _second(s: int) -> str:
    return format_time(s)


@functools.lru_cache(maxsize=32)
def _elements(dt_: int) -> tuple[tuple[str, ...], frozenset[str]]:
    els = row_elements(dt_)
    return els, frozenset(els)


_IN_ORDER: set[tuple[int, tuple[str, ...]]] = set()  # (dt, keys) a writer gave already in table order


def _row(dt_: int, values: dict[str, Any]) -> dict[str, Any]:
    """The row in table order; a claimed element that is not in the table is a bug (KeyError)."""
    key = (dt_, tuple(values))
    if key in _IN_ORDER:
        return values
    els, known = _elements(dt_)
    unknown = set(values) - known
    if unknown:
        raise KeyError(f"DT {dt_}: {sorted(unknown)} not in fields.FIELDS")
    row = {e: values[e] for e in els if e in values}
    if tuple(row) == key[1]:
        _IN_ORDER.add(key)
    return row


# -- rows ----------------------------------------------------------------------------------------


FiledName = Callable[[str, str], str]  # (filing number, name seen) → the filed name that covers it, "" if unknown


def filed_domain(index: Any, number: str, name: str) -> str:
    """The name a filing lists that covers ``name`` (the name itself or the parent it lists), for
    DT 9/DT 2's ``regDomain`` (ISMS.md §6: the filed name; ``trueDomain``: the name seen)."""
    if index is None or not number or not name:
        return ""
    for f in index.covering_all(name):
        if f.number == number:
            return next((d for d in f.domains if name == d or name.endswith("." + d)), "")
    return ""


def illegal_web_rows(summary: Mapping[tuple[Any, ...], list[int]], house_id: HouseOf, mismatch_type: int,
                     filed_name: FiledName | None = None) -> Iterator[dict[str, Any]]:
    """DT 9 from access-log summaries: unfiled/inactive → illegalType 1, mismatch → the profile's;
    a mismatch's ``regDomain`` is the filed name (``filed_name``), its ``trueDomain`` the name seen."""
    house = _house(house_id)
    agg: dict[tuple[str, str, int, int], list[Any]] = {}
    for (name, server, port, _acct, verdict, kind, action, _reason, filing), (first, last, hits) in summary.items():
        if verdict not in REPORTED_VERDICTS or kind == "dns-answer":
            continue
        k = (name, server, port, _proto(kind))
        row = agg.get(k)
        itype = VERDICT_ILLEGAL_TYPE.get(verdict, mismatch_type)
        if row is None:
            agg[k] = [first, last, hits, action == "block", itype, verdict, filing]
        else:
            row[0], row[1], row[2] = min(row[0], first), max(row[1], last), row[2] + hits
            row[3] = row[3] or action == "block"
    for (name, server, port, proto), (first, last, hits, block, itype, verdict, filing) in agg.items():
        mismatch = verdict == "mismatch"
        yield _row(9, {"houseId": house(server), "ip": server, "port": port, "domain": name, "url": "",
                       "serviceType": SERVICE_TYPE_OTHER, "firstFound": _t(first), "lastFound": _t(last), "visitCount": hits,
                       "protocol": proto, "block": int(block), "illegalType": itype, "currentState": int(block),
                       "icpError": 1, "regError": "",
                       "regDomain": filed_name(filing, name) if mismatch and filed_name is not None else "",
                       "trueDomain": name if mismatch else ""})


def idc_monitor_rows(summary: Mapping[tuple[Any, ...], list[int]], house_id: HouseOf,
                     segment: Callable[[str], tuple[str, bool] | None] | None = None,
                     filed_name: FiledName | None = None, mismatch_type: int = 999) -> Iterator[dict[str, Any]]:
    """DT 2: regError 2, a name filed through this provider served from an IP its filing does not
    list; with the operator's basic data (type 0, ``segment``: houseId and reserved of an IP's
    registered segment, None if none): regError 3 for an IP in no house's segments (未登记), 1 for
    an IP registered as reserved that serves (登记保留实际为占用). One row per (name, IP, port,
    protocol) and code; 2 wins over 1 and 3 for the same flow."""
    house = _house(house_id)
    agg: dict[tuple[str, str, int, int], list[Any]] = {}
    seg_cache: dict[str, int] = {}
    for (name, server, port, _a, verdict, kind, action, reason, filing), (first, last, hits) in summary.items():
        if kind == "dns-answer" or not server:
            continue
        if verdict == "mismatch" and reason == "ip-not-listed":
            code = 2
        elif segment is not None:
            code = seg_cache.get(server, -1)
            if code < 0:
                seg = segment(server)
                code = seg_cache[server] = 3 if seg is None else (1 if seg[1] else 0)
            if not code:
                continue
            filing = "" if verdict == "mismatch" else filing
        else:
            continue
        k = (name, server, port, _proto(kind))
        row = agg.get(k)
        if row is None or (code == 2 and row[5] != 2):
            agg[k] = [first, last, hits, action == "block", filing, code, VERDICT_ILLEGAL_TYPE.get(verdict, mismatch_type)]
        else:
            row[0], row[1], row[2], row[3] = min(row[0], first), max(row[1], last), row[2] + hits, row[3] or action == "block"
    for (name, server, port, proto), (first, last, hits, block, filing, code, itype) in agg.items():
        # DT 9's shape (ISMS.md §4): url, serviceType, illegalType and currentState too (issue 28)
        yield _row(2, {"houseId": house(server), "ip": server, "port": port, "domain": name, "url": "",
                       "serviceType": SERVICE_TYPE_OTHER, "firstFound": _t(first), "lastFound": _t(last), "visitCount": hits,
                       "protocol": proto, "block": int(block), "illegalType": itype, "currentState": int(block), "regError": code,
                       "regDomain": filed_name(filing, name) if code == 2 and filed_name is not None else "",
                       "trueDomain": name})


def _merge(d: dict[Any, list[int]], k: Any, first: int, last: int, hits: int, blk: int) -> None:
    row = d.get(k)
    if row is None:
        d[k] = [first, last, hits, blk]
    else:
        row[0], row[1], row[2], row[3] = min(row[0], first), max(row[1], last), row[2] + hits, row[3] | blk


def active_resource_rows(summary: Mapping[tuple[Any, ...], list[int]] | Activity, house_id: HouseOf) -> Iterator[dict[str, Any]]:
    """DT 8: one IP row per (ip, port, protocol) and one domain row per (name, ip, port, protocol),
    from the source's :class:`Activity` (or the summaries it is made of)."""
    house = _house(house_id)
    act = summary if isinstance(summary, Activity) else activity_of(summary)
    houses: dict[str, str] = {}
    for (server, port, proto), (first, last, hits, blk) in act.ips.items():
        h = houses.get(server)
        if h is None:
            h = houses[server] = house(server)
        yield _row(8, {"ip": server, "port": port, "protocol": proto, "houseId": h, "firstFound": _t(first),
                       "lastFound": _t(last), "visitsCount": hits, "block": blk})
    for (name, server, port, proto), (first, last, hits, blk) in act.names.items():
        top = registrable_domain(name) or name
        h = houses.get(server)
        if h is None:
            h = houses[server] = house(server)
        yield _row(8, {"ip": server, "port": port, "protocol": proto, "houseId": h, "firstFound": _t(first),
                       "lastFound": _t(last), "visitsCount": hits, "block": blk, "domain": name, "topDomain": top,
                       "topDomainFlag": 0 if top == name else 1})


_DT = frozenset({Overlay.ISMS_MONITOR, Overlay.ISMS_FILTER, Overlay.ISMS_BLACKLIST})


def command_rows(records: Iterable[AccessRecord], house_id: HouseOf, no_report: frozenset[str] = frozenset()
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """DT 4 (monitor) and DT 5 (filter) rows: access-log records taken under a command (the order
    column), except those of commands whose ``action/report`` is 0 (``no_report``: their ids)."""
    house = _house(house_id)
    mon: list[dict[str, Any]] = []
    fil: list[dict[str, Any]] = []
    for r in records:
        if not r.order.startswith("isms"):  # the cheap test first: most records name no command
            continue
        by, cid = parse_order_column(r.order)
        if by not in _DT:  # a noFilter exemption is no monitor or filter record
            continue
        if cid in no_report and by is not Overlay.ISMS_BLACKLIST:
            continue
        target, dtype = (mon, 4) if by is Overlay.ISMS_MONITOR else (fil, 5)
        target.append(_row(dtype, {"commandId": cid, "houseId": house(r.server_ip), "srcIp": r.client_ip, "destIp": r.server_ip,
                                   "srcPort": r.client_port, "destPort": r.server_port, "protocol": _proto(r.kind, r.transport),
                                   "domain": r.name, "url": _http_url(r), "gatherTime": _t(r.ts_ms)}))
    return mon, fil


def log_query_rows(records: Iterable[AccessRecord], q: LogQuery, house_id: HouseOf) -> Iterator[dict[str, Any]]:
    """DT 3: the records of the window that match the query's addresses, ports, protocol and URL."""
    import ipaddress

    def in_range(ip: str, rng: tuple[str, str]) -> bool:
        if not rng[0]:
            return True
        try:
            a, lo, hi = ipaddress.ip_address(ip), ipaddress.ip_address(rng[0]), ipaddress.ip_address(rng[1] or rng[0])
        except ValueError:
            return False
        return a.version == lo.version == hi.version and int(lo) <= int(a) <= int(hi)

    house = _house(house_id)
    host = q.url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower() if q.url else ""
    for r in records:
        h = house(r.server_ip)
        if q.house_ids and h not in q.house_ids:
            continue
        if not (in_range(r.client_ip, q.src_ip) and in_range(r.server_ip, q.dst_ip)):
            continue
        if (q.src_port and r.client_port != q.src_port) or (q.dst_port and r.server_port != q.dst_port):
            continue
        proto = _proto(r.kind, r.transport)
        if q.protocol and proto != q.protocol:
            continue
        if host and not (r.kind == "http-host" and r.name == host):  # URL: HTTP records only
            continue
        yield _row(3, {"srcIp": r.client_ip, "destIp": r.server_ip, "srcPort": r.client_port, "destPort": r.server_port,
                       "protocol": proto, "accessTime": _t(r.ts_ms), "url": _http_url(r),
                       "houseId": h})


def _http_url(r: AccessRecord) -> str:
    """ISMS.md §4/§6: ``url`` is the HTTP request's URL, on HTTP records only (issue 28, 14): the
    Host and the request's path as logged (``connections.url_max_length``; "/" when not kept)."""
    if r.kind != "http-host" or not r.name:
        return ""
    path = r.url if r.url.startswith("/") else "/" + r.url if r.url else "/"
    return f"http://{r.name}{path}"


# -- the spool -------------------------------------------------------------------------------


@dataclass
class Spool:
    """Writes packed, validated data files under ``directory``; counts what it wrote and refused."""

    directory: Path
    idc_id: str
    keys: Keys
    profile: Profile = field(default_factory=Profile)
    clock: Callable[[], float] = time.time
    written: dict[int, int] = field(default_factory=dict)
    rejected: dict[int, int] = field(default_factory=dict)
    xsd_skipped: set[str] = field(default_factory=set)  # XSDs skipped for renamed files (logged once each)

    def __post_init__(self) -> None:
        self.codec: Codec = CODECS[version_key(self.profile.command_version)](self.profile.xsd_dir)

    def _seq(self) -> int:
        """The next file sequence number, shared by the daemon and ``beiand isms report --now`` (flock)."""
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        with open(self.directory / ".seq.lock", "a+") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            p = self.directory / ".seq"
            try:
                n = int(p.read_text()) + 1
            except (OSError, ValueError):
                n = 1
            n = int(n % 10 ** self.profile.file_seq_digits)
            tmp = p.with_suffix(".tmp")
            tmp.write_text(str(n))
            os.replace(tmp, p)
            return n

    def write(self, dtype: DataType, rows: Iterable[Mapping[str, Any]], head: tuple[tuple[str, str], ...] = (),
              result_head: Callable[[int, bool], tuple[tuple[str, str], ...]] | None = None, always: bool = True) -> list[Path]:
        """Rows into as many files as the per-file cap needs (at least one unless ``always`` is
        false: an empty report is a report)."""
        cap = self.profile.max_records_per_file
        out: list[Path] = []
        batch: list[Mapping[str, Any]] = []
        it = iter(rows)
        done = False
        while not done:
            batch = []
            for r in it:
                batch.append(r)
                if len(batch) >= cap:
                    break
            else:
                done = True
            if batch or (not out and always):
                out.append(self._file(dtype, batch, head, result_head(len(batch), done) if result_head else ()))
            if len(batch) < cap:
                done = True
        return out

    def _file(self, dtype: DataType, rows: list[Mapping[str, Any]], head: tuple[tuple[str, str], ...],
              result_head: tuple[tuple[str, str], ...]) -> Path:
        now = self.clock()
        stamp = format_time(now)
        xml = self._xml(dtype, rows, head, result_head, stamp)
        # The XSD sees the file with its first rows (structure, element names, order); every row
        # gets the same type checks (check_rows): xmlschema takes minutes over a day of rows.
        sample = xml if len(rows) <= XSD_SAMPLE_ROWS else self._xml(dtype, rows[:XSD_SAMPLE_ROWS], head, result_head, stamp)
        renames = self.profile.renames(int(dtype))
        if renames:  # the profile's names for beiand's reconstructed elements (DT 6); the rows are checked as built
            xml, sample = _renamed_xml(xml, renames), _renamed_xml(sample, renames)
            problems = self._check_xsd(dtype, sample, "data.xsd", renamed=True) or check_rows(int(dtype), rows)
        else:
            problems = self.codec.check_data(sample) or check_rows(int(dtype), rows)
        if problems:
            self.rejected[dtype] = self.rejected.get(dtype, 0) + 1
            raise ReportError(f"DT {int(dtype)}: not written, fails the XSD: {problems[0]}")
        if len(xml) > self.profile.max_file_bytes:
            self.rejected[dtype] = self.rejected.get(dtype, 0) + 1
            raise ReportError(f"DT {int(dtype)}: {len(xml)} bytes, above max_file_bytes; lower max_records_per_file")
        return self._put(dtype, xml, now)

    def _put(self, dtype: DataType, xml: bytes, now: float) -> Path:
        """Packs a checked report in its ``<fileLoad>`` and writes it (``.tmp``, fsync, rename)."""
        p = self.profile
        env = pack(xml, self.keys, EncryptAlgorithm(p.encrypt), HashAlgorithm(p.hash), Compression(p.compression))
        fl = ET.Element("fileLoad")
        ET.SubElement(fl, "idcId").text = self.idc_id
        if version_key(p.command_version).startswith("3"):
            ET.SubElement(fl, "provinceId").text = p.province_id
        for k, v in (("dataUpload", env.payload), ("encryptAlgorithm", str(p.encrypt)),
                     ("hashAlgorithm", str(p.hash_code(HashAlgorithm(p.hash)))), ("compressionFormat", str(p.compression)),
                     ("dataHash", env.payload_hash), ("commandVersion", p.command_version)):
            ET.SubElement(fl, k).text = v
        body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(fl, encoding="utf-8")
        day = dt.datetime.fromtimestamp(now, BEIJING).strftime("%Y-%m-%d")
        d = self.directory / str(int(dtype)) / day
        d.mkdir(parents=True, exist_ok=True, mode=0o750)
        name = f"{int(now)}{self._seq():0{p.file_seq_digits}d}.xml"
        tmp = d / (name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / name)
        self.written[dtype] = self.written.get(dtype, 0) + 1
        return d / name

    def _xml(self, dtype: DataType, rows: list[Mapping[str, Any]], head: tuple[tuple[str, str], ...],
             result_head: tuple[tuple[str, str], ...], stamp: str) -> bytes:
        root = ROOTS[dtype]
        if dtype is DataType.LOG_QUERY_RESULT:
            return self.codec.data_file(root, self.idc_id, head, rows, ROW_TAG[dtype], stamp, "result", result_head)
        if dtype is DataType.ACTIVE_STATE:
            return self.codec.data_file(root, self.idc_id, head, (), "", stamp)
        return self.codec.data_file(root, self.idc_id, head, rows, ROW_TAG[dtype], stamp)

    def pending(self) -> list[Path]:
        """Files waiting for upload (not yet moved to ``sent/``)."""
        out = []
        with contextlib.suppress(FileNotFoundError):
            for p in sorted(self.directory.glob("[0-9]*/*/*.xml")):
                out.append(p)
        return out

    # -- DT 1 and the profile's element names (beiand's reconstructed elements) ----------------

    def _check_xsd(self, dtype: DataType, xml: bytes | ET.Element, name: str, renamed: bool) -> list[str]:
        """XSD problems of a report. With the profile's element names the built-in XSD no longer
        matches: the operator's (``xsd_dir``) is used when it has this file, else the XSD check is
        skipped (logged once per file name); the hand checks ran on the tree as built."""
        own = self.profile.xsd_dir / name
        if renamed and (self.profile.xsd_dir.resolve() == XSD_DIR.resolve() or not own.is_file()):
            if name not in self.xsd_skipped:
                self.xsd_skipped.add(name)
                log.warning("isms: DT %d written with the profile's element names: no %s in xsd_dir %s, the XSD "
                            "check is skipped", int(dtype), name, self.profile.xsd_dir)
            return []
        path = own if own.is_file() else XSD_DIR / name
        root = DET.fromstring(xml) if isinstance(xml, bytes) else xml
        return [f"{e.path}: {e.reason}" for e in schema(str(path)).iter_errors(root)]

    def write_basic_info(self, tree: ET.Element) -> list[Path]:
        """DT 1 基础数据 from :func:`basicinfo.build`: every element checked by hand
        (``basicinfo.check_tree``), the XSD (``basic_info.xsd``) on a sample (the first
        ``XSD_SAMPLE_ROWS`` of each repeated element); the profile's ``elements`` names applied; then
        packed and written like every report. One file unless it would pass ``max_file_bytes`` or
        hold more than ``max_records_per_file`` userInfo: then the userInfo go to further files, each
        a whole ``basicInfo`` with the licensee's elements, the houses in the first only."""
        dtype = DataType.BASIC_INFO
        now = self.clock()
        ts = tree.find("timeStamp")
        if ts is not None:
            ts.text = format_time(now)
        problems = check_tree(tree) if ts is not None else ["timeStamp: missing"]
        renames = self.profile.renames(int(dtype))
        changed = rename_elements(tree, renames)
        try:
            if not problems:
                problems = self._check_xsd(dtype, sample_tree(tree, XSD_SAMPLE_ROWS), "basic_info.xsd", bool(renames))
            if problems:
                self.rejected[dtype] = self.rejected.get(dtype, 0) + 1
                raise ReportError(f"DT 1: not written, fails the checks: {problems[0]}")
            return [self._put(dtype, xml, now) for xml in self._basic_files(tree, renames)]
        finally:
            for el, tag in changed:  # the caller's tree keeps beiand's names
                el.tag = tag

    def _basic_files(self, tree: ET.Element, renames: Mapping[str, str]) -> list[bytes]:
        user_tag, house_tag = renames.get("userInfo", "userInfo"), renames.get("houseInfo", "houseInfo")
        decl = b'<?xml version="1.0" encoding="UTF-8"?>\n'
        head: list[bytes] = []
        houses: list[bytes] = []
        users: list[bytes] = []
        tail = b""
        for c in tree:
            b = ET.tostring(c, encoding="utf-8")
            if c.tag == user_tag:
                users.append(b)
            elif c.tag == house_tag:
                houses.append(b)
            elif c is tree[-1]:
                tail = b  # timeStamp
            else:
                head.append(b)
        opening, closing = f"<{tree.tag}>".encode(), f"</{tree.tag}>".encode()
        fixed = len(decl) + len(opening) + len(closing) + sum(map(len, head)) + len(tail)
        budget, cap = self.profile.max_file_bytes, self.profile.max_records_per_file
        files: list[list[bytes]] = [houses]
        size = fixed + sum(map(len, houses))
        n = 0
        for u in users:
            if (size + len(u) > budget or n >= cap) and (n or (houses and len(files) == 1)):
                files.append([])
                size, n = fixed, 0
            files[-1].append(u)
            size += len(u)
            n += 1
        out = [decl + opening + b"".join(head) + b"".join(parts) + tail + closing for parts in files]
        big = next((x for x in out if len(x) > budget), None)
        if big is not None:
            self.rejected[DataType.BASIC_INFO] = self.rejected.get(DataType.BASIC_INFO, 0) + 1
            raise ReportError(f"DT 1: a file of {len(big)} bytes, above max_file_bytes (the houses, or one userInfo, "
                              "do not fit): raise max_file_bytes")
        return out


def rename_elements(root: ET.Element, renames: Mapping[str, str]) -> list[tuple[ET.Element, str]]:
    """Renames, in place, the elements whose path below ``root`` (beiand's names, ``a/b/c``) is a key
    of ``renames`` (the profile's ``elements``); returns (element, former tag) of each change."""
    changed: list[tuple[ET.Element, str]] = []
    if not renames:
        return changed
    parents = {"/".join(k.split("/")[:i]) for k in renames for i in range(1, k.count("/") + 1)}
    stack: list[tuple[str, ET.Element]] = [("", root)]
    while stack:
        base, el = stack.pop()
        for c in el:
            path = f"{base}/{c.tag}" if base else str(c.tag)
            new = renames.get(path)
            if path in parents:
                stack.append((path, c))
            if new is not None:
                changed.append((c, str(c.tag)))
                c.tag = new
    return changed


def _renamed_xml(xml: bytes, renames: Mapping[str, str]) -> bytes:
    root: ET.Element = DET.fromstring(xml)
    rename_elements(root, renames)
    body: bytes = ET.tostring(root, encoding="utf-8")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body


# -- whole reports ---------------------------------------------------------------------------


@dataclass
class Reporter:
    """Builds each report from the access log and writes it to the spool.

    The records come from ``records`` (issue 27: the fleet's copy in ClickHouse, scoped by the
    wiring to ``isms.gateways``) or, when it is None, from this gateway's log in ``log_dir``."""

    spool: Spool
    log_dir: Path
    house_id: str
    store: Any = None  # the CommandStore: the basic data (type 0) gives a houseId per prefix and DT 2 codes 1, 3
    filed_name: FiledName | None = None  # DT 9/DT 2 regDomain: the filed name (the daemon wires the records index)
    records: RecordSource | None = None
    inventory: Any = None  # the hosted inventory: the house (机房编号) it names for each prefix (issue 30)

    def source(self) -> RecordSource:
        """Where the reports read: the source the wiring chose, else this gateway's log."""
        return self.records if self.records is not None else LocalRecords(self.log_dir)

    @property
    def house(self) -> HouseOf:
        """Each row's houseId: the basic data's (type 0) house of the server address, else the
        house the inventory names for its prefix, else ``isms.house_id``."""
        basic = self.store is not None and bool(self.store.state.houses)
        inv = self.inventory if self.inventory is not None and any(p.house or (p.site and not self.house_id)
                                                                   for p in self.inventory.prefixes) else None
        if not basic and inv is None:
            return self.house_id
        store, own = self.store, self.house_id

        def house_of(ip: str) -> str:
            if basic:
                seg = store.house_segment(ip)
                if seg is not None:
                    return str(seg[0])
            if inv is not None:
                p = inv.lookup(ip)
                if p is not None:
                    return prefix_house(p, own)
            return own

        return house_of

    def store_house(self) -> str:
        return self.house_id

    def dt2_on(self) -> bool:
        on = self.store.state.dt2 if self.store is not None else None
        return self.spool.profile.report_dt2 if on is None else bool(on)

    def illegal_web(self, since_ms: int, until_ms: int, summary: Mapping[Any, list[int]] | None = None) -> list[Path]:
        s = self.source().summaries(since_ms, until_ms) if summary is None else summary
        return self.spool.write(DataType.ILLEGAL_WEB, illegal_web_rows(s, self.house, self.spool.profile.mismatch_illegal_type,
                                                                         self.filed_name))

    def active_resources(self, since_ms: int, until_ms: int, activity: Activity | None = None) -> list[Path]:
        act = self.source().activity(since_ms, until_ms) if activity is None else activity
        return self.spool.write(DataType.ACTIVE_RESOURCES, active_resource_rows(act, self.house))

    def resources(self, since_ms: int, until_ms: int) -> tuple[list[Path], list[Path]]:
        """DT 9 and DT 8 (and DT 2 when the profile asks). DT 9 and DT 2's code 2 read the summaries
        of the reported verdicts only; DT 8 the source's :class:`Activity` (from the fleet's copy:
        aggregated by ClickHouse). With the basic data's segments (DT 2 codes 1 and 3: any served
        address), one pass over every summary gives all three."""
        src = self.source()
        seg = self.store.house_segment if self.dt2_on() and self.store is not None and self.store.state.houses else None
        if seg is not None or not src.fleet:  # one pass over every summary gives all three (the local log: one read)
            everything = src.summaries(since_ms, until_ms)
            s, act = (everything if seg is not None else only(everything, REPORTED_VERDICTS)), activity_of(everything)
        else:
            s, act = src.summaries(since_ms, until_ms, REPORTED_VERDICTS), src.activity(since_ms, until_ms)
        # both read before any file is written: a failed read writes nothing (the window comes again)
        f9 = self.illegal_web(since_ms, until_ms, s)
        if self.dt2_on():
            f9 += self.spool.write(DataType.IDC_MONITOR, idc_monitor_rows(s, self.house, seg, self.filed_name,
                                                                                self.spool.profile.mismatch_illegal_type), always=False)
        return f9, self.active_resources(since_ms, until_ms, act)

    def command_results(self, since_ms: int, until_ms: int, no_report: frozenset[str] = frozenset()) -> list[Path]:
        mon, fil = command_rows(self.source().query(LogFilter(since_ms=since_ms, until_ms=until_ms)), self.house,
                                no_report)
        return self.spool.write(DataType.MONITOR_RESULT, mon) + self.spool.write(DataType.FILTER_RESULT, fil)

    def acks(self, acks: Iterable[Any]) -> list[Path]:
        """DT 10 for the CU (EU mode): what each command did (``service.Ack`` values)."""
        return self.spool.write(DataType.COMMAND_ACK, (_row(10, {
            "houseId": a.house_id, "commandId": a.command_id, "type": int(a.type), "resultCode": int(a.result),
            "msgInfo": a.msg[:1024]}) for a in acks))

    def heartbeat(self, err_houses: Sequence[str] = (), houses: int = 1) -> list[Path]:
        """DT 7: ``houses`` this beiand reports for (a gateway: 1; the CU: the fleet's), the faulty ones."""
        head = (("houseAmount", str(houses)), ("errHouseAmount", str(len(err_houses))), *(("errHouseId", h) for h in err_houses))
        return self.spool.write(DataType.ACTIVE_STATE, (), (("idcId", self.spool.idc_id), *head))

    def log_query(self, q: LogQuery) -> list[Path]:
        import ipaddress

        dst = None
        if q.dst_ip[0] and q.dst_ip[0] == q.dst_ip[1]:
            dst = ipaddress.ip_network(q.dst_ip[0])
        recs = self.source().query(LogFilter(since_ms=int(q.start * 1000), until_ms=int(q.end * 1000), server=dst))
        rows = list(log_query_rows(recs, q, self.house))
        return self.spool.write(DataType.LOG_QUERY_RESULT, rows, (("commandId", str(q.command_id)),),
                                result_head=lambda n, last: (("logAmount", str(len(rows))), ("endFlag", "1" if last else "0")))
