"""`audit --probe` follows same-site redirects before judging a homepage (issue 13)."""

import asyncio

import aiohttp
import pytest
from aiohttp import web

from beiand.model import Filing, FilingStatus, ServiceType
from beiand.policy import Policy
from beiand.policy.inventory import Inventory
from beiand.records.index import RecordIndex
from beiand.report.audit.active import Prober, ProbeSettings, same_site_redirect

FOOTER = '<p><a href="https://beian.miit.gov.cn/">京ICP备12345678号-1</a></p>'


@pytest.mark.parametrize(("scheme", "host", "path", "loc", "want"), [
    ("https", "site.example.cn", "/", "/index.html", ("https", "site.example.cn", "/index.html")),
    ("http", "site.example.cn", "/", "https://www.site.example.cn/home?a=1", ("https", "www.site.example.cn", "/home?a=1")),
    ("https", "site.example.cn", "/a/", "b", ("https", "site.example.cn", "/a/b")),
    ("https", "site.example.cn", "/", "https://other.example.com/", None),  # another site
    ("https", "site.example.cn", "/", "https://site.example.cn:8443/", None),  # another port
    ("https", "site.example.cn", "/", "ftp://site.example.cn/", None),
    ("https", "site.example.cn", "/", "", None),
])
def test_same_site_redirect(scheme, host, path, loc, want):
    assert same_site_redirect(scheme, host, path, loc) == want


async def _probe(hops: dict[str, tuple[int, str]]) -> list[str]:
    async def handler(req: web.Request) -> web.Response:
        status, target = hops.get(f"{req.host}{req.path_qs}", (200, "<html>no number</html>"))
        if status == 200:
            return web.Response(text=target, content_type="text/html")
        return web.Response(status=status, headers={"Location": target})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        filing = Filing("京ICP备12345678号-1", "甲", ServiceType.WEBSITE, ("site.example.cn",), (), "p", FilingStatus.ACTIVE)
        index = RecordIndex([filing])
        prober = Prober(index, Inventory([]), Policy(index, Inventory([])),
                        ProbeSettings(http_port=port, https_port=1, timeout=2))  # https refused: falls back to http
        async with aiohttp.ClientSession() as session:
            await prober.check_homepage(session, "site.example.cn", "127.0.0.1", filing)
        return [f.kind for f in prober.findings]
    finally:
        await runner.cleanup()


def test_a_homepage_behind_same_site_redirects_is_judged_where_they_lead():
    hops = {"site.example.cn/": (302, "/index.html"),
            "site.example.cn/index.html": (301, "http://www.site.example.cn/home"),
            "www.site.example.cn/home": (200, f"<html>{FOOTER}</html>")}
    assert asyncio.run(_probe(hops)) == []


def test_redirects_are_bounded_and_never_leave_the_site():
    loop = {"site.example.cn/": (302, "/a"), "site.example.cn/a": (302, "/")}
    assert asyncio.run(_probe(loop)) == ["homepage-no-number"]
    away = {"site.example.cn/": (302, "http://elsewhere.example.com/")}
    assert asyncio.run(_probe(away)) == ["homepage-no-number"]
