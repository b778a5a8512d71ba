"""A slice of the corpus as a value: which items a statistic, a vector load or a query is about. Components
hand the store a `Slice`, never a SQL string; the store turns it into a parameterised subquery."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

from .catalog import user_filter, where_sql


@dataclass(frozen=True)
class Slice:
    """The items matching a user's filter (`where`, SQL over `items`), or a snapshot's members (then `where`
    is not applied), or every item; with `sample`, a seeded draw of at most that many of them."""

    where: str | None = None
    snapshot_id: str | None = None
    sample: int | None = None
    seed: int = 0
    option: str = "--where"  # the option a bad `where` is reported under

    def drawn(self, sample: int, seed: int) -> Slice:
        """At most `sample` of the slice's items, drawn by a seeded hash of their ids (the same draw each time)."""
        return replace(self, sample=sample, seed=seed)

    def sql(self) -> tuple[str, dict[str, Any]]:
        """A query returning the slice's item_ids, and its named parameters. They are prefixed `slice_`, so
        they do not clash with those of the query the subquery goes into (DuckDB refuses unused ones)."""
        if self.snapshot_id is not None:
            sql = "SELECT item_id FROM snapshot_items WHERE snapshot_id = $slice_snapshot"
            params: dict[str, Any] = {"slice_snapshot": self.snapshot_id}
        else:
            # aliased `i` as everywhere a user's filter goes: one filter may name `i.item_id` in every query
            sql, params = f"SELECT i.item_id FROM items i WHERE {where_sql(self.where)}", {}
        if self.sample is not None:
            sql = f"SELECT item_id FROM ({sql}) ORDER BY md5(item_id || $slice_seed) LIMIT $slice_sample"
            params |= {"slice_seed": str(self.seed), "slice_sample": int(self.sample)}
        return sql, params

    def checked(self) -> AbstractContextManager[None]:
        """Where a query over the slice runs: a user's filter that DuckDB refuses becomes one line."""
        return user_filter(self.option) if self.where and self.snapshot_id is None else nullcontext()
