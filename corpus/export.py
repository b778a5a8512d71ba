"""A snapshot as data: a polars DataFrame, a `datasets` dataset, and files on disk (a Hugging Face dataset
folder with a dataset card, or plain parquet / JSONL per split)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from store import SkdError, Store

from .card import dataset_card
from .snapshot import snapshot_row

FORMATS = ("hf", "parquet", "jsonl")


def snapshot_frame(store: Store, name: str) -> pl.DataFrame:
    """The snapshot's items with their split and provenance, ordered by split then item_id. Columns that
    are null for every row are dropped, so a triple snapshot has no question column."""
    row = snapshot_row(store, name)
    recipe = row["recipe"]
    setting = recipe.get("dedup_setting")
    df = store.snapshots.members(row["snapshot_id"], recipe.get("critic_id"),
                                 (recipe.get("dedup") or "", *setting) if setting else None)
    keep = [c for c in df.columns if c in ("item_id", "split", "kind") or df[c].null_count() < df.height]
    return df.select(keep)


def snapshot_dataset(store: Store, name: str):
    """The snapshot as a `datasets.DatasetDict` with one dataset per split."""
    import datasets

    df = snapshot_frame(store, name)
    return datasets.DatasetDict({split: datasets.Dataset(arrow(df.filter(pl.col("split") == split).drop("split")))
                                 for split in splits(snapshot_row(store, name), df)})


def arrow(df: pl.DataFrame):
    """Arrow with plain (not large) strings and lists, the types `datasets` users expect."""
    import pyarrow as pa

    def plain(t: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return pa.string()
        if pa.types.is_large_list(t) or pa.types.is_list(t):
            return pa.list_(plain(t.value_type))
        return t

    table = df.to_arrow()
    return table.cast(pa.schema([pa.field(f.name, plain(f.type)) for f in table.schema]))


def splits(row: dict[str, Any], df: pl.DataFrame) -> list[str]:
    """The snapshot's splits in recipe order (train, validation, test), those with items only."""
    present = set(df["split"].to_list())
    return [s for s in row["recipe"]["split"] if s in present]


def export_snapshot(store: Store, name: str, out: Path, fmt: str = "hf") -> dict[str, Any]:
    """Write the snapshot to OUT; `hf` adds a dataset card. OUT must be new or empty."""
    if fmt not in FORMATS:
        raise SkdError(f"--format must be one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SkdError(f"{out} is not empty; export into a new folder")
    row = snapshot_row(store, name)
    df = snapshot_frame(store, name)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    data = tmp / "data" if fmt == "hf" else tmp
    data.mkdir(parents=True)
    files = {}
    for split in splits(row, df):
        part = df.filter(pl.col("split") == split).drop("split")
        if fmt == "jsonl":
            path = data / f"{split}.jsonl"
            part.write_ndjson(path)
        else:
            path = data / (f"{split}-00000-of-00001.parquet" if fmt == "hf" else f"{split}.parquet")
            pq.write_table(arrow(part), path)
        files[split] = {"file": str(path.relative_to(tmp)), "rows": part.height}
    if fmt == "hf":
        (tmp / "README.md").write_text(dataset_card(row, df, store_critic(store, row), teachers(store, row)))
    (tmp / "snapshot.json").write_text(json.dumps({k: row[k] for k in ("name", "snapshot_id", "content_hash",
                                                                        "recipe", "funnel", "stats")}, default=str,
                                                  indent=2))
    if out.exists():
        out.rmdir()
    tmp.rename(out)  # the folder appears complete or not at all
    return {"snapshot": name, "format": fmt, "out": str(out), "splits": files, "content_hash": row["content_hash"]}


def teachers(store: Store, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The teacher models and sampling settings (without the per-request seed) behind the snapshot's items."""
    groups: dict[tuple[str, str], set[str]] = {}
    for r in store.snapshots.sources(row["snapshot_id"]):
        params = {k: v for k, v in json.loads(r["params"] or "{}").items() if k != "seed"}
        groups.setdefault((r["teacher"], json.dumps(params, sort_keys=True)), set()).add(r["item_id"])
    return sorted(({"teacher": t, "params": p, "items": len(ids)} for (t, p), ids in groups.items()),
                  key=lambda g: -g["items"])


def store_critic(store: Store, row: dict[str, Any]) -> dict[str, Any] | None:
    """The snapshot's critic as the dataset card describes it, or None without one (or once it is gone)."""
    critic_id = row["recipe"].get("critic_id")
    c = store.critics.by_id(critic_id) if critic_id else None
    if c is None:
        return None
    return {k: c[k] for k in ("name", "base_model", "mode")} | {"metrics": c["metrics"] or {},
                                                                 "thresholds": c["thresholds"] or {}}
