"""Line-level readers that never raise on a bad row: each yields (row_number, record, error, raw).

`record` is a dict when the row parsed, else None and `error` says why. Row numbers are 1-based
line numbers (CSV: the data row number, header excluded) so a user can find the row in an editor.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import SkdError

# no limit on a field's length: past the default (128 KiB) the rest of a long quoted field was read again as rows
csv.field_size_limit(2**31 - 1)

Row = tuple[int, dict[str, Any] | None, str | None, str]
RAW_MAX = 500  # keep reject reports small


def open_binary(path: Path) -> io.BufferedReader:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise SkdError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise SkdError(f"{path} is a directory, not a file") from None
    except OSError as e:
        raise SkdError(f"cannot read {path}: {e.strerror}") from None


def _decode(line: bytes) -> tuple[str | None, str | None]:
    try:
        return line.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 at byte {e.start}"


def _encodable(rec: dict[str, Any]) -> bool:
    """False when a string holds a lone surrogate (from a `\\ud800` escape): it cannot be stored as UTF-8."""
    try:
        json.dumps(rec, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    except RecursionError:
        return True  # nested too deeply to check here; the row is rejected for its nesting later
    return True


def iter_jsonl(path: Path) -> Iterator[Row]:
    with open_binary(path) as f:
        for n, line in enumerate(f, start=1):
            if n == 1 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM (Windows editors): not part of the row
                line = line[3:]
            text, err = _decode(line)
            raw = (text if text is not None else repr(line))[:RAW_MAX].rstrip("\n")
            if err:
                yield n, None, err, raw
                continue
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                yield n, None, f"invalid JSON: {e.msg} at column {e.colno}", raw
                continue
            except RecursionError:
                yield n, None, "invalid JSON: nested too deeply", raw
                continue
            if not isinstance(rec, dict):
                yield n, None, f"expected a JSON object, got {type(rec).__name__}", raw
                continue
            if "\\u" in text and not _encodable(rec):
                yield n, None, "invalid JSON string: an unpaired surrogate escape (\\ud800-\\udfff)", raw
                continue
            yield n, rec, None, raw


def iter_csv(path: Path) -> Iterator[Row]:
    with open_binary(path) as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SkdError(f"{path} is not valid UTF-8 (byte {e.start})") from None
    lines = io.StringIO(text, newline="")
    # strict: an unclosed quote is an error, not a field that swallows every row after it
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise SkdError(f"{path}: cannot read the CSV header: {e}") from None
    header = [h.strip() for h in header]
    twice = next((h for h in header if header.count(h) > 1), None)
    if twice is not None:  # one of the two columns would be lost without a word
        raise SkdError(f"{path}: the header names column {twice!r} twice")
    n = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            n += 1
            yield n, None, f"malformed CSV: {e}", ""
            continue
        n += 1
        raw = ",".join(values)[:RAW_MAX]
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            yield n, None, f"expected {len(header)} fields, found {len(values)}", raw
            continue
        nul = next((h for h, v in zip(header, values, strict=True) if "\0" in v), None)
        if nul is not None:  # a NUL is a sign of a binary or corrupted file: reported, never silently dropped
            yield n, None, f"field {nul} holds a NUL byte", raw.replace("\0", "\\0")
            continue
        yield n, dict(zip(header, values, strict=True)), None, raw


def iter_atomic2020(path: Path) -> Iterator[Row]:
    """ATOMIC-2020 `head @@ relation<TAB>tail1| tail2| ...`: one record per (head, relation) line."""
    with open_binary(path) as f:
        for n, line in enumerate(f, start=1):
            text, err = _decode(line)
            raw = (text if text is not None else repr(line))[:RAW_MAX].rstrip("\r\n")
            if err:
                yield n, None, err, raw
                continue
            if not text.strip():
                continue
            left, tab, right = text.rstrip("\r\n").partition("\t")
            head, at, relation = left.partition("@@")
            if not at or not tab:
                yield n, None, "expected `head @@ relation<TAB>tail| tail ...`", raw
                continue
            tails = [t.strip() for t in right.split("|")]
            yield n, {"head": head.strip(), "relation": relation.strip(), "tails": tails}, None, raw
