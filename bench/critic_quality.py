"""Critic quality on human labels (../shared/data), measured so it cannot flatter: k-fold cross-validation
grouped by head (or question) over the expert labels, each fold's critic trained on every other label except
those of its held-out heads (critics.crossval). Prints one row per attempt, with its training time on this
machine, including the attempts that did not help.

- Triples (CKBP v2 expert dev, 958 labels, 22% plausible): sources CKBP v1 crowd (31,731), the expert folds,
  ATOMIC-2020 human tuples with tail-swapped negatives. AUC per CKBP class (test_set, all_head, cs_head, adv).
- Rationales: CommonsenseQA explanation acceptability (crowd majority), folds by question; GPT-3's own
  normalised NLL as the baseline score, and each attempt stacked with that NLL (the teacher's own likelihood).

    python bench/critic_quality.py --task ckbp --attempts minilm-emb,mpnet-emb --folds 5
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

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from critics.config import CriticConfig
from critics.crossval import cross_validate, summaries
from critics.train import load_labels
from store import MINILM, Store, import_labels
from store.models import MPNET

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
CROWD, EXPERT, ATOMIC = "ckbp1", "ckbp2", "atomic2020"
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
    "minilm-ft": ("MiniLM fine-tuned, crowd + expert folds (x3)", TUNE | {"base": MINILM}, [CROWD, EXPERT],
                  {EXPERT: 3.0}),
    "mpnet-ft": ("MPNet fine-tuned, crowd + expert folds (x3)", TUNE | {"base": MPNET}, [CROWD, EXPERT],
                 {EXPERT: 3.0}),
    "mpnet-ft-expert": ("MPNet fine-tuned, expert folds only", TUNE | {"base": MPNET, "epochs": 4, "eval_steps": 20},
                        [EXPERT], {}),
}
RATIONALE_ATTEMPTS = {
    "minilm-emb": ("MiniLM frozen + head", {"mode": "embedding", "base": MINILM}),
    "mpnet-emb": ("MPNet frozen + head", {"mode": "embedding", "base": MPNET}),
    "minilm-ft": ("MiniLM fine-tuned", TUNE | {"base": MINILM, "epochs": 3, "eval_steps": 100}),
    "mpnet-ft": ("MPNet fine-tuned", TUNE | {"base": MPNET, "epochs": 2, "eval_steps": 100}),
}


def progress(name: str):
    return lambda k, s: print(f"  {name} fold {k}: {s:.0f} s", flush=True)


def row(table: Table, task: str, name: str, res: dict, seconds: float) -> None:
    o = res["overall"]
    table.add_row(task, name, f"{o['auc']:.3f}", f"{o['average_precision']:.3f}", f"{o['calibration_error']:.3f}",
                  f"{o['n']:,}", f"{seconds / 60:.1f} min")
    for g, m in (res.get("by") or {}).items():
        table.add_row("", f"  class {g}", f"{m['auc']:.3f}" if m["auc"] is not None else "-",
                      f"{m['average_precision']:.3f}" if m["average_precision"] is not None else "-", "", f"{m['n']}",
                      "")
    print("row:", task, name, {k: round(v, 4) if isinstance(v, float) else v for k, v in o.items()},
          {g: round(m["auc"] or 0, 4) for g, m in (res.get("by") or {}).items()}, f"{seconds:.0f}s", flush=True)


def ensemble(table: Table, task: str, runs: dict[str, dict]) -> None:
    """The mean of the attempts' calibrated out-of-fold scores: the folds are the same (seeded, grouped), so
    this is out-of-fold too, and says whether an ensemble of critics would be worth building."""
    if len(runs) < 2:
        return
    scores = np.mean([r["scores"] for r in runs.values()], axis=0)
    first = next(iter(runs.values()))  # every run has the same labels in the same order
    res = summaries(scores, np.asarray(first["labels"]), first.get("groups"))
    row(table, task, f"ensemble: mean of {', '.join(runs)}", res, sum(r["seconds"] for r in runs.values()))


def stacked(table: Table, task: str, name: str, run: dict, teacher_nll: np.ndarray) -> None:
    """The attempt's out-of-fold score beside the teacher's own normalised NLL in a logistic regression, fitted on
    the other folds of the same grouped split (so still out-of-fold): what a critic would gain by also reading the
    likelihood the teacher gave its output (skd records it: `generations.logprob`, `n_tokens`)."""
    fold, y = np.asarray(run["fold"]), np.asarray(run["labels"])
    p = np.clip(np.asarray(run["scores"]), 1e-6, 1 - 1e-6)
    x = np.column_stack([np.log(p / (1 - p)), teacher_nll])
    oof = np.zeros(len(y))
    for k in np.unique(fold):
        fit = LogisticRegression().fit(x[fold != k], y[fold != k])
        oof[fold == k] = fit.predict_proba(x[fold == k])[:, 1]
    row(table, task, f"{name} + GPT-3's own NLL, stacked", summaries(oof, y, None), run["seconds"])


def ckbp(attempts: list[str], folds: int, tmp: Path, table: Table) -> None:
    db = tmp / "ckbp.duckdb"
    with Store(db) as s:
        import_labels(s, DATA / "ckbp/ckbp1_crowd.csv", "ckbp", source=CROWD)
        import_labels(s, DATA / "ckbp/ckbp2_dev.csv", "ckbp", source=EXPERT)
        import_labels(s, DATA / "atomic2020/human_tuples.tsv", "atomic2020", source=ATOMIC)
    task, runs = f"CKBP v2 expert, {folds}-fold by head", {}
    for name in attempts:
        what, cfg, sources, weights = CKBP_ATTEMPTS[name]
        started = time.perf_counter()
        res = cross_validate(db, CriticConfig(**cfg, sources=sources, source_weights=weights), EXPERT, folds,
                             by="class", on_fold=progress(name))
        runs[name] = res | {"seconds": time.perf_counter() - started}
        row(table, task, f"{name}: {what}", res, runs[name]["seconds"])
    ensemble(table, task, runs)


def rationale(attempts: list[str], folds: int, tmp: Path, table: Table) -> None:
    db = tmp / "rat.duckdb"
    with Store(db) as s:
        import_labels(s, DATA / "rationale_acceptability/commonsenseqa_train.csv", "rationale-acceptability",
                      source="csqa")
        df = load_labels(s, None)  # the order cross_validate reads them in
    y = df["label"].to_numpy()
    nll = -np.asarray([float(json.loads(e)["nll"]) for e in df["extra"].to_list()])
    table.add_row("CSQA rationales", "GPT-3 normalised NLL (baseline, no training)", f"{roc_auc_score(y, nll):.3f}",
                  f"{average_precision_score(y, nll):.3f}", "-", f"{len(y):,}", "")
    task, runs = f"CSQA rationales, {folds}-fold by question", {}
    for name in attempts:
        what, cfg = RATIONALE_ATTEMPTS[name]
        started = time.perf_counter()
        res = cross_validate(db, CriticConfig(**cfg), "csqa", folds, by=None, on_fold=progress(name))
        runs[name] = res | {"seconds": time.perf_counter() - started}
        row(table, task, f"{name}: {what}", res, runs[name]["seconds"])
        assert res["labels"] == y.tolist(), "labels out of the order cross_validate read them in"
        stacked(table, task, name, runs[name], nll)
    ensemble(table, task, runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=["ckbp", "rationale", "all"], default="all")
    ap.add_argument("--attempts", default="", help="comma separated (default: all of the task's)")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"needs ../shared/data ({DATA})")
    tmp = Path(tempfile.mkdtemp(prefix="skd-critic-q-"))
    table = Table(title="critic quality: out-of-fold scores on human labels, folds grouped by head/question")
    for col in ("task", "critic", "AUC", "AP", "calib. err.", "n", "time (2 CPU cores)"):
        table.add_column(col)
    chosen = [a for a in args.attempts.split(",") if a]
    try:
        if args.task in ("ckbp", "all"):
            ckbp([a for a in chosen if a in CKBP_ATTEMPTS] or list(CKBP_ATTEMPTS), args.folds, tmp, table)
        if args.task in ("rationale", "all"):
            rationale([a for a in chosen if a in RATIONALE_ATTEMPTS] or list(RATIONALE_ATTEMPTS), args.folds, tmp,
                      table)
    finally:
        Console(width=160).print(table)
        print(f"python bench/critic_quality.py --task {args.task} --attempts {args.attempts or 'all'} "
              f"--folds {args.folds}")


if __name__ == "__main__":
    main()
