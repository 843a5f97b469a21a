"""beiand's own nftables table (``inet beiand``), managed through libnftables' JSON API.

Debian's ``python3-nftables`` (a ctypes binding to libnftables, not on PyPI) is made visible to
the venv by adding its directory at the end of ``sys.path``; without it the same JSON goes to
``nft -j -f -``. beiand never touches another table and deletes its own on a clean stop.

Sets (all with per-element timeouts): ``ip4``/``ip6`` (closure orders on an address or a CIDR
prefix: all traffic to and from it dropped; interval sets), ``quic4``/``quic6`` (client . client
port . server . server port: one QUIC flow to an unfiled name, dropped for a short time so the
client falls back to TCP, where the reset applies). Nothing else is ever blocked per host: an
unnamed flow is reset alone (issue 13; REGULATIONS.md: blocking is per name or per flow).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

from beiand.errors import BeiandError

FAMILY, TABLE, CHAIN = "inet", "beiand", "forward"


class NftError(BeiandError, RuntimeError):
    pass


def _binding() -> Any:
    try:
        import nftables

        return nftables.Nftables()
    except ImportError:
        pass
    for d in ("/usr/lib/python3/dist-packages",):
        if d not in sys.path:
            sys.path.append(d)
            try:
                import nftables

                return nftables.Nftables()
            except ImportError:
                pass
            finally:
                sys.path.remove(d)
    return None


def _p(proto: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": field}}


class Nft:
    def __init__(self) -> None:
        self.nft = _binding()
        if self.nft is not None:
            self.nft.set_json_output(True)
        elif shutil.which("nft") is None:
            raise NftError("neither python3-nftables nor the nft command is installed (apt-get install nftables python3-nftables)")
        self.via = "libnftables" if self.nft is not None else "nft -j"

    def run(self, cmds: list[dict[str, Any]]) -> Any:
        doc = {"nftables": cmds}
        if self.nft is not None:
            rc, out, err = self.nft.json_cmd(doc)
            if rc != 0:
                raise NftError(f"nftables: {err.strip() or rc}")
            return out
        r = subprocess.run(["nft", "-j", "-f", "-"], input=json.dumps(doc), capture_output=True, text=True)
        if r.returncode != 0:
            raise NftError(f"nft: {r.stderr.strip()}")
        return json.loads(r.stdout) if r.stdout.strip() else None

    def setup(self) -> None:
        """(Re)create the table: sets and the forward-hook chain."""
        t = {"family": FAMILY, "table": TABLE}
        cmds: list[dict[str, Any]] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}},
                                      {"delete": {"table": {"family": FAMILY, "name": TABLE}}},
                                      {"add": {"table": {"family": FAMILY, "name": TABLE}}}]
        for name, typ, flags in (("ip4", "ipv4_addr", ["interval", "timeout"]), ("ip6", "ipv6_addr", ["interval", "timeout"]),
                                 ("quic4", ["ipv4_addr", "inet_service", "ipv4_addr", "inet_service"], ["timeout"]),
                                 ("quic6", ["ipv6_addr", "inet_service", "ipv6_addr", "inet_service"], ["timeout"])):
            cmds.append({"add": {"set": {**t, "name": name, "type": typ, "flags": flags}}})
        cmds.append({"add": {"chain": {**t, "name": CHAIN, "type": "filter", "hook": "forward", "prio": -10, "policy": "accept"}}})

        def rule(*expr: dict[str, Any]) -> dict[str, Any]:
            return {"add": {"rule": {**t, "chain": CHAIN, "expr": list(expr)}}}

        def m(left: Any, s: str) -> dict[str, Any]:
            return {"match": {"op": "==", "left": left, "right": f"@{s}"}}

        for ip, v in (("ip", "4"), ("ip6", "6")):
            cmds += [
                rule(m(_p(ip, "daddr"), f"ip{v}"), {"counter": None}, {"drop": None}),
                rule(m(_p(ip, "saddr"), f"ip{v}"), {"counter": None}, {"drop": None}),
                rule(m({"concat": [_p(ip, "saddr"), _p("udp", "sport"), _p(ip, "daddr"), _p("udp", "dport")]}, f"quic{v}"),
                     {"counter": None}, {"drop": None}),
            ]
        self.run(cmds)

    def add(self, set_name: str, value: Any, timeout: int = 0) -> None:
        elem: dict[str, Any] = {"val": {"concat": list(value)} if isinstance(value, tuple) else value}
        if timeout:
            elem["timeout"] = int(timeout)
        self.run([{"add": {"element": {"family": FAMILY, "table": TABLE, "name": set_name, "elem": [{"elem": elem}]}}}])

    def delete(self, set_name: str, value: Any) -> None:
        val = {"concat": list(value)} if isinstance(value, tuple) else value
        self.run([{"delete": {"element": {"family": FAMILY, "table": TABLE, "name": set_name, "elem": [val]}}}])

    def flush(self, set_name: str) -> None:
        self.run([{"flush": {"set": {"family": FAMILY, "table": TABLE, "name": set_name}}}])

    def elements(self, set_name: str) -> list[Any]:
        out = self.run([{"list": {"set": {"family": FAMILY, "table": TABLE, "name": set_name}}}])
        data = json.loads(out) if isinstance(out, str) else out
        for item in (data or {}).get("nftables", []):
            if "set" in item:
                return [e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e for e in item["set"].get("elem", [])]
        return []

    def teardown(self) -> None:
        try:
            self.run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
        except NftError:
            pass  # already gone

    @staticmethod
    def address_or_prefix(target: str) -> Any:
        """An nftables set element for an address or a CIDR prefix (``198.51.100.0/24``)."""
        if "/" in target:
            addr, _, plen = target.partition("/")
            return {"prefix": {"addr": addr, "len": int(plen)}}
        return target

    @staticmethod
    def set_for(ip: str, kind: str) -> str:
        return f"{kind}{'6' if ':' in ip else '4'}"
