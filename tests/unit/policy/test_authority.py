"""The authority's lists of unfiled sites as decision-store rows and as an overlay: per flow, blocked
in enforce prefixes and flagged elsewhere, the list as the deciding rule; never where the records
file the name (a conflict); and what an import finds of each entry (hosted here or not, filed)."""

from __future__ import annotations

from pathlib import Path

from beiand.model import (
    Action,
    Filing,
    FilingStatus,
    Kind,
    Mode,
    Observation,
    Overlay,
    PrefixState,
    ServiceType,
    Transport,
    VerdictKind,
)
from beiand.policy import Decider, Policy, PolicyConfig
from beiand.policy.authority import (
    BLOCKED,
    CONFLICT,
    FLAGGED,
    KIND,
    NOT_HOSTED,
    AuthorityBook,
    AuthorityLayer,
    AuthorityLists,
    Served,
    assess,
    listed_entry,
    note,
)
from beiand.policy.inventory import HostedPrefix, Inventory
from beiand.records.authority import AuthorityEntry
from beiand.records.index import RecordIndex
from beiand.store import Change, Entry

T0 = 1_800_000_000.0
FILED = Filing("京ICP备12345678号-1", "示例公司", ServiceType.WEBSITE, ("filed.example.com",), ("198.51.100.7",), "示例云",
               FilingStatus.ACTIVE)


def policy(allow: frozenset[str] = frozenset()) -> Policy:
    inv = Inventory([HostedPrefix("198.51.100.0/25", "cust-7", "bj1", PrefixState.ACTIVE, Mode.ENFORCE),
                     HostedPrefix("198.51.100.128/25", "cust-8", "bj1", PrefixState.ACTIVE, Mode.MONITOR)])
    return Policy(RecordIndex([FILED]), inv, PolicyConfig(provider="示例云", allow_names=allow))


def entry(target: str, ref: str = "TG-12", address: str = "") -> AuthorityEntry:
    return AuthorityEntry(target, ref, "2026-12-01", "2026-12-10", address, "list.csv:2")


def changes(entries: list[Entry], first: int = 1) -> list[Change]:
    return [Change(first + i, e.kind, e.key, e.op, e.data, e.at, e.actor, e.why, "gw-1") for i, e in enumerate(entries)]


def obs(name: str, server: str, ts: float = T0 + 10, kind: Kind = Kind.TLS_SNI) -> Observation:
    return Observation(ts, "203.0.113.5", 40000, server, 443, Transport.TCP, kind, name, name)


def decider(block: bool = True, *targets: str, allow: frozenset[str] = frozenset()) -> Decider:
    book = AuthorityBook(None, load=False)
    book.apply(changes([listed_entry(entry(t), "0" * 64, "alice", T0) for t in targets]))
    return Decider(policy(allow), [AuthorityLayer(book, block)])


def test_a_listed_name_is_blocked_per_flow_in_enforce_prefixes_with_the_list_as_the_rule() -> None:
    dec = decider(True, "shop.example.com", "filed.example.com")
    d = dec.decide(obs("www.shop.example.com", "198.51.100.9"))
    assert (d.action, d.by, d.ref, d.rule) == (Action.BLOCK, Overlay.AUTHORITY, "TG-12", "authority:TG-12")
    # flagged, naming the list, where the prefix does not enforce
    d = dec.decide(obs("shop.example.com", "198.51.100.200"))
    assert (d.action, d.by, d.rule) == (Action.FLAG, Overlay.AUTHORITY, "authority:would-block:TG-12")
    # before the list was imported: the records alone (replay decides as the daemon did then)
    d = dec.decide(obs("shop.example.com", "198.51.100.9", ts=T0 - 1))
    assert d.by == "" and d.rule == "enforce:unfiled"
    # a name above it, another name on the same address: untouched
    assert dec.decide(obs("example.com", "198.51.100.9")).by == ""
    # a DNS answer is not a connection: flagged
    d = dec.decide(obs("shop.example.com", "198.51.100.9", kind=Kind.DNS_ANSWER))
    assert d.action is Action.FLAG and d.by == Overlay.AUTHORITY


def test_a_name_the_records_file_is_never_blocked_by_a_list() -> None:
    dec = decider(True, "filed.example.com", "allowed.example.com", allow=frozenset({"allowed.example.com"}))
    d = dec.decide(obs("filed.example.com", "198.51.100.7"))
    assert (d.action, d.by, d.rule) == (Action.LOG, "", "pass:filed")
    d = dec.decide(obs("allowed.example.com", "198.51.100.9"))
    assert d.action is Action.LOG and d.by == ""
    # on an address its filing does not list, the filing is still ours (drift to correct, flagged by
    # the records): a conflict for a person, never a block by the list (issue 35)
    d = dec.decide(obs("filed.example.com", "198.51.100.9"))
    assert (d.verdict.verdict, d.verdict.reason) == (VerdictKind.MISMATCH, "ip-not-listed")
    assert (d.action, d.by, d.rule) == (Action.FLAG, "", "flag:ip-not-listed")


def test_a_filing_of_ours_drifting_is_never_blocked_by_a_list_but_another_providers_is() -> None:
    theirs = Filing("京ICP备87654321号-1", "别家公司", ServiceType.WEBSITE, ("theirs.example.com",), ("198.51.100.9",), "别家云",
                    FilingStatus.ACTIVE)
    pending = Filing("京ICP备11112222号-1", "示例公司", ServiceType.WEBSITE, ("pending.example.com",), ("198.51.100.9",), "示例云",
                     FilingStatus.ACCESS_PENDING, reviewed="2027-01-14")
    inv = policy().inventory
    p = Policy(RecordIndex([FILED, theirs, pending]), inv, PolicyConfig(provider="示例云"))
    book = AuthorityBook(None, load=False)
    book.apply(changes([listed_entry(entry(t), "0" * 64, "alice", T0)
                        for t in ("filed.example.com", "theirs.example.com", "pending.example.com")]))
    dec = Decider(p, [AuthorityLayer(book, True)])
    # ours, served from an unlisted address (MISMATCH ip-not-listed), in an enforce prefix: flagged by the records only
    d = dec.decide(obs("filed.example.com", "198.51.100.9"))
    assert d.verdict.reason == "ip-not-listed" and d.action is not Action.BLOCK and d.by == ""
    assert dec.lookup("filed.example.com", "198.51.100.9", T0 + 10)[0].action is not Action.BLOCK
    # ours, access pending within its grace
    d = dec.decide(obs("pending.example.com", "198.51.100.9"))
    assert d.verdict.reason == "access-pending-grace" and (d.action, d.by) == (Action.LOG, "")
    # another provider's filing: not filed here, the list decides
    d = dec.decide(obs("theirs.example.com", "198.51.100.9"))
    assert d.verdict.reason == "other-provider" and (d.action, d.by) == (Action.BLOCK, Overlay.AUTHORITY)
    # assess: a conflict with the filing at the unlisted address, no case; another provider's: blocked
    a = assess(entry("filed.example.com"), p, [Served("filed.example.com", "198.51.100.9", 3, T0, T0)], T0 + 10)
    assert (a.outcome, a.filing, a.verdict) == (CONFLICT, "京ICP备12345678号-1", "mismatch")
    a = assess(entry("theirs.example.com"), p, [Served("theirs.example.com", "198.51.100.9", 3, T0, T0)], T0 + 10)
    assert (a.outcome, a.filing) == (BLOCKED, "")


def test_block_false_flags_only_and_names_the_list() -> None:
    dec = decider(False, "shop.example.com")
    d = dec.decide(obs("shop.example.com", "198.51.100.200"))
    assert (d.action, d.by, d.ref) == (Action.FLAG, Overlay.AUTHORITY, "TG-12")
    d = dec.decide(obs("shop.example.com", "198.51.100.9"))  # enforce: the records' own verdict blocks it, the list named
    assert d.action is Action.BLOCK and d.by == Overlay.AUTHORITY and d.rule == "enforce:unfiled"


def test_a_listed_address_covers_the_flows_that_reach_it_without_a_name() -> None:
    dec = decider(True, "198.51.100.9")
    d = dec.decide(obs("", "198.51.100.9", kind=Kind.IP_ONLY))
    assert (d.action, d.by, d.ref) == (Action.BLOCK, Overlay.AUTHORITY, "TG-12")
    d = dec.decide(obs("198.51.100.9", "198.51.100.9", kind=Kind.HTTP_HOST))
    assert d.by == Overlay.AUTHORITY
    # a name served from the same address: per flow, never the host
    assert dec.decide(obs("other.example.com", "198.51.100.9")).by == ""
    assert dec.layers[0].addresses(T0 + 10) == [] and dec.layers[0].next_change(T0) == float("inf")


def test_the_snapshot_carries_the_lists_to_the_workers(tmp_path: Path) -> None:
    book = AuthorityBook(tmp_path, load=False)
    book.apply(changes([listed_entry(entry("shop.example.com"), "0" * 64, "alice", T0)]))
    book.snapshot("sqlite:x")
    layer = AuthorityLayer.from_state_dir(tmp_path, True)
    assert layer.store.orders["shop.example.com"].order == "TG-12" and layer.metrics()["rules"] == 1
    assert (tmp_path / "authority.json").exists() and layer.name == "authority"


def test_assess_hosted_not_hosted_and_conflict() -> None:
    p = policy()
    seen = [Served("www.shop.example.com", "198.51.100.9", 3, T0 - 100, T0 - 50)]
    a = assess(entry("shop.example.com"), p, seen, T0)
    assert (a.outcome, a.hosted_by, a.servers, a.accounts, a.verdict, a.hits) == (
        BLOCKED, "access log", ("198.51.100.9",), ("cust-7",), "unfiled", 3)
    assert assess(entry("shop.example.com"), p, seen, T0, block=False).outcome == FLAGGED
    # seen only on an address not hosted here (any more): not hosted
    assert assess(entry("shop.example.com"), p, [Served("shop.example.com", "192.0.2.1", 1, T0, T0)], T0).outcome == NOT_HOSTED
    # the address the authority saw it on is hosted here
    a = assess(entry("quiet.example.com", address="198.51.100.200"), p, [], T0)
    assert (a.outcome, a.hosted_by, a.accounts) == (BLOCKED, "inventory", ("cust-8",))
    # filed at the address it is served from: a conflict, with the filing
    a = assess(entry("filed.example.com"), p, [Served("filed.example.com", "198.51.100.7", 1, T0, T0)], T0)
    assert (a.outcome, a.filing, a.verdict) == (CONFLICT, "京ICP备12345678号-1", "filed")
    # filed through this provider but not served here: the records and the authority disagree
    assert assess(entry("filed.example.com"), p, [], T0).outcome == CONFLICT
    assert assess(entry("away.example.org"), p, [], T0).outcome == NOT_HOSTED
    assert assess(entry("198.51.100.9"), p, [], T0).outcome == BLOCKED
    assert assess(entry("192.0.2.1"), p, [], T0).outcome == NOT_HOSTED
    assert assess(entry("198.51.100.7"), p, [], T0).outcome == CONFLICT  # the address is filed


def test_the_lists_fold_with_assessments_settlements_and_rejected_rows() -> None:
    e1, e2 = entry("shop.example.com"), entry("filed.example.com")
    rows = [listed_entry(e1, "0" * 64, "alice", T0), note(e1.target, "assessed", "alice", "", T0, list="TG-12", outcome=BLOCKED),
            listed_entry(e2, "0" * 64, "alice", T0), note(e2.target, "assessed", "alice", "", T0, list="TG-12", outcome=CONFLICT),
            Entry(KIND, "import:ab", "note", {"event": "imported", "lists": ["TG-12"], "rejected": [
                {"source": "list.csv:5", "field": "name (域名)", "reason": "bad", "list": "TG-12", "site": "x y"},
                {"source": "list.csv:6", "field": "row", "reason": "bad", "list": "", "site": ""}]}, T0)]
    lists = AuthorityLists()
    lists.apply(changes(rows))
    assert [e.target for e in lists.lists()["TG-12"]] == ["shop.example.com", "filed.example.com"]
    assert lists.conflicts() == 1 and [r["source"] for r in lists.rejected("TG-12")] == ["list.csv:5", "list.csv:6"]
    lists.apply(changes([note(e2.target, "settled", "bob", "checked in the MIIT system", T0 + 5, list="TG-12")], first=6))
    assert lists.conflicts() == 0 and lists.entries[("TG-12", "filed.example.com")].settled["by"] == "bob"
    # a newer list naming the same site is the one in force; the authority withdrawing it ends it
    lists.apply(changes([listed_entry(entry("shop.example.com", "TG-13"), "1" * 64, "alice", T0 + 9),
                         Entry(KIND, "filed.example.com", "end", {}, T0 + 9, "alice", "withdrawn")], first=7))
    assert sorted((e.target, e.list_ref) for e in lists.in_force()) == [("shop.example.com", "TG-13")]


def test_an_escalated_authority_case_never_blocks_a_filing_of_ours_drifting() -> None:
    """A case an import opened (before issue 35's fix) on a name the records file through this
    provider, served from an address the filing does not list: once escalated, the case does not
    block it (the records file it: a conflict for a person); a mismatch case of the daemon's own on
    the same drift still does (its finding is the drift)."""
    from beiand.policy.cases import CaseSnapshot
    from beiand.policy.overlays import CaseLayer

    def decide(key: str) -> tuple[Action, str]:
        snap = CaseSnapshot(None, load=False)
        snap.escalated = {key: ("cust-7", ("filed.example.com",))}
        d = Decider(policy(), [CaseLayer(snap)]).decide(obs("filed.example.com", "198.51.100.9"))
        return d.action, d.by

    assert decide("cust-7|authority|filed.example.com") == (Action.FLAG, "")
    assert decide("cust-7|mismatch|filed.example.com") == (Action.BLOCK, Overlay.CASE)
