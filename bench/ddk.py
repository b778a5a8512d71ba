"""DDK against a fixed mixture, with and without white-box distillation, at this machine's scale.

The teacher (SmolLM2-135M-Instruct) writes ATOMIC-10x inferences for the shipped seed events, 7 relations
(the domains); a snapshot splits them 80/20. Students (SmolLM2 + LoRA, chat format, the same steps and seed;
the mixtures hold 16 examples per relation of the train split out to measure it, plain SFT trains on all) train
with: the natural mixture (plain SFT, the baseline), a uniform mixture over relations, DDK (re-weighted every
K steps by the student/teacher loss gap per relation), and each mixture plus the KL term to the teacher
(weight 0.2, temperature 1, DDK's). Each is measured by its loss per relation on the test split against the
teacher's (the gap DDK closes), by `skd eval`'s metrics on the test split, and by training tokens/s.

    python bench/ddk.py [--events 40] [--steps 60] [--every 15] [--eval 70]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from rich.console import Console
from rich.table import Table

RELATIONS = ["xAttr", "xEffect", "xIntent", "xNeed", "xReact", "xWant", "HinderedBy"]
# The chat format: the teacher is an instruction model, so its loss on a chat example means something (on the
# comet format, `head relation [GEN] tail`, which it never saw, its loss would measure the format, not the gap).
STUDENT = {"lora": (16, 32), "lr": 1e-3, "batch_size": 8, "max_length": 96, "save_steps": 10_000, "format": "chat"}
RUNS = {"natural (plain SFT)": {}, "uniform": {"mixture": "uniform"}, "ddk": {"mixture": "ddk"},
        "uniform + KL": {"mixture": "uniform", "kd_weight": 0.2}, "ddk + KL": {"mixture": "ddk", "kd_weight": 0.2}}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def corpus(db: Path, events: int) -> None:
    from corpus import SnapshotRecipe, create_snapshot
    from generators import make_recipe, make_teacher, run_generation
    from store import Store

    recipe = make_recipe("atomic10x", {"events_from": "seeds", "max_events": events, "relations": RELATIONS,
                                       "inference_sampling": {"n": 4, "temperature": 1.0, "top_p": 0.5,
                                                              "max_tokens": 16, "stop": ["\n"]}})
    teacher = make_teacher("transformers", "smollm2-135m-instruct")
    stats = run_generation(db, recipe, teacher, seed=0)
    teacher.close()
    say(f"corpus: {stats.items} items from {stats.completions} completions in {stats.seconds:.0f} s")
    with Store(db) as s:
        create_snapshot(s, "ddk", SnapshotRecipe(split={"train": 0.8, "test": 0.2}, seed=0))


def test_losses(db: Path, models: dict[str, str]) -> tuple[list[str], dict[str, list[float]]]:
    """Each model's mean token loss per relation on the test split (the same examples for all)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

    from corpus import snapshot_frame
    from store import Store, resolve_model
    from train.formats import encode, example
    from train.mixture import domain_losses

    with Store(db, read_only=True) as s:
        rows = [r for r in snapshot_frame(s, "ddk").to_dicts() if r["split"] == "test"]
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    domains = sorted({r["relation"] for r in rows})
    batches = [[encode(example(r, STUDENT["format"]), tok, STUDENT["max_length"]) for r in rows
                if r["relation"] == d] for d in domains]
    collate = DataCollatorForSeq2Seq(tok, padding=True)
    out = {}
    for name, path in models.items():
        model = AutoModelForCausalLM.from_pretrained(resolve_model(path), dtype="float32")
        out[name] = domain_losses(model, batches, collate)
        del model
    return domains, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=40)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=15)
    ap.add_argument("--eval", type=int, default=70)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    from skd.wiring import evaluate
    from train import TrainConfig, fit
    from train.eval_run import EvalConfig

    tmp = args.work or Path(tempfile.mkdtemp(prefix="skd-bench-ddk-"))
    tmp.mkdir(parents=True, exist_ok=True)
    db = tmp / "ddk.duckdb"
    if not db.exists():
        corpus(db, args.events)
    cards, evals = {}, {}
    for name, extra in RUNS.items():
        folder = tmp / name.split(" ")[0].replace("+", "") / ("kl" if "KL" in name else "sft")
        card_file = folder / "student.json"
        if not card_file.is_file():
            fit(db, TrainConfig(snapshot="ddk", out=folder, **STUDENT, max_steps=args.steps,
                                mixture_every=args.every, teacher="smollm2-135m-instruct", **extra))
        cards[name] = json.loads(card_file.read_text()) | {"path": str(folder)}
        s = cards[name]["summary"]
        say(f"{name}: {s['steps']} steps in {s['seconds']:.0f} s, loss {s['first_loss']:.3f} -> {s['last_loss']:.3f}")
        r = evaluate(db, str(folder), EvalConfig(snapshot="ddk", split="test", limit=args.eval, max_tokens=16))
        evals[name] = r["metrics"]
    domains, losses = test_losses(db, {"teacher": "smollm2-135m-instruct"} | {k: c["path"] for k, c in cards.items()})
    teacher = losses.pop("teacher")

    table = Table(title=f"students on {args.steps} steps of the same ATOMIC-10x snapshot (SmolLM2-135M + LoRA, "
                        f"teacher SmolLM2-135M-Instruct; K = {args.every}); test split: loss gap "
                        f"lS/lT per relation, skd eval on {args.eval} cases; {os.cpu_count()} cores")
    for col in ("student", "tokens/s", "vs SFT", "mean lS/lT", "worst relation lS/lT", "ROUGE-L", "BLEU-2",
                "degenerate", "final mixture (relation: weight)"):
        table.add_column(col, justify="left" if col in ("student", "final mixture (relation: weight)") else "right")
    base_rate = None
    for name, card in cards.items():
        s = card["summary"]
        rate = s["tokens"] / s["seconds"] * s["steps"] * STUDENT["batch_size"] / max(s["examples"], 1)
        base_rate = base_rate or rate
        gaps = [ls / lt for ls, lt in zip(losses[name], teacher, strict=True)]
        worst = max(range(len(gaps)), key=lambda k: gaps[k])
        mix = s.get("mixture")
        final = (", ".join(f"{d}: {w:.2f}" for d, w in zip(mix["domains"], mix["weights"], strict=True))
                 if mix else "natural")
        m = evals[name]
        table.add_row(name, f"{rate:.0f}", f"{rate / base_rate:.2f}", f"{sum(gaps) / len(gaps):.3f}",
                      f"{domains[worst]} {gaps[worst]:.3f}", f"{m['references']['rouge_l']:.3f}",
                      f"{m['references']['bleu2']:.3f}", f"{m['degenerate_rate']:.3f}", final)
    per = Table(title="loss gap lS/lT per relation on the test split (lower: closer to the teacher)")
    per.add_column("student")
    for d in domains:
        per.add_column(d, justify="right")
    for name in cards:
        per.add_row(name, *(f"{ls / lt:.3f}" for ls, lt in zip(losses[name], teacher, strict=True)))
    console = Console(width=220)
    console.print(table)
    console.print(per)
    console.print("teacher loss per relation on the test split: "
                  + ", ".join(f"{d} {x:.3f}" for d, x in zip(domains, teacher, strict=True)))


if __name__ == "__main__":
    main()
