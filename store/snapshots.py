"""Typed verbs over `snapshots` and `snapshot_items`: a snapshot by name, the list, creating one (members and
row in one transaction), the candidates a recipe selects, the diff of two memberships, the members with
their provenance (for export). Which items to keep, balance, splits and hashes are corpus/snapshot.py's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .catalog import _rows, user_filter, where_sql
from .errors import SkdError
from .items import EXPORTED_COLUMNS, exact_norm_sql, sibling_key_sql
from .slices import Slice

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from .db import Store

BALANCE = ("relation", "kind", "domain")  # the columns a snapshot can balance over
JSON_FIELDS = ("recipe", "funnel", "stats")
RELATION = "coalesce(relation, kind)"  # what a per-relation count or cut groups by (a kind, for items without one)


@dataclass
class Draft:
    """A snapshot being created: its members are in (inside the transaction), its row not yet."""

    store: Store
    snapshot_id: str
    name: str
    described: bool = False

    @property
    def members(self) -> Slice:
        return Slice(snapshot_id=self.snapshot_id)

    def describe(self, content_hash: str, recipe: dict[str, Any], funnel: dict[str, Any],
                 stats: dict[str, Any]) -> None:
        """Write the snapshot's row; it commits with the members when the `create` block ends."""
        self.store.con.execute("INSERT INTO snapshots (snapshot_id, name, content_hash, recipe, funnel, stats) "
                               "VALUES (?, ?, ?, ?, ?, ?)", [self.snapshot_id, self.name, content_hash,
                                                             json.dumps(recipe), json.dumps(funnel), json.dumps(stats)])
        self.described = True


class Snapshots:
    def __init__(self, store: Store):
        self.store = store

    def exists(self, name: str) -> bool:
        return bool(self.store.scalar("SELECT count(*) FROM snapshots WHERE name = ?", [name]))

    def get(self, name: str) -> dict[str, Any]:
        """The snapshot named `name` (recipe, funnel and stats as dicts); one line when there is none."""
        rows = _rows(self.store, "SELECT * FROM snapshots WHERE name = ?", [name])
        if not rows:
            raise SkdError(f"no snapshot named {name!r}; see `skd snapshot list`")
        row = rows[0]
        for key in JSON_FIELDS:
            row[key] = json.loads(row[key]) if row[key] else {}
        return row

    def all(self) -> list[dict[str, Any]]:
        """Every snapshot with its number of items, oldest first."""
        return _rows(self.store, "SELECT s.name, s.snapshot_id, s.content_hash, count(m.item_id) AS items, "
                                 "s.created_at FROM snapshots s LEFT JOIN snapshot_items m USING (snapshot_id) "
                                 "GROUP BY ALL ORDER BY s.created_at")

    @contextmanager
    def create(self, snapshot_id: str, name: str, item_ids: list[str], splits: list[str],
               dedup: tuple[str, float, str] | None = None) -> Iterator[Draft]:
        """Insert the members (with the size of their cluster under the DEDUP setting, as it is now), then let
        the block compute what it needs over them (`draft.members`) and `draft.describe` the snapshot; all in
        one transaction, so a failure leaves no trace of it."""
        import pyarrow as pa

        members = pa.table({"snapshot_id": [snapshot_id] * len(item_ids), "item_id": item_ids, "split": splits})
        with self.store.transaction() as con:
            con.register("_members", members)
            try:
                con.execute("INSERT INTO snapshot_items (snapshot_id, item_id, split) "
                            "SELECT snapshot_id, item_id, split FROM _members")
            finally:
                con.unregister("_members")
            if dedup:
                con.execute("""UPDATE snapshot_items m SET cluster_size = c.n FROM (
                        SELECT d.item_id, count(*) OVER (PARTITION BY d.cluster_id) AS n FROM dedup_clusters d
                        WHERE d.method = ? AND d.threshold = ? AND d.scope = ?) c
                    WHERE m.snapshot_id = ? AND m.item_id = c.item_id""", [*dedup, snapshot_id])
            draft = Draft(self.store, snapshot_id, name)
            yield draft
            if not draft.described:
                raise RuntimeError(f"snapshot {name!r} was created without describing it")

    def candidates(self, *, where: str | None, kinds: list[str], relations: list[str], critic_id: str | None,
                   min_score: float | None, dedup: tuple[str, float, str] | None, balance: str | None,
                   seed: int, option: str = "--where", per_relation: bool = False,
                   per_prompt: int | None = None) -> tuple[pa.Table, dict[str, Any]]:
        """The items passing every filter, each with its split key (its normalised head or question, else its
        text, else its id), a seeded draw and its rank by the draw within its `balance` group, ordered by rank
        then draw; and the funnel: how many items the filters before the critic keep and how many of those the
        critic keeps, in all and per relation (kind, for items without one), so a relation the critic drops shows.

        `dedup` is the (method, threshold, scope) whose cluster representatives are kept. With `per_relation`,
        the critic keeps the same share of every relation (the share `min_score` keeps over all of them), the
        best-scored items of each (ties by item id). With `per_prompt`, at most that many of each prompt's items
        (siblings: a head and relation, a question), the best-scored by the critic, after dedup so that the kept
        ones are distinct; `representatives` counts the items before that choice, `best_per_prompt` after."""
        if balance not in (None, *BALANCE):
            raise ValueError(f"balance is one of {', '.join(BALANCE)}")
        conds = [where_sql(where)]
        params: dict[str, Any] = {}
        if kinds:
            conds.append("i.kind IN (SELECT unnest($kinds))")
            params["kinds"] = kinds
        if relations:
            conds.append("i.relation IN (SELECT unnest($relations))")
            params["relations"] = relations
        base = f"SELECT i.* FROM items i WHERE {' AND '.join(conds)}"
        passed = "SELECT * FROM base"
        if critic_id:
            params |= {"critic": critic_id, "min": min_score}
            passed = "SELECT b.* FROM base b JOIN scores s ON s.item_id = b.item_id AND s.critic_id = $critic " \
                     "AND s.score >= $min"
            if per_relation:
                passed = self._passed_per_relation()
        reps = "SELECT *, false AS _undeduped FROM passed"
        if dedup:
            params |= {"method": dedup[0], "dthr": dedup[1], "scope": dedup[2]}
            reps = self._best_of_each_cluster(bool(critic_id))
        chosen = "SELECT * FROM reps"
        if per_prompt is not None:
            if not critic_id:
                raise SkdError("--per-prompt needs --critic: it keeps each prompt's best-scored items")
            params["per_prompt"] = int(per_prompt)
            chosen = self._best_of_each_prompt()
        # by relation, an item without one goes by its kind, as the funnel and the per-relation cut count it
        group = (RELATION if balance == "relation" else f"coalesce({balance}, '')") if balance else "''"
        # a text item with no head goes by its text: an atomic10x event is the head of its triples, and an event
        # in test with its triples in train (it went by its id) leaked the test event into training
        split_on = "coalesce(head, question, text)"
        split_key = f"coalesce({exact_norm_sql(split_on)}, '')"
        ctes = f"WITH base AS ({base}), passed AS ({passed}), reps AS ({reps}), chosen AS ({chosen})"
        sql = f"""{ctes}, ranked AS (SELECT item_id, _undeduped,
                CASE WHEN {split_on} IS NULL THEN item_id ELSE {split_key} END AS split_key,
                md5(item_id || $seed) AS draw,
                row_number() OVER (PARTITION BY {group} ORDER BY md5(item_id || $seed)) AS rank_in_group,
                {group} AS grp FROM chosen)
            SELECT * FROM ranked ORDER BY rank_in_group, draw"""
        with user_filter(option):
            table = self.store.con.sql(sql, params=params | {"seed": str(seed)}).to_arrow_table()
            per = self.store.con.execute(
                f"{ctes}, b AS (SELECT {RELATION} AS g, count(*) AS n FROM base GROUP BY 1), "
                f"p AS (SELECT {RELATION} AS g, count(*) AS n FROM passed GROUP BY 1) "
                "SELECT b.g, b.n, coalesce(p.n, 0) FROM b LEFT JOIN p USING (g) ORDER BY b.g", params).fetchall()
            # before the choice per prompt, when there is one (without it, the rows returned)
            reps_n = table.num_rows if per_prompt is None else \
                self.store.con.execute(f"{ctes} SELECT count(*) FROM reps", params).fetchall()[0][0]
        funnel = {"items": sum(int(n) for _, n, _ in per), "passed_critic": sum(int(m) for _, _, m in per),
                  "representatives": int(reps_n)}
        if per_prompt is not None:
            funnel["best_per_prompt"] = table.num_rows
        if dedup:  # kept as they are: the dedup run never saw them (added since, or outside its --where)
            funnel["not_deduplicated"] = sum(table["_undeduped"].to_pylist())
        table = table.drop_columns(["_undeduped"])
        if critic_id:
            funnel["critic_pass_rate"] = {str(g): round(int(m) / int(n), 4) for g, n, m in per}
        return table, funnel

    @staticmethod
    def _best_of_each_cluster(scored: bool) -> str:
        """Over the CTE `passed`: one item per duplicate cluster, the best of the members that passed the filters
        and the critic (the dedup run's representative where it passed, else the best scored, ties by item id).
        Keeping only the representatives lost a whole cluster whenever its representative failed the cut; an item
        the dedup run never clustered is kept, flagged `_undeduped`, not dropped as if it were a duplicate."""
        score = "s.score DESC NULLS LAST, " if scored else ""
        join = "LEFT JOIN scores s ON s.item_id = p.item_id AND s.critic_id = $critic " if scored else ""
        return f"""SELECT * EXCLUDE (_pick) FROM (
                SELECT p.*, d.cluster_id IS NULL AS _undeduped,
                       row_number() OVER (PARTITION BY coalesce(d.cluster_id, p.item_id)
                                          ORDER BY d.is_representative DESC NULLS LAST, {score}p.item_id) AS _pick
                FROM passed p LEFT JOIN dedup_clusters d ON d.item_id = p.item_id AND d.method = $method
                     AND d.threshold = $dthr AND d.scope = $scope {join})
            WHERE _pick = 1"""

    @staticmethod
    def _best_of_each_prompt() -> str:
        """Over the CTE `reps`: at most $per_prompt items of each prompt (store.items.sibling_key_sql, within a
        kind), the best-scored by $critic first (ties by item id): best of N, the choice `skd critic eval` scores
        as `selection`. An item of no prompt (free text) is kept."""
        key = sibling_key_sql("r")
        return f"""SELECT * EXCLUDE (_best) FROM (
                SELECT r.*, CASE WHEN {key} IS NULL THEN 1 ELSE row_number() OVER (
                           PARTITION BY r.kind, {key} ORDER BY s.score DESC NULLS LAST, r.item_id) END AS _best
                FROM reps r LEFT JOIN scores s ON s.item_id = r.item_id AND s.critic_id = $critic)
            WHERE _best <= $per_prompt"""

    @staticmethod
    def _passed_per_relation() -> str:
        """The per-relation cut over the CTE `base`: the overall share of scored items at or above $min, taken
        from the top of each relation (kind) by score. Unscored items pass in neither cut. One join: the share
        is a window over all scored items, beside each relation's rank and count."""
        return f"""SELECT * EXCLUDE (_rank, _n, _share) FROM (
                SELECT b.*,
                       row_number() OVER (PARTITION BY {RELATION} ORDER BY s.score DESC, b.item_id) AS _rank,
                       count(*) OVER (PARTITION BY {RELATION}) AS _n,
                       avg((s.score >= $min)::DOUBLE) OVER () AS _share
                FROM base b JOIN scores s ON s.item_id = b.item_id AND s.critic_id = $critic)
            WHERE _rank <= greatest(round(_n * _share), (_share > 0)::INT)"""  # a relation of one item keeps it

    def diff(self, a_id: str, b_id: str, sample: int = 10) -> dict[str, Any]:
        """How many items of snapshot B are not in A (`added`) and of A not in B (`removed`), the first SAMPLE of
        each by item_id, and how many items of both changed split: one outer join, counted and sampled in SQL, so
        a diff of two snapshots of a million items moves a few ids, not the memberships, out of the database."""
        row = self.store.con.execute("""
            SELECT count(*) FILTER (WHERE a.item_id IS NULL), count(*) FILTER (WHERE b.item_id IS NULL),
                   count(*) FILTER (WHERE a.item_id IS NOT NULL AND b.item_id IS NOT NULL
                                    AND a.split IS DISTINCT FROM b.split),
                   min(b.item_id, $n) FILTER (WHERE a.item_id IS NULL),
                   min(a.item_id, $n) FILTER (WHERE b.item_id IS NULL)
            FROM (SELECT item_id, split FROM snapshot_items WHERE snapshot_id = $a) a
            FULL OUTER JOIN (SELECT item_id, split FROM snapshot_items WHERE snapshot_id = $b) b
                 ON a.item_id = b.item_id""", {"a": a_id, "b": b_id, "n": max(1, int(sample))}).fetchall()[0]
        return {"added": int(row[0]), "removed": int(row[1]), "split_changed": int(row[2]),
                "added_ids": list(row[3] or [])[:sample], "removed_ids": list(row[4] or [])[:sample]}

    def members(self, snapshot_id: str, critic_id: str | None = None,
                dedup: tuple[str, float, str] | None = None) -> pl.DataFrame:
        """The snapshot's items (EXPORTED_COLUMNS, `extra` as JSON text) with their split, teachers, the
        critic's score and the size of their cluster under the dedup setting, by split then item_id."""
        params: dict[str, Any] = {"snap": snapshot_id, "critic": critic_id or "",
                                  "method": dedup[0] if dedup else "", "dthr": dedup[1] if dedup else -1.0,
                                  "scope": dedup[2] if dedup else ""}
        # as they were when the snapshot was cut: its cluster sizes were frozen then (a snapshot cut before they
        # were, counts the clusters now), and a source added later (a student writing the item again) is not its
        cluster = ("coalesce(m.cluster_size, (SELECT count(*) FROM dedup_clusters c WHERE c.cluster_id = d.cluster_id "
                   "AND c.method = $method AND c.threshold = $dthr AND c.scope = $scope))") if dedup else "NULL::BIGINT"
        cols = ", ".join(f"i.{c}" for c in EXPORTED_COLUMNS)
        return self.store.query(f"""
            SELECT m.split, {cols}, i.extra::VARCHAR AS extra,
                   (SELECT string_agg(DISTINCT teacher, ', ' ORDER BY teacher) FROM item_sources s
                    WHERE s.item_id = i.item_id AND s.teacher IS NOT NULL AND s.created_at <= sn.created_at) AS teacher,
                   sc.score AS critic_score, {cluster} AS cluster_size
            FROM snapshot_items m JOIN items i USING (item_id) JOIN snapshots sn ON sn.snapshot_id = m.snapshot_id
            LEFT JOIN scores sc ON sc.item_id = i.item_id AND sc.critic_id = $critic
            LEFT JOIN dedup_clusters d ON d.item_id = i.item_id AND d.method = $method AND d.threshold = $dthr
                 AND d.scope = $scope
            WHERE m.snapshot_id = $snap ORDER BY m.split, i.item_id""", params)

    def sources(self, snapshot_id: str) -> list[dict[str, Any]]:
        """(teacher, params as JSON text, item_id) of every generated source of the snapshot's items."""
        return _rows(self.store, "SELECT teacher, params::VARCHAR AS params, item_id FROM item_sources "
                                 "WHERE teacher IS NOT NULL AND item_id IN "
                                 "(SELECT item_id FROM snapshot_items WHERE snapshot_id = $1) AND created_at <= "
                                 "(SELECT created_at FROM snapshots WHERE snapshot_id = $1)", [snapshot_id])
