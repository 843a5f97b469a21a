"""The overlays: closure orders, the regulator's commands, exemptions and grace, on top of the
records' verdict, evaluated at the observation's own time (DESIGN.md: a decision is finished
where it is decided)."""

from __future__ import annotations

from typing import NamedTuple


class AddressRule(NamedTuple):
    """Traffic an overlay cuts by address, whatever the port of the name: executed in nftables sets
    (``enforce.nft``), in every mode. ``net`` is an address, a CIDR prefix or a range ``lo-hi``;
    ``proto`` "" (any), "tcp" or "udp"; ``ports`` the destination port range, or None (every port);
    ``until`` the end (epoch seconds) or 0 (until lifted); ``ref`` what put it there."""

    net: str
    proto: str = ""
    ports: tuple[int, int] | None = None
    until: float = 0.0
    ref: str = ""
    src: bool = False  # the rule is on the client's (source) address, not the server's
