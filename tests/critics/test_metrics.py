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
    assert at_threshold(scores, labels, 0.4) == {"threshold": 0.4, "precision": 4 / 6, "recall": 1.0,
                                                 "f1": pytest.approx(0.8), "kept": 0.6}
    rep = report(scores, labels, t)
    assert rep["auc"] == pytest.approx(21 / 24) and rep["n"] == 10  # 21 of 24 pos/neg pairs ordered


def test_verbalisation():
    assert verbalize({"kind": "triple", "head": "PersonX eats", "relation": "xWant", "tail": "to sleep"}) == (
        "PersonX eats. as a result, PersonX wants to sleep")
    assert verbalize({"kind": "rationale", "question": "Q?", "answer": "a", "rationale": "because"}) == (
        "Question: Q? Answer: a Explanation: because")
