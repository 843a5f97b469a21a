"""The ``idc_command`` endpoint: SOAP over HTTP(S) on aiohttp (ISMS.md §1-§2).

The parsing and applying happen in :class:`~beiand.isms.service.CommandService`, off the
event loop (a 50,000-rule command takes seconds to validate); this module only frames HTTP.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from aiohttp import web

from beiand.isms.service import CommandService
from beiand.isms.wire import soap

SERVICE_KEY = web.AppKey("isms_service", CommandService)
LOCK_KEY = web.AppKey("isms_lock", asyncio.Lock)


async def _idc_command(request: web.Request) -> web.Response:
    svc = request.app[SERVICE_KEY]
    body = await request.read()
    try:
        op, params = soap.parse_call(body)
    except soap.SoapError as exc:
        return web.Response(status=500, body=soap.fault(str(exc)), content_type="text/xml")
    if op != "idc_command":
        return web.Response(status=500, body=soap.fault(f"unknown operation {op[:40]!r} (this endpoint serves idc_command)"),
                            content_type="text/xml")
    async with request.app[LOCK_KEY]:  # one command at a time: duplicate checks and the store need it
        ans = await asyncio.get_running_loop().run_in_executor(None, svc.handle, params)
    return web.Response(body=soap.response("idc_command", ans.code, ans.msg), content_type="text/xml")


def make_app(service: CommandService, path: str = "/isms/idc_command") -> web.Application:
    app = web.Application(client_max_size=soap.MAX_REQUEST)
    app[SERVICE_KEY] = service
    app[LOCK_KEY] = asyncio.Lock()
    app.router.add_post(path, _idc_command)
    return app


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


async def serve(service: CommandService, host: str, port: int, ctx: ssl.SSLContext | None = None,
                path: str = "/isms/idc_command") -> web.AppRunner:
    runner = web.AppRunner(make_app(service, path), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ctx).start()
    return runner
