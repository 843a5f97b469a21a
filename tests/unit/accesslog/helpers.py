from __future__ import annotations

from beiand.accesslog.format import DAY_MS
from beiand.model import AccessRecord

DAY0 = 1_790_000_000_000 // DAY_MS * DAY_MS  # a UTC midnight (2026-09-21)


def rec(i: int, day: int = 0, name: str | None = None, client: str | None = None, **kw: object) -> AccessRecord:
    base = AccessRecord(
        ts_ms=DAY0 + day * DAY_MS + i * 1000, account=f"cust-{i % 3}", client_ip=client or f"10.0.{i % 7}.{i % 251}",
        client_port=40000 + i % 1000, server_ip=f"198.51.100.{i % 5}", server_port=443, transport="tcp", kind="tls-sni",
        name=name if name is not None else f"www{i % 11}.example{i % 4}.cn", verdict="filed" if i % 5 else "unfiled",
        action="log", filing_number="京ICP备12345678号-1" if i % 5 else "", gateway="gw-test", reason="filed" if i % 5 else "no-filing",
    )
    return base._replace(**kw)  # type: ignore[arg-type]
