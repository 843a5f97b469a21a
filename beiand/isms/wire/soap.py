"""SOAP 1.1 framing of ISMI calls (ISMS.md §2): parameters by name, ``<return>`` with resultCode and msg.

Parsing is lenient on namespaces (operators' WSDLs differ): parameters are read by local name
from the first element of the Body. DTDs and entities are refused (defusedxml).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from xml.sax.saxutils import escape

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from beiand.errors import BeiandError

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SERVICE_NS = "http://webservice.isms.beiand/"
MAX_REQUEST = 128 << 20


class SoapError(BeiandError, ValueError):
    pass


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_call(body: bytes) -> tuple[str, dict[str, str]]:
    """(operation, parameters) of a SOAP request."""
    try:
        root = DET.fromstring(body)
    except (ET.ParseError, DefusedXmlException, ValueError) as exc:
        raise SoapError(f"not a SOAP envelope: {exc}") from None
    b = next((c for c in root if _local(c.tag) == "Body"), None) if _local(root.tag) == "Envelope" else None
    if b is None or not len(b):
        raise SoapError("no SOAP Body with an operation")
    op = b[0]
    return _local(op.tag), {_local(c.tag): (c.text or "") for c in op}


def call(operation: str, params: Mapping[str, object]) -> bytes:
    args = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in params.items())
    return (f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_NS}" xmlns:ns="{SERVICE_NS}">'
            f"<soapenv:Body><ns:{operation}>{args}</ns:{operation}></soapenv:Body></soapenv:Envelope>").encode()


def response(operation: str, code: int, msg: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_NS}" xmlns:ns="{SERVICE_NS}">'
            f"<soapenv:Body><ns:{operation}Response><return><resultCode>{int(code)}</resultCode><msg>{escape(msg)}</msg>"
            f"</return></ns:{operation}Response></soapenv:Body></soapenv:Envelope>").encode()


def fault(msg: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_NS}"><soapenv:Body><soapenv:Fault>'
            f"<faultcode>soapenv:Client</faultcode><faultstring>{escape(msg)}</faultstring></soapenv:Fault></soapenv:Body>"
            "</soapenv:Envelope>").encode()


def parse_return(body: bytes) -> tuple[int, str]:
    """(resultCode, msg) of a response; the ``<return>`` may also be an escaped XML string."""
    try:
        root = DET.fromstring(body)
    except (ET.ParseError, DefusedXmlException, ValueError) as exc:
        raise SoapError(f"not a SOAP response: {exc}") from None
    ret = next((e for e in root.iter() if _local(e.tag) == "return"), None)
    if ret is None:
        raise SoapError("no <return> in the response")
    if not len(ret) and ret.text and "<" in ret.text:
        ret = DET.fromstring(ret.text)
    vals = {_local(c.tag): (c.text or "").strip() for c in ret.iter()}
    try:
        return int(vals.get("resultCode", "")), vals.get("msg", "")
    except ValueError:
        raise SoapError("resultCode is not a number") from None
