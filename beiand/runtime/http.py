"""The daemon's HTTP endpoints (aiohttp), bound to 127.0.0.1 by default.

``/metrics`` (Prometheus), ``/healthz`` (process alive), ``/readyz`` (capture running, records
loaded, log writable), ``/api/v1/lookup?name=…|ip=…[&server=…]`` (the verdict the daemon would
give now), ``/api/v1/observations?verdict=…&since=…`` (the active-resource view),
``/api/v1/status``; ``/readyz`` also carries ``details`` (records in service, their age, a refused reload);
``POST /api/v1/reload`` and ``POST /api/v1/breaker/close`` change state and need the bearer token.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from beiand.runtime.metrics import Metrics


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

    def cases(self, state: str, account: str) -> list[dict[str, Any]]: ...

    def case(self, key: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class HttpLimits:
    """Bounds on what a client of the HTTP endpoints can hold (issue 17); ``server.*`` in the config."""

    header_timeout: float = 10.0  # from connecting (or the end of the last answer) to a whole request head
    request_timeout: float = 30.0  # a request's body and handler, once its head is in
    max_connections: int = 256  # open connections; beyond, new ones are closed at once
    max_body_bytes: int = 65536
    max_line_bytes: int = 8190  # the request line (URL) and each header line
    max_headers: int = 64


MAX_LIMIT = 100_000  # rows of /api/v1/observations (the view holds at most this many)
MAX_SINCE_AGE = 10 * 365 * 86400.0  # since= reaches back at most ten years
VERDICTS = frozenset({"filed", "unfiled", "mismatch", "inactive", "exempt", "not-hosted"})
MAX_QUERY_VALUE = 1024
CASE_STATES = ("open", "notified", "appealed", "escalated", "closed")

log = logging.getLogger("beiand.http")


class _BadRequestFilter(logging.Filter):
    """aiohttp logs a malformed request (a 100 KB URL, a header without a colon) with a traceback:
    a client's mistake is one line at INFO, not an error of the daemon."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "bad request refused: %s"
            record.args = (f"{exc.code} {exc.message}"[:200],)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


log.addFilter(_BadRequestFilter())


def _param_error(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


def make_app(d: DaemonView, limits: HttpLimits | None = None) -> web.Application:
    lim = limits or HttpLimits()

    @web.middleware
    async def bounded(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if (request.content_length or 0) > lim.max_body_bytes:
            return web.json_response({"error": f"request body over {lim.max_body_bytes} bytes"}, status=413)
        for k, v in request.query.items():
            if len(v) > MAX_QUERY_VALUE or len(k) > 64:
                return _param_error(f"{k[:64]}=: at most {MAX_QUERY_VALUE} characters")
        try:
            async with asyncio.timeout(lim.request_timeout):
                return await handler(request)
        except TimeoutError:
            return web.json_response({"error": f"request not complete within {lim.request_timeout:g} s"}, status=408)

    app = web.Application(client_max_size=lim.max_body_bytes, middlewares=[bounded])

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
        if len(name) > 253 or len(ip) > 64 or len(server) > 64:
            return _param_error("name= is at most 253 characters, ip= and server= at most 64")
        if bool(name) == bool(ip):
            return web.json_response({"error": "give exactly one of name= or ip="}, status=400)
        try:
            return web.json_response(d.lookup(name, ip, server), dumps=_dumps)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def observations(req: web.Request) -> web.Response:
        q = req.query
        try:
            since = float(q.get("since", "0"))
        except ValueError:
            return _param_error(f"since={q.get('since', '')[:40]!r}: expected epoch seconds, or negative seconds back from now")
        if not math.isfinite(since):
            return _param_error(f"since={q.get('since', '')[:40]}: expected a finite number of seconds")
        now = time.time()
        if since < -MAX_SINCE_AGE or since > now + 86400:
            return _param_error(f"since={since:g}: expected an epoch time up to now, or -1 to -{MAX_SINCE_AGE:.0f} seconds back")
        raw_limit = q.get("limit", "1000")
        if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit[:12]) <= MAX_LIMIT:
            return _param_error(f"limit={raw_limit[:40]!r}: expected an integer from 1 to {MAX_LIMIT}")
        verdict = q.get("verdict", "")
        if verdict and verdict not in VERDICTS:
            return _param_error(f"verdict={verdict[:40]!r}: expected one of {', '.join(sorted(VERDICTS))}")
        if since < 0:  # relative: -3600 = the last hour
            since = now + since
        return web.json_response(d.observations(verdict, since, int(raw_limit)), dumps=_dumps)

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

    # Cases name customers and where their notices went: only with the bearer token.
    async def cases(req: web.Request) -> web.Response:
        if not _authorised(req, d.token):
            return web.json_response({"error": "a bearer token (server.token_file) is required"}, status=401)
        state, account = req.query.get("state", ""), req.query.get("account", "")
        if state and state not in CASE_STATES:
            return _param_error(f"state={state[:40]!r}: expected one of {', '.join(CASE_STATES)}")
        raw_limit = req.query.get("limit", "1000")
        if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit[:12]) <= MAX_LIMIT:
            return _param_error(f"limit={raw_limit[:40]!r}: expected an integer from 1 to {MAX_LIMIT}")
        return web.json_response(d.cases(state, account)[: int(raw_limit)], dumps=_dumps)

    async def case(req: web.Request) -> web.Response:
        if not _authorised(req, d.token):
            return web.json_response({"error": "a bearer token (server.token_file) is required"}, status=401)
        c = d.case(req.match_info["key"])
        if c is None:
            return web.json_response({"error": f"no case {req.match_info['key'][:200]!r}"}, status=404)
        return web.json_response(c, dumps=_dumps)

    app.router.add_get("/api/v1/cases", cases)
    app.router.add_get("/api/v1/cases/{key}", case)
    app.router.add_post("/api/v1/reload", reload)
    app.router.add_post("/api/v1/breaker/close", close_breaker)
    return app


class _Guard(asyncio.Protocol):
    """Wraps aiohttp's protocol of one connection: bounds the number of connections and the time
    to a whole request head, which aiohttp does not (3,000 half-sent requests stayed open)."""

    def __init__(self, inner: Any, served: Served) -> None:
        self.inner = inner
        self.served = served
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sv = self.served
        if len(sv.open) >= sv.limits.max_connections:
            sv.refused += 1
            transport.abort()
            return
        sv.open[transport] = self
        self.inner.connection_made(transport)
        self.arm()

    def arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(self.served.limits.header_timeout, self._expired)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.served.timed_out += 1
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()  # type: ignore[no-any-return]

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self.transport is not None and self.served.open.pop(self.transport, None) is not None:
            self.inner.connection_lost(exc)


class Served:
    """The HTTP server with its bounds: ``await start(app, host, port, limits)``, ``await close()``."""

    def __init__(self, runner: web.AppRunner, limits: HttpLimits) -> None:
        self.runner = runner
        self.limits = limits
        self.open: dict[asyncio.Transport, _Guard] = {}
        self.refused = 0  # connections closed at once: max_connections reached
        self.timed_out = 0  # connections closed: no whole request head within header_timeout
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self.open):
            t.abort()
        await self.runner.cleanup()


async def start(app: web.Application, host: str, port: int, limits: HttpLimits | None = None) -> Served:
    lim = limits or HttpLimits()
    runner = web.AppRunner(app, access_log=None, logger=log, max_line_size=lim.max_line_bytes,
                           max_field_size=lim.max_line_bytes, max_headers=lim.max_headers, keepalive_timeout=2 * lim.header_timeout,
                           lingering_time=min(lim.request_timeout, 5.0))
    served = Served(runner, lim)

    @web.middleware
    async def head_in(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        t = request.transport
        guard = served.open.get(t) if isinstance(t, asyncio.Transport) else None
        if guard is not None:
            guard.disarm()  # the head is in: request_timeout takes over
        try:
            return await handler(request)
        finally:
            if guard is not None:
                guard.arm()  # the next request on this connection gets header_timeout again

    app.middlewares.insert(0, head_in)
    await runner.setup()
    factory = runner.server
    assert factory is not None
    served.server = await asyncio.get_running_loop().create_server(lambda: _Guard(factory(), served), host, port,
                                                                   reuse_address=True)
    return served


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
