"""One order, every gateway (issue 29): three ``beiand run`` in ``enforce``, each in its network
namespace, following one real PostgreSQL in a namespace of its own.

- ``beiand block add NAME`` (and a CIDR, and a lift) takes effect on all three; the access log of
  each names the order; ``fleet status`` shows all three at the same version;
- PostgreSQL stopped: every gateway keeps blocking under its last snapshot, ``beiand_decision_store_up``
  is 0 and ``/readyz`` says so, ``block add`` exits 2 with the reason; PostgreSQL started again:
  the gateways catch up; a gateway restarted while the store was down enforces from its snapshot.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from beiand.accesslog import Query, query
from beiand.lab.netns import in_netns
from beiand.lab.traffic import quic_initial_datagrams, udp
from beiand.model import AccessRecord
from tests.integration.postgres import Postgres

pytestmark = pytest.mark.integration
FILED = "site5.example.cn"  # filed (tests.integration.nsdaemon.write_records): allowed unless ordered
FILED_IN_PREFIX = "site6.example.cn"
PREFIX, IN_PREFIX = "198.51.100.64/26", "198.51.100.70"


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0, state: Callable[[], object] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {state()}" if state is not None else ""))
        time.sleep(0.05)


class Fleet:
    """A PostgreSQL in a namespace of its own, linked by a veth to each of three gateways."""

    def __init__(self, wd: Path, n: int = 3) -> None:
        from pyroute2 import NetNS, netns

        from tests.integration.nsdaemon import NsDaemon, link

        self.tag = uuid.uuid4().hex[:6]
        self.ns = f"bpg{self.tag}"
        self.wd = wd
        netns.create(self.ns)
        with NetNS(self.ns) as h:
            h.link("set", index=h.link_lookup(ifname="lo")[0], state="up")
        self.pg = Postgres(wd / "pg", listen="0.0.0.0", netns=self.ns)
        self.pg.start()
        self.db = f"fleet{self.tag}"
        in_netns(self.ns, lambda: self.pg.create_db(self.db))
        self.daemons: list[NsDaemon] = []
        for i in range(n):
            url = f"postgresql://postgres@10.28.{i}.1:{self.pg.port}/{self.db}"
            d = NsDaemon(wd / f"gw{i}", gateway=f"gw-{i}-{self.tag}",
                         extra=f'\n[store]\nurl = "{url}"\npoll_interval = 0.5\nheartbeat_interval = 1\nconnect_timeout = 2\n')
            inv = d.wd / "inventory.csv"
            inv.write_text(inv.read_text().replace(",monitor", ",enforce"), encoding="utf-8")
            self.daemons.append(d)
            link(self.ns, d.ns, f"pc{self.tag}{i}", f"pg{self.tag}{i}", f"10.28.{i}.1", f"10.28.{i}.2")
        self.url = self.pg.url(db=self.db)  # inside the PostgreSQL namespace

    def cli(self, argv: list[str]) -> int:
        """``beiand …`` inside the PostgreSQL namespace, on the fleet's store."""
        from beiand.cli import main

        return in_netns(self.ns, lambda: main([*argv, "--store", self.url, "--state-dir", str(self.wd / "cli")]))

    def close(self) -> None:
        from pyroute2 import netns

        for d in self.daemons:
            d.close()
        self.pg.stop()
        try:
            netns.remove(self.ns)
        except OSError:
            pass


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    from tests.integration.nsdaemon import require_root

    require_root()
    if not Postgres.available():
        pytest.fail("PostgreSQL 15 is not installed (scripts/system-deps installs postgresql)")
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.close()


_port = [20000]


def flow(d: Any, name: str, server: str = "198.51.100.10") -> int:
    """A QUIC Initial naming ``name`` to ``server``:443, on the gateway's loopback (it captures
    there); the client port tells its record apart."""
    _port[0] = _port[0] + 1 if _port[0] < 60000 else 20000
    sport = _port[0]
    frame = udp("10.9.0.2", server, sport, 443, quic_initial_datagrams(name)[0])

    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind(("lo", 0))
            s.send(frame)

    in_netns(d.ns, send)
    return sport


def record(d: Any, sport: int) -> AccessRecord | None:
    for r in query(d.wd / "log", Query()):
        if r.client_port == sport and r.kind == "quic-sni":
            return r
    return None


def judged(d: Any, name: str, server: str = "198.51.100.10", timeout: float = 15.0) -> AccessRecord:
    """A new flow's record, once its access-log record is committed."""
    sport = flow(d, name, server)
    got: list[AccessRecord] = []

    def seen() -> bool:
        r = record(d, sport)
        if r is not None:
            got.append(r)
        return bool(got)

    wait_for(seen, f"the record of {name} on {d.ns}", timeout)
    return got[0]


def blocked_everywhere(f: Fleet, name: str, order: str, server: str = "198.51.100.10") -> Callable[[], bool]:
    def check() -> bool:
        return all((r := judged(d, name, server)).action == "block" and r.order == order for d in f.daemons)

    return check


def allowed_everywhere(f: Fleet, name: str, server: str = "198.51.100.10") -> Callable[[], bool]:
    def check() -> bool:
        return all(judged(d, name, server).action != "block" for d in f.daemons)

    return check


def fleet_status(f: Fleet, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    f.cli(["fleet", "status", "--json"])
    return dict(json.loads(capsys.readouterr().out))


def test_one_order_every_gateway_and_fail_static(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.integration.nsdaemon import metric

    f = fleet
    for d in f.daemons:
        d.start()
    for d in f.daemons:
        assert judged(d, FILED).action == "log"  # filed: allowed before any order
        assert judged(d, FILED_IN_PREFIX, IN_PREFIX).action == "log"
    assert f.cli(["block", "add", FILED, "--order", "京通管〔2026〕201号", "--reason", "closure", "--by", "ops"]) == 0
    assert f.cli(["block", "add", PREFIX, "--order", "京通管〔2026〕202号"]) == 0
    wait_for(blocked_everywhere(f, FILED, "京通管〔2026〕201号"), "the name order on all three gateways")
    wait_for(blocked_everywhere(f, FILED_IN_PREFIX, "京通管〔2026〕202号", IN_PREFIX), "the prefix order on all three")
    assert f.cli(["block", "remove", PREFIX, "--reason", "lifting notice"]) == 0
    wait_for(allowed_everywhere(f, FILED_IN_PREFIX, IN_PREFIX), "the lift on all three gateways")

    def same_version() -> bool:
        st = fleet_status(f, capsys)
        return len(st["gateways"]) == 3 and all(g["version"] == st["version"] == 3 for g in st["gateways"])

    wait_for(same_version, "fleet status: three gateways at version 3", state=lambda: fleet_status(f, capsys))

    # The store away: every gateway keeps enforcing its last snapshot and says so.
    f.pg.stop()
    for d in f.daemons:
        d.wait_for(lambda m: metric(m, "beiand_decision_store_up") == 0, 30, "beiand_decision_store_up 0")
        ready = d.json("/readyz")
        assert ready["details"]["decisions"]["fails_static"] and ready["details"]["decisions"]["error"]
    assert all(judged(d, FILED).action == "block" for d in f.daemons)
    capsys.readouterr()
    assert f.cli(["block", "add", "another.example.cn", "--order", "京通管〔2026〕203号"]) == 2
    assert "decision store" in capsys.readouterr().err
    # A gateway restarted while the store is down starts from its snapshot.
    d0 = f.daemons[0]
    assert d0.proc is not None
    d0.proc.terminate()
    d0.proc.wait(30)
    d0.start()
    assert judged(d0, FILED).action == "block" and judged(d0, FILED).order == "京通管〔2026〕201号"
    # Back: caught up, a new order reaches all three.
    f.pg.start()
    for d in f.daemons:
        d.wait_for(lambda m: metric(m, "beiand_decision_store_up") == 1, 30, "beiand_decision_store_up 1")
    assert f.cli(["block", "remove", FILED, "--reason", "rectified"]) == 0
    wait_for(allowed_everywhere(f, FILED), "the lift after the outage on all three gateways")
