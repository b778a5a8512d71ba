"""`skd critic train|score|eval|list`."""

from __future__ import annotations

import json
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from critics import CriticConfig, load_critic, report, train_critic
from critics.score import score_items
from critics.train import load_labels
from critics.verbalize import verbalize_rows
from generators.recipes import validate_config
from store import LABEL_FORMATS, Store, default_path, import_labels

from .options import Db, Json, Quiet
from .output import out, print_json, progress_bar, run_with_progress

app = typer.Typer(help="Critic models: train from labels, score the corpus, evaluate.", no_args_is_help=True)
Mode = Enum("Mode", {m.replace("-", "_"): m for m in ("finetune", "embedding", "llm-judge")}, type=str)
LabelFormat = Enum("LabelFormat", {f.replace("-", "_"): f for f in LABEL_FORMATS}, type=str)


def report_tables(name: str, rep: dict) -> list[Table]:
    head = Table(title=f"critic {name}: {rep['n']:,} labels, {rep['positive_rate']:.1%} acceptable",
                 title_justify="left")
    for col in ("threshold", "value", "precision", "recall", "F1", "kept"):
        head.add_column(col, justify="right")
    for t, m in rep["thresholds"].items():
        head.add_row(t, f"{m['threshold']:.3f}", f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}",
                     f"{m['kept']:.1%}")
    head.caption = (f"AUC {rep['auc']:.3f}, average precision {rep['average_precision']:.3f}"
                    if rep["auc"] is not None else "one class only: no AUC")
    kept = Table(title="keep the top-scored ... -> acceptable", title_justify="left")
    kept.add_column("kept", justify="right")
    kept.add_column("acceptable", justify="right")
    for r in rep["kept_vs_acceptable"]:
        kept.add_row(f"{r['kept']:.0%}", f"{r['acceptable']:.1%}")
    return [head, kept]


@app.command("train")
def train(
    name: Annotated[str, typer.Argument(help="Name of the new critic.")],
    labels_where: Annotated[str | None, typer.Option(help="SQL filter over the labels table.")] = None,
    base: Annotated[str, typer.Option(help="Base encoder (HF id, path, or the embedded MiniLM).")]
    = "all-minilm-l6-v2",
    mode: Annotated[Mode, typer.Option(help="finetune a classifier, fit a head on frozen embeddings, or llm-judge "
                                            "(ask a generative model yes/no; --base defaults to SmolLM2).")]
    = Mode.finetune,
    epochs: Annotated[float, typer.Option()] = 3.0,
    max_steps: Annotated[int, typer.Option(help="Stop after this many steps (-1: all epochs).")] = -1,
    batch_size: Annotated[int, typer.Option()] = 32,
    lr: Annotated[float, typer.Option()] = 5e-5,
    max_length: Annotated[int | None, typer.Option(
        help="Tokens per text (finetune); by default enough for 99% of the training texts.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    recall: Annotated[str, typer.Option(help="Thresholds for these dev recalls, comma separated.")] = "0.5,0.8",
    precision: Annotated[str, typer.Option(help="... and for these dev precisions.")] = "",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Artifact folder \\[default: DB.d/critics/NAME].")]
    = None,
    db: Db = None, json: Json = False,
) -> None:
    """Train a critic from the labels table; thresholds are chosen on a dev split by head/question."""
    cfg = validate_config(CriticConfig, {
        "mode": mode.value, "base": base, "labels_where": labels_where, "epochs": epochs, "max_steps": max_steps,
        "batch_size": batch_size, "lr": lr, "max_length": max_length, "seed": seed,
        "recalls": [float(x) for x in recall.split(",") if x], "precisions": [float(x) for x in precision.split(",")
                                                                               if x]}, "options")
    db_path = db or default_path()
    card = train_critic(db_path, name, cfg, out_dir or Path(str(db_path) + ".d") / "critics" / name)
    if json:
        print_json(card)
        return
    for t in report_tables(f"{name} (dev)", card["metrics"]["dev"]):
        out.print(t)


@app.command("score")
def score(
    name: Annotated[str, typer.Argument(help="Critic name.")],
    where: Annotated[str | None, typer.Option(help="SQL filter over items.")] = None,
    batch_size: Annotated[int, typer.Option()] = 128,
    chunk: Annotated[int, typer.Option(help="Items per staging batch (the unit of resume).")] = 2048,
    db: Db = None, json: Json = False, quiet: Quiet = False,
) -> None:
    """Score items (skipping those this critic already scored) into the scores table."""
    progress, update = progress_bar(f"score {name}", "items", quiet or json)
    stats = run_with_progress(progress, lambda: score_items(
        db or default_path(), name, where, chunk, batch_size, on_chunk=lambda st, n: update(st.scored, n)))
    if json:
        print_json(stats.as_dict())
    else:
        out.print(f"critic {name}: scored {stats.scored:,} items ({stats.already_scored:,} already scored) "
                  f"in {stats.seconds:.1f} s")


@app.command("eval")
def evaluate(
    name: Annotated[str, typer.Argument(help="Critic name.")],
    labels: Annotated[Path, typer.Option(help="Held-out label file.")],
    format: Annotated[LabelFormat, typer.Option("--format", "-f")],
    db: Db = None, json: Json = False,
) -> None:
    """AUC, AP, precision/recall/F1 at the stored thresholds, and 'fraction kept -> fraction acceptable'."""
    with Store(db, read_only=True) as s:
        row = s.critics.get(name)
    with tempfile.TemporaryDirectory() as d, Store(Path(d) / "eval.duckdb") as tmp:
        import_labels(tmp, labels, format.value)
        df = load_labels(tmp, None)
    scores = load_critic(row["path"]).score(verbalize_rows(df.to_dicts()))
    rep = report(scores, df["label"].to_numpy(), json_loads(row["thresholds"]))
    if json:
        print_json(rep)
        return
    for t in report_tables(name, rep):
        out.print(t)


@app.command("list")
def list_critics(db: Db = None, json: Json = False) -> None:
    """Trained critics with their dev metrics."""
    with Store(db, read_only=True) as s:
        critics = s.critics.all()
    rows = [{"name": r["name"], "mode": r["mode"], "base": r["base_model"],
             "dev_auc": (r["metrics"] or {})["dev"]["auc"], "path": r["path"]} for r in critics]
    if json:
        print_json(rows)
        return
    t = Table()
    for col in ("name", "mode", "base", "dev AUC", "path"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["mode"], r["base"], f"{r['dev_auc']:.3f}", r["path"])
    out.print(t)


def json_loads(value: str | dict) -> dict:
    return value if isinstance(value, dict) else json.loads(value)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="critic")


