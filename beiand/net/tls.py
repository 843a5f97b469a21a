"""TLS ClientHello (RFC 8446 section 4.1.2; record layer section 5.1): SNI, ALPN, version, ECH.

``parse_client_hello(buf)`` takes the first client bytes of a TCP flow (one or more TLS records,
possibly a handshake message fragmented across records) and returns a :class:`ClientHello`,
``None`` when more bytes are needed, or raises :class:`TlsError`.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from beiand.net.errors import TlsError

MAX_HELLO = 1 << 16  # a ClientHello bigger than this is not one we wait for
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
EXT_ECH = 0xFE0D  # draft-ietf-tls-esni: encrypted_client_hello
_EXT_HEADER = struct.Struct("!HH").unpack_from  # extension type, length (RFC 8446 section 4.2)
_VERSIONS = {0x0301: "tls1.0", 0x0302: "tls1.1", 0x0303: "tls1.2", 0x0304: "tls1.3"}


class ClientHello(NamedTuple):
    sni: str  # "" when absent
    alpn: tuple[str, ...]
    version: str  # highest offered: tls1.3 when supported_versions lists 0x0304
    ech: bool  # ECH offered: the SNI seen is the outer (public) name


def looks_like_tls(buf: bytes) -> bool:
    return len(buf) >= 3 and buf[0] == 0x16 and buf[1] == 3


def starts_client_hello(buf: bytes) -> bool:
    """Whether ``buf`` (at least one byte) may be the start of a ClientHello's first record: a
    handshake record of TLS 1.x (``16 03``) whose message, when its type is there, is a
    ClientHello (1). The test for a flow's first bytes on a port not watched (issue 32): a
    ServerHello (2) or any other protocol is not one."""
    n = len(buf)
    return n >= 1 and buf[0] == 0x16 and (n < 2 or buf[1] == 3) and (n < 6 or buf[5] == 1 or (buf[3] == 0 and buf[4] == 0))


def sni_from_prefix(buf: bytes) -> str | None:
    """The SNI of a ClientHello of which only ``buf``, its first bytes, is known (the rest will not
    come: a live capture passes only a flow's first segment on a port not watched, issue 32): the
    name when the server_name extension lies whole within them, else None. Every length is
    checked against what is there; nothing past it is guessed."""
    hs = bytearray()
    off, n = 0, len(buf)
    while off + 5 <= n and buf[off] == 0x16 and buf[off + 1] == 3:  # the handshake bytes of the records there
        rl = (buf[off + 3] << 8) | buf[off + 4]
        hs += buf[off + 5 : off + 5 + rl]
        off += 5 + rl
    if len(hs) < 4 or hs[0] != 1:
        return None
    b = bytes(hs[4:])
    m = len(b)
    off = 34
    if off >= m:
        return None
    off += 1 + b[off]  # session id
    if off + 2 > m:
        return None
    off += 2 + ((b[off] << 8) | b[off + 1])  # cipher suites
    if off >= m:
        return None
    off += 1 + b[off]  # compression methods
    off += 2  # extensions' total length
    while off + 4 <= m:
        etype, elen = _EXT_HEADER(b, off)
        off += 4
        if off + elen > m:
            return None
        if etype == EXT_SERVER_NAME:
            try:
                return _server_name(b, off, off + elen) or None
            except TlsError:
                return None
        off += elen
    return None


def parse_client_hello(buf: bytes) -> ClientHello | None:
    """From TLS records (RFC 8446 section 5.1) to the ClientHello they carry."""
    n = len(buf)
    if n < 5:
        if (n >= 1 and buf[0] != 0x16) or (n >= 2 and buf[1] != 3):
            raise TlsError("not-handshake")
        return None
    # Fast path: the whole handshake message in the first record.
    if buf[0] != 0x16 or buf[1] != 3:
        raise TlsError("not-handshake")
    rec_len = (buf[3] << 8) | buf[4]
    if rec_len > 16384 + 2048:
        raise TlsError("bad-record-length")
    if n >= 9 and rec_len >= 4:
        if buf[5] != 1:
            raise TlsError("not-client-hello")
        hs_len = (buf[6] << 16) | (buf[7] << 8) | buf[8]
        if hs_len + 4 <= rec_len and n >= 5 + 4 + hs_len:
            return parse_client_hello_body(buf[9 : 9 + hs_len])
        if hs_len > MAX_HELLO:
            raise TlsError("client-hello-too-long")
    # Reassemble the handshake message across records. A record may hold any part of it, even none:
    # RFC 8446 section 5.1 forbids an empty handshake fragment, but OpenSSL accepts one (and a first
    # record of one byte), so a client can put them before the name; they are read through.
    hs = bytearray()
    off = 0
    while off + 5 <= n:
        if buf[off] != 0x16 or buf[off + 1] != 3:
            raise TlsError("not-handshake")
        rl = (buf[off + 3] << 8) | buf[off + 4]
        if rl > 16384 + 2048:
            raise TlsError("bad-record-length")
        hs += buf[off + 5 : off + 5 + rl]
        off += 5 + rl
        if len(hs) >= 4:
            if hs[0] != 1:
                raise TlsError("not-client-hello")
            hs_len = (hs[1] << 16) | (hs[2] << 8) | hs[3]
            if hs_len > MAX_HELLO:
                raise TlsError("client-hello-too-long")
            if len(hs) >= 4 + hs_len:
                return parse_client_hello_body(bytes(hs[4 : 4 + hs_len]))
    return None


def parse_handshake(buf: bytes) -> ClientHello | None:
    """From a bare handshake stream (QUIC CRYPTO frames, RFC 9001 section 4) to the ClientHello."""
    if len(buf) < 4:
        if buf and buf[0] != 1:
            raise TlsError("not-client-hello")
        return None
    if buf[0] != 1:
        raise TlsError("not-client-hello")
    hs_len = (buf[1] << 16) | (buf[2] << 8) | buf[3]
    if hs_len > MAX_HELLO:
        raise TlsError("client-hello-too-long")
    if len(buf) < 4 + hs_len:
        return None
    return parse_client_hello_body(buf[4 : 4 + hs_len])


def parse_client_hello_body(b: bytes) -> ClientHello:
    """The ClientHello structure (RFC 8446 section 4.1.2); every length checked, consumed exactly."""
    # The walk itself takes bytes (typed so in tls.pxd for the compiled twin: byte access in C);
    # a bytearray or memoryview is copied first, read the same.
    return _client_hello_body(b if type(b) is bytes else bytes(b))


def _client_hello_body(b: bytes) -> ClientHello:
    n = len(b)
    if n < 38:
        raise TlsError("truncated-client-hello")
    legacy = (b[0] << 8) | b[1]
    off = 34
    sid = b[off]
    off += 1 + sid
    if sid > 32 or off + 2 > n:
        raise TlsError("bad-session-id")
    cs = (b[off] << 8) | b[off + 1]
    off += 2 + cs
    if cs & 1 or off + 1 > n:
        raise TlsError("bad-cipher-suites")
    comp = b[off]
    off += 1 + comp
    if off > n:
        raise TlsError("bad-compression-methods")
    version = _VERSIONS.get(legacy, "tls-unknown")
    if off == n:  # no extensions at all (old clients)
        return ClientHello("", (), version, False)
    if off + 2 > n:
        raise TlsError("bad-extensions")
    ext_total = (b[off] << 8) | b[off + 1]
    off += 2
    end = off + ext_total
    if end != n:
        raise TlsError("bad-extensions-length")
    sni = ""
    alpn: tuple[str, ...] = ()
    ech = False
    while off < end:
        if off + 4 > end:
            raise TlsError("bad-extension")
        etype, elen = _EXT_HEADER(b, off)
        off += 4
        eend = off + elen
        if eend > end:
            raise TlsError("bad-extension-length")
        if etype == EXT_SERVER_NAME:
            sni = _server_name(b, off, eend)
        elif etype == EXT_ALPN:
            alpn = _alpn(b, off, eend)
        elif etype == EXT_SUPPORTED_VERSIONS:
            if elen < 1 or b[off] + 1 != elen or b[off] & 1:
                raise TlsError("bad-supported-versions")
            for i in range(off + 1, eend, 2):
                if b[i] == 3 and b[i + 1] == 4:  # 0x0304
                    version = "tls1.3"
                    break
        elif etype == EXT_ECH:
            ech = True
        off = eend
    return ClientHello(sni, alpn, version, ech)


def _server_name(b: bytes, off: int, end: int) -> str:
    # RFC 6066 section 3: ServerNameList; host_name (0) is the only type defined.
    if end - off < 2:
        raise TlsError("bad-server-name")
    list_len = (b[off] << 8) | b[off + 1]
    off += 2
    if off + list_len != end:
        raise TlsError("bad-server-name")
    name = ""
    while off < end:
        if off + 3 > end:
            raise TlsError("bad-server-name")
        ntype = b[off]
        nlen = (b[off + 1] << 8) | b[off + 2]
        off += 3
        if off + nlen > end or nlen == 0:
            raise TlsError("bad-server-name")
        if ntype == 0 and not name:
            raw = b[off : off + nlen]
            try:
                name = raw.decode("ascii")
            except UnicodeDecodeError:
                name = raw.decode("utf-8", "backslashreplace")
        off += nlen
    return name


def _alpn(b: bytes, off: int, end: int) -> tuple[str, ...]:
    # RFC 7301 section 3.1: ProtocolNameList
    if end - off < 2 or ((b[off] << 8) | b[off + 1]) != end - off - 2:
        raise TlsError("bad-alpn")
    off += 2
    out = []
    while off < end:
        ln = b[off]
        off += 1
        if ln == 0 or off + ln > end:
            raise TlsError("bad-alpn")
        out.append(b[off : off + ln].decode("ascii", "backslashreplace"))
        off += ln
    return tuple(out)
