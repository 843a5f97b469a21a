"""XLSX exports (openpyxl, read-only mode)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

from beiand.records.formats.base import FILINGS, ImportRefused, ImportResult, Table, _map_header


def rows(path: Path, result: ImportResult, *, table: Table = FILINGS) -> Iterator[tuple[int, str, dict[str, str]]]:
    """Rows of the first sheet; ``table``: the header spellings (a filing export's by default)."""
    import zipfile

    import openpyxl

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, OSError, KeyError, ValueError) as exc:
        raise ImportRefused(f"{path}: not a readable XLSX workbook: {exc}") from None
    try:
        ws = wb.worksheets[0]
        it = ws.iter_rows(values_only=True)
        header = next(it, None)
        if header is None:
            return
        cols = _map_header(header, table.headers)
        if not any(f in cols for f in table.any_of):
            raise ImportRefused(f"{path}:row 1: header: {table.missing}")
        for i, row in enumerate(it, 2):
            if all(v is None or str(v).strip() == "" for v in row):
                continue
            cells: dict[str, str] = {}
            for c, v in zip(cols, row, strict=False):
                if c is None:
                    continue
                if isinstance(v, dt.datetime | dt.date):
                    v = v.strftime("%Y-%m-%d")
                cells[c] = "" if v is None else str(v)
            yield i, "row", cells
    finally:
        wb.close()
