"""The ISMI envelope (ISMS.md §2): compression, AES-CBC, the hashes and pwdHash.

Sans-IO: bytes in, bytes out. ``pack`` writes one form; ``unpack`` is lenient on input as
ISMS.md §7 asks (both hash encodings, the compression sniffed from its magic) and raises one
error type, :class:`EnvelopeError`, whose ``stage`` the caller turns into the code of its column
(``idc_command`` answer or ``999/`` file: the numbers differ).

    packed      = zip(xml) | gzip(xml) | xml
    command     = base64(AES-CBC(encKey, iv, PKCS7(packed)))    # encryptAlgorithm 1; 0: base64(packed)
    commandHash = base64(hexlower(H(packed ‖ authKey)))         # H per hashAlgorithm; 0: base64(packed ‖ authKey)
    pwdHash     = base64(hexlower(H(userKey ‖ randVal)))
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import hmac
import io
import zipfile
import zlib
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from beiand.errors import BeiandError
from beiand.isms.wire.codes import CommandResult, Compression, EncryptAlgorithm, FileResult, HashAlgorithm

MAX_PACKED = 64 << 20  # bytes of XML after decompression: a zip or gzip bomb stops here
MAX_WIRE = 96 << 20  # base64 characters accepted in one command or file
ZIP_ENTRY = "data.xml"

Stage = Literal["auth", "decrypt", "hash", "unzip"]
_COMMAND_CODE = {"auth": CommandResult.AUTH, "decrypt": CommandResult.DECRYPT, "hash": CommandResult.HASH,
                 "unzip": CommandResult.UNZIP}
_FILE_CODE = {"auth": FileResult.FORMAT, "decrypt": FileResult.DECRYPT, "hash": FileResult.HASH, "unzip": FileResult.UNZIP}


class EnvelopeError(BeiandError, ValueError):
    """The envelope failed at ``stage``; ``command_code``/``file_code`` are ISMS.md §2's two columns."""

    def __init__(self, stage: Stage, why: str) -> None:
        super().__init__(f"{stage}: {why}")
        self.stage: Stage = stage
        self.why = why

    @property
    def command_code(self) -> CommandResult:
        return _COMMAND_CODE[self.stage]

    @property
    def file_code(self) -> FileResult:
        return _FILE_CODE[self.stage]


@dataclass(frozen=True)
class Keys:
    """The four secrets of one operator (ISMS.md §2): 用户口令, AES key, 偏移量 (IV), 认证密钥."""

    user_key: bytes
    enc_key: bytes
    iv: bytes
    auth_key: bytes

    def __post_init__(self) -> None:
        if len(self.enc_key) not in (16, 24, 32):
            raise ValueError(f"encKey: {len(self.enc_key)} bytes; expected 16 (AES-128), 24 or 32 (AES-256)")
        if len(self.iv) != 16:
            raise ValueError(f"iv (偏移量): {len(self.iv)} bytes; expected 16")

    def __repr__(self) -> str:  # never print a secret
        return "Keys(<hidden>)"


def _digest(alg: HashAlgorithm, data: bytes) -> bytes:
    """The digest as the envelope spells it: lowercase hex (ASCII); hash 0: the data itself."""
    if alg is HashAlgorithm.MD5:
        return hashlib.md5(data).hexdigest().encode()
    if alg is HashAlgorithm.SHA1:
        return hashlib.sha1(data).hexdigest().encode()
    return data


def _raw(alg: HashAlgorithm, data: bytes) -> bytes | None:
    if alg is HashAlgorithm.MD5:
        return hashlib.md5(data).digest()
    if alg is HashAlgorithm.SHA1:
        return hashlib.sha1(data).digest()
    return None


def keyed_hash(alg: HashAlgorithm, data: bytes, key: bytes) -> str:
    """``base64(hexlower(H(data ‖ key)))``: commandHash, resultHash, dataHash and pwdHash alike."""
    return base64.b64encode(_digest(alg, data + key)).decode("ascii")


def pwd_hash(user_key: bytes, rand_val: str, alg: HashAlgorithm) -> str:
    return keyed_hash(alg, user_key, rand_val.encode("utf-8"))


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


def check_hash(alg: HashAlgorithm, data: bytes, key: bytes, given: str) -> bool:
    """Lenient (ISMS.md §2, ≠): base64 of the hex digest, or of the raw digest (the PHP CU's SHA-1 pwdHash)."""
    try:
        got = _b64(given)
    except ValueError:
        return False
    want = _digest(alg, data + key)
    if hmac.compare_digest(got, want) or (alg is not HashAlgorithm.NONE and hmac.compare_digest(got, want.upper())):
        return True
    raw = _raw(alg, data + key)
    return raw is not None and hmac.compare_digest(got, raw)


def check_pwd(user_key: bytes, rand_val: str, alg: HashAlgorithm, given: str) -> bool:
    return check_hash(alg, user_key, rand_val.encode("utf-8"), given)


# -- compression ------------------------------------------------------------------------------


# Deflate level 1: a report of 10,000 rows shrinks about as much (repetitive XML) in a quarter of the
# time of the default 6, and a day of the fleet is a few hundred files (issue 30).
LEVEL = 1


def compress(xml: bytes, fmt: Compression) -> bytes:
    if fmt is Compression.ZIP:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=LEVEL) as z:
            z.writestr(ZIP_ENTRY, xml)
        return buf.getvalue()
    if fmt is Compression.GZIP:
        return gzip.compress(xml, compresslevel=LEVEL, mtime=0)
    return xml


def decompress(packed: bytes, fmt: Compression) -> bytes:
    """The XML inside ``packed``; the format is sniffed from the magic (ISMS.md §2, §7: both magics)."""
    try:
        if packed[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(packed)) as z:
                infos = [i for i in z.infolist() if not i.is_dir()]
                if len(infos) != 1:
                    raise EnvelopeError("unzip", f"a ZIP with {len(infos)} entries (expected one)")
                with z.open(infos[0]) as f:
                    out = f.read(MAX_PACKED + 1)
        elif packed[:2] == b"\x1f\x8b":
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = d.decompress(packed, MAX_PACKED + 1)
            if not d.eof and len(out) <= MAX_PACKED:
                raise EnvelopeError("unzip", "truncated gzip stream")
        elif fmt is not Compression.NONE:
            raise EnvelopeError("unzip", f"compressionFormat {int(fmt)} but neither ZIP nor gzip magic")
        else:
            out = packed
    except EnvelopeError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise EnvelopeError("unzip", str(exc) or type(exc).__name__) from None
    if len(out) > MAX_PACKED:
        raise EnvelopeError("unzip", f"more than {MAX_PACKED} bytes once decompressed")
    return out


# -- encryption -------------------------------------------------------------------------------


def encrypt(packed: bytes, keys: Keys) -> bytes:
    p = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(keys.enc_key), modes.CBC(keys.iv)).encryptor()
    return enc.update(p.update(packed) + p.finalize()) + enc.finalize()


def decrypt(blob: bytes, keys: Keys) -> bytes:
    if not blob or len(blob) % 16:
        raise EnvelopeError("decrypt", f"{len(blob)} bytes is not a whole number of AES blocks")
    dec = Cipher(algorithms.AES(keys.enc_key), modes.CBC(keys.iv)).decryptor()
    padded = dec.update(blob) + dec.finalize()
    u = padding.PKCS7(128).unpadder()
    try:
        return u.update(padded) + u.finalize()
    except ValueError:
        raise EnvelopeError("decrypt", "bad PKCS#7 padding (wrong key or IV?)") from None


# -- the whole envelope -----------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """The wire form of one payload: ``command``/``result``/``dataUpload`` and its hash."""

    payload: str
    payload_hash: str
    encrypt: EncryptAlgorithm
    hash: HashAlgorithm
    compression: Compression


def pack(xml: bytes, keys: Keys, enc: EncryptAlgorithm, alg: HashAlgorithm, comp: Compression) -> Envelope:
    packed = compress(xml, comp)
    body = encrypt(packed, keys) if enc is EncryptAlgorithm.AES_CBC else packed
    return Envelope(base64.b64encode(body).decode("ascii"), keyed_hash(alg, packed, keys.auth_key), enc, alg, comp)


def unpack(payload: str, payload_hash: str, keys: Keys, enc: EncryptAlgorithm, alg: HashAlgorithm, comp: Compression) -> bytes:
    """The XML of an envelope, checked in ISMS.md's order: decrypt, hash, unzip."""
    if len(payload) > MAX_WIRE:
        raise EnvelopeError("decrypt", f"more than {MAX_WIRE} characters")
    try:
        body = _b64(payload)
    except ValueError:
        raise EnvelopeError("decrypt", "the payload is not base64") from None
    packed = decrypt(body, keys) if enc is EncryptAlgorithm.AES_CBC else body
    if not check_hash(alg, packed, keys.auth_key, payload_hash):
        raise EnvelopeError("hash", f"{alg.name} hash over the packed payload does not match")
    return decompress(packed, comp)
