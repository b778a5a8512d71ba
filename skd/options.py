"""Options shared by every command, one spelling each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Db = Annotated[Path | None, typer.Option("--db", envvar="SKD_DB", show_default=False,
                                         help="Corpus database file \\[default: ./skd.duckdb].")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
