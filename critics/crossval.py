"""Cross-validation that cannot flatter: k folds over one label source (the expert labels), grouped by head or
question, so a head is never in two folds; each fold's critic trains on every other label (other sources and
the other folds) except labels of the held-out heads, and is scored on its fold only. The out-of-fold scores
give AUC, AP and calibration error overall and per group of a column (CKBP's `class`: test_set, all_head,
cs_head, adv)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from store import SkdError, Store, resolve_model

from .calibration import apply
from .config import CriticConfig
from .metrics import report
from .train import fit_critic, group_key, label_scores, load_labels, split


def grouped_folds(keys: list[str], k: int, seed: int) -> np.ndarray:
    """A fold per row: the groups are shuffled (seeded) and dealt round-robin, so folds are near equal."""
    groups = sorted(set(keys))
    if len(groups) < k:
        raise SkdError(f"{len(groups)} groups cannot make {k} folds")
    order = np.random.default_rng(seed).permutation(len(groups))
    fold_of = {groups[g]: i % k for i, g in enumerate(order)}
    return np.asarray([fold_of[x] for x in keys], dtype=np.int64)


def cross_validate(db: str | Path, cfg: CriticConfig, eval_source: str, folds: int = 5, by: str | None = "class",
                   on_fold: Callable[[int, float], None] | None = None, fold_seed: int = 0) -> dict[str, Any]:
    """Out-of-fold quality of the critic CFG trains, on the labels of EVAL_SOURCE. The folds are seeded by
    FOLD_SEED, not by the critic's own seed, so critics that differ only in their seed are scored on the same
    folds and their out-of-fold scores can be ensembled."""
    # with `sources` that leave EVAL_SOURCE out, its labels are only evaluated on, never trained on
    trains_on_eval = not cfg.sources or eval_source in cfg.sources
    with Store(db, read_only=True) as s:
        df = load_labels(s, cfg.labels_where, [*cfg.sources, eval_source] if cfg.sources else None)
    ev, rest = df.filter(pl.col("source") == eval_source), df.filter(pl.col("source") != eval_source)
    if ev.height == 0:
        raise SkdError(f"no labels from source {eval_source!r} (sources: {', '.join(sorted(set(df['source'])))})")
    keys = [group_key(r) for r in ev.iter_rows(named=True)]
    rest_keys = np.asarray([group_key(r) for r in rest.iter_rows(named=True)], dtype=object)
    fold = grouped_folds(keys, folds, fold_seed)
    oof = np.zeros(ev.height)
    seconds, trained = [], []
    base = resolve_model(cfg.base)
    for k in range(folds):
        started = time.monotonic()
        held = {key for key, f in zip(keys, fold, strict=True) if f == k}
        parts = [rest.filter(pl.Series([x not in held for x in rest_keys], dtype=pl.Boolean))]
        train_df = pl.concat(parts + ([ev.filter(pl.Series(fold != k))] if trains_on_eval else []),
                             how="vertical_relaxed")
        tr, dev = split(train_df, cfg.dev_fraction, cfg.seed, cfg.dev_sources)
        trained.append(tr.height)
        out = Path(tempfile.mkdtemp(prefix="skd-cv-"))
        try:
            critic, _, cal = fit_critic(cfg, tr, dev, out)
            oof[fold == k] = apply(label_scores(critic, base, ev.filter(pl.Series(fold == k)).to_dicts()), cal)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        seconds.append(time.monotonic() - started)
        if on_fold:
            on_fold(k, seconds[-1])
    labels = ev["label"].to_numpy()
    result = {"eval_source": eval_source, "folds": folds, "n": int(ev.height), "trains_on_eval": trains_on_eval,
              "train_labels_per_fold": float(np.mean(trained)),  # what each fold's critic trained on (not dev)
              "seconds_per_fold": float(np.mean(seconds)), "fold_of_group": "head or question",
              "scores": oof.tolist(), "labels": labels.tolist(), "fold": fold.tolist()}
    groups = [json.loads(e or "{}").get(by) for e in ev["extra"].to_list()] if by and "extra" in ev.columns else []
    if any(g is not None for g in groups):
        result["groups"] = groups
    return result | summaries(oof, labels, result.get("groups"))


def summaries(scores: np.ndarray, labels: np.ndarray, groups: list[Any] | None = None) -> dict[str, Any]:
    """Quality of out-of-fold scores: overall, and per group (CKBP class) when the labels have groups."""
    out: dict[str, Any] = {"overall": summary(scores, labels)}
    if groups:
        out["by"] = {str(g): summary(scores[m], labels[m]) for g in sorted(set(groups), key=str)
                     for m in [np.asarray([v == g for v in groups])]}
    return out


def summary(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    r = report(scores, labels, {})
    return {k: r[k] for k in ("n", "positive_rate", "auc", "average_precision", "calibration_error")}
