"""Snapshots: immutable, named, reproducible slices of the corpus. A snapshot stores its membership (with a
split per item), its recipe, a content hash of the membership, the funnel that led to it and its
statistics. The same recipe over the same corpus gives the same hash; a name is never reused."""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from critics.cut import CriticCut, threshold_of
from store import MINILM, SkdError, Store
from store.snapshots import BALANCE

from .stats import corpus_stats


class SliceSpec(BaseModel):
    """Which items a snapshot takes and how it splits them (the pipeline's [snapshot] table, with its name)."""

    model_config = ConfigDict(extra="forbid")
    where: str | None = Field(None, description="SQL filter over items.")
    kinds: list[str] = Field(default_factory=list, description="Item kinds to keep (repeatable).")
    relations: list[str] = Field(default_factory=list, description="Relations to keep (repeatable).")
    limit: int | None = Field(default=None, gt=0, description="At most this many items (a seeded draw).")
    seed: int = Field(0, description="Seed of the draw and of the split.")
    balance: str | None = Field(None, description=f"Equal counts per {', '.join(BALANCE)}.")
    split: dict[str, float] = Field(default_factory=lambda: {"train": 0.9, "test": 0.1},
                                    description="Split fractions, assigned by head (no head in two splits).")

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(f < 0 for f in v.values()) or abs(sum(v.values()) - 1) > 1e-6:
            raise ValueError("split fractions must be non-negative and sum to 1")
        return v

    @field_validator("balance")
    @classmethod
    def _balance(cls, v: str | None) -> str | None:
        if v not in (None, *BALANCE):
            raise ValueError(f"balance is one of {', '.join(BALANCE)}")
        return v


class SnapshotRecipe(SliceSpec, CriticCut):
    """What goes into a snapshot (the one definition behind `skd snapshot create`'s options); stored with it,
    so it can be cut again."""

    critic: str | None = Field(None, description="Keep items this critic scores at or above its cut.")
    dedup: Literal["exact", "semantic"] | None = Field(None, description="Keep only representatives of this dedup "
                                                                        "method's clusters.")
    dedup_threshold: float | None = Field(None, description="Which dedup threshold (default: the latest run).")
    dedup_scope: str | None = Field(None, description="Which dedup scope (default: the latest run).")


def snapshot_row(store: Store, name: str) -> dict[str, Any]:
    """The snapshot named `name` (see `store.snapshots.get`)."""
    return store.snapshots.get(name)


def critic_cut(store: Store, r: SnapshotRecipe) -> tuple[str | None, float | None]:
    """The critic's id and the score threshold the recipe asks for (the critics' cut, default recall there)."""
    if r.critic is None:
        if r.min_score is not None or r.threshold_at_recall is not None or r.per_relation or r.per_prompt:
            raise SkdError("--min-score, --threshold-at-recall, --per-relation and --per-prompt need --critic")
        return None, None
    row = store.critics.get(r.critic)
    return row["critic_id"], threshold_of(row, r.threshold_at_recall, r.min_score)


def dedup_setting(store: Store, r: SnapshotRecipe) -> tuple[float, str] | None:
    """The (threshold, scope) of the dedup results to keep representatives of: as given, or the latest run."""
    if r.dedup is None:
        return None
    setting = store.dedup.latest_setting(r.dedup, r.dedup_threshold, r.dedup_scope)
    if setting is None:
        raise SkdError(f"no {r.dedup} dedup results match; run `skd dedup --method {r.dedup}` first")
    return setting


def candidates(store: Store, r: SnapshotRecipe, critic_id: str | None, threshold: float | None,
               setting: tuple[float, str] | None) -> tuple[pa.Table, dict[str, int]]:
    """Items passing every filter, each with its split key and the counts at each step of the funnel."""
    table, funnel = store.snapshots.candidates(
        where=r.where, kinds=r.kinds, relations=r.relations, critic_id=critic_id, min_score=threshold,
        dedup=(r.dedup, *setting) if setting and r.dedup else None, balance=r.balance, seed=r.seed,
        per_relation=r.per_relation, per_prompt=r.per_prompt)
    return table, funnel


def select(table: pa.Table, r: SnapshotRecipe) -> pa.Table:
    """Balance (equal counts per group, round-robin by the seeded draw) and limit."""
    if r.balance:
        sizes: dict[str, int] = {}
        for g in table["grp"].to_pylist():
            sizes[g] = sizes.get(g, 0) + 1
        smallest = min(sizes.values(), default=0)
        per_group = min(smallest, -(-r.limit // len(sizes))) if r.limit and sizes else smallest
        keep = [rank <= per_group for rank in table["rank_in_group"].to_pylist()]
        table = table.filter(pa.array(keep))
    return table.slice(0, r.limit) if r.limit else table


def assign_splits(keys: list[str], split: dict[str, float], seed: int) -> list[str]:
    """A split per item by a seeded hash of its head (or question, or a headless text: an event goes with the
    triples it heads), so no head falls in two splits."""
    names, edges, acc = list(split), [], 0.0
    for name in names:
        acc += split[name]
        edges.append(acc)
    out = []
    for key in keys:
        u = int(hashlib.sha256(f"{seed}\x1f{key}".encode()).hexdigest()[:12], 16) / 16 ** 12
        out.append(next((n for n, e in zip(names, edges, strict=True) if u < e), names[-1]))
    return out


def content_hash(item_ids: list[str], splits: list[str]) -> str:
    h = hashlib.sha256()
    for item, split in sorted(zip(item_ids, splits, strict=True)):
        h.update(f"{item}\t{split}\n".encode())
    return h.hexdigest()


def create_snapshot(store: Store, name: str, recipe: SnapshotRecipe, model: str = MINILM) -> dict[str, Any]:
    """Cut the snapshot NAME; refuses a name already used."""
    if store.snapshots.exists(name):
        raise SkdError(f"snapshot {name!r} exists; snapshots are immutable, choose another name")
    critic_id, threshold = critic_cut(store, recipe)
    setting = dedup_setting(store, recipe)
    table, funnel = candidates(store, recipe, critic_id, threshold, setting)
    table = select(table, recipe)
    ids = table["item_id"].to_pylist()
    if not ids:
        counts = {k: v for k, v in funnel.items() if isinstance(v, int)}
        raise SkdError(f"snapshot {name!r} would be empty: no item passes its filters ({counts})")
    splits = assign_splits(table["split_key"].to_pylist(), recipe.split, recipe.seed)
    full_recipe = recipe.model_dump() | {"critic_id": critic_id, "critic_threshold": threshold,
                                         "dedup_setting": list(setting) if setting else None}
    snapshot_id = f"snap-{uuid.uuid4().hex[:12]}"
    run_id = store.start_run("snapshot", {"name": name, **full_recipe})
    frozen = (recipe.dedup, *setting) if setting and recipe.dedup else None
    try:
        with store.snapshots.create(snapshot_id, name, ids, splits, frozen) as draft:  # one transaction
            funnel = store.generations.funnel(draft.members) | funnel | {"snapshot": len(ids)}
            funnel["splits"] = {s: splits.count(s) for s in recipe.split}
            funnel["generation_cost"] = store.usage.of_slice(draft.members)
            stats = corpus_stats(store, draft.members, model=model, seed=recipe.seed)
            draft.describe(content_hash(ids, splits), full_recipe, funnel, stats)
            store.finish_run(run_id, "ok", {"snapshot_id": snapshot_id, "items": len(ids)})
    except BaseException as e:  # the cut rolled back; its run says so now, not "running" until the process ends
        with contextlib.suppress(Exception):  # never hide why it failed
            store.finish_run(run_id, "failed", error=f"{type(e).__name__}: {e}"[:300])
        raise
    return snapshot_row(store, name)


def list_snapshots(store: Store) -> list[dict[str, Any]]:
    return store.snapshots.all()


def diff_snapshots(store: Store, a: str, b: str, sample: int = 10) -> dict[str, Any]:
    """Items added to and removed from A to get B, split changes, and the statistics side by side."""
    ra, rb = snapshot_row(store, a), snapshot_row(store, b)
    d = store.snapshots.diff(ra["snapshot_id"], rb["snapshot_id"], sample)
    return {"a": a, "b": b, **d,
            "stats": {key: [headline(ra["stats"]).get(key), headline(rb["stats"]).get(key)]
                      for key in headline(ra["stats"]) | headline(rb["stats"])}}


def headline(stats: dict[str, Any]) -> dict[str, Any]:
    """The few numbers that summarise a slice, flat, for side-by-side views and dataset cards."""
    if not stats:
        return {}
    emb = stats.get("embeddings", {})
    out = {"items": stats["counts"]["n"], "unique heads": stats["uniqueness"]["unique_heads"],
           "unique tails ratio": round(stats["uniqueness"]["unique_tails_ratio"], 4)}
    out |= {k.replace("_", "-"): round(v, 4) for k, v in stats["distinct_n"].items() if k != "n"}
    if "pairwise_cosine" in emb:
        out["mean pairwise cosine"] = round(emb["pairwise_cosine"]["mean"], 4)
        out["vendi score"] = round(emb["vendi"]["score"], 2)
        out["cluster entropy (norm.)"] = round(emb["cluster_entropy"]["normalised"], 4)
    if stats["novelty"]["rate"] is not None:
        out["novelty"] = round(stats["novelty"]["rate"], 4)
    out["mean words"] = round(stats["lengths"].get("mean_words", 0.0), 2)
    return out
