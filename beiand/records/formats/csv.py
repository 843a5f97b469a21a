"""CSV exports (UTF-8 with or without BOM, or GB18030), read in byte spans for the parallel import."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from beiand.records.formats.base import (
    _TOO_LONG,
    FILINGS,
    MAX_CELL,
    MAX_ITEM,
    ImportIssue,
    ImportRefused,
    ImportResult,
    Table,
    _map_header,
    detect_encoding,
)


def rows(path: Path, result: ImportResult, span: tuple[int, int, int] | None = None, *, table: Table = FILINGS
              ) -> Iterator[tuple[int, str, dict[str, str]]]:
    """Rows of a CSV export; ``span`` = (start byte, end byte, line number at start) of a chunk;
    ``table``: the header spellings (a filing export's by default)."""
    enc, truncated = detect_encoding(path) if span is None else (result.encoding, False)
    result.encoding = enc
    if truncated:
        result.warnings.append(ImportIssue(str(path), 0, "file", "ends inside a character: truncated? the last row is checked as is"))
    with path.open("r", encoding=enc, errors="replace", newline="") as f:
        reader = csv.reader(_bounded_lines(f))
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportRefused(f"{path}:1: header: {exc}") from None
        cols = _map_header(header, table.headers)
        if not any(f in cols for f in table.any_of):
            raise ImportRefused(f"{path}:1: header: {table.missing}; got {header!r}")
        if span is not None:
            with path.open("rb") as fb:
                fb.seek(span[0])
                text = fb.read(span[1] - span[0]).decode(enc, errors="replace")
            reader = csv.reader(_bounded_lines(io.StringIO(text, newline="")))
            base = span[2] - 1
        else:
            base = 0
        width = len(header)
        all_mapped = None not in cols
        names = [c or "" for c in cols]
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield base + start, "", {"__error__": str(exc)}
                start = reader.line_num + 1
                continue
            line = base + start
            start = reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if _TOO_LONG in row[0]:
                yield line, "", {"__error__": f"line longer than {MAX_ITEM} characters: refused unread (a cell is at most "
                                              f"{MAX_CELL} bytes)"}
                continue
            if len(row) != width:
                yield line, "", {"__error__": f"row has {len(row)} fields, the header has {width} (truncated or unquoted separator?)"}
                continue
            yield line, "", (dict(zip(names, row, strict=True)) if all_mapped
                             else {c: v for c, v in zip(cols, row, strict=True) if c is not None})


def split(path: Path, parts: int) -> list[tuple[int, int, int]]:
    """Byte ranges of whole rows, for parsing a big CSV on several cores.

    A newline ends a row only outside quotes, i.e. where the number of ``"`` before it is
    even; neither byte can be part of a multi-byte character in UTF-8 or GB18030.
    """
    data = path.read_bytes()
    first = data.find(b"\n") + 1  # after the header (a header with quoted newlines: no split)
    if first <= 0 or data.count(b'"', 0, first) % 2:
        return []
    size = len(data)
    cuts = [first]
    # The first range is parsed by the parent, which also merges the others: give it less.
    shares = [0.8] + [1.0] * (parts - 1)
    total = sum(shares)
    for k in range(1, parts):
        pos = max(cuts[-1], first + int((size - first) * sum(shares[:k]) / total))
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            if data.count(b'"', 0, nl) % 2 == 0:
                cuts.append(nl + 1)
                break
            pos = nl + 1
    cuts.append(size)
    out = []
    for a, b in itertools.pairwise(cuts):
        if b > a:
            out.append((a, b, data.count(b"\n", 0, a) + 1))
    return out


def _bounded_lines(f: TextIO) -> Iterator[str]:
    """Lines of a text file, each at most MAX_ITEM characters: a longer one is skipped unread (the
    rest of it in bounded reads) and stands as the ``_TOO_LONG`` marker."""
    while True:
        line = f.readline(MAX_ITEM + 1)
        if not line:
            return
        if len(line) > MAX_ITEM and not line.endswith("\n"):
            while line and not line.endswith("\n"):
                line = f.readline(1 << 20)
            yield _TOO_LONG
            continue
        yield line
