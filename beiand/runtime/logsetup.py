"""How the daemon's own log lines look (not the access log: that is ``beiand.accesslog``).

- ``journal``: under systemd, stderr goes to the journal, which stamps the time itself and reads
  a leading ``<N>`` as the syslog priority (sd-daemon(3)): so ``<6>beiand: message``, every
  line of a traceback carrying the prefix, no timestamp of our own.
- ``text``: elsewhere, ``2026-11-29 12:00:00,123 INFO beiand: message`` (as before).
- ``json``: one object a line for a log pipeline: ``ts``, ``time``, ``level``, ``logger``,
  ``process``, ``message``, ``exc`` and any structured fields passed as ``extra=``.
- ``auto`` (default): ``journal`` when ``JOURNAL_STREAM`` names the file stderr is (systemd
  sets it for units whose output goes to the journal; systemd.exec(5)), else ``text``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

FORMATS = ("auto", "text", "journal", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# syslog priorities (RFC 5424 §6.2.1) for Python's levels
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def syslog_priority(levelno: int) -> int:
    for threshold, prio in _PRIORITY:
        if levelno >= threshold:
            return prio
    return 7  # debug


class JournalFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "process": record.processName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        for k, v in vars(record).items():
            if k not in _STANDARD and k not in doc:
                doc[k] = v if isinstance(v, str | int | float | bool | type(None)) else repr(v)
        return json.dumps(doc, ensure_ascii=False)


def under_journal(stream: IO[str] | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` (stderr) is the journal stream systemd connected (``JOURNAL_STREAM=dev:ino``)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (value.isascii() and dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def resolve(fmt: str, stream: IO[str] | None = None, environ: Mapping[str, str] | None = None) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "auto":
        return "journal" if under_journal(stream, environ) else "text"
    return fmt


def configure(fmt: str = "auto", level: int | str = logging.INFO, stream: IO[str] | None = None,
              environ: Mapping[str, str] | None = None) -> str:
    """Set up the root logger's one handler on ``stream`` (stderr); returns the format chosen."""
    chosen = resolve(fmt, stream, environ)
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter = {"journal": JournalFormatter(), "json": JsonFormatter()}.get(chosen) or logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    return chosen
