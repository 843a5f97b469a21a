"""beiand's nftables table: the address sets an overlay's ``AddressRule``s are written into.

The element building is tested without the kernel; ``sync_addresses`` against real nftables, in a
network namespace of its own per test (marked integration: it needs root)."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beiand.enforce.nft import (
    MAX_CONCAT_ELEMENTS,
    MAX_ELEMENTS,
    Box,
    Count,
    Nft,
    NftError,
    address_elements,
    disjoint,
    fit,
    over_cap,
    parse_net,
)
from beiand.model import AddressRule

T = TypeVar("T")
NOW = 1_800_000_000.0


# -- addresses ---------------------------------------------------------------------------------


def test_parse_net_reads_addresses_prefixes_and_ranges() -> None:
    assert parse_net("198.51.100.10") == (4, 0xC633640A, 0xC633640A)
    assert parse_net("198.51.100.0/24") == (4, 0xC6336400, 0xC63364FF)
    assert parse_net("198.51.100.77/24") == parse_net("198.51.100.0/24")  # host bits ignored, as nft does
    assert parse_net(" 198.51.100.10-198.51.100.19 ") == (4, 0xC633640A, 0xC6336413)
    v, lo, hi = parse_net("2001:db8::1-2001:db8::ff")
    assert (v, hi - lo) == (6, 0xFE)
    for bad in ("", "example.com", "198.51.100.0/33", "198.51.100.9-198.51.100.1", "198.51.100.1-2001:db8::1", "1.2.3.4-"):
        with pytest.raises(ValueError, match="expected an address, a CIDR prefix or a range"):
            parse_net(bad)


def test_address_or_prefix_gives_the_nft_value() -> None:
    assert Nft.address_or_prefix("198.51.100.10") == "198.51.100.10"
    assert Nft.address_or_prefix("198.51.100.0/24") == {"prefix": {"addr": "198.51.100.0", "len": 24}}
    assert Nft.address_or_prefix("2001:db8::/32") == {"prefix": {"addr": "2001:db8::", "len": 32}}
    assert Nft.address_or_prefix("198.51.100.10-198.51.100.19") == {"range": ["198.51.100.10", "198.51.100.19"]}
    assert Nft.address_or_prefix("198.51.100.16-198.51.100.31") == {"prefix": {"addr": "198.51.100.16", "len": 28}}
    assert Nft.address_or_prefix("0.0.0.0/0") == {"prefix": {"addr": "0.0.0.0", "len": 0}}
    with pytest.raises(NftError, match="nope"):
        Nft.address_or_prefix("nope")


# -- elements ----------------------------------------------------------------------------------


def test_each_kind_of_rule_goes_to_its_set() -> None:
    els = address_elements([
        AddressRule("198.51.100.10", ref="order-1"),  # an address, every port: both directions
        AddressRule("198.51.100.20", "tcp", (22, 22), ref="isms-1"),
        AddressRule("198.51.100.21", "", (53, 53), ref="isms-2"),  # any protocol: tcp and udp
        AddressRule("198.51.100.22", "udp", None, ref="isms-3"),  # every port of one protocol
        AddressRule("192.0.2.0/24", "tcp", (1000, 2000), ref="isms-4", src=True),
        AddressRule("2001:db8::5", "tcp", (443, 443), ref="isms-5"),
        AddressRule("2001:db8::/64", ref="order-2"),
    ], NOW)
    assert els == {
        "ip4": ["198.51.100.10"],
        "ip6": [{"prefix": {"addr": "2001:db8::", "len": 64}}],
        "port4": [{"concat": ["198.51.100.20", "tcp", 22]}, {"concat": ["198.51.100.21", "tcp", 53]},
                  {"concat": ["198.51.100.21", "udp", 53]}, {"concat": ["198.51.100.22", "udp", {"range": [0, 65535]}]}],
        "port6": [{"concat": ["2001:db8::5", "tcp", 443]}],
        "src4": [{"concat": [{"prefix": {"addr": "192.0.2.0", "len": 24}}, "tcp", {"range": [1000, 2000]}]}],
        "src6": [],
    }


def test_ends_become_timeouts_and_ended_rules_are_left_out() -> None:
    els = address_elements([
        AddressRule("198.51.100.10", until=NOW + 99.2, ref="a"),  # rounded up: never ends early
        AddressRule("198.51.100.11", until=NOW - 1, ref="b"),
        AddressRule("198.51.100.12", until=NOW, ref="c"),
        AddressRule("198.51.100.13", "tcp", (22, 22), until=NOW + 0.1, ref="d"),
    ], NOW)
    assert els["ip4"] == [{"elem": {"val": "198.51.100.10", "timeout": 100}}]
    assert els["port4"] == [{"elem": {"val": {"concat": ["198.51.100.13", "tcp", 22]}, "timeout": 1}}]


def test_overlapping_rules_become_disjoint_elements_that_end_with_the_last_rule_over_them() -> None:
    els = address_elements([
        AddressRule("198.51.100.0/24", until=NOW + 60, ref="order-net"),
        AddressRule("198.51.100.10", ref="order-host"),  # inside it, no end
        AddressRule("198.51.100.0/24", until=NOW + 60, ref="order-net-again"),  # the same twice
        AddressRule("198.51.100.10", "tcp", (20, 30), ref="isms-a"),
        AddressRule("198.51.100.10-198.51.100.11", "tcp", (25, 25), until=NOW + 5, ref="isms-b"),
    ], NOW)
    net = {"timeout": 60}
    assert els["ip4"] == [{"elem": {"val": {"range": ["198.51.100.0", "198.51.100.9"]}, **net}},
                          "198.51.100.10",
                          {"elem": {"val": {"range": ["198.51.100.11", "198.51.100.255"]}, **net}}]
    assert els["port4"] == [{"concat": ["198.51.100.10", "tcp", {"range": [20, 30]}]},
                            {"elem": {"val": {"concat": ["198.51.100.11", "tcp", 25]}, "timeout": 5}}]


def test_an_invalid_rule_is_refused_by_its_ref() -> None:
    for rule, what in ((AddressRule("198.51.100.300", ref="京通管〔2026〕9号"), "expected an address"),
                       (AddressRule("198.51.100.1", "icmp", ref="京通管〔2026〕9号"), "protocol 'icmp'"),
                       (AddressRule("198.51.100.1", "tcp", (80, 22), ref="京通管〔2026〕9号"), "ports"),
                       (AddressRule("198.51.100.1", "tcp", (1, 65536), ref="京通管〔2026〕9号"), "ports")):
        with pytest.raises(NftError, match=r"address rule 京通管〔2026〕9号 on .*" + what):
            address_elements([AddressRule("198.51.100.2", ref="fine"), rule], NOW)


# A reference for ``disjoint``: at every point, the end of the last box over it (None: no box).
def _end_at(boxes: list[Box], point: tuple[int, ...]) -> float | None:
    ends = [end for ivs, end in boxes if all(lo <= x <= hi for (lo, hi), x in zip(ivs, point, strict=True))]
    return max(ends) if ends else None


_interval = st.tuples(st.integers(0, 11), st.integers(0, 5)).map(lambda t: (t[0], t[0] + t[1]))
_boxes = st.lists(st.tuples(st.tuples(_interval, _interval), st.sampled_from([10.0, 20.0, math.inf])), max_size=6)


@given(_boxes)
def test_disjoint_keeps_the_cover_and_the_ends_without_overlaps(boxes: list[Box]) -> None:
    pieces = disjoint(boxes)
    for x in range(18):
        for y in range(18):
            over = [end for ivs, end in pieces if ivs[0][0] <= x <= ivs[0][1] and ivs[1][0] <= y <= ivs[1][1]]
            assert len(over) <= 1, (x, y, pieces)
            assert (over[0] if over else None) == _end_at(boxes, (x, y))
    assert disjoint(pieces) == pieces  # already disjoint: unchanged


def test_disjoint_leaves_separate_rules_alone() -> None:
    boxes: list[Box] = [(((1, 1),), 5.0), (((3, 9),), math.inf), (((10, 10),), math.inf)]
    assert disjoint(boxes) == [(((1, 1),), 5.0), (((3, 10),), math.inf)]  # adjacent with the same end: one piece


# -- real nftables in a namespace --------------------------------------------------------------


@pytest.fixture
def ns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("nftables in a network namespace needs root")
    from pyroute2 import netns

    name = f"nft{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def inside(ns: str, fn: Callable[[Nft], T]) -> T:
    """``fn`` with a fresh table in the namespace (libnftables binds its socket where Nft is built)."""
    from beiand.lab.netns import in_netns

    def run() -> T:
        nft = Nft()
        nft.setup()
        return fn(nft)

    return in_netns(ns, run)


def listing(nft: Nft) -> dict[str, list[Any]]:
    """Every address set's elements as nft lists them, with the timeout (not the expiry) if any."""
    out: dict[str, list[Any]] = {}
    for name in ("ip4", "ip6", "port4", "port6", "src4", "src6"):
        out_ = nft.run([{"list": {"set": {"family": "inet", "table": "beiand", "name": name}}}])
        data = json.loads(out_) if isinstance(out_, str) else out_
        (s,) = [i["set"] for i in data["nftables"] if "set" in i]
        out[name] = [{"val": e["elem"]["val"], "timeout": e["elem"]["timeout"]} if isinstance(e, dict) and "elem" in e else e
                     for e in s.get("elem", [])]
    return out


@pytest.mark.integration
def test_sync_addresses_writes_every_kind_of_rule(ns: str) -> None:
    rules = [
        AddressRule("198.51.100.10", ref="address"),
        AddressRule("198.51.100.128/25", ref="prefix"),
        AddressRule("198.51.100.20-198.51.100.29", ref="range", until=NOW + 3600),
        AddressRule("198.51.100.30", "tcp", (8000, 8099), ref="port range"),
        AddressRule("198.51.100.31", "", (53, 53), ref="any protocol"),
        AddressRule("198.51.100.32", "tcp", (22, 22), ref="ended", until=NOW - 5),
        AddressRule("192.0.2.7", "udp", (443, 443), ref="client", src=True),
        AddressRule("2001:db8::/48", ref="v6 prefix"),
        AddressRule("2001:db8:1::5", "tcp", (22, 22), ref="v6 port", until=NOW + 20 * 365 * 86400),  # years: still a timeout
    ]
    count, got = inside(ns, lambda nft: (nft.sync_addresses(rules, NOW), listing(nft)))
    assert count == 9
    assert got == {
        "ip4": ["198.51.100.10", {"val": {"range": ["198.51.100.20", "198.51.100.29"]}, "timeout": 3600},
                {"prefix": {"addr": "198.51.100.128", "len": 25}}],
        "ip6": [{"prefix": {"addr": "2001:db8::", "len": 48}}],
        "port4": [{"concat": ["198.51.100.30", "tcp", {"range": [8000, 8099]}]}, {"concat": ["198.51.100.31", "tcp", 53]},
                  {"concat": ["198.51.100.31", "udp", 53]}],
        "port6": [{"val": {"concat": ["2001:db8:1::5", "tcp", 22]}, "timeout": 20 * 365 * 86400}],
        "src4": [{"concat": ["192.0.2.7", "udp", 443]}],
        "src6": [],
    }


@pytest.mark.integration
def test_a_second_sync_replaces_the_first(ns: str) -> None:
    first = [AddressRule("198.51.100.10"), AddressRule("198.51.100.11", "tcp", (22, 22)), AddressRule("192.0.2.9", "tcp", src=True)]
    second = [AddressRule("198.51.100.12", "udp", (53, 53))]

    def run(nft: Nft) -> list[dict[str, list[Any]]]:
        nft.sync_addresses(first, NOW)
        seen = [listing(nft)]
        nft.sync_addresses(second, NOW)
        seen.append(listing(nft))
        nft.sync_addresses([], NOW)
        seen.append(listing(nft))
        return seen

    one, two, three = inside(ns, run)
    assert one["ip4"] == ["198.51.100.10"] and one["port4"] == [{"concat": ["198.51.100.11", "tcp", 22]}]
    assert one["src4"] == [{"concat": ["192.0.2.9", "tcp", {"range": [0, 65535]}]}]
    assert two == {**{n: [] for n in two}, "port4": [{"concat": ["198.51.100.12", "udp", 53]}]}
    assert three == {n: [] for n in three}


@pytest.mark.integration
def test_overlapping_rules_are_accepted_by_the_kernel(ns: str) -> None:
    rules = [AddressRule("198.51.100.0/24", until=NOW + 60), AddressRule("198.51.100.10"),
             AddressRule("198.51.100.0/24", "tcp"), AddressRule("198.51.100.10", "", (22, 22), until=NOW + 9)]
    count, got = inside(ns, lambda nft: (nft.sync_addresses(rules, NOW), listing(nft)))
    # ip4: .0-.9 and .11-.255 end with the /24, .10 never; port4: tcp/22 on .10 is inside every tcp
    # port of the /24 (which has no end), udp/22 on .10 is its own.
    assert count == 3 + 2
    assert got["ip4"] == [{"val": {"range": ["198.51.100.0", "198.51.100.9"]}, "timeout": 60}, "198.51.100.10",
                          {"val": {"range": ["198.51.100.11", "198.51.100.255"]}, "timeout": 60}]
    assert got["port4"] == [{"concat": [{"prefix": {"addr": "198.51.100.0", "len": 24}}, "tcp", {"range": [0, 65535]}]},
                            {"val": {"concat": ["198.51.100.10", "udp", 22]}, "timeout": 9}]


@pytest.mark.integration
def test_an_invalid_rule_leaves_the_sets_as_they_were(ns: str) -> None:
    def run(nft: Nft) -> dict[str, list[Any]]:
        nft.sync_addresses([AddressRule("198.51.100.10", "tcp", (22, 22))], NOW)
        with pytest.raises(NftError, match="isms-7"):
            nft.sync_addresses([AddressRule("198.51.100.11"), AddressRule("no-such-address", ref="isms-7")], NOW)
        return listing(nft)

    assert inside(ns, run)["port4"] == [{"concat": ["198.51.100.10", "tcp", 22]}]


@pytest.mark.integration
def test_a_process_with_many_descriptors_gets_nft_instead_of_an_abort(ns: str) -> None:
    """libnftables 1.0.6 select()s on its socket: numbered 1024 or more, it aborts the process."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        def run(nft: Nft) -> tuple[str, int, dict[str, list[Any]]]:
            return nft.via, nft.sync_addresses([AddressRule("198.51.100.10", "tcp", (22, 22))], NOW), listing(nft)

        via, count, got = inside(ns, run)
    finally:
        for fd in held:
            os.close(fd)
    assert via == "nft -j" and count == 1 and got["port4"] == [{"concat": ["198.51.100.10", "tcp", 22]}]


# -- the caps --------------------------------------------------------------------------------------


def _hosts(n: int, ref: str, first: int = 0, **kw: Any) -> list[AddressRule]:
    """``n`` addresses two apart (no two adjacent: one element each), all under ``ref``."""
    return [AddressRule(f"10.{(first + 2 * i) >> 16 & 255}.{(first + 2 * i) >> 8 & 255}.{(first + 2 * i) & 255}", ref=ref, **kw)
            for i in range(n)]


def test_fit_keeps_whole_references_up_to_the_cap_and_names_those_left_out() -> None:
    rules = _hosts(3, "order-1") + _hosts(4, "isms:2", 100) + _hosts(2, "isms:3", 200)
    f = fit(rules, NOW, cap=6, concat_cap=6)
    # isms:2 would make 7: left out whole (a command is cut whole or not at all); isms:3 still fits
    assert [r.ref for r in f.rules] == ["order-1"] * 3 + ["isms:3"] * 2
    assert f.over_cap == ["isms:2"] and f.invalid == []
    assert sum(len(es) for es in f.elements.values()) == 5 == f.size.total


def test_fit_caps_the_concatenated_sets_on_their_own() -> None:
    """A flush and refill of a concatenated set costs far more per element than an address set
    (65,536 elements: 92 s against 2 s here), so the port and source sets have their own, lower cap."""
    rules = _hosts(5, "order-1") + _hosts(3, "isms:2", 100, proto="tcp", ports=(22, 22)) + _hosts(1, "isms:3", 200, ports=(53, 53))
    f = fit(rules, NOW, cap=100, concat_cap=4)
    assert f.over_cap == ["isms:3"]  # proto "": tcp and udp, 2 elements, 5 > 4
    assert f.size == Count(8, 3)
    assert MAX_CONCAT_ELEMENTS < MAX_ELEMENTS == 65_536


def test_fit_checks_the_cap_on_the_merged_elements_too() -> None:
    """Rules of different references cut each other into pieces (a host inside another's /24 with
    another end): each fits alone, the whole would not; the later references are left out."""
    rules = [AddressRule("10.0.0.0/24", until=NOW + 60, ref="order-net"), AddressRule("10.0.0.10", ref="isms:1"),
             AddressRule("10.0.1.0/24", until=NOW + 60, ref="order-net-2"), AddressRule("10.0.1.10", ref="isms:2")]
    f = fit(rules, NOW, cap=4, concat_cap=4)
    assert f.size.total <= 4 and f.over_cap and f.over_cap[-1] == "isms:2"
    assert address_elements(f.rules, NOW) == f.elements


def test_fit_leaves_out_what_nftables_cannot_take_by_its_ref() -> None:
    f = fit([AddressRule("not-an-address", ref="isms:9"), AddressRule("10.0.0.1", ref="order-1")], NOW)
    assert [r.ref for r in f.rules] == ["order-1"] and len(f.invalid) == 1 and "isms:9" in f.invalid[0]


def test_over_cap_says_why_rules_cannot_all_be_written_alone() -> None:
    assert over_cap(_hosts(3, "isms:1"), NOW, cap=3) == ""
    assert over_cap(_hosts(4, "isms:1"), NOW, cap=3) == "4 nftables set elements, over the cap of 3"
    why = over_cap(_hosts(3, "isms:1", proto="tcp"), NOW, cap=10, concat_cap=2)
    assert why == "3 nftables set elements of address . protocol . port, over the cap of 2"


def test_a_hung_nft_command_is_given_up_after_the_time_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without python3-nftables the JSON goes to ``nft -j -f -``, a process: it gets a time bound
    (libnftables runs in the calling thread and has none)."""
    fake = tmp_path / "nft"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    nft = Nft()
    nft.nft, nft.via = None, "nft -j"
    with pytest.raises(NftError, match=r"nft: no answer within 0.2 s"):
        nft.run([{"list": {"tables": None}}], timeout=0.2)


@pytest.mark.integration
def test_in_place_sees_the_table_gone_after_a_flush_of_the_ruleset_or_its_deletion(ns: str) -> None:
    import subprocess

    def run(nft: Nft) -> list[bool]:  # in the namespace: so is the nft command it starts
        seen = [nft.in_place()]
        subprocess.run(["nft", "flush", "ruleset"], check=True)
        seen.append(nft.in_place())
        nft.setup()
        seen.append(nft.in_place())
        subprocess.run(["nft", "delete", "table", "inet", "beiand"], check=True)
        seen.append(nft.in_place())
        return seen

    assert inside(ns, run) == [True, False, True, False]
