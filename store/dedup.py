"""Typed verbs over `dedup_clusters`: the items to cluster with their scope and exact keys, the stored clusters
of a setting (method, threshold, scope), writing a setting's clusters, and the latest setting of a method.
The clustering itself (union-find, representatives) is corpus/dedup.py's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .catalog import user_filter, where_sql
from .items import ID_FIELDS, exact_norm_sql, scope_sql

if TYPE_CHECKING:
    import pyarrow as pa

    from .db import Store


class Dedup:
    def __init__(self, store: Store):
        self.store = store

    def items(self, where: str | None, scope: str, critic_id: str | None, exact: bool = True,
              option: str = "--where") -> pa.Table:
        """The items matching a user's filter, by item_id: `scope_key` (duplicates share it), `exact_key` (the
        normalised form; NULL unless `exact`, as only exact dedup needs it) and the critic's `score` (NULL
        without a critic, or for an item it has not scored)."""
        score = "s.score" if critic_id else "NULL::DOUBLE"
        join = "LEFT JOIN scores s ON s.item_id = i.item_id AND s.critic_id = $critic" if critic_id else ""
        # the choices too, as the item id has them: one question and answer over other choices is another item
        fields = [exact_norm_sql("i." + c) for c in ID_FIELDS] + [exact_norm_sql("array_to_string(i.choices, ' | ')")]
        exact_key = f"concat_ws(chr(31), i.kind, {', '.join(fields)})" if exact else "NULL"
        sql = (f"SELECT i.item_id, {scope_sql(scope)} AS scope_key, {exact_key} AS exact_key, {score} AS score "
               f"FROM items i {join} WHERE {where_sql(where)} ORDER BY i.item_id")
        with user_filter(option):
            return self.store.con.sql(sql, params={"critic": critic_id} if critic_id else None).to_arrow_table()

    def clusters(self, method: str, threshold: float, scope: str, *, model: str | None = None,
                 where: str | None = None, default_model: str | None = None) -> list[tuple[str, str]]:
        """(item_id, cluster_id) of every item stored under this setting; with MODEL, only those a run with that
        embedding model and the same filter WHERE clustered (a run before models were recorded counts as
        DEFAULT_MODEL's), after MODEL's vectors were last replaced: an item another model, another filter or older
        vectors clustered was never compared with these."""
        sql = ("SELECT d.item_id, d.cluster_id FROM dedup_clusters d LEFT JOIN runs r USING (run_id) "
               "WHERE d.method = ? AND d.threshold = ? AND d.scope = ?")
        params: list[object] = [method, threshold, scope]
        if model is not None:
            # and none from before the model's vectors were last replaced (`skd embed --replace`): they were made
            # from the old vectors, so every item is compared again
            sql += (" AND coalesce(json_extract_string(r.config, '$.model'), ?) = ? AND "
                    "json_extract_string(r.config, '$.where') IS NOT DISTINCT FROM ? AND NOT coalesce("
                    "coalesce(r.started_at, TIMESTAMP '1970-01-01') <= (SELECT max(started_at) FROM runs WHERE "
                    "stage = 'embed' AND json_extract_string(config, '$.model') = ? AND "
                    "json_extract_string(config, '$.replace') = 'true'), false)")
            params += [default_model or model, model, where, model]
        return self.store.con.execute(sql, params).fetchall()

    def write(self, method: str, threshold: float, scope: str, clusters: pa.Table, run_id: str) -> None:
        """Store the clusters (item_id, cluster_id, is_representative) of a setting, replacing those rows of
        the same items, in one transaction (joined to the caller's, when it holds one)."""
        with self.store.transaction() as con:
            con.register("_clusters", clusters)
            try:
                con.execute("DELETE FROM dedup_clusters WHERE method = ? AND threshold = ? AND scope = ? "
                            "AND item_id IN (SELECT item_id FROM _clusters)", [method, threshold, scope])
                con.execute("INSERT INTO dedup_clusters (item_id, method, threshold, scope, cluster_id, "
                            "is_representative, run_id) SELECT item_id, ?, ?, ?, cluster_id, is_representative, ? "
                            "FROM _clusters", [method, threshold, scope, run_id])
            finally:
                con.unregister("_clusters")

    def latest_setting(self, method: str, threshold: float | None = None,
                       scope: str | None = None) -> tuple[float, str] | None:
        """The (threshold, scope) of the most recently run setting of `method` matching those given, if any."""
        cond, params = "method = ?", [method]
        if threshold is not None:
            cond, params = cond + " AND threshold = ?", params + [threshold]
        if scope is not None:
            cond, params = cond + " AND scope = ?", params + [scope]
        rows = self.store.con.execute(f"SELECT d.threshold, d.scope FROM dedup_clusters d LEFT JOIN runs USING "
                                      f"(run_id) WHERE {cond} ORDER BY runs.started_at DESC NULLS LAST LIMIT 1",
                                      params).fetchall()
        return (float(rows[0][0]), rows[0][1]) if rows else None
