"""The Symbolic Knowledge Distillation experiment at this machine's scale, on the embedded models: does a
student trained on a critic-filtered corpus beat its teacher, measured on held-out heads against human
references, and do I2D2 self-imitation rounds improve it further?

1. The ATOMIC-2020 human tuples (../shared/data) are split by head (seeded) into heads to distil on and heads to
   evaluate on; only the 7 ATOMIC-10x relations are used. The heads distilled on are a seeded draw from the first
   part, none spelt like a held-out head ("PersonX buys a car", "PersonX buys the car").
2. The filtering critic (MiniLM, frozen + head, CKBP v1 crowd labels) and the judging critic (MPNet, frozen +
   head, CKBP v1 + v2 expert labels: another model than the filter, but it shares the filter's crowd labels) are
   trained.
3. `skd run`'s pipeline (skd.run.Runner), round 1: the teacher (SmolLM2-135M-Instruct, transformers) writes
   ATOMIC-10x inferences for the distillation heads with the recipe's few-shot prompts; the filter scores them;
   semantic dedup per head and relation; a snapshot cut by the filter (--loop-cut; default: per relation at
   recall 0.5 of its dev labels); a student (SmolLM2 + LoRA) trained on it; the student and the teacher (with the
   prompt it generated with) evaluated.
4. Beside it, from the same round-1 corpus: students on the unfiltered corpus, on the other cuts of one threshold
   at recall 0.8 and 0.5 and per-relation cuts at recall 0.8 and 0.5 (the same share of every relation, its
   best-scored items: the filter has no HinderedBy labels and passes few of them under one threshold), and on the
   human tuples of the distillation heads (the COMET baseline), with the same steps.
5. The pipeline again with `[loop] rounds = 3`: round 1 is skipped (done), rounds 2 and 3 generate with the
   previous round's student, through the same critic and dedup, and train on the accepted corpus so far.
6. Every model completes the evaluation heads' (head, relation) pairs greedily: judge acceptance, ROUGE-L and
   BLEU-2 against all human references (best over references), distinct-2 and unique-output ratio, degenerate
   rate. Acceptance differences against the teacher, the unfiltered student and round 1 come with a paired
   bootstrap 95% interval over the same pairs (resampled head by head), and a second table gives acceptance per
   relation.
7. With --better-filter, more students of the round-1 corpus: the same cut as the pipeline's (--loop-cut), the
   same number of items of every relation, chosen by another filter. Does a better filter make a better student,
   at the same corpus size? `support`: the MiniLM filter stacked with support (critics.support: the highest
   cosine between a tail and the human-written tails of its relation), the human tuples of every
   distillation-split head as the support source, fitted on the filter's own dev labels (the second judge has
   seen the spare heads' tuples the support reads, so its figures for that student are not independent; the
   first judge's and the reference overlap are). `finetune`: MiniLM fine-tuned (1 epoch) on the same CKBP v1 crowd
   labels as the filter, the same dev split. `relevance`: the same fine-tune with the human tuples of half the
   spare heads (those no judge trains on) beside the crowd labels, each tail with a tail swap as its negative
   (weight 3): CKBP's labels say whether a tail is plausible, hardly whether it fits its head. `pair`: the
   filter itself (MiniLM frozen + head, seconds to train) on relevance's labels, with pair features (critics'
   `pair`: head and tail embedded apart too, with their product and difference).
8. The same outputs by a second judge (MPNet, frozen + head) that shares no label with any filter: the CKBP v2
   expert labels and the human tuples, with tail swaps as negatives, of half the distillation-split heads beyond
   those distilled on (no student trains on them and no evaluation asks about them; the other half is the relevance
   filter's). CKBP has no HinderedBy labels, so the first judge cannot judge that relation; the second has seen it.
   A third judge is MPNet fine-tuned on the second's labels (2 epochs).
9. How far each judge can be trusted on these heads: its AUC at telling the held-out heads' human tails from tail
   swaps (a human tail of another held-out head, same relation), which no judge trained on.
10. No judge at all: every model's outputs against the held-out human references, pair by pair (ROUGE-L and MPNet
   cosine to the closest reference), with head-level paired intervals against the teacher, the unfiltered student
   and (with more rounds or --better-filter) round 1.

    python bench/distill.py [--distil-heads 60] [--eval-pairs 0 (all)] [--samples 4] [--steps 80] [--rounds 3]
                            [--loop-cut per-relation-r0.5] [--train-seeds 3] [--seeded unfiltered,...] [--work DIR]
                            [--better-filter support,finetune,relevance,pair]

With --train-seeds K, the students of the round-1 corpus named in --seeded are trained K times (training seeds
0..K-1) and judged by the mean of their runs' acceptance per pair, so a comparison is not one training run's luck
(three runs of one student span up to 0.018 here); the others, and self-imitation rounds 2 and 3, are one run each
(a round generates from the one student before it). From nothing on 2 cores: about 36 minutes before the
third judge and the checks (with AMX); 73 minutes with them, `--rounds 1 --better-filter relevance` (without AMX).

With --work, what a run in DIR already made (generations, critics, snapshots, students, evaluations) is kept, and
the per-pair reference measures are kept in DIR/references.json (--references-only: only those, no judges, minutes
on a finished folder). `--pool DIR0,DIR1,DIR2` reads several splits' files and prints one table over all their
pairs, with intervals that resample heads across the splits: the payoff from every split at once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
from rich.console import Console
from rich.table import Table

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
RELATIONS = ["xAttr", "xEffect", "xIntent", "xNeed", "xReact", "xWant", "HinderedBy"]
GENERATED = "domain = 'atomic10x'"
# the teacher's round-1 corpus: what the unfiltered snapshot took before self-imitation rounds added to the domain,
# so a cut added by a later run in the same --work folder is of the same items
ROUND_1 = (f"{GENERATED} AND item_id IN (SELECT item_id FROM snapshot_items WHERE snapshot_id = "
           "(SELECT snapshot_id FROM snapshots WHERE name = 'unfiltered'))")
# the second and third judges: only labels no filter saw (CKBP v2's experts, the human tuples and tail swaps of half
# the spare heads), so a filtered student's lead under them is not the filter's labels agreeing with themselves
JUDGE_2 = "judge-2"
JUDGE_3 = "judge-3"  # the same labels, MPNet fine-tuned rather than frozen
INDEPENDENT = ["ckbp2", "atomic-judge"]
RELEVANCE = "atomic-filter"  # the other half of the spare heads: --better-filter relevance's tuples and swaps
SUPPORT_SOURCE = "atomic-distil-split"  # the human tuples of every distillation-split head (distilled on and spare)
FILTER = {"mode": "embedding", "sources": ["ckbp1"]}  # the filtering critic's config
# the other filters of --better-filter, each on the filter's labels and dev split (relevance: with more labels)
BETTER = {"support": "filter-support", "finetune": "filter-finetune", "relevance": "filter-relevance",
          "pair": "filter-pair"}
STUDENT = {"lora": (16, 32), "lr": 1e-3, "batch_size": 8, "max_length": 64, "save_steps": 10_000}


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


def head_form(head: str) -> str:
    """A head as the store's normalised form compares it: case, PersonX spelling, punctuation and articles aside."""
    h = re.sub(r"person\s*([xyz])\b", r"person\1", head.lower())
    h = re.sub(r"[^\w\s]", " ", h)
    return " ".join(w for w in h.split() if w not in ("a", "an", "the"))


def critics(db: Path, spare: Path, spare_filter: Path, distil_split: Path | None = None) -> dict:
    """The filter and the three judges; `spare` and `spare_filter` hold the human tuples of two halves of the
    distillation-split heads that no student trains on and no evaluation asks about (the second and third judges'
    ATOMIC-2020 labels, and the relevance filter's)."""
    from critics import CriticConfig, train_critic
    from store import Store, import_labels

    with Store(db) as s:
        import_labels(s, DATA / "ckbp/ckbp1_crowd.csv", "ckbp", source="ckbp1")
        import_labels(s, DATA / "ckbp/ckbp2_dev.csv", "ckbp", source="ckbp2")
        import_labels(s, spare, "atomic2020", source=INDEPENDENT[1])
        import_labels(s, spare_filter, "atomic2020", source=RELEVANCE)
        if distil_split is not None:  # --better-filter support's source
            import_labels(s, distil_split, "atomic2020", source=SUPPORT_SOURCE)
        files = s.files_dir
    judge = {"mode": "embedding", "base": "all-mpnet-base-v2"}
    configs = {"filter": CriticConfig(**FILTER),
               "judge": CriticConfig(**judge, sources=["ckbp1", "ckbp2"], source_weights={"ckbp2": 3.0}),
               JUDGE_2: CriticConfig(**judge, sources=INDEPENDENT),
               # lr 2e-5: MPNet's fine-tunes ranked better there than at the default 5e-5 (critic_quality bench)
               JUDGE_3: CriticConfig(mode="finetune", base="all-mpnet-base-v2", sources=INDEPENDENT, epochs=2.0,
                                     lr=2e-5)}
    out = {}
    for name, cfg in configs.items():
        with Store(db, read_only=True) as s:
            row = s.critics.get(name) if s.critics.exists(name) else None
        if row is None:  # kept when an earlier run in the folder trained it
            row = train_critic(db, name, cfg, files / "critics" / name)
        out[f"{name}_dev_auc"] = row["metrics"]["dev"]["auc"]
    return out


def pipeline(db: Path, tmp: Path, heads: Path, refs: Path, args: argparse.Namespace, rounds: int):
    """The `skd run` pipeline of this experiment (round 1, or with self-imitation rounds)."""
    from skd.pipeline import Pipeline

    return Pipeline.model_validate({
        "corpus": {"path": db},
        "generate": {"recipe": "atomic10x", "teacher": "smollm2-135m-instruct", "backend": "transformers",
                     "seed": args.seed, "batch_size": 64, "teacher_options": {"batch_size": 32},
                     "recipe_config": {"stage": "inferences", "events_from": "seeds", "seeds": str(heads),
                                       "relations": RELATIONS,
                                       "inference_sampling": {"n": args.samples, "temperature": 1.0, "top_p": 0.9,
                                                              "max_tokens": 16, "stop": ["\n"]}}},
        "critic": {"use": "filter", **{k: v for k, v in CUTS[args.loop_cut].items() if k not in ("critic", "dedup")}},
        "dedup": {"method": "semantic", "threshold": 0.9, "scope": "head-relation"},
        "snapshot": {"name": "loop", "where": GENERATED, "kinds": ["triple"], "split": {"train": 1.0}},
        "student": {"out": tmp / "student-loop", **STUDENT, "max_steps": args.steps},
        # the held-out references are the inputs; `split` names the snapshot's one part only because the pipeline
        # refuses an eval split the snapshot lacks (it is the fallback should the references file be absent)
        "eval": {"references": refs, "relations": RELATIONS, "limit": args.eval_pairs, "critic": "judge",
                 "max_tokens": 16, "teacher": True, "split": "train"},
        "loop": {"rounds": rounds}})


def run_pipeline(p, quiet: bool = True):
    from skd.run import Runner

    runner = Runner(p, say=lambda m: say(m.strip()), quiet=quiet)
    runner.run()
    return runner


def human_corpus(db: Path, own: dict[tuple[str, str], list[str]], tmp: Path) -> str:
    """The distillation heads' human tuples, ingested as items of domain `human` (the COMET baseline's corpus); the
    filter that selects them. By their source, not their domain: a tuple a model also wrote is the same item and
    keeps the domain it was first stored with, and a human baseline that lost it would depend on the loop."""
    import json

    from store import Store, ingest_file

    path = tmp / "human.jsonl"
    path.write_text("".join(json.dumps({"kind": "triple", "head": h, "relation": r, "tail": t, "domain": "human"})
                            + "\n" for (h, r), tails in own.items() for t in tails))
    with Store(db) as s:
        ingest_file(s, path, "jsonl")
    return f"item_id IN (SELECT item_id FROM item_sources WHERE source = '{path}')"


def cut(recall: float, per_relation: bool = False) -> dict:
    """The filter's cut at a recall of its dev labels, deduplicated as the pipeline does."""
    return {"critic": "filter", "threshold_at_recall": recall, "dedup": "semantic", "per_relation": per_relation}


# the filtered students' cuts of the round-1 corpus; the loop's (--loop-cut) is the pipeline's, the others are beside it
CUTS = {"filtered-r0.8": cut(0.8), "filtered-r0.5": cut(0.5), "per-relation-r0.8": cut(0.8, per_relation=True),
        "per-relation-r0.5": cut(0.5, per_relation=True)}


def snapshots(db: Path, where: str, cuts: dict[str, dict]) -> dict[str, int]:
    """Snapshots of the round-1 corpus beside the pipeline's: unfiltered ({}), or a `cut`; kept when a run in the
    same folder cut them before."""
    from corpus import SnapshotRecipe, create_snapshot, snapshot_row
    from store import Store

    out = {}
    with Store(db) as s:
        for name, recipe in cuts.items():
            row = snapshot_row(s, name) if s.snapshots.exists(name) else create_snapshot(
                s, name, SnapshotRecipe(where=where, split={"train": 1.0}, **recipe))
            out[name] = row["funnel"]["snapshot"]
    return out


def better_filter(db: Path, kind: str) -> str:
    """The --better-filter KIND's critic, made unless an earlier run in the folder made it."""
    from critics import CriticConfig, build_ensemble, train_critic
    from store import Store

    name = BETTER[kind]
    with Store(db, read_only=True) as s:
        made, folder = s.critics.exists(name), s.files_dir / "critics" / name
    if made:
        return name
    if kind == "support":
        build_ensemble(db, name, ["filter"], folder, support=SUPPORT_SOURCE)
    elif kind in ("relevance", "pair"):  # the crowd labels say whether a tail is plausible, the swaps whether it fits
        tuned = {"mode": "finetune", "epochs": 1.0} if kind == "relevance" else {"pair": True}  # its head
        train_critic(db, name, CriticConfig(**FILTER | tuned | {"sources": [*FILTER["sources"], RELEVANCE],
                                            "source_weights": {RELEVANCE: 3.0}, "dev_sources": FILTER["sources"]}),
                     folder)
    else:
        train_critic(db, name, CriticConfig(**FILTER | {"mode": "finetune", "epochs": 1.0}), folder)
    return name


def same_size_cut(db: Path, loop_snapshot: str, name: str, critic: str) -> int:
    """CRITIC's cut of the round-1 corpus that keeps as many items as the pipeline's cut (LOOP_SNAPSHOT) before
    dedup, so the students differ in which items they learn from, not in how many (a per-relation cut then keeps
    the same count of every relation)."""
    from corpus import SnapshotRecipe, create_snapshot, snapshot_row
    from critics.score import score_items
    from store import Store

    score_items(db, critic, ROUND_1)
    with Store(db) as s:
        if s.snapshots.exists(name):
            return snapshot_row(s, name)["funnel"]["snapshot"]
        loop = snapshot_row(s, loop_snapshot)
        row = s.critics.get(critic)
        scores = np.sort(s.snapshots.members(snapshot_row(s, "unfiltered")["snapshot_id"], row["critic_id"])
                         ["critic_score"].to_numpy())[::-1]
        keep = loop["funnel"]["passed_critic"]
        say(f"{critic}: dev AUC {row['metrics']['dev']['auc']:.3f}; keeps the {keep} best-scored of {len(scores)} "
            "round-1 items, as the filter's cut does")
        recipe = SnapshotRecipe(where=ROUND_1, split={"train": 1.0}, critic=critic, dedup="semantic",
                                min_score=float(scores[keep - 1]), per_relation=bool(loop["recipe"]["per_relation"]))
        return create_snapshot(s, name, recipe)["funnel"]["snapshot"]


def train_students(db: Path, name: str, steps: int, tmp: Path, seeds: range) -> list[str]:
    """Snapshot NAME's student folders, one per training seed (trained here unless an earlier run in the folder
    did): seed 0 in student-NAME, seed k in student-NAME-sK."""
    import json

    from train import TrainConfig, fit

    out = []
    for seed in seeds:
        started = time.monotonic()
        folder = tmp / (f"student-{name}" + (f"-s{seed}" if seed else ""))
        out.append(str(folder))
        if (folder / "student.json").is_file():  # made by an earlier run in this folder
            continue
        fit(db, TrainConfig(snapshot=name, out=folder, **STUDENT, max_steps=steps, seed=seed))
        card = json.loads((folder / "student.json").read_text())
        say(f"student {name} (seed {seed}): {steps} steps in {time.monotonic() - started:.0f} s, loss "
            f"{card['summary']['first_loss']:.3f} -> {card['summary']['last_loss']:.3f}")
    return out


def evaluate(db: Path, models: dict[str, list[str]], refs: Path, pairs: int
             ) -> tuple[dict[str, dict], dict[str, list[list]]]:
    """Each model's runs (student folders, one per training seed, or `eval:ID` for an evaluation the pipeline
    made) on the held-out pairs, with the pipeline's eval config (the judge, greedy, 16 tokens): the mean of its
    runs' figures, each run's acceptance, and each run's outputs."""
    from corpus.stats import distinct_n
    from skd.wiring import evaluate as run_eval
    from store import Store
    from train.eval_run import EvalConfig
    from train.evaluate import stored_eval

    cfg = EvalConfig(references=refs, relations=RELATIONS, limit=pairs, critic="judge", max_tokens=16)
    rows, samples = {}, {}
    for label, runs in models.items():
        figures = []
        for model in runs:  # a student evaluated before in the folder is not asked again (evaluate_model)
            started = time.monotonic()
            if model.startswith("eval:"):
                with Store(db, read_only=True) as s:
                    r = stored_eval(s, model.removeprefix("eval:"))
            else:
                r = run_eval(db, model, cfg)
            outs = [s["output"] for s in r["samples"]]
            m = r["metrics"]
            figures.append({"n": m["n"], "judge": m["critic"]["acceptance"], "judge_mean": m["critic"]["mean_score"],
                            "rouge_l": m["references"]["rouge_l"], "bleu2": m["references"]["bleu2"],
                            "distinct_2": distinct_n(outs, (2,))["distinct_2"],
                            "unique": len({o.lower() for o in outs}) / max(1, len(outs)),
                            "degenerate": m["degenerate_rate"], "seconds": time.monotonic() - started})
            samples.setdefault(label, []).append(r["samples"])
            say(f"eval {label} ({len(figures)} of {len(runs)}): {figures[-1]}")
        rows[label] = {k: float(np.mean([f[k] for f in figures])) for k in figures[0]} | {
            "n": figures[0]["n"], "by_seed": [f["judge"] for f in figures]}
    return rows, samples


def judged(db: Path, samples: dict[str, list[list]], critic: str) -> dict[str, dict]:
    """Each model's outputs by CRITIC, one by one: per pair, the share of the model's runs (training seeds) whose
    output it accepts, in the evaluation's order of pairs, and the pairs. The evaluation's own judge's scores are
    kept with its outputs; an evaluation stored before they were, and any other critic, scores the outputs here."""
    from skd.wiring import critic_scorer
    from store import Store

    with Store(db, read_only=True) as s:
        score, threshold = critic_scorer(s.critics.get(critic), None)

    def accepted(ss: list[dict]) -> np.ndarray:
        kept = critic == "judge" and all("critic_score" in x for x in ss)
        scores = [x["critic_score"] for x in ss] if kept else score([x["input"] | {"tail": x["output"].strip()}
                                                                     for x in ss])
        return np.asarray(scores) >= threshold

    out = {}
    for label, runs in samples.items():
        pairs = [[(x["input"]["head"], x["input"]["relation"]) for x in ss] for ss in runs]
        if any(p != pairs[0] for p in pairs):
            raise SystemExit(f"{label}: its runs were evaluated on different pairs")
        out[label] = {"accepted": np.mean([accepted(ss) for ss in runs], axis=0), "pairs": pairs[0]}
    return out


def paired(a: dict, b: dict, key: str = "accepted") -> str:
    """A's acceptance (or another per-pair measure, KEY) minus B's on the same pairs, with a paired bootstrap 95%
    interval that resamples held-out heads (a head's relations are not independent draws)."""
    from skd.output import cell
    from train.evaluate import paired_difference

    if a["pairs"] != b["pairs"]:
        raise SystemExit("evaluations on different pairs cannot be compared pair by pair")
    return cell(paired_difference(a[key], b[key], groups=[head_form(h) for h, _ in a["pairs"]]))


def per_relation_table(title: str, judgements: dict[str, dict], paired_with: dict[str, dict] | None = None) -> Table:
    """Acceptance per relation, and (PAIRED_WITH) the difference from those models with its interval."""
    t = Table(title=title, title_justify="left")
    t.add_column("model")
    for col in ["accept.", *(f"vs {b} [95%]" for b in paired_with or {}), *RELATIONS]:
        t.add_column(col, justify="right")
    for label, j in judgements.items():
        rels = np.array([r for _, r in j["pairs"]])
        t.add_row(label, f"{j['accepted'].mean():.3f}",
                  *(paired(j, b) if b is not j else "" for b in (paired_with or {}).values()),
                  *(f"{j['accepted'][rels == rel].mean():.2f} ({(rels == rel).sum()})" for rel in RELATIONS))
    return t


def against_references(samples: dict[str, list[list]], base, keep: Path | None = None) -> Table:
    """No judge: each model's outputs against the held-out human references, pair by pair: ROUGE-L and the MPNet
    cosine to the closest reference (each best over the pair's references, the mean of the model's runs), and the
    differences from BASE(measures) (the teacher, the unfiltered student, ...) with head-level intervals. KEEP: a
    JSON file for the per-pair measures, which --pool reads from several splits' folders."""
    from corpus.embed import load_encoder
    from train.textmetrics import rouge_l

    texts = sorted({x["output"].strip() for runs in samples.values() for ss in runs for x in ss}
                   | {r for runs in samples.values() for ss in runs for x in ss for r in x["references"]})
    enc = load_encoder("all-mpnet-base-v2")
    vec = dict(zip(texts, enc.encode(texts, normalize_embeddings=True, batch_size=128), strict=True))

    def closest(x: dict) -> float:
        return max(float(vec[r] @ vec[x["output"].strip()]) for r in x["references"])
    out = {label: {"pairs": [(x["input"]["head"], x["input"]["relation"]) for x in runs[0]],
                   "rouge_l": np.mean([[rouge_l(x["output"], x["references"]) for x in ss] for ss in runs], axis=0),
                   "cosine": np.mean([[closest(x) for x in ss] for ss in runs], axis=0)}
           for label, runs in samples.items()}
    if keep:  # by the model's label less its corpus size, which differs from split to split
        keep.write_text(json.dumps({re.sub(r" \([\d,]+ (?:items|tuples)\)", "", label): {
            "pairs": m["pairs"], "rouge_l": m["rouge_l"].tolist(), "cosine": m["cosine"].tolist()}
            for label, m in out.items()}))
    return references_table(out, base(out), "No judge: the outputs against the held-out human references, pair by "
                                            "pair (best over each pair's references; MPNet cosine to the closest one)")


def references_table(out: dict[str, dict], bases: dict[str, dict], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("model", "ROUGE-L", *(f"vs {b} [95%]" for b in bases), "ref. cosine",
                *(f"vs {b} [95%]" for b in bases)):
        t.add_column(col, justify="left" if col == "model" else "right")
    for label, m in out.items():
        t.add_row(label, *(v for key in ("rouge_l", "cosine") for v in (
            f"{m[key].mean():.3f}", *(paired(m, b, key) if b is not m else "" for b in bases.values()))))
    return t


def compared_with(by_label: dict[str, dict], round_1: bool) -> dict[str, dict]:
    """What every model is compared with, pair by pair, found by its label: the teacher, the unfiltered student and
    (ROUND_1) the student of the pipeline's own cut."""
    def one(part: str) -> dict:
        return by_label[next(k for k in by_label if part in k)]
    return {"teacher": one("teacher"), "unfiltered": one("unfiltered"), **({"round 1": one("= round 1")}
                                                                           if round_1 else {})}


def pooled(folders: list[Path]) -> None:
    """--pool: the per-pair reference measures of several splits' folders (each kept by a run with --work) as one
    set of pairs: every model's mean over all of them, and its differences with an interval that resamples heads
    across the splits (a head held out in two splits is one draw), so the question "does the student beat its
    teacher" gets one answer from every split at once."""
    kept = [json.loads((f / "references.json").read_text()) for f in folders]
    labels = [k for k in kept[0] if all(k in other for other in kept[1:])]
    out = {label: {"pairs": [tuple(p) for one in kept for p in one[label]["pairs"]],
                   **{key: np.concatenate([one[label][key] for one in kept]) for key in ("rouge_l", "cosine")}}
           for label in labels}
    bases = compared_with(out, any("= round 1" in k for k in labels))
    sizes = " + ".join(str(len(next(iter(one.values()))["pairs"])) for one in kept)
    Console(width=300).print(references_table(out, bases, f"Pooled over {len(folders)} splits ({sizes} held-out "
                                                          "pairs): the outputs against the held-out human references; "
                                                          "intervals resample heads across the splits"))
    print(f"python bench/distill.py --pool {','.join(map(str, folders))}")


def judge_check(db: Path, refs: Path, critics: list[str]) -> Table:
    """How far each critic can be trusted on the evaluation's heads, on labels none trained on: the held-out heads'
    human tails (acceptable) against tail swaps (a human tail of another held-out head with the same relation, not
    one of this pair's: mostly not acceptable), as `skd critic eval NAME --labels held_out.tsv --format atomic2020`
    reads them. AUC overall and per relation, and the share of each its cut accepts. The second and third judges and
    the relevance filter trained on swaps of spare heads, so this task is closer to their training than to the
    first judge's or the filter's."""
    from sklearn.metrics import roc_auc_score

    from skd.wiring import critic_scorer
    from store import Store
    from store.labels import read_judgements

    rows = read_judgements(refs, "atomic2020")[0].to_pylist()
    items = [{k: r[k] for k in ("kind", "head", "relation", "tail")} for r in rows]
    y, rels = np.asarray([r["label"] for r in rows]), np.asarray([x["relation"] for x in items])
    t = Table(title=f"Each critic on the held-out heads' {int(y.sum()):,} human tails against {int((y == 0).sum()):,} "
                    "tail swaps (labels no critic trained on)", title_justify="left")
    for col in ("critic", "dev AUC (own labels)", "AUC", "accepts human", "accepts swaps", *RELATIONS):
        t.add_column(col, justify="left" if col == "critic" else "right")
    with Store(db, read_only=True) as s:
        registered = {name: s.critics.get(name) for name in critics}
    for name, row in registered.items():
        score, threshold = critic_scorer(row, None)
        p = score(items)
        t.add_row(name, f"{row['metrics']['dev']['auc']:.3f}", f"{roc_auc_score(y, p):.3f}",
                  f"{(p[y == 1] >= threshold).mean():.2f}", f"{(p[y == 0] >= threshold).mean():.2f}",
                  *(f"{roc_auc_score(y[rels == r], p[rels == r]):.2f}" for r in RELATIONS))
    return t


def pipeline_evals(runner) -> dict[str, str]:
    """The pipeline's evaluations by what they measured: the teacher, then each round's student."""
    from store import Store

    with Store(runner.db, read_only=True) as s:
        out = {s.evals.get(eval_id)["model"]: f"eval:{eval_id}" for eval_id in runner.eval_ids()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--distil-heads", type=int, default=60)
    ap.add_argument("--eval-pairs", type=int, default=0, help="Held-out pairs to evaluate on (a seeded draw; 0: all).")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loop-cut", choices=list(CUTS), default="per-relation-r0.5",
                    help="The pipeline's critic cut: round 1's student and every self-imitation round's.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-seeds", type=int, default=3,
                    help="Train each student of the round-1 corpus with this many seeds (0, 1, ...) and judge the mean "
                         "of their acceptance per pair: one training run moves acceptance by a few points.")
    ap.add_argument("--seeded", default="unfiltered,per-relation-r0.8,per-relation-r0.5",
                    help="The students --train-seeds applies to (comma-separated; the others train once).")
    ap.add_argument("--work", type=Path, default=None, help="Folder to work in (kept); default: a new temporary one.")
    ap.add_argument("--better-filter", default="",
                    help="Also students of the pipeline's cut made by other filters at the same size, seeded as the "
                         "loop cut is (comma-separated): support (the filter stacked with support in the human "
                         "tuples of the distillation-split heads), finetune (MiniLM fine-tuned on the same labels), "
                         "relevance (the same fine-tune with tail swaps of half the spare heads' human tuples), pair "
                         "(the frozen filter on relevance's labels, with pair features).")
    ap.add_argument("--pool", default="",
                    help="Only pool the reference measures kept in these --work folders (comma-separated), one per "
                         "split, and print them as one set of pairs; runs nothing.")
    ap.add_argument("--references-only", action="store_true",
                    help="Print only the table against the references (and keep it for --pool): no judges.")
    args = ap.parse_args()
    if args.pool:
        return pooled([Path(f) for f in args.pool.split(",")])
    better = [k for k in args.better_filter.split(",") if k]
    if unknown := set(better) - set(BETTER):
        ap.error(f"--better-filter: no filter named {', '.join(sorted(unknown))}")
    if unknown := set(args.seeded.split(",")) - {"unfiltered", *CUTS, "human-tuples"}:
        ap.error(f"--seeded: no student named {', '.join(sorted(unknown))}")
    if not DATA.is_dir():
        sys.exit(f"needs ../shared/data ({DATA})")
    started = time.monotonic()
    tmp = args.work or Path(tempfile.mkdtemp(prefix="skd-distill-"))
    tmp.mkdir(parents=True, exist_ok=True)
    db = tmp / "c.duckdb"
    distil, own, held = split_heads(args.seed)
    # a head spelt like a held-out one ("PersonX gets shot", "PersonX gets the shot") would teach a student (when
    # distilled on), the second judge or the support (when spare) the answer to an evaluation pair: left out
    held_forms = {head_form(h) for h, _ in held}
    eligible = [h for h in distil if head_form(h) not in held_forms]
    heads = sorted(random.Random(args.seed).sample(eligible, min(args.distil_heads, len(eligible))))
    # nor one spelt like a head distilled on, whose tuples the relevance filter would then have seen
    taken = held_forms | {head_form(h) for h in heads}
    spare = {k: v for k, v in own.items() if head_form(k[0]) not in taken}
    # half the spare heads (by a seeded hash of the head) for the judges, half for the relevance filter
    to_filter = {h for h, _ in spare if hashlib.sha256(f"spare:{args.seed}:{head_form(h)}".encode()).digest()[0] % 2}
    spare_filter = {k: v for k, v in spare.items() if k[0] in to_filter}
    spare = {k: v for k, v in spare.items() if k[0] not in to_filter}
    own = {k: v for k, v in own.items() if k[0] in set(heads)}
    refs = tmp / "held_out.tsv"  # the evaluation heads' references, in ATOMIC-2020's format
    for path, tuples in ((refs, held), (tmp / "spare.tsv", spare), (tmp / "spare-filter.tsv", spare_filter),
                         (tmp / "distil-split.tsv", own | spare | spare_filter)):
        path.write_text("".join(f"{h} @@ {r}\t{'| '.join(t)}\n" for (h, r), t in sorted(tuples.items())))
    (tmp / "heads.txt").write_text("\n".join(heads) + "\n")
    say(f"{len(heads)} distillation heads ({sum(len(v) for v in own.values())} human tails), "
        f"{len(held)} held-out (head, relation) pairs; evaluating on {args.eval_pairs or 'all'}; {len(spare)} spare "
        f"pairs for the second and third judges, {len(spare_filter)} for the relevance filter; work in {tmp}")
    crit = critics(db, tmp / "spare.tsv", tmp / "spare-filter.tsv",
                   tmp / "distil-split.tsv" if "support" in better else None)
    say(f"critics: {crit}")
    first = run_pipeline(pipeline(db, tmp, tmp / "heads.txt", refs, args, rounds=1))
    gen = first.summaries["snapshot"]["funnel"]  # the whole round-1 corpus, also when a rerun generated nothing
    say(f"round 1: {first.summaries['snapshot']['funnel']}")
    sizes = snapshots(db, GENERATED, {"unfiltered": {}})
    beside = [name for name in CUTS if name != args.loop_cut]
    sizes |= snapshots(db, ROUND_1, {name: CUTS[name] for name in beside})
    looped = run_pipeline(pipeline(db, tmp, tmp / "heads.txt", refs, args, rounds=args.rounds))
    human = human_corpus(db, own, tmp)  # after the loop: its dedup and snapshots are of the generated corpus only
    sizes |= snapshots(db, human, {"human-tuples": {}})
    seeded = set(args.seeded.split(","))

    def seeds(name: str) -> range:
        return range(args.train_seeds if name in seeded else 1)
    ids = {name: train_students(db, name, args.steps, tmp, seeds(name))
           for name in ["unfiltered", *beside, "human-tuples"]}
    loop_rows = looped.round_rows()
    r1 = loop_rows[0]["snapshot_items"]
    made = pipeline_evals(looped)
    teacher = next(v for k, v in made.items() if k.endswith("(teacher)"))
    round_students = [v for k, v in made.items() if k.endswith("(student)")]  # round 1, 2, ...
    # round 1's student is the loop cut's seed 0; its other seeds train on the pipeline's round-1 snapshot
    loop_snapshot = first.summaries["snapshot"]["snapshot"]
    more = train_students(db, loop_snapshot, args.steps, tmp, seeds(args.loop_cut)[1:])
    for kind in better:  # seeded as the cut it is measured against
        cut_name = f"{kind}-{args.loop_cut}"
        sizes[cut_name] = same_size_cut(db, loop_snapshot, cut_name, better_filter(db, kind))
        ids[cut_name] = train_students(db, cut_name, args.steps, tmp, seeds(args.loop_cut))

    def cut_student(name: str) -> tuple[str, list[str]]:
        if name == args.loop_cut:
            return f"student: {name} = round 1 ({r1:,} items)", [round_students[0], *more]
        return f"student: {name} ({sizes[name]:,} items)", ids[name]
    models = {"teacher (few-shot prompt)": [teacher],
              f"student: unfiltered ({sizes['unfiltered']:,} items)": ids["unfiltered"],
              **dict(map(cut_student, CUTS)),
              f"student: human ({sizes['human-tuples']:,} tuples)": ids["human-tuples"]}
    for kind in better:
        cut_name = f"{kind}-{args.loop_cut}"
        models[f"student: {cut_name}, {BETTER[kind]} ({sizes[cut_name]:,} items)"] = ids[cut_name]
    models |= {f"student: round {row['round']} ({row['snapshot_items']:,} items)": [sid]
               for row, sid in zip(loop_rows[1:], round_students[1:], strict=True)}
    rows, samples = evaluate(db, models, refs, args.eval_pairs)

    def base(j: dict[str, dict]) -> dict[str, dict]:
        return compared_with(j, args.rounds > 1 or bool(better))
    console = Console(width=300)  # the tables are wide: a log or a pipe keeps every column
    if args.references_only:  # minutes where the judges take a quarter of an hour: for --pool on a finished folder
        return console.print(against_references(samples, base, tmp / "references.json"))
    judgements, second, third = (judged(db, samples, c) for c in ("judge", JUDGE_2, JUDGE_3))
    t = Table(title=f"SKD at small scale: SmolLM2-135M teacher and students, {len(heads)} distillation heads, "
                    f"{args.samples} samples per (head, relation), {args.steps} LoRA steps, "
                    f"{args.eval_pairs or len(held)} held-out (head, relation) pairs, greedy"
                    + (f"; by seed: the students trained with {args.train_seeds} seeds, judged by their mean"
                       if args.train_seeds > 1 else ""), title_justify="left")
    for col in ("model", "judge accept.", *(f"vs {b} [95%]" for b in base(judgements)), "by seed", "judge mean",
                "ROUGE-L", "BLEU-2", "distinct-2", "unique", "degen.", "n"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for label, r in rows.items():
        j = judgements[label]
        if abs(j["accepted"].mean() - r["judge"]) > 1e-9:  # judged again as the evaluation judged: should agree
            say(f"warning: {label}: judged again {j['accepted'].mean():.4f}, the evaluation said {r['judge']:.4f}")
        t.add_row(label, f"{r['judge']:.3f}", *(paired(j, b) if b is not j else "" for b in base(judgements).values()),
                  " ".join(f"{a:.3f}" for a in r["by_seed"]) if len(r["by_seed"]) > 1 else "",
                  *(f"{r[k]:.3f}" for k in ("judge_mean", "rouge_l", "bleu2", "distinct_2", "unique", "degenerate")),
                  str(r["n"]))
    console.print(t)
    console.print(per_relation_table("Judge acceptance per relation (the same pairs)", judgements))
    console.print(per_relation_table(f"The second judge ({JUDGE_2}: CKBP v2 experts and human tuples of half the "
                                     "spare heads, HinderedBy included; no label of the filter's), on the same "
                                     "outputs", second,
                                     base(second)))
    console.print(per_relation_table(f"The third judge ({JUDGE_3}: MPNet fine-tuned on the second judge's labels), "
                                     "on the same outputs", third, base(third)))
    console.print(against_references(samples, base, tmp / "references.json"))
    console.print(judge_check(db, refs, ["filter", *(BETTER[k] for k in better), "judge", JUDGE_2, JUDGE_3]))
    from skd.cmd_run import rounds_table

    console.print(rounds_table(loop_rows))
    print(f"critics: filter dev AUC {crit['filter_dev_auc']:.3f} (MiniLM, CKBP v1), judge dev AUC "
          f"{crit['judge_dev_auc']:.3f} (MPNet, CKBP v1 + v2), second judge dev AUC "
          f"{crit[JUDGE_2 + '_dev_auc']:.3f} (MPNet, CKBP v2 + half the spare heads' ATOMIC-2020 tuples), third "
          f"judge dev AUC "
          f"{crit[JUDGE_3 + '_dev_auc']:.3f} (MPNet fine-tuned, the same labels); teacher parse rate "
          f"{gen['parsed'] / max(1, gen['completions']):.1%} of {gen['completions']:,} completions; "
          f"this invocation {(time.monotonic() - started) / 60:.1f} min (less when --work held earlier work)")
    print(f"python bench/distill.py --distil-heads {args.distil_heads} --eval-pairs {args.eval_pairs} "
          f"--samples {args.samples} --steps {args.steps} --rounds {args.rounds} --loop-cut {args.loop_cut} "
          f"--seed {args.seed} --train-seeds {args.train_seeds} --seeded {args.seeded}"
          + (f" --better-filter {args.better_filter}" if better else ""))


if __name__ == "__main__":
    main()
