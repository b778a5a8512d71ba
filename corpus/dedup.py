"""Dedup: exact (a normalised form) and semantic (faiss over stored embeddings). Pairs above the cosine
threshold within a scope are connected into clusters; each cluster keeps one representative (the best
score of a named critic, ties broken by item_id). Results go to `dedup_clusters`, one row per item per
(method, threshold, scope), so several settings sit side by side and a new threshold needs no re-embedding.

Incremental: the stored clusters of a setting seed the union-find, and only the new items are searched
against everything; with exact search this equals a full rerun (old components stay connected, and any
new edge touches a new item).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from store import MINILM, SCOPES, SkdError, Slice, Store

from .partition import audit, partitioned_pairs

METHODS = ("exact", "semantic")


class DedupConfig(BaseModel):
    """A dedup setting: the one definition behind `skd dedup`'s options, the pipeline's [dedup] table and the
    defaults of `dedup()`."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["exact", "semantic"] = Field("semantic", description="exact: normalised form; semantic: "
                                                                         "embedding cosine.")
    threshold: float = Field(0.9, gt=0, le=1, description="Cosine similarity at or above which items are "
                                                          "duplicates (semantic).")
    scope: Literal["global", "head", "head-relation", "head-tail"] = Field(
        "head-relation", description="Compare items globally, within a head, within a head and relation, or "
                                     "within a head and tail (an entity pair).")
    model: str = Field(MINILM, description="Embedding model (semantic): HF id, path, or an embedded one.")
    partitions: int = Field(0, ge=0, description="Semantic: 0 searches one index; N splits the vectors into N "
                                                 "k-means partitions searched one by one (bounded memory, parallel "
                                                 "on the Ray engine); each run audits its recall on a sample "
                                                 "(corpus/partition.py).")
    max_visits: int = Field(4, ge=1, description="Partitioned: partitions each vector is searched in at most (its "
                                                 "nearest); the run audits a sample exactly and reports the recall.")


DEFAULT = DedupConfig()
FLAT_MAX = 20_000  # exact inner-product search up to here; IVF beyond (bench/dedup.py: 5x faster at 100k)
EXACT_THRESHOLD = 1.0  # the threshold recorded for exact dedup


@dataclass
class DedupResult:
    method: str
    threshold: float
    scope: str
    items: int = 0
    clusters: int = 0
    removed: int = 0
    pairs: int = 0
    searched: int = 0
    partitions: int = 0
    max_visits: int = 0
    uncertified: int = 0  # partitioned search: vectors near more partitions than they visited
    largest_partition: int = 0  # vectors in the busiest partition's task (members and guests): a worker's memory
    audit: dict[str, Any] = field(default_factory=dict)  # partitioned: exact search of a sample, pairs found of it
    seconds: float = 0.0
    dry_run: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def item_index(store: Store, ids: list[str], model: str, where: str | None) -> tuple[Any, np.ndarray | None]:
    """A faiss index whose row k is the stored vector of ids[k] (sorted ids), and the matrix when small.

    Up to FLAT_MAX: exact inner product over an in-memory matrix. Beyond: an IVF index trained on a sample
    and filled batch by batch from DuckDB, so the vectors are held once, inside the index (1M x 384: 1.5 GiB);
    queries read them back through a direct map."""
    import faiss

    n = len(ids)
    if n <= FLAT_MAX:
        x = vectors_for(store, ids, model, where)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        return index, x
    order = np.asarray(ids)
    nlist = min(int(4 * np.sqrt(n)), n)
    rng = np.random.default_rng(0)
    sample, _ = store.embeddings.load(model, order[rng.choice(n, min(n, nlist * 32), replace=False)])
    if not len(sample):
        raise SkdError(f"items have no {model} embedding; run `skd embed` first")
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(sample.shape[1]), sample.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    del sample
    index.nprobe = 16
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    for batch_ids, vectors in store.embeddings.iter_vectors(model, Slice(where=where)):
        index.add_with_ids(vectors, np.searchsorted(order, batch_ids).astype(np.int64))
    if index.ntotal != n:
        raise SkdError(f"{n - index.ntotal:,} items have no {model} embedding; run `skd embed` first")
    return index, None


def semantic_pairs(index: Any, x: np.ndarray | None, threshold: float, queries: np.ndarray | None = None,
                   block: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j, cosine) with cosine >= threshold; `queries` limits the search to those rows."""
    rows = np.arange(index.ntotal) if queries is None else queries
    ii, jj, ss = [], [], []
    for start in range(0, len(rows), block):
        q = rows[start:start + block]
        lims, dist, idx = index.range_search(x[q] if x is not None else index.reconstruct_batch(q),
                                             threshold - 1e-6)
        src = np.repeat(q, np.diff(lims).astype(np.int64))
        keep = src != idx
        if queries is None:
            keep &= src < idx  # each pair once
        ii.append(src[keep])
        jj.append(idx[keep])
        ss.append(dist[keep])
    return _cat(ii, np.int64), _cat(jj, np.int64), _cat(ss, np.float32)


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def item_frame(store: Store, where: str | None, scope: str, critic_id: str | None, exact: bool = True) -> pa.Table:
    """The items to cluster, by item_id, with their scope key, normalised form (exact only) and critic score."""
    return store.dedup.items(where, scope, critic_id, exact=exact)


def representatives(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Index of each cluster's best-scored member (NULL scores last; ties: the smallest item_id, i.e. row)."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    order = np.lexsort((np.arange(len(labels)), -s, labels))  # by cluster, then best score, then row
    first = np.ones(len(order), dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    rep = np.empty(labels.max() + 1 if len(labels) else 0, dtype=np.int64)
    rep[labels[order][first]] = order[first]
    return rep


def codes(values: list[str]) -> np.ndarray:
    return np.unique(np.asarray(values, dtype=object), return_inverse=True)[1].astype(np.int64)


def critic_id_for(store: Store, critic: str | None) -> str | None:
    if critic is None:
        return None
    return store.critics.get(critic)["critic_id"]


def previous_edges(store: Store, ids: list[str], method: str, threshold: float, scope: str, model: str,
                   where: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chains through the stored clusters of this setting that a run with the same model and filter made, and
    which rows those clustered (the rest are searched again)."""
    prev = store.dedup.clusters(method, threshold, scope, model=model, where=where, default_model=DEFAULT.model)
    row_of = {item: k for k, item in enumerate(ids)}
    old = np.zeros(len(ids), dtype=bool)
    members: dict[str, list[int]] = {}
    for item, cluster in prev:
        if item in row_of:
            old[row_of[item]] = True
            members.setdefault(cluster, []).append(row_of[item])
    i = [m[k] for m in members.values() for k in range(len(m) - 1)]
    j = [m[k + 1] for m in members.values() for k in range(len(m) - 1)]
    return np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64), old


def dedup(store: Store, method: str = DEFAULT.method, threshold: float = DEFAULT.threshold, scope: str = DEFAULT.scope,
          critic: str | None = None, where: str | None = None, model: str = DEFAULT.model, incremental: bool = True,
          dry_run: list[float] | None = None, partitions: int = DEFAULT.partitions,
          max_visits: int = DEFAULT.max_visits, map_fn: Callable = map) -> DedupResult:
    """Cluster duplicates and store one row per item for this (method, threshold, scope). With PARTITIONS, the
    semantic search runs partition by partition through MAP_FN (an engine passes its parallel map)."""
    if method not in METHODS or scope not in SCOPES:
        raise SkdError(f"method must be one of {', '.join(METHODS)} and scope one of {', '.join(SCOPES)}")
    if method == "semantic" and not 0 < threshold <= 1:
        raise SkdError("--threshold is a cosine similarity in (0, 1]")
    started = time.monotonic()
    threshold = EXACT_THRESHOLD if method == "exact" else float(threshold)
    frame = item_frame(store, where, scope, critic_id_for(store, critic), exact=method == "exact")
    ids = frame["item_id"].to_pylist()
    n = len(ids)
    result = DedupResult(method, threshold, scope, items=n)
    scores = np.asarray(frame["score"].to_numpy(zero_copy_only=False), dtype=np.float64)
    scope_codes = codes(frame["scope_key"].to_pylist())
    if method == "exact":
        labels = codes([f"{s}\x1f{k}" for s, k in zip(scope_codes.tolist(), frame["exact_key"].to_pylist(),
                                                      strict=True)])
    else:
        if dry_run:
            index, x = item_index(store, ids, model, where)
            return dry_run_report(store, result, index, x, ids, scope_codes, dry_run, started)
        oi, oj, old = previous_edges(store, ids, method, threshold, scope, model, where) if incremental else (
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(n, dtype=bool))
        queries = np.nonzero(~old)[0] if old.any() else None
        if partitions and n:
            x = vectors_for(store, ids, model, where)
            i, j, _, p = partitioned_pairs(x, threshold, partitions, max_visits, queries, map_fn=map_fn)
            result.partitions, result.max_visits = partitions, max_visits
            result.uncertified, result.largest_partition = p.uncertified, p.largest
            a = audit(x, i, j, threshold, queries=queries)
            result.audit = {"items": a.rows, "pairs": a.pairs, "found": a.found, "recall": round(a.recall, 6)}
            del x
        else:
            index, x = item_index(store, ids, model, where)
            i, j, _ = semantic_pairs(index, x, threshold, queries)
        same = scope_codes[i] == scope_codes[j]
        i, j = i[same], j[same]
        result.pairs, result.searched = len(i), n if queries is None else len(queries)
        labels = components(n, np.concatenate([i, oi]), np.concatenate([j, oj]))
    write_clusters(store, result, ids, labels, scores, where, model if method == "semantic" else None)
    result.seconds = time.monotonic() - started
    return result


def vectors_for(store: Store, ids: list[str], model: str, where: str | None) -> np.ndarray:
    x, vec_ids = store.embeddings.load(model, Slice(where=where))
    if len(vec_ids) != len(ids):
        raise SkdError(f"{len(ids) - len(vec_ids):,} items have no {model} embedding; run `skd embed` first")
    return x


def write_clusters(store: Store, result: DedupResult, ids: list[str], labels: np.ndarray, scores: np.ndarray,
                   where: str | None, model: str | None = None) -> None:
    rep = representatives(labels, scores)
    rep_row = rep[labels] if len(labels) else np.zeros(0, dtype=np.int64)
    id_arr = np.asarray(ids, dtype=object)
    table = pa.table({"item_id": ids, "cluster_id": id_arr[rep_row].tolist() if len(ids) else [],
                      "is_representative": (rep_row == np.arange(len(ids))).tolist()})
    result.clusters = int(len(rep))
    result.removed = result.items - result.clusters
    config = {"method": result.method, "threshold": result.threshold, "scope": result.scope, "where": where}
    if model:
        config["model"] = model
    if result.partitions:
        config |= {"partitions": result.partitions, "max_visits": result.max_visits}
    run_id = store.start_run("dedup", config)
    with store.transaction():  # the clusters and their run's record commit together
        store.dedup.write(result.method, result.threshold, result.scope, table, run_id)
        store.finish_run(run_id, "ok", result.as_dict())


def dry_run_report(store: Store, result: DedupResult, index: Any, x: np.ndarray | None, ids: list[str],
                   scope_codes: np.ndarray,
                   thresholds: list[float], started: float, samples: int = 3) -> DedupResult:
    """How many items each threshold would remove, and pairs just above each threshold, to look at."""
    from critics.verbalize import verbalize

    i, j, s = semantic_pairs(index, x, min(thresholds))
    same = scope_codes[i] == scope_codes[j]
    i, j, s = i[same], j[same], s[same]
    for t in sorted(thresholds):
        keep = s >= t
        n_clusters = int(components(len(ids), i[keep], j[keep]).max() + 1) if len(ids) else 0
        near = np.nonzero(keep & (s < t + 0.03))[0][:samples]
        pairs = []
        for k in near:
            rows = store.items.select(item_ids=[ids[i[k]], ids[j[k]]])
            pairs.append({"cosine": round(float(s[k]), 4), "a": verbalize(rows[0]), "b": verbalize(rows[-1])})
        result.dry_run.append({"threshold": t, "would_remove": len(ids) - n_clusters, "pairs": int(keep.sum()),
                               "borderline": pairs})
    result.seconds = time.monotonic() - started
    return result
