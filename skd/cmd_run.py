"""`skd run PIPELINE.toml`: every stage in order, skipping what is done, then one summary."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.rule import Rule
from rich.table import Table

from corpus import snapshot_row
from generators.recipes import read_toml, validate_config
from store import Store
from train.evaluate import compare

from .cmd_snapshot import pass_rates, stats_tables
from .cmd_train import compare_table
from .options import Json, Quiet
from .output import cell, dict_table, err, out, print_json
from .pipeline import Pipeline
from .run import Runner


def load_pipeline(path: Path) -> Pipeline:
    return validate_config(Pipeline, read_toml(path), str(path))  # type: ignore[return-value]


def summary(p: Pipeline, runner: Runner) -> dict[str, Any]:
    """The funnel, the diversity statistics, the critic's metrics and the evaluation table."""
    made, done = runner.made, runner.summaries
    with Store(p.corpus.path, read_only=True) as s:
        snap = snapshot_row(s, made.snapshot)
        ids = runner.eval_ids()  # every round's
        evals = compare(s, ids) if ids else []
    return {"snapshot": snap["name"], "content_hash": snap["content_hash"], "funnel": snap["funnel"],
            "stats": snap["stats"], "critic": done.get("critic"), "evals": evals,
            "student": made.student_path, "export": done.get("export", {}).get("out"),
            "rounds": runner.round_rows() if p.loop.rounds > 1 else []}


def print_summary(sm: dict[str, Any]) -> None:
    out.print(Rule("summary"))
    funnel = {k: v for k, v in sm["funnel"].items() if isinstance(v, int)}
    funnel |= pass_rates(sm["funnel"])
    out.print(dict_table(f"funnel to snapshot {sm['snapshot']} ({sm['content_hash'][:12]})", funnel))
    for t in stats_tables(sm["stats"]):
        out.print(t)
    if sm["critic"]:
        c = sm["critic"]
        figure = lambda key: None if c.get(key) is None else round(c[key], 4)  # noqa: E731
        out.print(dict_table(f"critic {c['critic']}", {
            "labels": c.get("labels", "(reused)"), "dev AUC": figure("dev_auc"),
            "dev average precision": figure("dev_average_precision"),
            **{f"threshold {k}": round(v, 4) for k, v in (c.get("thresholds") or {}).items()}}))
    if sm["evals"]:
        out.print(compare_table(sm["evals"]))
    if sm["rounds"]:
        out.print(rounds_table(sm["rounds"]))
    for what in ("export", "student"):
        if sm[what]:
            out.print(f"{what}: {sm[what]}")


def rounds_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="self-imitation rounds (passed critic, after dedup, snapshot: the corpus so far)",
              title_justify="left")
    for col in rows[0]:
        t.add_column(col, justify="left" if col in ("generator", "snapshot") else "right")
    for r in rows:
        t.add_row(*[cell(v) for v in r.values()])
    return t


def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline config (TOML).")],
    only: Annotated[str | None, typer.Option(help="Run only this stage (again).")] = None,
    start: Annotated[str | None, typer.Option("--from", help="Rerun from this stage on.")] = None,
    json: Json = False, quiet: Quiet = False,
) -> None:
    """Run a pipeline: ingest, generate, critic, score, embed, dedup, snapshot, export, train, eval."""
    p = load_pipeline(pipeline)
    runner = Runner(p, (lambda m: None) if quiet or json else err.print, quiet=quiet or json)
    if runner.run(only, start).snapshot is None:
        return
    sm = summary(p, runner)
    if json:
        print_json(jsonlib.loads(jsonlib.dumps(sm, default=str)) | {"stages": list(runner.summaries)})
    else:
        print_summary(sm)


def register(app: typer.Typer) -> None:
    app.command()(run)
