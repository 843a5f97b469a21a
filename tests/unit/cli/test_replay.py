"""replay --json: one line per decision."""

import io
import json

from beiand.model import Action, Decision, Kind, Mode, Observation, Transport, Verdict, VerdictKind, endpoint
from beiand.sinks.jsonlines import JsonLines


def test_endpoints_bracket_ipv6():
    # RFC 3986 section 3.2.2: an IPv6 literal with a port is written in brackets
    assert endpoint("2001:db8::1", 443) == "[2001:db8::1]:443"
    assert endpoint("192.0.2.1", 53) == "192.0.2.1:53"
    out = io.BytesIO()
    obs = Observation(1.0, "2001:db8:1::10", 40000, "2001:db8:100::10", 443, Transport.TCP, Kind.TLS_SNI, "a.example", "a.example")
    d = Decision(Verdict(VerdictKind.NOT_HOSTED, None, "not-hosted"), Action.LOG, "log", Mode.MONITOR, "")
    JsonLines(out).on_decision(obs, d)
    line = json.loads(out.getvalue())
    assert (line["client"], line["server"]) == ("[2001:db8:1::10]:40000", "[2001:db8:100::10]:443")
