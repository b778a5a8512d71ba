"""`skd report`: one self-contained HTML file of a snapshot (card, funnel, statistics with their charts inline,
critic metrics, evaluations) to share without a server: no script, no link to anything outside the file."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from store import Store, write_atomic

from . import charts, views
from .app import HERE


def render_report(db: Path, name: str) -> str:
    from corpus.card import dataset_card
    from corpus.export import snapshot_frame, store_critic, teachers

    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.globals |= {"charts": charts, "fmt": views.fmt, "content": views.content}
    env.filters["pretty"] = views.pretty
    with Store(db, read_only=True) as s:
        ctx = views.snapshot_context(s, name)
        card = dataset_card(ctx["row"], snapshot_frame(s, name), store_critic(s, ctx["row"]), teachers(s, ctx["row"]))
    css = (HERE / "static" / "app.css").read_text()  # skd's own file, inlined as it is
    assert "</" not in css
    return env.get_template("report.html").render(css=css, card=card, **ctx)


def write_report(db: Path, name: str, out: Path) -> Path:
    """Write the report atomically (a kill leaves the previous file or none, never half of one)."""
    return write_atomic(out, render_report(db, name))
