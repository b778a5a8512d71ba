"""`skd critic train|crossval|ensemble|score|eval|list`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from critics import build_ensemble, train_critic
from critics.config import CriticConfig
from critics.crossval import cross_validate
from critics.metrics import evaluate_on_file
from critics.score import ScoreSummary, score_items
from critics.stack import contrary_signals
from store import LABEL_FORMATS, Store, default_path
from store.models import MPNET

from .config_options import FLOATS, PAIRS, config_options
from .engines import engine_from, mapper_for
from .options import Actors, Db, EngineKind, Json, Quiet, RayAddress
from .output import cell, err, out, print_json, progress_bar, run_with_progress

app = typer.Typer(help="Critic models: train from labels, score the corpus, evaluate.", no_args_is_help=True)
LabelFormat = Enum("LabelFormat", {f.replace("-", "_"): f for f in LABEL_FORMATS}, type=str)
Combine = Enum("Combine", {"mean": "mean", "stack": "stack"}, type=str)


def critic_options(command: str):
    """The critic config's options (CriticConfig), the same for every command that trains critics."""
    return config_options(CriticConfig, f"critic {command}", text={"recalls": FLOATS, "precisions": FLOATS,
                                                                    "source_weights": PAIRS},
                          flags={"recalls": "--recall", "precisions": "--precision", "sources": "--source",
                                 "dev_sources": "--dev-source"})


def coverage_warnings(stats: ScoreSummary) -> list[str]:
    lines = [f"warning: critic {stats.critic} was trained on no labels of {what}; {n:,} such items scored anyway "
             "(their scores are guesses)" for what, n in sorted(stats.uncovered.items(), key=lambda kv: -kv[1])]
    if stats.without_teacher_nll:
        lines.append(f"warning: critic {stats.critic} reads the teacher's NLL, which {stats.without_teacher_nll:,} "
                     "items lack (imported, or generated without `logprobs = true`); its members alone scored them")
    if stats.without_siblings:
        lines.append(f"warning: critic {stats.critic} reads sibling agreement, and {stats.without_siblings:,} items "
                     "have no sibling (no other sample for their prompt); scored without it")
    return lines


def annotator_caption(r: dict | None) -> str:
    """critics.annotators.beside_annotators in one line, for a report's caption ('' without votes)."""
    if not r:
        return ""
    return (f"; on the {r['items']:,} labels with votes, against one annotator's vote: critic AUC "
            f"{cell(r['critic_vs_one'])}, the other annotators {cell(r['annotators_vs_one'])}; ceiling on the "
            f"majority AUC {cell(r['ceiling_auc'])}, AP {cell(r['ceiling_ap'])}")


def selection_caption(r: dict | None) -> str:
    """critics.metrics.selection in one line, for a report's caption ('' where no prompt has two outputs)."""
    if not r:
        return ""
    return (f"; best of {r['outputs_per_prompt']:.1f} (the top-scored output of each of {r['prompts']:,} prompts): "
            f"{r['top']:.1%} acceptable, at random {r['random']:.1%}, at best {r['oracle']:.1%}")


def report_tables(name: str, rep: dict) -> list[Table]:
    head = Table(title=f"critic {name}: {rep['n']:,} labels, {rep['positive_rate']:.1%} acceptable",
                 title_justify="left")
    for col in ("threshold", "value", "precision", "recall", "F1", "kept"):
        head.add_column(col, justify="right")
    for t, m in rep["thresholds"].items():
        head.add_row(t, f"{m['threshold']:.3f}", f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}",
                     f"{m['kept']:.1%}")
    head.caption = (f"AUC {rep['auc']:.3f}, average precision {rep['average_precision']:.3f}, calibration error "
                    f"{rep.get('calibration_error', float('nan')):.3f}"
                    + annotator_caption(rep.get("annotators")) + selection_caption(rep.get("selection"))
                    if rep["auc"] is not None else "one class only: no AUC")
    kept = Table(title="keep the top-scored ... -> acceptable", title_justify="left")
    kept.add_column("kept", justify="right")
    kept.add_column("acceptable", justify="right")
    for r in rep["kept_vs_acceptable"]:
        kept.add_row(f"{r['kept']:.0%}", f"{r['acceptable']:.1%}")
    return [head, kept]


@app.command("train")
@critic_options("train")
def train(
    cfg: CriticConfig,
    name: Annotated[str, typer.Argument(help="Name of the new critic.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Artifact folder \\[default: DB.d/critics/NAME].")]
    = None,
    db: Db = None, json: Json = False, quiet: Quiet = False,
) -> None:
    """Train a critic from the labels table; thresholds are chosen on a dev split by head/question."""
    db_path = db or default_path()
    progress, update = progress_bar(f"train {name}", "steps", quiet or json or cfg.mode != "finetune")
    card = run_with_progress(progress, lambda: train_critic(
        db_path, name, cfg, out_dir or Path(str(db_path) + ".d") / "critics" / name, on_step=update))
    if json:
        print_json(card)
        return
    for t in report_tables(f"{name} (dev)", card["metrics"]["dev"]):
        out.print(t)


@app.command("crossval")
@critic_options("crossval")
def crossval(
    cfg: CriticConfig,
    eval_source: Annotated[str, typer.Option(
        "--eval-source", help="The label source scored out of fold (your expert labels): folds over its labels, "
                              "grouped by head (question); each fold's critic trains on every other label except "
                              "those of its held-out heads.")],
    folds: Annotated[int, typer.Option(min=2, help="Number of folds.")] = 5,
    by: Annotated[str | None, typer.Option(help="Also report per value of this field of the labels (CKBP's class); "
                                                "'' for none.")] = "class",
    keep: Annotated[Path | None, typer.Option(help="Keep each fold's scores here as it finishes; run again with "
                                                   "the same folder to resume from the folds kept.")] = None,
    fold_seed: Annotated[int, typer.Option(help="Seed of the folds (not the critic's), so critics that differ in "
                                                "their own seed are scored on the same folds.")] = 0,
    db: Db = None, json: Json = False, quiet: Quiet = False,
) -> None:
    """Measure a critic config by grouped k-fold cross-validation over one label source: out-of-fold AUC, AP and
    calibration error, overall and per class. Trains a critic per fold and keeps none."""
    progress, update = progress_bar(f"crossval {eval_source}", "folds", quiet or json, "{task.fields[last]}")
    update(0, folds, last="")
    res = run_with_progress(progress, lambda: cross_validate(
        db or default_path(), cfg, eval_source, folds, by or None, keep=keep, fold_seed=fold_seed,
        on_fold=lambda k, seconds, kept: update(
            k + 1, folds, last=f"fold {k}: {seconds:.0f} s" + (" (kept)" if kept else ""))))
    if json:
        print_json({k: v for k, v in res.items() if k not in ("scores", "labels", "fold", "groups")})
        return
    out.print(crossval_table(eval_source, res))


def crossval_table(eval_source: str, res: dict) -> Table:
    """Out-of-fold figures, overall and per class, with what each fold trained on and the time it all took."""
    t = Table(title=f"{eval_source}: {res['folds']} folds by head or question, {res['n']:,} labels, "
                    f"{res['train_labels_per_fold']:,.0f} to train on per fold", title_justify="left")
    for col in ("labels", "n", "acceptable", "AUC", "AP", "calib. err."):
        t.add_column(col, justify="right")
    for name, m in [("all", res["overall"]), *(res.get("by") or {}).items()]:
        t.add_row(name, f"{m['n']:,}", f"{m['positive_rate']:.1%}",
                  *(cell(m[k]) for k in ("auc", "average_precision", "calibration_error")))
    t.caption = (f"{res['seconds'] / 60:.1f} min of training and scoring ({res['seconds_per_fold']:.0f} s a fold)"
                 + annotator_caption(res.get("annotators")) + selection_caption(res.get("selection")))
    return t


@app.command("ensemble")
def ensemble(
    name: Annotated[str, typer.Argument(help="Name of the new critic.")],
    members: Annotated[list[str], typer.Argument(help="Two or more trained critics to combine.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Artifact folder \\[default: DB.d/critics/NAME].")]
    = None,
    combine: Annotated[Combine, typer.Option(help="mean: of the calibrated scores; stack: a logistic regression "
                                             "over the members' logits, fitted on dev.")] = Combine.mean,
    teacher_nll: Annotated[bool, typer.Option("--teacher-nll", help="Stack with the teacher's own NLL of each item "
                                              "too (one member will do); items without it get the members alone.")]
    = False,
    agreement: Annotated[bool, typer.Option(
        "--agreement",
        help="Stack with each item's agreement with its siblings (the teacher's other samples for its question, or "
             "its head and relation): the highest cosine under --encoder (one member will do); items without "
             "siblings are scored without it.")] = False,
    support: Annotated[str | None, typer.Option(
        "--support", metavar="SOURCE",
        help="Stack with each item's support in the human-written positives of this label source (e.g. ATOMIC-2020 "
             "imported as atomic2020): the highest cosine between its tail and one written for its relation, under "
             "--encoder (one member will do).")] = None,
    encoder: Annotated[str, typer.Option(help="Sentence encoder of --agreement and --support.")] = MPNET,
    db: Db = None, json: Json = False,
) -> None:
    """Combine trained critics into one, calibrated and given thresholds on the dev split they share (they must
    have been trained with the same seed, dev fraction and dev sources)."""
    db_path = db or default_path()
    card = build_ensemble(db_path, name, members, out_dir or Path(str(db_path) + ".d") / "critics" / name,
                          combine.value, teacher_nll, agreement, support, encoder)
    for signal, weight in contrary_signals(card["stack"]).items():
        err.print(f"warning: {signal} takes a weight of {weight:+.2f} on these dev labels, against the way it is "
                  f"meant; fit the stack on labels it informs (the members' --dev-source) or leave {signal} out")
    if json:
        print_json(card)
        return
    aucs = ", ".join(f"{k} {v:.3f}" for k, v in card["metrics"]["members_dev_auc"].items())
    out.print(f"critic {name} ({card['config']['combine']}): dev AUC {card['metrics']['dev']['auc']:.3f} "
              f"(members: {aucs})")
    for t in report_tables(f"{name} (dev)", card["metrics"]["dev"]):
        out.print(t)


@app.command("score")
def score(
    name: Annotated[str, typer.Argument(help="Critic name.")],
    where: Annotated[str | None, typer.Option(help="SQL filter over items.")] = None,
    batch_size: Annotated[int, typer.Option()] = 128,
    chunk: Annotated[int, typer.Option(help="Items per staging batch (the unit of resume).")] = 2048,
    engine: EngineKind = "local", ray_address: RayAddress = None, actors: Actors = 2,
    db: Db = None, json: Json = False, quiet: Quiet = False,
) -> None:
    """Score items (skipping those this critic already scored) into the scores table."""
    mapper = mapper_for(engine_from(engine, ray_address, actors))
    progress, update = progress_bar(f"score {name}", "items", quiet or json)
    stats = run_with_progress(progress, lambda: score_items(
        db or default_path(), name, where, chunk, batch_size, on_chunk=lambda st, n: update(st.scored, n),
        mapper=mapper))
    for line in coverage_warnings(stats):
        err.print(line)
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
    rep = evaluate_on_file(row, labels, format.value)
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


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="critic")


