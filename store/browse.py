"""Reads for people looking at the corpus (the web app, the HTML report): filtered pages of items, one item's
whole lineage, counts for an overview. Every query is bounded (LIMIT, aggregates), so a page costs the same on a
corpus of a thousand items or a million.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from .catalog import _rows
from .db import Store

SORTS = {"newest": "i.created_at DESC, i.item_id", "score-desc": "sc.score DESC, sc.item_id",
         "score-asc": "sc.score ASC, sc.item_id", "id": "i.item_id"}
ORIGINS = ("any", "generated", "ingested")
LISTED = ("item_id", "kind", "head", "relation", "tail", "question", "answer", "rationale", "text", "domain")
# The text a person reads for an item, whichever kind it is; searched by the text box.
SEARCHED = "concat_ws(' ', i.head, i.relation, i.tail, i.question, i.answer, i.rationale, i.text)"


class ItemFilter(BaseModel):
    """What the items page shows: one field per filter of the page's form (empty means no filter)."""
    kind: str = ""
    relation: str = ""
    domain: str = ""
    q: str = Field("", description="Text that the item contains (case-insensitive, taken literally).")
    critic: str = Field("", description="Critic id whose score is shown, filtered and sorted by.")
    min_score: float | None = None
    max_score: float | None = None
    cluster: str = Field("", description="Dedup cluster, METHOD:THRESHOLD:SCOPE:ID (or an id under any setting): "
                                         "the items of that cluster.")
    snapshot: str = Field("", description="Snapshot id.")
    split: str = ""
    origin: Literal["any", "generated", "ingested"] = "any"
    sort: Literal["newest", "score-desc", "score-asc", "id"] = "newest"
    page: int = Field(1, ge=1, le=10**9)  # a larger one overflows the SQL offset
    per_page: int = Field(50, ge=1, le=500)

    @model_validator(mode="after")
    def _split_of_a_snapshot(self) -> ItemFilter:
        if self.split and not self.snapshot:
            raise ValueError("a split is a snapshot's: choose the snapshot too")
        return self


def _conditions(f: ItemFilter) -> tuple[list[str], list[str], dict[str, Any]]:
    """The filter as conditions on the items (alias i) and on the chosen critic's scores (alias sc), and their
    parameters."""
    conds, on_scores, params = [], [], {"critic": f.critic}
    for col in ("kind", "relation", "domain"):
        if getattr(f, col):
            conds.append(f"i.{col} = ${col}")
            params[col] = getattr(f, col)
    if f.q:
        conds.append(f"contains(lower({SEARCHED}), lower($q))")  # literal: no LIKE wildcards from the user
        params["q"] = f.q
    if f.min_score is not None:
        on_scores.append("sc.score >= $min_score")
        params["min_score"] = f.min_score
    if f.max_score is not None:
        on_scores.append("sc.score <= $max_score")
        params["max_score"] = f.max_score
    if f.cluster:
        # a representative's id names its cluster under every setting it represents: the setting picks one
        method, threshold, scope, cluster = f.cluster.split(":") if f.cluster.count(":") == 3 else ("", "", "",
                                                                                                     f.cluster)
        setting = "method = $method AND threshold = try_cast($threshold AS DOUBLE) AND scope = $scope" if method \
            else "TRUE"
        conds.append(f"i.item_id IN (SELECT item_id FROM dedup_clusters WHERE cluster_id = $cluster AND {setting})")
        params |= {"cluster": cluster} | ({"method": method, "threshold": threshold, "scope": scope} if method else {})
    if f.snapshot:
        conds.append("i.item_id IN (SELECT item_id FROM snapshot_items WHERE snapshot_id = $snapshot "
                     "AND ($split = '' OR split = $split))")
        params |= {"snapshot": f.snapshot, "split": f.split}
    if f.origin != "any":
        exists = "EXISTS (SELECT 1 FROM item_sources s WHERE s.item_id = i.item_id AND s.request_id IS NOT NULL)"
        conds.append(exists if f.origin == "generated" else f"NOT {exists}")
    return conds, on_scores, params


class Browse:
    def __init__(self, store: Store):
        self.store = store

    def items(self, f: ItemFilter) -> tuple[list[dict[str, Any]], int]:
        """One page of the items matching the filter (with the chosen critic's score) and how many match. Sorted by
        score, the page lists the items the critic scored. Each query picks its page (a top-N) from one table
        before joining the other, so a page of a million items costs a scan, not a join of two million rows."""
        conds, on_scores, params = _conditions(f)
        page = f"LIMIT {f.per_page} OFFSET {(f.page - 1) * f.per_page}"
        cols = ", ".join(f"i.{c}" for c in LISTED)
        if f.sort.startswith("score"):
            where = " AND ".join(["sc.critic_id = $critic", *on_scores]
                                 + ([f"sc.item_id IN (SELECT i.item_id FROM items i WHERE {' AND '.join(conds)})"]
                                    if conds else []))
            order = SORTS[f.sort]
            rows = _rows(self.store, f"SELECT {cols}, sc.score FROM (SELECT item_id, score FROM scores sc WHERE "
                                     f"{where} ORDER BY {order} {page}) sc JOIN items i USING (item_id) "
                                     f"ORDER BY {order}", params)
            return rows, int(self.store.scalar(f"SELECT count(*) FROM scores sc WHERE {where}", params))
        join = "JOIN scores sc ON sc.item_id = i.item_id AND sc.critic_id = $critic" if on_scores else ""
        where = " AND ".join(conds + on_scores) or "TRUE"
        count_params = params if on_scores else {k: v for k, v in params.items() if k != "critic"}
        inner = f"SELECT {cols}, i.created_at FROM items i {join} WHERE {where} ORDER BY {SORTS[f.sort]} {page}"
        rows = _rows(self.store, f"SELECT i.* EXCLUDE (created_at), sc.score FROM ({inner}) i LEFT JOIN scores sc "
                                 f"ON sc.item_id = i.item_id AND sc.critic_id = $critic ORDER BY {SORTS[f.sort]}",
                     params)
        if f.snapshot and len(conds) == 1 and not on_scores:  # a snapshot's membership counts itself
            return rows, int(self.store.scalar("SELECT count(*) FROM snapshot_items WHERE snapshot_id = $snapshot AND "
                                               "($split = '' OR split = $split)",
                                               {"snapshot": f.snapshot, "split": f.split}))
        return rows, int(self.store.scalar(f"SELECT count(*) FROM items i {join} WHERE {where}", count_params))

    def rows(self, item_ids: list[str], critic: str = "") -> list[dict[str, Any]]:
        """The listed fields and the critic's score of these items, in the order given (unknown ids left out)."""
        cols = ", ".join(f"i.{c}" for c in LISTED)
        found = {r["item_id"]: r for r in _rows(
            self.store, f"SELECT {cols}, sc.score FROM items i LEFT JOIN scores sc ON sc.item_id = i.item_id AND "
                        "sc.critic_id = ? WHERE list_contains(?::VARCHAR[], i.item_id)", [critic, item_ids])}
        return [found[i] for i in item_ids if i in found]

    def facets(self) -> dict[str, list[tuple[str, int]]]:
        """Items per kind, relation and domain (most frequent first, at most 100 each)."""
        out = {}
        for col in ("kind", "relation", "domain"):
            out[col] = [(r[0], int(r[1])) for r in self.store.con.execute(
                f"SELECT {col}, count(*) n FROM items WHERE {col} IS NOT NULL GROUP BY 1 ORDER BY n DESC, 1 "
                "LIMIT 100").fetchall()]
        return out

    def overview(self) -> dict[str, Any]:
        """Table sizes and the origin of the items (generated by a teacher or ingested)."""
        counts = {t: int(self.store.scalar(f"SELECT count(*) FROM {t}")) for t in
                  ("items", "generations", "labels", "scores", "embeddings", "dedup_clusters", "snapshots", "evals")}
        counts["generated items"] = int(self.store.scalar(
            "SELECT count(DISTINCT item_id) FROM item_sources WHERE request_id IS NOT NULL"))
        return counts

    def generation_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest generation runs with their summary (the funnel: requests, completions, parsed, items)."""
        rows = _rows(self.store, "SELECT run_id, status, started_at, finished_at, summary, config->>'recipe' AS recipe "
                                 "FROM runs WHERE stage = 'generate' ORDER BY started_at DESC LIMIT ?", [limit])
        return [{**r, "summary": json.loads(r["summary"] or "{}")} for r in rows]

    def item(self, item_id: str) -> dict[str, Any] | None:
        """Everything known about one item: its fields, where it came from (run, teacher, prompt, sampling,
        the raw completion), every critic's score, its dedup clusters, labels and snapshots."""
        found = _rows(self.store, "SELECT * EXCLUDE (extra), extra::VARCHAR AS extra FROM items WHERE item_id = ?",
                      [item_id])
        if not found:
            return None
        q = [item_id]
        return {
            "item": found[0],
            "sources": _rows(self.store, """
                SELECT s.run_id, s.request_id, s.sample_index, s.teacher, s.params::VARCHAR AS params, s.source,
                       s.row_number, r.recipe, r.model, r.prompt, r.meta::VARCHAR AS meta, g.text AS completion,
                       g.finish_reason, g.n_tokens, g.logprob, u.stage, u.config::VARCHAR AS run_config
                FROM item_sources s
                LEFT JOIN (SELECT * FROM requests WHERE request_id IN (SELECT request_id FROM item_sources
                           WHERE item_id = $1) QUALIFY row_number() OVER (PARTITION BY request_id) = 1) r
                     USING (request_id)
                LEFT JOIN generations g ON g.request_id = s.request_id AND g.sample_index = s.sample_index
                LEFT JOIN runs u ON u.run_id = s.run_id
                WHERE s.item_id = $1 ORDER BY s.created_at LIMIT 50""", q),
            "scores": _rows(self.store, "SELECT c.name, s.critic_id, s.score FROM scores s LEFT JOIN critics c "
                                        "USING (critic_id) WHERE s.item_id = ? ORDER BY c.name", q),
            "clusters": self.clusters(item_id),
            "labels": _rows(self.store, "SELECT source, label, votes_pos, votes_total, created_at FROM labels "
                                        "WHERE item_id = ? ORDER BY source", q),
            "judgements": _rows(self.store, "SELECT annotator, label, created_at FROM judgements WHERE item_id = ? "
                                            "ORDER BY typed_at", q),
            "snapshots": _rows(self.store, "SELECT s.name, s.snapshot_id, m.split FROM snapshot_items m JOIN "
                                           "snapshots s USING (snapshot_id) WHERE m.item_id = ? ORDER BY s.name", q),
        }

    def clusters(self, item_id: str, members: int = 20) -> list[dict[str, Any]]:
        """The item's cluster under each dedup setting, with (up to MEMBERS of) the items it kept or dropped."""
        out = []
        for c in _rows(self.store, "SELECT method, threshold, scope, cluster_id, is_representative FROM dedup_clusters "
                                   "WHERE item_id = ? ORDER BY method, threshold, scope", [item_id]):
            key = [c["cluster_id"], c["method"], c["threshold"], c["scope"]]
            c["size"] = int(self.store.scalar(
                "SELECT count(*) FROM dedup_clusters WHERE cluster_id = ? AND method = ? AND threshold = ? "
                "AND scope = ?", key))
            c["members"] = _rows(self.store, f"""
                SELECT d.item_id, d.is_representative, {SEARCHED} AS content FROM dedup_clusters d
                JOIN items i USING (item_id) WHERE d.cluster_id = ? AND d.method = ? AND d.threshold = ?
                AND d.scope = ? ORDER BY d.is_representative DESC, d.item_id LIMIT {members}""", key)
            out.append(c)
        return out

    def critics(self) -> list[dict[str, Any]]:
        return _rows(self.store, "SELECT critic_id, name, base_model, thresholds::VARCHAR AS thresholds, created_at "
                                 "FROM critics ORDER BY created_at DESC")
