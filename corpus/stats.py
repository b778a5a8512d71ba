"""Diversity statistics of a slice of the corpus. The slice is any query that returns item_ids (a --where
filter over items, or a snapshot's membership). Every statistic states the number of items it was computed
on (`n`), because several are estimated on a seeded sample."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from store import MINILM, Store

from .dedup import exact_norm_sql
from .embed import load_vectors

CONTENT_SQL = "coalesce(i.tail, i.rationale, i.answer, i.text, '')"  # the generated part of an item
SAMPLE = 2000  # pairwise cosine and Vendi score are quadratic in the sample
NGRAM_SAMPLE = 200_000
CLUSTER_SAMPLE = 50_000  # k-means for the cluster entropy


def slice_sql(where: str | None = None, snapshot_id: str | None = None) -> str:
    """A query returning the item_ids of a slice."""
    if snapshot_id is not None:
        return f"SELECT item_id FROM snapshot_items WHERE snapshot_id = '{snapshot_id.replace(chr(39), '')}'"
    return f"SELECT item_id FROM items WHERE {where}" if where else "SELECT item_id FROM items"


def _grouped(store: Store, ids: str, col: str) -> dict[str, int]:
    rows = store.con.execute(f"SELECT coalesce({col}, '(none)'), count(*) FROM items WHERE item_id IN ({ids}) "
                             "GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
    return {k: int(v) for k, v in rows}


def counts(store: Store, ids: str) -> dict[str, Any]:
    n = store.scalar(f"SELECT count(*) FROM items WHERE item_id IN ({ids})")
    return {"n": int(n), "kind": _grouped(store, ids, "kind"), "relation": _grouped(store, ids, "relation"),
            "domain": _grouped(store, ids, "domain")}


def uniqueness(store: Store, ids: str) -> dict[str, Any]:
    n, heads, tails = store.con.execute(
        f"SELECT count(*), count(DISTINCT {exact_norm_sql('coalesce(i.head, i.question)')}), "
        f"count(DISTINCT {exact_norm_sql(CONTENT_SQL)}) FROM items i WHERE item_id IN ({ids})").fetchall()[0]
    return {"n": int(n), "unique_heads": int(heads), "unique_tails": int(tails),
            "unique_heads_ratio": heads / n if n else 0.0, "unique_tails_ratio": tails / n if n else 0.0}


def distinct_n(texts: list[str], orders=(1, 2, 3)) -> dict[str, float]:
    """Distinct-n (Li et al. 2016): distinct n-grams / all n-grams, over lower-cased whitespace tokens."""
    out = {}
    tokenised = [t.lower().split() for t in texts]
    for k in orders:
        grams = [tuple(toks[i:i + k]) for toks in tokenised for i in range(len(toks) - k + 1)]
        out[f"distinct_{k}"] = len(set(grams)) / len(grams) if grams else 0.0
    return out


def sampled_contents(store: Store, ids: str, limit: int, seed: int) -> list[str]:
    rows = store.con.execute(f"SELECT {CONTENT_SQL} FROM items i WHERE item_id IN ({ids}) "
                             f"ORDER BY md5(item_id || ?) LIMIT {int(limit)}", [str(seed)]).fetchall()
    return [r[0] for r in rows]


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


def embedding_stats(store: Store, ids: str, model: str, sample: int, seed: int) -> dict[str, Any]:
    """Pairwise cosine and Vendi on `sample` vectors, k-means entropy on up to CLUSTER_SAMPLE (seeded draws)."""
    drawn = f"SELECT item_id FROM ({ids}) ORDER BY md5(item_id || '{int(seed)}') LIMIT {CLUSTER_SAMPLE}"
    x, _ = load_vectors(store.con, model, drawn)
    embedded = store.scalar(f"SELECT count(*) FROM embeddings WHERE model = ? AND item_id IN ({ids})", [model])
    if len(x) < 8:
        return {"n": int(embedded), "model": model, "note": "fewer than 8 embedded items; run `skd embed`"}
    rng = np.random.default_rng(seed)
    s = x[rng.choice(len(x), min(sample, len(x)), replace=False)]
    sim = s @ s.T
    pairs = sim[np.triu_indices(len(s), 1)]
    return {"n": int(embedded), "model": model,
            "pairwise_cosine": {"n": int(len(s)), "mean": float(pairs.mean()), "std": float(pairs.std()),
                                "histogram": np.histogram(pairs, bins=20, range=(-1, 1))[0].tolist()},
            "vendi": {"n": int(len(s)), "score": vendi_score(s), "per_item": vendi_score(s) / len(s)},
            "cluster_entropy": cluster_entropy(x, int(math.sqrt(len(x))), seed)}


def novelty(store: Store, ids: str) -> dict[str, Any]:
    """Generated items whose normalised form is not among the seeds (the items that came in by ingest)."""
    key = f"concat_ws(chr(31), i.kind, {exact_norm_sql('coalesce(i.head, i.question)')}, " \
          f"coalesce(i.relation, ''), {exact_norm_sql(CONTENT_SQL)})"
    n, novel, seeds = store.con.execute(f"""
        WITH seeds AS (SELECT DISTINCT {key} AS k FROM items i
                       WHERE item_id IN (SELECT item_id FROM item_sources WHERE request_id IS NULL)),
             gen AS (SELECT {key} AS k FROM items i WHERE item_id IN ({ids})
                     AND item_id IN (SELECT item_id FROM item_sources WHERE request_id IS NOT NULL))
        SELECT (SELECT count(*) FROM gen), (SELECT count(*) FROM gen WHERE k NOT IN (SELECT k FROM seeds)),
               (SELECT count(*) FROM seeds)""").fetchall()[0]
    return {"n": int(n), "seeds": int(seeds), "novel": int(novel), "rate": novel / n if n else None}


def critic_scores(store: Store, ids: str) -> dict[str, Any]:
    rows = store.con.execute(f"SELECT c.name, s.score FROM scores s JOIN critics c USING (critic_id) "
                             f"WHERE s.item_id IN ({ids}) ORDER BY c.name").fetchall()
    by: dict[str, list[float]] = {}
    for name, score in rows:
        by.setdefault(name, []).append(score)
    out = {}
    for name, vals in by.items():
        v = np.asarray(vals, dtype=np.float64)
        out[name] = {"n": int(len(v)), "mean": float(v.mean()), "p50": float(np.median(v)),
                     "histogram": np.histogram(v, bins=10, range=(0, 1))[0].tolist()}
    return out


def duplicate_rates(store: Store, ids: str) -> list[dict[str, Any]]:
    """For each stored dedup setting: the fraction of the slice's clustered items that are not representatives."""
    rows = store.con.execute(f"""SELECT method, threshold, scope, count(*), count(*) FILTER (NOT is_representative)
        FROM dedup_clusters WHERE item_id IN ({ids}) GROUP BY ALL ORDER BY method, threshold, scope""").fetchall()
    return [{"method": m, "threshold": t, "scope": s, "n": int(n), "duplicates": int(d), "rate": d / n}
            for m, t, s, n, d in rows]


def corpus_stats(store: Store, ids: str, model: str = MINILM, sample: int = SAMPLE, seed: int = 0) -> dict[str, Any]:
    """All statistics of the slice `ids` (a query returning item_ids)."""
    texts = sampled_contents(store, ids, NGRAM_SAMPLE, seed)
    return {
        "counts": counts(store, ids),
        "uniqueness": uniqueness(store, ids),
        "distinct_n": {"n": len(texts), **distinct_n(texts)},
        "lengths": lengths(texts),
        "embeddings": embedding_stats(store, ids, model, sample, seed),
        "novelty": novelty(store, ids),
        "critic_scores": critic_scores(store, ids),
        "duplicates": duplicate_rates(store, ids),
    }
