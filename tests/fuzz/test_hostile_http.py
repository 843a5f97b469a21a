"""Issue 17 item 6: the HTTP endpoints under hostile clients, on a real aiohttp server on loopback:
half-sent requests are closed, connections are bounded, bad parameters get a 400 with a reason,
and no bad request leaves a traceback in the log."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beiand.runtime.http import HttpLimits, make_app, start
from beiand.runtime.metrics import Metrics


class View:
    """The daemon's side of the endpoints, with a small fixed view."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.token = "t0ken"
        self.asked: list[tuple[str, float, int]] = []

    def ready(self) -> list[str]:
        return []

    def details(self) -> dict[str, Any]:
        return {}

    def lookup(self, name: str, ip: str, server: str) -> dict[str, Any]:
        if ip and ip != "192.0.2.1":
            raise ValueError(f"ip {ip!r} is not an IP address")
        return {"verdict": "unfiled"}

    def observations(self, verdict: str, since: float, limit: int) -> list[dict[str, Any]]:
        self.asked.append((verdict, since, limit))
        return [{"name": "a.example.cn"}][:limit]

    def status(self) -> dict[str, Any]:
        return {"ok": True}

    def request_reload(self) -> None:
        pass

    def cases(self, state: str, account: str) -> list[dict[str, Any]]:
        return [{"key": f"cust-{i}|unfiled|x{i}.example", "state": state or "open", "account": account or f"cust-{i}"}
                for i in range(5)]

    def case(self, key: str) -> dict[str, Any] | None:
        return {"key": key} if key == "cust-1|unfiled|x1.example" else None

    def close_breaker(self) -> None:
        pass


LIMITS = HttpLimits(header_timeout=0.5, request_timeout=2.0, max_connections=40, max_body_bytes=4096)


def serve(body, limits=LIMITS):
    """Run ``body(port, view, served)`` against a real server on 127.0.0.1."""
    async def main():
        view = View()
        served = await start(make_app(view, limits), "127.0.0.1", 0, limits)
        try:
            return await body(served.port, view, served)
        finally:
            await served.close()
    return asyncio.run(main())


async def request(port: int, raw: bytes, timeout: float = 3.0) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(raw)
        await w.drain()
        return await asyncio.wait_for(r.read(), timeout)
    except (ConnectionError, OSError):
        return b""
    finally:
        w.close()


async def get(port: int, target: str) -> tuple[int, dict[str, Any] | list[Any] | None]:
    out = await request(port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    head, _, body = out.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head else 0
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def no_tracebacks(caplog) -> None:
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not bad, [r.getMessage() for r in bad]


def test_half_sent_requests_are_closed_after_the_header_timeout(caplog):
    async def body(port, view, served):
        conns = []
        for _ in range(30):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
            conns.append((r, w))
        await asyncio.sleep(1.2)
        closed = 0
        for r, w in conns:
            try:
                if await asyncio.wait_for(r.read(), 1.0) == b"":
                    closed += 1
            except (ConnectionError, TimeoutError):
                closed += 1
            w.close()
        assert closed == 30
        assert served.timed_out >= 30 and not served.open
        assert (await get(port, "/healthz"))[0] == 200
    serve(body)


def test_connections_are_bounded_and_the_server_recovers():
    async def body(port, view, served):
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(60)]
        await asyncio.sleep(0.1)
        assert len(served.open) <= LIMITS.max_connections
        assert served.refused >= 20
        for _, w in conns:
            w.close()
        await asyncio.sleep(0.7)
        assert (await get(port, "/healthz"))[0] == 200
    serve(body)


@pytest.mark.parametrize(("query", "field"), [
    ("limit=999999999999&since=nan", "since"),
    ("since=nan", "since"),
    ("since=inf", "since"),
    ("since=-1e300", "since"),
    ("since=1e300", "since"),
    ("limit=999999999999", "limit"),
    ("limit=-5", "limit"),
    ("limit=0", "limit"),
    ("limit=1e3", "limit"),
    ("verdict=%00bogus", "verdict"),
    ("since=" + "9" * 5000, "since"),
])
def test_observation_parameters_are_validated(query, field):
    async def body(port, view, served):
        status, answer = await get(port, "/api/v1/observations?" + query)
        assert status == 400 and isinstance(answer, dict) and answer["error"].startswith(field), (status, answer)
        assert not view.asked
    serve(body)


def test_valid_parameters_still_answer():
    async def body(port, view, served):
        status, answer = await get(port, "/api/v1/observations?limit=10&since=-3600&verdict=unfiled")
        assert status == 200 and answer == [{"name": "a.example.cn"}]
        assert view.asked[0][0] == "unfiled" and view.asked[0][2] == 10
    serve(body)


def test_oversized_url_headers_and_body_are_refused_without_a_traceback(caplog):
    caplog.set_level(logging.DEBUG)

    async def body(port, view, served):
        out = await request(port, b"GET /api/v1/lookup?name=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), out[:80]
        out = await request(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n")
        assert out.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), out[:80]
        out = await request(port, b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(500)) + b"\r\n")
        assert out.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), out[:80]
        out = await request(port, b"POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\n"
                                  b"Content-Length: 10000000\r\n\r\n" + b"x" * 5000)
        assert out.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")) or out == b"", out[:80]
        assert (await get(port, "/healthz"))[0] == 200
    serve(body)
    no_tracebacks(caplog)


REQUEST_LINES = st.sampled_from([b"GET", b"POST", b"PUT", b"\x16\x03\x01", b"GET\x00", b""]).flatmap(
    lambda m: st.tuples(st.just(m), st.sampled_from([b"/healthz", b"/api/v1/observations", b"/api/v1/lookup", b"/metrics", b"*"]),
                        st.binary(max_size=60), st.sampled_from([b" HTTP/1.1", b" HTTP/1.0", b" HTTP/9", b""]),
                        st.lists(st.binary(max_size=40), max_size=5), st.binary(max_size=100)))

FUZZ = {"tried": 0}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(REQUEST_LINES, min_size=1, max_size=10))
def test_fuzzed_requests_never_leave_a_traceback(caplog, batch):
    caplog.set_level(logging.DEBUG)
    caplog.clear()

    async def body(port, view, served):
        for method, path, query, version, headers, payload in batch:
            raw = method + b" " + path + b"?" + query + version + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + payload
            await request(port, raw, timeout=1.0)
            FUZZ["tried"] += 1
        assert (await get(port, "/healthz"))[0] == 200

    serve(body, HttpLimits(header_timeout=0.3, request_timeout=1.0, max_connections=40, max_body_bytes=4096))
    no_tracebacks(caplog)


def teardown_module() -> None:
    print(f"\nhostile HTTP requests tried: {FUZZ['tried']}")


def test_cases_need_the_token_and_bounded_answers():
    async def authed(port: int, target: str, token: str = "t0ken") -> tuple[int, Any]:
        out = await request(port, f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                                  "Connection: close\r\n\r\n".encode())
        head, _, body = out.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    async def body(port, view, served):
        assert (await get(port, "/api/v1/cases"))[0] == 401  # customers' contacts: never without the token
        assert (await authed(port, "/api/v1/cases", "wrong"))[0] == 401
        status, rows = await authed(port, "/api/v1/cases?state=escalated&limit=2")
        assert status == 200 and len(rows) == 2 and rows[0]["state"] == "escalated"
        assert (await authed(port, "/api/v1/cases?state=bogus"))[0] == 400
        assert (await authed(port, "/api/v1/cases?limit=0"))[0] == 400
        status, c = await authed(port, "/api/v1/cases/cust-1%7Cunfiled%7Cx1.example")
        assert status == 200 and c["key"] == "cust-1|unfiled|x1.example"
        assert (await authed(port, "/api/v1/cases/nope"))[0] == 404
    serve(body)
