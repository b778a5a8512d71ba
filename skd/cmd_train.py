"""`skd train`, `skd eval` and `skd compare`: students from snapshots, measured beside their teachers. The options
come from the components' configs (train.TrainConfig, train.eval_run.EvalConfig); the work is theirs."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from store import SkdError, Store, default_path
from train import TrainConfig, fit
from train.eval_run import EvalConfig
from train.evaluate import compare, flat_metrics

from .config_options import Text, config_options
from .options import Db, Json, Quiet
from .output import cell, out, print_json, progress_bar
from .wiring import evaluate


def parse_lora(text: str) -> tuple[int, int]:
    try:
        r, alpha = (int(x) for x in text.split(","))
        return r, alpha
    except ValueError:
        raise SkdError(f"--lora {text!r}: expected RANK,ALPHA, e.g. 16,32") from None


LORA = Text(parse_lora, lambda v: f"{v[0]},{v[1]}")


@config_options(TrainConfig, "train", text={"lora": LORA})
def train_cmd(cfg: TrainConfig, db: Db = None, json: Json = False, quiet: Quiet = False) -> None:
    """Fine-tune a student on a snapshot (TRL SFT, optional LoRA); resumes from its last checkpoint."""
    progress, update = progress_bar("train", "steps", quiet or json, note="loss {task.fields[loss]}")

    def on_step(step: int, total: int, loss: float | None) -> None:
        if progress is not None and not progress.live.is_started:  # shown once training runs, not before errors
            progress.start()
        update(step, total, loss="-" if loss is None else f"{loss:.3f}")

    try:
        card = fit(db or default_path(), cfg, on_step=on_step)
    finally:
        if progress is not None and progress.live.is_started:
            progress.stop()
    if json:
        print_json(card)
        return
    s = card["summary"]
    out.print(f"student {card['student_id']} -> {cfg.out}: {s['steps']} steps on {s['examples']:,} examples of "
              f"{cfg.snapshot}, loss {s['first_loss']:.3f} -> {s['last_loss']:.3f} in {s['seconds']:.0f} s"
              + (f" (resumed from {s['resumed_from']})" if s["resumed_from"] else ""))
    if s.get("too_long"):
        out.print(f"[yellow]warning:[/] {s['too_long']:,} examples longer than --max-length {cfg.max_length} were left "
                  "out (cut, they would lose their answer and end)")


@config_options(EvalConfig, "eval")
def eval_cmd(
    cfg: EvalConfig,
    model: Annotated[str, typer.Argument(help="A student (id or folder) or a teacher model (HF id, path, SmolLM2).")],
    db: Db = None, json: Json = False,
) -> None:
    """Generate for held-out inputs and measure: references overlap, exact match, critic acceptance, degenerate
    outputs. Results go to `evals`, linked to the student and its snapshot."""
    r = evaluate(db or default_path(), model, cfg)
    if json:
        print_json({k: r[k] for k in ("eval_id", "model", "metrics", "config")})
        return
    out.print(compare_table([{"eval_id": r["eval_id"], "model": r["model"], "inputs": r["config"]["inputs"],
                              **flat_metrics(r["metrics"])}]))
    if r["metrics"].get("seen_in_training"):
        out.print(f"[yellow]warning:[/] {r['metrics']['seen_in_training']} of {r['metrics']['n']} inputs are heads or "
                  "questions the student trained on (--unseen-only drops them)")
    for sample in r["samples"][:3]:
        out.print(f"  {sample['input'].get('head') or sample['input'].get('question')} "
                  f"{sample['input'].get('relation') or ''} -> {sample['output']!r}")


def compare_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="evaluations (n inputs; degenerate-output rate; BLEU-2, ROUGE-L and embedding similarity "
                    "against the references; exact match; critic acceptance)", title_justify="left")
    cols = [c for c in (rows[0] if rows else {}) if c != "eval_id"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("model", "inputs") else "right", overflow="fold")
    for r in rows:
        t.add_row(*[cell(r[c]) for c in cols])
    return t


def compare_cmd(
    eval_ids: Annotated[list[str] | None, typer.Argument(help="Evaluations to show (default: all).")] = None,
    snapshot: Annotated[str | None, typer.Option(help="Only evaluations linked to this snapshot.")] = None,
    base: Annotated[str | None, typer.Option(
        help="An eval id (a teacher's, say): each other evaluation on the same inputs gets its difference from it in "
             "critic acceptance and ROUGE-L, input by input, with a 95% interval that resamples heads or questions."
    )] = None,
    db: Db = None, json: Json = False,
) -> None:
    """Students and teachers side by side: one row per evaluation."""
    with Store(db, read_only=True) as s:
        rows = compare(s, eval_ids, snapshot, base)
    if json:
        print_json(rows)
    else:
        out.print(compare_table(rows))


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("eval")(eval_cmd)
    app.command("compare")(compare_cmd)
