"""Core types that cross between beiand's stages (DESIGN.md, "Core types").

Hot-path values are ``NamedTuple``s (cheap to build), cold values frozen dataclasses,
enumerations ``StrEnum``s whose values are the spellings used in logs and JSON.
No logic here beyond validation.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class Kind(StrEnum):
    """How the name of a connection was seen."""

    DNS_ANSWER = "dns-answer"
    TLS_SNI = "tls-sni"
    HTTP_HOST = "http-host"
    QUIC_SNI = "quic-sni"
    IP_ONLY = "ip-only"
    # A connection record (issue 19): a new flow into or out of hosted space that no name was
    # seen for (any port); never decided, enforced or counted as a verdict.
    CONN = "conn"


class Transport(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class VerdictKind(StrEnum):
    FILED = "filed"
    UNFILED = "unfiled"
    MISMATCH = "mismatch"
    INACTIVE = "inactive"
    EXEMPT = "exempt"
    NOT_HOSTED = "not-hosted"


# The verdict field of a connection record no name came for (kind ``conn``): not a verdict on a
# filing, so not a VerdictKind (never counted or enforced); ``logs query --verdict`` accepts it.
UNNAMED = "unnamed"


class Action(StrEnum):
    LOG = "log"
    FLAG = "flag"
    BLOCK = "block"


class Overlay(StrEnum):
    """What decided a decision beyond the records' verdict (DESIGN.md: the overlays)."""

    ORDER = "order"  # a closure order (关停指令, ``beiand block add``)
    ISMS_FILTER = "isms-filter"  # the regulator's filter command (ISMS.md §6)
    ISMS_MONITOR = "isms-monitor"  # the regulator's monitor command: flags, never blocks
    ISMS_BLACKLIST = "isms-blacklist"  # an entry of the regulator's blacklist
    ISMS_NOFILTER = "isms-nofilter"  # an entry of the regulator's noFilter list: exempt
    EXEMPTION = "exemption"  # the operator's exemption (豁免, ``beiand exempt add``)
    GRACE = "grace"  # the grace period for a newly seen name (``enforce.grace_seconds``)
    CASE = "case"  # a sponsor case past its 整改 deadline (取消接入 for that site, ``beiand cases``)
    AUTHORITY = "authority"  # the authority's list of unfiled sites (上级下发, ``beiand records authority import``)


# Decisions the enforcer carries out even with its breaker open: the authority's and the regulator's
# blocks (a closure order, a filter command, a blacklist entry).
FORCED = frozenset({Overlay.ORDER, Overlay.ISMS_FILTER, Overlay.ISMS_BLACKLIST})


class Outcome(StrEnum):
    """What the enforcer did with a decision, logged beside it (it never rewrites the decision)."""

    NONE = ""  # nothing to do: the decision is not a block
    DONE = "done"  # the block was carried out (reset, block page, drop, nftables entry)
    BREAKER_OPEN = "breaker-open"  # not carried out: the circuit breaker is open (dry-run fallback)
    FAILED = "failed"  # not carried out: the injection or the nftables entry failed, or no means to act


class Mode(StrEnum):
    """Enforcement mode of a hosted prefix (passive by default: DESIGN.md failure rules)."""

    MONITOR = "monitor"
    DRY_RUN = "dry-run"
    ENFORCE = "enforce"


class ServiceType(StrEnum):
    """What a filing (备案) covers; they share one serial counter per sponsor."""

    WEBSITE = "website"
    APP = "app"
    MINI_PROGRAM = "mini-program"
    QUICK_APP = "quick-app"


class FilingStatus(StrEnum):
    ACTIVE = "active"  # 正常
    CANCELLED = "cancelled"  # 已注销 (Order 33 art. 18): the filing ended
    # 已取消接入: this provider's access record ended; the filing survives, perhaps served through
    # another provider now: judged like a filing through another 接入商 (issue 28)
    ACCESS_CANCELLED = "access-cancelled"
    REVOKED = "revoked"  # 已吊销
    ACCESS_PENDING = "access-pending"  # 接入审核中: passed this provider's first review
    UNDER_REVIEW = "under-review"  # first filing still under review: not filed
    # A status word no table maps (neither the built-in vocabulary nor records.status_map): the
    # filing is kept in force and the gap reported, never a block (issue 13: a vocabulary gap
    # must not take sites down).
    UNMAPPED = "unmapped"


class PrefixState(StrEnum):
    """State of a hosted prefix (501号 art. 11: IP pre-allocated, filing verified, access opens)."""

    ACTIVE = "active"
    PENDING = "pending"
    CLOSED = "closed"


class Filing(NamedTuple):
    """One filed service (备案): a website, APP, mini-program or quick app.

    A ``NamedTuple`` rather than the frozen dataclass DESIGN.md names for cold values: an import
    builds a million of them, and a frozen dataclass costs ~2 µs each against ~0.5 µs here.

    ``number`` is the normalised service filing number (备案号), e.g. ``京ICP备12345678号-1``;
    ``access_provider`` is the 接入商 the filing names; ``domains`` are IDNA A-labels.
    """

    number: str
    sponsor: str  # 主办单位
    service_type: ServiceType
    domains: tuple[str, ...]
    ips: tuple[str, ...]  # addresses, ranges ``lo-hi`` and CIDR prefixes, each in canonical text
    access_provider: str  # the 接入商 cell as exported: may name several legal entities
    status: FilingStatus
    reviewed: str = ""  # ISO date of the last review (审核时间), may be empty
    service_name: str = ""
    province: str = ""
    source: str = ""  # file:line it came from


class Observation(NamedTuple):
    """One connection or DNS answer into (possibly) hosted space; never one per packet."""

    ts: float
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    transport: Transport
    kind: Kind
    name_seen: str  # as on the wire ("" for ip-only)
    name: str  # normalised (A-label, lower case, no trailing dot); "" for ip-only
    answers: tuple[str, ...] = ()  # DNS: the answered addresses
    detail: str = ""  # e.g. "ech-outer", "alpn=h2,http/1.1"
    # TCP: the client segment that completed the name (sequence, acknowledgement, payload
    # length): what an enforcer needs to reset the connection. 0 elsewhere.
    tcp_seq: int = 0
    tcp_ack: int = 0
    tcp_len: int = 0
    # Connection record fields (issue 19): packets and bytes (IP length) of the five-tuple seen up
    # to this observation, coalesced (docs/access-log.md); HTTP: the request's method and bounded URL path.
    packets: int = 0
    octets: int = 0
    method: str = ""
    url: str = ""
    # HTTP: the request target of the request line (bounded, 512 characters), for the URL rules
    # of the regulator's commands; "" elsewhere (TLS and QUIC hide the path).
    target: str = ""


class AddressRule(NamedTuple):
    """Traffic an overlay cuts by address, whatever the port of the name: executed in nftables sets
    (``enforce.nft``), in every mode. ``net`` is an address, a CIDR prefix or a range ``lo-hi``;
    ``proto`` "" (any), "tcp" or "udp"; ``ports`` the destination port range, or None (every port);
    ``until`` the end (epoch seconds) or 0 (until lifted); ``ref`` what put it there."""

    net: str
    proto: str = ""
    ports: tuple[int, int] | None = None
    until: float = 0.0
    ref: str = ""
    src: bool = False  # the rule is on the client's (source) address, not the server's


def endpoint(ip: str, port: int) -> str:
    """``192.0.2.1:53``, ``[2001:db8::1]:443`` (RFC 3986 section 3.2.2: IPv6 literals in brackets)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class Verdict(NamedTuple):
    verdict: VerdictKind
    filing: Filing | None
    reason: str  # short, machine-readable


class Decision(NamedTuple):
    verdict: Verdict
    action: Action
    rule: str  # the rule that chose the action, e.g. "enforce:unfiled"
    mode: Mode
    account: str  # the customer account holding the server prefix ("" if not hosted)
    site: str = ""
    # The overlay that decided it beyond the records (``Overlay`` value, "" for none) and its
    # reference: the closure order's number or the regulator's commandId (DESIGN.md).
    by: str = ""
    ref: str = ""


class AccessRecord(NamedTuple):
    """One line of the Order 292 art. 14 access log."""

    ts_ms: int
    account: str
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    transport: str
    kind: str
    name: str
    verdict: str
    action: str
    filing_number: str
    gateway: str = ""  # which gateway (and worker) saw it
    reason: str = ""  # the verdict's machine-readable reason
    nat: str = ""  # public ip:port of a NAT mapping, where the gateway translates
    calling_number: str = ""  # 主叫号码, where there is one (dial-up / mobile access)
    order: str = ""  # closure order (关停指令) number, for enforcement actions taken under one
    # Connection records (issue 19): every new flow into or out of hosted space, named or not.
    direction: str = ""  # "in": a client reached hosted space; "out": a hosted host connected out; "" before issue 19
    method: str = ""  # HTTP request method, where the flow carried a request
    url: str = ""  # HTTP URL path (bounded; the query string only where configured)
    packets: int = 0  # packets of this five-tuple coalesced into the record (0: not counted)
    octets: int = 0  # bytes of those packets (IP length)
    # Issue 26: what the enforcer did with a block ("" nothing to do, done, breaker-open, failed):
    # ``action`` is what was done (a block not carried out is logged ``flag``), this says why.
    outcome: str = ""
    # Issue 35: the register version (records, inventory, NAT feed in the decision store) the
    # decision was made with; "" where none is kept (such a record is written without the field).
    records_version: str = ""


class MetricKey(NamedTuple):
    """One time series a component reports from its ``metrics()``: the metric's name as declared
    in ``runtime/metrics.py`` (without ``_total``) and its label values in declaration order.

    A component reports its own counters (DESIGN.md), the way a node_exporter collector does;
    a series labelled by worker (``runtime.metrics.PER_WORKER``) is reported without that
    label, which the worker adds."""

    metric: str
    labels: tuple[str, ...] = ()


MetricValues = dict[MetricKey, float]  # what ``metrics()`` returns: cumulative counters and current gauges
