"""Typed verbs over `embeddings`: which items a model has not embedded yet, and the stored vectors of a
selection of items (a `Slice`, or item ids), streamed without DuckDB caching them all."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .catalog import items_without
from .items import EMBEDDED_COLUMNS
from .slices import Slice

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from .db import Store

STREAM_MEMORY = "512MB"  # DuckDB's buffer while vectors stream out: they are copied into one matrix anyway
Items = Slice | Sequence[str]  # a slice, or item ids (a list or a numpy array of them)


class Embeddings:
    def __init__(self, store: Store):
        self.store = store

    def missing(self, model: str, where: str | None = None, option: str = "--where") -> tuple[pa.Table, int]:
        """Items (an Arrow table of EMBEDDED_COLUMNS, by item_id) that `model` has not embedded, among those
        matching a user's filter; and how many match in all."""
        return items_without(self.store, "embeddings", "model", model, EMBEDDED_COLUMNS, where, option)

    def other_prompt(self, model: str, prompt: str | None) -> tuple[int, str | None] | None:
        """(how many vectors, the prompt they were made under) when MODEL's stored vectors were made under a prompt
        other than PROMPT, by the latest embed run of MODEL that recorded one (runs from before the record say
        nothing); else None. Compared as recorded: run configs are redacted."""
        import json

        from .redact import redact_value

        row = self.store.con.execute(
            "SELECT json_extract(config, '$.prompt') FROM runs WHERE stage = 'embed' AND "
            "json_extract_string(config, '$.model') = ? AND json_extract(config, '$.prompt') IS NOT NULL "
            "ORDER BY started_at DESC, run_id DESC LIMIT 1", [model]).fetchall()
        before = json.loads(row[0][0]) if row else prompt
        if before == redact_value(prompt) or not (n := self.stored(model)):
            return None
        return n, before

    def stored(self, model: str) -> int:
        """How many vectors MODEL has in all."""
        return int(self.store.scalar("SELECT count(*) FROM embeddings WHERE model = ?", [model]))

    def drop(self, model: str) -> int:
        """Delete every vector of MODEL; how many there were."""
        with self.store.transaction() as con:
            n = self.stored(model)
            con.execute("DELETE FROM embeddings WHERE model = ?", [model])
        return n

    def count(self, model: str, items: Items) -> int:
        """How many of the items have a `model` vector."""
        with self._selected(items) as (ids, params):
            return int(self.store.scalar(f"SELECT count(*) FROM embeddings WHERE model = $model AND item_id IN ({ids})",
                                         {"model": model, **params}))

    def iter_vectors(self, model: str, items: Items, batch: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(item_ids, float32 matrix) batches of the stored vectors of the items, in no particular order."""
        with self._selected(items) as (ids, params):
            yield from self._stream(model, ids, params, batch)

    def load(self, model: str, items: Items, batch: int = 65536) -> tuple[np.ndarray, list[str]]:
        """The stored vectors of the items, in item_id order, streamed into one preallocated float32 matrix:
        no Python list of vectors is built, and only the ids are sorted (sorting a million vectors in DuckDB
        would cost gigabytes). Items without a vector are left out: compare the ids with those asked for."""
        import numpy as np

        with self._selected(items) as (ids_sql, params):
            ids = [r[0] for r in self.store.con.execute(
                f"SELECT item_id FROM embeddings WHERE model = $model AND item_id IN ({ids_sql}) ORDER BY item_id",
                {"model": model, **params}).fetchall()]
            dim = self.store.con.execute("SELECT len(vector) FROM embeddings WHERE model = ? LIMIT 1",
                                         [model]).fetchall()
            if not ids or not dim:
                return np.zeros((0, 0), dtype=np.float32), []
            out = np.empty((len(ids), dim[0][0]), dtype=np.float32)
            order = np.asarray(ids)
            for batch_ids, vectors in self._stream(model, ids_sql, params, batch):
                out[np.searchsorted(order, batch_ids)] = vectors
        return out, ids

    def _stream(self, model: str, ids: str, params: dict[str, Any], batch: int) -> Iterator[tuple[Any, Any]]:
        """The vectors of the items `ids` selects, with DuckDB's buffer capped while they stream (it would
        cache them all otherwise), and the setting restored after."""
        import numpy as np

        con = self.store.con
        limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        con.execute("SET memory_limit = $limit", {"limit": STREAM_MEMORY})
        reader = None
        try:
            reader = con.sql(f"SELECT item_id, vector FROM embeddings WHERE model = $model AND item_id IN ({ids})",
                             params={"model": model, **params}).to_arrow_reader(batch)
            for rb in reader:
                yield (np.asarray(rb.column(0).to_pylist()),
                       rb.column(1).values.to_numpy(zero_copy_only=False).reshape(rb.num_rows, -1))
        finally:
            if reader is not None:
                reader.close()  # a reader stopped early holds the connection's open result
            self._restore_memory_limit(limit)

    def _restore_memory_limit(self, limit: str) -> None:
        """Back to `limit` as DuckDB displayed it: by RESET when that was the default (setting the rounded
        text, e.g. '18.8 GiB', would lower the limit a little at every stream), else by setting it."""
        con = self.store.con
        con.execute("RESET memory_limit")
        if con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0] != limit:
            con.execute("SET memory_limit = $limit", {"limit": limit})

    @contextmanager
    def _selected(self, items: Items) -> Iterator[tuple[str, dict[str, Any]]]:
        """The item_id subquery and parameters of a selection: a slice's own, or item ids registered as a
        table for as long as the query runs (so no id is pasted into SQL)."""
        if isinstance(items, Slice):
            with items.checked():
                yield items.sql()
            return
        import pyarrow as pa

        self.store.con.register("_skd_selected", pa.table({"item_id": items}))
        try:
            yield "SELECT item_id FROM _skd_selected", {}
        finally:
            self.store.con.unregister("_skd_selected")
