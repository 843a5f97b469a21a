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

from beiand.lab.netns import DNS_IP, ODD_HTTP_PORT, ODD_QUIC_PORT, ODD_TLS_PORT, SERVER_IPS, ZONE


def make_cert(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """A certificate for every lab name, issued by the lab's own CA (``lab-ca.pem``: a browser
    profile trusts it, so a real browser loads the lab's pages without an exception)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "beiand lab CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    c, k = directory / "lab-cert.pem", directory / "lab-key.pem"
    (directory / "lab-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))  # the chain
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


REQUESTS: list[Path] = []  # --requests FILE: one line per request served (host and path), for tests


async def _page(request: web.Request) -> web.Response:
    if REQUESTS:
        with REQUESTS[0].open("a", encoding="utf-8") as f:
            f.write(f"{request.host} {request.path}\n")
    return web.Response(text=f"hello from {request.host} ({request.transport.get_extra_info('sockname')[0]})\n"  # type: ignore[union-attr]
                        + "x" * 2000)


def _h3_protocol() -> type:
    """An aioquic protocol that answers HTTP/3 requests with the lab's page (browsers over QUIC)."""
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import HeadersReceived
    from aioquic.quic.events import ProtocolNegotiated, QuicEvent

    class H3Page(QuicConnectionProtocol):
        _h3: H3Connection | None = None

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
                self._h3 = H3Connection(self._quic)
            if self._h3 is None:
                return
            for ev in self._h3.handle_event(event):
                if isinstance(ev, HeadersReceived):
                    head = dict(ev.headers)
                    host = head.get(b":authority", b"").decode(errors="replace")
                    path = head.get(b":path", b"/").decode(errors="replace")
                    if REQUESTS:
                        with REQUESTS[0].open("a", encoding="utf-8") as f:
                            f.write(f"{host} {path}\n")
                    body = f"hello from {host} (h3)\n".encode()
                    self._h3.send_headers(ev.stream_id, [(b":status", b"200"), (b"content-type", b"text/plain; charset=utf-8"),
                                                         (b"content-length", str(len(body)).encode())])
                    self._h3.send_data(ev.stream_id, body, end_stream=True)
                    self.transmit()

    return H3Page


async def main(directory: Path, ready: Path) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    cert, key = make_cert(directory, sorted(ZONE))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    # and on ports no one watches (issue 32): HTTP on ODD_HTTP_PORT, HTTPS on ODD_TLS_PORT, QUIC on ODD_QUIC_PORT
    for site in (web.TCPSite(runner, "0.0.0.0", 80), web.TCPSite(runner, "0.0.0.0", 8080),
                 web.TCPSite(runner, "0.0.0.0", 443, ssl_context=tls), web.TCPSite(runner, "0.0.0.0", ODD_HTTP_PORT),
                 web.TCPSite(runner, "0.0.0.0", ODD_TLS_PORT, ssl_context=tls)):
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
            for port in (443, ODD_QUIC_PORT):
                await serve(ip, port, configuration=qc, create_protocol=_h3_protocol())
    except ImportError:  # aioquic is a test dependency: no QUIC server without it
        pass
    ready.write_text("ok\n")
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--requests", help="append 'host path' of every request served to this file")
    a = ap.parse_args()
    if a.requests:
        REQUESTS.append(Path(a.requests))
    asyncio.run(main(Path(a.dir), Path(a.ready)))
