"""``beiand isms serve``: one CU for the licence (issue 30; docs/isms.md, One CU for the licence).

A licensee has one ``idcId`` and one CU towards the provincial SMMS, and an EU at every point of
access (ISMS.md §1, §4). This process is that CU for a fleet of gateways that follow one decision
store (DESIGN.md, Fleet):

- it serves ``idc_command`` and writes each command to the decision store, where every gateway
  (``isms.mode = "fleet"``) applies it through its overlays;
- it acks each command (``idc_commandack``) with what the fleet did: applied on every gateway in
  its scope that is up, those that have not applied it yet counted (``beiand/isms/fleet.py``),
  and acks again once the late ones have;
- it writes the reports from the fleet's copy in ClickHouse (every gateway), else from the log
  of the host it runs on: DT 3, 4/5, 8, 9, DT 7 per house with the gateways' state, DT 1 basic
  data from the inventory and the records, and uploads them;
- it checks the basic data SMMS manages (type 0) against the inventory.

It runs as its own systemd unit (``systemd/beiand-isms.service``, ``Type=notify``, SIGHUP
reloads the config, the inventory, the records and the secrets), exporting its metrics on
``isms.metrics_listen``. CU-lite inside ``beiand run`` stays for a single gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from beiand.accesslog.source import RecordSource
from beiand.isms.fleet import AckTracker, GatewayView, basic_mismatches, house_states, view
from beiand.isms.reports import filed_domain
from beiand.isms.service import Ack
from beiand.isms.transport.upload import Uploader
from beiand.isms.wire.codes import AckType
from beiand.runtime.isms import IsmsRuntime
from beiand.runtime.sdnotify import sd_notify, watchdog_interval
from beiand.runtime.settings import Config, IsmsSection
from beiand.runtime.wiring import State, StateError, file_mtime, load_state, read_secret, records_source
from beiand.store import StoreError

log = logging.getLogger("beiand.isms")
TICK_S = 0.25


class CuMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.gateways = Gauge("beiand_isms_fleet_gateways", "gateways following the decision store, by state (up, down)",
                              ["state"], registry=r)
        self.behind = Gauge("beiand_isms_gateways_behind", "up gateways that have not applied a command in their scope yet",
                            registry=r)
        self.unapplied = Gauge("beiand_isms_command_unapplied_seconds", "age of the oldest command an up gateway in its "
                               "scope has not applied (0: none)", registry=r)
        self.houses = Gauge("beiand_isms_houses", "houses (机房) reported in DT 7, by state (ok, faulty)", ["state"], registry=r)
        self.waiting = Gauge("beiand_isms_acks_waiting", "acks held until the fleet applies their command", registry=r)
        self.mismatches = Gauge("beiand_isms_basic_mismatches", "hosted prefixes the basic data (type 0) does not register "
                                "as the inventory says (未登记, another house, reserved)", registry=r)
        self.store_up = Gauge("beiand_isms_store_up", "1 while the decision store answers the CU", registry=r)
        self.fleet_acks = Counter("beiand_isms_fleet_acks", "acks of commands by what the fleet did (all, some, none, "
                                  "update)", ["result"], registry=r)


class CuRuntime(IsmsRuntime):
    """The ISMS runtime of a gateway, made the licence's CU: the store, not a snapshot; acks held
    for the fleet; reports from every gateway; DT 7 per house."""

    CU = True

    def __init__(self, state: State, registry: CollectorRegistry, clock: Any = time.time) -> None:
        self.state = state
        super().__init__(state.config, registry, clock=clock)
        self.cu_metrics = CuMetrics(registry)
        im = state.config.isms
        self.tracker = AckTracker(im.ack_wait, im.ack_follow, im.ack_update)
        self.outbox: list[Ack] = []
        self.fleet: list[GatewayView] = []
        self.store_error = ""
        self.mismatches: list[str] = []
        self._mismatch_key: tuple[int, int] = (-1, -1)
        self.forced: list[str] = []  # what POST /api/v1/isms/report asked for
        self._bind(state)

    def _bind(self, state: State) -> None:
        from beiand.isms.store import inventory_houses

        self.state = state
        self.reporter.inventory = state.inventory
        self.store.inventory_houses = inventory_houses(state.inventory.prefixes)  # "not for this house" knows them
        self.reporter.filed_name = lambda number, name: filed_domain(self.state.index, number, name)
        self.basic_source = lambda: (self.state.inventory.prefixes, self.state.index.filings,
                                     tuple(self.state.config.records.provider))

    # -- what the gateway runtime does differently ----------------------------------------------

    def records_for(self, cfg: Config) -> RecordSource | None:
        """Every gateway's records in the fleet's copy (``isms.gateways`` narrows it), else the log here."""
        if not cfg.accesslog.clickhouse.url:
            return None
        gws = [g.strip() for g in cfg.isms.gateways if g.strip() and g.strip() != "*"]
        return records_source(cfg, tuple(gws))

    def uploader_for(self, im: IsmsSection) -> Uploader | None:
        return Uploader(im.upload_url, im.upload_key_file, self.spool.directory) if im.upload_url else None

    def ack_queue(self) -> list[Ack]:
        return self.outbox

    def houses(self) -> tuple[int, list[str]]:
        every, faulty = house_states(self.fleet, self.known_houses())
        if not every and self.cfg.isms.house_id:  # no house named anywhere: the one configured
            every = [self.cfg.isms.house_id]
            faulty = every if not any(g.up and g.healthy for g in self.fleet) else []
        self.cu_metrics.houses.labels("ok").set(len(every) - len(faulty))
        self.cu_metrics.houses.labels("faulty").set(len(faulty))
        return len(every), faulty

    def known_houses(self) -> set[str]:
        """The houses of the licence: the inventory's, and those the basic data (type 0) lists."""
        return {p.house for p in self.state.inventory.prefixes if p.house} | set(self.store.state.houses)

    # -- one round ------------------------------------------------------------------------------

    def sync(self) -> None:
        """Blocking: catch up with the store (the commands others wrote), read the fleet."""
        if self.store.decisions is None:
            return
        try:
            if self.store.lock.acquire(blocking=False):  # not while a command is being written
                try:
                    self.store.sync()
                finally:
                    self.store.lock.release()
            rows = self.store.decisions.gateways()
        except StoreError as exc:
            if self.store_error != str(exc):
                log.error("isms: decision store: %s (acks wait, commands are refused until it answers)", exc)
            self.store_error = str(exc)
            self.cu_metrics.store_up.set(0)
            return
        if self.store_error:
            log.warning("isms: decision store answers again")
        self.store_error = ""
        self.cu_metrics.store_up.set(1)
        im = self.cfg.isms
        self.fleet = view(rows, self.clock(), im.gateway_down_after, im.gateway_retired_after)

    def settle(self) -> None:
        """The acks the endpoint queued go to the tracker; those the fleet settled, to the outbox."""
        now = self.clock()
        new = [self.service.acks.pop(0) for _ in range(len(self.service.acks))]
        for i, a in enumerate(new):
            if a.type == AckType.BASIC_DATA and a.msg.startswith("basic data"):
                new[i] = self._checked(a)
        self.tracker.add(new, now)
        if not self.store_error:
            for a in self.tracker.due(self.fleet, now):
                self.outbox.append(a)
                self.cu_metrics.fleet_acks.labels("update" if "applied on all" in a.msg else a.result.name.lower()).inc()
        m = self.cu_metrics
        m.gateways.labels("up").set(sum(1 for g in self.fleet if g.up))
        m.gateways.labels("down").set(sum(1 for g in self.fleet if not g.up))
        n, oldest = self.tracker.behind(self.fleet, now)
        m.behind.set(n)
        m.unapplied.set(oldest)
        m.waiting.set(sum(1 for p in self.tracker.pending if p.first))
        self.check_basic()

    def _checked(self, a: Ack) -> Ack:
        """A type 0 ack says how the basic data stored compares with the inventory."""
        import dataclasses

        self._mismatch_key = (-1, -1)
        self.check_basic()
        if not self.mismatches:
            return dataclasses.replace(a, msg=f"{a.msg}; inventory agrees")
        msg = f"{a.msg}; inventory: {len(self.mismatches)} mismatch(es): {'; '.join(self.mismatches)}"
        return dataclasses.replace(a, msg=msg[:1024])

    def check_basic(self) -> None:
        """The basic data (type 0) against the inventory, when either changed."""
        key = (id(self.state.inventory), hash(repr(sorted(self.store.state.houses.items()))))
        if key == self._mismatch_key:
            return
        self._mismatch_key = key
        if not self.store.state.houses:
            self.mismatches = []
        else:
            self.mismatches = basic_mismatches(self.store.state.houses, self.state.inventory.prefixes)
            for w in self.mismatches[:20]:
                log.warning("isms: basic data (type 0) against the inventory: %s", w)
        self.cu_metrics.mismatches.set(len(self.mismatches))

    async def tick(self, healthy: bool = True) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.sync)
        self.settle()
        what = self.due(self.clock())
        if self.forced:
            what = sorted({*what, *self.forced})
            self.forced = []
        if what or self._pending_queries or self.outbox:
            await loop.run_in_executor(None, self.run_due, what)
        else:
            self.update_metrics()

    def status(self) -> dict[str, Any]:
        out = super().status()
        every, faulty = house_states(self.fleet, self.known_houses())
        out.update({"cu": True, "store_error": self.store_error or None, "store_version": self.store.version,
                    "gateways": [{"gateway": g.name, "version": g.version, "up": g.up, "why": g.why or None,
                                  "healthy": g.healthy, "houses": list(g.houses), "heartbeat_at": g.heartbeat_at}
                                 for g in self.fleet],
                    "houses": every, "faulty_houses": faulty, "acks_pending": self.tracker.status(self.fleet),
                    "acks_outbox": len(self.outbox), "basic_mismatches": self.mismatches})
        return out


# -- the process -----------------------------------------------------------------------------


def _app(cu: CuRuntime, registry: CollectorRegistry, token: str = "", reload: Any = None) -> web.Application:
    """/metrics, /healthz, /readyz, /api/v1/isms/status; with the bearer token (server.token_file):
    POST /api/v1/isms/report (DT 1, 7, 8, 9, 4/5 now, as the timers would) and /api/v1/reload."""
    from beiand.runtime.http import _guarded

    async def metrics(_req: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_req: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(_req: web.Request) -> web.Response:
        problems = [f"decision store: {cu.store_error}"] if cu.store_error else []
        return web.json_response({"ready": not problems, "problems": problems}, status=503 if problems else 200)

    async def status(_req: web.Request) -> web.Response:
        return web.json_response(cu.status(), dumps=lambda o: json.dumps(o, default=str))

    async def report(req: web.Request) -> web.Response:
        return _guarded(req, token, lambda: cu.forced.extend(["heartbeat", "report", "basic"]), {"report": "requested"})

    async def reload_(req: web.Request) -> web.Response:
        return _guarded(req, token, reload or (lambda: None), {"reload": "requested"})

    app = web.Application()
    app.router.add_post("/api/v1/isms/report", report)
    app.router.add_post("/api/v1/reload", reload_)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/isms/status", status)
    return app


class Serve:
    """The CU process: load, serve, tick, reload on SIGHUP or a changed file, stop on SIGTERM."""

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.reload_requested = ""
        self.stopping = asyncio.Event()

    def _watched(self, state: State) -> dict[str, float]:
        files = dict(state.mtimes)
        bf = state.config.isms.basic_file
        if bf is not None:
            files[str(bf)] = file_mtime(str(bf))
        return files

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            state = await loop.run_in_executor(None, load_state, self.config_path)
        except StateError as exc:
            log.error("%s: %s", self.config_path, exc)
            return 2
        cfg = state.config
        from beiand.runtime.isms import check

        problem = "" if cfg.isms.enabled else "isms.enabled is false"
        problem = problem or check(cfg) or ("" if cfg.isms.ack_url else "isms.ack_url: required (SMMS's idc_commandack)")
        if problem:
            log.error("%s: isms: %s", self.config_path, problem)
            return 2
        registry = CollectorRegistry()
        cu = CuRuntime(state, registry)
        if not cfg.isms.upload_url:
            log.warning("isms: isms.upload_url unset: the data files stay in %s for another collector", cu.spool.directory)
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: setattr(self, "reload_requested", "SIGHUP"))
        await cu.start()
        host, _, port = cfg.isms.metrics_listen.rpartition(":")
        try:
            token = (read_secret(cfg.server.token_file, cfg.daemon.secret_permissions).decode().strip()
                     if cfg.server.token_file else "")
        except (StateError, OSError) as exc:
            log.error("%s: server.token_file: %s", self.config_path, exc)
            return 2
        runner = web.AppRunner(_app(cu, registry, token, lambda: setattr(self, "reload_requested", "POST /api/v1/reload")),
                               access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        log.info("isms serve: the CU of %s for %s; metrics on %s", cfg.isms.idc_id, cu.store.decisions.url if cu.store.decisions
                 else "?", cfg.isms.metrics_listen)
        await cu.tick()
        sd_notify(f"READY=1\nSTATUS=CU of {cfg.isms.idc_id}: {len(cu.fleet)} gateway(s)")
        wd = watchdog_interval()
        next_wd = next_watch = 0.0
        mtimes = self._watched(state)
        try:
            while not self.stopping.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), TICK_S)
                if self.stopping.is_set():
                    break
                try:
                    await cu.tick()
                except Exception:  # a bug must not stop the CU: logged, the next round tries again
                    log.exception("isms serve: tick")
                now = time.monotonic()
                if wd and now >= next_wd:
                    sd_notify("WATCHDOG=1")
                    next_wd = now + wd
                if now >= next_watch:
                    next_watch = now + (cu.cfg.daemon.watch_interval or 5.0)
                    if any(file_mtime(p) != m for p, m in mtimes.items()) and cu.cfg.daemon.watch_interval:
                        self.reload_requested = self.reload_requested or "file change"
                if self.reload_requested:
                    why, self.reload_requested = self.reload_requested, ""
                    mtimes = await self.reload(cu, why) or mtimes
        finally:
            sd_notify("STOPPING=1")
            await runner.cleanup()
            await cu.close()
            if cu.store.decisions is not None:
                cu.store.decisions.close()
        return 0

    async def reload(self, cu: CuRuntime, why: str) -> dict[str, float] | None:
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            try:
                new = await asyncio.get_running_loop().run_in_executor(None, load_state, self.config_path, cu.state)
            except StateError as exc:
                log.error("isms serve: reload (%s) refused, keeping the old state: %s", why, exc)
                return self._watched(cu.state)  # not the same broken files again until they change
            try:
                cu.reload(new.config)
            except (ValueError, OSError) as exc:
                log.error("isms serve: reload (%s): [isms] kept as it was: %s", why, exc)
            cu._bind(new)
            im = cu.cfg.isms
            cu.tracker.wait, cu.tracker.follow, cu.tracker.update = im.ack_wait, im.ack_follow, im.ack_update
            log.info("isms serve: reload (%s): %d filings, %d hosted prefixes", why, new.index.stats().filings,
                     len(new.inventory))
            return self._watched(new)
        finally:
            sd_notify("READY=1")


def serve(config_path: str | Path) -> int:
    return asyncio.run(Serve(str(config_path)).main())
