"""`skd serve` (the web app: browse, query, compare, annotate) and `skd report` (a snapshot as one HTML file)."""

from __future__ import annotations

import secrets
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from store import SkdError, default_path

from .options import Db
from .output import out

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    db: Db = None,
    host: Annotated[str, typer.Option(help="Address to bind; any but loopback needs the printed token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    source: Annotated[str, typer.Option(help="Labels source that judgements typed here go to.")] = "annotation",
) -> None:
    """Browse, query, compare and annotate the corpus in a browser (a local web app)."""
    import uvicorn

    from .web.app import create_app

    check_free(host, port)  # uvicorn logs a failed bind itself and exits 3: say it the skd way, before the address
    public = host not in LOOPBACK
    token = secrets.token_urlsafe(24)
    app = create_app(db or default_path(), token, public=public, source=source)
    shown = f"[{host}]" if ":" in host else host
    if public:
        # printed once, to the terminal only: the request log is off, so it is written nowhere else
        print(f"skd serve: http://{shown}:{port}/?token={token}", file=sys.stderr, flush=True)
    else:
        print(f"skd serve: http://{shown}:{port}/", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
    except OSError as e:
        raise SkdError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def check_free(host: str, port: int) -> None:
    """One line when HOST:PORT cannot be bound (in use, or not an address of this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds (TIME_WAIT is free)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise SkdError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def report(
    snapshot: Annotated[str, typer.Argument(help="Snapshot name.")],
    out_file: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("report.html"),
    db: Db = None,
) -> None:
    """A snapshot as one self-contained HTML file: card, funnel, statistics, critic, evaluations."""
    from .web.report import write_report

    path = write_report(db or default_path(), snapshot, out_file)
    out.print(f"report of {snapshot}: {path} ({path.stat().st_size / 1024:,.0f} KiB)")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(report)
