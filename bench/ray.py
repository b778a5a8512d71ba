"""The Ray engine against the local one on this machine, measured in one run.

1. Embedding and scoring N items (ATOMIC-2020 heads and tails from ../shared/data, repeated with a suffix to
   reach N): the local engine (one process, torch's threads) against the Ray engine (a local cluster of this
   machine, an actor pool of one model per CPU). Ray's time counts the actors' model loads but not the cluster's
   start, which is printed apart (a cluster is started once and serves every stage after).
2. Semantic dedup of M synthetic 384-d vectors (bench/dedup.py's clusters of near-duplicates): skd's single index
   against the partitioned search run locally and as Ray tasks; removals that agree with the single index, the
   busiest partition (the most vectors one worker holds), the sampled audit's recall.

    python bench/ray.py [--items 20000] [--vectors 1000000] [--partitions 256]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# bench/ray.py would shadow the ray package: import from the project root instead of this folder
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from bench.dedup import store_with_vectors, synthetic
from corpus import dedup, embed_items
from critics import train_critic
from critics.config import CriticConfig
from critics.score import score_items
from skd.engines import EngineConfig, mapper_for, start_ray, task_map_for
from store import Store, import_labels, ingest_file

DATA = ROOT.parent / "shared" / "data"


def texts(n: int) -> list[str]:
    """N distinct short texts: ATOMIC-2020 heads and tails, repeated with a numbered suffix past the end."""
    seen: list[str] = []
    for line in (DATA / "atomic2020/human_tuples.tsv").read_text().splitlines():
        hr, _, tails = line.partition("\t")
        seen += [hr.split(" @@ ")[0]] + [t.strip() for t in tails.split("|") if t.strip() not in ("", "none")]
    base = list(dict.fromkeys(seen))
    return [base[k % len(base)] + (f" ({k // len(base)})" if k >= len(base) else "") for k in range(n)]


def corpus(d: Path, n: int) -> Path:
    db = d / "c.duckdb"
    pq.write_table(pa.table({"kind": ["text"] * n, "text": texts(n)}), d / "t.parquet")
    with Store(db) as s:
        ingest_file(s, d / "t.parquet", "parquet")
        import_labels(s, ROOT / "examples/data/critic-labels.jsonl", "jsonl")
    train_critic(db, "c", CriticConfig(mode="embedding"), d / "critic")
    return db


def stages(db: Path, engine: EngineConfig | None) -> dict[str, float]:
    out = {}
    t = time.perf_counter()
    embed_items(db, chunk=1024, mapper=mapper_for(engine))
    out["embed"] = time.perf_counter() - t
    t = time.perf_counter()
    score_items(db, "c", chunk=1024, mapper=mapper_for(engine))
    out["score"] = time.perf_counter() - t
    return out


def engines_table(console: Console, n: int, tmp: Path) -> EngineConfig:
    base = corpus(tmp, n)
    local_db, ray_db = tmp / "local.duckdb", tmp / "ray.duckdb"
    shutil.copy(base, local_db)
    shutil.copy(base, ray_db)
    cfg = EngineConfig(kind="ray", actors=os.cpu_count() or 2)
    t = time.perf_counter()
    start_ray(cfg)
    started = time.perf_counter() - t
    local = stages(local_db, None)
    on_ray = stages(ray_db, cfg)
    table = Table(title=f"{n:,} items on {os.cpu_count()} CPUs: local engine vs Ray engine ({cfg.actors} actors); "
                        f"the Ray cluster started in {started:.1f} s (not counted)", title_justify="left")
    for col in ("stage", "local s", "local items/s", "Ray s", "Ray items/s", "Ray / local", "goal <= 1.2x"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage in ("embed", "score"):
        a, b = local[stage], on_ray[stage]
        table.add_row(stage, f"{a:.1f}", f"{n / a:,.0f}", f"{b:.1f}", f"{n / b:,.0f}", f"{b / a:.2f}x",
                      "yes" if b / a <= 1.2 else "no")
    console.print(table)
    return cfg


def dedup_table(console: Console, m: int, parts: int, cfg: EngineConfig, tmp: Path) -> None:
    db = tmp / "v.duckdb"
    store_with_vectors(db, synthetic(m))
    rows = []
    for name, kw in (("one index", {}), ("partitioned, local", {"partitions": parts}),
                     ("partitioned, Ray tasks", {"partitions": parts, "map_fn": task_map_for(cfg)})):
        with Store(db) as s:
            t = time.perf_counter()
            r = dedup(s, "semantic", 0.9, "global", incremental=False, **kw)
            seconds = time.perf_counter() - t
            gone = {x[0] for x in s.con.execute("SELECT item_id FROM dedup_clusters WHERE NOT is_representative")
                    .fetchall()}
        rows.append((name, r, seconds, gone))
    base = rows[0][3]
    table = Table(title=f"semantic dedup of {m:,} synthetic 384-d vectors, threshold 0.9, {parts} partitions "
                        "(each vector searched in its 4 nearest)", title_justify="left")
    for col in ("search", "s", "vs one index", "removed", "removals agreeing", "busiest partition (vectors, MiB)",
                "audit recall (sample)"):
        table.add_column(col, justify="left" if col == "search" else "right")
    for name, r, seconds, gone in rows:
        agree = len(base & gone) / max(1, len(base | gone))
        busiest = f"{r.largest_partition:,} ({r.largest_partition * 384 * 4 / 2 ** 20:,.0f})" if r.partitions else \
            f"{m:,} ({m * 384 * 4 / 2 ** 20:,.0f})"
        audit = f"{r.audit['recall']:.4f} ({r.audit['found']:,}/{r.audit['pairs']:,})" if r.audit else "exact"
        table.add_row(name, f"{seconds:.1f}", f"{seconds / rows[0][2]:.2f}x", f"{r.removed:,}", f"{agree:.4f}",
                      busiest, audit)
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=256)
    args = ap.parse_args()
    if not (DATA / "atomic2020/human_tuples.tsv").is_file():
        sys.exit(f"needs ../shared/data ({DATA})")
    console = Console(width=200)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = engines_table(console, args.items, Path(tmp))
        dedup_table(console, args.vectors, args.partitions, cfg, Path(tmp))
    console.print(f"python bench/ray.py --items {args.items} --vectors {args.vectors} --partitions {args.partitions}")


if __name__ == "__main__":
    main()
