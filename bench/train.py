"""Student training throughput and memory: `skd train` (snapshot -> TRL SFTTrainer) against a plain
transformers Trainer on the same examples, model and settings, in the same run; then the peak resident
memory of full fine-tuning and LoRA, each with and without gradient checkpointing (one process each).

    python bench/train.py [--steps 8] [--batch-size 8] [--lines 300]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "atomic2020" / "human_tuples.tsv"


def make_corpus(d: Path, lines: int) -> Path:
    from corpus import SnapshotRecipe, create_snapshot
    from store import Store, ingest_file

    (d / "a.tsv").write_text("\n".join(SHARED.read_text().splitlines()[:lines]) + "\n")
    db = d / "c.duckdb"
    with Store(db) as s:
        ingest_file(s, d / "a.tsv", "atomic2020")
        create_snapshot(s, "bench", SnapshotRecipe())
    return db


def skd_run(db: Path, out: Path, steps: int, batch: int, lora: bool, gc: bool) -> dict:
    from train import TrainConfig, fit

    cfg = TrainConfig(snapshot="bench", out=out, max_steps=steps, batch_size=batch, lr=5e-5, max_length=64,
                      save_steps=10_000, lora=(16, 32) if lora else None, gradient_checkpointing=gc)
    card = fit(db, cfg)
    return {"seconds": card["summary"]["seconds"], "steps": card["summary"]["steps"]}


def plain_trainer(db: Path, out: Path, steps: int, batch: int) -> dict:
    """What a user writes by hand: tokenise prompt + completion, mask the prompt, transformers Trainer."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from corpus import snapshot_frame
    from store import Store, resolve_model
    from train.formats import example

    with Store(db, read_only=True) as s:
        rows = [example(r, "comet") for r in snapshot_frame(s, "bench").to_dicts()]
    path = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")

    def encode(r):
        p = tok(r["prompt"])["input_ids"]
        c = tok(r["completion"])["input_ids"] + [tok.eos_token_id]
        ids = (p + c)[:64]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ([-100] * len(p) + c)[:64]}

    ds = datasets.Dataset.from_list(rows).map(encode, remove_columns=["prompt", "completion"])
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch,
                             learning_rate=5e-5, report_to=[], disable_tqdm=True, save_strategy="no", use_cpu=True,
                             logging_steps=1, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorForSeq2Seq(tok))
    started = time.monotonic()
    trainer.train()
    return {"seconds": time.monotonic() - started, "steps": trainer.state.global_step,
            "tokens": sum(len(x) for x in ds["input_ids"]) / len(ds)}


def child(args: argparse.Namespace) -> None:
    """One measurement in its own process, so peak RSS belongs to it alone."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        if args.child == "plain":
            r = plain_trainer(Path(args.db), out, args.steps, args.batch_size)
        else:
            r = skd_run(Path(args.db), out, args.steps, args.batch_size, "lora" in args.child, "gc" in args.child)
    r["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print("RESULT " + json.dumps(r))


def measure(db: Path, what: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--db", str(db), "--steps", str(args.steps), "--batch-size",
           str(args.batch_size)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", **__import__("os").environ})
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{what} failed:\n{p.stderr[-3000:]}")
    return json.loads(line[7:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lines", type=int, default=300)
    ap.add_argument("--child")
    ap.add_argument("--db")
    args = ap.parse_args()
    if args.child:
        return child(args)
    if not SHARED.is_file():
        raise SystemExit(f"needs {SHARED} (the shared ATOMIC-2020 tuples)")
    with tempfile.TemporaryDirectory() as tmp:
        db = make_corpus(Path(tmp), args.lines)
        plain = measure(db, "plain", args)
        runs = {what: measure(db, what, args) for what in ("full", "full-gc", "lora", "lora-gc")}
    tokens = plain["tokens"] * args.steps * args.batch_size  # the same examples in both: mean length x examples
    machine = f"{platform.machine()}, {__import__('os').cpu_count()} CPUs"
    t = Table(title=f"student training, SmolLM2-135M, {args.steps} steps x batch {args.batch_size}, {machine}")
    for col in ("run", "tokens/s", "ratio vs plain Trainer", "peak RSS GiB"):
        t.add_column(col, justify="right")
    t.add_row("transformers Trainer (full)", f"{tokens / plain['seconds']:.0f}", "1.00", f"{plain['peak_rss_gib']:.2f}")
    for what, r in runs.items():
        t.add_row(f"skd train ({what})", f"{tokens / r['seconds']:.0f}", f"{plain['seconds'] / r['seconds']:.2f}",
                  f"{r['peak_rss_gib']:.2f}")
    Console().print(t)


if __name__ == "__main__":
    main()
