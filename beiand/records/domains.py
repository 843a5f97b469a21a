"""Domain names: IDNA 2008 / UTS-46 normalisation and the Public Suffix List.

The PSL is the copy shipped inside the ``publicsuffixlist`` package (never fetched at run time).
A registrable domain is a public suffix plus one label (REGULATIONS.md, "Facts the code needs").
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from importlib import resources

import idna

from beiand.errors import BeiandError

_ASCII_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")
_ASCII_LENIENT = re.compile(r"^[a-z0-9_*-]+(?:\.[a-z0-9_-]+)*$")
# Dot-like characters UTS-46 maps to "." (IDNA 2008 section 2.3.2.1 of RFC 5890).
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


class DomainError(BeiandError, ValueError):
    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"{text!r}: {reason}")
        self.text = text
        self.reason = reason


def normalise_domain(text: str) -> str:
    """IDNA A-label form, lower case, no trailing dot; raise :class:`DomainError` when invalid.

    ``例子.中国`` and ``xn--fsqu00a.xn--fiqs8s`` normalise to the same value.
    """
    s = text.strip().lower()
    if not s.isascii():
        s = s.translate(_DOTS)
    if s.endswith("."):
        s = s[:-1]
    if not s:
        raise DomainError(text, "empty domain name")
    if len(s) > 253:
        raise DomainError(text, f"name is {len(s)} characters long, at most 253 allowed")
    if s.isascii():
        if _ASCII_NAME.match(s):
            if "xn--" in s:
                _check_alabels(text, s)
            return s
        return _explain_ascii(text, s)
    fast = _simple_idn(s)
    if fast is not None:
        return fast
    try:
        out = idna.encode(s, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError as exc:
        raise DomainError(text, f"invalid IDN label: {exc}") from None
    if len(out) > 253:
        raise DomainError(text, f"name is {len(out)} characters long in A-label form, at most 253 allowed")
    return out


_SIMPLE_ULABEL = re.compile(r"^[a-z0-9\u4e00-\u9fff](?:[a-z0-9\u4e00-\u9fff-]*[a-z0-9\u4e00-\u9fff])?$")


def _simple_idn(s: str) -> str | None:
    """Fast path for the common IDN: CJK unified ideographs plus ASCII letters and digits.

    Those code points are PVALID in IDNA 2008 and unchanged by UTS-46 mapping and NFC, so
    the A-label is plain punycode (RFC 3492). Anything else takes the full ``idna`` path.
    """
    out = []
    for label in s.split("."):
        if label.isascii():
            if not _ASCII_NAME.match(label) or label.startswith("xn--"):
                return None
            out.append(label)
        elif _SIMPLE_ULABEL.match(label) and label[2:4] != "--":
            out.append(_punycode(label))
        else:
            return None
    a = ".".join(out)
    return a if len(a) <= 253 and all(len(x) <= 63 for x in out) else None


@lru_cache(maxsize=4096)
def _punycode(label: str) -> str:
    return "xn--" + label.encode("punycode").decode("ascii")


def _check_alabels(text: str, s: str) -> None:
    for label in s.split("."):
        if label.startswith("xn--"):
            try:
                u = label[4:].encode("ascii").decode("punycode")
            except UnicodeError:
                u = ""
            if u and not u.isascii() and _SIMPLE_ULABEL.match(u) and _simple_idn(u) == label:
                continue
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError) as exc:
                raise DomainError(text, f"invalid punycode label {label!r}: {exc}") from None


def _explain_ascii(text: str, s: str) -> str:
    for label in s.split("."):
        if not label:
            raise DomainError(text, "empty label (two dots in a row or a leading dot)")
        if len(label) > 63:
            raise DomainError(text, f"label {label[:20]!r}… is {len(label)} characters, at most 63 allowed")
        if label.startswith("-") or label.endswith("-"):
            raise DomainError(text, f"label {label!r} starts or ends with a hyphen")
        bad = sorted({c for c in label if not (c.isalnum() or c == "-")})
        if bad:
            raise DomainError(text, f"label {label!r} has characters not allowed in a host name: {''.join(bad)!r}")
    raise DomainError(text, "not a valid host name")


def is_ip_literal(name: str) -> bool:
    # Cheap test first: an IPv4 literal ends in a digit, an IPv6 one holds ":"; no TLD does either.
    if not name or not (name[-1].isdigit() or ":" in name):
        return False
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


class PublicSuffixList:
    """The rules of the PSL (ICANN and private sections), as A-labels."""

    def __init__(self, text: str) -> None:
        self.rules: set[str] = set()
        self.wildcards: set[str] = set()  # "*.ck" is stored as "ck"
        self.exceptions: set[str] = set()  # "!www.ck" is stored as "www.ck"
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("//"):
                continue
            rule = line.split()[0]
            target = self.rules
            if rule.startswith("!"):
                target, rule = self.exceptions, rule[1:]
            elif rule.startswith("*."):
                target, rule = self.wildcards, rule[2:]
            try:
                rule = idna.encode(rule, uts46=True).decode("ascii") if not rule.isascii() else rule.lower()
            except idna.IDNAError:
                continue
            target.add(rule)

    def public_suffix(self, name: str) -> str:
        """The longest public suffix of the normalised ``name`` (default rule ``*``)."""
        labels = name.split(".")
        n = len(labels)
        for i in range(n):
            cand = ".".join(labels[i:])
            if cand in self.exceptions:
                return ".".join(labels[i + 1 :])
            if cand in self.rules:
                return cand
            if i > 0 and cand in self.wildcards:
                return ".".join(labels[i - 1 :])
        return labels[-1]

    def is_public_suffix(self, name: str) -> bool:
        """O(1): is ``name`` itself a public suffix (a rule, a wildcard match or a bare TLD)?"""
        if name in self.exceptions:
            return False
        if name in self.rules:
            return True
        dot = name.find(".")
        if dot < 0:
            return True  # the default rule "*": every TLD is a public suffix
        return name[dot + 1 :] in self.wildcards

    def registrable_domain(self, name: str) -> str | None:
        """Public suffix plus one label; ``None`` when ``name`` is itself a public suffix."""
        suffix = self.public_suffix(name)
        if suffix == name:
            return None
        rest = name[: -len(suffix) - 1]
        return rest.rsplit(".", 1)[-1] + "." + suffix


@lru_cache(maxsize=1)
def psl() -> PublicSuffixList:
    text = resources.files("publicsuffixlist").joinpath("public_suffix_list.dat").read_text("utf-8")
    return PublicSuffixList(text)


def registrable_domain(name: str) -> str | None:
    return psl().registrable_domain(name)


def is_public_suffix(name: str) -> bool:
    return _PSL_IS_SUFFIX(name)


_PSL_IS_SUFFIX = psl().is_public_suffix
