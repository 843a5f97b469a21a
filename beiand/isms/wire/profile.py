"""Province profiles (ISMS.md §7): what varies between provinces and carriers, as data.

A profile is a TOML file (``isms.profile``); every key is optional and defaults to what the
most implementations of ISMS.md agree on. Unknown keys are refused (a typo must not silently
keep a default).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from beiand.errors import BeiandError
from beiand.isms.wire.codec import CODECS, XSD_DIR, version_key
from beiand.isms.wire.codes import Compression, EncryptAlgorithm, HashAlgorithm
from beiand.isms.wire.fields import element_paths

# The element names beiand reconstructed (ISMS.md names only the roots): DT 1 basicInfo and DT 6
# commandQueryResult's rows. An operator corrects them in the profile's ``elements`` table.
RENAMEABLE: dict[int, frozenset[str]] = {1: frozenset(element_paths(1)), 6: frozenset(element_paths(6))}
_NCNAME = re.compile(r"[^\W\d][\w.\-]*")  # an XML NCName: a letter or _, then letters, digits, _ . - (no ':')


class ProfileError(BeiandError, ValueError):
    pass


@dataclass(frozen=True)
class Profile:
    name: str = "default"
    command_version: str = "2.0"  # what beiand writes; what it accepts is every version in codec.CODECS
    accept_versions: tuple[str, ...] = ("2.0", "3.0", "3.1")
    # ISMS.md §2 (≠): com.act's UI reads 0 = SHA-1, 1 = MD5; the default is the 2+ reading.
    hash_codes: dict[int, str] = field(default_factory=lambda: {0: "none", 1: "md5", 2: "sha1"})
    encrypt: int = EncryptAlgorithm.AES_CBC  # what beiand writes
    hash: int = HashAlgorithm.MD5
    compression: int = Compression.ZIP
    type5: str = "active-period"  # ISMS.md §3 (≠): "active-period" (PHP CU) or "basic-query" (com.act: unsupported)
    subdomains: bool = True  # a domain rule covers the names below it (label boundaries); ISMS.md §6: unknown
    report_dt2: bool = True  # DT 2 (基础数据监测异常) for names served from an IP their filing does not list
    mismatch_illegal_type: int = 999  # DT 9 illegalType for `mismatch` (ISMS.md §6: a profile may report 1)
    file_seq_digits: int = 10  # <unix-seconds><10-digit seq>.xml (Aotain)
    max_records_per_file: int = 10000
    max_file_bytes: int = 10 << 20
    xsd_dir: Path = XSD_DIR
    province_id: str = ""  # written in v3.x fileLoad
    heartbeat_seconds: int = 600  # DT 7 (Byzoro: every 600 s)
    # beiand's element path → the operator's name, for the reconstructed DT 1 and DT 6 elements
    # (e.g. "houseInfo/houseName" = "houseNm", "command/rules" = "rule"); applied when those files are written
    elements: dict[str, str] = field(default_factory=dict)

    def renames(self, dt: int) -> dict[str, str]:
        """The ``elements`` entries that apply to data type ``dt`` (1 or 6)."""
        paths = RENAMEABLE.get(dt, frozenset())
        return {k: v for k, v in self.elements.items() if k in paths and v != k.rpartition("/")[2]}

    def hash_of(self, code: int) -> HashAlgorithm:
        name = self.hash_codes.get(code)
        if name is None:
            raise ValueError(f"hashAlgorithm {code}")
        return {"none": HashAlgorithm.NONE, "md5": HashAlgorithm.MD5, "sha1": HashAlgorithm.SHA1}[name]

    def hash_code(self, alg: HashAlgorithm) -> int:
        want = {HashAlgorithm.NONE: "none", HashAlgorithm.MD5: "md5", HashAlgorithm.SHA1: "sha1"}[alg]
        return next(c for c, n in self.hash_codes.items() if n == want)


def load_profile(path: Path | None) -> Profile:
    if path is None:
        return Profile()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: {exc}") from None
    known = {f.name: f for f in dataclasses.fields(Profile)}
    kw: dict[str, object] = {}
    for k, v in data.items():
        if k not in known:
            raise ProfileError(f"{path}: {k}: unknown key (known: {', '.join(sorted(known))})")
        if k == "hash_codes":
            v = {int(a): str(b) for a, b in dict(v).items()}
            if sorted(v.values()) != ["md5", "none", "sha1"]:
                raise ProfileError(f"{path}: hash_codes: map the three of none, md5, sha1")
        elif k == "xsd_dir":
            v = (path.parent / str(v)).resolve()
        elif k == "elements":
            if not isinstance(v, dict):
                raise ProfileError(f"{path}: elements: expected a table of element path = name")
            known_paths = RENAMEABLE[1] | RENAMEABLE[6]
            for ek, ev in v.items():
                if ek not in known_paths:
                    raise ProfileError(f"{path}: elements: {ek}: not a reconstructed element path (DT 1 basicInfo: "
                                       f"e.g. houseInfo/houseName; DT 6: command, command/<element>; fields.py lists them)")
                if not isinstance(ev, str) or _NCNAME.fullmatch(ev) is None:
                    raise ProfileError(f"{path}: elements: {ek}: {str(ev)[:40]!r} is not an XML element name (NCName)")
            v = dict(v)
        elif k == "accept_versions":
            v = tuple(version_key(str(x)) for x in v)
            for x in v:
                if x not in CODECS:
                    raise ProfileError(f"{path}: accept_versions: {x}: no codec (known: {', '.join(CODECS)})")
        kw[k] = v
    try:
        p = Profile(**kw)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ProfileError(f"{path}: {exc}") from None
    if p.type5 not in ("active-period", "basic-query"):
        raise ProfileError(f"{path}: type5: {p.type5!r}: expected active-period or basic-query")
    if version_key(p.command_version) not in CODECS:
        raise ProfileError(f"{path}: command_version: {p.command_version}: no codec")
    return p
