import numpy as np
import pytest

from critics.metrics import at_threshold, choose_thresholds, kept_table, report
from critics.verbalize import verbalize


def test_kept_table_and_thresholds_on_a_fixture():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    labels = np.array([1, 1, 0, 1, 0, 1, 0, 0, 0, 0])
    kept = kept_table(scores, labels)
    assert [r["acceptable"] for r in kept][:4] == [1.0, 1.0, pytest.approx(2 / 3), 0.75]
    assert kept[-1] == {"kept": 1.0, "acceptable": 0.4}
    t = choose_thresholds(scores, labels, recalls=(0.5, 1.0), precisions=(1.0,))
    assert t == {"recall@0.5": 0.8, "recall@1": 0.4, "precision@1": 0.8}
    tied = choose_thresholds(np.array([.1, .4, .35, .8, .8]), np.array([0, 0, 1, 1, 0]), (0.5,), (0.99,))
    assert tied == {"recall@0.5": 0.8}  # no cut reaches precision 0.99: none is named for it
    assert at_threshold(scores, labels, 0.4) == {"threshold": 0.4, "precision": 4 / 6, "recall": 1.0,
                                                 "f1": pytest.approx(0.8), "kept": 0.6}
    rep = report(scores, labels, t)
    assert rep["auc"] == pytest.approx(21 / 24) and rep["n"] == 10  # 21 of 24 pos/neg pairs ordered


def test_verbalisation():
    assert verbalize({"kind": "triple", "head": "PersonX eats", "relation": "xWant", "tail": "to sleep"}) == (
        "PersonX eats. as a result, PersonX wants to sleep")
    assert verbalize({"kind": "rationale", "question": "Q?", "answer": "a", "rationale": "because"}) == (
        "Question: Q? Answer: a Explanation: because")


def test_platt_calibration_brings_predicted_close_to_observed():
    from critics.calibration import apply, calibration_error, fit_platt

    rng = np.random.default_rng(0)
    truth = rng.uniform(0.02, 0.98, 4000)
    labels = (rng.uniform(size=4000) < truth).astype(int)
    overconfident = 1 / (1 + np.exp(-4 * np.log(truth / (1 - truth)) - 2))  # sharper and shifted up
    cal = fit_platt(overconfident, labels)
    fixed = apply(overconfident, cal)
    assert calibration_error(overconfident, labels) > 0.1
    assert calibration_error(fixed, labels) < 0.03
    assert abs(fixed.mean() - labels.mean()) < 0.01
    assert np.all(np.diff(fixed[np.argsort(overconfident)]) >= 0)  # monotone: the ranking (AUC) is kept


def test_grouped_folds_never_split_a_group():
    from critics.crossval import grouped_folds

    keys = [f"head {i % 37}" for i in range(500)]
    fold = grouped_folds(keys, 5, seed=3)
    by_key: dict[str, set[int]] = {}
    for k, f in zip(keys, fold, strict=True):
        by_key.setdefault(k, set()).add(int(f))
    assert all(len(v) == 1 for v in by_key.values()) and set(fold.tolist()) == set(range(5))
    sizes = np.bincount([next(iter(v)) for v in by_key.values()])
    assert sizes.max() - sizes.min() <= 1  # groups dealt round-robin
    assert np.array_equal(fold, grouped_folds(keys, 5, seed=3))


def test_platt_on_a_tiny_separable_or_inverted_dev_set():
    from critics.calibration import apply, fit_platt

    cal = fit_platt(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))  # separable: finite, not extreme
    p = apply(np.array([0.1, 0.9]), cal)
    assert 0.05 < p[0] < 0.5 < p[1] < 0.95
    assert fit_platt(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) is None  # would invert the ranking
    assert fit_platt(np.array([0.3, 0.6]), np.array([1, 1])) is None  # one class: nothing to fit


def test_labels_of_one_item_spaced_differently_split_together():
    import polars as pl

    from critics.train import split

    heads = [f"PersonX eats meal {i}" for i in range(200)]
    df = pl.DataFrame({"head": heads + [h.replace(" meal", "  Meal\t") for h in heads],  # one item id each pair
                       "label": [i % 2 for i in range(400)], "source": ["crowd"] * 200 + ["expert"] * 200})
    train, dev = split(df, 0.3, seed=0)
    assert 0 < dev.height < 400 and dev.height % 2 == 0  # both labels of a head, or neither
    norm = {" ".join(h.lower().split()) for h in dev["head"].to_list()}
    assert not norm & {" ".join(h.lower().split()) for h in train["head"].to_list()}
