"""Typed verbs over the catalogue tables (critics, students, evals, snapshots by name, pipeline runs), so
the components and the application speak Python to the store: `store.critics.get(name)`, not SQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import SkdError, first_line

if TYPE_CHECKING:
    from .db import Store
    from .slices import Slice


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _rows(store: Store, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = store.con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


class Critics:
    """Registered critics: one row each, the model folder at `path`."""

    COLUMNS = "critic_id, name, path, base_model, mode, metrics, thresholds, config, created_at"

    def __init__(self, store: Store):
        self.store = store

    def exists(self, name: str) -> bool:
        return bool(self.store.scalar("SELECT count(*) FROM critics WHERE name = ?", [name]))

    def names(self) -> list[str]:
        return [r["name"] for r in _rows(self.store, "SELECT name FROM critics ORDER BY name")]

    def get(self, name: str) -> dict[str, Any]:
        """The critic named `name` (metrics, thresholds and config as dicts); one line when there is none."""
        rows = _rows(self.store, f"SELECT {self.COLUMNS} FROM critics WHERE name = ?", [name])
        if not rows:
            known = ", ".join(self.names()) or "none"
            raise SkdError(f"no critic named {name!r} (known: {known}); train one with `skd critic train`")
        return self._parsed(rows[0])

    def all(self) -> list[dict[str, Any]]:
        return [self._parsed(r) for r in _rows(self.store, f"SELECT {self.COLUMNS} FROM critics ORDER BY created_at")]

    def by_id(self, critic_id: str) -> dict[str, Any] | None:
        """The critic registered under `critic_id` (as `get` gives it), or None when there is none."""
        rows = _rows(self.store, f"SELECT {self.COLUMNS} FROM critics WHERE critic_id = ?", [critic_id])
        return self._parsed(rows[0]) if rows else None

    @staticmethod
    def _parsed(row: dict[str, Any]) -> dict[str, Any]:
        return {k: _json(v) if k in ("metrics", "thresholds", "config") and v else v for k, v in row.items()}

    def register(self, card: dict[str, Any], path: str) -> None:
        self.store.con.execute(
            "INSERT INTO critics (critic_id, name, path, base_model, mode, metrics, thresholds, config) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [card["critic_id"], card["name"], path, card["base_model"], card["mode"], json.dumps(card["metrics"]),
             json.dumps(card["thresholds"]), json.dumps(card["config"])])


class Students:
    def __init__(self, store: Store):
        self.store = store

    def get(self, student_id: str) -> dict[str, Any] | None:
        rows = _rows(self.store, "SELECT student_id, snapshot_id, base_model, path, config FROM students "
                                 "WHERE student_id = ?", [student_id])
        return {**rows[0], "config": _json(rows[0]["config"])} if rows else None

    def register(self, student_id: str, snapshot_id: str, base_model: str, path: str, config: dict[str, Any]) -> None:
        self.store.con.execute("INSERT INTO students (student_id, snapshot_id, base_model, path, config) "
                               "VALUES (?, ?, ?, ?, ?)", [student_id, snapshot_id, base_model, path,
                                                          json.dumps(config, default=str)])


class Evals:
    """Evaluations, keyed by a hash of what they measured (see train.evaluate.eval_key)."""

    def __init__(self, store: Store):
        self.store = store

    def get(self, eval_id: str) -> dict[str, Any] | None:
        rows = self.select(eval_ids=[eval_id])
        return rows[0] if rows else None

    def select(self, eval_ids: list[str] | None = None, snapshot_id: str | None = None) -> list[dict[str, Any]]:
        """Evaluations in the order they were made: these ids, or those linked to a snapshot, or all."""
        rows = _rows(self.store, "SELECT eval_id, model, student_id, snapshot_id, metrics, config, created_at "
                                 "FROM evals WHERE (? IS NULL OR list_contains(?::VARCHAR[], eval_id)) "
                                 "AND (? IS NULL OR snapshot_id = ?) ORDER BY created_at, eval_id",
                     [eval_ids, eval_ids, snapshot_id, snapshot_id])
        return [{**r, "metrics": _json(r["metrics"] or "{}"), "config": _json(r["config"] or "{}")} for r in rows]

    def record(self, eval_id: str, model: str, student_id: str | None, snapshot_id: str | None,
               metrics: dict[str, Any], config: dict[str, Any]) -> None:
        """Store an evaluation; one already recorded under `eval_id` is kept as it is."""
        self.store.con.execute(
            "INSERT INTO evals (eval_id, model, student_id, snapshot_id, metrics, config) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING", [eval_id, model, student_id, snapshot_id, json.dumps(metrics),
                                       json.dumps(config, default=str)])


class Runs:
    """Stage executions (`runs`); the pipeline finds its stages' records by key."""

    def __init__(self, store: Store):
        self.store = store

    def later_rounds_filter(self, round_: int) -> str | None:
        """A filter over items (aliased `i`) that leaves out those only a pipeline's rounds after ROUND_ wrote
        (their generation runs record `pipeline` and `round`); None when there are none, so the filter of a
        first run stays as the user wrote it."""
        later = ("SELECT so.item_id FROM item_sources so LEFT JOIN runs ru USING (run_id) GROUP BY so.item_id "
                 "HAVING bool_and(coalesce(json_extract_string(ru.config, '$.pipeline') = 'true' AND "
                 f"TRY_CAST(json_extract_string(ru.config, '$.round') AS INTEGER) > {int(round_)}, false))")
        if not self.store.scalar(f"SELECT count(*) FROM ({later})"):
            return None
        return f"i.item_id NOT IN ({later})"

    def pipeline_stage(self, key: str) -> dict[str, Any] | None:
        """The latest finished record of a pipeline stage with this key, else its latest try, else None."""
        rows = _rows(self.store, "SELECT run_id, status, config, summary FROM runs WHERE stage = 'pipeline' AND "
                                 "json_extract_string(config, '$.key') = ? ORDER BY started_at DESC", [key])
        done = [r for r in rows if r["status"] == "ok"]
        if not rows:
            return None
        r = (done or rows)[0]
        return {"run_id": r["run_id"], "status": r["status"], "config": _json(r["config"]),
                "summary": _json(r["summary"] or "{}") if done else {}}


@contextmanager
def user_filter(option: str) -> Iterator[None]:
    """Where a user's own SQL filter (`--where`) runs: a DuckDB error becomes one line naming the option."""
    import duckdb

    try:
        yield
    except duckdb.Error as e:
        raise SkdError(f"{option}: {first_line(e)}") from None


def where_sql(where: str | None) -> str:
    """A user's filter as a condition (parenthesised, so it cannot swallow the conditions after it)."""
    return f"({where})" if where else "TRUE"


class Labels:
    COLUMNS = ("item_id, kind, head, relation, tail, question, answer, rationale, text, label, source, votes_pos, "
               "votes_total, extra")

    def __init__(self, store: Store):
        self.store = store

    def select(self, where: str | None = None, sources: list[str] | None = None, option: str = "--labels-where",
               teacher_nll: bool = False, siblings: bool = False):
        """Labels (a polars DataFrame) matching a user's filter and coming from `sources` (all when empty),
        in a fixed order: the same labels always train the same critic. TEACHER_NLL adds the teacher's likelihood
        of each (a `teacher_nll` column, null where unknown), SIBLINGS what the other labelled items of its prompt
        say (a `siblings` list, null where none), for a critic stacked with them."""
        columns = ", ".join([self.COLUMNS, *signal_columns("labels", teacher_nll, siblings)])
        with user_filter(option):
            return self.store.query(
                f"SELECT {columns} FROM labels WHERE {where_sql(where)} AND "
                "(len(?::VARCHAR[]) = 0 OR list_contains(?::VARCHAR[], source)) ORDER BY item_id, source",
                [sources or [], sources or []])


class Generations:
    """Teacher requests and completions (`requests`, `generations`) and the funnel they lead to."""

    def __init__(self, store: Store):
        self.store = store

    def done(self, request_ids: list[str]) -> set[str]:
        """Those of the requests whose completions are stored (the generations table is the record of done work)."""
        import pyarrow as pa

        self.store.con.register("_wanted", pa.table({"request_id": request_ids}))
        try:
            return {row[0] for row in self.store.con.execute(
                "SELECT DISTINCT request_id FROM generations SEMI JOIN _wanted USING (request_id)").fetchall()}
        finally:
            self.store.con.unregister("_wanted")

    def funnel(self, sl: Slice) -> dict[str, int]:
        """Teacher completions and parsed completions of the runs that produced the slice's items."""
        ids, params = sl.sql()
        with sl.checked():
            total, parsed = self.store.con.execute(
                f"SELECT count(*), count(*) FILTER (parsed_ok) FROM generations WHERE run_id IN "
                f"(SELECT DISTINCT run_id FROM item_sources WHERE item_id IN ({ids}) AND request_id IS NOT NULL)",
                params).fetchall()[0]
        return {"completions": int(total), "parsed": int(parsed)}


class Scores:
    def __init__(self, store: Store):
        self.store = store

    def missing(self, critic_id: str, where: str | None = None, option: str = "--where",
                teacher_nll: bool = False, siblings: bool = False) -> tuple[Any, int]:
        """Items (an Arrow table of SCORED_COLUMNS, by item_id) that the critic has not scored, among those
        matching a user's filter; and how many match in all. TEACHER_NLL adds the teacher's likelihood of each,
        SIBLINGS what the other items of its prompt say (all items, scored or not, filtered or not)."""
        from .items import SCORED_COLUMNS

        columns = (*SCORED_COLUMNS, *signal_columns("i", teacher_nll, siblings))
        return items_without(self.store, "scores", "critic_id", critic_id, columns, where, option)


def signal_columns(alias: str, teacher_nll: bool, siblings: bool) -> list[str]:
    """The extra columns a stacked critic reads of the row aliased ALIAS (of labels, or else of items)."""
    from .items import SIBLINGS, TEACHER_NLL, siblings_sql, teacher_nll_sql

    return ([f"{teacher_nll_sql(alias)} AS {TEACHER_NLL}"] if teacher_nll else []) + \
        ([f"{siblings_sql(alias, labels=alias == 'labels')} AS {SIBLINGS}"] if siblings else [])


def items_without(store: Store, table: str, key: str, value: str, columns: tuple[str, ...], where: str | None,
                  option: str) -> tuple[Any, int]:
    """Items matching a user's filter that have no row in TABLE for KEY = VALUE (not yet scored by a critic,
    embedded by a model), as an Arrow table of COLUMNS by item_id; and how many match in all."""
    cond = where_sql(where)
    with user_filter(option):
        total = store.scalar(f"SELECT count(*) FROM items WHERE {cond}")
        todo = store.con.sql(
            f"SELECT {', '.join(columns)} FROM items i WHERE {cond} AND NOT EXISTS (SELECT 1 FROM {table} x "
            f"WHERE x.item_id = i.item_id AND x.{key} = ?) ORDER BY item_id", params=[value]).to_arrow_table()
    return todo, int(total)
