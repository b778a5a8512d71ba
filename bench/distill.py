"""The Symbolic Knowledge Distillation experiment at this machine's scale, on the embedded models: does a
student trained on a critic-filtered corpus beat its teacher, measured on held-out heads against human
references?

1. The ATOMIC-2020 human tuples (../shared/data) are split by head (seeded) into heads to distil on and heads
   to evaluate on; only the 7 ATOMIC-10x relations are used.
2. The teacher (SmolLM2-135M-Instruct, transformers) writes ATOMIC-10x inferences for the distillation heads
   with the recipe's few-shot prompts.
3. The filtering critic (MiniLM, frozen + head, CKBP v1 crowd labels) scores them; semantic dedup per head
   and relation. The judging critic is another (MPNet, frozen + head, CKBP v1 + v2 expert labels), so the
   filter does not grade itself.
4. Students (SmolLM2 + LoRA, the same steps each): the unfiltered corpus; the filtered, deduplicated corpus at
   two cuts (recall 0.8 and 0.5 of the critic's dev threshold); the human tuples of the distillation heads
   (the COMET baseline).
5. Each, and the teacher with the prompt it generated with, completes the evaluation heads' (head, relation)
   pairs greedily: judge acceptance, ROUGE-L and BLEU-2 against all human references (best over references),
   distinct-2 and unique-output ratio, degenerate rate.

    python bench/distill.py [--distil-heads 60] [--eval-pairs 120] [--samples 4] [--steps 80]
"""

from __future__ import annotations

import argparse
import hashlib
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

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
RELATIONS = ["xAttr", "xEffect", "xIntent", "xNeed", "xReact", "xWant", "HinderedBy"]


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def split_heads(seed: int) -> tuple[list[str], dict[tuple[str, str], list[str]], dict[tuple[str, str], list[str]]]:
    """Heads by a seeded hash: 60% to distil on, 40% to evaluate on; the references of each part."""
    from train.evaluate import read_references

    refs = {k: v for k, v in read_references(DATA / "atomic2020/human_tuples.tsv").items() if k[1] in RELATIONS}
    heads = sorted({h for h, _ in refs})

    def part(h: str) -> float:
        return int(hashlib.sha256(f"{seed}:{h}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    distil = [h for h in heads if part(h) < 0.6]
    held = {k: v for k, v in refs.items() if part(k[0]) >= 0.6}
    own = {k: v for k, v in refs.items() if part(k[0]) < 0.6}
    return distil, own, held


def generate(db: Path, heads: list[str], samples: int, seed: int, tmp: Path) -> dict:
    from generators import make_recipe, make_teacher, run_generation

    (tmp / "heads.txt").write_text("\n".join(heads) + "\n")
    recipe = make_recipe("atomic10x", {"stage": "inferences", "events_from": "seeds", "seeds": str(tmp / "heads.txt"),
                                       "relations": RELATIONS,
                                       "inference_sampling": {"n": samples, "temperature": 1.0, "top_p": 0.9,
                                                              "max_tokens": 16, "stop": ["\n"]}})
    teacher = make_teacher("transformers", "smollm2-135m-instruct", batch_size=32)
    try:
        return run_generation(db, recipe, teacher, seed=seed, batch_size=64).as_dict()
    finally:
        teacher.close()


def critics(db: Path) -> dict:
    from critics import CriticConfig, train_critic
    from store import Store, import_labels

    with Store(db) as s:
        import_labels(s, DATA / "ckbp/ckbp1_crowd.csv", "ckbp", source="ckbp1")
        import_labels(s, DATA / "ckbp/ckbp2_dev.csv", "ckbp", source="ckbp2")
        files = s.files_dir
    filt = train_critic(db, "filter", CriticConfig(mode="embedding", sources=["ckbp1"]), files / "critics/filter")
    judge = train_critic(db, "judge", CriticConfig(mode="embedding", base="all-mpnet-base-v2",
                                                   sources=["ckbp1", "ckbp2"], source_weights={"ckbp2": 3.0}),
                         files / "critics/judge")
    return {"filter_dev_auc": filt["metrics"]["dev"]["auc"], "judge_dev_auc": judge["metrics"]["dev"]["auc"]}


def human_corpus(db: Path, own: dict[tuple[str, str], list[str]], tmp: Path) -> None:
    """The distillation heads' human tuples, as items of domain `human` (the COMET baseline's corpus)."""
    import json

    from store import Store, ingest_file

    path = tmp / "human.jsonl"
    path.write_text("".join(json.dumps({"kind": "triple", "head": h, "relation": r, "tail": t, "domain": "human"})
                            + "\n" for (h, r), tails in own.items() for t in tails))
    with Store(db) as s:
        ingest_file(s, path, "jsonl")


def snapshots(db: Path) -> dict[str, int]:
    from corpus import SnapshotRecipe, create_snapshot, dedup, embed_items
    from critics.score import score_items
    from store import Store

    gen = "domain = 'atomic10x'"
    score_items(db, "filter", gen)
    score_items(db, "judge", gen)
    embed_items(db, where=gen)
    with Store(db) as s:
        dedup(s, "semantic", 0.9, "head-relation", critic="filter", where=gen)
        train = {"train": 1.0}
        recipes = {"unfiltered": SnapshotRecipe(where=gen, split=train),
                   "filtered-r0.8": SnapshotRecipe(where=gen, critic="filter", threshold_at_recall=0.8,
                                                   dedup="semantic", split=train),
                   "filtered-r0.5": SnapshotRecipe(where=gen, critic="filter", threshold_at_recall=0.5,
                                                   dedup="semantic", split=train),
                   "human": SnapshotRecipe(where="domain = 'human'", split=train)}
        return {name: create_snapshot(s, name, r)["funnel"]["snapshot"] for name, r in recipes.items()}


def students(db: Path, names: list[str], steps: int, tmp: Path) -> dict[str, str]:
    from train import TrainConfig, fit

    out = {}
    for name in names:
        started = time.monotonic()
        card = fit(db, TrainConfig(snapshot=name, out=tmp / f"student-{name}", lora=(16, 32), max_steps=steps,
                                   lr=1e-3, batch_size=8, max_length=64, save_steps=10_000))
        out[name] = card["student_id"]
        say(f"student {name}: {steps} steps in {time.monotonic() - started:.0f} s, loss "
            f"{card['summary']['first_loss']:.3f} -> {card['summary']['last_loss']:.3f}")
    return out


def evaluate(db: Path, models: dict[str, tuple[str, str]], refs: Path, pairs: int) -> dict[str, dict]:
    from corpus.stats import distinct_n
    from skd.wiring import evaluate as run_eval
    from train.eval_run import EvalConfig

    rows = {}
    for label, (model, fmt) in models.items():
        started = time.monotonic()
        cfg = EvalConfig(references=refs, relations=RELATIONS, limit=pairs, critic="judge", format=fmt,
                         max_tokens=16)
        r = run_eval(db, model, cfg)
        outs = [s["output"] for s in r["samples"]]
        m = r["metrics"]
        rows[label] = {"n": m["n"], "judge": m["critic"]["acceptance"], "judge_mean": m["critic"]["mean_score"],
                       "rouge_l": m["references"]["rouge_l"], "bleu2": m["references"]["bleu2"],
                       "distinct_2": distinct_n(outs, (2,))["distinct_2"],
                       "unique": len({o.lower() for o in outs}) / max(1, len(outs)),
                       "degenerate": m["degenerate_rate"], "seconds": time.monotonic() - started}
        say(f"eval {label}: {rows[label]}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--distil-heads", type=int, default=60)
    ap.add_argument("--eval-pairs", type=int, default=120)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"needs ../shared/data ({DATA})")
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="skd-distill-"))
    db = tmp / "c.duckdb"
    distil, own, held = split_heads(args.seed)
    heads = distil[: args.distil_heads]
    own = {k: v for k, v in own.items() if k[0] in set(heads)}
    refs = tmp / "held_out.tsv"  # the evaluation heads' references, in ATOMIC-2020's format
    refs.write_text("".join(f"{h} @@ {r}\t{'| '.join(t)}\n" for (h, r), t in sorted(held.items())))
    say(f"{len(heads)} distillation heads ({sum(len(v) for v in own.values())} human tails), "
        f"{len(held)} held-out (head, relation) pairs; evaluating on {args.eval_pairs}")
    gen = generate(db, heads, args.samples, args.seed, tmp)
    say(f"teacher: {gen['completions']} completions, {gen['parsed']} parsed, {gen['new_items']} new items")
    crit = critics(db)
    say(f"critics: {crit}")
    human_corpus(db, own, tmp)
    sizes = snapshots(db)
    say(f"snapshots: {sizes}")
    ids = students(db, list(sizes), args.steps, tmp)
    models = {"teacher (few-shot prompt)": ("smollm2-135m-instruct", "fewshot")}
    models |= {f"student: {name} ({sizes[name]:,} items)": (sid, None) for name, sid in ids.items()}
    rows = evaluate(db, models, refs, args.eval_pairs)
    t = Table(title=f"SKD at small scale: SmolLM2-135M teacher and students, {len(heads)} distillation heads, "
                    f"{args.eval_pairs} held-out (head, relation) pairs, greedy")
    for col in ("model", "judge accept.", "judge mean", "ROUGE-L", "BLEU-2", "distinct-2", "unique", "degen.", "n"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for label, r in rows.items():
        t.add_row(label, f"{r['judge']:.3f}", f"{r['judge_mean']:.3f}", f"{r['rouge_l']:.3f}", f"{r['bleu2']:.3f}",
                  f"{r['distinct_2']:.3f}", f"{r['unique']:.3f}", f"{r['degenerate']:.3f}", str(r["n"]))
    Console(width=170).print(t)
    print(f"critics: filter dev AUC {crit['filter_dev_auc']:.3f} (MiniLM, CKBP v1), judge dev AUC "
          f"{crit['judge_dev_auc']:.3f} (MPNet, CKBP v1 + v2); teacher parse rate "
          f"{gen['parsed'] / max(1, gen['completions']):.1%}; total {(time.monotonic() - started) / 60:.1f} min")
    print(f"python bench/distill.py --distil-heads {args.distil_heads} --eval-pairs {args.eval_pairs} "
          f"--samples {args.samples} --steps {args.steps} --seed {args.seed}")


if __name__ == "__main__":
    main()
