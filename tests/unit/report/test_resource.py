"""One active-resource row: the audit and /api/v1/observations build the same type, each in its old JSON shape."""

from __future__ import annotations

from beiand.report.audit import Resource, resources
from beiand.report.resource import ActiveResource


def test_audit_rows_are_active_resources_in_the_audit_shape() -> None:
    summary = {("www.example.com.cn", "198.51.100.7", 443, "cust-1", "unfiled", "tls-sni", "block", "no-filing", ""): [1000, 5000, 3]}
    (r,) = resources(summary)
    assert Resource is ActiveResource and isinstance(r, ActiveResource)
    assert r.as_dict() == {"name": "www.example.com.cn", "registrable_domain": "example.com.cn", "servers": ["198.51.100.7:443"],
                           "account": "cust-1", "kind": "tls-sni", "verdict": "unfiled", "reason": "no-filing", "filing": "",
                           "first_seen": 1.0, "last_seen": 5.0, "hits": 3, "blocked": True}


def test_the_live_view_row_keeps_the_api_shape() -> None:
    r = ActiveResource.of("shop.example.net", "198.51.100.30:443", "cust-2", "http-host", "filed", first_seen=1.0, last_seen=2.0,
                          hits=4, action="flag")
    assert r.as_observation() == {"name": "shop.example.net", "registrable_domain": "example.net", "server": "198.51.100.30:443",
                                  "account": "cust-2", "kind": "http-host", "verdict": "filed", "first_seen": 1.0, "last_seen": 2.0,
                                  "hits": 4, "blocked": False, "action": "flag"}
    assert ActiveResource.of("", "198.51.100.30:80", "", "ip-only", "unfiled").as_observation()["registrable_domain"] == ""
