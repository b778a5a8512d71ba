"""`skd train`, `skd eval` and `skd compare`: students from snapshots, measured beside their teachers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from critics import load_critic
from critics.verbalize import verbalize_rows
from generators import Request, Sampling, make_teacher
from generators.backends import BACKENDS
from generators.recipes import validate_config
from generators.recipes.rationale import is_correct, normalise_answer, read_questions
from store import MINILM, SMOLLM2, SkdError, Store, default_path
from train import FORMATS, TrainConfig, fit
from train.evaluate import (
    Case,
    cases_from_heads,
    cases_from_questions,
    cases_from_references,
    cases_from_snapshot,
    compare,
    eval_key,
    flat_metrics,
    prompts,
    read_references,
    record_eval,
    score_outputs,
    stored_eval,
)
from train.formats import extract_answer

from .options import Db, Json, Quiet
from .output import out, print_json, progress_bar

ATOMIC10X_RELATIONS = ["xAttr", "xEffect", "xIntent", "xNeed", "xReact", "xWant", "HinderedBy"]


def train_cmd(
    snapshot: Annotated[str, typer.Option(help="Snapshot to train on (its train split).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the student (and its checkpoints).")],
    base: Annotated[str, typer.Option(help="Base model: HF id, path, or the embedded SmolLM2.")] = SMOLLM2,
    fmt: Annotated[str, typer.Option("--format", help=f"One of {', '.join(FORMATS)}.")] = "comet",
    lora: Annotated[str | None, typer.Option(help="LoRA rank,alpha (e.g. 16,32); full fine-tuning when unset.")]
    = None,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing")] = False,
    epochs: Annotated[float, typer.Option()] = 1.0,
    max_steps: Annotated[int, typer.Option(help="Stop after this many optimiser steps (-1: all epochs).")] = -1,
    lr: Annotated[float, typer.Option()] = 5e-5,
    batch_size: Annotated[int, typer.Option()] = 8,
    grad_accum: Annotated[int, typer.Option()] = 1,
    bf16: Annotated[bool, typer.Option("--bf16")] = False,
    max_length: Annotated[int, typer.Option(help="Tokens per example.")] = 256,
    save_steps: Annotated[int, typer.Option(help="Checkpoint every this many steps (resume point).")] = 50,
    seed: Annotated[int, typer.Option()] = 0,
    db: Db = None, json: Json = False, quiet: Quiet = False,
) -> None:
    """Fine-tune a student on a snapshot (TRL SFT, optional LoRA); resumes from its last checkpoint."""
    cfg = validate_config(TrainConfig, {
        "snapshot": snapshot, "base": base, "out": out_dir, "format": fmt, "lora": parse_lora(lora),
        "gradient_checkpointing": gradient_checkpointing, "epochs": epochs, "max_steps": max_steps, "lr": lr,
        "batch_size": batch_size, "grad_accum": grad_accum, "bf16": bf16, "max_length": max_length,
        "save_steps": save_steps, "seed": seed}, "train")
    progress, update = progress_bar("train", "steps", quiet or json, note="loss {task.fields[loss]}")

    def on_step(step: int, total: int, loss: float | None) -> None:
        if progress is not None and not progress.live.is_started:  # shown once training runs, not before errors
            progress.start()
        update(step, total, loss="-" if loss is None else f"{loss:.3f}")

    try:
        card = fit(db or default_path(), cfg, on_step=on_step)  # type: ignore[arg-type]
    finally:
        if progress is not None and progress.live.is_started:
            progress.stop()
    if json:
        print_json(card)
        return
    s = card["summary"]
    out.print(f"student {card['student_id']} -> {out_dir}: {s['steps']} steps on {s['examples']:,} examples of "
              f"{snapshot}, loss {s['first_loss']:.3f} -> {s['last_loss']:.3f} in {s['seconds']:.0f} s"
              + (f" (resumed from {s['resumed_from']})" if s["resumed_from"] else ""))


def parse_lora(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        r, alpha = (int(x) for x in text.split(","))
        return r, alpha
    except ValueError:
        raise SkdError(f"--lora {text!r}: expected RANK,ALPHA, e.g. 16,32") from None


def find_student(store: Store, name: str) -> dict[str, Any] | None:
    """A registered student by id or folder; None when NAME is a teacher model."""
    path = Path(name)
    card_file = path / "student.json"
    if card_file.is_file():
        return json.loads(card_file.read_text()) | {"path": str(path)}
    row = store.students.get(name)
    return row["config"] | {"path": row["path"]} if row else None


def critic_scorer(row: dict[str, Any]) -> tuple[Any, float]:
    """A scoring function for the registered critic `row` (store.critics.get) and its recall@0.5 threshold."""
    critic = load_critic(row["path"])
    threshold = (row["thresholds"] or {}).get("recall@0.5", 0.5)
    return (lambda items: critic.score(verbalize_rows(items))), float(threshold)


def check_answer(output: str, item: dict[str, Any]) -> bool | None:
    """Answer checking shared with the rationale recipe (choices, numbers, yes/no)."""
    q = {"choices": item.get("choices"), "type": item.get("type") or ("choice" if item.get("choices") else
                                                                       "free")}
    return is_correct(normalise_answer(extract_answer(output, item), q), item.get("answer"), q)


def eval_cases(store: Store, snapshot: str | None, split: str, heads: Path | None, references: Path | None,
               questions: Path | None, questions_format: str, relations: list[str] | None, limit: int | None,
               seed: int, offset: int = 0) -> tuple[list[Case], str]:
    refs = read_references(references) if references else None
    if questions:
        cases = cases_from_questions(read_questions(questions, questions_format))[offset:]
        return cases[:limit] if limit else cases, f"{questions} ({questions_format}, from {offset})"
    if heads:
        cases = cases_from_heads(heads, relations or ATOMIC10X_RELATIONS, refs)
        return cases[:limit] if limit else cases, str(heads)
    if refs:
        return cases_from_references(refs, relations, limit, seed), str(references)
    if snapshot:
        return cases_from_snapshot(store, snapshot, split, limit), f"snapshot {snapshot}:{split}"
    raise SkdError("give the inputs: --snapshot NAME [--split test], --heads FILE, --references FILE or --questions")


def generate_outputs(model: str, backend: str, cases: list[Case], fmt: str, max_tokens: int, temperature: float,
                     seed: int) -> list[str]:
    stop = ("\n",) if fmt != "rationale" else ()
    sampling = Sampling(n=1, temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed)
    reqs = []
    for p in prompts(cases, fmt):
        if isinstance(p, str):
            reqs.append(Request(model=model, sampling=sampling, prompt=p))
        else:
            reqs.append(Request(model=model, sampling=sampling, messages=tuple((m["role"], m["content"]) for m in p)))
    teacher = make_teacher(backend, model)
    try:
        return [c[0].text.strip() if c else "" for c in teacher.generate(reqs)]
    finally:
        teacher.close()


def eval_cmd(
    model: Annotated[str, typer.Argument(help="A student (id or folder) or a teacher model (HF id, path, SmolLM2).")],
    snapshot: Annotated[str | None, typer.Option(help="Evaluate on this snapshot's --split.")] = None,
    split: Annotated[str, typer.Option()] = "test",
    heads: Annotated[Path | None, typer.Option(help="A file of heads, one per line (with --relations).")] = None,
    references: Annotated[Path | None, typer.Option(help="ATOMIC-2020 file: human references (and inputs).")]
    = None,
    questions: Annotated[Path | None, typer.Option(help="A question set (CommonsenseQA, GSM8K, StrategyQA).")]
    = None,
    questions_format: Annotated[str, typer.Option(help="csqa, gsm8k, strategyqa or jsonl.")] = "jsonl",
    offset: Annotated[int, typer.Option(help="Skip this many questions first.")] = 0,
    relations: Annotated[list[str] | None, typer.Option("--relations", help="Relations to ask (repeatable).")]
    = None,
    critic: Annotated[str | None, typer.Option(help="Report this critic's acceptance rate of the outputs.")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="Prompt format (default: the student's; chat for a "
                                                            "teacher).")] = None,
    backend: Annotated[str, typer.Option(help=f"Generation backend: {', '.join(BACKENDS)}.")] = "transformers",
    limit: Annotated[int | None, typer.Option(help="At most this many inputs.")] = None,
    max_tokens: Annotated[int, typer.Option()] = 32,
    temperature: Annotated[float, typer.Option(help="0 is greedy.")] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
    embed_model: Annotated[str, typer.Option(help="Encoder for the embedding similarity.")] = MINILM,
    db: Db = None, json: Json = False,
) -> None:
    """Generate for held-out inputs and measure: references overlap, exact match, critic acceptance, degenerate
    outputs. Results go to `evals`, linked to the student and its snapshot."""
    r = evaluate_model(db or default_path(), model, snapshot=snapshot, split=split, heads=heads,
                       references=references, questions=questions, questions_format=questions_format,
                       relations=relations, critic=critic, fmt=fmt, backend=backend, limit=limit,
                       max_tokens=max_tokens, temperature=temperature, seed=seed, embed_model=embed_model,
                       offset=offset)
    if json:
        print_json({k: r[k] for k in ("eval_id", "model", "metrics", "config")})
        return
    out.print(compare_table([{"eval_id": r["eval_id"], "model": r["model"], "inputs": r["config"]["inputs"],
                              **flat_metrics(r["metrics"])}]))
    for sample in r["samples"][:3]:
        out.print(f"  {sample['input'].get('head') or sample['input'].get('question')} "
                  f"{sample['input'].get('relation') or ''} -> {sample['output']!r}")


def evaluate_model(db_path: Path, model: str, *, snapshot: str | None = None, split: str = "test",
                   heads: Path | None = None, references: Path | None = None, questions: Path | None = None,
                   questions_format: str = "jsonl", relations: list[str] | None = None, critic: str | None = None,
                   fmt: str | None = None, backend: str = "transformers", limit: int | None = None,
                   max_tokens: int = 32, temperature: float = 0.0, seed: int = 0, embed_model: str = MINILM,
                   offset: int = 0) -> dict[str, Any]:
    """Evaluate a student or a teacher and record the result; returns eval_id, model, metrics, config, samples.
    An evaluation recorded before (same model, inputs and settings) is returned as it is, not repeated."""
    with Store(db_path, read_only=True) as s:
        student = find_student(s, model)
        cases, source = eval_cases(s, snapshot, split, heads, references, questions, questions_format, relations,
                                   limit, seed, offset)
        critic_row = s.critics.get(critic) if critic else None
        fmt = fmt or (student["format"] if student else "chat")
        if fmt not in FORMATS:
            raise SkdError(f"--format must be one of {', '.join(FORMATS)}")
        config = {"inputs": source, "format": fmt, "backend": backend, "max_tokens": max_tokens,
                  "temperature": temperature, "seed": seed, "critic": critic, "limit": limit,
                  "embed_model": embed_model}
        label = f"{student['student_id']} (student)" if student else f"{model} (teacher)"
        student_id, snapshot = (student or {}).get("student_id"), snapshot or (student or {}).get("snapshot")
        eval_id = eval_key(label, config | {"critic_id": critic_row and critic_row["critic_id"]}, student_id,
                           snapshot, cases)
        done = stored_eval(s, eval_id)
    if done:
        return done
    scorer, threshold = critic_scorer(critic_row) if critic_row else (None, None)
    outputs = generate_outputs(student["path"] if student else model, backend, cases, fmt, max_tokens, temperature,
                               seed)
    metrics = score_outputs(cases, outputs, embed_model=embed_model, scorer=scorer, threshold=threshold,
                            checker=check_answer)
    samples = [{"input": c.item, "references": c.references, "output": o}
               for c, o in zip(cases, outputs, strict=True)]
    record_eval(db_path, eval_id, label, metrics, config, student_id, snapshot, samples)
    return {"eval_id": eval_id, "model": label, "metrics": metrics, "config": config, "samples": samples}


def compare_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="evaluations (n inputs; degenerate-output rate; BLEU-2, ROUGE-L and embedding similarity "
                    "against the references; exact match; critic acceptance)", title_justify="left")
    cols = [c for c in (rows[0] if rows else {}) if c != "eval_id"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("model", "inputs") else "right", overflow="fold")
    for r in rows:
        t.add_row(*[f"{r[c]:.3f}" if isinstance(r[c], float) else "-" if r[c] is None else str(r[c]) for c in cols])
    return t


def compare_cmd(
    eval_ids: Annotated[list[str] | None, typer.Argument(help="Evaluations to show (default: all).")] = None,
    snapshot: Annotated[str | None, typer.Option(help="Only evaluations linked to this snapshot.")] = None,
    db: Db = None, json: Json = False,
) -> None:
    """Students and teachers side by side: one row per evaluation."""
    with Store(db, read_only=True) as s:
        rows = compare(s, eval_ids, snapshot)
    if json:
        print_json(rows)
    else:
        out.print(compare_table(rows))


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("eval")(eval_cmd)
    app.command("compare")(compare_cmd)
