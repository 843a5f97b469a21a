"""Readers of filing exports, one module per format, registered by file suffix.

A reader turns a file into rows ``(line or item number, unit, cells by field)``; the importer
(``records/importer.py``) parses and checks the rows the same way whatever their format. CSV also
splits a big file into byte spans for the parallel import. A new format is a module here with a
reader, and one line in ``READERS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from beiand.records.formats import csv, json, xlsx
from beiand.records.formats.base import ImportResult

Rows = Iterator[tuple[int, str, dict[str, str]]]
Reader = Callable[[Path, ImportResult], Rows]

# suffix → reader; anything else is read as CSV (the filing system's default export)
READERS: dict[str, Reader] = {
    ".json": json.rows, ".jsonl": json.rows, ".ndjson": json.rows,
    ".xlsx": xlsx.rows, ".xlsm": xlsx.rows,
    ".csv": csv.rows, ".txt": csv.rows,
}


def reader_for(path: Path) -> Reader:
    """The reader registered for the file's suffix (CSV when none is)."""
    return READERS.get(path.suffix.lower(), csv.rows)
