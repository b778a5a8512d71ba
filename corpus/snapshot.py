"""Snapshots: immutable, named, reproducible slices of the corpus. A snapshot stores its membership (with a
split per item), its recipe, a content hash of the membership, the funnel that led to it and its
statistics. The same recipe over the same corpus gives the same hash; a name is never reused."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import duckdb
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from store import MINILM, SkdError, Store

from .dedup import METHODS, exact_norm_sql
from .stats import corpus_stats, slice_sql


class SnapshotRecipe(BaseModel):
    """What goes into a snapshot; stored with it, so it can be cut again."""

    model_config = ConfigDict(extra="forbid")
    where: str | None = None
    kinds: list[str] = Field(default_factory=list)
    relations: list[str] = Field(default_factory=list)
    critic: str | None = None
    min_score: float | None = None
    threshold_at_recall: float | None = None
    dedup: str | None = None
    dedup_threshold: float | None = None
    dedup_scope: str | None = None
    limit: int | None = Field(default=None, gt=0)
    seed: int = 0
    balance: str | None = None
    split: dict[str, float] = Field(default_factory=lambda: {"train": 1.0})

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(f < 0 for f in v.values()) or abs(sum(v.values()) - 1) > 1e-6:
            raise ValueError("split fractions must be non-negative and sum to 1")
        return v

    @field_validator("balance")
    @classmethod
    def _balance(cls, v: str | None) -> str | None:
        if v not in (None, "relation", "kind", "domain"):
            raise ValueError("balance is one of relation, kind, domain")
        return v


def parse_split(text: str) -> dict[str, float]:
    """'train=0.9,validation=0.05,test=0.05' -> {'train': 0.9, ...}."""
    try:
        return {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(",") if part.strip())}
    except ValueError:
        raise SkdError(f"--split {text!r}: expected NAME=FRACTION,... e.g. train=0.9,test=0.1") from None


def snapshot_row(store: Store, name: str) -> dict[str, Any]:
    rows = store.query("SELECT * FROM snapshots WHERE name = ?", [name]).to_dicts()
    if not rows:
        raise SkdError(f"no snapshot named {name!r}; see `skd snapshot list`")
    row = rows[0]
    for key in ("recipe", "funnel", "stats"):
        row[key] = json.loads(row[key]) if row[key] else {}
    return row


def critic_cut(store: Store, r: SnapshotRecipe) -> tuple[str | None, float | None]:
    """The critic's id and the score threshold the recipe asks for."""
    if r.critic is None:
        if r.min_score is not None or r.threshold_at_recall is not None:
            raise SkdError("--min-score and --threshold-at-recall need --critic")
        return None, None
    row = store.critics.get(r.critic)
    critic_id, thresholds = row["critic_id"], row["thresholds"] or {}
    if r.min_score is not None:
        return critic_id, r.min_score
    recall = 0.5 if r.threshold_at_recall is None else r.threshold_at_recall
    key = f"recall@{recall:g}"
    if key not in thresholds:
        raise SkdError(f"critic {r.critic!r} has no threshold at recall {recall:g}; it has "
                       f"{', '.join(thresholds) or 'none'} (or give --min-score)")
    return critic_id, float(thresholds[key])


def dedup_setting(store: Store, r: SnapshotRecipe) -> tuple[float, str] | None:
    """The (threshold, scope) of the dedup results to keep representatives of: as given, or the latest run."""
    if r.dedup is None:
        return None
    if r.dedup not in METHODS:
        raise SkdError(f"--dedup must be one of {', '.join(METHODS)}")
    cond, params = "method = ?", [r.dedup]
    if r.dedup_threshold is not None:
        cond, params = cond + " AND threshold = ?", params + [r.dedup_threshold]
    if r.dedup_scope is not None:
        cond, params = cond + " AND scope = ?", params + [r.dedup_scope]
    rows = store.con.execute(f"SELECT d.threshold, d.scope FROM dedup_clusters d LEFT JOIN runs USING (run_id) "
                             f"WHERE {cond} ORDER BY runs.started_at DESC NULLS LAST LIMIT 1", params).fetchall()
    if not rows:
        raise SkdError(f"no {r.dedup} dedup results match; run `skd dedup --method {r.dedup}` first")
    return float(rows[0][0]), rows[0][1]


def candidates(store: Store, r: SnapshotRecipe, critic_id: str | None, threshold: float | None,
               setting: tuple[float, str] | None) -> tuple[pa.Table, dict[str, int]]:
    """Items passing every filter, each with its split key and the counts at each step of the funnel."""
    conds = [f"({r.where})" if r.where else "TRUE"]
    params: dict[str, Any] = {}
    if r.kinds:
        conds.append("i.kind IN (SELECT unnest($kinds))")
        params["kinds"] = r.kinds
    if r.relations:
        conds.append("i.relation IN (SELECT unnest($relations))")
        params["relations"] = r.relations
    base = f"SELECT i.* FROM items i WHERE {' AND '.join(conds)}"
    passed = "SELECT * FROM base"
    if critic_id:
        params |= {"critic": critic_id, "min": threshold}
        passed = "SELECT b.* FROM base b JOIN scores s ON s.item_id = b.item_id AND s.critic_id = $critic " \
                 "AND s.score >= $min"
    reps = "SELECT * FROM passed"
    if setting:
        params |= {"method": r.dedup, "dthr": setting[0], "scope": setting[1]}
        reps = "SELECT p.* FROM passed p JOIN dedup_clusters d ON d.item_id = p.item_id AND d.method = $method " \
               "AND d.threshold = $dthr AND d.scope = $scope AND d.is_representative"
    group = f"coalesce({r.balance}, '')" if r.balance else "''"
    split_key = f"coalesce({exact_norm_sql('coalesce(head, question)')}, '')"
    ctes = f"WITH base AS ({base}), passed AS ({passed}), reps AS ({reps})"
    sql = f"""{ctes}, ranked AS (SELECT item_id,
            CASE WHEN head IS NULL AND question IS NULL THEN item_id ELSE {split_key} END AS split_key,
            md5(item_id || $seed) AS draw,
            row_number() OVER (PARTITION BY {group} ORDER BY md5(item_id || $seed)) AS rank_in_group,
            {group} AS grp FROM reps)
        SELECT * FROM ranked ORDER BY rank_in_group, draw"""
    params["seed"] = str(r.seed)
    try:
        table = store.con.sql(sql, params=params).to_arrow_table()
        n_base, n_passed = store.con.execute(
            f"{ctes} SELECT (SELECT count(*) FROM base), (SELECT count(*) FROM passed)",
            {k: v for k, v in params.items() if k != "seed"}).fetchall()[0]
    except duckdb.Error as e:
        raise SkdError(f"--where: {str(e).splitlines()[0]}") from None
    return table, {"items": int(n_base or 0), "passed_critic": int(n_passed), "representatives": table.num_rows}


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
    """A split per item by a seeded hash of its head (or question), so no head falls in two splits."""
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


def generation_funnel(store: Store, ids: str) -> dict[str, int]:
    """Teacher completions and parsed completions of the runs that produced the slice's items."""
    total, parsed = store.con.execute(
        f"SELECT count(*), count(*) FILTER (parsed_ok) FROM generations WHERE run_id IN "
        f"(SELECT DISTINCT run_id FROM item_sources WHERE item_id IN ({ids}) AND request_id IS NOT NULL)"
    ).fetchall()[0]
    return {"completions": int(total), "parsed": int(parsed)}


def create_snapshot(store: Store, name: str, recipe: SnapshotRecipe, model: str = MINILM) -> dict[str, Any]:
    """Cut the snapshot NAME; refuses a name already used."""
    if store.scalar("SELECT count(*) FROM snapshots WHERE name = ?", [name]):
        raise SkdError(f"snapshot {name!r} exists; snapshots are immutable, choose another name")
    critic_id, threshold = critic_cut(store, recipe)
    setting = dedup_setting(store, recipe)
    table, funnel = candidates(store, recipe, critic_id, threshold, setting)
    table = select(table, recipe)
    ids = table["item_id"].to_pylist()
    if not ids:
        raise SkdError(f"snapshot {name!r} would be empty: no item passes its filters ({funnel})")
    splits = assign_splits(table["split_key"].to_pylist(), recipe.split, recipe.seed)
    full_recipe = recipe.model_dump() | {"critic_id": critic_id, "critic_threshold": threshold,
                                         "dedup_setting": list(setting) if setting else None}
    snapshot_id = f"snap-{uuid.uuid4().hex[:12]}"
    members = pa.table({"snapshot_id": [snapshot_id] * len(ids), "item_id": ids, "split": splits})
    run_id = store.start_run("snapshot", {"name": name, **full_recipe})
    with store.transaction() as con:
        con.register("_members", members)
        con.execute("INSERT INTO snapshot_items SELECT snapshot_id, item_id, split FROM _members")
        con.unregister("_members")
        ids_sql = slice_sql(snapshot_id=snapshot_id)
        funnel = generation_funnel(store, ids_sql) | funnel | {"snapshot": len(ids)}
        funnel["splits"] = {s: splits.count(s) for s in recipe.split}
        stats = corpus_stats(store, ids_sql, model=model, seed=recipe.seed)
        con.execute("INSERT INTO snapshots (snapshot_id, name, content_hash, recipe, funnel, stats) "
                    "VALUES (?, ?, ?, ?, ?, ?)", [snapshot_id, name, content_hash(ids, splits),
                                                  json.dumps(full_recipe), json.dumps(funnel), json.dumps(stats)])
        store.finish_run(run_id, "ok", {"snapshot_id": snapshot_id, "items": len(ids)})
    return snapshot_row(store, name)


def list_snapshots(store: Store) -> list[dict[str, Any]]:
    return store.query("SELECT s.name, s.snapshot_id, s.content_hash, count(m.item_id) AS items, s.created_at "
                       "FROM snapshots s LEFT JOIN snapshot_items m USING (snapshot_id) "
                       "GROUP BY ALL ORDER BY s.created_at").to_dicts()


def diff_snapshots(store: Store, a: str, b: str, sample: int = 10) -> dict[str, Any]:
    """Items added to and removed from A to get B, split changes, and the statistics side by side."""
    ra, rb = snapshot_row(store, a), snapshot_row(store, b)
    q = """SELECT {cols} FROM snapshot_items x WHERE x.snapshot_id = ? AND x.item_id NOT IN
           (SELECT item_id FROM snapshot_items WHERE snapshot_id = ?) ORDER BY x.item_id"""
    added = [r[0] for r in store.con.execute(q.format(cols="x.item_id"), [rb["snapshot_id"], ra["snapshot_id"]])
             .fetchall()]
    removed = [r[0] for r in store.con.execute(q.format(cols="x.item_id"), [ra["snapshot_id"], rb["snapshot_id"]])
               .fetchall()]
    moved = store.con.execute("SELECT count(*) FROM snapshot_items x JOIN snapshot_items y USING (item_id) "
                              "WHERE x.snapshot_id = ? AND y.snapshot_id = ? AND x.split IS DISTINCT FROM y.split",
                              [ra["snapshot_id"], rb["snapshot_id"]]).fetchall()[0][0]
    return {"a": a, "b": b, "added": len(added), "removed": len(removed), "split_changed": int(moved),
            "added_ids": added[:sample], "removed_ids": removed[:sample],
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
