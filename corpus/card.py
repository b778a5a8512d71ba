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


# What each exported column holds: the card's column table.
COLUMN_DOCS = {
    "item_id": "stable hash of the item's normalised content (the corpus key)",
    "split": "the split the snapshot assigned (by head or question, so no head is in two splits)",
    "kind": "triple, qa, rationale or text",
    "head": "the event or concept a triple is about", "relation": "the triple's relation (ATOMIC-2020 names)",
    "tail": "the inference about the head", "question": "the question (qa, rationale)",
    "answer": "the answer (qa, rationale)", "choices": "answer choices, when the question has them",
    "rationale": "the explanation leading to the answer", "text": "free text (kind text)",
    "domain": "the item's domain label", "extra": "fields of the source that have no column, as JSON",
    "teacher": "the teacher model(s) that generated the item; null for ingested items",
    "critic_score": "the snapshot critic's score (null when the snapshot used no critic)",
    "cluster_size": "items in the item's dedup cluster (1 = no near-duplicate; null without dedup)",
}


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


def cost_line(cost: dict[str, Any] | None) -> str:
    """What the generation runs behind the snapshot cost (their filtered-out requests included)."""
    if not cost or not cost.get("requests"):
        return "Generation cost: not recorded (a snapshot from before skd kept usage)."
    dollars = f"${cost['cost']:,.2f}" if cost.get("cost") is not None else "no price given for the teacher"
    return (f"Generation cost: {cost['requests']:,} teacher requests, {cost['prompt_tokens']:,} prompt and "
            f"{cost['completion_tokens']:,} completion tokens, {dollars}.")


def dataset_card(row: dict[str, Any], df: pl.DataFrame, critic: dict[str, Any] | None,
                 teachers: list[dict[str, Any]]) -> str:
    recipe, funnel = row["recipe"], row["funnel"]
    splits = funnel.get("splits", {})
    parts = [front_matter(row, df), f"# {row['name']}", "",
             f"A snapshot of an [skd](https://github.com/skd) corpus: {df.height:,} items "
             f"({', '.join(f'{s}: {n:,}' for s, n in splits.items())}).", "",
             f"- snapshot hash: `{row['content_hash']}`", f"- skd version: {skd_version()}",
             f"- created: {row['created_at']}", "", "## Funnel", "",
             table([(k, f"{v:,}") for k, v in funnel.items() if isinstance(v, int) and k != "not_deduplicated"],
                   ("stage", "items")), ""]
    if funnel.get("not_deduplicated"):  # not a stage: kept without a dedup result
        parts += [f"Kept without deduplication: {funnel['not_deduplicated']:,} item(s) the dedup run did not see "
                  "(ingested after it).", ""]
    parts += ["## Provenance", ""]
    if teachers:
        parts += [table([(t["teacher"], f"`{t['params']}`", f"{t['items']:,}") for t in teachers],
                        ("teacher", "sampling", "items")), ""]
        parts += [cost_line(funnel.get("generation_cost")), ""]
    else:
        parts += ["No generated items: every item was ingested.", ""]
    if critic:
        auc = (critic["metrics"].get("dev") or {}).get("auc")
        cut = (f"kept the best-scored items of every relation, the same share of each: the share that scoring at "
               f"least {recipe.get('critic_threshold')} keeps over all of them (so some items below it)"
               if recipe.get("per_relation") else f"kept items scoring at least {recipe.get('critic_threshold')}")
        if recipe.get("per_prompt"):
            cut += (f", then at most {recipe['per_prompt']} of each prompt's items, the best-scored (a prompt: a head "
                    "and relation, or a question)")
        parts += [f"Critic `{critic['name']}` ({critic['mode']}, base {critic['base_model']}), dev AUC "
                  f"{auc if auc is None else round(auc, 4)}; {cut}.", ""]
        if funnel.get("critic_pass_rate"):
            parts += [table([(g, f"{r:.1%}") for g, r in funnel["critic_pass_rate"].items()],
                            ("relation", "passed the critic")), ""]
    if recipe.get("dedup"):
        thr, scope = recipe["dedup_setting"]
        parts += [f"Dedup: {recipe['dedup']}, threshold {thr}, scope {scope}; one representative per cluster.", ""]
    parts += ["Recipe:", "", "```json", json.dumps(recipe, indent=2, default=str), "```", "",
              "## Statistics", "", table(list(headline(row["stats"]).items()), ("statistic", "value")), "",
              "## Columns", "", table([(c, COLUMN_DOCS.get(c, "")) for c in df.columns if c != "split"],
                                      ("column", "description")), ""]
    return "\n".join(parts)
