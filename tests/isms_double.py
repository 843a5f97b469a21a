"""A test double of SMMS (and of a CU) built from /work/shared/ISMS.md, not from beiand's code
paths: it packs commands with its own small envelope (hashlib, cryptography, zipfile, gzip)
and calls ``idc_command`` over real HTTP; it serves ``idc_commandack`` and records what it got.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import io
import os
import random
import string
import threading
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

USER_KEY, ENC_KEY, IV, AUTH_KEY = b"userKey1", b"0123456789abcdef", b"fedcba9876543210", b"authKey-secret"
IDC_ID = "A2.B1.B2-20090001"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"


def h(alg: int, data: bytes) -> bytes:
    if alg == 1:
        return hashlib.md5(data).hexdigest().encode()
    if alg == 2:
        return hashlib.sha1(data).hexdigest().encode()
    return data


def _soap_answer(req: http.server.BaseHTTPRequestHandler, op: str, code: int, msg: str) -> None:
    """The SOAP answer of an ack or command call: ``<op><return><resultCode/><msg/>``."""
    resp = (f'<soap:Envelope xmlns:soap="{SOAP}"><soap:Body><{op}><return><resultCode>{code}'
            f"</resultCode><msg>{msg}</msg></return></{op}></soap:Body></soap:Envelope>").encode()
    req.send_response(200)
    req.send_header("Content-Type", "text/xml")
    req.send_header("Content-Length", str(len(resp)))
    req.end_headers()
    req.wfile.write(resp)


def _serve(host: str, handler: type[http.server.BaseHTTPRequestHandler], path: str
           ) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A threaded HTTP server on a free port, serving in the background; (server, its URL)."""
    httpd = http.server.ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://{host}:{httpd.server_address[1]}{path}"


@dataclass
class Smms:
    url: str
    idc_id: str = IDC_ID
    user_key: bytes = USER_KEY
    enc_key: bytes = ENC_KEY
    iv: bytes = IV
    auth_key: bytes = AUTH_KEY
    seq: int = 1000
    acks: list[dict[str, Any]] = field(default_factory=list)
    tls: Any = None  # an ssl.SSLContext trusting the endpoint's certificate

    def pack(self, xml: bytes, enc: int, alg: int, comp: int) -> tuple[str, str]:
        if comp == 1:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr("cmd.xml", xml)
            packed = buf.getvalue()
        elif comp == 2:
            packed = gzip.compress(xml)
        else:
            packed = xml
        body = packed
        if enc == 1:
            p = padding.PKCS7(128).padder()
            e = Cipher(algorithms.AES(self.enc_key), modes.CBC(self.iv)).encryptor()
            body = e.update(p.update(packed) + p.finalize()) + e.finalize()
        return base64.b64encode(body).decode(), base64.b64encode(h(alg, packed + self.auth_key)).decode()

    def params(self, xml: bytes, ctype: int, enc: int = 1, alg: int = 1, comp: int = 1, version: str = "v2.0",
               **override: Any) -> dict[str, Any]:
        self.seq += 1
        rand = "".join(random.choice(string.ascii_letters) for _ in range(20))
        cmd, chash = self.pack(xml, enc, alg, comp)
        p = {"idcId": self.idc_id, "randVal": rand, "pwdHash": base64.b64encode(h(alg, self.user_key + rand.encode())).decode(),
             "command": cmd, "commandHash": chash, "commandType": ctype, "commandSequence": self.seq,
             "encryptAlgorithm": enc, "hashAlgorithm": alg, "compressionFormat": comp, "commandVersion": version}
        p.update(override)
        return p

    def post(self, params: dict[str, Any]) -> tuple[int, str]:
        args = "".join(f"<{k}>{v}</{k}>" for k, v in params.items())
        body = (f'<soap:Envelope xmlns:soap="{SOAP}"><soap:Body><idc_command xmlns="http://smms.example/">{args}'
                "</idc_command></soap:Body></soap:Envelope>").encode()
        req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "text/xml; charset=utf-8"})
        with urllib.request.urlopen(req, timeout=30, context=self.tls) as r:
            root = ET.fromstring(r.read())
        ret = next(e for e in root.iter() if e.tag.endswith("return"))
        return int(ret.findtext("resultCode") or "-1"), ret.findtext("msg") or ""

    def send(self, xml: str | bytes, ctype: int, **kw: Any) -> tuple[int, str]:
        return self.post(self.params(xml.encode() if isinstance(xml, str) else xml, ctype, **kw))


def command_xml(cid: int, typ: int, rules: list[tuple[int, str, str]], op: int = 0, block: int = 1, effect: str = "",
                expired: str = "", houses: tuple[str, ...] = ()) -> str:
    rs = "".join(f"<rule><subtype>{s}</subtype><valueStart>{a}</valueStart><valueEnd>{b}</valueEnd></rule>" for s, a, b in rules)
    hs = "".join(f"<houseId>{x}</houseId>" for x in houses)
    return (f"<command><commandId>{cid}</commandId><type>{typ}</type><operationType>{op}</operationType>{rs}"
            f"<action><block>{block}</block><reason>test</reason><log>1</log><report>1</report></action>"
            f"<time><effectTime>{effect}</effectTime><expiredTime>{expired}</expiredTime></time>"
            f"<range><idcId>{IDC_ID}</idcId>{hs}</range><privilege><owner>smms</owner><visible>1</visible></privilege>"
            "<timeStamp>2026-11-29 12:00:00</timeStamp></command>")


def unpack_file(xml: bytes, enc_key: bytes = ENC_KEY, iv: bytes = IV, auth_key: bytes = AUTH_KEY) -> bytes:
    """The report inside a ``<fileLoad>`` (what SMMS does with an uploaded file), hash checked."""
    root = ET.fromstring(xml)
    body = base64.b64decode(root.findtext("dataUpload") or "")
    if root.findtext("encryptAlgorithm") == "1":
        d = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).decryptor()
        u = padding.PKCS7(128).unpadder()
        body = u.update(d.update(body) + d.finalize()) + u.finalize()
    alg = int(root.findtext("hashAlgorithm") or "0")
    assert base64.b64decode(root.findtext("dataHash") or "") == h(alg, body + auth_key), "dataHash mismatch"
    if body[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(body)) as z:
            return z.read(z.namelist()[0])
    if body[:2] == b"\x1f\x8b":
        return gzip.decompress(body)
    return body


class AckServer:
    """SMMS's ``idc_commandack`` (ISMS.md §2, (1): Aotain): checks pwdHash and resultHash with the
    double's own code, unpacks ``result`` and keeps each ack row."""

    def __init__(self, host: str = "127.0.0.1", keys: tuple[bytes, bytes, bytes, bytes] = (USER_KEY, ENC_KEY, IV, AUTH_KEY)
                 ) -> None:
        self.acks: list[dict[str, str]] = []
        self.calls: list[tuple[int, str]] = []
        self.refuse: set[str] = set()  # commandIds whose ack is answered 6 (content error): the whole call refused
        outer = self
        user_key, enc_key, iv, auth_key = keys

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                root = ET.fromstring(body)
                op = next(e for e in root.iter() if e.tag.endswith("idc_commandack"))
                p = {c.tag.rsplit("}", 1)[-1]: c.text or "" for c in op}
                alg = int(p["hashAlgorithm"])
                code, msg = 0, "ok"
                if base64.b64decode(p["pwdHash"]) != h(alg, user_key + p["randVal"].encode()):
                    code, msg = 1, "pwdHash"
                else:
                    fl = (f"<fileLoad><dataUpload>{p['result']}</dataUpload><encryptAlgorithm>{p['encryptAlgorithm']}"
                          f"</encryptAlgorithm><hashAlgorithm>{alg}</hashAlgorithm><dataHash>{p['resultHash']}</dataHash></fileLoad>")
                    try:
                        xml = ET.fromstring(unpack_file(fl.encode(), enc_key, iv, auth_key))
                    except AssertionError:
                        code, msg = 3, "hash"
                    else:
                        rows = [{c.tag: c.text or "" for c in a} for a in xml.iter("ack")]
                        if any(r.get("commandId") in outer.refuse for r in rows):
                            code, msg = 6, "content"
                        else:
                            outer.acks += rows
                outer.calls.append((code, msg))
                _soap_answer(self, "idc_commandackResponse", code, msg)

        self.httpd, self.url = _serve(host, H, "/smms/idc_commandack")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Cu:
    """A CU double (ISMS.md §1, (1): the PHP CU): serves SMMS's ``idc_command`` and forwards
    commandType 2 and 4 unchanged (same SOAP body) to each EU's own ``idc_command``; answers the
    other types itself (0) without forwarding. Keeps what each EU answered."""

    def __init__(self, eu_urls: list[str], host: str = "127.0.0.1") -> None:
        self.forwarded: list[tuple[int, str, int]] = []  # (commandType, EU url, EU's resultCode)
        self.kept: list[int] = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                root = ET.fromstring(body)
                op = next(e for e in root.iter() if e.tag.endswith("idc_command"))
                ctype = int(next(c for c in op if c.tag.endswith("commandType")).text or "-1")
                code, msg = 0, "received by the CU"
                if ctype in (2, 4):
                    for url in eu_urls:
                        req = urllib.request.Request(url, data=body, headers={"Content-Type": "text/xml; charset=utf-8"})
                        with urllib.request.urlopen(req, timeout=30) as r:
                            ret = next(e for e in ET.fromstring(r.read()).iter() if e.tag.endswith("return"))
                        eu_code = int(ret.findtext("resultCode") or "-1")
                        outer.forwarded.append((ctype, url, eu_code))
                        if eu_code != 0:
                            code, msg = eu_code, ret.findtext("msg") or ""
                else:
                    outer.kept.append(ctype)
                _soap_answer(self, "idc_commandResponse", code, msg)

        self.httpd, self.url = _serve(host, H, "/cu/idc_command")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def write_secrets(sec: Path) -> Path:
    """The daemon's ISMS secrets directory with the double's keys, each readable by its owner only."""
    sec.mkdir()
    for n, v in (("user_key", USER_KEY), ("enc_key", ENC_KEY), ("iv", IV), ("auth_key", AUTH_KEY)):
        (sec / n).write_bytes(v)
        os.chmod(sec / n, 0o600)
    return sec
