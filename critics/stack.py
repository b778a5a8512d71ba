"""A stacked critic: a logistic regression over the logits of trained critics' calibrated scores and, optionally,
the teacher's own per-token NLL of the item, fitted on dev labels. Its output is a probability fitted on those
labels, so it needs no calibration of its own.

Why: a mean of probabilities weighs every member alike, even one calibrated on other labels than these; a fit
weighs them by what they add. And the teacher's likelihood is evidence no text critic sees: on the CommonsenseQA
rationales, GPT-3's NLL beside the fine-tuned MiniLM lifts AUC from 0.709 to 0.737 (bench/critic_quality.py, which
measures with these same functions, fitted on the other folds). An item whose NLL is unknown (imported, or
generated without `logprobs = true`) is scored by a second fit over the members alone, never by a guessed NLL."""

from __future__ import annotations

from typing import Any

import numpy as np

from store import TEACHER_NLL

from .calibration import _logit


def features(member_scores: list[np.ndarray], nll: np.ndarray | None = None) -> np.ndarray:
    """One row per item: each member's logit, then the teacher's NLL where asked."""
    cols = [_logit(s) for s in member_scores] + ([np.asarray(nll, dtype=np.float64)] if nll is not None else [])
    return np.column_stack(cols) if cols else np.zeros((0, 0))


def fit_stack(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The logistic regression (sklearn's default L2, C=1: a few weights from a few hundred dev labels)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression().fit(x, np.asarray(y).astype(int))
    return {"weights": [float(w) for w in lr.coef_[0]], "bias": float(lr.intercept_[0])}


def apply_stack(x: np.ndarray, fit: dict[str, Any]) -> np.ndarray:
    return 1 / (1 + np.exp(-(x @ np.asarray(fit["weights"]) + fit["bias"])))


def known_nll(rows: list[dict[str, Any]]) -> np.ndarray:
    """The rows' teacher NLL (NaN where unknown or missing from the row)."""
    return np.asarray([np.nan if r.get(TEACHER_NLL) is None else float(r[TEACHER_NLL]) for r in rows])


def stack_scores(member_scores: list[np.ndarray], nll: np.ndarray | None, fits: dict[str, Any]) -> np.ndarray:
    """Scores by the fit with the NLL where it is known, by the members-only fit elsewhere."""
    out = apply_stack(features(member_scores), fits["members"])
    if nll is not None and fits.get("with_nll"):
        known = ~np.isnan(nll)
        if known.any():
            out[known] = apply_stack(features([s[known] for s in member_scores], nll[known]), fits["with_nll"])
    return out


class StackedCritic:
    """Members' scores through the stack's fits. `score(texts)` knows no NLL and uses the members-only fit."""

    def __init__(self, members: list[Any], fits: dict[str, Any]):
        self.members, self.fits = members, fits

    def score(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        return stack_scores([m.score(texts, batch_size=batch_size) for m in self.members], None, self.fits)

    def score_rows(self, rows: list[dict[str, Any]], batch_size: int = 128) -> np.ndarray:
        from .model import score_rows

        each = [score_rows(m, rows, batch_size) for m in self.members]
        return stack_scores(each, known_nll(rows), self.fits)
