"""beiand's own nftables table (``inet beiand``), managed through libnftables' JSON API.

Debian's ``python3-nftables`` (a ctypes binding to libnftables, not on PyPI) is made visible to
the venv by adding its directory at the end of ``sys.path``; without it the same JSON goes to
``nft -j -f -``. beiand never touches another table and deletes its own on a clean stop. The
binding opens its netlink socket when :class:`Nft` is built: build it inside the network
namespace it is to act on.

Sets (all with per-element timeouts), matched by the drop rules of the ``forward`` chain:

- ``ip4``/``ip6`` (address, CIDR prefix or range; interval): all traffic to *and* from it. A
  closure order on an address, and any overlay rule on an address with neither protocol nor port
  (a regulator's filter on a server's or on a client's address alike: for TCP a drop in one
  direction already kills every connection both ways, so both directions differ only for one-way
  UDP or ICMP, which a cut address should not keep either).
- ``port4``/``port6`` (server address . protocol . server port, every field an interval):
  ``ip daddr . meta l4proto . th dport``. An overlay rule on a server's address with a protocol or
  a port range; protocol "" is put in twice, as tcp and as udp; no port range is every port.
- ``src4``/``src6`` (client address . protocol . server port): the same on ``ip saddr``, for an
  overlay rule on the client's address with a protocol or a port.
- ``quic4``/``quic6`` (client . client port . server . server port: one QUIC flow to an unfiled
  name, dropped for a short time so the client falls back to TCP, where the reset applies).

The address sets (``ip``, ``port``, ``src``) are written whole by :meth:`Nft.sync_addresses`, in one
transaction; overlapping rules are cut into disjoint elements first (the kernel refuses overlaps).
What one write may hold is capped (:func:`fit`): rewriting 65,536 elements of the address sets took
about 2 s here, of the concatenated port and source sets 92 s (6 s for 10,000), so those have a cap
of their own; whole references beyond a cap are left out, never part of one.
Nothing else is ever blocked per host: an unnamed flow is reset alone (issue 13; REGULATIONS.md:
blocking is per name or per flow).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from typing import Any, NamedTuple

from beiand.errors import BeiandError
from beiand.model import AddressRule

FAMILY, TABLE, CHAIN = "inet", "beiand", "forward"
_T = {"family": FAMILY, "table": TABLE}
FD_SETSIZE = 1024
ADDRESS_SETS = ("ip4", "ip6", "port4", "port6", "src4", "src6")
CONCAT_SETS = frozenset({"port4", "port6", "src4", "src6"})  # address . protocol . port
PROTOCOLS = ("tcp", "udp")  # what proto "" stands for in the port sets
MAX_ELEMENTS = 65_536  # address-set elements one write holds, in all
MAX_CONCAT_ELEMENTS = 8_192  # of them in the concatenated sets (about 5 s to rewrite here)
NFT_TIMEOUT_S = 60.0  # the longest an ``nft -j`` process may take over one write


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


def _lowest_free_fd() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


def _p(proto: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": field}}


def _in(left: Any, set_name: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": f"@{set_name}"}}


def _rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"add": {"rule": {**_T, "chain": chain, "expr": list(expr)}}}


def _address_sets() -> list[dict[str, Any]]:
    """The commands that make the (empty) address sets."""
    cmds = []
    for v, addr in (("4", "ipv4_addr"), ("6", "ipv6_addr")):
        for name, typ in ((f"ip{v}", addr), (f"port{v}", [addr, "inet_proto", "inet_service"]),
                          (f"src{v}", [addr, "inet_proto", "inet_service"])):
            cmds.append({"add": {"set": {**_T, "name": name, "type": typ, "flags": ["interval", "timeout"]}}})
    return cmds


def _address_rules() -> list[dict[str, Any]]:
    """One drop rule per address set and direction (module docstring)."""
    l4proto, dport, drop = {"meta": {"key": "l4proto"}}, _p("th", "dport"), ({"counter": None}, {"drop": None})
    cmds = []
    for ip, v in (("ip", "4"), ("ip6", "6")):
        cmds += [_rule(CHAIN, _in(_p(ip, "daddr"), f"ip{v}"), *drop),
                 _rule(CHAIN, _in(_p(ip, "saddr"), f"ip{v}"), *drop),
                 _rule(CHAIN, _in({"concat": [_p(ip, "daddr"), l4proto, dport]}, f"port{v}"), *drop),
                 _rule(CHAIN, _in({"concat": [_p(ip, "saddr"), l4proto, dport]}, f"src{v}"), *drop)]
    return cmds


class Nft:
    def __init__(self) -> None:
        # libnftables 1.0.6 waits for the kernel's answer with select(): a netlink socket numbered
        # FD_SETSIZE (1024) or more aborts the whole process ("bit out of range 0 - FD_SETSIZE on
        # fd_set"). Its socket takes the lowest free descriptor; when that is too high, nft -j it is.
        self.nft = _binding() if _lowest_free_fd() < FD_SETSIZE - 64 else None
        if self.nft is not None:
            self.nft.set_json_output(True)
        elif shutil.which("nft") is None:
            raise NftError("neither python3-nftables nor the nft command is installed (apt-get install nftables python3-nftables)")
        self.via = "libnftables" if self.nft is not None else "nft -j"

    def run(self, cmds: list[dict[str, Any]], timeout: float | None = None) -> Any:
        """One transaction. ``timeout`` bounds an ``nft`` process (killed, its transaction not
        committed); libnftables runs in the calling thread and cannot be bounded."""
        doc = {"nftables": cmds}
        if self.nft is not None:
            rc, out, err = self.nft.json_cmd(doc)
            if rc != 0:
                raise NftError(f"nftables: {err.strip() or rc}")
            return out
        try:
            r = subprocess.run(["nft", "-j", "-f", "-"], input=json.dumps(doc), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise NftError(f"nft: no answer within {timeout:g} s (killed)") from None
        if r.returncode != 0:
            raise NftError(f"nft: {r.stderr.strip()}")
        return json.loads(r.stdout) if r.stdout.strip() else None

    def in_place(self) -> bool:
        """Whether the table and its chain are there (``nft flush ruleset`` or a deleted table
        removes them behind beiand's back). The chains alone are listed: listing the table or
        its chain reads every set element too (0.3 s for 65,536 here, 13 ms for this)."""
        out = self.run([{"list": {"chains": {"family": FAMILY}}}])
        data = json.loads(out) if isinstance(out, str) else out
        chains = [item["chain"] for item in (data or {}).get("nftables", []) if "chain" in item]
        return any(c.get("table") == TABLE and c.get("name") == CHAIN for c in chains)

    def setup(self) -> None:
        """(Re)create the table: sets and the forward-hook chain."""
        cmds: list[dict[str, Any]] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}},
                                      {"delete": {"table": {"family": FAMILY, "name": TABLE}}},
                                      {"add": {"table": {"family": FAMILY, "name": TABLE}}}]
        cmds += _address_sets()
        for name, v in (("quic4", "ipv4_addr"), ("quic6", "ipv6_addr")):
            cmds.append({"add": {"set": {**_T, "name": name, "type": [v, "inet_service", v, "inet_service"], "flags": ["timeout"]}}})
        cmds.append({"add": {"chain": {**_T, "name": CHAIN, "type": "filter", "hook": "forward", "prio": -10, "policy": "accept"}}})
        cmds += _address_rules()
        for ip, v in (("ip", "4"), ("ip6", "6")):
            flow = {"concat": [_p(ip, "saddr"), _p("udp", "sport"), _p(ip, "daddr"), _p("udp", "dport")]}
            cmds.append(_rule(CHAIN, _in(flow, f"quic{v}"), {"counter": None}, {"drop": None}))
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

    def sync_addresses(self, rules: Iterable[AddressRule], now: float) -> int:
        """Make the address sets (``ip``, ``port``, ``src``) hold exactly ``rules``: their flush and
        the new elements go in one transaction, so no packet ever sees them empty. A rule whose
        ``until`` is past is left out; the others expire by themselves (element timeout). Returns
        the number of elements written; an invalid rule raises :class:`NftError` naming its ``ref``
        and changes nothing."""
        return self.write_addresses(address_elements(rules, now))

    def write_addresses(self, elements: dict[str, list[Any]], timeout: float | None = NFT_TIMEOUT_S) -> int:
        """Replace the address sets' elements by ``elements`` (:func:`address_elements`, :func:`fit`)
        in one transaction; the number written."""
        # Flushed and refilled in one transaction. Not in two (the lab's SYNs sprayed during 30 syncs:
        # 61 of 2,033 and 109 of 1,147 got through), and not by deleting the sets and making them again with
        # their rules, although that is 60 times faster for 10,000 elements (a flush of n elements of
        # a concatenated set costs about n² here: 1,000 0.1 s, 3,000 0.7 s, 10,000 4.4 s): a new
        # concatenated set's elements are published after its rules, and 5 to 9 SYNs got through.
        # tests/integration/test_nft_address_rules.py::test_writing_the_rules_again_opens_no_gap.
        cmds: list[dict[str, Any]] = [{"flush": {"set": {**_T, "name": n}}} for n in ADDRESS_SETS]
        cmds += [{"add": {"element": {**_T, "name": n, "elem": es}}} for n, es in elements.items() if es]
        self.run(cmds, timeout)
        return sum(len(es) for es in elements.values())

    def teardown(self) -> None:
        try:
            self.run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
        except NftError:
            pass  # already gone

    @staticmethod
    def address_or_prefix(target: str) -> Any:
        """An nftables set element for an address, a CIDR prefix (``198.51.100.0/24``) or a range
        (``198.51.100.10-198.51.100.19``)."""
        try:
            version, lo, hi = parse_net(target)
        except ValueError as exc:
            raise NftError(f"{target!r}: {exc}")
        return _net_value(version, lo, hi)

    @staticmethod
    def set_for(ip: str, kind: str) -> str:
        return f"{kind}{'6' if ':' in ip else '4'}"


def parse_net(net: str) -> tuple[int, int, int]:
    """(IP version, first, last address as integers) of an address, a CIDR prefix (host bits are
    ignored, as nft does) or a range ``lo-hi``; ValueError saying what was expected."""
    text = net.strip()
    try:
        if "-" in text:
            a, _, b = text.partition("-")
            lo, hi = ipaddress.ip_address(a.strip()), ipaddress.ip_address(b.strip())
            if lo.version != hi.version:
                raise ValueError("the two ends of the range are of different IP versions")
            if int(lo) > int(hi):
                raise ValueError("the range ends before it starts")
            return lo.version, int(lo), int(hi)
        n = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"expected an address, a CIDR prefix or a range lo-hi ({exc})")
    return n.version, int(n.network_address), int(n.broadcast_address)


def _net_value(version: int, lo: int, hi: int) -> Any:
    """The nftables JSON for an address interval: an address, a prefix when it is exactly one, or a range."""
    make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    if lo == hi:
        return str(make(lo))
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo % size == 0:  # a power of two, aligned: a prefix
        return {"prefix": {"addr": str(make(lo)), "len": (32 if version == 4 else 128) - size.bit_length() + 1}}
    return {"range": [str(make(lo)), str(make(hi))]}


Box = tuple[tuple[tuple[int, int], ...], float]  # closed intervals, one per field; the end (inf: none)


def disjoint(boxes: list[Box]) -> list[Box]:
    """The same cover as ``boxes`` in pieces that do not overlap, each ending when the last box over
    it ends. nftables refuses overlapping elements in an interval set (plain and concatenated: "conflicting
    intervals", "File exists") while overlays overlap freely (an order on a /24, a filter on one
    address in it, each with its own end). Adjacent pieces over the same boxes stay one piece."""
    if not boxes:
        return []
    if not boxes[0][0]:
        return [((), max(end for _, end in boxes))]
    starts: dict[int, list[int]] = {}
    stops: dict[int, list[int]] = {}
    for i, (ivs, _) in enumerate(boxes):
        starts.setdefault(ivs[0][0], []).append(i)
        stops.setdefault(ivs[0][1] + 1, []).append(i)
    points = sorted(starts.keys() | stops.keys())
    active: set[int] = set()
    runs: list[tuple[int, int, list[Box]]] = []  # first, last, the pieces of the other fields
    for p, nxt in itertools.pairwise(points):
        active.difference_update(stops.get(p, ()))
        active.update(starts.get(p, ()))
        if not active:
            continue
        rest = disjoint([(boxes[i][0][1:], boxes[i][1]) for i in sorted(active)])
        if runs and runs[-1][1] == p - 1 and runs[-1][2] == rest:
            runs[-1] = (runs[-1][0], nxt - 1, rest)
        else:
            runs.append((p, nxt - 1, rest))
    return [(((lo, hi), *ivs), end) for lo, hi, rest in runs for ivs, end in rest]


Boxes = dict[tuple[str, str], list[Box]]  # (set, protocol) → the boxes of its rules


def _check(r: AddressRule) -> tuple[int, int, int]:
    """(IP version, first, last address) of a rule nftables can take; NftError naming its ``ref``."""
    try:
        version, lo, hi = parse_net(r.net)
        if r.proto not in ("", *PROTOCOLS):
            raise ValueError(f"protocol {r.proto!r}: expected \"\" (any), \"tcp\" or \"udp\"")
        if r.ports is not None and not 0 <= r.ports[0] <= r.ports[1] <= 65535:
            raise ValueError(f"ports {r.ports}: expected (first, last) with 0 <= first <= last <= 65535")
    except ValueError as exc:
        raise NftError(f"address rule {r.ref or '(no ref)'} on {r.net!r}: {exc}")
    return version, lo, hi


def _boxes(rules: Iterable[AddressRule], now: float) -> Boxes:
    boxes: Boxes = {}
    for r in rules:
        if r.until and r.until <= now:
            continue  # already ended
        version, lo, hi = _check(r)
        end = r.until or math.inf
        if not r.proto and r.ports is None:
            boxes.setdefault((f"ip{version}", ""), []).append((((lo, hi),), end))
            continue
        ports = r.ports or (0, 65535)
        for proto in (r.proto,) if r.proto else PROTOCOLS:
            boxes.setdefault((f"{'src' if r.src else 'port'}{version}", proto), []).append((((lo, hi), ports), end))
    return boxes


def _elements(boxes: Boxes, now: float) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {n: [] for n in ADDRESS_SETS}
    for (name, proto), bs in sorted(boxes.items()):
        version = int(name[-1])
        for ivs, end in disjoint(bs):
            val = _net_value(version, *ivs[0])
            if proto:
                (plo, phi), = ivs[1:]
                val = {"concat": [val, proto, plo if plo == phi else {"range": [plo, phi]}]}
            # Rounded up: a cut never ends before its rule does.
            out[name].append(val if end == math.inf else {"elem": {"val": val, "timeout": max(1, math.ceil(end - now))}})
    return out


def address_elements(rules: Iterable[AddressRule], now: float) -> dict[str, list[Any]]:
    """The elements of every address set (module docstring) for ``rules`` at ``now``, as nftables JSON."""
    return _elements(_boxes(rules, now), now)


class Count(NamedTuple):
    """Set elements: in all, and of them in the concatenated sets."""

    total: int
    concat: int

    def over(self, cap: int, concat_cap: int) -> bool:
        return self.total > cap or self.concat > concat_cap


def count(elements: dict[str, list[Any]]) -> Count:
    return Count(sum(len(es) for es in elements.values()), sum(len(es) for n, es in elements.items() if n in CONCAT_SETS))


def _count(boxes: Boxes) -> Count:
    total = concat = 0
    for (name, _), bs in boxes.items():
        n = len(bs) if len(bs) == 1 else len(disjoint(bs))
        total += n
        concat += n if name in CONCAT_SETS else 0
    return Count(total, concat)


def over_cap(rules: Iterable[AddressRule], now: float, cap: int = MAX_ELEMENTS, concat_cap: int = MAX_CONCAT_ELEMENTS) -> str:
    """Why ``rules`` alone could not be written (more set elements than a cap), or ""."""
    n = _count(_boxes(rules, now))
    if n.concat > concat_cap:
        return f"{n.concat} nftables set elements of address . protocol . port, over the cap of {concat_cap}"
    if n.total > cap:
        return f"{n.total} nftables set elements, over the cap of {cap}"
    return ""


class Fit(NamedTuple):
    """What one write of the address sets holds, and what it leaves out."""

    rules: list[AddressRule]  # the rules written
    elements: dict[str, list[Any]]  # their elements (address_elements)
    size: Count
    invalid: list[str]  # why each rule nftables cannot take was left out (its ref named)
    over_cap: list[str]  # the references left out whole, beyond a cap
    over_cap_rules: int  # their rules


def fit(rules: Iterable[AddressRule], now: float, cap: int = MAX_ELEMENTS, concat_cap: int = MAX_CONCAT_ELEMENTS) -> Fit:
    """The elements of ``rules`` at ``now`` within the caps. A rule nftables cannot take is left out
    alone (a lift must still apply); the rules of one reference go in whole or not at all, in the
    order given (the decider's: closure orders first), a reference that would pass a cap is left
    out and the later ones still tried."""
    invalid: list[str] = []
    by_ref: dict[str, list[AddressRule]] = {}
    for r in rules:
        if r.until and r.until <= now:
            continue
        try:
            _check(r)
        except NftError as exc:
            invalid.append(str(exc))
            continue
        by_ref.setdefault(r.ref, []).append(r)
    kept: list[list[AddressRule]] = []
    left: list[str] = []
    total = Count(0, 0)
    for ref, rs in by_ref.items():
        n = _count(_boxes(rs, now))
        more = Count(total.total + n.total, total.concat + n.concat)
        if more.over(cap, concat_cap):
            left.append(ref)
            continue
        kept.append(rs)
        total = more
    elements = _elements(_boxes([r for rs in kept for r in rs], now), now)
    if count(elements).over(cap, concat_cap):
        # Rules of different references cut each other into more pieces than each alone: the
        # longest run of the kept references that fits whole (found by halving).
        lo, hi = 0, len(kept)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            fits = not count(address_elements([r for rs in kept[:mid] for r in rs], now)).over(cap, concat_cap)
            lo, hi = (mid, hi) if fits else (lo, mid)
        left += [rs[0].ref for rs in kept[lo:]]
        kept = kept[:lo]
        elements = address_elements([r for rs in kept for r in rs], now)
    return Fit([r for rs in kept for r in rs], elements, count(elements), invalid, left, sum(len(by_ref[ref]) for ref in left))
