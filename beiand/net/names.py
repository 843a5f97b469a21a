"""Names as seen on the wire (SNI, Host, DNS) → the normalised form the records use."""

from __future__ import annotations

import idna

_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def normalise_wire_name(raw: str) -> str:
    """Lower case, no trailing dot, IDNA A-labels. Never raises: what cannot be normalised is
    returned lower-cased, so it is still logged as seen and simply matches no filing."""
    s = raw.lower()
    if s.endswith("."):
        s = s[:-1]
    if s.isascii():
        return s
    try:
        return idna.encode(s.translate(_DOTS), uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return s
