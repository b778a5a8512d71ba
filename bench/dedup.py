"""Semantic dedup against semhash (the tool users would otherwise pick), same MiniLM embeddings, same run.

1. Quality on STS-B dev (../shared/data/stsb): every sentence of the labelled pairs goes into one set; a pair
   counts as "duplicate" when a method puts both sentences in one group; gold duplicates are pairs scored >= 4.
   Precision, recall and F1 per cosine threshold, for skd and semhash.
2. Speed and peak memory on N texts with precomputed 384-d embeddings (clustered synthetic vectors: texts are
   not needed to measure the search), each method in its own process. skd reads the vectors from its DuckDB
   store; semhash gets them in memory (SemHash.from_embeddings).

    pip install semhash   # (make bench does it)
    python bench/dedup.py [--sizes 100000,1000000] [--threshold 0.9]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
STSB = ROOT.parent / "shared" / "data" / "stsb" / "sts-dev.csv"
THRESHOLDS = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


class Precomputed:
    """The Encoder protocol semhash asks for, answering from vectors computed once."""

    def __init__(self, texts: list[str], vectors: np.ndarray):
        self.row = {t: k for k, t in enumerate(texts)}
        self.vectors = vectors

    def encode(self, inputs, **kw) -> np.ndarray:
        return self.vectors[[self.row[t] for t in inputs]]


def stsb_pairs() -> list[tuple[str, str, float]]:
    with open(STSB, encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 7]
    return [(r[5], r[6], float(r[4])) for r in rows]


def store_with_vectors(db: Path, vectors: np.ndarray, texts: list[str] | None = None) -> list[str]:
    """A corpus of text items with their embeddings already stored (the state after `skd embed`)."""
    from store import Store

    n = len(vectors)
    ids = [f"i{k:08d}" for k in range(n)]
    flat = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])
    table = pa.table({"item_id": ids, "text": texts or ids, "vector": flat})
    with Store(db) as s:
        s.con.register("_t", table)
        s.con.execute("INSERT INTO items (item_id, kind, text) SELECT item_id, 'text', text FROM _t")
        s.con.execute("INSERT INTO embeddings (item_id, model, vector) SELECT item_id, 'all-minilm-l6-v2', "
                      "vector::FLOAT[] FROM _t")
        s.con.unregister("_t")
    return ids


def f1(pred: np.ndarray, gold: np.ndarray) -> tuple[float, float, float]:
    tp = float((pred & gold).sum())
    p = tp / pred.sum() if pred.sum() else 0.0
    r = tp / gold.sum() if gold.sum() else 0.0
    return p, r, 2 * p * r / (p + r) if p + r else 0.0


def quality(console: Console) -> None:
    from semhash import SemHash
    from sentence_transformers import SentenceTransformer

    from corpus import dedup
    from store import Store, resolve_model

    pairs = stsb_pairs()
    texts = sorted({t for a, b, _ in pairs for t in (a, b)})
    vectors = SentenceTransformer(resolve_model("all-minilm-l6-v2")).encode(
        texts, normalize_embeddings=True, batch_size=128).astype(np.float32)
    gold = np.asarray([s >= 4.0 for _, _, s in pairs])
    t = Table(title=f"STS-B dev: {len(pairs):,} pairs ({int(gold.sum())} scored >= 4), {len(texts):,} sentences, "
                    "MiniLM")
    for col in ("threshold", "skd P", "skd R", "skd F1", "semhash P", "semhash R", "semhash F1"):
        t.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "q.duckdb"
        ids = store_with_vectors(db, vectors, texts)
        row_of = {tx: k for k, tx in enumerate(texts)}
        best = {"skd": (0.0, 0.0), "semhash": (0.0, 0.0)}
        for thr in THRESHOLDS:
            with Store(db) as s:
                dedup(s, "semantic", thr, "global")
                cl = dict(s.con.execute("SELECT item_id, cluster_id FROM dedup_clusters WHERE threshold = ?",
                                        [thr]).fetchall())
            ours = np.asarray([cl[ids[row_of[a]]] == cl[ids[row_of[b]]] for a, b, _ in pairs])
            sh = SemHash.from_embeddings(vectors, texts, model=Precomputed(texts, vectors)).self_deduplicate(thr)
            group = {r: r for r in sh.selected}
            group |= {d.record: d.duplicate_of for d in sh.filtered}
            theirs = np.asarray([group.get(a, a) == group.get(b, b) or group.get(a) == b or group.get(b) == a
                                 for a, b, _ in pairs])
            (p1, r1, f_1), (p2, r2, f_2) = f1(ours, gold), f1(theirs, gold)
            best["skd"] = max(best["skd"], (f_1, thr))
            best["semhash"] = max(best["semhash"], (f_2, thr))
            t.add_row(f"{thr:.2f}", f"{p1:.3f}", f"{r1:.3f}", f"{f_1:.3f}", f"{p2:.3f}", f"{r2:.3f}", f"{f_2:.3f}")
    t.caption = (f"best F1: skd {best['skd'][0]:.3f} at {best['skd'][1]}, semhash {best['semhash'][0]:.3f} "
                 f"at {best['semhash'][1]}")
    console.print(t)


def synthetic(n: int, dim: int = 384, per_cluster: int = 5, seed: int = 0) -> np.ndarray:
    """Unit vectors in clusters of about `per_cluster` near-duplicates (pairwise cosine about 0.94)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // per_cluster), dim), dtype=np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.25 * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def child(method: str, n: int, threshold: float, db: Path) -> None:
    """One measurement in its own process, so its peak RSS is the method's alone. `prep` writes the store
    skd reads (the state after `skd embed`); it is not measured."""
    if method == "prep":
        store_with_vectors(db, synthetic(n))
        return
    started = time.monotonic()
    if method == "skd":
        from corpus import dedup
        from store import Store

        with Store(db) as s:
            removed = dedup(s, "semantic", threshold, "global").removed
    else:
        from semhash import SemHash

        x = synthetic(n)
        texts = [f"t{k}" for k in range(n)]
        started = time.monotonic()
        removed = len(SemHash.from_embeddings(x, texts, model=Precomputed(texts, x)).self_deduplicate(threshold)
                      .filtered)
    print("RESULT " + json.dumps({"seconds": time.monotonic() - started, "removed": removed,
                                  "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))


def measure(method: str, n: int, threshold: float, db: Path) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", method, "--n", str(n), "--threshold", str(threshold),
                        "--db", str(db)], capture_output=True, text=True)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if p.returncode or (method != "prep" and line is None):
        raise SystemExit(f"{method} at {n} failed:\n{p.stderr[-2000:]}")
    return json.loads(line[7:]) if line else {}


def speed(console: Console, sizes: list[int], threshold: float) -> None:
    t = Table(title=f"semantic dedup of precomputed 384-d embeddings, threshold {threshold}, "
                    f"{os.cpu_count()} CPUs")
    for col in ("items", "skd s", "skd peak GiB", "skd removed", "semhash s", "semhash peak GiB", "semhash removed",
                "speed-up"):
        t.add_column(col, justify="right")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "s.duckdb"
            measure("prep", n, threshold, db)
            a = measure("skd", n, threshold, db)
        b = measure("semhash", n, threshold, db)
        t.add_row(f"{n:,}", f"{a['seconds']:.1f}", f"{a['peak_gib']:.2f}", f"{a['removed']:,}", f"{b['seconds']:.1f}",
                  f"{b['peak_gib']:.2f}", f"{b['removed']:,}", f"{b['seconds'] / a['seconds']:.2f}x")
        console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--child")
    ap.add_argument("--n", type=int)
    ap.add_argument("--db", type=Path)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.n, args.threshold, args.db)
    console = Console(width=180)
    if not args.skip_quality:
        if STSB.is_file():
            quality(console)
        else:
            console.print(f"skipping the quality comparison: {STSB} is absent")
    speed(console, [int(s) for s in args.sizes.split(",")], args.threshold)


if __name__ == "__main__":
    main()
