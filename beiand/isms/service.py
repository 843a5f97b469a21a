"""One ``idc_command`` call, end to end and sans-IO: check, unpack, parse, apply, answer.

The order of the checks is the PHP CU's (ISMS.md §2): idcId, randVal, pwdHash, decrypt, hash,
unzip, parse, content; then the duplicate check (commandSequence, commandId) and the version.
Every outcome is a code of ISMS.md's ``idc_command`` column and is counted; what a command did
(per commandId) is queued as an ack (DT 10) for ``idc_commandack`` in CU-lite mode.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from beiand.errors import BeiandError
from beiand.isms.store import CommandStore
from beiand.isms.wire.codec import CODECS, Codec, XmlError, version_key
from beiand.isms.wire.codes import AckResult, AckType, CommandResult, CommandType, Compression, EncryptAlgorithm, SecurityType
from beiand.isms.wire.envelope import EnvelopeError, Keys, check_pwd, unpack
from beiand.isms.wire.model import ActivePeriod, BasicData, CodeList, Item, ListEntry, LogQuery, Query, SecurityCommand
from beiand.isms.wire.profile import Profile
from beiand.store import StoreError

log = logging.getLogger(__name__)
MAX_RAND = 20  # randVal ≤ 20 characters (ISMS.md §2)


class SecretError(BeiandError, ValueError):
    pass


def read_secret(path: Path) -> bytes:
    """A secret file: must be owned by this user and readable by nobody else (0600 or 0400)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise SecretError(f"{path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"{path}: mode {stat.S_IMODE(st.st_mode):04o}: readable by others; chmod 0600 (owned by beiand)")
    if st.st_uid != os.geteuid():
        raise SecretError(f"{path}: owned by uid {st.st_uid}, not by this process (uid {os.geteuid()})")
    return path.read_bytes().strip()


def load_keys(secrets_dir: Path) -> Keys:
    """``user_key``, ``enc_key``, ``iv``, ``auth_key`` in ``secrets_dir`` (each 0600)."""
    try:
        return Keys(*(read_secret(secrets_dir / n) for n in ("user_key", "enc_key", "iv", "auth_key")))
    except ValueError as exc:
        raise SecretError(f"{secrets_dir}: {exc}") from None


@dataclass(frozen=True)
class Ack:
    """One DT 10 row: what one command did."""

    command_id: int
    type: AckType
    result: AckResult
    msg: str
    house_id: str = ""
    # For the licence's CU (beiand isms serve): the decision store version the command committed
    # at, and the houses it is for (none: every house); the ack waits for the gateways of those
    # houses to apply that version (beiand/isms/fleet.py). Not written in DT 10.
    version: int = 0
    houses: tuple[str, ...] = ()


@dataclass
class Answer:
    code: CommandResult
    msg: str
    item: Item | None = None
    acks: list[Ack] = field(default_factory=list)


_ACK_TYPE = {"blacklist": AckType.BLACKLIST, "noFilter": AckType.NO_FILTER}


class CommandService:
    """Serves ``idc_command`` for one operator (idcId) with its keys, profile and command store."""

    def __init__(self, idc_id: str, keys: Keys, profile: Profile, store: CommandStore,
                 on_query: Callable[[LogQuery | Query], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.idc_id = idc_id
        self.keys = keys
        self.profile = profile
        self.store = store
        self.on_query = on_query
        self.clock = clock
        self.codecs: dict[str, Codec] = {v: CODECS[v](profile.xsd_dir) for v in profile.accept_versions}
        self.counts: Counter[str] = Counter()  # received, applied, refused:<code>
        self.unsupported: Counter[str] = Counter()  # beiand_isms_unsupported_total{reason}
        self.acks: list[Ack] = []  # waiting for idc_commandack (CU-lite) / DT 10
        self.last_call = 0.0

    def refuse(self, code: CommandResult, msg: str) -> Answer:
        self.counts[f"refused:{int(code)}"] += 1
        log.warning("isms: idc_command refused (%d): %s", int(code), msg)
        return Answer(code, msg)

    def handle(self, p: Mapping[str, str]) -> Answer:
        """``p``: the SOAP parameters by name (ISMS.md §2)."""
        self.counts["received"] += 1
        self.last_call = self.clock()
        try:
            idc_id, rand = p.get("idcId", ""), p.get("randVal", "")
            if idc_id != self.idc_id:
                return self.refuse(CommandResult.OTHER, f"idcId {idc_id[:40]!r} is not this operator's")
            if not rand or len(rand) > MAX_RAND:
                return self.refuse(CommandResult.OTHER, f"randVal: {len(rand)} characters (1..{MAX_RAND})")
            try:
                alg = self.profile.hash_of(int(p.get("hashAlgorithm", "")))
                enc = EncryptAlgorithm(int(p.get("encryptAlgorithm", "")))
                comp = Compression(int(p.get("compressionFormat", "")))
                ctype = int(p.get("commandType", ""))
                seq = int(p.get("commandSequence", ""))
            except ValueError as exc:
                return self.refuse(CommandResult.OTHER, f"a parameter is not a known number: {exc}")
            if not check_pwd(self.keys.user_key, rand, alg, p.get("pwdHash", "")):
                return self.refuse(CommandResult.AUTH, "pwdHash does not match")
            try:
                xml = unpack(p.get("command", ""), p.get("commandHash", ""), self.keys, enc, alg, comp)
            except EnvelopeError as exc:
                return self.refuse(exc.command_code, str(exc))
            codec = self.codecs.get(version_key(p.get("commandVersion", "")))
            if codec is None:
                return self.refuse(CommandResult.OTHER, f"commandVersion {p.get('commandVersion', '')[:20]!r}: not one of "
                                   f"{', '.join(self.codecs)} (no guess)")
            if ctype == CommandType.ACTIVE_PERIOD and self.profile.type5 != "active-period":
                self.unsupported["command-type"] += 1
                return self.refuse(CommandResult.OTHER, "unsupported: commandType 5 (基础数据查询) in this profile")
            try:
                item = codec.decode(ctype, xml)
            except XmlError as exc:
                if exc.why.startswith("unsupported"):
                    self.unsupported["command-type"] += 1
                return self.refuse(exc.code, exc.why)
            # Under the decision store's write lock: what any other writer applied is seen first
            # (a duplicate sent to two gateways is refused once), and the command's rows commit
            # together with its sequence, or not at all (the ack then says why).
            with self.store.lock:  # the version read is the one this command committed at (F4 of issue 30's review)
                with self.store.writing():
                    if self.store.seen_sequence(seq):
                        return self.refuse(CommandResult.OTHER, f"duplicate commandSequence {seq}")
                    if isinstance(item, SecurityCommand) and self.store.is_duplicate(item):
                        return self.refuse(CommandResult.OTHER, f"duplicate commandId {item.command_id}")
                    ans = self.apply(item)
                    self.store.note_sequence(seq)
                committed = self.store.version
            # Committed: only now may its ack go out (the CU-lite sends acks from another thread).
            self.acks.extend(dataclasses.replace(a, version=committed) for a in ans.acks)
            if len(self.acks) > 10000:  # SMMS takes none for long: the oldest go, said
                log.error("isms: %d acks waiting: the oldest %d dropped", len(self.acks), len(self.acks) - 10000)
                del self.acks[:-10000]
            self.counts["applied"] += 1
            return ans
        except StoreError as exc:  # nothing applied: SMMS sends it again
            log.error("isms: %s", exc)
            return self.refuse(CommandResult.OTHER, f"not applied: {exc}")
        except Exception as exc:  # a bug must answer 999 and be logged, never drop the connection
            log.exception("isms: idc_command failed")
            return self.refuse(CommandResult.OTHER, f"internal error: {type(exc).__name__}")

    def apply(self, item: Item) -> Answer:
        now = self.clock()
        if isinstance(item, SecurityCommand):
            out = self.store.apply_security(item, now)
            ack_type = AckType.FILTER if item.type == SecurityType.FILTER else AckType.MONITOR
            cid = item.command_id
        elif isinstance(item, ListEntry):
            out, ack_type, cid = self.store.apply_list(item, now), _ACK_TYPE[item.kind], item.command_id
        elif isinstance(item, CodeList):
            out, ack_type, cid = self.store.apply_code_list(item), AckType.CODE_LIST, 0
        elif isinstance(item, ActivePeriod):
            out, ack_type, cid = self.store.apply_period(item), AckType.BASIC_DATA, item.command_id
        elif isinstance(item, LogQuery):
            # ISMS.md §3 has no ack type for a log query (issue 28): the DT 3 file is the answer, no ack
            if self.on_query is not None:
                self.on_query(item)
            return Answer(CommandResult.OK, "answered in a DT 3 file", item, [])
        elif isinstance(item, BasicData):
            out, ack_type, cid = self.store.apply_basic(item), AckType.BASIC_DATA, item.command_id
        elif item.root == "commandQuery":
            # types 3 and 6: a DT 6 file of the commands in force (answers.answer, off the request path)
            # (no ack: ISMS.md §3 gives a query of the commands no ack type; the file is the answer)
            if self.on_query is not None:
                self.on_query(item)
            return Answer(CommandResult.OK, "answered in a DT 6 file", item, [])
        else:
            # queryView / commandRecord: the answer is the ack itself (answers.answer builds it from
            # the aggregates and the access log, off the request path)
            if self.on_query is not None:
                self.on_query(item)
            return Answer(CommandResult.OK, f"<{item.root}> answered in the ack (DT 10)", item, [])
        if out.reason.startswith("unsupported"):
            self.unsupported[out.reason] += 1
        houses = item.house_ids if isinstance(item, SecurityCommand) else ()
        ack = Ack(cid, ack_type, out.result, out.msg, self.store.house_id, houses=houses)
        return Answer(CommandResult.OK, out.msg, item, [ack])  # its ack is queued once the command is committed
