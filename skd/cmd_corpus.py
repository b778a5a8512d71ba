"""`skd embed` and `skd dedup`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from corpus import DedupConfig, dedup, embed_items
from store import MINILM, Store, default_path

from .config_options import config_options, floats
from .engines import engine_from, mapper_for, task_map_for
from .options import Actors, Db, EngineKind, Json, Quiet, RayAddress
from .output import out, print_json, progress_bar, run_with_progress


def embed(
    model: Annotated[str, typer.Option(help="Sentence-transformers model (HF id, path, or the embedded MiniLM).")]
    = MINILM,
    where: Annotated[str | None, typer.Option(help="SQL filter over items.")] = None,
    batch_size: Annotated[int, typer.Option()] = 128,
    chunk: Annotated[int, typer.Option(help="Items per staging batch (the unit of resume).")] = 4096,
    replace: Annotated[bool, typer.Option(help="Delete MODEL's stored vectors first and embed every item again "
                                          "(after its prompts changed); takes no --where.")] = False,
    engine: EngineKind = "local", ray_address: RayAddress = None, actors: Actors = 2,
    db: Db = None, json: Json = False, quiet: Quiet = False,
) -> None:
    """Embed items (normalised) into the embeddings table; items already embedded with MODEL are skipped."""
    mapper = mapper_for(engine_from(engine, ray_address, actors))
    progress, update = progress_bar("embed", "items", quiet or json)
    stats = run_with_progress(progress, lambda: embed_items(
        db or default_path(), model, where, chunk=chunk, batch_size=batch_size,
        on_chunk=lambda st, n: update(st.embedded, n), mapper=mapper, replace=replace))
    if json:
        print_json(stats.as_dict())
    else:
        out.print(f"embedded {stats.embedded:,} items with {model} ({stats.already_embedded:,} already embedded"
                  f"{f', {stats.replaced:,} vectors replaced' if replace else ''}) in {stats.seconds:.1f} s")


@config_options(DedupConfig, "dedup")
def dedup_cmd(
    cfg: DedupConfig,
    critic: Annotated[str | None, typer.Option(help="Keep the member this critic scores best.")] = None,
    where: Annotated[str | None, typer.Option(help="SQL filter over items.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what thresholds would remove; store nothing.")]
    = False,
    thresholds: Annotated[str, typer.Option(help="Thresholds for --dry-run.")] = "0.8,0.85,0.9,0.95",
    full: Annotated[bool, typer.Option(help="Recompute from scratch instead of incrementally.")] = False,
    engine: EngineKind = "local", ray_address: RayAddress = None,
    db: Db = None, json: Json = False,
) -> None:
    """Cluster duplicates; one representative per cluster; results in dedup_clusters per setting. With
    --partitions and --engine ray, the partitions are searched as Ray tasks."""
    dry = floats(thresholds) if dry_run else None
    task_map = task_map_for(engine_from(engine, ray_address))
    with Store(db) as s:
        r = dedup(s, cfg.method, cfg.threshold, cfg.scope, critic, where, cfg.model, incremental=not full, dry_run=dry,
                  partitions=cfg.partitions, max_visits=cfg.max_visits, map_fn=task_map)
    if json:
        print_json(r.as_dict())
        return
    if dry:
        t = Table(title=f"dry run: {r.items:,} items, scope {r.scope}")
        for col in ("threshold", "would remove", "pairs", "borderline pair (cosine)"):
            t.add_column(col)
        for row in r.dry_run:
            near = "\n".join(f"{p['cosine']:.3f}: {p['a']}  ~  {p['b']}" for p in row["borderline"]) or "-"
            t.add_row(f"{row['threshold']:.2f}", f"{row['would_remove']:,}", f"{row['pairs']:,}", near)
        out.print(t)
        return
    out.print(f"dedup {r.method} threshold {r.threshold} scope {r.scope}: {r.items:,} items, {r.clusters:,} "
              f"clusters, {r.removed:,} duplicates ({r.searched:,} items searched) in {r.seconds:.1f} s")
    if r.partitions:
        a = r.audit
        out.print(f"searched in {r.partitions:,} partitions (busiest: {r.largest_partition:,} items); exact audit of "
                  f"{a['items']:,} items: {a['found']:,} of their {a['pairs']:,} pairs found (recall {a['recall']:.4f})"
                  + ("; raise --max-visits to find the rest" if a["found"] < a["pairs"] else ""))


def register(app: typer.Typer) -> None:
    app.command()(embed)
    app.command("dedup")(dedup_cmd)
