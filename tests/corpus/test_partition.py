"""Partitioned semantic pair search against the exact all-pairs answer on seeded clustered vectors."""

from __future__ import annotations

import numpy as np
import pytest

from corpus.partition import audit, centroids, partitioned_pairs, plan


def clustered(n: int = 2000, d: int = 24, topics: int = 40, seed: int = 0) -> np.ndarray:
    """Topics with spread, plus near-copies of some rows (the duplicates to find), unit length."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(topics, d))[rng.integers(0, topics, n)] + 0.6 * rng.normal(size=(n, d))
    copies = rng.choice(n, n // 5, replace=False)
    x[copies[: len(copies) // 2]] = x[copies[len(copies) // 2:]] + 0.08 * rng.normal(size=(len(copies) // 2, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_pairs(x: np.ndarray, t: float) -> set[tuple[int, int]]:
    i, j = np.nonzero(np.triu(x @ x.T >= t, k=1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def exact_arrays(pairs: set[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    a, b = zip(*sorted(pairs), strict=True)
    return np.asarray(a), np.asarray(b)


@pytest.mark.parametrize("t", [0.8, 0.9])
def test_every_pair_is_found_when_certified(t):
    x = clustered()
    truth = exact_pairs(x, t)
    assert len(truth) > 100
    i, j, s, p = partitioned_pairs(x, t, parts=16, max_visits=16)
    assert p.uncertified == 0
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == truth
    assert np.all(s >= t - 1e-5) and len(i) == len(truth)  # each pair once
    assert p.largest < 2 * len(x)  # a partition's task holds its members and guests, not everything twice


def test_a_missed_pair_is_never_silent():
    """With too few visits allowed, pairs across borders are lost: each lost pair has an uncertain end, and the
    exact audit of a sample reports the loss (sampling every row, it is the true recall)."""
    x = clustered(seed=1)
    truth = exact_pairs(x, 0.9)
    i, j, _, p = partitioned_pairs(x, 0.9, parts=32, max_visits=1)
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    missed = truth - found
    assert missed and found <= exact_pairs(x, 0.9 - 1e-5)  # found ones are real (up to float rounding)
    assert all(p.uncertain[a] or p.uncertain[b] for a, b in missed)
    assert 0 < p.uncertified < len(x)
    everyone = audit(x, i, j, 0.9, sample=len(x))
    assert everyone.found < everyone.pairs
    assert everyone.recall == pytest.approx(len(found & truth) / len(truth), abs=0.01)
    assert audit(x, i, j, 0.9, sample=300).rows == 300
    assert audit(x, *exact_arrays(truth), 0.9, sample=500).recall == 1.0


def test_queries_search_only_new_rows_against_everything():
    x = clustered(seed=2)
    new = np.arange(1500, 2000)
    i, j, _, p = partitioned_pairs(x, 0.85, parts=12, max_visits=12, queries=new)
    assert p.uncertified == 0 and set(i.tolist()) <= set(new.tolist())
    truth = {(a, b) for a, b in exact_pairs(x, 0.85) if a in set(new) or b in set(new)}
    got = {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist(), strict=True)}
    assert got == truth


def test_plan_homes_are_nearest_centroids():
    x = clustered(n=500)
    c = centroids(x, 8)
    p = plan(x, c, 0.9, max_visits=8)
    assert np.array_equal(p.home, np.argmax(x @ c.T, axis=1))
    assert all(np.all(np.diff(q) > 0) for q in p.queries)  # sorted, no row twice in one partition
    assert p.visits_mean >= 1.0
