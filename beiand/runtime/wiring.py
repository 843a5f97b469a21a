"""Settings → components: the one place that turns the config into what decides.

The daemon, ``replay``, ``audit``, ``records lookup`` and ``check-config`` all build their
policy here, so they decide alike (issue 13: one answer everywhere; DESIGN.md ``wiring``). The
daemon's whole ``State`` (config, records, inventory, policy; ``load_state``), the decider with
its overlays (``decider``: the same in every command) and a worker's enforcer (``make_enforcer``)
are built here too.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from beiand.accesslog import AccessLog, LogConfig
from beiand.capture.bpf import Insn
from beiand.capture.bpf import build as build_bpf
from beiand.capture.filterexpr import Condition
from beiand.capture.live import LiveCapture
from beiand.enforce import Enforcer, EnforceSettings, Injector
from beiand.enforce.nfqueue import Marks
from beiand.enforce.nft import Nft, NftError
from beiand.errors import BeiandError
from beiand.model import Mode
from beiand.net.decoder import DecoderConfig
from beiand.policy import Policy, PolicyConfig, PolicyError
from beiand.policy.history import record_load
from beiand.policy.inventory import Inventory, InventoryError, load_inventory
from beiand.policy.nat import NatError, NatTable, load_nat
from beiand.policy.overlays import Decider, Layer, OrderLayer
from beiand.records import ImportRefused, build_index, load_files, normalise_domain
from beiand.records.domains import DomainError
from beiand.records.index import RecordIndex
from beiand.runtime.settings import ClickHouseSection, Config, ConfigError, load_config, secret_problem
from beiand.sinks import Sink
from beiand.sinks.accesslog import AccessLogSink

if TYPE_CHECKING:
    from beiand.accesslog.source import RecordSource
    from beiand.runtime.http import HttpLimits
    from beiand.runtime.register import Applied
    from beiand.sinks.clickhouse import ClickHouseSink
    from beiand.sinks.fleet import FleetRecords

log = logging.getLogger("beiand")


def policy_config(cfg: Config) -> PolicyConfig:
    """The policy every command builds from the config: the daemon, ``replay``, ``audit``,
    ``records lookup`` and ``/api/v1/lookup`` all decide from this one (issue 13: one answer
    everywhere). Raises ``ConfigError`` naming the field."""
    problems: list[tuple[str, str]] = []

    def names(dotted: str, items: list[str]) -> list[str]:
        out = []
        for n in items:
            try:
                out.append(normalise_domain(n[2:] if n.startswith("*.") else n))
            except DomainError as exc:
                problems.append((dotted, f"{n!r}: {exc.reason}"))
        return out

    allow = names("policy.allow", cfg.policy.allow)
    suffixes = names("policy.allow_suffixes", cfg.policy.allow_suffixes)
    for i, p in enumerate(cfg.policy.allow_prefixes):
        try:
            ipaddress.ip_network(p, strict=False)
        except ValueError:
            problems.append(("policy.allow_prefixes", f"item {i + 1}: {p!r} is not a CIDR prefix"))
    if problems:
        raise ConfigError([f"{d}: {w}" for d, w in problems], problems)
    provider = [p.strip() for p in cfg.records.provider if p.strip()]
    try:
        return PolicyConfig(
            provider=provider[0] if provider else "", providers=tuple(provider[1:]), allow_names=frozenset(allow),
            allow_suffixes=tuple(suffixes),
            allow_prefixes=tuple(str(ipaddress.ip_network(p, strict=False)) for p in cfg.policy.allow_prefixes),
            default_mode=Mode(cfg.policy.default_mode), pending_mode=Mode(cfg.policy.pending_mode) if cfg.policy.pending_mode else None,
            access_pending_grace_days=cfg.policy.grace_days)
    except PolicyError as exc:
        raise ConfigError([f"policy: {exc}"], [("policy", str(exc))]) from None


def decoder_config(cfg: Config) -> DecoderConfig:
    """The decoder of a capture worker: watched ports and the reassembly bounds (issue 17)."""
    ra = cfg.reassembly
    cn = cfg.connections
    return DecoderConfig(tcp_ports=frozenset(cfg.capture.tcp_ports), udp_ports=frozenset(cfg.capture.udp_ports),
                         # passive, the capture filter passes an odd port's first segment only (capture.bpf)
                         any_port=cfg.capture.any_port, odd_rest=cfg.enforce.inline, inline=cfg.enforce.inline,
                         max_flow_bytes=ra.max_flow_bytes, max_flow_holes=ra.max_holes, reassembly_tcp_bytes=ra.tcp_bytes,
                         reassembly_quic_bytes=ra.quic_bytes, reassembly_fragment_bytes=ra.fragment_bytes,
                         conns=cn.enabled, conn_window=cn.window, conn_udp_idle=cn.udp_idle_timeout,
                         conn_tcp_idle=cn.tcp_idle_timeout, conn_max=cn.max_pending, conn_attempts=cfg.connections.attempts,
                         url_max=cn.url_max_length,
                         url_query=cn.url_query, name_packets=name_packets(cfg), name_seconds=ra.name_seconds,
                         body_follow=ra.body_follow)


def name_packets(cfg: Config) -> int:
    """The name budget in packets: ``reassembly.name_packets``, or (0) 6, and inline never more
    than the kernel queues of a flow's data (``enforce.connbytes`` less the SYN and the ACK)."""
    if cfg.reassembly.name_packets:
        return cfg.reassembly.name_packets
    default = DecoderConfig.name_packets
    return max(2, min(default, cfg.enforce.connbytes - 2)) if cfg.enforce.inline else default


@dataclass
class State:
    """Everything loaded from files: replaced as a whole on reload, never in part."""

    config: Config
    index: RecordIndex
    inventory: Inventory
    policy: Policy
    loaded_at: float
    nat: NatTable = field(default_factory=lambda: NatTable([]))
    mtimes: dict[str, float] = field(default_factory=dict)
    # The export's age is its file's mtime (the CSV/JSON/XLSX exports carry no export time of
    # their own): the oldest of records.files, taken when they were loaded, so records kept in
    # service after a refused reload keep ageing.
    records_mtime: float = 0.0
    # The register version the records, inventory and NAT feed are in force at (0: not kept in the
    # decision store's register): each access-log record carries it.
    register_version: int = 0
    # records.source = "store", at start: the fetched version refused against the one last applied
    # (the state is that one); the supervisor reports it as a refused reload
    register_refused: RecordsRefused | None = None


class StateError(BeiandError):
    pass


class RecordsRefused(StateError):
    """The records of a reload were refused; the index in service stays."""

    def __init__(self, message: str, files: Sequence[str], offered: int | None, in_service: int) -> None:
        super().__init__(message)
        self.files = list(files)
        self.offered = offered  # valid filings in the refused files (None: unreadable)
        self.in_service = in_service


def load_config_state(config_path: str) -> Config:
    """The config alone, as ``load_state`` reads it (StateError: invalid)."""
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise StateError(str(exc)) from None


def load_state(config_path: str, previous: State | None = None) -> State:
    """Config, records, inventory and policy, built to the side.

    With ``previous`` (every reload: SIGHUP, a file change, ``POST /api/v1/reload``), the new
    records must not lose more than ``records.max_loss`` of the filings in service: a truncated
    export would otherwise turn filed sites "unfiled" at once (DESIGN.md failure rules).
    """
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        raise StateError(str(exc)) from None
    for w in cfg.warnings:
        log.warning("config: %s", w)
    if cfg.records.source == "store":
        return _state_from_register(config_path, cfg, previous)
    files = [str(p) for p in cfg.records.files]
    in_service = len(previous.index.filings) if previous is not None else 0
    result = None
    try:
        result = load_files(files, strict=cfg.records.strict, status_map=cfg.records.status_map)
        index = build_index(result, previous=previous.index if previous is not None else None, max_loss=cfg.records.max_loss,
                            loaded_at=time.time())
    except ImportRefused as exc:
        offered = len(result.filings) if result is not None else None
        guard = f" (records.max_loss = {cfg.records.max_loss:g})" if offered and offered < in_service else ""
        raise RecordsRefused(f"records refused: {', '.join(files)}: {exc}{guard}", files, offered, in_service) from None
    for e in result.errors[:20]:
        log.warning("records: skipped %s", e)
    try:
        inv = load_inventory(str(cfg.inventory.file)) if cfg.inventory.file else Inventory([])
    except InventoryError as exc:
        raise StateError("inventory invalid: " + "; ".join(exc.problems)) from None
    try:
        nat = load_nat(cfg.inventory.nat_file) if cfg.inventory.nat_file else NatTable([])
    except NatError as exc:
        raise StateError("inventory.nat_file invalid: " + "; ".join(exc.problems[:20])) from None
    try:
        pcfg = policy_config(cfg)
    except ConfigError as exc:
        raise StateError(f"policy: {exc}") from None
    watched = [*files, *([str(cfg.inventory.file)] if cfg.inventory.file else []),
               *([str(cfg.inventory.nat_file)] if cfg.inventory.nat_file else []), config_path]
    mtimes = {p: file_mtime(p) for p in watched}
    records_mtime = min((mtimes[p] for p in files), default=0.0)
    return State(cfg, index, inv, Policy(index, inv, pcfg), time.time(), nat, mtimes, records_mtime)


def _state_from_register(config_path: str, cfg: Config, previous: State | None) -> State:
    """``records.source = "store"``: the register's version as this gateway's copy holds it (the
    supervisor's ``register.Applier`` fetched it by content), guarded like a reload of files. At
    start (no ``previous``) the fetched version is guarded against the last one applied (kept
    apart): refused, the gateway starts from the applied one and the state says so."""
    from beiand.runtime.register import accept_candidate, applied_copy, read_copy, take_candidate
    from beiand.store import StoreError
    from beiand.store.register import read_header

    sd = cfg.daemon.state_dir
    try:
        applied = read_copy(sd, take_candidate(sd))
    except (StoreError, OSError) as exc:
        raise StateError(f"records: {exc} (records.source = \"store\": the gateway fetches the register's version from "
                         "the decision store; `beiand records import FILE` publishes one)") from None
    index, inv, nat = _register_state(cfg, applied)
    refused: RecordsRefused | None = None
    in_service = len(previous.index.filings) if previous is not None else 0
    if previous is None:  # a start: the last version applied is what the fetched one is guarded against
        held = None
        last = applied_copy(sd) / "records.snapshot"
        if last.exists():
            try:
                held = read_header(last)
            except StoreError as exc:
                log.error("%s: the fetched version is applied unguarded", exc)
        if held is not None and applied.records is not None and held.version != applied.records.version:
            in_service = held.rows
    if in_service and len(index.filings) < in_service * (1.0 - cfg.records.max_loss):
        refused = RecordsRefused(f"records refused: register version {applied.version}: {len(index.filings)} filings "
                                 f"against {in_service} in service (records.max_loss = {cfg.records.max_loss:g})",
                                 [f"register v{applied.version}"], len(index.filings), in_service)
        if previous is not None:
            raise refused
        try:  # a start: from the version last applied (it passed the guard then)
            applied = read_copy(sd, applied_copy(sd))
        except StoreError as exc:
            raise StateError(f"{refused}; the copy last applied: {exc}") from None
        index, inv, nat = _register_state(cfg, applied)
        log.error("%s: starting from register version %d, the one last applied", refused, applied.version)
    try:
        pcfg = policy_config(cfg)
    except ConfigError as exc:
        raise StateError(f"policy: {exc}") from None
    if refused is None:
        try:
            accept_candidate(sd)
        except OSError as exc:
            log.error("register: the copy applied is not kept under %s: %s", sd, exc)
    mtimes = {p: file_mtime(p) for p in [config_path]}
    v = applied.records
    return State(cfg, index, inv, Policy(index, inv, pcfg), time.time(), nat, mtimes, v.at if v else 0.0, applied.version,
                 refused)


def _register_state(cfg: Config, applied: Applied) -> tuple[RecordIndex, Inventory, NatTable]:
    try:
        return applied.index(), applied.inventory(), applied.nat()
    except (ValueError, KeyError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        # a copy that passed its SHA-256 but does not decode: never judged with (start fails, a
        # reload keeps the state in service)
        raise StateError(f"records: register version {applied.version}: this gateway's copy under "
                         f"{cfg.daemon.state_dir / 'register'} does not decode ({type(exc).__name__}: {exc}): not applied") from None


def note_inventory(state: State) -> None:
    """Record that ``state``'s inventory took effect now (the inventory history under
    daemon.state_dir: who held an address at a past time). A failure is logged, never fatal."""
    cfg = state.config
    try:
        record_load(cfg.daemon.state_dir, cfg.inventory.file, int(state.loaded_at * 1000))
    except OSError as exc:
        log.error("inventory history: not recorded under %s: %s (past holders of addresses cannot be told for "
                  "this load)", cfg.daemon.state_dir, exc)


def file_mtime(p: str) -> float:
    try:
        return os.stat(p).st_mtime
    except OSError:
        return 0.0


def read_secret(path: Path, permissions: str) -> bytes:
    """A secret file, checked again as it is read (it may have changed since the config was
    checked): readable by group or others is refused unless ``daemon.secret_permissions = "warn"``."""
    why = secret_problem(path)
    if why:
        if permissions != "warn":
            raise StateError(f"{why} (daemon.secret_permissions = \"warn\" accepts it)")
        log.warning("%s", why)
    return path.read_bytes()


def make_enforcer(cfg: Config) -> Enforcer:
    """A worker's enforcer: it acts on finished decisions (the overlays are the decider's)."""
    e = cfg.enforce
    settings = EnforceSettings(inline=e.inline, quic_block_seconds=e.quic_block_seconds,
                               max_blocks_per_minute=e.max_blocks_per_minute,
                               max_unfiled_share=e.max_unfiled_share, min_verdicts_for_share=e.min_verdicts_for_share,
                               contact=e.contact, provider_name=e.provider_name)
    injector: Injector | None = None
    nft: Nft | None = None
    try:
        injector = Injector()
    except OSError as exc:
        log.warning("enforcement: no raw socket (%s): resets and block pages are unavailable", exc)
    try:
        nft = Nft()
    except NftError as exc:
        log.warning("enforcement: %s: QUIC and IP blocks are unavailable", exc)
    return Enforcer(settings, injector, nft)


def layers(cfg: Config, state_dir: Path | None = None, *, live: bool = False, inventory: Inventory | None = None) -> list[Layer]:
    """The overlays every command decides with: closure orders, the operator's exemptions, sponsor
    cases past their deadline (issue 31), the authority's lists of unfiled sites (``authority.block``)
    and, with ``[isms]`` on, the regulator's commands.

    ``live`` (the daemon's workers and supervisor): read from the snapshot files in
    ``daemon.state_dir`` that the supervisor writes from the decision store (runtime.decisions);
    a damaged file is logged, that overlay starts empty and takes the file once it is mended
    (``Layer.reload``), so a bad write never stops the gateway's access log. Live, the regulator's
    history is compiled only for the last hour (``CommandRules.live``).

    Otherwise (replay, lookups, ``audit --pcap``): folded from the decision store itself, so they
    judge with what the store holds whether or not a daemon runs here; with the store unreachable,
    from the snapshot (logged). ``state_dir`` given: that directory's SQLite store, else its
    snapshot (a copy of a gateway's state). A damaged file is then a ``StateError`` naming it."""
    from beiand.policy.authority import AuthorityLayer
    from beiand.policy.overlays import CaseLayer, ExemptionLayer

    d = state_dir if state_dir is not None else cfg.daemon.state_dir
    folded = None
    from beiand.store.connect import is_postgres, sqlite_path

    scfg = cfg
    if state_dir is not None:  # another state directory: its own SQLite store, if it has one
        scfg = dataclasses.replace(cfg, daemon=dataclasses.replace(cfg.daemon, state_dir=state_dir),
                                   store=dataclasses.replace(cfg.store, url=""))
    if not live and (is_postgres(scfg.store.url) or sqlite_path(scfg.store.url, d).exists()):
        from beiand.runtime.decisions import fold_store, open_decisions
        from beiand.store import StoreError

        try:
            store = open_decisions(scfg, migrate=False, import_files=False, create=False)
            try:
                folded = fold_store(scfg, store)
            finally:
                store.close()
        except StoreError as exc:
            log.warning("%s: judging with the snapshot in %s", exc, d)
    block = cfg.authority.block
    if folded is not None:
        out: list[Layer] = [OrderLayer(folded.orders), ExemptionLayer(folded.exemptions), CaseLayer(folded.cases),
                            AuthorityLayer(folded.authority, block)]
    else:
        out = [OrderLayer.from_state_dir(d), ExemptionLayer.from_state_dir(d), CaseLayer.from_state_dir(d),
               AuthorityLayer.from_state_dir(d, block)]
    if cfg.isms.enabled:
        from beiand.isms.store import CommandRules, inventory_houses  # the ISMS stack only where it is on
        from beiand.isms.wire.profile import ProfileError, load_profile

        try:
            subdomains = load_profile(cfg.isms.profile).subdomains
        except ProfileError as exc:
            raise StateError(f"isms.profile: {exc}") from None
        out.append(CommandRules(d, subdomains, cfg.isms.house_id, live=live,
                                store=folded.commands if folded is not None else None,
                                houses=inventory_houses(inventory.prefixes) if inventory is not None else None))
    for layer in out:
        if layer.error and not live:
            raise StateError(layer.error)
        if layer.error:
            log.error("%s: the %s overlay starts empty and takes the file once it is mended", layer.error, layer.name)
    return out


def decider(cfg: Config, policy: Policy, state_dir: Path | None = None, *, live: bool = False) -> Decider:
    """The one decider (the records' verdict and the overlays) of the daemon's workers, ``replay``,
    ``records lookup``, ``/api/v1/lookup`` and ``audit --pcap`` (issue 26: replay = daemon)."""
    return Decider(policy, layers(cfg, state_dir, live=live, inventory=policy.inventory), grace_seconds=cfg.enforce.grace_seconds)


def inline_marks(cfg: Config) -> Marks:
    """Inline mode's mark bits (``enforce.mark``): the rules and every worker's verdicts use the same."""
    return Marks.from_base(cfg.enforce.mark)


def capture_filter(cfg: Config) -> list[Insn]:
    """The capture rings' kernel filter. Inline, the watched ports' packets that can name a flow
    arrive through NFQUEUE and AF_PACKET carries the DNS answers; with connection records (issue 19)
    it also carries the SYN, FIN and RST of every TCP flow (none of which is queued) and UDP on
    ports that are not watched, so no packet comes both ways and none is decoded twice. With
    several workers the ring's fanout and NFQUEUE's balance hash differently, so a watched port's
    SYN/FIN/RST stay off the ring too: that flow's record comes from the worker its queued packet
    reached (a watched-port connection that never sends a byte then leaves no record)."""
    inline = cfg.enforce.inline
    return build_bpf(() if inline else cfg.capture.tcp_ports, () if inline else cfg.capture.udp_ports, dns=cfg.capture.dns,
                     connections=cfg.connections.enabled, condition=Condition(cfg.capture.filter) if cfg.capture.filter else None,
                     queued_udp=cfg.capture.udp_ports if inline else (),
                     # several workers: a watched flow's SYN and its queued packet may reach two of them
                     queued_tcp=cfg.capture.tcp_ports if inline and cfg.workers > 1 else (),
                     # issue 32: passive, an odd port's first bytes; inline they come through the queue
                     any_port=cfg.capture.any_port and not inline, queued_any_port=cfg.capture.any_port and inline)


def live_captures(cfg: Config, fanout_group: int) -> list[LiveCapture]:
    """A worker's AF_PACKET rings, one per interface, with the kernel filter (BPF) for its ports."""
    ifaces = cfg.capture.interfaces
    prog = capture_filter(cfg)
    return [LiveCapture(i, prog, fanout_group=fanout_group, block_size=cfg.capture.ring_block_kib * 1024,
                        blocks=cfg.capture.ring_blocks, outgoing=len(ifaces) == 1,
                        block_timeout_ms=cfg.capture.ring_block_timeout_ms, version=cfg.capture.ring_version) for i in ifaces]


def access_log_sinks(cfg: Config, idx: int, nat: NatTable | None = None,
                     records_version: int = 0) -> tuple[AccessLog, ClickHouseSink | None, list[Sink]]:
    """A worker's access log (its own partition), ClickHouse when configured, and the sinks that
    feed them. The local chained log gets every record whatever else is configured (DESIGN.md,
    Fleet: the evidence of record); ClickHouse gets a copy of what the log has made durable, with
    each record's chain fields (``on_commit``), and the log's checkpoints as anchors. Close the
    log before the ClickHouse sink: closing the log hands over its last records."""
    al = cfg.accesslog
    key = read_secret(al.hmac_key_file, cfg.daemon.secret_permissions).strip() if al.hmac_key_file else None
    ch = None
    if al.clickhouse.url:
        from beiand.sinks.clickhouse import ClickHouseSink  # aiohttp: only for a daemon that writes to ClickHouse

        c = al.clickhouse
        ch = ClickHouseSink(c.url, c.spill_dir or al.directory / "spill", database=c.database, table=c.table, user=c.user,
                            password=read_secret(c.password_file, cfg.daemon.secret_permissions).decode().strip()
                            if c.password_file else "", worker=idx,
                            batch_records=c.batch_records, retention_days=al.retention_days, cluster=c.cluster)
    # Checkpoints also go off the machine: the journal (a log line) and, when configured, ClickHouse.
    alog = AccessLog(LogConfig(al.directory, worker=idx, gateway=cfg.gateway, retention_days=al.retention_days,
                               commit_interval=al.commit_interval, commit_records=al.commit_records, max_buffer=al.max_buffer,
                               key=key, checkpoint_interval=al.checkpoint_interval,
                               partition_records=al.partition_records),
                     on_checkpoint=ch.anchor if ch is not None else None,
                     on_commit=ch.committed if ch is not None else None)
    if ch is not None:  # what the log committed before a stop and the copy never got
        ch.backfill(al.directory, alog.sequence, key)
    sinks: list[Sink] = [AccessLogSink(alog, cfg.gateway, nat=nat if nat else None,
                                       records_version=str(records_version) if records_version else "")]
    return alog, ch, sinks


def fleet_records(cfg: Config | None, *, url: str = "", database: str = "", table: str = "",
                  gateways: Sequence[str] = ()) -> FleetRecords:
    """The fleet's copy in ClickHouse as a records source (issue 27): ``[accesslog.clickhouse]``'s
    URL, database, table, user and password (each given value wins), read by every gateway's
    records or only ``gateways``'."""
    from beiand.sinks.clickhouse import ClickHouseReader  # only for a command that reads ClickHouse
    from beiand.sinks.fleet import FleetRecords

    c = cfg.accesslog.clickhouse if cfg is not None else ClickHouseSection()
    password = ""
    if cfg is not None and c.password_file:
        try:
            password = read_secret(c.password_file, cfg.daemon.secret_permissions).decode().strip()
        except OSError as exc:
            raise StateError(f"accesslog.clickhouse.password_file {c.password_file}: {exc.strerror}") from None
    reader = ClickHouseReader(url or c.url, database=database or c.database, table=table or c.table, user=c.user,
                              password=password)
    return FleetRecords(reader, gateways)


def isms_gateways(cfg: Config) -> tuple[str, ...]:
    """The gateways the ISMS reports cover when they read the fleet's copy (``isms.gateways``):
    this gateway only by default, every one for ``["*"]`` (an empty scope)."""
    gws = [g.strip() for g in cfg.isms.gateways if g.strip()]
    if "*" in gws:
        return ()
    return tuple(gws) or (cfg.gateway,)


def records_source(cfg: Config, gateways: Sequence[str] = ()) -> RecordSource:
    """Where the read side takes records from (issue 27): the fleet's copy in ClickHouse when
    ``[accesslog.clickhouse] url`` is set (scoped to ``gateways``, empty: all), else this
    gateway's embedded log."""
    from beiand.accesslog.source import LocalRecords

    if cfg.accesslog.clickhouse.url:
        return fleet_records(cfg, gateways=gateways)
    return LocalRecords(cfg.accesslog.directory)


def http_limits(cfg: Config) -> HttpLimits:
    from beiand.runtime.http import HttpLimits  # aiohttp: only for the daemon, not for every command

    srv = cfg.server
    return HttpLimits(header_timeout=srv.header_timeout, request_timeout=srv.request_timeout, max_connections=srv.max_connections,
                      max_body_bytes=srv.max_body_bytes, max_line_bytes=srv.max_line_bytes)
