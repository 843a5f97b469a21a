"""The daemon's HTTP endpoints (aiohttp), bound to 127.0.0.1 by default.

``/metrics`` (Prometheus), ``/healthz`` (process alive), ``/readyz`` (capture running, records
loaded, log writable), ``/api/v1/lookup?name=…|ip=…[&server=…]`` (the verdict the daemon would
give now), ``/api/v1/observations?verdict=…&since=…`` (the active-resource view),
``/api/v1/status``; ``/readyz`` also carries ``details`` (records in service, their age, a refused reload);
``POST /api/v1/reload`` and ``POST /api/v1/breaker/close`` change state and need the bearer token.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from beiand.metrics import Metrics


class DaemonView(Protocol):
    metrics: Metrics
    token: str

    def ready(self) -> list[str]: ...

    def details(self) -> dict[str, Any]: ...

    def lookup(self, name: str, ip: str, server: str) -> dict[str, Any]: ...

    def observations(self, verdict: str, since: float, limit: int) -> list[dict[str, Any]]: ...

    def status(self) -> dict[str, Any]: ...

    def request_reload(self) -> None: ...

    def close_breaker(self) -> None: ...


def make_app(d: DaemonView) -> web.Application:
    app = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(d.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        problems = d.ready()
        return web.json_response({"ready": not problems, "problems": problems, "details": d.details()},
                                 status=503 if problems else 200, dumps=_dumps)

    async def lookup(req: web.Request) -> web.Response:
        name, ip, server = req.query.get("name", ""), req.query.get("ip", ""), req.query.get("server", "")
        if bool(name) == bool(ip):
            return web.json_response({"error": "give exactly one of name= or ip="}, status=400)
        try:
            return web.json_response(d.lookup(name, ip, server), dumps=_dumps)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def observations(req: web.Request) -> web.Response:
        try:
            since = float(req.query.get("since", "0"))
            limit = int(req.query.get("limit", "1000"))
        except ValueError:
            return web.json_response({"error": "since= takes epoch seconds, limit= an integer"}, status=400)
        if since < 0:  # relative: -3600 = the last hour
            since = time.time() + since
        return web.json_response(d.observations(req.query.get("verdict", ""), since, limit), dumps=_dumps)

    async def status(_: web.Request) -> web.Response:
        return web.json_response(d.status(), dumps=_dumps)

    async def reload(req: web.Request) -> web.Response:
        return _guarded(req, d.token, d.request_reload, {"reload": "requested"})

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/lookup", lookup)
    app.router.add_get("/api/v1/observations", observations)
    app.router.add_get("/api/v1/status", status)
    async def close_breaker(req: web.Request) -> web.Response:
        return _guarded(req, d.token, d.close_breaker, {"breaker": "closing"})

    app.router.add_post("/api/v1/reload", reload)
    app.router.add_post("/api/v1/breaker/close", close_breaker)
    return app


def _guarded(req: web.Request, token: str, act: Callable[[], None], answer: dict[str, str]) -> web.Response:
    """Endpoints that change state: only with the bearer token."""
    if not _authorised(req, token):
        return web.json_response({"error": "a bearer token (server.token_file) is required"}, status=401)
    act()
    return web.json_response(answer, status=202)


def _authorised(req: web.Request, token: str) -> bool:
    if not token:
        return False  # no token configured: nothing that changes state is allowed over HTTP
    got = req.headers.get("Authorization", "")
    return got.startswith("Bearer ") and hmac.compare_digest(got[7:].strip().encode(), token.encode())


def _dumps(o: Any) -> str:
    import json

    return json.dumps(o, ensure_ascii=False)
