"""SOAP framing (beiand/isms/wire/soap.py): calls round-trip; junk is a SoapError and nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beiand.isms.wire import soap


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-zA-Z][a-zA-Z0-9]{0,12}", fullmatch=True),
                       st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40), max_size=8))
def test_call_round_trip(params: dict[str, str]) -> None:
    op, got = soap.parse_call(soap.call("idc_command", params))
    assert op == "idc_command" and got == params


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode)))
def test_junk_is_a_soap_error(body: bytes) -> None:
    try:
        soap.parse_call(body)
    except soap.SoapError:
        pass
    try:
        soap.parse_return(body)
    except soap.SoapError:
        pass


def test_response_and_entities() -> None:
    assert soap.parse_return(soap.response("idc_command", 999, "duplicate <commandId>")) == (999, "duplicate <commandId>")
    with pytest.raises(soap.SoapError):
        soap.parse_call(b'<!DOCTYPE x [<!ENTITY e "x">]><Envelope><Body><op>&e;</op></Body></Envelope>')
    with pytest.raises(soap.SoapError, match="no SOAP Body"):
        soap.parse_call(b"<Envelope/>")
