"""Whole-file readers on pyarrow (multithreaded C++) for JSONL and CSV, used where they give exactly the
records the line-level readers in `readers.py` would. Each returns an Arrow table with the file's fields
plus `SEQ` and `ROW` (the 1-based row number the line-level reader would report), or None when the file
needs the line-level reader: a bad line to report by number, or a shape pyarrow reads differently.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from .items import IGNORED_INPUT_FIELDS, TEXT_FIELDS

csv.field_size_limit(2**31 - 1)  # as the line-level reader reads: a long quoted field is one field

# Columns added to the table; named so that no input field clashes with them.
SEQ, ROW = "__skd_seq", "__skd_row_number"
BOM = b"\xef\xbb\xbf"
# Lists nested 16 deep at once: pyarrow's type inference takes minutes over thousands of them (objects cost
# it seconds, and the line-level reader rejects both). Unrolled, because `(?:\[\s*){16}` scans 50x slower.
DEEP_LISTS = re.compile(rb"\[\s*" * 15 + rb"\[")
# A \uD800-\uDFFF escape: paired ones are fine, unpaired ones cannot be stored; the line-level reader decides.
SURROGATE = re.compile(rb"\\u[dD][89abAB]", re.ASCII)
# What Python's str.strip() removes: the line-level CSV reader skips rows whose fields are all made of it.
PY_WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())


def read_jsonl(path: Path) -> pa.Table | None:
    """Every line a JSON object or blank, item fields text, `choices` a list of text, no `extra` object to
    merge, every other field present in every row with a plain value (pyarrow fills absent fields and
    nested keys with nulls, where the Python reader leaves them out)."""
    data = path.read_bytes()
    if not _utf8(data) or _deeply_nested(data) or SURROGATE.search(data):
        return None  # the line-level reader reports these lines by number
    try:
        table = pa_json.read_json(pa.BufferReader(data))
    except (pa.ArrowException, ValueError):
        return None
    rows = _jsonl_line_numbers(data, table.num_rows)
    if len(rows) != table.num_rows or not all(_json_column(table, c) for c in table.column_names):
        return None
    return _numbered(table, rows)


def _well_quoted(data: bytes) -> bool:
    """Every quote where CSV allows it: pyarrow reads an unclosed quote as one field to the end of the file and
    `"x"y` as xy, where the line-level reader rejects both; such files go to it. Python's csv parser is C: one
    pass, and only over files that quote at all."""
    if b'"' not in data:
        return True
    try:
        for _ in csv.reader(io.StringIO(data.decode("utf-8", "replace"), newline=""), strict=True):
            pass
    except csv.Error:
        return False
    return True


def read_csv(path: Path) -> pa.Table | None:
    """Every row with the header's number of fields, no blank line before the last row (pyarrow skips
    blank lines, the Python reader counts them), no NUL byte, distinct non-empty header names. Rows whose
    fields are all blank are dropped, as the Python reader drops them."""
    data = path.read_bytes()
    data = data[len(BOM):] if data.startswith(BOM) else data
    if b"\0" in data or data[:1] in (b"\r", b"\n") or _blank_line_before_end(data) or not _well_quoted(data):
        return None
    try:
        header = next(csv.reader(io.StringIO(data.split(b"\n", 1)[0].decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error, StopIteration):
        return None
    names = [h.strip() for h in header]
    if len(set(header)) < len(header) or len(set(names)) < len(names) or not all(names) \
            or any("\n" in h or "\r" in h for h in header) or SEQ in names or ROW in names:
        return None
    try:
        table = pa_csv.read_csv(
            pa.BufferReader(data), parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(column_types={h: pa.string() for h in header},
                                                  strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowException, ValueError):
        return None
    if table.column_names != header or "choices" in names or "extra" in names:
        return None
    table = _numbered(table.rename_columns(names), np.arange(1, table.num_rows + 1, dtype=np.int64))
    blank = _blank_rows(table, names)
    return table.filter(pc.invert(blank)) if blank is not None else table


def _blank_line_before_end(data: bytes) -> bool:
    end = len(data)
    while end and data[end - 1] in b"\r\n":  # blank lines at the very end shift no row number
        end -= 1
    return data.find(b"\n\n", 0, end) >= 0 or data.find(b"\n\r\n", 0, end) >= 0


def _blank_rows(table: pa.Table, names: list[str]) -> pa.Array | None:
    """Mask of the rows whose fields are all blank, or None when there is none (the first column
    rules most rows out, so the others are looked at only when it does not)."""
    blank = None
    for name in names:
        empty = pc.equal(pc.utf8_length(pc.utf8_trim(table[name], characters=PY_WHITESPACE)), 0)
        blank = empty if blank is None else pc.and_(blank, empty)
        if not pc.any(blank).as_py():
            return None
    return blank


def _numbered(table: pa.Table, rows: np.ndarray) -> pa.Table:
    table = table.append_column(SEQ, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    return table.append_column(ROW, pa.array(rows))


def _json_column(table: pa.Table, name: str) -> bool:
    t = table.schema.field(name).type
    if name in ("kind", *TEXT_FIELDS):
        return _text_type(t)
    if name == "choices":
        return pa.types.is_null(t) or (pa.types.is_list(t) and _text_type(t.value_type))
    if name in IGNORED_INPUT_FIELDS:
        return True
    return name not in ("extra", SEQ, ROW) and table.column(name).null_count == 0 and _plain_type(t)


def _text_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def _plain_type(t: pa.DataType) -> bool:
    """Types that DuckDB writes back as the same JSON (not structs, whose absent keys become nulls, nor
    timestamps, which pyarrow infers from strings)."""
    while pa.types.is_list(t):  # a loop: a list may nest thousands deep
        t = t.value_type
        if pa.types.is_null(t):
            return True
    return (pa.types.is_string(t) or pa.types.is_integer(t) or pa.types.is_floating(t)
            or pa.types.is_boolean(t))


def _utf8(data: bytes) -> bool:
    """pyarrow passes invalid UTF-8 through, and DuckDB's string functions then fail on it."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _deeply_nested(data: bytes) -> bool:
    return DEEP_LISTS.search(data) is not None


BLANK_LINE = re.compile(rb"(?:^|\n)[ \t\r]*(?:\n|$)")


def _jsonl_line_numbers(data: bytes, n_records: int) -> np.ndarray:
    """1-based numbers of the non-blank lines, which pyarrow parsed into `n_records` records."""
    n_lines = data.count(b"\n") + (not data.endswith(b"\n"))
    body = data[:-1] if data.endswith(b"\n") else data
    # as many lines as records and no blank line: one record a line, the common case, without splitting (two
    # records on one line and a blank line elsewhere also count the same: those go the long way and are refused)
    if n_lines == n_records and not BLANK_LINE.search(body):
        return np.arange(1, n_records + 1, dtype=np.int64)
    lines = data.split(b"\n")
    return np.array([n for n, line in enumerate(lines, start=1) if line.strip(b" \t\r")], dtype=np.int64)
