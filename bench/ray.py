"""The Ray engine against the local one on this machine, measured in one run.

1. Embedding and scoring N items (ATOMIC-2020 heads and tails from ../shared/data, repeated with a suffix to
   reach N), timed as a user runs them: `skd embed` then `skd critic score`, each a fresh process, on the local
   engine (torch's threads) and on the Ray engine (an actor pool of one model per CPU) joined to a cluster of this
   machine started beforehand with `ray start` (a cluster is started once and serves every command after; its
   start is printed apart). Both engines pay their imports and model loads: the local engine once in its process,
   Ray once per actor. The import of sentence-transformers alone is timed too, for scale.
2. Generation of R atomic10x requests (ATOMIC-10x inferences for seed events, 4 samples each) by the embedded
   teacher (SmolLM2-135M-Instruct, transformers backend): the local engine against the Ray engine's actor pool of
   one teacher per CPU; the same seeds, so the bench also checks that both stored the same samples.
3. Semantic dedup of M synthetic 384-d vectors (bench/dedup.py's clusters of near-duplicates): skd's single index
   against the partitioned search run locally and as Ray tasks; removals that agree with the single index, the
   busiest partition (the most vectors one worker holds), the peak resident memory of the busiest Ray worker
   process (measured in the workers), the sampled audit's recall.

    python bench/ray.py [--items 20000] [--requests 96] [--vectors 1000000] [--partitions 256]
                        [--only engines|generate|dedup]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

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
from corpus import dedup
from critics import train_critic
from critics.config import CriticConfig
from generators import make_recipe, run_generation
from skd.engines import EngineConfig, start_ray, task_map_for, teacher_for
from store import Store, import_labels, ingest_file

DATA = ROOT.parent / "shared" / "data"
RAY_CLI = str(Path(sys.executable).parent / "ray")


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


def timed(args: list[str]) -> float:
    """Wall time of one skd command in a fresh process; a failure stops the bench with its output."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "skd", *args, "--quiet"], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"skd {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return time.perf_counter() - t


def stages(db: Path, engine: list[str]) -> dict[str, float]:
    common = ["--db", str(db), "--chunk", "1024", *engine]
    return {"embed": timed(["embed", *common]), "score": timed(["critic", "score", "c", *common])}


def import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def ray_cluster(cpus: int) -> float:
    """A local cluster of this machine for the commands to join (`--ray-address auto`); seconds to start it."""
    t = time.perf_counter()
    subprocess.run([RAY_CLI, "start", "--head", f"--num-cpus={cpus}",
                    "--include-dashboard=false", "--disable-usage-stats"], capture_output=True, check=True)
    return time.perf_counter() - t


def engines_table(console: Console, n: int, cfg: EngineConfig, tmp: Path) -> None:
    base = corpus(tmp, n)
    local_db, ray_db = tmp / "local.duckdb", tmp / "ray.duckdb"
    shutil.copy(base, local_db)
    shutil.copy(base, ray_db)
    st = import_seconds("sentence_transformers")
    local = stages(local_db, [])
    started = ray_cluster(cfg.actors)
    try:
        on_ray = stages(ray_db, ["--engine", "ray", "--ray-address", "auto", "--actors", str(cfg.actors)])
    finally:
        subprocess.run([RAY_CLI, "stop"], capture_output=True)
    table = Table(title=f"{n:,} items on {os.cpu_count()} CPUs, each command a fresh process: local engine vs Ray "
                        f"engine ({cfg.actors} actors); the Ray cluster started in {started:.1f} s (not counted); "
                        f"importing sentence-transformers takes {st:.1f} s", title_justify="left")
    for col in ("command", "local s", "local items/s", "Ray s", "Ray items/s", "Ray / local", "goal <= 1.2x"):
        table.add_column(col, justify="left" if col == "command" else "right")
    for stage, command in (("embed", "skd embed"), ("score", "skd critic score")):
        a, b = local[stage], on_ray[stage]
        table.add_row(command, f"{a:.1f}", f"{n / a:,.0f}", f"{b:.1f}", f"{n / b:,.0f}", f"{b / a:.2f}x",
                      "yes" if b / a <= 1.2 else "no")
    console.print(table)


def generate_once(db: Path, requests: int, engine: EngineConfig | None) -> float:
    recipe = make_recipe("atomic10x", {"events_from": "seeds", "max_events": requests // 4,
                                       "relations": ["xWant", "xNeed", "xReact", "xIntent"],
                                       "inference_sampling": {"n": 4, "temperature": 0.9, "top_p": 0.9,
                                                              "max_tokens": 16, "stop": ["\n"]}})
    t = time.perf_counter()
    teacher, mapper = teacher_for(engine, "transformers", "smollm2-135m-instruct", {"batch_size": 16})
    run_generation(db, recipe, teacher, seed=0, batch_size=16, mapper=mapper)
    teacher.close()
    return time.perf_counter() - t


def generate_table(console: Console, requests: int, cfg: EngineConfig, tmp: Path) -> None:
    local = generate_once(tmp / "g-local.duckdb", requests, None)
    on_ray = generate_once(tmp / "g-ray.duckdb", requests, cfg)
    sql = "SELECT request_id, sample_index, text FROM generations ORDER BY 1, 2"
    with Store(tmp / "g-local.duckdb", read_only=True) as a, Store(tmp / "g-ray.duckdb", read_only=True) as b:
        same = a.con.execute(sql).fetchall() == b.con.execute(sql).fetchall()
        samples = a.scalar("SELECT count(*) FROM generations")
    table = Table(title=f"generation: {requests} atomic10x requests x 4 samples, SmolLM2-135M-Instruct "
                        f"(transformers); Ray: {cfg.actors} teacher actors", title_justify="left")
    for col in ("engine", "s", "samples/s", "vs local", "goal <= 1.2x", "same samples as local"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    table.add_row("local", f"{local:.1f}", f"{samples / local:.1f}", "1.00x", "", "")
    table.add_row("ray", f"{on_ray:.1f}", f"{samples / on_ray:.1f}", f"{on_ray / local:.2f}x",
                  "yes" if on_ray / local <= 1.2 else "no", "yes" if same else "no")
    console.print(table)


def peak_tracking(map_fn: Callable) -> tuple[Callable, list[float]]:
    """MAP_FN whose tasks also report their worker process's peak resident memory (MiB), gathered in the list."""
    peaks: list[float] = []

    def imap(f: Callable, tasks: Iterable) -> Iterator:
        def measured(task: Any) -> tuple[Any, float]:
            import resource

            out = f(task)
            return out, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        for out, peak in map_fn(measured, tasks):
            peaks.append(peak)
            yield out
    return imap, peaks


def dedup_table(console: Console, m: int, parts: int, cfg: EngineConfig, tmp: Path) -> None:
    db = tmp / "v.duckdb"
    store_with_vectors(db, synthetic(m))
    rows = []
    on_ray, peaks = peak_tracking(task_map_for(cfg))
    for name, kw in (("one index", {}), ("partitioned, local", {"partitions": parts}),
                     ("partitioned, Ray tasks", {"partitions": parts, "map_fn": on_ray})):
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
                "peak RSS of a Ray worker (MiB)", "audit recall (sample)"):
        table.add_column(col, justify="left" if col == "search" else "right")
    for name, r, seconds, gone in rows:
        agree = len(base & gone) / max(1, len(base | gone))
        busiest = f"{r.largest_partition:,} ({r.largest_partition * 384 * 4 / 2 ** 20:,.0f})" if r.partitions else \
            f"{m:,} ({m * 384 * 4 / 2 ** 20:,.0f})"
        audit = f"{r.audit['recall']:.4f} ({r.audit['found']:,}/{r.audit['pairs']:,})" if r.audit else "exact"
        peak = f"{max(peaks):,.0f}" if "Ray" in name and peaks else ""
        table.add_row(name, f"{seconds:.1f}", f"{seconds / rows[0][2]:.2f}x", f"{r.removed:,}", f"{agree:.4f}",
                      busiest, peak, audit)
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=256)
    ap.add_argument("--only", choices=("engines", "generate", "dedup"))
    args = ap.parse_args()
    if not (DATA / "atomic2020/human_tuples.tsv").is_file():
        sys.exit(f"needs ../shared/data ({DATA})")
    console = Console(width=200)
    cfg = EngineConfig(kind="ray", actors=os.cpu_count() or 2)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "engines"):
            engines_table(console, args.items, cfg, Path(tmp))
        if args.only in (None, "generate"):
            start_ray(cfg)
            generate_table(console, args.requests, cfg, Path(tmp))
        if args.only in (None, "dedup"):
            dedup_table(console, args.vectors, args.partitions, cfg, Path(tmp))
    console.print(f"python bench/ray.py --items {args.items} --requests {args.requests} --vectors {args.vectors} "
                  f"--partitions {args.partitions}" + (f" --only {args.only}" if args.only else ""))


if __name__ == "__main__":
    main()
