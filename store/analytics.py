"""The reads behind the diversity statistics of a slice (corpus/stats.py does the arithmetic): counts,
distinct normalised forms, sampled contents, novelty against the seeds, critic scores, duplicate rates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .items import CONTENT_SQL, exact_norm_sql
from .slices import Slice

if TYPE_CHECKING:
    from .db import Store

GROUPABLE = ("kind", "relation", "domain")  # the columns items are counted per
HEAD_SQL = "coalesce(i.head, i.question)"  # what an item is about


class Analytics:
    def __init__(self, store: Store):
        self.store = store

    def _fetch(self, sql: str, sl: Slice, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows of `sql`, in which `{ids}` stands for the slice's item_id subquery (replaced, not formatted: the
        SQL around it may hold braces)."""
        ids, slice_params = sl.sql()
        with sl.checked():
            return self.store.con.execute(sql.replace("{ids}", ids), {**slice_params, **(params or {})}).fetchall()

    def count(self, sl: Slice) -> int:
        return int(self._fetch("SELECT count(*) FROM items WHERE item_id IN ({ids})", sl)[0][0])

    def value_counts(self, sl: Slice, column: str) -> dict[str, int]:
        """Items per value of `column` (one of GROUPABLE; NULL as '(none)'), most frequent first."""
        if column not in GROUPABLE:
            raise ValueError(f"items are counted per one of {', '.join(GROUPABLE)}, not {column!r}")
        rows = self._fetch(f"SELECT coalesce({column}, '(none)'), count(*) FROM items WHERE item_id IN ({{ids}}) "
                           "GROUP BY 1 ORDER BY 2 DESC, 1", sl)
        return {k: int(v) for k, v in rows}

    def distinct_counts(self, sl: Slice) -> tuple[int, int, int]:
        """Items, distinct normalised heads (or questions), distinct normalised contents."""
        n, heads, tails = self._fetch(
            f"SELECT count(*), count(DISTINCT {exact_norm_sql(HEAD_SQL)}), "
            f"count(DISTINCT {exact_norm_sql(CONTENT_SQL)}) FROM items i WHERE item_id IN ({{ids}})", sl)[0]
        return int(n), int(heads), int(tails)

    def contents(self, sl: Slice, limit: int, seed: int) -> list[str]:
        """The generated parts (CONTENT_SQL) of at most `limit` items, drawn by a seeded hash of their ids."""
        rows = self._fetch(f"SELECT {CONTENT_SQL} FROM items i WHERE item_id IN ({{ids}}) "
                           "ORDER BY md5(item_id || $seed) LIMIT $limit", sl, {"seed": str(seed), "limit": int(limit)})
        return [r[0] for r in rows]

    def novelty_counts(self, sl: Slice) -> tuple[int, int, int]:
        """The slice's generated items, those whose normalised form is not among the seeds (the items that
        came in by ingest), and the number of distinct seeds."""
        key = f"concat_ws(chr(31), i.kind, {exact_norm_sql(HEAD_SQL)}, coalesce(i.relation, ''), " \
              f"{exact_norm_sql(CONTENT_SQL)})"
        n, novel, seeds = self._fetch(f"""
            WITH seeds AS (SELECT DISTINCT {key} AS k FROM items i
                           WHERE item_id IN (SELECT item_id FROM item_sources WHERE request_id IS NULL)),
                 gen AS (SELECT {key} AS k FROM items i WHERE item_id IN ({{ids}})
                         AND item_id IN (SELECT item_id FROM item_sources WHERE request_id IS NOT NULL))
            SELECT (SELECT count(*) FROM gen), (SELECT count(*) FROM gen WHERE k NOT IN (SELECT k FROM seeds)),
                   (SELECT count(*) FROM seeds)""", sl)[0]
        return int(n), int(novel), int(seeds)

    def scores_per_critic(self, sl: Slice) -> dict[str, list[float]]:
        """Every stored score of the slice's items, per critic name (names in order)."""
        rows = self._fetch("SELECT c.name, s.score FROM scores s JOIN critics c USING (critic_id) "
                           "WHERE s.item_id IN ({ids}) ORDER BY c.name", sl)
        by: dict[str, list[float]] = {}
        for name, score in rows:
            by.setdefault(name, []).append(score)
        return by

    def duplicate_counts(self, sl: Slice) -> list[dict[str, Any]]:
        """Per stored dedup setting: the slice's clustered items and how many of them are not representatives."""
        rows = self._fetch("SELECT method, threshold, scope, count(*), count(*) FILTER (NOT is_representative) "
                           "FROM dedup_clusters WHERE item_id IN ({ids}) GROUP BY ALL "
                           "ORDER BY method, threshold, scope", sl)
        return [{"method": m, "threshold": t, "scope": s, "n": int(n), "duplicates": int(d)}
                for m, t, s, n, d in rows]
