"""Critic quality on human labels (../shared/data), measured so it cannot flatter: k-fold cross-validation
grouped by head (or question) over the expert labels, each fold's critic trained on every other label except
those of its held-out heads (critics.crossval). Prints one row per attempt, with its training time on this
machine, including the attempts that did not help.

- Triples (CKBP v2 expert dev, 958 labels, 22% plausible): sources CKBP v1 crowd (31,731), the expert folds,
  ATOMIC-2020 human tuples with tail-swapped negatives. AUC per CKBP class (test_set, all_head, cs_head, adv).
- Rationales: CommonsenseQA explanation acceptability (crowd majority), folds by question; GPT-3's own
  normalised NLL as the baseline score, and each attempt stacked with that NLL (the teacher's own likelihood), then
  with sibling agreement too (critics.agreement: how close each explanation is to another of GPT-3's five samples
  for its question, under MPNet). Beside those two, five signals from the explanation's surface (whether it names
  a wrong choice, its length, ...), each stacked with them: measured, none kept. And what the labels allow
  (critics.annotators, `skd labels agreement`): how well two annotators predict the third, and the ceiling on any
  critic of the 2-of-3 majority; each attempt's best stack is scored against one annotator's vote as well.
  "best of N" (critics.metrics.selection): the share of questions whose top-scored explanation of five is
  acceptable, the choice a rationale corpus makes and the accuracy Wiegreffe et al.'s filters report.

    python bench/critic_quality.py --task ckbp --attempts minilm-emb,mpnet-emb --folds 5
    python bench/critic_quality.py --task ckbp --attempts mpnet-ft --out kept/   # keep out-of-fold scores
    python bench/critic_quality.py --task ckbp --attempts none --load kept/*.json  # ensemble kept attempts
    python bench/critic_quality.py --task built   # the rationale stacks as `skd critic ensemble` builds them
    python bench/critic_quality.py --task built-ckbp   # CKBP support (`--support atomic2020`), built

The CKBP stacks are also shown with support (critics.support: each triple's closest ATOMIC-2020 human tail of its
relation), the rationale ones with sibling agreement (critics.agreement).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table
from sklearn.metrics import average_precision_score, roc_auc_score

from critics.agreement import Encoder
from critics.annotators import against_one_annotator, annotator_agreement
from critics.config import CriticConfig
from critics.crossval import cross_validate, grouped_folds, summaries
from critics.ensemble import build_ensemble
from critics.metrics import selection
from critics.model import load_critic, score_rows
from critics.stack import apply_stack, features, fit_stack
from critics.support import Support
from critics.train import group_key, load_labels, train_critic
from skd.output import cell
from store import MINILM, Store, import_labels, sibling_key
from store.models import GEMMA, MPNET, SMOLLM2

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
CROWD, EXPERT, ATOMIC = "ckbp1", "ckbp2", "atomic2020"
CSQA, SWAP = "csqa", "csqa-swap"  # the rationale judgements, and hard negatives made from them (answer_swaps)
TUNE = {"mode": "finetune", "epochs": 1, "lr": 5e-5, "batch_size": 32, "eval_steps": 200, "patience": 3}
# name: (what it is, config, label sources it trains on, source weights)
CKBP_ATTEMPTS = {
    "minilm-emb-crowd": ("MiniLM frozen + logistic head, crowd only", {"mode": "embedding", "base": MINILM},
                         [CROWD], {}),
    "minilm-emb": ("MiniLM frozen + head, crowd + expert folds (x3)", {"mode": "embedding", "base": MINILM},
                   [CROWD, EXPERT], {EXPERT: 3.0}),
    "mpnet-emb": ("MPNet frozen + head, crowd + expert folds (x3)", {"mode": "embedding", "base": MPNET},
                  [CROWD, EXPERT], {EXPERT: 3.0}),
    "mpnet-emb-atomic": ("MPNet frozen + head, + ATOMIC-2020 positives/swaps", {"mode": "embedding", "base": MPNET},
                         [CROWD, EXPERT, ATOMIC], {EXPERT: 3.0}),
    "minilm-emb-pair": ("`minilm-emb` with pair features (`--pair`: head and tail embedded apart too)",
                        {"mode": "embedding", "base": MINILM, "pair": True}, [CROWD, EXPERT], {EXPERT: 3.0}),
    "mpnet-emb-pair": ("`mpnet-emb` with pair features", {"mode": "embedding", "base": MPNET, "pair": True},
                       [CROWD, EXPERT], {EXPERT: 3.0}),
    "mpnet-emb-atomic-pair": ("`mpnet-emb-atomic` with pair features",
                              {"mode": "embedding", "base": MPNET, "pair": True}, [CROWD, EXPERT, ATOMIC],
                              {EXPERT: 3.0}),
    "minilm-ft": ("MiniLM fine-tuned, crowd + expert folds (x3)", TUNE | {"base": MINILM}, [CROWD, EXPERT],
                  {EXPERT: 3.0}),
    "mpnet-ft": ("MPNet fine-tuned, crowd + expert folds (x3)", TUNE | {"base": MPNET}, [CROWD, EXPERT],
                 {EXPERT: 3.0}),
    "minilm-ft-devexpert": ("MiniLM fine-tuned, crowd + expert folds (x3), dev from the expert folds",
                            TUNE | {"base": MINILM, "dev_sources": [EXPERT]}, [CROWD, EXPERT], {EXPERT: 3.0}),
    "mpnet-ft-devexpert": ("MPNet fine-tuned, crowd + expert folds (x3), dev from the expert folds",
                           TUNE | {"base": MPNET, "dev_sources": [EXPERT]}, [CROWD, EXPERT], {EXPERT: 3.0}),
    "mpnet-ft-expert": ("MPNet fine-tuned, expert folds only", TUNE | {"base": MPNET, "epochs": 4, "eval_steps": 20},
                        [EXPERT], {}),
    "minilm-ft-expert": ("MiniLM fine-tuned, expert folds only",
                         TUNE | {"base": MINILM, "epochs": 4, "eval_steps": 20}, [EXPERT], {}),
    "smollm2-likelihood": ("SmolLM2-135M likelihood of the tail given head and relation (no training)",
                           {"mode": "likelihood"}, [CROWD, EXPERT], {}),
    "gemma-emb-pair": ("EmbeddingGemma-300M frozen + head, pair features, crowd + expert folds (x3)",
                       {"mode": "embedding", "base": GEMMA, "pair": True}, [CROWD, EXPERT], {EXPERT: 3.0}),
    "gemma-ft": ("EmbeddingGemma-300M fine-tuned, token embeddings frozen, crowd + expert folds (x3)",
                 TUNE | {"base": GEMMA, "lr": 2e-5, "freeze_embeddings": True}, [CROWD, EXPERT], {EXPERT: 3.0}),
}
RATIONALE_ATTEMPTS = {
    "minilm-emb": ("MiniLM frozen + head", {"mode": "embedding", "base": MINILM}),
    "mpnet-emb": ("MPNet frozen + head", {"mode": "embedding", "base": MPNET}),
    "minilm-emb-pair": ("MiniLM frozen + head, pair features (question and answer, explanation apart too)",
                        {"mode": "embedding", "base": MINILM, "pair": True}),
    "mpnet-emb-pair": ("MPNet frozen + head, pair features", {"mode": "embedding", "base": MPNET, "pair": True}),
    "gemma-emb": ("EmbeddingGemma-300M frozen + head", {"mode": "embedding", "base": GEMMA}),
    "gemma-emb-pair": ("EmbeddingGemma-300M frozen + head, pair features",
                       {"mode": "embedding", "base": GEMMA, "pair": True}),
    "minilm-ft": ("MiniLM fine-tuned", TUNE | {"base": MINILM, "epochs": 3, "eval_steps": 100}),
    "mpnet-ft": ("MPNet fine-tuned", TUNE | {"base": MPNET, "epochs": 2, "eval_steps": 100}),
    "mpnet-ft-lr2e-5": ("MPNet fine-tuned, learning rate 2e-5",
                        TUNE | {"base": MPNET, "epochs": 2, "eval_steps": 100, "lr": 2e-5}),
    "gemma-ft-soft": ("EmbeddingGemma-300M fine-tuned toward the vote share, token embeddings frozen",
                      TUNE | {"base": GEMMA, "epochs": 2, "eval_steps": 100, "lr": 2e-5, "soft_labels": True,
                              "freeze_embeddings": True}),
    "smollm2-likelihood": ("SmolLM2-135M likelihood of the explanation given question and answer (no training)",
                           {"mode": "likelihood"}),
    "minilm-emb-soft": ("MiniLM frozen + head, trained toward the vote share",
                        {"mode": "embedding", "base": MINILM, "soft_labels": True}),
    "minilm-ft-soft": ("MiniLM fine-tuned toward the vote share (`--soft-labels`)",
                       TUNE | {"base": MINILM, "epochs": 3, "eval_steps": 100, "soft_labels": True}),
    "mpnet-ft-lr2e-5-soft": ("MPNet fine-tuned, learning rate 2e-5, toward the vote share",
                             TUNE | {"base": MPNET, "epochs": 2, "eval_steps": 100, "lr": 2e-5, "soft_labels": True}),
    "minilm-ft-soft-rank": ("`minilm-ft-soft` plus a ranking loss among each question's explanations "
                            "(`--rank-weight 1`)",
                            TUNE | {"base": MINILM, "epochs": 3, "eval_steps": 100, "soft_labels": True,
                                    "rank_weight": 1.0}),
    "smollm2-ft": ("SmolLM2-135M fine-tuned as a classifier (its last token), toward the vote share",
                   TUNE | {"base": SMOLLM2, "epochs": 2, "eval_steps": 50, "lr": 3e-5, "soft_labels": True}),
    "minilm-ft-soft-swap": ("`minilm-ft-soft` plus hard negatives: each accepted explanation given for a wrong choice",
                            TUNE | {"base": MINILM, "epochs": 3, "eval_steps": 100, "soft_labels": True,
                                    "sources": [CSQA, SWAP], "dev_sources": [CSQA]}),
    **{f"minilm-ft-soft-seed{k}": (f"`minilm-ft-soft` with seed {k} (its own dev split and order; the same folds)",
                                   TUNE | {"base": MINILM, "epochs": 3, "eval_steps": 100, "soft_labels": True,
                                           "seed": k}) for k in (1, 2)},
}


def progress(name: str):
    return lambda k, s, kept: print(f"  {name} fold {k}: {s:.0f} s" + (" (kept)" if kept else ""), flush=True)


def bootstrap_aucs(scores: np.ndarray, labels: np.ndarray, draws: int = 2000) -> np.ndarray:
    """The AUC on each of DRAWS resamples of the labels, the same resamples (seeded) for every scorer, so two
    scorers' AUCs can be compared draw by draw."""
    rng, n = np.random.default_rng(0), len(labels)
    return np.asarray([roc_auc_score(labels[i], scores[i]) if labels[i].min() != labels[i].max() else np.nan
                       for i in (rng.integers(0, n, n) for _ in range(draws))])


def auc_interval(scores: np.ndarray, labels: np.ndarray) -> str:
    """A 95% bootstrap interval of the AUC over the labels: with about 200 positives among 958 labels, AUCs a few
    points apart are not told apart, and the table should say so."""
    lo, hi = np.nanpercentile(bootstrap_aucs(scores, labels), [2.5, 97.5])
    return f"[{lo:.3f}, {hi:.3f}]"


def auc_gain(table: Table, task: str, what: str, a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> None:
    """A's AUC minus B's on the same labels, with a paired bootstrap 95% interval (both scored on each resample)."""
    lo, hi = np.nanpercentile(bootstrap_aucs(a, labels) - bootstrap_aucs(b, labels), [2.5, 97.5])
    gain = roc_auc_score(labels, a) - roc_auc_score(labels, b)
    table.add_row("", f"  {what} (paired)", f"{gain:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]", "", "", "", "", "")
    print("row:", task, what, f"{gain:+.4f} [{lo:+.4f}, {hi:+.4f}]", flush=True)


def row(table: Table, task: str, name: str, res: dict, seconds: float, scores: list[float] | np.ndarray,
        labels: list[int] | np.ndarray) -> None:
    o, chosen = res["overall"], res.get("selection")
    table.add_row(task, name, f"{o['auc']:.3f}", auc_interval(np.asarray(scores), np.asarray(labels)),
                  f"{o['average_precision']:.3f}", cell(chosen and chosen["top"]), f"{o['calibration_error']:.3f}",
                  f"{o['n']:,}", f"{seconds / 60:.1f} min")
    for g, m in (res.get("by") or {}).items():
        table.add_row("", f"  class {g}", f"{m['auc']:.3f}" if m["auc"] is not None else "-", "",
                      f"{m['average_precision']:.3f}" if m["average_precision"] is not None else "-", "", "",
                      f"{m['n']}", "")
    print("row:", task, name, {k: round(v, 4) if isinstance(v, float) else v for k, v in o.items()},
          {g: round(m["auc"] or 0, 4) for g, m in (res.get("by") or {}).items()}, f"{seconds:.0f}s",
          f"best of N {cell(chosen and chosen['top'])}", flush=True)


def out_of_fold_stack(x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """The product's stack (critics.stack, what `skd critic ensemble --combine stack [--teacher-nll]` fits on dev)
    over the columns of X, each fold scored by a fit on the other folds: a combination learnt from the labels that
    stays out-of-fold (the folds are grouped, so no head is on both sides)."""
    oof = np.zeros(len(y))
    for k in np.unique(fold):
        oof[fold == k] = apply_stack(x[fold == k], fit_stack(x[fold != k], y[fold != k]))
    return oof


def ensemble(table: Table, task: str, runs: dict[str, dict], extras: list[tuple[str, list[np.ndarray]]] = (),
             prompts: list[str | None] | None = None) -> None:
    """The attempts combined, two ways: the mean of their calibrated out-of-fold scores, and a logistic
    regression over their logits fitted on the other folds. The folds are the same (seeded, grouped), so both are
    out-of-fold too, and say whether an ensemble of critics would be worth building. Stacking matters when a
    critic's calibration is off on these labels (one calibrated on a crowd-heavy dev split), which a mean cannot
    correct. Then the stack with each of EXTRAS, (what, columns): signals besides the critics (the teacher's NLL,
    sibling agreement, support), each with its paired gain over the stack without them."""
    if len(runs) < 2:
        return
    first = next(iter(runs.values()))  # every run has the same labels in the same order and the same folds
    y, groups, seconds = np.asarray(first["labels"]), first.get("groups"), sum(r["seconds"] for r in runs.values())
    assert all(r["labels"] == first["labels"] and r["fold"] == first["fold"] for r in runs.values()), "other folds"
    best = max(runs, key=lambda name: runs[name]["overall"]["auc"])
    mean = np.mean([r["scores"] for r in runs.values()], axis=0)
    x = features([np.asarray(r["scores"]) for r in runs.values()])
    fold = np.asarray(first["fold"])
    plain = out_of_fold_stack(x, y, fold)
    for how, scores in [("mean of", mean), ("stacked", plain)]:
        summary = summaries(scores, y, groups, prompts)
        row(table, task, f"ensemble: {how} {', '.join(runs)}", summary, seconds, scores, y)
        auc_gain(table, task, f"vs {best} alone", scores, np.asarray(runs[best]["scores"]), y)
    for what, cols in extras:
        scores = out_of_fold_stack(np.column_stack([x, *cols]), y, fold)
        summary = summaries(scores, y, groups, prompts)
        row(table, task, f"ensemble: stacked with {what}, {', '.join(runs)}", summary, seconds, scores, y)
        auc_gain(table, task, "vs the same stack without", scores, plain, y)


def stacked(table: Table, task: str, name: str, run: dict, teacher_nll: np.ndarray, agree: np.ndarray,
            prompts: list[str | None], votes: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """The attempt's out-of-fold score beside the teacher's own normalised NLL in a logistic regression, fitted on
    the other folds of the same grouped split (so still out-of-fold): what a critic would gain by also reading the
    likelihood the teacher gave its output (skd records it: `generations.logprob`, `n_tokens`); then with sibling
    agreement too (`skd critic ensemble --teacher-nll --agreement`). With VOTES (positive, total per label), that
    stack is also scored against one annotator's vote, as the annotators are in `annotator_rows`."""
    y, fold = np.asarray(run["labels"]), np.asarray(run["fold"])
    nll = out_of_fold_stack(features([np.asarray(run["scores"])], teacher_nll), y, fold)
    row(table, task, f"{name} + GPT-3's own NLL, stacked", summaries(nll, y, None, prompts), run["seconds"], nll, y)
    auc_gain(table, task, f"vs {name} alone", nll, np.asarray(run["scores"]), y)
    both = out_of_fold_stack(features([np.asarray(run["scores"])], teacher_nll, agree), y, fold)
    row(table, task, f"{name} + NLL + sibling agreement, stacked", summaries(both, y, None, prompts), run["seconds"],
        both, y)
    auc_gain(table, task, "vs the same with NLL only", both, nll, y)
    if votes is not None:
        table.add_row(task, "  the same, against one annotator's vote", cell(against_one_annotator(both, *votes)),
                      "", "", "", "", f"{int(votes[1].sum()):,}", "")


def keep(out: Path | None, task: str, name: str, run: dict) -> None:
    """Write an attempt's out-of-fold scores, so a later run can ensemble with it (`--load`) without retraining."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{task}-{name}.json").write_text(json.dumps(run))


def folds_kept(out: Path | None, task: str, name: str) -> Path | None:
    """Where an attempt's folds are kept as each finishes (beside its --out file), so a stopped run of a
    fine-tune attempt (hours on a CPU) resumes from its finished folds when run again with the same --out."""
    return out / f"{task}-{name}.folds" if out is not None else None


def loaded(paths: list[Path], task: str, table: Table, title: str,
           prompts: list[str | None] | None = None) -> dict[str, dict]:
    """Attempts kept by an earlier run (`--out`) of the same task, shown again and joining this run's ensemble (the
    choice among each prompt's outputs computed again where one kept before it was measured lacks it)."""
    runs = {}
    for p in paths:
        if p.name.startswith(f"{task}-") and p.suffix == ".json":  # not a kept attempt's folds (TASK-NAME.folds/)
            name = p.stem.removeprefix(f"{task}-") + " (kept)"
            runs[name] = run = json.loads(p.read_text())
            if prompts is not None and "selection" not in run:
                run["selection"] = selection(run["scores"], run["labels"], prompts)
            row(table, title, name, run, run["seconds"], run["scores"], run["labels"])
    return runs


def import_ckbp(db: Path) -> Path:
    """A corpus at DB with the three CKBP label sources: the crowd, the experts and ATOMIC-2020's human tuples."""
    with Store(db) as s:
        import_labels(s, DATA / "ckbp/ckbp1_crowd.csv", "ckbp", source=CROWD)
        import_labels(s, DATA / "ckbp/ckbp2_dev.csv", "ckbp", source=EXPERT)
        import_labels(s, DATA / "atomic2020/human_tuples.tsv", "atomic2020", source=ATOMIC)
    return db


def ckbp(attempts: list[str], folds: int, tmp: Path, table: Table, out: Path | None = None,
         load: list[Path] = (), encoder: str = MPNET) -> None:
    db = import_ckbp(tmp / "ckbp.duckdb")
    task = f"CKBP v2 expert, {folds}-fold by head"
    runs = loaded(list(load), "ckbp", table, task)
    for name in attempts:
        what, cfg, sources, weights = CKBP_ATTEMPTS[name]
        res = cross_validate(db, CriticConfig(**cfg, sources=sources, source_weights=weights), EXPERT, folds,
                             by="class", on_fold=progress(name), keep=folds_kept(out, "ckbp", name))
        runs[name] = res  # its seconds: the folds' training and scoring, kept folds' included
        keep(out, "ckbp", name, runs[name])
        row(table, task, f"{name}: {what}", res, runs[name]["seconds"], res["scores"], res["labels"])
    ensemble(table, task, runs, [(f"support in ATOMIC-2020 ({encoder})",
                                  [support_of_expert(db, table, task, encoder)])])


def support_of_expert(db: Path, table: Table, task: str, encoder: str = MPNET) -> np.ndarray:
    """Each expert triple's support (critics.support) in ATOMIC-2020's human-written tuples, as `skd critic ensemble
    --support atomic2020 --encoder ENCODER` computes it: the closest human tail of its relation. In cross_validate's
    order of the expert labels; a row of its own as a score."""
    with Store(db, read_only=True) as s:
        df = load_labels(s, None)
    started, enc = time.perf_counter(), Encoder(encoder)
    pool = Support.from_labels(df.filter(pl.col("source") == ATOMIC).to_dicts(), ATOMIC, enc.encode)
    ev = df.filter(pl.col("source") == EXPERT)
    support = pool(ev.to_dicts(), enc.encode)
    assert not np.isnan(support).any(), "ATOMIC-2020 has human tails for every CKBP relation"
    y, groups = ev["label"].to_numpy(), [json.loads(e or "{}").get("class") for e in ev["extra"].to_list()]
    row(table, task, f"support: {encoder} cosine of the tail to the closest ATOMIC-2020 human tail of its relation "
        "(no labels)", summaries(support, y, groups), time.perf_counter() - started, support, y)
    return support


def rationale(attempts: list[str], folds: int, tmp: Path, table: Table, out: Path | None = None,
              load: list[Path] = (), encoder: str = MPNET) -> None:
    db = tmp / "rat.duckdb"
    with Store(db) as s:
        import_labels(s, DATA / "rationale_acceptability/commonsenseqa_train.csv", "rationale-acceptability",
                      source=CSQA)
        df = load_labels(s, None, [CSQA], siblings=True)  # the order cross_validate reads them in
        swaps = tmp / "swaps.jsonl"
        swaps.write_text("".join(json.dumps(r) + "\n" for r in answer_swaps(df)))
        import_labels(s, swaps, "jsonl", source=SWAP)  # trains only the attempts that name it
    y = df["label"].to_numpy()
    nll = -np.asarray([float(json.loads(e)["nll"]) for e in df["extra"].to_list()])
    started = time.perf_counter()
    agree = Encoder(encoder).agreement(df.to_dicts())
    assert not np.isnan(agree).any(), "every explanation here has four siblings: the stacks below need them all"
    took = f"{time.perf_counter() - started:.0f} s to score"
    fold = grouped_folds([group_key(r) for r in df.iter_rows(named=True)], folds, 0)  # cross_validate's folds
    both = out_of_fold_stack(np.column_stack([nll, agree]), y, fold)
    prompts = [sibling_key(r) for r in df.iter_rows(named=True)]
    chance = selection(nll, y, prompts)  # its random and oracle shares are the labels', whatever the scores
    table.add_row("CSQA rationales", "best of N: a pick at random (expected) / the best pick (a question with any "
                  "acceptable explanation)", "", "", "", f"{chance['random']:.3f} / {chance['oracle']:.3f}", "",
                  f"{chance['prompts']:,} questions", "")
    for what, score, spent in (("GPT-3 normalised NLL (baseline, no training)", nll, ""),
                               (f"sibling agreement: {encoder} cosine to the closest other sample (no labels)",
                                agree, took),
                               ("GPT-3's NLL + sibling agreement, stacked (no critic)", both, took)):
        table.add_row("CSQA rationales", what, f"{roc_auc_score(y, score):.3f}", auc_interval(score, y),
                      f"{average_precision_score(y, score):.3f}", cell(selection(score, y, prompts)["top"]), "-",
                      f"{len(y):,}", spent)
    surface_signals(table, df, y, fold, nll, agree, both, prompts)
    votes = (df["votes_pos"].to_numpy(), df["votes_total"].to_numpy())
    annotator_rows(table, *votes)
    task = f"CSQA rationales, {folds}-fold by question"
    runs = loaded(list(load), "rationale", table, task, prompts)
    for name in attempts:
        what, cfg = RATIONALE_ATTEMPTS[name]
        res = cross_validate(db, CriticConfig(**{"sources": [CSQA]} | cfg), CSQA, folds, by=None,
                             on_fold=progress(name), keep=folds_kept(out, "rationale", name))
        runs[name] = res  # its seconds: the folds' training and scoring, kept folds' included
        keep(out, "rationale", name, runs[name])
        row(table, task, f"{name}: {what}", res, runs[name]["seconds"], res["scores"], res["labels"])
    for name, run in runs.items():  # this run's attempts and kept ones alike: the NLL must be of the same labels
        assert run["labels"] == y.tolist(), f"{name}: labels out of the order cross_validate read them in"
        stacked(table, task, name, run, nll, agree, prompts, votes)
    ensemble(table, task, runs, [("GPT-3's own NLL", [nll]), ("GPT-3's NLL and sibling agreement", [nll, agree])],
             prompts)


def annotator_rows(table: Table, pos: np.ndarray, total: np.ndarray) -> None:
    """What the labels allow (`skd labels agreement`): how well the other annotators' share predicts a held-out
    annotator's vote, and the ceiling on any critic of the majority label (a beta-binomial fitted to the votes)."""
    r = annotator_agreement(pos, total)
    table.add_row("CSQA rationales", f"annotators: the others' share against one annotator's vote (Fleiss' kappa "
                  f"{cell(r['fleiss_kappa'])})", cell(r["held_out_auc"]), "", cell(r["held_out_ap"]), "", "-",
                  f"{r['votes']:,}", "")
    table.add_row("CSQA rationales", f"ceiling: a critic that knew each explanation's chance of acceptance "
                  f"(beta-binomial a={r['beta'][0]:.2f}, b={r['beta'][1]:.2f}, fit distance {r['fit_distance']:.3f})",
                  cell(r["ceiling_auc"]), "", cell(r["ceiling_ap"]), "", "-", f"{r['items']:,}", "")
    print("row: annotators", r, flush=True)


def answer_swaps(df: pl.DataFrame) -> list[dict]:
    """Hard negatives that need no annotator: each explanation the majority accepted, given for a wrong choice of
    its question (seeded by the explanation) and labelled unacceptable, since it no longer supports the answer it
    is given for. They teach a critic to read the answer, which acceptability (does it justify *this* answer)
    depends on; whether that helps rank GPT-3's explanations of the gold answer is what the attempt measures."""
    out = []
    for r in df.filter(pl.col("label") == 1).iter_rows(named=True):
        choices = choice_list(json.loads(r["extra"])["choices"])
        wrong = [c for c in choices if c.lower() != (r["answer"] or "").lower()]
        if len(wrong) == len(choices) - 1 and wrong:
            pick = int(hashlib.sha256(r["rationale"].encode()).hexdigest()[:8], 16) % len(wrong)
            out.append({"kind": "rationale", "question": r["question"], "answer": wrong[pick],
                        "rationale": r["rationale"], "label": 0})
    return out


def choice_list(text: str) -> list[str]:
    """'a, b, c, d, or e' (the crowd file's answer choices) as its five choices."""
    return [c.strip() for c in re.split(r",\s*(?:or\s+)?", text or "")]


def surface_signals(table: Table, df: pl.DataFrame, y: np.ndarray, fold: np.ndarray, nll: np.ndarray,
                    agree: np.ndarray, both: np.ndarray, prompts: list[str | None]) -> None:
    """Signals an explanation's surface gives without any model, each stacked (out of fold) with GPT-3's NLL and
    sibling agreement: tried as cheaper routes to what a critic reads, none kept (README, Benchmarks). Whether it
    names a wrong choice, whether it was GPT-3's greedy sample (the file's `source_sample`), its length, whether it
    names the gold answer, and its NLL against the mean of its question's five (a sample's likelihood among its
    siblings)."""
    rows, extra = df.to_dicts(), [json.loads(e) for e in df["extra"].to_list()]
    said, gold = [r["rationale"].lower() for r in rows], [(r["answer"] or "").lower() for r in rows]
    wrong = [[c for c in choice_list((e.get("choices") or "").lower()) if c != g]
             for e, g in zip(extra, gold, strict=True)]
    base = np.column_stack([nll, agree])
    question = np.unique([group_key(r) for r in rows], return_inverse=True)[1]
    signals = {
        "names a wrong choice (count)": [sum(c in s for c in w) for s, w in zip(said, wrong, strict=True)],
        "GPT-3's greedy sample (not one of its four sampled)": [e.get("sample") == "greedy" for e in extra],
        "length (log words)": np.log([len(s.split()) for s in said]),
        "names the gold answer": [g in s for s, g in zip(said, gold, strict=True)],
        "NLL minus its question's mean": nll - (np.bincount(question, nll) / np.bincount(question))[question],
    }
    cols = []
    for what, signal in signals.items():
        col = np.asarray(signal, dtype=np.float64)
        cols.append(col)
        scores = out_of_fold_stack(np.column_stack([base, col]), y, fold)
        row(table, "CSQA rationales", f"NLL + agreement + {what}, stacked (alone: AUC "
            f"{roc_auc_score(y, col):.3f})", summaries(scores, y, None, prompts), 0.0, scores, y)
        auc_gain(table, "CSQA rationales", "vs NLL + agreement", scores, both, y)
    scores = out_of_fold_stack(np.column_stack([base, *cols]), y, fold)
    row(table, "CSQA rationales", "NLL + agreement + all five surface signals, stacked",
        summaries(scores, y, None, prompts), 0.0, scores, y)
    auc_gain(table, "CSQA rationales", "vs NLL + agreement", scores, both, y)


def built(tmp: Path, folds: int, table: Table) -> None:
    """The rationale stacks as the product builds them, out of fold: per fold, `skd critic train` (MiniLM fine-tune
    and SmolLM2 likelihood) on the other folds' questions, then `skd critic ensemble --teacher-nll` (with and
    without `--agreement`) and `--combine stack` fitted on the fine-tune's own dev split (not on the other folds,
    as the rows above), each scoring the held-out questions through `critics.model.score_rows`, as `skd critic
    score` does."""
    db = tmp / "built.duckdb"
    with Store(db) as s:
        import_labels(s, DATA / "rationale_acceptability/commonsenseqa_train.csv", "rationale-acceptability",
                      source=CSQA)
        df = load_labels(s, None, teacher_nll=True, siblings=True)
    fold = grouped_folds([group_key(r) for r in df.iter_rows(named=True)], folds, 0)  # cross_validate's folds
    names = {"ft": "`minilm-ft`, trained by `skd critic train`", "nll": "+ `--teacher-nll` (GPT-3's NLL), built",
             "agree": "+ `--teacher-nll --agreement` (MPNet), built",
             "lik": "+ `smollm2-likelihood`, `--combine stack`, built"}
    oof, seconds = {n: np.zeros(df.height) for n in names}, dict.fromkeys(names, 0.0)
    for k in range(folds):
        held = df.filter(pl.Series(fold == k))
        for name, path, took in build_fold(db, tmp, k, f"item_id NOT IN ({', '.join(map(repr, held['item_id']))})"):
            oof[name][fold == k] = score_rows(load_critic(path), held.to_dicts())
            seconds[name] += took
        print(f"  built fold {k}: {sum(seconds.values()):.0f} s", flush=True)
    y, prompts = df["label"].to_numpy(), [sibling_key(r) for r in df.iter_rows(named=True)]
    for name, what in names.items():
        total = seconds["ft"] + (seconds[name] if name != "ft" else 0)
        row(table, f"CSQA rationales, {folds}-fold by question", what, summaries(oof[name], y, None, prompts), total,
            oof[name], y)
        if name != "ft":
            auc_gain(table, "CSQA rationales", "vs `minilm-ft` alone", oof[name], oof["ft"], y)


def build_fold(db: Path, tmp: Path, k: int, where: str):
    """(name, artifact, seconds) of each critic built on the labels matching WHERE, in order."""
    started = time.perf_counter()
    train_critic(db, f"ft{k}", CriticConfig(**RATIONALE_ATTEMPTS["minilm-ft"][1], labels_where=where), tmp / f"ft{k}")
    yield "ft", tmp / f"ft{k}", time.perf_counter() - started
    started = time.perf_counter()
    build_ensemble(db, f"nll{k}", [f"ft{k}"], tmp / f"nll{k}", teacher_nll=True)
    yield "nll", tmp / f"nll{k}", time.perf_counter() - started
    started = time.perf_counter()
    build_ensemble(db, f"agree{k}", [f"ft{k}"], tmp / f"agree{k}", teacher_nll=True, agreement=True)
    yield "agree", tmp / f"agree{k}", time.perf_counter() - started
    started = time.perf_counter()
    train_critic(db, f"l{k}", CriticConfig(mode="likelihood", labels_where=where), tmp / f"l{k}")
    build_ensemble(db, f"lik{k}", [f"ft{k}", f"l{k}"], tmp / f"lik{k}", combine="stack")
    yield "lik", tmp / f"lik{k}", time.perf_counter() - started


# the ensembles built_ckbp builds of its two critics ("emb", "ft"): name: (members, support source)
BUILT_CKBP_ENSEMBLES = {"emb+sup": (["emb"], ATOMIC), "ft+sup": (["ft"], ATOMIC), "two": (["emb", "ft"], None),
                        "two+sup": (["emb", "ft"], ATOMIC)}


def built_ckbp(tmp: Path, folds: int, table: Table) -> None:
    """CKBP support as the product builds it, out of fold over the expert heads (cross_validate's folds): per fold,
    `skd critic train` of `mpnet-emb` and `minilm-ft-devexpert` (crowd and the other folds' expert labels, x3, dev
    from the expert folds, every label of a held-out head left out), then `skd critic ensemble --support
    atomic2020` of each, and of both (`--combine stack`, with and without support), fitted on the members' expert
    dev split, each scoring the held-out expert triples through `critics.model.score_rows`."""
    db = import_ckbp(tmp / "built-ckbp.duckdb")
    with Store(db, read_only=True) as s:
        df = load_labels(s, None)
    ev = df.filter(pl.col("source") == EXPERT)
    keys, every = [group_key(r) for r in ev.iter_rows(named=True)], [group_key(r) for r in df.iter_rows(named=True)]
    fold = grouped_folds(keys, folds, 0)
    names = {"emb": "`mpnet-emb`, dev from the expert folds, trained by `skd critic train`",
             "emb+sup": "`mpnet-emb` + `--support atomic2020`, built",
             "ft": "`minilm-ft-devexpert`, trained by `skd critic train`",
             "ft+sup": "`minilm-ft-devexpert` + `--support atomic2020`, built",
             "two": "both, `--combine stack`, built", "two+sup": "both + `--support atomic2020`, built"}
    oof, seconds = {n: np.zeros(ev.height) for n in names}, dict.fromkeys(names, 0.0)
    for k in range(folds):
        held = {key for key, f in zip(keys, fold, strict=True) if f == k}
        out = [i for i, key in zip(df["item_id"], every, strict=True) if key in held]
        where = f"item_id NOT IN ({', '.join(map(repr, out))})"
        for name, attempt in (("emb", "mpnet-emb"), ("ft", "minilm-ft-devexpert")):
            _, cfg, sources, weights = CKBP_ATTEMPTS[attempt]
            started = time.perf_counter()
            train_critic(db, f"{name}{k}", CriticConfig(**cfg | {"dev_sources": [EXPERT]}, sources=sources,
                                                        source_weights=weights, labels_where=where), tmp / f"{name}{k}")
            seconds[name] += time.perf_counter() - started
        for name, (members, support) in BUILT_CKBP_ENSEMBLES.items():
            started = time.perf_counter()
            build_ensemble(db, f"{name}{k}", [f"{m}{k}" for m in members], tmp / f"{name}{k}", combine="stack",
                           support=support)
            seconds[name] += time.perf_counter() - started
        rows = ev.filter(pl.Series(fold == k)).to_dicts()
        for name in names:
            oof[name][fold == k] = score_rows(load_critic(tmp / f"{name}{k}"), rows)
        print(f"  built fold {k}: {sum(seconds.values()):.0f} s", flush=True)
    y, groups = ev["label"].to_numpy(), [json.loads(e or "{}").get("class") for e in ev["extra"].to_list()]
    for name, what in names.items():
        members = BUILT_CKBP_ENSEMBLES[name][0] if name in BUILT_CKBP_ENSEMBLES else []
        total = seconds[name] + sum(seconds[m] for m in members)  # an ensemble's time includes its members'
        row(table, f"CKBP v2 expert, {folds}-fold by head", what, summaries(oof[name], y, groups), total, oof[name], y)
        if name.endswith("+sup"):
            auc_gain(table, "CKBP v2 expert", "vs the same without support", oof[name], oof[name[:-4]], y)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=["ckbp", "rationale", "built", "built-ckbp", "all"], default="all",
                    help="built, built-ckbp: the rationale stacks and CKBP support as `skd critic ensemble` builds "
                         "them (not part of all)")
    ap.add_argument("--attempts", default="", help="comma separated (default: all of the task's)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path,
                    help="keep each attempt's out-of-fold scores here (TASK-NAME.json), and each fold's as it "
                         "finishes (TASK-NAME.folds/): run again with the same --out, a stopped run resumes")
    ap.add_argument("--load", type=Path, nargs="*", default=[],
                    help="kept attempts (--out files) of an earlier run to join this run's ensemble")
    ap.add_argument("--encoder", default=MPNET,
                    help="the rationales' sibling agreement, CKBP's support, under this sentence encoder")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"needs ../shared/data ({DATA})")
    tmp = Path(tempfile.mkdtemp(prefix="skd-critic-q-"))
    table = Table(title="critic quality: out-of-fold scores on human labels, folds grouped by head/question")
    for col in ("task", "critic", "AUC", "AUC 95% CI", "AP", "best of N", "calib. err.", "n", "time (2 CPU cores)"):
        table.add_column(col)
    # `--attempts none --load ...` only combines kept attempts; no attempts named runs them all
    chosen = [a for a in args.attempts.split(",") if a]
    ck = [a for a in chosen if a in CKBP_ATTEMPTS] if chosen else list(CKBP_ATTEMPTS)
    ra = [a for a in chosen if a in RATIONALE_ATTEMPTS] if chosen else list(RATIONALE_ATTEMPTS)
    try:
        if args.task in ("ckbp", "all"):
            ckbp(ck, args.folds, tmp, table, args.out, args.load, args.encoder)
        if args.task in ("rationale", "all"):
            rationale(ra, args.folds, tmp, table, args.out, args.load, args.encoder)
        if args.task == "built":
            built(tmp, args.folds, table)
        if args.task == "built-ckbp":
            built_ckbp(tmp, args.folds, table)
    finally:
        Console(width=160).print(table)
        print(f"python bench/critic_quality.py --task {args.task} --attempts {args.attempts or 'all'} "
              f"--folds {args.folds}" + (f" --out {args.out}" if args.out else "")
              + (f" --load {' '.join(map(str, args.load))}" if args.load else "")
              + (f" --encoder {args.encoder}" if args.encoder != MPNET and args.task in ("ckbp", "rationale", "all")
                 else ""))


if __name__ == "__main__":
    main()
