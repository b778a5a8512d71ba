"""How far a label source's annotators agree, and the ceiling that puts on any critic of its majority labels.

A critic is scored against majority votes, and a majority of three noisy judges is itself noisy: no critic can
rank it perfectly. Where items have several votes (`votes_pos` of `votes_total`), the vote counts say how noisy.
Each item is taken to have its own chance p of being judged acceptable, p ~ Beta(a, b) over items, and its votes
~ Binomial(votes_total, p) (the beta-binomial, fitted by maximum likelihood to the counts). The ceiling is the AUC
and average precision against the majority label of a critic that knew every item's p exactly, by simulation
under the fit. Measured directly, without the model: how well the other annotators' share predicts a held-out
annotator's vote (the votes of an item are exchangeable, so each of its annotators is held out in turn), beside
Fleiss' kappa."""

from __future__ import annotations

from typing import Any

import numpy as np

from store import SkdError, Store

MIN_ITEMS = 20  # fewer items with two or more votes fit nothing worth reporting


def vote_counts(store: Store, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(positive votes, votes) of the SOURCE's labels that have two or more votes."""
    rows = store.con.execute("SELECT votes_pos, votes_total FROM labels WHERE source = ? AND votes_total >= 2",
                             [source]).fetchnumpy()
    return rows["votes_pos"].astype(np.int64), rows["votes_total"].astype(np.int64)


def annotator_agreement(pos: np.ndarray, total: np.ndarray, draws: int = 200_000, seed: int = 0) -> dict[str, Any]:
    """Agreement among the annotators behind vote counts POS of TOTAL, and the ceiling on a critic of the majority
    label (a tie is 0, as the label import resolves it). Items with fewer than two votes (or none: NaN) say nothing
    of agreement and are left out. A figure that is undefined (every vote the same) is None."""
    pos, total = voted_counts(pos, total)
    if len(pos) < MIN_ITEMS:
        raise SkdError(f"{len(pos)} items with two or more votes; agreement needs at least {MIN_ITEMS}")
    label = (2 * pos > total).astype(int)
    a, b = fit_beta_binomial(pos, total)
    held, others = held_out_votes(pos, total)
    ceiling_auc, ceiling_ap = ceiling(a, b, total, draws, seed)
    return {"items": len(pos), "votes": int(total.sum()), "annotators_per_item": float(np.median(total)),
            "positive_share": float(label.mean()), "unanimous_share": float(np.mean((pos == 0) | (pos == total))),
            "fleiss_kappa": fleiss_kappa(pos, total), "held_out_auc": _auc(held, others),
            "held_out_ap": _ap(held, others), "beta": [a, b], "ceiling_auc": ceiling_auc,
            "ceiling_ap": ceiling_ap, "fit_distance": fit_distance(pos, total, a, b)}


def voted_counts(pos: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The counts of items with two or more votes, as integers."""
    pos, total, voted = voted_mask(pos, total)
    return pos[voted], total[voted]


def voted_mask(pos: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """POS and TOTAL as integers (NaN, a label without votes, is 0), and which items have two or more votes."""
    pos, total = (np.nan_to_num(np.asarray(x, dtype=np.float64)).astype(np.int64) for x in (pos, total))
    if np.any((pos < 0) | (pos > total)):
        raise SkdError("vote counts out of range: a label has more positive votes than votes, or fewer than none")
    return pos, total, total >= 2


def fit_beta_binomial(pos: np.ndarray, total: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood (a, b) of Beta(a, b) behind Binomial(total, p) counts POS, over log a and log b."""
    from scipy.optimize import minimize
    from scipy.special import betaln

    def nll(t: np.ndarray) -> float:  # the binomial coefficient does not depend on (a, b)
        a, b = np.exp(t)
        return -float(np.sum(betaln(pos + a, total - pos + b) - betaln(a, b)))

    fit = minimize(nll, np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-8, "maxiter": 4000})
    a, b = np.exp(np.clip(fit.x, -10, 10))  # unanimous annotators drive a and b toward 0: keep them finite
    return float(a), float(b)


def held_out_votes(pos: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per vote: the vote, and the share of the item's other votes that are positive. An item's votes
    carry no order, so its first POS annotators are taken to be the positive ones. (Within an item with split
    votes, a positive vote's share is below a negative one's, so the AUC over these rows is low by about one pair
    in N items' worth: nothing at thousands of items, a point or two at the minimum of 20.)"""
    n = np.repeat(total, total)
    k = np.repeat(pos, total)
    rank = np.arange(len(n)) - np.repeat(np.cumsum(total) - total, total)  # position of the vote in its item
    vote = (rank < k).astype(int)
    return vote, (k - vote) / (n - 1)


def ceiling(a: float, b: float, total: np.ndarray, draws: int, seed: int) -> tuple[float, float]:
    """AUC and AP against simulated majority labels of a score that is each simulated item's own p (seeded; the
    items' vote counts drawn from TOTAL's)."""
    rng = np.random.default_rng(seed)
    p = rng.beta(a, b, draws)
    n = rng.choice(total, draws)
    label = (2 * rng.binomial(n, p) > n).astype(int)
    return _auc(label, p), _ap(label, p)


def fleiss_kappa(pos: np.ndarray, total: np.ndarray) -> float | None:
    """Agreement beyond chance of pairs of annotators of one item (Fleiss' kappa, two categories). Items may have
    different numbers of votes: each item's share of agreeing pairs counts once (Fleiss' mean over items, not
    Fleiss and Cuzick's pooling). None when every vote is the same (chance agreement is then 1)."""
    agree = (pos * (pos - 1) + (total - pos) * (total - pos - 1)) / (total * (total - 1))
    share = pos.sum() / total.sum()
    chance = share ** 2 + (1 - share) ** 2
    return float((agree.mean() - chance) / (1 - chance)) if chance < 1 else None


def fit_distance(pos: np.ndarray, total: np.ndarray, a: float, b: float) -> float:
    """Total variation distance between the observed and fitted distributions of positive votes, for the most
    common number of votes: near 0 when the beta-binomial describes the annotators."""
    from scipy.stats import betabinom

    n = int(np.bincount(total).argmax())
    seen = np.bincount(pos[total == n], minlength=n + 1) / np.sum(total == n)
    return float(0.5 * np.abs(seen - betabinom.pmf(np.arange(n + 1), n, a, b)).sum())


def against_one_annotator(scores: np.ndarray, pos: np.ndarray, total: np.ndarray) -> float:
    """AUC of a critic's SCORES against one annotator's vote (each held out in turn, as `held_out_votes`): comparable
    with how well the other annotators predict that vote."""
    vote, _ = held_out_votes(pos, total)
    return _auc(vote, np.repeat(np.asarray(scores, dtype=np.float64), total))


def beside_annotators(scores: np.ndarray, pos: np.ndarray, total: np.ndarray) -> dict[str, Any] | None:
    """A critic's SCORES beside the annotators of its labels, where MIN_ITEMS or more have two or more votes (None
    otherwise): the critic and the other annotators against one annotator's vote, and the ceiling on the majority.
    POS and TOTAL may hold NaN or 0 for labels without votes."""
    pos, total, voted = voted_mask(pos, total)
    if voted.sum() < MIN_ITEMS:
        return None
    r = annotator_agreement(pos[voted], total[voted])
    return {"items": int(voted.sum()), "critic_vs_one": against_one_annotator(np.asarray(scores)[voted], pos[voted],
                                                                              total[voted]),
            "annotators_vs_one": r["held_out_auc"], "fleiss_kappa": r["fleiss_kappa"],
            "ceiling_auc": r["ceiling_auc"], "ceiling_ap": r["ceiling_ap"]}


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:  # None with one class, as critics.metrics.report
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, s)) if 0 < np.mean(y) < 1 else None


def _ap(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import average_precision_score
    return float(average_precision_score(y, s)) if 0 < np.mean(y) < 1 else None
