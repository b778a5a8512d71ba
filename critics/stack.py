"""A stacked critic: a logistic regression over the logits of trained critics' calibrated scores and, optionally,
the teacher's own per-token NLL of the item, the item's agreement with its siblings (critics.agreement) and its
support in human-written knowledge (critics.support), fitted on dev labels. Its output is a probability fitted on
those labels, so it needs no calibration of its own.

Why: a mean of probabilities weighs every member alike, even one calibrated on other labels than these; a fit
weighs them by what they add. And the teacher's likelihood is evidence no text critic sees: on the CommonsenseQA
rationales, GPT-3's NLL beside the fine-tuned MiniLM lifts AUC from 0.709 to 0.737 (bench/critic_quality.py, which
measures with these same functions, fitted on the other folds). An item whose NLL is unknown (imported, or
generated without `logprobs = true`) or that has no siblings is scored by a fit without that input, never by a
guessed value: the stack keeps one fit per combination of signals."""

from __future__ import annotations

from typing import Any

import numpy as np

from store import TEACHER_NLL

from .calibration import _logit


def features(member_scores: list[np.ndarray], *signals: np.ndarray) -> np.ndarray:
    """One row per item: each member's logit, then each signal (the teacher's NLL, sibling agreement) where asked."""
    cols = [_logit(s) for s in member_scores] + [np.asarray(x, dtype=np.float64) for x in signals]
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


def signal_fits(fits: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The stack's fits that read signals besides the members, by the signals they read ("nll", "agreement",
    "nll+agreement"). A card from before agreement keeps its one such fit as `with_nll`."""
    out = dict(fits.get("with") or {})
    if fits.get("with_nll"):
        out["nll"] = fits["with_nll"]
    return out


# the way each signal is meant to point: a likelier item (lower NLL), one its siblings agree with, one like what
# people wrote. A fit that weighs one the other way learned something about these dev labels, not what it is for.
MEANT = {"nll": -1, "agreement": 1, "support": 1}


def contrary_signals(fits: dict[str, Any] | None) -> dict[str, float]:
    """The signals whose own fit (beside the members) weighs them against the way they are meant, with that weight:
    on CKBP v1's crowd dev labels support takes -1.09 (bench/distill.py --better-filter support), and a filter built so
    leans away from tails like the human ones."""
    return {combo: fit["weights"][-1] for combo, fit in signal_fits(fits or {}).items()
            if combo in MEANT and fit["weights"][-1] * MEANT[combo] < 0}


def reads(fits: dict[str, Any] | None, signal: str) -> bool:
    return any(signal in combo.split("+") for combo in signal_fits(fits or {}))


def stack_scores(member_scores: list[np.ndarray], signals: dict[str, np.ndarray], fits: dict[str, Any]) -> np.ndarray:
    """Each item by the fit that reads the most of its known signals (NaN where unknown); by the members-only fit
    where none is known. Where a combination was not fitted (too few dev labels knew both), an item that knows both
    gets the last single-signal fit."""
    out = apply_stack(features(member_scores), fits["members"])
    for combo, fit in sorted(signal_fits(fits).items(), key=lambda kv: len(kv[0].split("+"))):
        cols = [signals.get(name) for name in combo.split("+")]
        if any(c is None for c in cols):
            continue
        known = np.logical_and.reduce([~np.isnan(c) for c in cols])
        if known.any():
            out[known] = apply_stack(features([s[known] for s in member_scores], *(c[known] for c in cols)), fit)
    return out


class StackedCritic:
    """Members' scores through the stack's fits, with the signals the stack reads besides: sibling agreement and
    support, both under ENCODER (critics.agreement.Encoder), support against SUPPORT (critics.support.Support).
    `score(texts)` knows no signals and uses the members-only fit."""

    def __init__(self, members: list[Any], fits: dict[str, Any], encoder: Any = None, support: Any = None):
        self.members, self.fits, self.encoder, self.support = members, fits, encoder, support

    def score(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        return stack_scores([m.score(texts, batch_size=batch_size) for m in self.members], {}, self.fits)

    def score_rows(self, rows: list[dict[str, Any]], batch_size: int = 128) -> np.ndarray:
        from .model import score_rows

        each = [score_rows(m, rows, batch_size) for m in self.members]
        signals = signals_of(rows, self.encoder, reads(self.fits, "agreement"), self.support, batch_size)
        return stack_scores(each, signals, self.fits)


def signals_of(rows: list[dict[str, Any]], encoder: Any = None, agreement: bool = False, support: Any = None,
               batch_size: int = 128) -> dict[str, np.ndarray]:
    """The signals known of the rows: the teacher's NLL; with AGREEMENT their sibling agreement, with SUPPORT their
    support in it, both under ENCODER."""
    out = {"nll": known_nll(rows)}
    if agreement:
        out["agreement"] = encoder.agreement(rows, batch_size)
    if support is not None:
        out["support"] = support(rows, lambda texts: encoder.encode(texts, batch_size))
    return out
