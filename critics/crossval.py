"""Cross-validation that cannot flatter: k folds over one label source (the expert labels), grouped by head or
question, so a head is never in two folds; each fold's critic trains on every other label (other sources and
the other folds) except labels of the held-out heads, and is scored on its fold only. The out-of-fold scores
give AUC, AP and calibration error overall and per group of a column (CKBP's `class`: test_set, all_head,
cs_head, adv)."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from store import SkdError, Store, file_digest, resolve_model, sibling_key, write_atomic

from .annotators import beside_annotators
from .calibration import apply
from .config import CriticConfig
from .metrics import report, selection
from .train import fit_critic, group_key, label_scores, load_labels, split


def grouped_folds(keys: list[str], k: int, seed: int) -> np.ndarray:
    """A fold per row: the groups are shuffled (seeded) and dealt round-robin, so folds are near equal."""
    groups = sorted(set(keys))
    if len(groups) < k:
        raise SkdError(f"{len(groups)} groups cannot make {k} folds")
    order = np.random.default_rng(seed).permutation(len(groups))
    fold_of = {groups[g]: i % k for i, g in enumerate(order)}
    return np.asarray([fold_of[x] for x in keys], dtype=np.int64)


def fold_training_set(ev: pl.DataFrame, rest: pl.DataFrame, keys: list[str], rest_keys: np.ndarray,
                      fold: np.ndarray, k: int, trains_on_eval: bool) -> pl.DataFrame:
    """What fold K's critic trains on: the other sources' labels of every group not in fold K (a head held out
    is held out of every source), and the evaluated source's other folds where the config trains on it."""
    held = {key for key, f in zip(keys, fold, strict=True) if f == k}
    parts = [rest.filter(pl.Series([x not in held for x in rest_keys], dtype=pl.Boolean))]
    return pl.concat(parts + ([ev.filter(pl.Series(fold != k))] if trains_on_eval else []), how="vertical_relaxed")


def cross_validate(db: str | Path, cfg: CriticConfig, eval_source: str, folds: int = 5, by: str | None = "class",
                   on_fold: Callable[[int, float, bool], None] | None = None, fold_seed: int = 0,
                   keep: Path | None = None) -> dict[str, Any]:
    """Out-of-fold quality of the critic CFG trains, on the labels of EVAL_SOURCE. The folds are seeded by
    FOLD_SEED, not by the critic's own seed, so critics that differ only in their seed are scored on the same
    folds and their out-of-fold scores can be ensembled. With KEEP, each fold's scores are written there as it
    finishes and a later call with the same folder skips the folds kept for the same config, labels and folds:
    a cross-validation of hours (a fine-tune per fold on a CPU) survives being stopped. ON_FOLD gets each fold's
    number, its seconds and whether it was read back from KEEP (its seconds then are those it took when it ran)."""
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
    stamp = fold_stamp(cfg, eval_source, fold, df, base)
    for k in range(folds):
        got = kept_fold(keep, k, stamp, int((fold == k).sum()))
        was_kept = got is not None
        if not was_kept:
            train_df = fold_training_set(ev, rest, keys, rest_keys, fold, k, trains_on_eval)
            got = fit_fold(cfg, base, train_df, ev.filter(pl.Series(fold == k)))
            keep_fold(keep, k, stamp, got)
        oof[fold == k] = got["scores"]
        seconds.append(got["seconds"])
        trained.append(got["trained"])
        if on_fold:
            on_fold(k, seconds[-1], was_kept)
    labels = ev["label"].to_numpy()
    result = {"eval_source": eval_source, "folds": folds, "n": int(ev.height), "trains_on_eval": trains_on_eval,
              "train_labels_per_fold": float(np.mean(trained)),  # what each fold's critic trained on (not dev)
              "seconds_per_fold": float(np.mean(seconds)), "seconds": float(np.sum(seconds)),  # kept folds' too
              "fold_of_group": "head or question",
              "scores": oof.tolist(), "labels": labels.tolist(), "fold": fold.tolist()}
    groups = [json.loads(e or "{}").get(by) for e in ev["extra"].to_list()] if by and "extra" in ev.columns else []
    if any(g is not None for g in groups):
        result["groups"] = groups
    result["annotators"] = beside_annotators(oof, *(ev[c].to_numpy() for c in ("votes_pos", "votes_total")))
    return result | summaries(oof, labels, result.get("groups"), [sibling_key(r) for r in ev.iter_rows(named=True)])


def fit_fold(cfg: CriticConfig, base: str, train_df: pl.DataFrame, held: pl.DataFrame) -> dict[str, Any]:
    """One fold: the critic trained on TRAIN_DF (less its dev split, which calibrates it), scored on HELD."""
    started = time.monotonic()
    tr, dev = split(train_df, cfg.dev_fraction, cfg.seed, cfg.dev_sources)
    out = Path(tempfile.mkdtemp(prefix="skd-cv-"))
    try:
        critic, _, cal = fit_critic(cfg, tr, dev, out)
        scores = apply(label_scores(critic, base, held.to_dicts()), cal)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"scores": np.asarray(scores, dtype=float).tolist(), "seconds": time.monotonic() - started,
            "trained": tr.height}


def fold_stamp(cfg: CriticConfig, eval_source: str, fold: np.ndarray, labels: pl.DataFrame, base: str) -> str:
    """What a kept fold must match to be reused: the config (less the thresholds it reports, which score nothing),
    the evaluated source, every label read (items, labels, votes, other sources' too), the folds, and the base
    model's files (store.file_digest: a path or hub snapshot whose weights changed trains again), and the code that
    trains (training_code)."""
    what = {"config": cfg.model_dump(mode="json", exclude={"recalls", "precisions"}), "eval_source": eval_source,
            "fold": fold.tolist(), "labels": hashlib.sha256(labels.write_csv().encode()).hexdigest(),
            "base": [base, file_digest(base)], "code": training_code()}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def training_code() -> dict[str, Any]:
    """What trains a fold besides its config and data: the source of the critics package and of the store modules
    it trains through (model resolution, the compute precision), the versions of the libraries it trains and
    calibrates with, and the device and precision it runs in. A fold kept before an edit to any of these, or on
    another machine's precision, was trained by other code, so it trains again rather than mix with folds of the
    new code. The whole package, not only the modules a fold reaches: an edit elsewhere (a docstring) costs a
    retrain."""
    from store.hardware import bf16_native, device

    here = Path(__file__).parent
    h = hashlib.sha256()
    for f in [*sorted(here.glob("*.py")), here.parent / "store" / "models.py", here.parent / "store" / "hardware.py"]:
        h.update(f"{f.parent.name}/{f.name}".encode() + b"\0" + f.read_bytes())
    libraries = {}
    for name in ("torch", "transformers", "sentence-transformers", "peft", "scikit-learn", "numpy"):
        try:
            libraries[name] = md.version(name)
        except md.PackageNotFoundError:
            libraries[name] = None
    return {"source": h.hexdigest(), "libraries": libraries, "device": device(), "bf16": bf16_native()}


def kept_fold(keep: Path | None, k: int, stamp: str, n: int) -> dict[str, Any] | None:
    """Fold K's record in KEEP if one was kept under STAMP with its N scores; one made for another config or
    split, or one that does not read (written by hand, cut short), is trained again."""
    path = keep / f"fold-{k}.json" if keep else None
    try:
        got = json.loads(path.read_text()) if path is not None and path.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(got, dict) or got.get("stamp") != stamp or not {"seconds", "trained"} <= set(got):
        return None
    return got if isinstance(got.get("scores"), list) and len(got["scores"]) == n else None


def keep_fold(keep: Path | None, k: int, stamp: str, got: dict[str, Any]) -> None:
    """Fold K's record written whole or not at all (store.write_atomic): a kill mid-write must not leave a record
    that reads."""
    if keep is not None:
        write_atomic(keep / f"fold-{k}.json", json.dumps(got | {"stamp": stamp, "fold": k}))


def summaries(scores: np.ndarray, labels: np.ndarray, groups: list[Any] | None = None,
              prompts: list[Any] | None = None) -> dict[str, Any]:
    """Quality of out-of-fold scores: overall, per group (CKBP class) when the labels have groups, and the choice
    among each prompt's outputs (metrics.selection) when PROMPTS are given (None where no prompt has two)."""
    out: dict[str, Any] = {"overall": summary(scores, labels)}
    if prompts is not None:
        out["selection"] = selection(scores, labels, prompts)
    if groups:
        out["by"] = {str(g): summary(scores[m], labels[m]) for g in sorted(set(groups), key=str)
                     for m in [np.asarray([v == g for v in groups])]}
    return out


def summary(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    r = report(scores, labels, {})
    return {k: r[k] for k in ("n", "positive_rate", "auc", "average_precision", "calibration_error")}
