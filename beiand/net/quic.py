"""QUIC Initial packets (RFC 9000 section 17.2.2; RFC 9001 section 5; QUIC v2: RFC 9369).

The client's Initial packets are protected with keys anyone can derive from the Destination
Connection ID. ``QuicInitialReader`` derives them, removes header protection, decrypts, and
reassembles the CRYPTO stream until the ClientHello inside is complete.

Versions: v1, v2, the drafts peers still decode (23 to 34, each with its draft's salt) and
Google's T050/T051 (IETF packets, TLS inside, their own salts); any other version is tried with
the v1 salt and layout, as tshark does. Legacy Google QUIC (Q043 and earlier, Q046) carries a
plaintext CHLO: :func:`parse_gquic_chlo` reads its SNI tag.
"""

from __future__ import annotations

import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from beiand.net.errors import QuicError
from beiand.net.link import (
    QUIC_MIN_INITIAL,
    QUIC_T050,
    QUIC_T051,
    QUIC_V1,
    QUIC_V2,
    quic_known_version,
)
from beiand.net.reassembly import Stream
from beiand.net.tls import ClientHello, parse_handshake

V1, V2, T050, T051 = QUIC_V1, QUIC_V2, QUIC_T050, QUIC_T051
# RFC 9001 section 5.2 (also drafts 33 and 34) and RFC 9369 section 3.3.1
SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
# draft-ietf-quic-tls-23 section 5.2 (drafts 23 to 28), draft-ietf-quic-tls-29 section 5.2 (29 to 32)
SALT_DRAFT_23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")
SALT_DRAFT_29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
# Google QUIC with TLS (Chromium's quic_crypto_stream / Wireshark's epan/dissectors/packet-quic.c)
SALT_T050 = bytes.fromhex("7ff579e5acd072915580304c43a2367c60488310")
SALT_T051 = bytes.fromhex("7a4edef4e7ccee5fa4506c19124fc8ccda6e033d")
_LABELS_V1 = (b"quic key", b"quic iv", b"quic hp")
_LABELS_V2 = (b"quicv2 key", b"quicv2 iv", b"quicv2 hp")
MAX_CRYPTO = 1 << 16


def initial_salt(version: int) -> bytes:
    """The Initial salt of ``version``; v1's for versions we do not know (tshark's guess too)."""
    if version == V2:
        return SALT_V2
    if version == T051:
        return SALT_T051
    if version == T050:
        return SALT_T050
    if version & 0xFFFFFF00 == 0xFF000000:  # draft-NN
        draft = version & 0xFF
        if 23 <= draft <= 28:
            return SALT_DRAFT_23
        if 29 <= draft <= 32:
            return SALT_DRAFT_29
    return SALT_V1


def version_name(version: int) -> str:
    """``v1``, ``v2``, ``draft-29``, ``T051``, or the number in hex."""
    if version == V1:
        return "v1"
    if version == V2:
        return "v2"
    if version & 0xFFFFFF00 == 0xFF000000:
        return f"draft-{version & 0xFF}"
    raw = version.to_bytes(4, "big")
    if raw[:1] in (b"Q", b"T") and raw[1:].isdigit():
        return raw.decode("ascii")
    return f"0x{version:08x}"


def _initial_type(version: int) -> int:
    # long-header packet type bits of an Initial (RFC 9369 section 3.2: v2 renumbered them)
    return 1 if version == V2 else 0


def _retry_type(version: int) -> int:
    return 0 if version == V2 else 3


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt, ikm, "sha256")  # one-shot, in C (hmac.new builds a Python HMAC object)


def hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    # RFC 8446 section 7.1: HkdfLabel with an empty context; one block suffices (<= 32 bytes).
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    return hmac.digest(secret, info + b"\x01", "sha256")[:length]


class InitialKeys:
    """Client Initial keys for one original Destination Connection ID (RFC 9001 section 5.2)."""

    __slots__ = ("aead", "hp", "iv", "version")

    def __init__(self, dcid: bytes, version: int) -> None:
        secret = hkdf_extract(initial_salt(version), dcid)
        client = hkdf_expand_label(secret, b"client in", 32)
        lk, liv, lhp = _LABELS_V2 if version == V2 else _LABELS_V1
        self.aead = AESGCM(hkdf_expand_label(client, lk, 16))
        self.iv = hkdf_expand_label(client, liv, 12)
        self.hp = Cipher(algorithms.AES(hkdf_expand_label(client, lhp, 16)), modes.ECB())
        self.version = version


def read_varint(buf: bytes, off: int) -> tuple[int, int]:
    # RFC 9000 section 16
    if off >= len(buf):
        raise QuicError("truncated-varint")
    first = buf[off]
    ln = 1 << (first >> 6)
    if off + ln > len(buf):
        raise QuicError("truncated-varint")
    v = first & 0x3F
    for i in range(1, ln):
        v = (v << 8) | buf[off + i]
    return v, off + ln


def is_initial(buf: bytes) -> bool:
    """Quick test: a long-header Initial of any IETF-style QUIC version (not version negotiation,
    not Google's Q0xx)."""
    if len(buf) < 7 or buf[0] & 0xC0 != 0xC0:
        return False
    version = int.from_bytes(buf[1:5], "big")
    if version == 0 or buf[1] == 0x51:  # version negotiation; "Q": Google QUIC, see parse_gquic_chlo
        return False
    return (buf[0] >> 4) & 3 == _initial_type(version)


MIN_INITIAL = QUIC_MIN_INITIAL


def initial_header(first: int, version: int) -> bool:
    """A long header's first byte and version: an Initial of a known version (the shape of a client's
    first datagram, for UDP on a port not watched, issue 32, with its length ``MIN_INITIAL``)."""
    return first & 0xC0 == 0xC0 and quic_known_version(version) and (first >> 4) & 3 == _initial_type(version)


class QuicInitialReader:
    """The client side of one QUIC connection's Initial packets, until the ClientHello is known."""

    __slots__ = ("crypto", "datagrams", "dcid", "keys", "max_holes", "version")

    def __init__(self, max_holes: int = 64) -> None:
        self.keys: InitialKeys | None = None
        # The CRYPTO stream, merged as frames arrive (issue 17: a dict of every offset re-joined
        # on each datagram let one client hold megabytes and take quadratic time).
        self.crypto = Stream()
        self.max_holes = max_holes
        self.dcid = b""
        self.version = 0
        self.datagrams = 0  # read so far (the decoder's name budget)

    def feed(self, datagram: bytes) -> ClientHello | None:
        """Process one UDP datagram (possibly coalesced packets); the ClientHello once complete."""
        off = 0
        n = len(datagram)
        got = False
        while off < n:
            b0 = datagram[off]
            if b0 & 0x80 == 0:
                break  # short header: 1-RTT, nothing for us
            if off + 7 > n:
                raise QuicError("truncated-header")
            version = int.from_bytes(datagram[off + 1 : off + 5], "big")
            if version == 0:
                raise QuicError("version-negotiation")
            p = off + 5
            dcid_len = datagram[p]
            if dcid_len > 20:
                raise QuicError("bad-dcid-length")
            dcid = datagram[p + 1 : p + 1 + dcid_len]
            p += 1 + dcid_len
            if p >= n:
                raise QuicError("truncated-header")
            scid_len = datagram[p]
            if scid_len > 20:
                raise QuicError("bad-scid-length")
            p += 1 + scid_len
            ptype = (b0 >> 4) & 3
            if ptype != _initial_type(version):
                # Not an Initial (0-RTT, Handshake, Retry): skip it if it has a length field.
                if ptype == _retry_type(version):
                    break  # Retry has no length field
                length, p = read_varint(datagram, p)
                off = p + length
                continue
            token_len, p = read_varint(datagram, p)
            p += token_len
            length, p = read_varint(datagram, p)
            if p + length > n:
                raise QuicError("truncated-packet")
            if self.keys is None:
                if dcid_len < 8:
                    raise QuicError("short-dcid")  # RFC 9000 section 7.2: client's first DCID >= 8 bytes
                self.keys = InitialKeys(dcid, version)
                self.dcid = dcid
                self.version = version
            self._packet(datagram, off, p, length)
            got = True
            off = p + length
        if not got:
            return None
        return self._hello()

    def _packet(self, d: bytes, start: int, pn_off: int, length: int) -> None:
        keys = self.keys
        assert keys is not None
        if length < 20:
            raise QuicError("packet-too-short")
        sample = d[pn_off + 4 : pn_off + 20]
        enc = keys.hp.encryptor()
        mask = enc.update(sample) + enc.finalize()
        b0 = d[start] ^ (mask[0] & 0x0F)
        pn_len = (b0 & 3) + 1
        pn_bytes = bytes(x ^ y for x, y in zip(d[pn_off : pn_off + pn_len], mask[1 : 1 + pn_len], strict=True))
        header = bytes([b0]) + d[start + 1 : pn_off] + pn_bytes
        pn = int.from_bytes(pn_bytes, "big")
        nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
        try:
            payload = keys.aead.decrypt(nonce, d[pn_off + pn_len : pn_off + length], header)
        except InvalidTag:
            raise QuicError("decrypt-failed") from None
        self._frames(payload)

    def _frames(self, p: bytes) -> None:
        # RFC 9000 section 12.4: frames allowed in Initial packets
        off = 0
        n = len(p)
        while off < n:
            ftype = p[off]
            if ftype == 0x00 or ftype == 0x01:  # PADDING
                off += 1
            elif ftype in (0x02, 0x03):  # ACK
                off += 1
                _, off = read_varint(p, off)
                _, off = read_varint(p, off)
                count, off = read_varint(p, off)
                _, off = read_varint(p, off)
                for _ in range(count):
                    _, off = read_varint(p, off)
                    _, off = read_varint(p, off)
                if ftype == 0x03:
                    for _ in range(3):
                        _, off = read_varint(p, off)
            elif ftype == 0x06:  # CRYPTO
                coff, off = read_varint(p, off + 1)
                clen, off = read_varint(p, off)
                if off + clen > n:
                    raise QuicError("truncated-crypto")
                if coff + clen > MAX_CRYPTO:
                    raise QuicError("crypto-too-long")
                if self.crypto.insert(coff, p[off : off + clen], MAX_CRYPTO, self.max_holes) < 0:
                    raise QuicError("crypto-too-many-holes")
                off += clen
            elif ftype in (0x1C, 0x1D):  # CONNECTION_CLOSE
                return
            else:
                raise QuicError("bad-frame")

    def _hello(self) -> ClientHello | None:
        buf = self.crypto.buf
        if not buf:
            return None
        return parse_handshake(buf)


# -- legacy Google QUIC: a plaintext CHLO ------------------------------------------------------

_CHLO = b"CHLO"
_SNI_TAG = b"SNI\x00"
MAX_CHLO_TAGS = 128


def gquic_version(buf: bytes) -> bytes | None:
    """The version (``b"Q043"``) of a Google QUIC client packet that carries one, else ``None``.

    Public header (Q043 and earlier): flags with the version bit 0x01 (0x80 and 0x40 clear), an
    optional 8-byte connection ID, the version. Q046: a long header whose version is ``Q046``.
    """
    if len(buf) < 13:
        return None
    b0 = buf[0]
    if b0 & 0x80:
        v = buf[1:5]
    elif b0 & 0xC1 == 0x01:
        cid = 8 if b0 & 0x08 else 0
        v = buf[1 + cid : 5 + cid]
    else:
        return None
    if v[:2] == b"Q0" and v[2:].isdigit():
        return bytes(v)
    return None


def parse_gquic_chlo(buf: bytes) -> ClientHello | None:
    """The SNI of a plaintext CHLO (QUIC crypto handshake message: tag, count, then ``count``
    (tag, end offset) pairs, little-endian, then the values); ``None`` when the packet has none.
    Q050 and later encrypt their Initials and are not read here."""
    version = gquic_version(buf)
    if version is None or version >= b"Q050":
        return None
    i = buf.find(_CHLO)
    if i < 0:
        return None
    if i + 8 > len(buf):
        raise QuicError("truncated-chlo")
    count = buf[i + 4] | (buf[i + 5] << 8)
    if count > MAX_CHLO_TAGS:
        raise QuicError("bad-chlo")
    index = i + 8
    values = index + 8 * count
    if values > len(buf):
        raise QuicError("truncated-chlo")
    prev = 0
    sni = ""
    alpn: tuple[str, ...] = ()
    for k in range(count):
        at = index + 8 * k
        tag = buf[at : at + 4]
        end = int.from_bytes(buf[at + 4 : at + 8], "little")
        if end < prev or values + end > len(buf):
            raise QuicError("bad-chlo")
        value = buf[values + prev : values + end]
        if tag == _SNI_TAG:
            sni = value.decode("ascii", "replace")
        elif tag == b"ALPN":
            alpn = (value.decode("ascii", "replace"),)
        prev = end
    return ClientHello(sni, alpn, "gquic", False)
