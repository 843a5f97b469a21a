"""Type 0 idcInfoManage (basic data) parsing and the per-prefix houseId (hypothesis)."""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beiand.isms.store import CommandStore
from beiand.isms.wire.codec import Codec, XmlError
from beiand.isms.wire.codes import CommandResult
from beiand.isms.wire.model import BasicData

CODEC = Codec()
house_ids = st.text("ABCH0123456789-", min_size=1, max_size=12)
v4 = st.integers(0, 2**32 - 1)


def xml(houses: list[tuple[str, list[tuple[int, int, bool]]]], op: int = 0) -> bytes:
    root = ET.Element("idcInfoManage")
    ET.SubElement(root, "commandId").text = "1"
    ET.SubElement(root, "operationType").text = str(op)
    for hid, segs in houses:
        h = ET.SubElement(root, "house")
        ET.SubElement(h, "houseId").text = hid
        for a, b, res in segs:
            g = ET.SubElement(h, "ipSegment")
            ET.SubElement(g, "startIp").text = str(ipaddress.IPv4Address(a))
            ET.SubElement(g, "endIp").text = str(ipaddress.IPv4Address(b))
            ET.SubElement(g, "type").text = "1" if res else "0"
    return ET.tostring(root)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(house_ids, st.lists(st.tuples(v4, v4, st.booleans()), max_size=4)), max_size=4))
def test_basic_data_parses_or_is_refused_with_code_6(houses: list[tuple[str, list[tuple[int, int, bool]]]]) -> None:
    try:
        item = CODEC.decode(0, xml(houses))
    except XmlError as exc:
        assert exc.code == CommandResult.XML_CONTENT
        assert any(a > b for _, segs in houses for a, b, _ in segs)
        return
    assert isinstance(item, BasicData)
    assert [(h.house_id, [(int(ipaddress.ip_address(g.start)), int(ipaddress.ip_address(g.end)), g.reserved) for g in h.segments])
            for h in item.houses] == [(hid, list(segs)) for hid, segs in houses]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(v4, st.integers(0, 4096)), min_size=1, max_size=6), v4)
def test_house_of_agrees_with_a_scan(tmp_path: Path, segs: list[tuple[int, int]], probe: int) -> None:
    d = tmp_path / str(abs(hash((tuple(segs), probe))))  # a fresh state per example
    s = CommandStore(d, house_id="GW")
    houses = [(f"H{i}", [(a, min(a + n, 2**32 - 1), False)]) for i, (a, n) in enumerate(segs)]
    item = CODEC.decode(0, xml(houses))
    assert isinstance(item, BasicData)
    s.apply_basic(item)
    ip = str(ipaddress.IPv4Address(probe))
    holders = {f"H{i}" for i, (a, n) in enumerate(segs) if a <= probe <= min(a + n, 2**32 - 1)}
    got = s.house_of(ip)
    assert got in holders if holders else got == "GW"
    s.save()
    assert CommandStore(d, house_id="GW").house_of(ip) == got  # persisted


@pytest.mark.parametrize("body", [b"<idcInfoManage><house/></idcInfoManage>",
                                  b"<idcInfoManage><house><houseId>H</houseId><ipSegment><startIp>x</startIp></ipSegment>"
                                  b"</house></idcInfoManage>"])
def test_bad_basic_data(body: bytes) -> None:
    with pytest.raises(XmlError) as ei:
        CODEC.decode(0, body)
    assert ei.value.code == CommandResult.XML_CONTENT


@settings(max_examples=40, deadline=None)
@given(st.lists(house_ids, max_size=5), st.lists(st.integers(0, 2**62), min_size=1, max_size=5))
def test_repeated_query_elements_are_all_kept(houses: list[str], ids: list[int]) -> None:
    from beiand.isms.wire.model import Query

    q = CODEC.decode(3, ("<commandQuery><commandId>1</commandId>" + "".join(f"<houseId>{h}</houseId>" for h in houses)
                         + "</commandQuery>").encode())
    assert isinstance(q, Query) and [h for h in q.fields.get("houseId", "").split(",") if h] == houses
    r = CODEC.decode(6, ("<commandRecord>" + "".join(f"<controlsId>{i}</controlsId>" for i in ids) + "</commandRecord>").encode())
    assert isinstance(r, Query) and r.fields["controlsId"].split(",") == [str(i) for i in ids]


@pytest.mark.parametrize(("body", "monitor"), [
    (b"<idcInfoManage><commandId>5</commandId><type>1</type></idcInfoManage>", 1),
    (b"<idcInfoManage><commandId>5</commandId><type>2</type></idcInfoManage>", 2),
    (b"<idcInfoManage><commandId>5</commandId><type>0</type><house><houseId>H</houseId></house></idcInfoManage>", 0),
    (b"<idcInfoManage><commandId>5</commandId><monitor>2</monitor></idcInfoManage>", 2),  # beiand's own element, kept
])
def test_type_1_and_2_turn_dt2_on_and_off(body: bytes, monitor: int) -> None:
    """Issue 28 (12): ISMS.md §4: idcInfoManage ``<type>`` 1/2 turns DT 2 reporting on/off; it was
    refused with code 6 ("Unexpected child with tag 'type'")."""
    item = CODEC.decode(0, body)
    assert isinstance(item, BasicData) and item.monitor == monitor
