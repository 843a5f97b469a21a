"""Decoding bytes (sans-IO): link and network layers, DNS, TLS ClientHello, HTTP/1.x, QUIC Initial."""

from beiand.net.decoder import Decoder, DecoderConfig
from beiand.net.errors import DecodeError

__all__ = ["DecodeError", "Decoder", "DecoderConfig"]
