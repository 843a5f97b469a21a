"""The one TOML config (``/etc/beiand/beiand.toml``), validated completely at start.

Each section is a frozen dataclass; each field's ``metadata["doc"]`` is its documentation, so
``docs/configuration.md`` is generated from this file (``beiand check-config --reference``) and
cannot drift. Errors name the file, the line and the field: ``beiand.toml:12: accesslog.retention_days: …``.
"""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import math
import os
import re
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from beiand.accesslog.store import RETENTION_DEFAULT_DAYS, RETENTION_FLOOR_DAYS
from beiand.capture.filterexpr import Condition, FilterError
from beiand.errors import BeiandError
from beiand.model import Mode
from beiand.records.domains import DomainError, normalise_domain
from beiand.records.importer import status_table


class ConfigError(BeiandError):
    """One or more problems, each ``file:line: field: reason``."""

    def __init__(self, problems: list[str], problems_by_field: list[tuple[str, str]] | None = None) -> None:
        super().__init__("config invalid:\n  " + "\n  ".join(problems))
        self.problems = problems
        self.problems_by_field = problems_by_field or []


def _f(default: Any, doc: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc, **kw})
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"doc": doc, **kw})
    return field(default=default, metadata={"doc": doc, **kw})


@dataclass(frozen=True)
class DaemonSection:
    gateway: str = _f("", "Gateway id written into every access-log record (default: the host name).")
    workers: int = _f(0, "Capture worker processes, each a whole pipeline with its own log partition (0: one per core).",
                      min=0, max=64)
    state_dir: Path = _f(Path("/var/lib/beiand"), "Where closure orders, observations and the enforcement state are kept.")
    watch_interval: float = _f(5.0, "Seconds between checks for changed records/inventory files (0: off).", min=0.0)
    log_level: str = _f("info", "debug, info, warning or error.", choices=("debug", "info", "warning", "error"))
    secret_permissions: str = _f("refuse", "A secret file (accesslog.hmac_key_file, server.token_file, "
                                 "accesslog.clickhouse.password_file) that group or others may read: refuse (the config "
                                 "is invalid) or warn (check-config and the daemon's log say so). Fix with chmod 0600 "
                                 "(or 0400) and chown to the daemon's user.", choices=("refuse", "warn"))


@dataclass(frozen=True)
class CaptureSection:
    interfaces: list[str] = _f([], "Interfaces to capture on (AF_PACKET). Left out: no live capture (check-config warns, "
                               "run refuses); given, at least one.", nonempty=True)
    tcp_ports: list[int] = _f([80, 443, 8080, 8443], "TCP ports whose client-to-server packets reach beiand (TLS, HTTP).",
                              min=1, max=65535)
    udp_ports: list[int] = _f([443], "UDP ports watched for QUIC Initials.", min=1, max=65535)
    any_port: bool = _f(True, "Name flows on every other port too (issue 32; docs/enforcement.md \"Any port\"): a TCP "
                        "connection whose first bytes start a TLS ClientHello or an HTTP/1.x request of a known method, "
                        "and a UDP flow whose first datagram is a padded QUIC Initial of a known version, are named and "
                        "judged as on the watched ports; other protocols there are neither named nor judged. The "
                        "capture filter then passes such first segments (and segments of 1 to 7 bytes) on every port; "
                        "inline, the queue takes them, one or two packets per connection. Off: the watched ports only.")
    dns: bool = _f(True, "Capture DNS answers (UDP and TCP port 53).")
    filter: str = _f("", "An extra condition on the outer headers, compiled into the kernel's BPF program in front of "
                     "beiand's own: `vlan ID`, `[src|dst] net CIDR`, `[src|dst] host IP`, with `and`, `or`, `not` and "
                     "parentheses, e.g. `vlan 100 and net 198.51.100.0/24`. Empty: none. The program itself follows "
                     "VLAN/QinQ, MPLS, PPPoE, IP-in-IP, GRE/ERSPAN, VXLAN, Geneve and GTP-U to the decoder's depth; "
                     "chains longer than it unrolls (over 3 VLAN tags, 4 MPLS labels, 2 GTP-U extension headers, "
                     "IPv6 extension headers) are passed, never dropped, and counted as capture:bpf-unfollowed.")
    ring_block_kib: int = _f(256, "Ring block size in KiB (TPACKET_V2 blocks hold 16 KiB frames).", min=16, max=65536)
    ring_blocks: int = _f(256, "Blocks in each worker's ring (ring size = blocks x block size).", min=4, max=8192)
    ring_block_timeout_ms: int = _f(1, "A block is handed over after this long even when not full: bounds the added latency.",
                                    min=1, max=1000)
    ring_version: int = _f(2, "2: TPACKET_V2 (frames, handed over at once; measured best: lower latency, fewer drops); "
                           "3: TPACKET_V3 (blocks, handed over when full or after ring_block_timeout_ms).", min=2, max=3)
    fanout_group: int = _f(0, "PACKET_FANOUT group id (0: derived from the process id).", min=0, max=65535)
    realtime_priority: int = _f(0, "SCHED_FIFO priority of the capture workers (1-99; 0: normal scheduling). On a gateway "
                                "whose cores are shared, capture then runs as soon as packets wait: measured p99 decision "
                                "latency 0.46 ms instead of 2.5 ms at 30k names/s on 2 cores. The kernel's RT throttling "
                                "still leaves 5% of each second to everything else. Needs CAP_SYS_NICE; under the shipped "
                                "systemd unit also a drop-in with RestrictRealtime=no (docs/operations.md).", min=0, max=99)


@dataclass(frozen=True)
class RecordsSection:
    files: list[Path] = _f([], "Filing exports (CSV, JSON, JSONL, XLSX): the 备案 records of this provider (given, at least "
                           "one).", nonempty=True)
    provider: list[str] = _f([], "This provider's names as filings spell their 接入商 (access provider): one string, or a list "
                             "when the provider files under several legal entities. A 接入商 cell naming several providers "
                             "(separated by ; , 、 or /) matches when any of them is one of these. Empty: not checked.",
                             scalar_ok=True)
    status_map: dict[str, str] = _f({}, "Status words of your exports that beiand does not know, mapped to active, cancelled, "
                                    "revoked, access-pending or under-review, e.g. {\"待复核\" = \"active\"}. A word nobody "
                                    "mapped keeps the filing in force (reported by records check and "
                                    "beiand_records_unmapped_status_filings; never a block).")
    max_loss: float = _f(0.2, "Refuse a reload (SIGHUP, a changed file, POST /api/v1/reload) whose records lose more than "
                         "this share of the filings in service (a truncated export): the old records keep serving, the "
                         "refusal is logged with the file, counted (beiand_records_reload_refused_total) and shown in "
                         "/readyz and /api/v1/status. The new config's value applies; at start there is nothing to compare.",
                         min=0.0, max=1.0)
    strict: bool = _f(False, "Refuse a file with any bad row (default: skip bad rows, report them).")
    source: str = _f("files", "Where the gateway takes the records, inventory and NAT feed it judges with. files: records.files, "
                     "inventory.file and inventory.nat_file as loaded (one gateway; each loaded version is also kept in the "
                     "decision store's register when records.history is on). store: the register's version in force in the "
                     "decision store (a fleet: every gateway applies the same version, fetched by content and kept in "
                     "daemon.state_dir/register, so the gateway starts and judges while the store is unreachable); the "
                     "files, where given, are then the drop: a change there is imported as a new version (the reload "
                     "guard first), as `beiand records import` does.", choices=("files", "store"))
    history: bool = _f(True, "records.source = files: keep every loaded version of the records, inventory and NAT feed in "
                       "the decision store's register (rows with the versions they were in force: `beiand records log`, "
                       "`diff`, `lookup --at`, `replay --at`). Only in a store of the gateway's own: SQLite, with no other gateway's "
                       "versions (a fleet shares one register with records.source = store). A failure to keep one is "
                       "logged, never fatal.")
    max_age_hours: float = _f(48.0, "Records in service older than this are stale (beiand_records_stale, the BeiandRecordsStale "
                              "alert, /readyz details). Age: now minus the mtime of the oldest records file when it was "
                              "loaded (exports carry no export time of their own). 0: never stale.", min=0.0)


@dataclass(frozen=True)
class InventorySection:
    file: Path | None = _f(None, "Hosted prefixes → customer account, state and mode (CSV or TOML).")
    nat_file: Path | None = _f(None, "NAT / elastic-IP mappings (MPS Order 82 art. 8), CSV or JSON: public ip[:port range] ↔ "
                               "internal address, account, valid from/to. Written into each access-log record's nat field; "
                               "`beiand logs query --server` finds either side. Reloaded like the inventory (a bad file "
                               "keeps the mappings in service).")


@dataclass(frozen=True)
class PolicySection:
    default_mode: str = _f("monitor", "Mode of prefixes without one: monitor (log only), dry-run or enforce.",
                           choices=tuple(m.value for m in Mode))
    grace_days: int = _f(30, "Grace for access-pending (接入审核中) filings, at most 45 days.", min=0, max=45)
    allow: list[str] = _f([], "Exempt names (allowlist), e.g. the provider's own portal.")
    allow_suffixes: list[str] = _f([], "Exempt domains with every name below them (allowlist), e.g. the provider's CDN domain.")
    allow_prefixes: list[str] = _f([], "Exempt server prefixes (CIDR), e.g. the provider's own infrastructure.")
    pending_mode: str = _f("", "Mode of pending prefixes (501号 art. 11: allocated, filing not yet verified) without their own "
                           "mode; empty: default_mode (monitor unless set: unfiled names on a pending prefix are flagged, not blocked; "
                           "\"enforce\" makes pending prefixes serve only filed names, as 501号 art. 11 asks).",
                           choices=("", *(m.value for m in Mode)))


@dataclass(frozen=True)
class ClickHouseSection:
    url: str = _f("", "ClickHouse HTTP interface, e.g. http://127.0.0.1:8123 (empty: embedded store only).")
    database: str = _f("beiand", "Database of the access_log table.")
    table: str = _f("access_log", "Table name.")
    user: str = _f("default", "ClickHouse user.")
    password_file: Path | None = _f(None, "File holding the ClickHouse password.")
    batch_records: int = _f(10000, "Records per INSERT.", min=1)
    spill_dir: Path | None = _f(None, "Where records wait while ClickHouse is down (default: <accesslog.directory>/spill).")
    cluster: str = _f("", "A ClickHouse cluster (remote_servers) to write through: <table> is then a Distributed table over "
                      "a ReplicatedReplacingMergeTree <table>_local on every node (docs/access-log.md); empty: one server.")


@dataclass(frozen=True)
class AccessLogSection:
    directory: Path = _f(Path("/var/log/beiand"), "Embedded access-log store (0750; files 0640).")
    retention_days: int = _f(RETENTION_DEFAULT_DAYS, "Days kept, judged by the records' own times: six calendar months "
                             "(up to 184 days) by default, as the Cybersecurity Law asks for network logs (art. 21(3) of the "
                             "2016 text, art. 23 after the 2025 amendment); at least 60 (Order 292 art. 14, MPS Order 82 art. 13).",
                             min=RETENTION_FLOOR_DAYS, max=3650,
                             floor_reason="Order 292 art. 14 (互联网信息服务管理办法 第十四条) requires at least 60 days")
    commit_interval: float = _f(1.0, "Seconds after which an appended record is on disk (group commit).", min=0.001, max=60.0)
    commit_records: int = _f(16384, "…or as soon as this many records wait.", min=1)
    max_buffer: int = _f(2_000_000, "Records held in memory while the disk refuses writes.", min=1000)
    hmac_key_file: Path | None = _f(None, "Key that makes the hash chain an HMAC chain (keep a copy off the machine).")
    checkpoint_interval: float = _f(60.0, "Seconds between chain-head checkpoints (heads.log and the log).", min=1.0)
    partition_records: int = _f(2_000_000, "Records after which a worker's open partition is closed and sealed and the next one "
                                "of the same day opened (w0, w0.p1, w0.p2…; the chain continues across them). Sealing holds "
                                "one partition in memory: about 1 GB at 2,000,000 records (docs/access-log.md).",
                                min=1000, max=100_000_000)
    clickhouse: ClickHouseSection = field(default_factory=ClickHouseSection, metadata={
        "doc": "The fleet's copy of the access log (the local log stays the evidence of record)."})


@dataclass(frozen=True)
class ReassemblySection:
    """Per capture worker: what reassembly may hold before the oldest partial flow is dropped (issue 17)."""

    tcp_bytes: int = _f(32 << 20, "Bytes all TCP first-bytes and DNS-over-TCP reassemblies of one worker may hold together; "
                        "beyond, the oldest flow is dropped and counted (beiand_reassembly_evicted_total{kind=\"tcp\"}). "
                        "Costs up to about 1.5x this in memory per worker (docs/operations.md).", min=1 << 16, max=1 << 34)
    quic_bytes: int = _f(16 << 20, "Bytes all QUIC CRYPTO reassemblies of one worker may hold together (kind=\"quic\").",
                         min=1 << 16, max=1 << 34)
    fragment_bytes: int = _f(8 << 20, "Bytes all IP fragment reassemblies of one worker may hold together (kind=\"fragment\").",
                             min=1 << 16, max=1 << 34)
    max_flow_bytes: int = _f(16384, "First client bytes kept per TCP flow to find the name (bytes held, not offsets).",
                             min=1024, max=1 << 20)
    max_holes: int = _f(64, "Out-of-order pieces beyond the first hole kept per flow, datagram or CRYPTO stream.",
                        min=1, max=4096)
    name_packets: int = _f(0, "The name budget in packets (issue 36): TCP data segments or QUIC datagrams of one flow read "
                           "to find its name. A ClientHello still not whole then is judged by its address alone (ip-only, "
                           "reason budget-packets), on the packet at hand. A browser's 2 KB ClientHello takes 1 to 3. "
                           "0: automatic, 6 (inline: enforce.connbytes - 2 when that is less). Inline a value set here must "
                           "be at most enforce.connbytes - 2 (the kernel also counts the SYN and the handshake's ACK).",
                           min=0, max=64)
    name_seconds: float = _f(5.0, "The name budget in seconds since a flow's first data: past it, a ClientHello still not whole "
                             "is judged by its address alone (ip-only, reason budget-seconds) on the next packet.",
                             min=0.1, max=60.0)
    body_follow: int = _f(65536, "An HTTP/1.x request body (Content-Length or chunked) up to this many bytes is read to its "
                          "end, so that a request head in the segment where it ends is judged (issue 32); inline its "
                          "segments wait in the queue (about 0.1 ms each). A longer body is not followed: a head hidden "
                          "behind its end is judged only when its segment starts like a head. Raise it where clients "
                          "must not get past beiand that way, at the cost of the uploads' speed.", min=0, max=1 << 30)


@dataclass(frozen=True)
class ConnectionsSection:
    """Connection records (issue 19, docs/access-log.md "Connection records"): every new flow into or out of hosted space."""

    enabled: bool = _f(True, "Log every new TCP and UDP flow into or out of hosted space, on any port, named or not (the "
                       "capture filter then also passes TCP SYN/FIN/RST on every port and UDP on every port but the "
                       "watched QUIC ones). Off: only named flows and DNS answers are logged, as before.")
    window: float = _f(60.0, "Coalescing window in seconds: one record per five-tuple per window, with its packet and byte "
                       "counts; a flow that no name came for is written when its window closes.", min=1.0, max=3600.0)
    udp_idle_timeout: float = _f(60.0, "Seconds a UDP five-tuple may stay silent and still be the same flow.",
                                 min=1.0, max=86400.0)
    tcp_idle_timeout: float = _f(600.0, "Seconds a TCP five-tuple may stay silent before it is forgotten (a later packet "
                                 "without SYN is then a flow already open, logged again).", min=10.0, max=86400.0)
    max_pending: int = _f(262144, "Flows per worker waiting for their record; beyond, the oldest is written before its "
                          "window closes (counted: conn:written-early). About 0.4 KiB each.", min=1024, max=1 << 24)
    attempts: str = _f("summarise", "TCP attempts: flows whose SYN was seen and that the server never answered (no "
                       "SYN+ACK from it, no data, no FIN): unanswered, or refused by the server's RST. summarise: one record "
                       "per server address and window counts them (reason not-named:attempts n=... refused=... "
                       "unanswered=... sources=... ports=LO-HI distinct=...; a port scan writes a few records, not one per "
                       "SYN); each: a record per attempt, as for an established flow (for operators who must keep every "
                       "attempt: a scan then writes a record per SYN). Established flows always have their own record.",
                       choices=("summarise", "each"))
    url_max_length: int = _f(256, "HTTP: characters of the URL path kept in a record (0: no URL).", min=0, max=8192)
    url_query: bool = _f(False, "HTTP: keep the query string in the URL. Off by default: it may hold personal data "
                         "(names, phone numbers, tokens).")


@dataclass(frozen=True)
class ServerSection:
    listen: str = _f("127.0.0.1:9640", "Address of /metrics, /healthz, /readyz and /api/v1 (host:port).")
    token_file: Path | None = _f(None, "Bearer token for the endpoints that change state (block orders, breaker).")
    header_timeout: float = _f(10.0, "Seconds a client has to send a whole request head (after connecting, or after the "
                               "last answer on a kept-alive connection); then the connection is closed.", min=0.1, max=600.0)
    request_timeout: float = _f(30.0, "Seconds a request's body and its answer may take once its head is in (408 beyond).",
                                min=0.1, max=3600.0)
    max_connections: int = _f(256, "Open HTTP connections; a new one beyond this is closed at once.", min=1, max=65536)
    max_body_bytes: int = _f(65536, "Largest request body (413 beyond).", min=1024, max=1 << 26)
    max_line_bytes: int = _f(8190, "Longest request line (the URL) and header line (400 beyond, one log line, no traceback).",
                             min=256, max=1 << 20)


@dataclass(frozen=True)
class EnforceSection:
    inline: bool = _f(False, "Inline mode: first packets of watched flows go through NFQUEUE (rules installed by beiand).")
    queue: int = _f(0, "First NFQUEUE number (workers use queue..queue+workers-1).", min=0, max=65000)
    connbytes: int = _f(8, "Packets of a flow sent through the queue (iptables connbytes).", min=1, max=64)
    mark: int = _f(0x10000000, "Inline: the lowest of the four packet/conntrack mark bits beiand uses (this bit and the "
                   "next three: a flow's verdict is known, a packet of the connection was queued, the first queued packet, "
                   "a later HTTP request head goes on); a power of two, at most 1 << 28; pick bits no other rule of the "
                   "gateway uses.", min=1, max=1 << 28)
    quic_block_seconds: int = _f(30, "How long a QUIC flow to an unfiled name is dropped (client falls back to TCP).", min=1)
    grace_seconds: int = _f(0, "Do not block names first seen less than this long ago.", min=0)
    max_blocks_per_minute: int = _f(600, "Circuit breaker: above this, enforcement falls back to dry-run.", min=1)
    max_unfiled_share: float = _f(0.5, "Circuit breaker: share of unfiled verdicts per minute that opens it.", min=0.0, max=1.0)
    min_verdicts_for_share: int = _f(200, "Verdicts per minute before the share rule applies.", min=1)
    contact: str = _f("", "Provider contact shown on the block page (phone, e-mail).")
    provider_name: str = _f("", "Provider name shown on the block page.")


@dataclass(frozen=True)
class IsmsSection:
    """The regulator's ISMS interface (ISMI, docs/isms.md): beiand as an execution unit (EU) or CU-lite."""

    enabled: bool = _f(False, "Serve idc_command, apply the regulator's commands and write ISMI data files.")
    mode: str = _f("eu", "eu: a CU collects the spool; cu-lite: beiand also uploads the files and calls idc_commandack; "
                   "fleet: this gateway applies the commands the licence's CU (beiand isms serve) writes to the decision "
                   "store, and serves no endpoint and writes no files of its own (docs/isms.md, One CU for the licence).",
                   choices=("eu", "cu-lite", "fleet"))
    idc_id: str = _f("", "This operator's idcId (许可证号, e.g. A2.B1.B2-20090001): calls for another are refused (999).")
    house_id: str = _f("", "The 机房 (houseId) this gateway serves: commands for other houses are not applied; rows carry it.")
    gateways: list[str] = _f([], "With the fleet's copy in ClickHouse ([accesslog.clickhouse] url), the reports (DT 3, 4/5, 8, 9) "
                             "and query answers read it, scoped to these gateways (daemon.gateway ids): the gateways of "
                             "the house(s) this instance reports for; [\"*\"]: every gateway in the copy (one instance per "
                             "licence). Empty: this gateway only, as its local log holds (docs/isms.md).")
    listen: str = _f("127.0.0.1:9641", "Address of the idc_command endpoint (host:port).")
    path: str = _f("/isms/idc_command", "HTTP path of the idc_command endpoint.")
    tls_cert: Path | None = _f(None, "TLS certificate (PEM) of the endpoint; unset: plain HTTP (put it behind the CU).")
    tls_key: Path | None = _f(None, "TLS private key (PEM), readable only by beiand.")
    secrets_dir: Path = _f(Path("/etc/beiand/isms"), "Directory of the four ISMI secrets, one file each, mode 0600, owned by "
                           "beiand: user_key (用户口令), enc_key (AES key), iv (偏移量), auth_key (认证密钥).")
    profile: Path | None = _f(None, "Province profile (TOML, docs/isms.md): hash codes, type 5, file naming, XSDs. Unset: defaults.")
    spool_dir: Path | None = _f(None, "Where data files wait for the CU (default: <daemon.state_dir>/isms/spool).")
    report_lag: float = _f(300.0, "Reading the fleet's copy in ClickHouse, a report window ends this many seconds before now: "
                           "gateways copy their records in batches (a record reaching the copy later than this, after an "
                           "outage of the copy, is not in any DT 4/5/8/9).", min=0.0, max=86400.0)
    report_interval: float = _f(3600.0, "Seconds between DT 8/9 and DT 4/5 reports (a type 5 command overrides DT 8's).",
                                min=60.0)
    heartbeat_interval: float = _f(600.0, "Seconds between DT 7 status files (Byzoro: 600; a CU counts 10 min silent as down).",
                                   min=10.0)
    ack_url: str = _f("", "CU-lite: SMMS's idc_commandack URL (http(s)://...).")
    upload_url: str = _f("", "CU-lite: where files go: sftp://user@host:port/dir (key auth with upload_key_file), or "
                         "ftp://user@host:port/dir (ftps:// for FTP over TLS) where the province uses FTP.")
    upload_key_file: Path | None = _f(None, "CU-lite: the SSH private key for SFTP, or the file holding the FTP password (0600).")
    metrics_listen: str = _f("127.0.0.1:9642", "beiand isms serve: address of its /metrics and /api/v1/isms/status (host:port).")
    ack_wait: float = _f(10.0, "beiand isms serve: seconds a command's ack waits for every gateway in its scope to apply it; "
                         "then it is acked with those that have not yet counted (resultCode 1).", min=0.0, max=600.0)
    ack_update: bool = _f(True, "beiand isms serve: once the gateways that had not applied a command have (a gateway "
                          "restarted), ack it again with resultCode 0.")
    ack_follow: float = _f(86400.0, "beiand isms serve: how long a partly applied command is followed for that second ack.",
                           min=60.0)
    gateway_down_after: float = _f(30.0, "beiand isms serve: a gateway whose heartbeat in the decision store is older is down "
                                   "(its houses are faulty in DT 7; a command it has not applied is acked as partly executed).",
                                   min=2.0)
    gateway_retired_after: float = _f(7 * 86400.0, "beiand isms serve: a gateway silent longer is no longer counted in acks "
                                      "and DT 7 (beiand fleet status still lists it).", min=60.0)
    basic_file: Path | None = _f(None, "DT 1 basic data (基础数据): the facts beiand cannot know from the inventory and the "
                                 "records (licensee, houses' names and addresses, officers); TOML, docs/isms.md. Unset: "
                                 "those elements are written empty.")
    basic_interval: float = _f(86400.0, "beiand isms serve: seconds between DT 1 files (also written at start and when the "
                               "inventory, the records or basic_file change).", min=600.0)


@dataclass(frozen=True)
class StoreSection:
    """The decision store (DESIGN.md, Fleet; docs/fleet.md): closure orders, the regulator's commands and exemptions."""

    url: str = _f("", "Empty: an SQLite file <daemon.state_dir>/decisions.sqlite (one gateway needs nothing else); a path: "
                  "that SQLite file; postgresql://user@host:port/db: the fleet's PostgreSQL, which every gateway follows.")
    password_file: Path | None = _f(None, "PostgreSQL: the file holding the password (mode 0600, owned by beiand; never in the URL).")
    sslmode: str = _f("prefer", "PostgreSQL TLS, as libpq: disable, allow, prefer, require, verify-ca or verify-full (across "
                      "data centres: verify-full with ca_file).",
                      choices=("disable", "allow", "prefer", "require", "verify-ca", "verify-full"))
    ca_file: Path | None = _f(None, "PostgreSQL: the CA (PEM) that signed the server's certificate (sslrootcert).")
    cert_file: Path | None = _f(None, "PostgreSQL: a client certificate (PEM), where the server asks for one (sslcert).")
    key_file: Path | None = _f(None, "PostgreSQL: the client certificate's key (sslkey; mode 0600).")
    connect_timeout: float = _f(5.0, "Seconds to wait for the store before a command fails (exit 2) or the daemon counts it "
                                "unreachable.", min=1.0, max=300.0)
    poll_interval: float = _f(1.0, "PostgreSQL: seconds between polls besides LISTEN/NOTIFY (SQLite is polled every 0.1 s).",
                              min=0.05, max=60.0)
    heartbeat_interval: float = _f(5.0, "Seconds between this gateway's heartbeats (the version it applies: beiand fleet status).",
                                   min=1.0, max=600.0)


@dataclass(frozen=True)
class CasesSection:
    """Sponsor cases (issue 31; docs/cases.md): from a finding to 整改 or 取消接入."""

    rectify_days: int = _f(10, "Working days (工作日) a customer has to file or correct the filing after the notice (整改期); "
                           "10 is a common practice of providers' 专项核查: set your own.", min=1, max=365)
    holidays_file: Path | None = _f(None, "The official holiday arrangement (节假日安排, 调休), CSV date,kind[,name] or TOML "
                                    "[[day]] (docs/cases.md): the working days of the 整改 deadlines and of the IP地址备案 "
                                    "deadlines (beiand records ip-report, docs/ip-report.md); unset: only weekends are days off.")
    auto_open: list[str] = _f(["unfiled", "mismatch", "inactive"], "The daemon's verdicts that open a case by themselves "
                              "(unfiled, mismatch, inactive; [] : none, cases are opened by beiand cases open or audit --open-cases).")
    pass_interval: float = _f(60.0, "Seconds between the periodic passes (new findings written, notices and reminders sent, "
                              "deadlines escalated, cases resolved).", min=0.1, max=3600.0)
    evidence_interval: float = _f(86400.0, "Seconds between two evidence rows of one case from this gateway (first/last "
                                  "seen, hits, servers added up in between).", min=1.0, max=30 * 86400.0)
    min_hits: int = _f(5, "Records of a finding before the daemon opens a case for it (a name or two sent by anyone's "
                       "probe is not a site served).", min=1)
    max_new_per_account: int = _f(50, "New cases per account in one pass; more wait for the next passes (a client making up "
                                  "names must not bury a customer in notices).", min=1)
    remind_days: int = _f(2, "Working days before the deadline at which the reminder goes out (0: none).", min=0, max=60)
    resolve_after_days: int = _f(30, "A case whose names were not served for this many days closes by itself (not-served; "
                                 "0: never).", min=0, max=3650)
    escalate: bool = _f(True, "At the deadline an unresolved case is escalated: its names blocked per flow in enforce "
                        "prefixes (取消接入), flagged elsewhere. false: it stays notified for a person to act.")
    contacts_file: Path | None = _f(None, "CSV account,email[,name] (or 用户账号,邮箱,联系人): where each account's notices go; "
                                    "a case whose account has none waits, counted and alerted.")
    templates_dir: Path | None = _f(None, "Notice templates <finding>.txt / reminder.txt / default.txt ($name, $deadline, ...; "
                                    "docs/cases.md); unset: the built-in ones, Chinese first.")
    smtp_host: str = _f("", "The operator's SMTP relay; empty: no mail (a person records the notice: beiand cases notify).")
    smtp_port: int = _f(587, "The relay's port (submission, STARTTLS).", min=1, max=65535)
    smtp_starttls: bool = _f(True, "STARTTLS before logging in (required by default: never a password in the clear).")
    smtp_ca_file: Path | None = _f(None, "The CA (PEM) of the relay's certificate; unset: the system's.")
    smtp_user: str = _f("", "The relay's login; empty: no login.")
    smtp_password_file: Path | None = _f(None, "The file holding the relay's password (mode 0600, owned by beiand).")
    smtp_timeout: float = _f(10.0, "Seconds to wait for the relay.", min=1.0, max=120.0)
    mail_from: str = _f("", "The notices' From: address (required with smtp_host).")
    notices_per_minute: int = _f(30, "At most this many notices a minute (the relay's and the customers' patience).", min=1,
                                 max=10000)
    notice_retry: float = _f(300.0, "Seconds before a notice that could not be sent is tried again.", min=1.0, max=86400.0)


@dataclass(frozen=True)
class AuthoritySection:
    """The authority's lists of unfiled sites (上级下发未备案网站, 501号 art. 5(7), 7(4); docs/authority.md)."""

    block: bool = _f(True, "A listed site that is hosted here and that the records do not file is blocked per flow in "
                     "enforce prefixes (flagged elsewhere) from the time its list is imported, the list as the deciding rule "
                     "(authority:<list> in the access log). false: its flows are flagged only, naming the list, and the "
                     "sponsor case takes its course. A site the records file is never blocked by a list (a conflict).")
    seen_days: int = _f(30, "How many days of the access log `beiand records authority import` reads to tell whether a "
                        "listed name is served from hosted space here (docs/authority.md, \"Hosted here\").", min=1, max=366)


@dataclass(frozen=True)
class Config:
    daemon: DaemonSection = field(default_factory=DaemonSection)
    capture: CaptureSection = field(default_factory=CaptureSection)
    records: RecordsSection = field(default_factory=RecordsSection)
    inventory: InventorySection = field(default_factory=InventorySection)
    policy: PolicySection = field(default_factory=PolicySection)
    accesslog: AccessLogSection = field(default_factory=AccessLogSection)
    server: ServerSection = field(default_factory=ServerSection)
    enforce: EnforceSection = field(default_factory=EnforceSection)
    reassembly: ReassemblySection = field(default_factory=ReassemblySection)
    connections: ConnectionsSection = field(default_factory=ConnectionsSection)
    isms: IsmsSection = field(default_factory=IsmsSection)
    store: StoreSection = field(default_factory=StoreSection)
    cases: CasesSection = field(default_factory=CasesSection)
    authority: AuthoritySection = field(default_factory=AuthoritySection)
    path: str = ""  # the file it came from
    warnings: tuple[str, ...] = ()  # file:line: field: deprecated settings that were given

    @property
    def gateway(self) -> str:
        return self.daemon.gateway or os.uname().nodename

    @property
    def workers(self) -> int:
        return self.daemon.workers or os.cpu_count() or 1

    def listen(self) -> tuple[str, int]:
        host, _, port = self.server.listen.rpartition(":")
        return host.strip("[]"), int(port)


_NOT_SECTIONS = ("path", "warnings")
# Keys that no longer mean anything: accepted with a warning so an existing config keeps working.
DEPRECATED = {
    "enforce.ip_block_seconds": "an unnamed (IP-only) flow is reset alone, never its address and port for everyone; "
                                "host- or prefix-wide blocking is a closure order (beiand block add); remove the key",
}
_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name not in _NOT_SECTIONS}


def _line_of(text: str, dotted: str) -> int:
    """Best line for a dotted key: the key's own line inside its table, else the table header."""
    parts = dotted.split(".")
    key = parts[-1]
    table = ".".join(parts[:-1])
    lines = text.splitlines()
    cur = ""
    header_line = 0
    for n, ln in enumerate(lines, 1):
        s = ln.strip()
        m = re.match(r"^\[\s*([^\]]+?)\s*\]", s)
        if m:
            cur = m.group(1)
            if cur == dotted:
                return n
            if cur == table:
                header_line = n
            continue
        if cur == table and re.match(rf"^{re.escape(key)}\s*=", s):
            return n
    return header_line or 1


def _check(value: Any, tp: Any, meta: dict[str, Any], name: str) -> tuple[Any, str | None]:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _check(value, args[0], meta, name)
    if origin is dict:
        if not isinstance(value, dict):
            return None, f"expected a table of strings, got {type(value).__name__}"
        for k, v in value.items():
            if not isinstance(v, str):
                return None, f"{k!r}: expected a string, got {v!r}"
        return dict(value), None
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str) and meta.get("scalar_ok"):
            value = [value]
        if not isinstance(value, list):
            return None, f"expected a list, got {type(value).__name__}"
        if not value and meta.get("nonempty"):
            return None, "an empty list: give at least one entry, or leave the key out"
        out = []
        for i, v in enumerate(value):
            cv, problem = _check(v, item, meta, name)
            if problem:
                return None, f"item {i + 1}: {problem}"
            out.append(cv)
        return out, None
    if tp is Path:
        if not isinstance(value, str) or not value:
            return None, "expected a path (a non-empty string)"
        if problem := _control(value):
            return None, problem
        if ".." in Path(value).parts:
            return None, f"{value!r}: a path with '..' in it: give the path without climbing out of a directory"
        return Path(value), None
    if tp is bool:
        if not isinstance(value, bool):
            return None, f"expected true or false, got {value!r}"
        return value, None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"expected an integer, got {value!r}"
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"expected a number, got {value!r}"
        value = float(value)
        if not math.isfinite(value):
            return None, f"{value}: expected a finite number"
    elif tp is str:
        if not isinstance(value, str):
            return None, f"expected a string, got {value!r}"
        if problem := _control(value):
            return None, problem
        if "choices" in meta and value not in meta["choices"]:
            return None, f"{value!r}: expected one of {', '.join(meta['choices'])}"
        return value, None
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        return None, f"{value} is below the minimum {lo}" + (f": {meta['floor_reason']}" if "floor_reason" in meta else "")
    if hi is not None and value > hi:
        return None, f"{value} is above the maximum {hi}"
    return value, None


def _control(value: str) -> str | None:
    """Control characters end up in log records, headers and terminals: refused everywhere."""
    for i, ch in enumerate(value):
        if ch < " " or "\x7f" <= ch < "\xa0":
            return f"a control character (U+{ord(ch):04X}) at position {i + 1}: not allowed in a setting"
    return None


def _build(cls: Any, data: dict[str, Any], prefix: str, text: str, path: str, problems: list[str],
           warnings: list[str] | None = None) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if dotted in DEPRECATED:  # accepted, ignored, said
            if warnings is not None:
                warnings.append(f"{path}:{_line_of(text, dotted)}: {dotted}: deprecated and ignored: {DEPRECATED[dotted]}")
            continue
        if key not in known or key in _NOT_SECTIONS:
            close = [k for k in known if k not in _NOT_SECTIONS and (k.startswith(key[:3]) or key.startswith(k[:3]))]
            problems.append(f"{path}:{_line_of(text, dotted)}: {dotted}: unknown setting"
                            + (f" (did you mean {', '.join(close)}?)" if close else ""))
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                problems.append(f"{path}:{_line_of(text, dotted)}: {dotted}: expected a table [{dotted}]")
                continue
            kwargs[key] = _build(tp, value, dotted, text, path, problems, warnings)
            continue

        cv, problem = _check(value, tp, dict(known[key].metadata), dotted)
        if problem:
            problems.append(f"{path}:{_line_of(text, dotted)}: {dotted}: {problem}")
        else:
            kwargs[key] = cv
    return cls(**kwargs)


def parse_config(text: str, path: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError([f"{path}:{m.group(1) if m else 1}: not valid TOML: {exc}"]) from None
    problems: list[str] = []
    warnings: list[str] = []
    cfg: Config = _build(Config, data, "", text, path, problems, warnings)
    base = Path(path).parent if path and not path.startswith("<") else Path(".")
    cfg = _resolve(cfg, base)
    problems += _semantic(cfg, text, path, warnings)
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(cfg, path=path, warnings=tuple(warnings))


def _resolve(cfg: Config, base: Path) -> Config:
    """Relative paths are relative to the config file's directory."""

    def fix(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else base / p)

    rec = dataclasses.replace(cfg.records, files=[fix(p) or p for p in cfg.records.files])
    inv = dataclasses.replace(cfg.inventory, file=fix(cfg.inventory.file), nat_file=fix(cfg.inventory.nat_file))
    ch = dataclasses.replace(cfg.accesslog.clickhouse, password_file=fix(cfg.accesslog.clickhouse.password_file),
                             spill_dir=fix(cfg.accesslog.clickhouse.spill_dir))
    al = dataclasses.replace(cfg.accesslog, directory=fix(cfg.accesslog.directory) or cfg.accesslog.directory,
                             hmac_key_file=fix(cfg.accesslog.hmac_key_file), clickhouse=ch)
    dm = dataclasses.replace(cfg.daemon, state_dir=fix(cfg.daemon.state_dir) or cfg.daemon.state_dir)
    srv = dataclasses.replace(cfg.server, token_file=fix(cfg.server.token_file))
    im = cfg.isms
    isms = dataclasses.replace(im, tls_cert=fix(im.tls_cert), tls_key=fix(im.tls_key), secrets_dir=fix(im.secrets_dir) or im.secrets_dir,
                               profile=fix(im.profile), spool_dir=fix(im.spool_dir), upload_key_file=fix(im.upload_key_file),
                               basic_file=fix(im.basic_file))
    sto = dataclasses.replace(cfg.store, password_file=fix(cfg.store.password_file), ca_file=fix(cfg.store.ca_file),
                              cert_file=fix(cfg.store.cert_file), key_file=fix(cfg.store.key_file))
    if cfg.store.url and "://" not in cfg.store.url and not cfg.store.url.startswith("sqlite:"):
        sto = dataclasses.replace(sto, url=str(fix(Path(cfg.store.url))))
    ca = cfg.cases
    cases = dataclasses.replace(ca, holidays_file=fix(ca.holidays_file), contacts_file=fix(ca.contacts_file),
                                templates_dir=fix(ca.templates_dir), smtp_ca_file=fix(ca.smtp_ca_file),
                                smtp_password_file=fix(ca.smtp_password_file))
    return dataclasses.replace(cfg, records=rec, inventory=inv, accesslog=al, daemon=dm, server=srv, isms=isms, store=sto,
                               cases=cases)


def _semantic(cfg: Config, text: str, path: str, warnings: list[str] | None = None) -> list[str]:
    problems = []

    def bad(dotted: str, why: str) -> None:
        problems.append(f"{path}:{_line_of(text, dotted)}: {dotted}: {why}")

    if cfg.reassembly.name_packets == 1:
        bad("reassembly.name_packets", "1 is no budget (the first packet is always read): 0 (automatic) or at least 2")
    if cfg.enforce.inline and cfg.enforce.connbytes < 4 and warnings is not None:
        warnings.append(f"{path}:{_line_of(text, 'enforce.connbytes')}: enforce.connbytes: {cfg.enforce.connbytes} queues at "
                        "most one packet with data: a ClientHello in two packets (every current browser's can be) passes "
                        "unjudged; 8 is the default")
    if cfg.enforce.inline and cfg.reassembly.name_packets > cfg.enforce.connbytes - 2:
        bad("reassembly.name_packets", f"{cfg.reassembly.name_packets} is more than enforce.connbytes - 2 "
            f"({cfg.enforce.connbytes - 2}): inline, the kernel would stop queuing a flow before its name budget is "
            "spent and pass it unjudged; raise enforce.connbytes or lower reassembly.name_packets")

    for dotted, secret in (("accesslog.hmac_key_file", cfg.accesslog.hmac_key_file), ("server.token_file", cfg.server.token_file),
                           ("accesslog.clickhouse.password_file", cfg.accesslog.clickhouse.password_file),
                           ("store.password_file", cfg.store.password_file), ("store.key_file", cfg.store.key_file),
                           ("cases.smtp_password_file", cfg.cases.smtp_password_file)):
        why = secret_problem(secret) if secret is not None else None
        if why is None:
            continue
        if cfg.daemon.secret_permissions == "warn" and warnings is not None:
            warnings.append(f"{path}:{_line_of(text, dotted)}: {dotted}: {why} (allowed by daemon.secret_permissions = \"warn\")")
        elif cfg.daemon.secret_permissions != "warn":
            bad(dotted, why + "; or set daemon.secret_permissions = \"warn\"")

    for i, f in enumerate(cfg.records.files):
        if not f.is_file():
            bad("records.files", f"item {i + 1}: {f}: no such file")
    if cfg.inventory.file is not None and not cfg.inventory.file.is_file():
        bad("inventory.file", f"{cfg.inventory.file}: no such file")
    if cfg.inventory.nat_file is not None and not cfg.inventory.nat_file.is_file():
        bad("inventory.nat_file", f"{cfg.inventory.nat_file}: no such file")
    for dotted, p in (("accesslog.hmac_key_file", cfg.accesslog.hmac_key_file), ("server.token_file", cfg.server.token_file),
                      ("accesslog.clickhouse.password_file", cfg.accesslog.clickhouse.password_file),
                      ("store.password_file", cfg.store.password_file), ("store.ca_file", cfg.store.ca_file),
                      ("store.cert_file", cfg.store.cert_file), ("store.key_file", cfg.store.key_file)):
        if p is not None and not p.is_file():
            bad(dotted, f"{p}: no such file")
    host, _, port = cfg.server.listen.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        bad("server.listen", f"{cfg.server.listen!r}: expected host:port, e.g. 127.0.0.1:9640")
    if cfg.enforce.mark & (cfg.enforce.mark - 1):
        bad("enforce.mark", f"{cfg.enforce.mark:#x} is not a single bit (a power of two, e.g. 0x10000000)")
    su = cfg.store.url
    if su.startswith(("postgresql://", "postgres://")):
        if re.match(r"^postgres(ql)?://[^/@:]*:[^@/]*@", su):
            bad("store.url", "a password in the URL is refused (it shows in `ps` and the logs): put it in store.password_file")
    elif "://" in su and not su.startswith("sqlite://"):
        bad("store.url", f"{su!r}: expected a file path (SQLite) or postgresql://user@host:port/db")
    url = cfg.accesslog.clickhouse.url
    if url and not re.match(r"^https?://[^/\s]+/?$", url):
        bad("accesslog.clickhouse.url", f"{url!r}: expected http(s)://host:port")
    try:
        status_table(cfg.records.status_map)
    except ValueError as exc:
        bad("records.status_map", str(exc).removeprefix("records.status_map: "))
    for name in cfg.records.provider:
        if not name.strip():
            bad("records.provider", "an empty provider name")
    for dotted, items in (("policy.allow", cfg.policy.allow), ("policy.allow_suffixes", cfg.policy.allow_suffixes)):
        for i, n in enumerate(items):
            try:
                normalise_domain(n[2:] if n.startswith("*.") else n)
            except DomainError as exc:
                bad(dotted, f"item {i + 1}: {n!r}: {exc.reason}")
    for i, prefix in enumerate(cfg.policy.allow_prefixes):
        try:
            ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            bad("policy.allow_prefixes", f"item {i + 1}: {prefix!r} is not a CIDR prefix")
    if cfg.capture.filter:
        try:
            Condition(cfg.capture.filter)
        except FilterError as exc:
            bad("capture.filter", f"{cfg.capture.filter!r}: {exc}")
    im = cfg.isms
    if im.enabled and im.mode != "fleet":  # fleet: the CU (beiand isms serve) serves SMMS; the gateway only applies
        if not im.idc_id.strip():
            bad("isms.idc_id", "required when isms.enabled (this operator's 许可证号)")
        for dotted, addr, eg in (("isms.listen", im.listen, "0.0.0.0:9641"), ("isms.metrics_listen", im.metrics_listen,
                                                                                "127.0.0.1:9642")):
            ihost, _, iport = addr.rpartition(":")
            if not ihost or not (iport.isascii() and iport.isdigit()) or not 0 < int(iport) < 65536:
                bad(dotted, f"{addr!r}: expected host:port, e.g. {eg}")
        if not im.secrets_dir.is_dir():
            bad("isms.secrets_dir", f"{im.secrets_dir}: no such directory (user_key, enc_key, iv, auth_key)")
        if (im.tls_cert is None) != (im.tls_key is None):
            bad("isms.tls_cert", "give tls_cert and tls_key together")
        for dotted, p in (("isms.tls_cert", im.tls_cert), ("isms.tls_key", im.tls_key), ("isms.profile", im.profile),
                          ("isms.upload_key_file", im.upload_key_file), ("isms.basic_file", im.basic_file)):
            if p is not None and not p.is_file():
                bad(dotted, f"{p}: no such file")
        if im.mode == "cu-lite" and not (im.ack_url and im.upload_url):
            bad("isms.mode", "cu-lite needs isms.ack_url and isms.upload_url")
        if im.upload_url and not re.match(r"^(s?ftp|ftps)://[^@/:\s]+@[^/\s]+(/.*)?$", im.upload_url):
            bad("isms.upload_url", f"{im.upload_url!r}: expected sftp://, ftp:// or ftps://user@host[:port]/dir "
                "(no password in the URL: upload_key_file)")
    if cfg.cases.holidays_file is not None:
        from beiand.policy.workdays import CalendarError, load_calendar

        try:
            load_calendar(cfg.cases.holidays_file)
        except CalendarError as exc:
            bad("cases.holidays_file", "; ".join(exc.problems[:5]))
    ca = cfg.cases
    for finding in ca.auto_open:
        if finding not in ("unfiled", "mismatch", "inactive"):
            bad("cases.auto_open", f"{finding!r}: one of unfiled, mismatch, inactive")
    if ca.smtp_host and not ca.mail_from:
        bad("cases.mail_from", "required with cases.smtp_host (the notices' From: address)")
    if ca.smtp_user and ca.smtp_password_file is None:
        bad("cases.smtp_password_file", "required with cases.smtp_user (never a password in the config)")
    for dotted, p in (("cases.contacts_file", ca.contacts_file), ("cases.smtp_ca_file", ca.smtp_ca_file),
                      ("cases.smtp_password_file", ca.smtp_password_file)):
        if p is not None and not p.is_file():
            bad(dotted, f"{p}: no such file")
    if ca.templates_dir is not None:
        from beiand.runtime.notices import NoticeError, Templates

        try:
            Templates(ca.templates_dir).check()
        except NoticeError as exc:
            bad("cases.templates_dir", str(exc))
    if ca.contacts_file is not None and ca.contacts_file.is_file():
        from beiand.runtime.notices import NoticeError, load_contacts

        try:
            load_contacts(ca.contacts_file)
        except NoticeError as exc:
            bad("cases.contacts_file", str(exc))
    for name in cfg.capture.interfaces:
        if not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", name):
            bad("capture.interfaces", f"{name!r}: not an interface name")
    return problems


def secret_problem(p: Path) -> str | None:
    """Why a secret file is not private enough, or None.

    Nobody but its owner and the daemon may read it: others never; the group only when it is the
    daemon's own group (``beiand``, the group of this process, or root's), as docs/install.md
    creates it (0640 root:beiand, the unit runs as beiand:beiand). Nobody but the owner may write it.
    """
    try:
        st = os.stat(p)
    except OSError:
        return None  # reported as missing elsewhere
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
        return f"{p}: readable or writable by others (mode {mode:04o}): a secret must be private: chmod 0600 {p}"
    if mode & stat.S_IRGRP and not _daemon_group(st.st_gid):
        return (f"{p}: readable by group {_group_name(st.st_gid)} (mode {mode:04o}), not the daemon's own group: "
                f"chmod 0600 {p}, or chown root:beiand {p}")
    return None


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _daemon_group(gid: int) -> bool:
    return gid in (0, os.getegid()) or _group_name(gid) == "beiand"


def load_config(path: str | os.PathLike[str]) -> Config:
    p = str(path)
    try:
        text = Path(p).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{p}: not UTF-8: {exc.reason} at byte {exc.start}"]) from None
    return parse_config(text, p)


def reference() -> str:
    """docs/configuration.md, generated from the dataclasses above."""
    out = ["# Configuration reference", "",
           "Generated from `beiand/runtime/settings.py` by `beiand check-config --reference`; do not edit by hand.",
           "The file is `/etc/beiand/beiand.toml`; relative paths are relative to its directory.", ""]

    def section(cls: Any, prefix: str) -> None:
        out.append(f"## [{prefix}]")
        out.append("")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        nested = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                nested.append((tp, f"{prefix}.{f.name}"))
                continue
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            tname = str(tp).replace("pathlib.", "").replace("typing.", "").replace("<class '", "").replace("'>", "")
            extra = []
            if "min" in f.metadata:
                extra.append(f"min {f.metadata['min']}")
            if "max" in f.metadata:
                extra.append(f"max {f.metadata['max']}")
            if "choices" in f.metadata:
                extra.append("one of " + ", ".join(f.metadata["choices"]))
            doc = f.metadata.get("doc", "") + (f" ({'; '.join(extra)})" if extra else "")
            out.append(f"| `{f.name}` | {tname} | `{_toml(default)}` | {doc} |")
        out.append("")
        for tp, p in nested:
            section(tp, p)

    hints = typing.get_type_hints(Config)
    for name in _SECTIONS:
        section(hints[name], name)
    out += ["## Deprecated keys", "", "Accepted with a warning (`check-config`, the daemon's log) and ignored.", "",
            "| key | why |", "|---|---|"]
    out += [f"| `{k}` | {why} |" for k, why in DEPRECATED.items()]
    return "\n".join(out) + "\n"


def _toml(v: Any) -> str:
    if v is None:
        return "(unset)"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | Path):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml(k)} = {_toml(x)}" for k, x in v.items()) + "}"
    return str(v)
