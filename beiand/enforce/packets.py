"""Hand-built TCP packets (IPv4 and IPv6) sent on raw sockets opened once: no per-packet socket
creation, no scapy on this path (DESIGN.md hot-path rules)."""

from __future__ import annotations

import html
import socket
import struct

RST, FIN, PSH, ACK = 0x04, 0x01, 0x08, 0x10
IPPROTO_RAW = 255


def checksum(b: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return int(~s & 0xFFFF)


# Block-page bytes per injected segment: with 60 bytes of IPv6 + TCP headers, within the 1,280-byte
# minimum IPv6 MTU, so no path drops or refuses it.
PAGE_SEGMENT = 1200


def tcp_packet(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    """A whole IP packet (v4 or v6 by the address family) carrying one TCP segment."""
    v6 = ":" in src
    af = socket.AF_INET6 if v6 else socket.AF_INET
    s, d = socket.inet_pton(af, src), socket.inet_pton(af, dst)
    th = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0)
    seg_len = len(th) + len(payload)
    pseudo = s + d + (struct.pack("!IxxxB", seg_len, 6) if v6 else struct.pack("!BBH", 0, 6, seg_len))
    th = th[:16] + struct.pack("!H", checksum(pseudo + th + payload)) + th[18:]
    if v6:
        return struct.pack("!IHBB", 0x60000000, seg_len, 6, 64) + s + d + th + payload
    ih = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + seg_len, 0, 0x4000, 64, 6, 0, s, d)
    return ih[:10] + struct.pack("!H", checksum(ih)) + ih[12:] + th + payload


def block_page(name: str, contact: str = "", provider: str = "") -> bytes:
    """HTTP 451 with a short page, Chinese first, English second."""
    n = html.escape(name)
    who = html.escape(provider) or "本接入服务商"
    c = html.escape(contact)
    body = f"""<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>网站未备案 / Site not filed</title></head>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto">
<h1>该网站未在本网络备案</h1>
<p>您访问的网站 <b>{n}</b> 未在{who}完成 ICP 备案（或备案信息与实际不符），依据《互联网信息服务管理办法》（国务院令第292号）及
原信息产业部令第33号《非经营性互联网信息服务备案管理办法》“先备案后接入”的要求，暂时无法访问。</p>
<p>网站主办者请登录 <a href="https://beian.miit.gov.cn">https://beian.miit.gov.cn</a> 查询或办理备案，并联系接入服务商完成接入核验。</p>
{f"<p>联系方式：{c}</p>" if c else ""}
<hr lang="en">
<h2 lang="en">This site is not filed for this network</h2>
<p lang="en">The site <b>{n}</b> has no ICP filing (备案) with {html.escape(provider) or "this access provider"}, or its filing does not
match, so it cannot be reached through this network (Chinese regulations require filing before access).
The site owner should check or file at <a href="https://beian.miit.gov.cn">https://beian.miit.gov.cn</a> and complete the
access provider's verification.</p>
{f'<p lang="en">Contact: {c}</p>' if c else ""}
</body></html>
""".encode()
    head = (f"HTTP/1.1 451 Unavailable For Legal Reasons\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n").encode()
    return head + body


class Injector:
    """Raw IPv4/IPv6 sockets, opened once (CAP_NET_RAW)."""

    def __init__(self) -> None:
        self.v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_RAW)
        try:
            self.v6: socket.socket | None = socket.socket(socket.AF_INET6, socket.SOCK_RAW, IPPROTO_RAW)
        except OSError:
            self.v6 = None
        self.sent = 0

    def send(self, pkt: bytes, dst: str) -> None:
        if ":" in dst:
            if self.v6 is None:
                raise OSError("no IPv6 raw socket")
            self.v6.sendto(pkt, (dst, 0))
        else:
            self.v4.sendto(pkt, (dst, 0))
        self.sent += 1

    def reset_both(self, client: str, cport: int, server: str, sport: int, seq: int, ack: int, seg_len: int,
                   server_saw_segment: bool) -> None:
        """RST to the client (from the server, at the client's ack) and to the server (from the client)."""
        self.send(tcp_packet(server, client, sport, cport, ack, 0, RST), client)
        self.send(tcp_packet(client, server, cport, sport, seq + (seg_len if server_saw_segment else 0), 0, RST), server)

    def block_page(self, client: str, cport: int, server: str, sport: int, seq: int, ack: int, seg_len: int, page: bytes,
                   server_saw_segment: bool) -> None:
        """The page to the client as the server's answer, in segments that fit any path (the last
        with FIN); the server side reset. One segment of the whole page went over the 1,500-byte
        MTU once the name was long or the page grew (EMSGSIZE: the request was dropped and the
        visitor saw nothing, not the page)."""
        chunk = PAGE_SEGMENT
        for off in range(0, len(page), chunk):
            last = off + chunk >= len(page)
            self.send(tcp_packet(server, client, sport, cport, ack + off, seq + seg_len, PSH | ACK | (FIN if last else 0),
                                 page[off : off + chunk]), client)
        self.send(tcp_packet(client, server, cport, sport, seq + (seg_len if server_saw_segment else 0), 0, RST), server)

    def close(self) -> None:
        self.v4.close()
        if self.v6 is not None:
            self.v6.close()
