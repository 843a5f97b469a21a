"""JSON and JSON-lines exports: list items parsed one by one from a chunked buffer, bounded in size and depth."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from beiand.records.formats.base import (
    _TOO_LONG,
    MAX_CELL,
    MAX_ITEM,
    MAX_JSON_DEPTH,
    MAX_JSON_WHOLE,
    ImportRefused,
    ImportResult,
    _map_header,
    detect_encoding,
)
from beiand.records.formats.csv import _bounded_lines


def rows(path: Path, result: ImportResult) -> Iterator[tuple[int, str, dict[str, str]]]:
    """Items of a JSON list or lines of JSON lines, streamed: one item is held at a time, an item
    over MAX_ITEM characters or nested deeper than MAX_JSON_DEPTH is refused without being read
    whole (issue 17)."""
    enc, _ = detect_encoding(path)
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    if not jsonl:
        with path.open("r", encoding=enc, errors="replace") as f:
            head = f.read(4096).lstrip("\ufeff \t\r\n")
        if head.startswith("["):
            yield from _json_list_items(path, enc)
            return
        if head.startswith("{") and path.stat().st_size <= MAX_JSON_WHOLE:
            text = path.read_text(enc, errors="replace")
            depth = _json_depth(text)
            if depth > MAX_JSON_DEPTH:
                raise ImportRefused(f"{path}:1: json: nested {depth} levels deep, at most {MAX_JSON_DEPTH}: "
                                    "not a filing export")
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                if exc.msg != "Extra data":
                    raise ImportRefused(f"{path}:{exc.lineno}: json: {exc.msg} (column {exc.colno})") from None
                data = None
                jsonl = True  # objects one after the other: JSON lines
            del text
            if not jsonl:
                if isinstance(data, dict):
                    data = data.get("filings", data.get("records", data.get("data")))
                if not isinstance(data, list):
                    raise ImportRefused(f"{path}:1: json: expected a list of filings or {{\"filings\": [...]}}")
                for i, item in enumerate(data, 1):
                    yield i, "item", _json_cells(item)
                return
        elif not head.startswith("{"):
            msg = "empty file" if not head else f"expected a list of filings or {{\"filings\": [...]}}, got {head[:20]!r}"
            raise ImportRefused(f"{path}:1: json: {msg}")
        # else: one big object per line (JSON lines named .json), or a big {"filings": ...}: read as lines
    with path.open("r", encoding=enc, errors="replace") as f:
        for i, line in enumerate(_bounded_lines(f), 1):
            if line is _TOO_LONG:
                yield i, "", {"__error__": f"line longer than {MAX_ITEM} characters: refused unread (a cell is at most "
                                           f"{MAX_CELL} bytes)"}
                continue
            if not line.strip():
                continue
            yield i, "", _json_text_cells(line)


def _json_text_cells(text: str) -> dict[str, str]:
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        return {"__error__": f"nested {depth} levels deep, at most {MAX_JSON_DEPTH}"}
    try:
        item = json.loads(text)
    except json.JSONDecodeError as exc:
        return {"__error__": f"invalid JSON: {exc.msg} (column {exc.colno})"}
    except RecursionError:  # cannot happen below MAX_JSON_DEPTH; kept so no input ends in a traceback
        return {"__error__": f"nested more than {MAX_JSON_DEPTH} levels deep"}
    return _json_cells(item)


_JSON_DEPTH_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def _json_depth(text: str) -> int:
    """The deepest nesting of brackets outside strings (a cheap scan before json.loads recurses)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return 0
    depth = top = 0
    for m in _JSON_DEPTH_TOKENS.finditer(text):
        c = m.group()[0]
        if c == "[" or c == "{":
            depth += 1
            if depth > top:
                top = depth
                if top > 4 * MAX_JSON_DEPTH:
                    return top  # enough to refuse
        elif c == "]" or c == "}":
            depth -= 1
    return top


_CHUNK = 1 << 20


_WS = " \t\r\n"


_SKIP_OUT = re.compile(r'[\[\]{}"]')


_SKIP_IN = re.compile(r'["\\]')


_VALUE_END = re.compile(r"[,\]\s]")


class _Buffered:
    """A text file read in chunks, with a cursor; consumed text is let go, its lines counted."""

    def __init__(self, f: TextIO) -> None:
        self.f = f
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.lines = 1  # line number at buf[0]

    def more(self) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(_CHUNK)
        if not chunk:
            self.eof = True
            return False
        if self.pos > _CHUNK:
            self.lines += self.buf.count("\n", 0, self.pos)
            self.buf = self.buf[self.pos :]
            self.pos = 0
        self.buf += chunk
        return True

    def line(self) -> int:
        return self.lines + self.buf.count("\n", 0, self.pos)

    def skip_ws(self) -> str:
        """The next character that is not white space ("" at the end of the file)."""
        while True:
            buf, pos, n = self.buf, self.pos, len(self.buf)
            while pos < n and buf[pos] in _WS:
                pos += 1
            self.pos = pos
            if pos < n:
                return buf[pos]
            if not self.more():
                return ""

    def skip_value(self) -> bool:
        """Step over one JSON value of any size or depth without keeping it (a scan of brackets
        and strings, chunk by chunk); False if the file ends inside it."""
        depth = 0
        in_str = esc = False
        while True:
            buf, pos, n = self.buf, self.pos, len(self.buf)
            while pos < n:
                if in_str:
                    if esc:
                        esc = False
                        pos += 1
                        continue
                    m = _SKIP_IN.search(buf, pos)
                    if m is None:
                        pos = n
                        break
                    pos = m.end()
                    if m.group() == "\\":
                        esc = True
                    else:
                        in_str = False
                        if depth == 0:
                            self.pos = pos
                            return True
                    continue
                if depth == 0 and buf[pos] not in '[{"':  # a number or literal: up to the next , ] or space
                    m = _VALUE_END.search(buf, pos)
                    if m is None:
                        pos = n
                        break
                    self.pos = m.start()
                    return True
                m = _SKIP_OUT.search(buf, pos)
                if m is None:
                    pos = n
                    break
                c = m.group()
                pos = m.end()
                if c == '"':
                    in_str = True
                elif c in "[{":
                    depth += 1
                else:
                    depth -= 1
                    if depth <= 0:
                        self.pos = pos
                        return True
            self.pos = pos
            if not self.more():
                return False


def _json_list_items(path: Path, enc: str) -> Iterator[tuple[int, str, dict[str, str]]]:
    """The items of a top-level JSON list, each parsed on its own (``raw_decode``) from a buffer
    read in 1 MiB chunks: an item over MAX_ITEM characters, or one nested too deep for the parser,
    is stepped over unread and reported; a syntax error refuses the file, as a whole parse would."""
    dec = json.JSONDecoder()
    with path.open("r", encoding=enc, errors="replace") as f:
        r = _Buffered(f)
        if r.skip_ws() == "\ufeff":
            r.pos += 1
        if r.skip_ws() != "[":
            raise ImportRefused(f"{path}:{r.line()}: json: expected a list of filings")
        r.pos += 1
        n = 0
        while True:
            c = r.skip_ws()
            if c == "":
                raise ImportRefused(f"{path}:{r.line()}: json: the file ends inside the list (truncated?)")
            if c == "]":
                return
            if n:
                if c != ",":
                    raise ImportRefused(f"{path}:{r.line()}: json: expected ',' or ']' between items, got {c!r}")
                r.pos += 1
                if r.skip_ws() == "":
                    raise ImportRefused(f"{path}:{r.line()}: json: the file ends inside the list (truncated?)")
            n += 1
            consumed = False
            while True:  # r.pos is the item's start until it is parsed (more() may move the buffer)
                try:
                    item, end = dec.raw_decode(r.buf, r.pos)
                except json.JSONDecodeError as exc:
                    if len(r.buf) - r.pos > MAX_ITEM:
                        reason = f"item longer than {MAX_ITEM} characters: refused unread (a cell is at most {MAX_CELL} bytes)"
                        break
                    cut = exc.pos >= len(r.buf) - 16 or exc.msg.startswith("Unterminated string")
                    if cut and r.more():
                        continue  # the item goes on in the next chunk
                    line = r.lines + r.buf.count("\n", 0, exc.pos)
                    raise ImportRefused(f"{path}:{line}: json: {exc.msg} (item {n})") from None
                except RecursionError:
                    reason = f"nested more than {MAX_JSON_DEPTH} levels deep"
                    break
                if end == len(r.buf) and not isinstance(item, dict | list | str) and r.more():
                    continue  # a number cut by the chunk: read on
                size = end - r.pos
                r.pos = end
                consumed = True
                reason = "" if size <= MAX_ITEM else \
                    f"item longer than {MAX_ITEM} characters: refused (a cell is at most {MAX_CELL} bytes)"
                break
            if reason:
                if not consumed and not r.skip_value():
                    raise ImportRefused(f"{path}:{r.line()}: json: the file ends inside item {n} (truncated?)")
                yield n, "item", {"__error__": reason}
                continue
            yield n, "item", _json_cells(item)


def _json_cells(item: object) -> dict[str, str]:
    if not isinstance(item, dict):
        return {"__error__": f"expected an object, got {type(item).__name__}"}
    cols = _map_header(item.keys())
    out: dict[str, str] = {}
    for c, v in zip(cols, item.values(), strict=True):
        if c is None:
            continue
        if isinstance(v, list):
            if any(isinstance(x, list | dict) for x in v):
                return {"__error__": f"{c}: nested lists or objects in a cell: expected a string or a list of strings"}
            v = ";".join(str(x) for x in v)
        elif isinstance(v, dict):
            return {"__error__": f"{c}: an object in a cell: expected a string or a list of strings"}
        out[c] = "" if v is None else str(v)
    return out
