"""Filing numbers (备案号): parse, validate, normalise.

Forms (REGULATIONS.md, "Facts the code needs"):

* sponsor number ``京ICP备12345678号`` (8 or 10 digits), service ``…号-1``;
  APP ``…号-3A``, mini-program ``…号-4X``, quick app ``…号-5K`` (one serial counter);
* licensed (经营性) sponsors: ``京ICP证030173号-1`` and ``粤B2-20090059-5``;
* public-security numbers (``粤公网安备44030502008569号``) are another system: rejected.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

from beiand.errors import BeiandError
from beiand.model import ServiceType

PROVINCES = "京津沪渝冀晋蒙辽吉黑苏浙皖闽赣鲁豫鄂湘粤桂琼蜀黔滇藏陕陇青宁新"
# Sites often print the common abbreviation; filings use the formal one.
PROVINCE_ALIASES = {"川": "蜀", "贵": "黔", "云": "滇", "甘": "陇"}

_SUFFIX_TYPE = {
    "": ServiceType.WEBSITE,
    "A": ServiceType.APP,
    "X": ServiceType.MINI_PROGRAM,
    "K": ServiceType.QUICK_APP,
}

# Dashes NFKC leaves alone but exports and footers contain.
_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d_"), "-")
_SPACE_RE = re.compile(r"\s+")
_ICP_RE = re.compile(r"^(.)ICP(备|证)(\d+)号?(?:-(\d+)([A-Za-z]?))?$")
_B2_RE = re.compile(r"^(.)(B[12])-(\d+)(?:-(\d+)([A-Za-z]?))?$")
_PSB_RE = re.compile(r"^(.)?公网安备\d+号?$")


class FilingNumberError(BeiandError, ValueError):
    """A string is not a valid filing number; ``reason`` says why."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"{text!r}: {reason}")
        self.text = text
        self.reason = reason


class FilingNumber(NamedTuple):
    """A normalised filing number; compares and hashes by its canonical text (the first field)."""

    text: str  # canonical: 京ICP备12345678号-1, 京ICP证030173号-1, 粤B2-20090059-5
    province: str
    sponsor: str  # the sponsor part: 京ICP备12345678号 / 粤B2-20090059
    serial: int | None  # None: a sponsor number only (often displayed in Guangdong)
    service_type: ServiceType | None  # None for a sponsor number
    licensed: bool  # built on a telecom business licence (经营性)
    warning: str = ""  # e.g. a province alias was accepted

    def __str__(self) -> str:
        return self.text

    @property
    def is_sponsor_only(self) -> bool:
        return self.serial is None


def clean(text: str) -> str:
    """NFKC, one kind of dash, no whitespace: what real exports and footers need first."""
    s = _SPACE_RE.sub("", unicodedata.normalize("NFKC", text).translate(_DASHES))
    # Removing spaces can join a letter and a combining mark: normalise once more.
    return _SPACE_RE.sub("", unicodedata.normalize("NFKC", s).translate(_DASHES))


def parse_filing_number(text: str) -> FilingNumber:
    """Parse ``text`` as a filing number or raise :class:`FilingNumberError` with the reason."""
    m = _ICP_RE.match(text)
    if m is not None and text[0] in PROVINCES:  # fast path: already clean (most export rows)
        province, kind, digits, serial, letter = m.groups()
        if (len(digits) == 6 if kind == "证" else len(digits) in (8, 10)) and letter in ("", "A", "X", "K") \
                and (serial is None or serial[0] != "0"):
            sponsor = f"{province}ICP{kind}{digits}号"
            if serial is None:
                return FilingNumber(sponsor, province, sponsor, None, None, kind == "证")
            return FilingNumber(f"{sponsor}-{serial}{letter}", province, sponsor, int(serial), _SUFFIX_TYPE[letter], kind == "证")
    s = clean(text)
    if not s:
        raise FilingNumberError(text, "empty filing number")
    if _PSB_RE.match(s):
        raise FilingNumberError(
            text, "public-security filing (公安备案, 公网安备), not an ICP filing number (备案号)"
        )
    s = s.replace("icp", "ICP").replace("Icp", "ICP").replace("b2-", "B2-").replace("b1-", "B1-")
    warning = ""
    province = s[0]
    if province in PROVINCE_ALIASES:
        formal = PROVINCE_ALIASES[province]
        warning = f"province {province} is printed for {formal}; filings use {formal}"
        province = formal
        s = formal + s[1:]
    m = _ICP_RE.match(s)
    if m:
        _, kind, digits, serial, letter = m.groups()
        licensed = kind == "证"
        if licensed:
            if len(digits) != 6:
                raise FilingNumberError(text, f"ICP licence (ICP证) number has {len(digits)} digits, expected 6")
        elif len(digits) not in (8, 10):
            raise FilingNumberError(text, f"sponsor number has {len(digits)} digits, expected 8 or 10")
        sponsor = f"{province}ICP{kind}{digits}号"
    else:
        m = _B2_RE.match(s)
        if not m:
            if province not in PROVINCES and ("ICP" in s or "B2-" in s or "B1-" in s):
                raise FilingNumberError(text, f"unknown province character {province!r}")
            raise FilingNumberError(
                text, "not a filing number: expected like 京ICP备12345678号-1, 京ICP证030173号-1 or 粤B2-20090059-5"
            )
        _, lic, digits, serial, letter = m.groups()
        licensed = True
        if len(digits) != 8:
            raise FilingNumberError(text, f"licence number {lic} has {len(digits)} digits, expected 8")
        sponsor = f"{province}{lic}-{digits}"
    if province not in PROVINCES:
        raise FilingNumberError(text, f"unknown province character {province!r}")
    if serial is None:
        return FilingNumber(sponsor, province, sponsor, None, None, licensed, warning)
    letter = letter.upper()
    if letter not in _SUFFIX_TYPE:
        raise FilingNumberError(
            text, f"unknown service suffix {letter!r}: A (APP), X (mini-program), K (quick app) or none (website)"
        )
    n = int(serial)
    if n < 1 or serial.startswith("0"):
        raise FilingNumberError(text, f"service serial {serial!r} must be a positive number without leading zeros")
    return FilingNumber(f"{sponsor}-{n}{letter}", province, sponsor, n, _SUFFIX_TYPE[letter], licensed, warning)


def find_filing_numbers(text: str) -> list[FilingNumber]:
    """Every valid filing number printed somewhere in ``text`` (a homepage footer, say)."""
    s = unicodedata.normalize("NFKC", text).translate(_DASHES)
    s = re.sub(r"(?<=[ICP备证号\d-])\s+(?=[ICP备证号\d-])", "", s)
    out: list[FilingNumber] = []
    pat = re.compile(r"(.)\s*(?:ICP\s*[备证]\s*\d+\s*号?(?:-\d+[A-Za-z]?)?|B[12]-\d{8}(?:-\d+[A-Za-z]?)?)", re.I)
    for m in pat.finditer(s):
        try:
            out.append(parse_filing_number(m.group(0)))
        except FilingNumberError:
            continue
    return out
