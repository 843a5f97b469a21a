"""The lab's hosted servers (run inside the hosted namespace by :mod:`beiand.lab.netns`):
HTTP on :80 and :8080, HTTPS on :443 (one self-signed certificate for every lab name), QUIC on
udp/443 (aioquic, when installed), and an authoritative DNS server on the DNS address."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ssl
import struct
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from beiand.lab.netns import DNS_IP, SERVER_IPS, ZONE


def make_cert(directory: Path, names: list[str]) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(key, hashes.SHA256()))
    c, k = directory / "lab-cert.pem", directory / "lab-key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return c, k


def dns_answer(wire: bytes) -> bytes:
    q = dns.message.from_wire(wire)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA
    qn = q.question[0].name.to_text().rstrip(".").lower()
    if qn in ZONE:
        if q.question[0].rdtype == dns.rdatatype.A:
            r.answer.append(dns.rrset.from_text(qn + ".", 60, "IN", "A", ZONE[qn]))
    else:
        r.set_rcode(dns.rcode.NXDOMAIN)
    return bytes(r.to_wire())


class _DnsUdp(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.transport.sendto(dns_answer(data), addr)  # type: ignore[attr-defined]
        except Exception:  # a bad query gets no answer
            pass


async def _dns_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
            out = dns_answer(await reader.readexactly(n))
            writer.write(struct.pack("!H", len(out)) + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _page(request: web.Request) -> web.Response:
    return web.Response(text=f"hello from {request.host} ({request.transport.get_extra_info('sockname')[0]})\n"  # type: ignore[union-attr]
                        + "x" * 2000)


async def main(directory: Path, ready: Path) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    cert, key = make_cert(directory, sorted(ZONE))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    for site in (web.TCPSite(runner, "0.0.0.0", 80), web.TCPSite(runner, "0.0.0.0", 8080),
                 web.TCPSite(runner, "0.0.0.0", 443, ssl_context=tls)):
        await site.start()
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(_DnsUdp, local_addr=(DNS_IP, 53))
    await asyncio.start_server(_dns_tcp, DNS_IP, 53)
    try:
        from aioquic.asyncio import serve  # type: ignore[attr-defined]
        from aioquic.quic.configuration import QuicConfiguration

        qc = QuicConfiguration(is_client=False, alpn_protocols=["h3", "hq-interop"])
        qc.load_cert_chain(str(cert), str(key))
        # One socket per address: a wildcard UDP socket would answer from the primary address.
        for ip in SERVER_IPS:
            await serve(ip, 443, configuration=qc)
    except ImportError:  # aioquic is a test dependency: no QUIC server without it
        pass
    ready.write_text("ok\n")
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--ready", required=True)
    a = ap.parse_args()
    asyncio.run(main(Path(a.dir), Path(a.ready)))
