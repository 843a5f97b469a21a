"""The access log's ``order`` column: what decided a record beyond the records' verdict, in one
spelling, written here and read back here (the sinks write it; the ISMS reports read it)."""

from __future__ import annotations

from beiand.model import Decision, Overlay

# The access log's ``order`` column: one spelling, written here and read back here.
_COLUMN = {Overlay.ISMS_FILTER: "isms:", Overlay.ISMS_MONITOR: "isms-monitor:", Overlay.ISMS_BLACKLIST: "isms-blacklist:",
           Overlay.ISMS_NOFILTER: "isms-nofilter:", Overlay.EXEMPTION: "exemption:", Overlay.CASE: "case:",
           Overlay.AUTHORITY: "authority:"}
_FROM_COLUMN = {v: k for k, v in _COLUMN.items()}


def order_column(d: Decision) -> str:
    """The access log's ``order`` value of a decision: a closure order's number, ``isms:<id>``
    (filter), ``isms-monitor:<id>``, ``isms-blacklist:<id>``, ``isms-nofilter:<id>``, ``exemption:<ref>``,
    ``case:<key>`` (a sponsor case past its deadline), ``authority:<list>`` (the authority's list of
    unfiled sites), or ""."""
    by = d.by
    if not by or by == Overlay.GRACE:
        return ""
    if by == Overlay.ORDER:
        return d.ref
    return _COLUMN[Overlay(by)] + d.ref


def parse_order_column(value: str) -> tuple[Overlay | None, str]:
    """The overlay and reference an ``order`` value names; (None, "") for none."""
    if not value:
        return None, ""
    head, sep, rest = value.partition(":")
    by = _FROM_COLUMN.get(head + sep) if sep else None
    if by is not None:
        return by, rest
    return Overlay.ORDER, value
