"""Link types, ethertypes and tunnel headers: declared once, for every reader of frames.

The decoder (``net/decoder.py``) walks these headers, the pcap reader (``capture/pcap.py``)
finds the outer IP header through them, and the BPF generator (``capture/bpf.py``) compiles
the same walk into the kernel's filter. A header added here and to the decoder but not to the
BPF program fails ``tests/unit/capture/test_bpf_encapsulations.py`` (the decoder names a frame
the kernel would have dropped).

Link types: https://www.tcpdump.org/linktypes.html
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

# -- link types (pcap / pcapng LinkType field) ---------------------------------------------
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in host order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_OLD_A = 12  # raw IP (OpenBSD's DLT_RAW number)
LINKTYPE_RAW_OLD_B = 14  # raw IP (BSD/OS's DLT_RAW number)
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108  # OpenBSD loopback: 4-byte address family in network order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_NFLOG = 239  # Linux NFLOG (tcpdump -i nflog:N): 4-byte header + TLVs, payload in TLV 9
LINKTYPE_LINUX_SLL2 = 276


class Start(Enum):
    """What the first header of a link type leads to."""

    ETHERNET = "ethernet"  # an Ethernet header at ``offset``
    ETHERTYPE = "ethertype"  # a protocol number (ethertype) at ``ethertype_at``; its payload at ``offset``
    IP = "ip"  # an IPv4 or IPv6 header at ``offset`` (the version nibble says which)
    NFLOG = "nflog"  # NFLOG TLVs from ``offset``; the packet is the NFULA_PAYLOAD TLV's value


class LinkType(NamedTuple):
    name: str
    start: Start
    offset: int
    ethertype_at: int = -1


LINK_TYPES: dict[int, LinkType] = {
    LINKTYPE_ETHERNET: LinkType("ethernet", Start.ETHERNET, 0),
    LINKTYPE_RAW: LinkType("raw", Start.IP, 0),
    LINKTYPE_RAW_OLD_A: LinkType("raw", Start.IP, 0),
    LINKTYPE_RAW_OLD_B: LinkType("raw", Start.IP, 0),
    LINKTYPE_IPV4: LinkType("ipv4", Start.IP, 0),
    LINKTYPE_IPV6: LinkType("ipv6", Start.IP, 0),
    LINKTYPE_NULL: LinkType("null", Start.IP, 4),
    LINKTYPE_LOOP: LinkType("loop", Start.IP, 4),
    LINKTYPE_LINUX_SLL: LinkType("linux-sll", Start.ETHERTYPE, 16, 14),
    LINKTYPE_LINUX_SLL2: LinkType("linux-sll2", Start.ETHERTYPE, 20, 0),
    LINKTYPE_NFLOG: LinkType("nflog", Start.NFLOG, 4),
}
SUPPORTED_LINKTYPES = frozenset(LINK_TYPES)

# NFLOG (include/uapi/linux/netfilter/nfnetlink_log.h): TLV lengths and types are in the
# capturing host's byte order (little-endian on every gateway we ship to), padded to 4 bytes.
NFLOG_TLV_PAYLOAD = 9

# -- ethertypes ------------------------------------------------------------------------------
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad (QinQ S-tag), the old QinQ tag
ETH_MPLS = (0x8847, 0x8848)  # RFC 3032 unicast, multicast
ETH_PPPOE_SESSION = 0x8864  # RFC 2516
ETH_TEB = 0x6558  # transparent Ethernet bridging (GRE, Geneve)
ETH_ERSPAN_II = 0x88BE  # ERSPAN type II: an 8-byte header, then Ethernet
ERSPAN_II_HEADER = 8
ETHERNET_HEADER = 14
VLAN_TAG = 4
MPLS_LABEL = 4
MPLS_CONTROL_WORD = 4  # RFC 4385: first nibble 0, then the pseudowire's Ethernet frame
PPPOE_HEADER = 6  # RFC 2516 section 4: ver/type, code, session id, length; then the PPP protocol

# PPP protocol numbers (RFC 1661 section 2; RFC 1332 / RFC 5072). A protocol field whose first
# byte is odd is one byte long (RFC 1661 section 6.5, protocol field compression).
PPP_IPV4 = 0x0021
PPP_IPV6 = 0x0057
PPP_IP = (PPP_IPV4, PPP_IPV6)

# -- IP protocols carrying another IP packet -------------------------------------------------
IPPROTO_IPIP = 4  # RFC 2003
IPPROTO_IPV6 = 41  # RFC 4213 (6in4)
IPPROTO_GRE = 47  # RFC 2784 / 2890
IP_IN_IP = (IPPROTO_IPIP, IPPROTO_IPV6)
IPV6_EXTENSION_HEADERS = (0, 43, 60, 51, 44)  # RFC 8200 section 4; 51 AH, 44 Fragment
IPV6_FRAGMENT = 44

# GRE (RFC 2784 / 2890): a 4-byte header, +4 for each of the checksum, key and sequence bits
GRE_HEADER = 4
GRE_OPTIONAL_BITS = (0x80, 0x20, 0x10)

# -- UDP tunnels ------------------------------------------------------------------------------
VXLAN_PORT = 4789  # RFC 7348: 8-byte header (flag I = 0x08 in the first byte), then Ethernet
VXLAN_HEADER = 8
VXLAN_FLAG_VNI = 0x08
GENEVE_PORT = 6081  # RFC 8926: 8 bytes + options (first byte's low 6 bits, in 4-byte words)
GENEVE_HEADER = 8
GTPU_PORT = 2152  # 3GPP TS 29.281 section 5: 8 bytes, +4 with E/S/PN, then extension headers
GTPU_HEADER = 8
GTPU_TPDU = 0xFF  # message type of a G-PDU (user data)
UDP_TUNNEL_PORTS = (VXLAN_PORT, GENEVE_PORT, GTPU_PORT)

# How many encapsulations deep the decoder follows (and the BPF program with it).
MAX_DEPTH = 4

# How far the kernel's classic BPF program follows headers whose length varies (it has no
# loops: every step is unrolled). A frame with more passes the filter uncounted by the kernel;
# the decoder counts it in ``stats["capture:bpf-unfollowed"]`` (docs/configuration.md).
BPF_MAX_VLAN_TAGS = 3  # per Ethernet header
BPF_MAX_MPLS_LABELS = 4
BPF_MAX_GTPU_EXTENSIONS = 2
# IPv6 extension headers: not followed at all; a packet with any is passed and counted.


# Names on any port (issue 32): what the kernel's filters test of a flow's first bytes, shared by
# the decoder (net.http, net.quic) and the capture filter (capture.bpf); the inline queue's rules
# (enforce.nfqueue, which reads no frame code) keep a copy, tested equal.
# The first four bytes of every method a server's parser takes (llhttp's list: RFC 9110, WebDAV, CalDAV,
# Subversion's, SSDP's, PURGE, QUERY): an odd port's request with any of them is named (issue 32).
HTTP_METHOD_PREFIXES = (b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC", b"PROP", b"MKCO",
                        b"COPY", b"LOCK", b"MOVE", b"SEAR", b"UNLO", b"BIND", b"REBI", b"UNBI", b"ACL ", b"REPO", b"MKAC",
                        b"CHEC", b"MERG", b"M-SE", b"NOTI", b"SUBS", b"UNSU", b"PURG", b"MKCA", b"LINK", b"UNLI", b"SOUR",
                        b"QUER")
METHOD_WORDS = tuple(int.from_bytes(k, "big") for k in HTTP_METHOD_PREFIXES)  # as big-endian words
QUIC_V1, QUIC_V2, QUIC_T050, QUIC_T051 = 0x00000001, 0x6B3343CF, 0x54303530, 0x54303531
QUIC_KNOWN_VERSIONS = (QUIC_V1, QUIC_V2, QUIC_T050, QUIC_T051)  # and the drafts QUIC_FIRST_DRAFT..QUIC_LAST_DRAFT (0xff0000NN)
QUIC_FIRST_DRAFT, QUIC_LAST_DRAFT = 23, 34
QUIC_MIN_INITIAL = 1200  # RFC 9000 section 14.1: a client's Initial datagram is padded to at least this


def quic_known_version(version: int) -> bool:
    """A QUIC version whose Initial beiand reads by its own keys: v1, v2, the drafts 23 to 34, T050/T051."""
    return version in QUIC_KNOWN_VERSIONS or (version & 0xFFFFFF00 == 0xFF000000
                                              and QUIC_FIRST_DRAFT <= version & 0xFF <= QUIC_LAST_DRAFT)
