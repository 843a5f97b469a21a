"""What to do with SMMS's answer to an uploaded file, ``999/<DT>-<name>-<code>`` (ISMS.md §2).

ISMS.md (mark (1): Aotain) gives the codes and "3 tries 600 s apart"; which codes are worth a
retry is beiand's reading, kept here in one table so that an operator's spec can correct it:

| code | meaning | beiand |
|---|---|---|
| 0 | processed | accepted |
| 1 / 2 / 3 | decrypt / hash / unzip failed | retry: a transfer can damage a file; the same bytes again |
| 900 | other, upload again | retry (SMMS asks for it) |
| 999 | still processing | wait: no try spent |
| 4 / 5 | format error / wrong version | rejected for good: the same file gets the same verdict |
| 51 / 52-55 | wrong report type / node too long, wrong type, wrong content, missing | rejected for good |
| other | unknown | retry (then rejected) |

A retry goes up at least :data:`RETRY_AFTER` seconds after the last try; after :data:`MAX_TRIES`
tries with a retry code the file is rejected for good. Several answers for one file (an old one
and a new one): accepted wins over rejected, over still processing, over retry.
"""

from __future__ import annotations

import contextlib
import enum
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import orjson

from beiand.isms.wire.codes import FileResult

MAX_TRIES = 3
RETRY_AFTER = 600.0
KEEP_CLOSED_S = 7 * 86400  # closed (accepted / rejected) entries are kept this long, then pruned


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    RETRY = "retried"
    WAIT = "wait"


class Class(NamedTuple):
    verdict: Verdict
    rank: int  # for several answers to one file: the lowest wins
    why: str


_WHY = {FileResult.OK: "processed", FileResult.DECRYPT: "decrypt failed", FileResult.HASH: "hash failed",
        FileResult.UNZIP: "unzip failed", FileResult.FORMAT: "format error", FileResult.VERSION: "wrong version",
        FileResult.REPORT_TYPE: "wrong report type", FileResult.NODE_TOO_LONG: "node too long",
        FileResult.NODE_TYPE: "node of the wrong type", FileResult.NODE_CONTENT: "wrong node content",
        FileResult.NODE_MISSING: "node missing", FileResult.RETRY: "other: upload again",
        FileResult.PROCESSING: "still processing"}
FINAL = frozenset({FileResult.FORMAT, FileResult.VERSION, FileResult.REPORT_TYPE, FileResult.NODE_TOO_LONG,
                   FileResult.NODE_TYPE, FileResult.NODE_CONTENT, FileResult.NODE_MISSING})
RETRIED = frozenset({FileResult.DECRYPT, FileResult.HASH, FileResult.UNZIP, FileResult.RETRY})


def classify(code: int) -> Class:
    if code == FileResult.OK:
        return Class(Verdict.ACCEPTED, 0, _WHY[FileResult.OK])
    if code in FINAL:
        return Class(Verdict.REJECTED, 1, _WHY[FileResult(code)])
    if code == FileResult.PROCESSING:
        return Class(Verdict.WAIT, 2, _WHY[FileResult.PROCESSING])
    if code in RETRIED:
        return Class(Verdict.RETRY, 3, _WHY[FileResult(code)])
    return Class(Verdict.RETRY, 3, f"unknown code {code}")


def decide(code: int, tries: int, since_last_try: float) -> Verdict:
    """The verdict for a file tried ``tries`` times, the last ``since_last_try`` seconds ago."""
    c = classify(code)
    if c.verdict is not Verdict.RETRY:
        return c.verdict
    if tries >= MAX_TRIES:
        return Verdict.REJECTED
    return Verdict.RETRY if since_last_try >= RETRY_AFTER else Verdict.WAIT


@dataclass
class Entry:
    dt: str
    day: str
    tries: int = 0
    uploaded: float = 0.0
    state: str = "sent"  # sent, accepted, rejected
    closed: float = 0.0


class Tracker:
    """Uploaded files and their tries, in ``<spool>/verdicts.json`` (kept across restarts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, Entry] = {}
        with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
            self.entries = {k: Entry(**v) for k, v in orjson.loads(path.read_bytes()).items()}

    def uploaded(self, name: str, dt: str, day: str, now: float) -> None:
        e = self.entries.get(name)
        if e is None:
            e = self.entries[name] = Entry(dt, day)
        e.tries += 1
        e.uploaded = now
        e.state = "sent"

    def get(self, name: str) -> Entry | None:
        return self.entries.get(name)

    def open(self) -> bool:
        return any(e.state == "sent" for e in self.entries.values())

    def close(self, name: str, state: str, now: float) -> None:
        e = self.entries[name]
        e.state, e.closed = state, now

    def prune(self, now: float) -> None:
        """Closed entries after 7 days; files SMMS never answered, 7 days after their last try
        (else every round would keep asking for their answers)."""
        for k in [k for k, e in self.entries.items()
                  if now - (e.closed if e.state != "sent" else e.uploaded) > KEEP_CLOSED_S]:
            del self.entries[k]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({k: asdict(e) for k, e in self.entries.items()}))
        os.replace(tmp, self.path)
