"""Calibrated scores: a stored score is a probability that the item is acceptable, so a threshold means the
same thing across critics. Platt scaling (a logistic fit on the logit of the raw score, on dev): monotone,
so ranking (AUC, AP) is unchanged, and two parameters cannot overfit a few hundred dev labels."""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-6


def _logit(s: np.ndarray) -> np.ndarray:
    s = np.clip(np.asarray(s, dtype=np.float64), EPS, 1 - EPS)
    return np.log(s / (1 - s))


def fit_platt(scores: np.ndarray, labels: np.ndarray) -> dict[str, float] | None:
    """Platt's fit with his prior-corrected targets ((N+ + 1) / (N+ + 2) for positives, 1 / (N- + 2) for
    negatives), so a small or separable dev set cannot push the parameters to infinity. None when the dev
    scores do not rank (slope <= 0): calibrating then would invert the ranking."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(labels).astype(int)
    npos, nneg = int(y.sum()), int(len(y) - y.sum())
    if not npos or not nneg:
        return None
    target = np.where(y == 1, (npos + 1) / (npos + 2), 1 / (nneg + 2))
    x = _logit(scores)[:, None]
    lr = LogisticRegression(C=1e4, max_iter=1000).fit(  # soft targets as weighted copies of each point
        np.concatenate([x, x]), np.r_[np.ones(len(x)), np.zeros(len(x))], sample_weight=np.r_[target, 1 - target])
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    return {"method": "platt", "a": a, "b": b} if a > 0 else None


def apply(scores: np.ndarray, cal: dict[str, Any] | None) -> np.ndarray:
    if not cal:
        return np.asarray(scores, dtype=np.float64)
    return 1 / (1 + np.exp(-(cal["a"] * _logit(scores) + cal["b"])))


def calibration_error(scores: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |mean predicted - observed rate| per equal-width bin, weighted by size."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if not len(s):
        return 0.0
    which = np.minimum((s * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            err += m.mean() * abs(s[m].mean() - y[m].mean())
    return float(err)


class Calibrated:
    """A critic whose scores pass through its dev calibration."""

    def __init__(self, critic: Any, cal: dict[str, Any]):
        self.critic, self.cal = critic, cal

    def score(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        return apply(self.critic.score(texts, batch_size=batch_size), self.cal)

    def score_rows(self, rows: list[dict[str, Any]], batch_size: int = 128) -> np.ndarray:
        from .model import score_rows
        return apply(score_rows(self.critic, rows, batch_size), self.cal)

    def __getattr__(self, name: str) -> Any:  # max_length, embed, ... of the critic inside
        return getattr(self.critic, name)
