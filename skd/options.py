"""Options shared by every command, one spelling each (kept free of pydantic, so `skd query` starts fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Db = Annotated[Path | None, typer.Option("--db", envvar="SKD_DB", show_default=False,
                                         help="Corpus database file \\[default: ./skd.duckdb].")]
Json = Annotated[bool, typer.Option("--json", envvar="SKD_JSON", show_envvar=False, help="Print the result as JSON.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", envvar="SKD_QUIET", show_envvar=False,
                                     help="No progress display.")]
EngineKind = Annotated[str, typer.Option("--engine", envvar="SKD_ENGINE", show_envvar=False,
                                         help="Where the batches run: local (this process) or ray (a Ray cluster).")]
RayAddress = Annotated[str | None, typer.Option("--ray-address", envvar="SKD_RAY_ADDRESS", show_envvar=False,
                                                help="Ray cluster to join (auto, ray://HOST:10001); none starts a "
                                                     "local one.")]
Actors = Annotated[int, typer.Option("--actors", help="Ray: actors in the pool (one model load each).")]
