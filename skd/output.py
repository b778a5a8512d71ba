"""How results reach the terminal: rich tables for people, JSON for programs, one-line errors."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console(soft_wrap=True)
err = Console(stderr=True)
TABLE_ROWS = 1000  # more than this is a job for --format csv/jsonl/parquet


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")


def status(message: str, quiet: bool):
    """A spinner on stderr for work of unknown length (nothing with --quiet)."""
    return nullcontext() if quiet else err.status(message)


def cell(v: Any) -> str:
    """A number, a paired difference with its interval, or a missing value, for a table."""
    if isinstance(v, dict) and "diff" in v:  # a paired difference
        return f"{v['diff']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]"
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def dict_table(title: str, data: dict[str, Any], key: str = "", value: str = "") -> Table:
    """Keys and values are data (relations, teachers, paths): printed as they are, never read as rich markup
    (a relation "[/x]" raised a MarkupError after the work was done)."""
    t = Table(title=escape(title), title_justify="left", show_header=bool(key or value))
    t.add_column(key)
    t.add_column(value, justify="right", overflow="fold")
    for k, v in data.items():
        t.add_row(escape(str(k)), f"{v:,}" if isinstance(v, int) else escape(str(v)))
    return t


def rows_table(columns: list[str], types: list[str], rows: list[tuple], limit: int = TABLE_ROWS) -> Table:
    """A query result for people: numbers right-aligned, NULL as ∅, at most `limit` rows."""
    numeric = ("INT", "DOUBLE", "FLOAT", "DECIMAL", "REAL", "HUGEINT", "BIGINT", "SMALLINT", "TINYINT", "UBIGINT")
    t = Table(show_lines=False)
    for name, dtype in zip(columns, types, strict=True):
        right = dtype.upper().startswith(numeric) and not dtype.endswith("[]")
        t.add_column(escape(name), justify="right" if right else "left", overflow="fold")
    for row in rows[:limit]:
        t.add_row(*["∅" if v is None else escape(str(v)) for v in row])
    if len(rows) > limit:
        t.caption = f"{len(rows) - limit:,} more rows; use --format csv|jsonl|parquet --out FILE"
    return t


def progress_bar(label: str, unit: str, quiet: bool, note: str = ""):
    """A rich progress bar on stderr and its update(completed, total, **fields); (None, no-op) with --quiet.
    `note` is a format string over the fields, shown after the bar (e.g. "loss {task.fields[loss]}")."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        return None, lambda completed, total, **fields: None
    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               TimeElapsedColumn()] + ([TextColumn(note)] if note else [])
    progress = Progress(*columns, console=err)
    task = progress.add_task(label, total=None, loss="-")
    return progress, lambda completed, total, **fields: progress.update(task, total=total, completed=completed,
                                                                         **fields)


def run_with_progress(progress, fn):
    """Run fn() inside the progress display when there is one."""
    if progress is None:
        return fn()
    with progress:
        return fn()
