"""`skd stats`, `skd snapshot create|list|show|diff`, `skd export`, `skd push`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from corpus import (
    FORMATS,
    SnapshotRecipe,
    corpus_stats,
    create_snapshot,
    diff_snapshots,
    export_snapshot,
    headline,
    list_snapshots,
    push_snapshot,
    snapshot_row,
)
from corpus.plots import write_plots
from store import MINILM, Slice, Store

from .config_options import PAIRS, config_options
from .options import Db, Json
from .output import dict_table, err, out, print_json, status

app = typer.Typer(help="Immutable named slices of the corpus: create, list, show, diff.", no_args_is_help=True)


def stats_tables(stats: dict) -> list[Table]:
    """The statistics as tables, each with its sample size."""
    c = stats["counts"]
    tables = [dict_table(f"summary (n={c['n']:,})", headline(stats))]
    tables += [dict_table(f"items per {k}", c[k]) for k in ("kind", "relation", "domain") if len(c[k]) > 1]
    e = stats["embeddings"]
    if "pairwise_cosine" in e:
        tables.append(dict_table(f"embeddings ({e['model']})", {
            f"mean pairwise cosine (n={e['pairwise_cosine']['n']:,})":
                f"{e['pairwise_cosine']['mean']:.4f} ± {e['pairwise_cosine']['std']:.4f}",
            f"Vendi score (n={e['vendi']['n']:,})": f"{e['vendi']['score']:.1f}",
            f"cluster entropy, k={e['cluster_entropy']['k']} (n={e['cluster_entropy']['n']:,})":
                f"{e['cluster_entropy']['entropy']:.3f} ({e['cluster_entropy']['normalised']:.3f} of max)"}))
    nov = stats["novelty"]
    if nov["n"]:
        tables.append(dict_table("novelty", {f"generated items not among {nov['seeds']:,} seeds (n={nov['n']:,})":
                                             f"{nov['rate']:.1%}"}))
    for name, cs in stats["critic_scores"].items():
        tables.append(dict_table(f"critic {name}", {f"mean score (n={cs['n']:,})": f"{cs['mean']:.3f}",
                                                    "median": f"{cs['p50']:.3f}"}))
    if stats["duplicates"]:
        tables.append(dict_table("duplicates per dedup setting", {
            f"{d['method']} {d['threshold']:g} {d['scope']} (n={d['n']:,})": f"{d['rate']:.1%}"
            for d in stats["duplicates"]}))
    return tables


def stats_cmd(
    snapshot: Annotated[str | None, typer.Option(help="Statistics of this snapshot (default: the corpus).")] = None,
    where: Annotated[str | None, typer.Option(help="SQL filter over items.")] = None,
    model: Annotated[str, typer.Option(help="Embedding model for the embedding statistics.")] = MINILM,
    sample: Annotated[int, typer.Option(help="Sample size for pairwise cosine and the Vendi score.")] = 2000,
    seed: Annotated[int, typer.Option()] = 0,
    plots: Annotated[Path | None, typer.Option(help="Write PNG charts of the distributions here.")] = None,
    db: Db = None, json: Json = False,
) -> None:
    """Diversity statistics of the corpus, a --where slice, or a snapshot; each states its sample size."""
    with Store(db, read_only=True) as s:
        ids = Slice(where=where, snapshot_id=snapshot_row(s, snapshot)["snapshot_id"] if snapshot else None)
        stats = corpus_stats(s, ids, model=model, sample=sample, seed=seed)
    if plots:
        stats["plots"] = [str(p) for p in write_plots(stats, plots)]
    if json:
        print_json(stats)
        return
    for t in stats_tables(stats):
        out.print(t)
    if plots:
        out.print(f"wrote {len(stats['plots'])} charts to {plots}")


@app.command("create")
@config_options(SnapshotRecipe, "snapshot", text={"split": PAIRS})
def create(
    cfg: SnapshotRecipe,
    name: Annotated[str, typer.Argument(help="Name of the new snapshot (never reused).")],
    model: Annotated[str, typer.Option(help="Embedding model for the statistics.")] = MINILM,
    db: Db = None, json: Json = False,
) -> None:
    """Cut an immutable snapshot: membership, splits, recipe, content hash, funnel and statistics."""
    with Store(db) as s, status(f"cutting snapshot {name}", json):
        row = create_snapshot(s, name, cfg, model=model)
    if json:
        print_json(row)
        return
    show_row(row)


def pass_rates(funnel: dict) -> dict[str, str]:
    """The critic's pass rate per relation, as funnel rows (a relation it drops stands out)."""
    return {f"critic pass rate: {g}": f"{r:.1%}" for g, r in funnel.get("critic_pass_rate", {}).items()}


def show_row(row: dict) -> None:
    out.print(f"snapshot {row['name']} ({row['snapshot_id']}), content hash {row['content_hash']}")
    out.print(dict_table("funnel", {"created": row["created_at"],
        **{f"funnel: {k}": v for k, v in row["funnel"].items() if isinstance(v, int)},
        **{f"split: {k}": v for k, v in row["funnel"].get("splits", {}).items()},
        **pass_rates(row["funnel"])}))
    for t in stats_tables(row["stats"]):
        out.print(t)


@app.command("list")
def list_cmd(db: Db = None, json: Json = False) -> None:
    """Snapshots with their size and hash."""
    with Store(db, read_only=True) as s:
        rows = list_snapshots(s)
    if json:
        print_json(rows)
        return
    t = Table(title="snapshots", title_justify="left")
    for col in ("name", "items", "content hash", "created"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], f"{r['items']:,}", r["content_hash"][:16], str(r["created_at"]))
    out.print(t)


@app.command("show")
def show(name: str, db: Db = None, json: Json = False) -> None:
    """A snapshot's recipe, funnel and statistics."""
    with Store(db, read_only=True) as s:
        row = snapshot_row(s, name)
    if json:
        print_json(row)
        return
    show_row(row)


@app.command("diff")
def diff(a: str, b: str, db: Db = None, json: Json = False) -> None:
    """Items added and removed from A to B, and their statistics side by side."""
    with Store(db, read_only=True) as s:
        d = diff_snapshots(s, a, b)
    if json:
        print_json(d)
        return
    out.print(f"{a} -> {b}: +{d['added']:,} added, -{d['removed']:,} removed, {d['split_changed']:,} changed split")
    t = Table(title="statistics", title_justify="left")
    for col in ("statistic", a, b):
        t.add_column(col, justify="right")
    for k, (va, vb) in d["stats"].items():
        t.add_row(k, str(va), str(vb))
    out.print(t)


def export_cmd(
    name: Annotated[str, typer.Argument(help="Snapshot to export.")],
    out_dir: Annotated[Path, typer.Option("--out", help="New folder to write.")],
    fmt: Annotated[str, typer.Option("--format", help=f"One of {', '.join(FORMATS)}.")] = "hf",
    db: Db = None, json: Json = False,
) -> None:
    """Write a snapshot as a Hugging Face dataset folder (with a dataset card), parquet or JSONL."""
    with Store(db, read_only=True) as s:
        r = export_snapshot(s, name, out_dir, fmt)
    if json:
        print_json(r)
        return
    out.print(f"exported {name} ({r['content_hash'][:12]}) to {r['out']}: "
              + ", ".join(f"{k} {v['rows']:,}" for k, v in r["splits"].items()))


def push_cmd(
    name: Annotated[str, typer.Argument(help="Snapshot to push.")],
    repo_id: Annotated[str, typer.Argument(help="Dataset repo, NAMESPACE/NAME.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    revision: Annotated[str | None, typer.Option(help="Branch to commit to (created if needed).")] = None,
    db: Db = None, json: Json = False,
) -> None:
    """Upload a snapshot to the Hugging Face Hub as a dataset, in one commit naming its hash."""
    with Store(db, read_only=True) as s, status(f"pushing {name} to {repo_id}", json):
        r = push_snapshot(s, name, repo_id, private=private, revision=revision)
    if json:
        print_json(r)
        return
    err.print(f"pushed {name} to {r['repo_id']}@{r['revision']}: {r['url']}")


def register(root: typer.Typer) -> None:
    root.command("stats")(stats_cmd)
    root.add_typer(app, name="snapshot")
    root.command("export")(export_cmd)
    root.command("push")(push_cmd)
