"""``idc_commandack`` (CU-lite, ISMS.md §2-§3): per-command results (DT 10) sent to SMMS."""

from __future__ import annotations

import secrets
import string
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TYPE_CHECKING

from beiand.isms.wire import soap
from beiand.isms.wire.codes import Compression, EncryptAlgorithm, HashAlgorithm
from beiand.isms.wire.envelope import Keys, pack, pwd_hash
from beiand.isms.wire.model import format_time
from beiand.isms.wire.profile import Profile

if TYPE_CHECKING:
    from beiand.isms.service import Ack


def ack_xml(idc_id: str, acks: Sequence[Ack], now: float) -> bytes:
    root = ET.Element("commandAck")
    ET.SubElement(root, "idcId").text = idc_id
    for a in acks:
        r = ET.SubElement(root, "ack")
        for k, v in (("houseId", a.house_id), ("commandId", str(a.command_id)), ("type", str(int(a.type))),
                     ("resultCode", str(int(a.result))), ("msgInfo", a.msg)):
            ET.SubElement(r, k).text = v
    ET.SubElement(root, "timeStamp").text = format_time(now)
    body: bytes = ET.tostring(root, encoding="utf-8")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body


def send_acks(url: str, idc_id: str, keys: Keys, profile: Profile, acks: Sequence[Ack], timeout: float = 30.0) -> None:
    import time

    rand = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(20))
    alg = HashAlgorithm(profile.hash)
    env = pack(ack_xml(idc_id, acks, time.time()), keys, EncryptAlgorithm(profile.encrypt), alg, Compression(profile.compression))
    body = soap.call("idc_commandack", {
        "idcId": idc_id, "randVal": rand, "pwdHash": pwd_hash(keys.user_key, rand, alg), "result": env.payload,
        "resultHash": env.payload_hash, "encryptAlgorithm": profile.encrypt, "hashAlgorithm": profile.hash_code(alg),
        "compressionFormat": profile.compression, "commandVersion": profile.command_version})
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "text/xml; charset=utf-8"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        code, msg = soap.parse_return(r.read())
    if code != 0:
        raise ValueError(f"idc_commandack answered {code}: {msg}")
