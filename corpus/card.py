"""The dataset card (README.md with YAML front matter) of an exported snapshot: what it holds, how it was
made (funnel, teachers, critic, dedup), its statistics and its columns."""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from store import skd_version

from .snapshot import headline

TASKS = {"triple": "text-generation", "qa": "question-answering", "rationale": "question-answering",
         "text": "text-generation"}


def size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < bound:
            return label
    return "n>10M"


def front_matter(row: dict[str, Any], df: pl.DataFrame) -> str:
    splits = [s for s, n in row["funnel"].get("splits", {}).items() if n]
    tasks = sorted({TASKS.get(k, "text-generation") for k in df["kind"].unique().to_list()})
    lines = ["---", "license: other", "language:", "- en", "task_categories:", *[f"- {t}" for t in tasks],
             "size_categories:", f"- {size_category(df.height)}", "tags:", "- synthetic", "- knowledge-distillation",
             "- skd", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: data/{split}-*.parquet"]
    return "\n".join(lines + ["---", ""])


def table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def dataset_card(row: dict[str, Any], df: pl.DataFrame, critic: dict[str, Any] | None,
                 teachers: list[dict[str, Any]]) -> str:
    from .export import COLUMN_DOCS

    recipe, funnel = row["recipe"], row["funnel"]
    splits = funnel.get("splits", {})
    parts = [front_matter(row, df), f"# {row['name']}", "",
             f"A snapshot of an [skd](https://github.com/skd) corpus: {df.height:,} items "
             f"({', '.join(f'{s}: {n:,}' for s, n in splits.items())}).", "",
             f"- snapshot hash: `{row['content_hash']}`", f"- skd version: {skd_version()}",
             f"- created: {row['created_at']}", "", "## Funnel", "",
             table([(k, f"{v:,}") for k, v in funnel.items() if isinstance(v, int)], ("stage", "items")), "",
             "## Provenance", ""]
    if teachers:
        parts += [table([(t["teacher"], f"`{t['params']}`", f"{t['items']:,}") for t in teachers],
                        ("teacher", "sampling", "items")), ""]
    else:
        parts += ["No generated items: every item was ingested.", ""]
    if critic:
        auc = (critic["metrics"].get("dev") or {}).get("auc")
        parts += [f"Critic `{critic['name']}` ({critic['mode']}, base {critic['base_model']}), dev AUC "
                  f"{auc if auc is None else round(auc, 4)}; kept items scoring at least "
                  f"{recipe.get('critic_threshold')}.", ""]
    if recipe.get("dedup"):
        thr, scope = recipe["dedup_setting"]
        parts += [f"Dedup: {recipe['dedup']}, threshold {thr}, scope {scope}; one representative per cluster.", ""]
    parts += ["Recipe:", "", "```json", json.dumps(recipe, indent=2, default=str), "```", "",
              "## Statistics", "", table(list(headline(row["stats"]).items()), ("statistic", "value")), "",
              "## Columns", "", table([(c, COLUMN_DOCS.get(c, "")) for c in df.columns if c != "split"],
                                      ("column", "description")), ""]
    return "\n".join(parts)
