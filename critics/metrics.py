"""How good a critic is: ranking quality, thresholds for a target precision or recall, and what
filtering buys ("keep the top X% -> Y% acceptable")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from .calibration import calibration_error


def threshold_for(scores: np.ndarray, labels: np.ndarray, recall: float | None = None,
                  precision: float | None = None) -> float | None:
    """The highest threshold reaching the recall target, or the lowest reaching the precision target (None where
    no threshold reaches it: a cut named for a precision it does not have would mislead)."""
    p, r, t = precision_recall_curve(labels, scores)
    p, r = p[:-1], r[:-1]  # the last point has no threshold
    if recall is not None:
        ok = np.nonzero(r >= recall)[0]
        return float(t[ok.max()]) if len(ok) else float(t.min())
    ok = np.nonzero(p >= precision)[0]
    return float(t[ok.min()]) if len(ok) else None


def choose_thresholds(scores: np.ndarray, labels: np.ndarray, recalls=(0.5, 0.8), precisions=()) -> dict[str, float]:
    out = {f"recall@{r:g}": threshold_for(scores, labels, recall=r) for r in recalls}
    reached = {p: threshold_for(scores, labels, precision=p) for p in precisions}
    return out | {f"precision@{p:g}": v for p, v in reached.items() if v is not None}


def at_threshold(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    kept = scores >= threshold
    tp = float((kept & (labels == 1)).sum())
    precision = tp / kept.sum() if kept.sum() else 0.0
    recall = tp / (labels == 1).sum() if (labels == 1).sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": threshold, "precision": precision, "recall": recall, "f1": f1,
            "kept": float(kept.mean())}


def kept_table(scores: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    """Acceptable fraction among the top-scored 10%, 20%, ..., 100%."""
    order = np.argsort(-scores, kind="stable")
    rows = []
    for pct in range(10, 101, 10):
        k = max(1, round(len(order) * pct / 100))
        rows.append({"kept": pct / 100, "acceptable": float(labels[order[:k]].mean())})
    return rows


def selection(scores: np.ndarray, labels: np.ndarray, prompts: list[Any]) -> dict[str, Any] | None:
    """Best of N, the way a critic is used on a teacher that samples several outputs a prompt (several rationales a
    question): over the prompts with two labelled outputs or more, the share whose top-scored output is acceptable
    (`top`), what a pick at random would get (`random`: the mean acceptable share) and what any pick could
    (`oracle`: prompts with an acceptable output at all). Wiegreffe et al.'s released acceptability filters appear
    to report it on CommonsenseQA as their accuracy. A ranking across prompts (AUC) and a choice within one can
    disagree: a critic that rates one question's explanations all high ranks well across questions without choosing
    among them. Ties go to the output read first. None where no prompt has two outputs (CKBP's triples rarely share
    a head and relation); a prompt of None (free text) is in none."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(int)
    if not len(scores) == len(labels) == len(prompts):
        raise ValueError(f"{len(scores)} scores, {len(labels)} labels, {len(prompts)} prompts")
    if np.isnan(scores).any():
        raise ValueError("a NaN score has no place in a ranking")
    codes: dict[Any, int] = {}
    code = np.asarray([-1 if p is None else codes.setdefault(p, len(codes)) for p in prompts], dtype=int)
    order = np.lexsort((-scores, code))  # by prompt, the highest score first (stable: ties to the first read)
    code, labels = code[order], labels[order]
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]]) if len(code) else np.zeros(0, dtype=int)
    sizes = np.diff(np.r_[starts, len(code)])
    many = (sizes >= 2) & (code[starts] >= 0)
    if not many.any():
        return None
    top = labels[starts[many]]
    share = np.add.reduceat(labels, starts)[many] / sizes[many]
    return {"prompts": int(many.sum()), "outputs_per_prompt": float(sizes[many].mean()), "top": float(top.mean()),
            "random": float(share.mean()), "oracle": float((share > 0).mean())}


def report(scores: np.ndarray, labels: np.ndarray, thresholds: dict[str, float]) -> dict[str, Any]:
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    both = len(set(labels.tolist())) == 2
    return {
        "n": int(len(labels)), "positive_rate": float(labels.mean()) if len(labels) else 0.0,
        "auc": float(roc_auc_score(labels, scores)) if both else None,
        "average_precision": float(average_precision_score(labels, scores)) if both else None,
        "calibration_error": calibration_error(scores, labels),
        "thresholds": {name: at_threshold(scores, labels, t) for name, t in thresholds.items()},
        "kept_vs_acceptable": kept_table(scores, labels),
    }


def evaluate_on_file(critic: dict[str, Any], path: Path, fmt: str) -> dict[str, Any]:
    """The report of a registered critic (a `store.critics.get` row) on a label file it never saw: the file
    is read into a throwaway store, so the corpus is not touched."""
    import tempfile

    from store import Store, import_labels, sibling_key

    from .annotators import beside_annotators
    from .model import load_critic, read_card, reads_siblings, reads_teacher_nll, score_rows

    card = read_card(Path(critic["path"]))
    with tempfile.TemporaryDirectory() as d, Store(Path(d) / "eval.duckdb") as tmp:
        import_labels(tmp, path, fmt)  # a file that yields no judgement is an error there
        # one class is a file to evaluate (precision and kept at the stored cuts), not to train on: no AUC then
        df = tmp.labels.select(None, None, teacher_nll=reads_teacher_nll(card), siblings=reads_siblings(card))
    scores = score_rows(load_critic(critic["path"], critic.get("critic_id")), df.to_dicts())
    labels = df["label"].to_numpy()
    rep = report(scores, labels, critic["thresholds"] or {})
    return rep | {"annotators": beside_annotators(scores, df["votes_pos"].to_numpy(), df["votes_total"].to_numpy()),
                  "selection": selection(scores, labels, [sibling_key(r) for r in df.iter_rows(named=True)])}
