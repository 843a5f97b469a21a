"""One error type per layer; all are caught in exactly one place (``Decoder.feed``) and counted."""

from beiand.errors import BeiandError


class DecodeError(BeiandError):
    """Bad input at some layer; ``reason`` is a short fixed string used as a counter label."""

    layer = "net"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LinkError(DecodeError):
    layer = "link"


class IpError(DecodeError):
    layer = "ip"


class DnsError(DecodeError):
    layer = "dns"


class TlsError(DecodeError):
    layer = "tls"


class HttpError(DecodeError):
    layer = "http"


class QuicError(DecodeError):
    layer = "quic"
