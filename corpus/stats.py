"""Diversity statistics of a slice of the corpus (a `store.Slice`: a --where filter over items, or a snapshot's
membership). Every statistic states the number of items it was computed on (`n`), because several are estimated
on a seeded sample. The store reads the rows (`store.analytics`, `store.embeddings`); this module does the sums."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from store import MINILM, Slice, Store

SAMPLE = 2000  # pairwise cosine and Vendi score are quadratic in the sample
NGRAM_SAMPLE = 200_000
CLUSTER_SAMPLE = 50_000  # k-means for the cluster entropy


def counts(store: Store, sl: Slice) -> dict[str, Any]:
    return {"n": store.analytics.count(sl), **{c: store.analytics.value_counts(sl, c)
                                               for c in ("kind", "relation", "domain")}}


def uniqueness(store: Store, sl: Slice) -> dict[str, Any]:
    n, heads, tails = store.analytics.distinct_counts(sl)
    return {"n": n, "unique_heads": heads, "unique_tails": tails,
            "unique_heads_ratio": heads / n if n else 0.0, "unique_tails_ratio": tails / n if n else 0.0}


def distinct_n(texts: list[str], orders=(1, 2, 3)) -> dict[str, float]:
    """Distinct-n (Li et al. 2016): distinct n-grams / all n-grams, over lower-cased whitespace tokens."""
    out = {}
    tokenised = [t.lower().split() for t in texts]
    for k in orders:
        grams = [tuple(toks[i:i + k]) for toks in tokenised for i in range(len(toks) - k + 1)]
        out[f"distinct_{k}"] = len(set(grams)) / len(grams) if grams else 0.0
    return out


def lengths(texts: list[str]) -> dict[str, Any]:
    words = np.asarray([len(t.split()) for t in texts], dtype=np.int64)
    if not len(words):
        return {"n": 0}
    hist, edges = np.histogram(words, bins=min(20, max(1, int(words.max()))))
    return {"n": int(len(words)), "mean_words": float(words.mean()), "p50": float(np.median(words)),
            "p90": float(np.percentile(words, 90)), "max": int(words.max()),
            "histogram": {"counts": hist.tolist(), "edges": edges.tolist()}}


def vendi_score(x: np.ndarray) -> float:
    """exp(entropy of the eigenvalues of K/n), K the cosine kernel (Friedman & Dieng 2023): the effective
    number of distinct items, 1 when all are the same and n when all are orthogonal."""
    if not len(x):
        return 0.0
    eig = np.linalg.eigvalsh((x @ x.T).astype(np.float64) / len(x))
    eig = eig[eig > 1e-12]
    return float(np.exp(-(eig * np.log(eig)).sum()))


def cluster_entropy(x: np.ndarray, k: int, seed: int) -> dict[str, Any]:
    """Entropy of the k-means cluster sizes (faiss), and that entropy over log k (1 = evenly spread)."""
    import faiss

    k = max(2, min(k, len(x) // 4))
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False, min_points_per_centroid=1)
    km.train(x)
    _, assign = km.index.search(x, 1)
    p = np.bincount(assign[:, 0], minlength=k) / len(x)
    p = p[p > 0]
    h = float(-(p * np.log(p)).sum())
    return {"n": int(len(x)), "k": k, "entropy": h, "normalised": h / math.log(k)}


def embedding_stats(store: Store, sl: Slice, model: str, sample: int, seed: int) -> dict[str, Any]:
    """Pairwise cosine and Vendi on `sample` vectors, k-means entropy on up to CLUSTER_SAMPLE (seeded draws)."""
    x, _ = store.embeddings.load(model, sl.drawn(CLUSTER_SAMPLE, seed))
    embedded = store.embeddings.count(model, sl)
    if len(x) < 8:
        return {"n": embedded, "model": model, "note": "fewer than 8 embedded items; run `skd embed`"}
    rng = np.random.default_rng(seed)
    s = x[rng.choice(len(x), min(sample, len(x)), replace=False)]
    sim = s @ s.T
    pairs = sim[np.triu_indices(len(s), 1)]
    return {"n": embedded, "model": model,
            "pairwise_cosine": {"n": int(len(s)), "mean": float(pairs.mean()), "std": float(pairs.std()),
                                "histogram": np.histogram(pairs, bins=20, range=(-1, 1))[0].tolist()},
            "vendi": {"n": int(len(s)), "score": vendi_score(s), "per_item": vendi_score(s) / len(s)},
            "cluster_entropy": cluster_entropy(x, int(math.sqrt(len(x))), seed)}


def novelty(store: Store, sl: Slice) -> dict[str, Any]:
    """Generated items whose normalised form is not among the seeds (the items that came in by ingest)."""
    n, novel, seeds = store.analytics.novelty_counts(sl)
    return {"n": n, "seeds": seeds, "novel": novel, "rate": novel / n if n else None}


def critic_scores(store: Store, sl: Slice) -> dict[str, Any]:
    out = {}
    for name, vals in store.analytics.scores_per_critic(sl).items():
        v = np.asarray(vals, dtype=np.float64)
        out[name] = {"n": int(len(v)), "mean": float(v.mean()), "p50": float(np.median(v)),
                     "histogram": np.histogram(v, bins=10, range=(0, 1))[0].tolist()}
    return out


def duplicate_rates(store: Store, sl: Slice) -> list[dict[str, Any]]:
    """For each stored dedup setting: the fraction of the slice's clustered items that are not representatives."""
    return [d | {"rate": d["duplicates"] / d["n"]} for d in store.analytics.duplicate_counts(sl)]


def corpus_stats(store: Store, sl: Slice, model: str = MINILM, sample: int = SAMPLE, seed: int = 0) -> dict[str, Any]:
    """All statistics of the slice `sl`."""
    texts = store.analytics.contents(sl, NGRAM_SAMPLE, seed)
    return {
        "counts": counts(store, sl),
        "uniqueness": uniqueness(store, sl),
        "distinct_n": {"n": len(texts), **distinct_n(texts)},
        "lengths": lengths(texts),
        "embeddings": embedding_stats(store, sl, model, sample, seed),
        "novelty": novelty(store, sl),
        "critic_scores": critic_scores(store, sl),
        "duplicates": duplicate_rates(store, sl),
    }
