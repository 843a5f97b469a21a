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
import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from beiand.accesslog.source import RecordSource
from beiand.errors import BeiandError
from beiand.isms.basicinfo import prefix_house
from beiand.isms.fleet import AckTracker, GatewayView, basic_mismatches, house_states, view
from beiand.isms.reports import filed_domain
from beiand.isms.service import Ack
from beiand.isms.transport.upload import Uploader
from beiand.isms.wire.codes import AckResult, AckType
from beiand.runtime.http import start as start_http
from beiand.runtime.isms import IsmsRuntime
from beiand.runtime.sdnotify import sd_notify, watchdog_interval
from beiand.runtime.settings import Config, IsmsSection
from beiand.runtime.wiring import State, StateError, file_mtime, http_limits, load_state, read_secret, records_source
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
        self._rows: list[dict[str, Any]] = []  # the gateways' heartbeats as last read
        self.store_error = ""
        self.mismatches: list[str] = []
        self._mismatch_key: tuple[int, int] = (-1, -1)
        self.forced: list[str] = []  # what POST /api/v1/isms/report asked for
        self._reports: asyncio.Future[dict[str, int]] | None = None  # the report job running, if any
        self._acks_saved = ""
        self._bind(state)
        self.load_acks()

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
        self.cu_metrics.houses.labels("ok").set(len(every) - len(faulty))
        self.cu_metrics.houses.labels("faulty").set(len(faulty))
        return len(every), faulty

    def known_houses(self) -> set[str]:
        """The houses of the licence: the inventory's, and those the basic data (type 0) lists."""
        own = self.cfg.isms.house_id
        return ({prefix_house(p, own) for p in self.state.inventory.prefixes if str(p.state) != "closed"} - {""}) \
            | set(self.store.state.houses)

    # -- one round ------------------------------------------------------------------------------

    def sync(self) -> None:
        """Blocking: catch up with the store (the commands others wrote), read the fleet."""
        if self.store.decisions is None:
            return
        im = self.cfg.isms
        try:
            # Under the store's lock: the endpoint's thread writes a command in a transaction on the
            # same connection; a read of another thread inside it would break both (PostgreSQL:
            # out-of-order savepoints that leave the fleet's write lock held).
            with self.store.lock:
                self.store.sync()
                self._rows = self.store.decisions.gateways()
        except StoreError as exc:
            if self.store_error != str(exc):
                log.error("isms: decision store: %s (acks wait, commands are refused until it answers)", exc)
            self.store_error = str(exc)
            self.cu_metrics.store_up.set(0)
            # the last heartbeats seen, judged now: gateways go silent, their houses faulty (DT 7)
            self.fleet = view(self._rows, self.clock(), im.gateway_down_after, im.gateway_retired_after)
            return
        if self.store_error:
            log.warning("isms: decision store answers again")
        self.store_error = ""
        self.cu_metrics.store_up.set(1)
        self.fleet = view(self._rows, self.clock(), im.gateway_down_after, im.gateway_retired_after)

    def settle(self) -> None:
        """The acks the endpoint queued go to the tracker; those the fleet settled, to the outbox."""
        now = self.clock()
        new: list[Ack] = []
        q = self.service.acks
        while q:  # pop: atomic against the endpoint's thread adding (or trimming) meanwhile
            try:
                new.append(q.pop(0))
            except IndexError:
                break
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
            self.mismatches = basic_mismatches(self.store.state.houses, self.state.inventory.prefixes, own=self.cfg.isms.house_id)
            for w in self.mismatches[:20]:
                log.warning("isms: basic data (type 0) against the inventory: %s", w)
        self.cu_metrics.mismatches.set(len(self.mismatches))

    async def tick(self, healthy: bool = True) -> None:
        """One round: read the store and the fleet, settle the acks, send those due (their own
        job, with backoff), and start the reports that are due unless a report job still runs
        (a day of the fleet takes tens of seconds: the acks and the fleet view keep going)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.sync)
        self.settle()
        self.save_acks()
        if self.outbox and self.clock() >= self._ack_retry_at:
            await loop.run_in_executor(None, self.send_acks)
            self.save_acks()
        if self._reports is None or self._reports.done():
            if self._reports is not None and self._reports.exception() is not None:
                log.error("isms: report round failed: %s", self._reports.exception())
            what = self.due(self.clock())
            if self.forced:
                what = sorted({*what, *self.forced})
                self.forced = []
            self._reports = loop.run_in_executor(None, self.run_due, what) if what or self._pending_queries else None
        self.update_metrics()

    # -- acks kept across restarts ------------------------------------------------------------

    @property
    def acks_file(self) -> Path:
        return self.cfg.daemon.state_dir / "isms" / "cu-acks.json"

    def save_acks(self) -> None:
        """The acks not yet taken by SMMS (waiting for the fleet, or to be sent), written when they
        changed: a restart of the CU sends them still (SMMS answered those commands 0 already)."""
        state = {"outbox": [_ack_json(a) for a in self.outbox], "pending": self.tracker.dump()}
        blob = json.dumps(state, ensure_ascii=False, sort_keys=True)
        if blob == self._acks_saved:
            return
        try:
            self.acks_file.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            tmp = self.acks_file.with_suffix(".tmp")
            tmp.write_text(blob, encoding="utf-8")
            os.replace(tmp, self.acks_file)
            self._acks_saved = blob
        except OSError as exc:
            log.error("isms: %s: acks not kept on disk: %s (a restart would lose them)", self.acks_file, exc)

    def load_acks(self) -> None:
        try:
            state = json.loads(self.acks_file.read_text(encoding="utf-8"))
            self.outbox[:0] = [_ack_of(d) for d in state.get("outbox", [])]
            self.tracker.load(state.get("pending", []))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("isms: %s: not read (%s): the acks it held are not sent", self.acks_file, exc)
            return
        if self.outbox or self.tracker.pending:
            log.warning("isms: %d ack(s) to send and %d command(s) followed, kept from before the restart", len(self.outbox),
                        len(self.tracker.pending))

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


def _ack_json(a: Ack) -> dict[str, Any]:
    return {"command_id": a.command_id, "type": int(a.type), "result": int(a.result), "msg": a.msg, "house_id": a.house_id,
            "version": a.version, "houses": list(a.houses)}


def _ack_of(d: dict[str, Any]) -> Ack:
    return Ack(int(d["command_id"]), AckType(int(d["type"])), AckResult(int(d["result"])), str(d["msg"]), str(d["house_id"]),
               int(d["version"]), tuple(str(h) for h in d["houses"]))


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

        # The CU's own checks whatever isms.mode says (a gateway's "fleet" skips the endpoint's)
        im = cfg.isms
        problem = "" if im.enabled else "isms.enabled is false"
        problem = problem or ("" if im.idc_id.strip() else "isms.idc_id: required (this operator's 许可证号)")
        problem = problem or check(dataclasses.replace(cfg, isms=dataclasses.replace(im, mode="cu-lite")))
        problem = problem or ("" if im.ack_url else "isms.ack_url: required (SMMS's idc_commandack)")
        if problem:
            log.error("%s: isms: %s", self.config_path, problem)
            return 2
        registry = CollectorRegistry()
        try:
            cu = CuRuntime(state, registry)
        except (BeiandError, ValueError) as exc:
            log.error("%s: isms: %s", self.config_path, exc)
            return 2
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
        # the daemon's bounded server (runtime/http.py: header timeouts, connection cap, body size)
        served = await start_http(_app(cu, registry, token, lambda: setattr(self, "reload_requested", "POST /api/v1/reload")),
                                  host.strip("[]"), int(port), http_limits(cfg))
        log.info("isms serve: the CU of %s for %s; metrics on %s", cfg.isms.idc_id, cu.store.decisions.url if cu.store.decisions
                 else "?", cfg.isms.metrics_listen)
        await cu.tick()
        sd_notify(f"READY=1\nSTATUS=CU of {cfg.isms.idc_id}: {len(cu.fleet)} gateway(s)")
        wd = watchdog_interval()
        # The watchdog is fed while the event loop runs: a report round of a day of the fleet takes
        # longer than WatchdogSec, in a thread of its own, while the endpoint and the acks go on.
        feeder = asyncio.create_task(self._feed(wd)) if wd else None
        next_watch = 0.0
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
                if now >= next_watch:
                    next_watch = now + (cu.cfg.daemon.watch_interval or 5.0)
                    if any(file_mtime(p) != m for p, m in mtimes.items()) and cu.cfg.daemon.watch_interval:
                        self.reload_requested = self.reload_requested or "file change"
                if self.reload_requested:
                    why, self.reload_requested = self.reload_requested, ""
                    mtimes = await self.reload(cu, why) or mtimes
        finally:
            sd_notify("STOPPING=1")
            if feeder is not None:
                feeder.cancel()
            await served.close()
            await cu.close()  # no new command from here
            with contextlib.suppress(Exception):  # the last acks: settled, sent once more, kept on disk
                await asyncio.get_running_loop().run_in_executor(None, cu.sync)
                cu.settle()
                await asyncio.get_running_loop().run_in_executor(None, cu.send_acks)
            cu.save_acks()
            if cu._reports is not None:  # a report round running: let it finish its files
                with contextlib.suppress(Exception):
                    await cu._reports
            if cu.store.decisions is not None:
                cu.store.decisions.close()
        return 0

    @staticmethod
    async def _feed(interval: float) -> None:
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def reload(self, cu: CuRuntime, why: str) -> dict[str, float] | None:
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            try:
                new = await asyncio.get_running_loop().run_in_executor(None, load_state, self.config_path, cu.state)
            except StateError as exc:
                log.error("isms serve: reload (%s) refused, keeping the old state: %s", why, exc)
                return self._watched(cu.state)  # not the same broken files again until they change
            if new.config.store != cu.cfg.store:
                log.warning("isms serve: reload (%s): [store] changed: a restart applies it (the CU keeps writing to %s)",
                            why, cu.store.decisions.url if cu.store.decisions is not None else "?")
                cu.restart_needed = sorted({*cu.restart_needed, "store"})
            try:
                cu.reload(new.config)
            except (ValueError, OSError) as exc:
                log.error("isms serve: reload (%s) refused: [isms] kept as it was, and the inventory and records with it: %s",
                          why, exc)
                return self._watched(cu.state)
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
