"""Provider batch jobs (`batch_jobs`, `batch_failures`) and what generation cost (`requests` usage columns).

A job is recorded before anything is paid for and updated at every step (uploaded, created, polled,
ingested), so a rerun after a kill at any point resumes the recorded job: it never submits the same requests
twice while a job for them is open."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .catalog import _json, _rows

if TYPE_CHECKING:
    from .db import Store
    from .slices import Slice

FIELDS = ("run_id", "recipe", "model", "endpoint", "url", "request_ids", "input_file_id", "job_id", "status",
          "counts", "output_file_id", "error_file_id", "error")


class BatchJobs:
    def __init__(self, store: Store):
        self.store = store

    def record(self, batch_key: str, **fields: Any) -> None:
        self.store.con.execute(
            f"INSERT INTO batch_jobs (batch_key, {', '.join(fields)}, updated_at) "
            f"VALUES (?, {', '.join('?' for _ in fields)}, current_timestamp)", [batch_key, *_values(fields)])

    def update(self, batch_key: str, closed: bool = False, **fields: Any) -> None:
        sets = [f"{k} = ?" for k in fields] + ["updated_at = current_timestamp"]
        if closed:
            sets.append("closed_at = current_timestamp")
        self.store.con.execute(f"UPDATE batch_jobs SET {', '.join(sets)} WHERE batch_key = ?",
                               [*_values(fields), batch_key])

    def open(self, endpoint: str, model: str, recipe: str) -> list[dict[str, Any]]:
        """Jobs of this endpoint, teacher and recipe stage that are not closed yet, oldest first."""
        rows = _rows(self.store, f"SELECT batch_key, {', '.join(FIELDS)} FROM batch_jobs WHERE closed_at IS NULL "
                                 "AND endpoint = ? AND model = ? AND recipe = ? ORDER BY created_at, batch_key",
                     [endpoint, model, recipe])
        return [r | {"counts": _json(r["counts"]) or {}} for r in rows]

    def fail(self, batch_key: str, failures: dict[str, str]) -> None:
        """Lines a job did not answer, with the reason; the requests stay pending for a later job."""
        if failures:
            self.store.con.executemany("INSERT INTO batch_failures (request_id, batch_key, error) VALUES (?, ?, ?)",
                                       [[rid, batch_key, err] for rid, err in failures.items()])

    def all(self) -> list[dict[str, Any]]:
        return _rows(self.store,
                     f"SELECT batch_key, {', '.join(FIELDS)}, closed_at FROM batch_jobs ORDER BY created_at")


def _values(fields: dict[str, Any]) -> list[Any]:
    return [json.dumps(v) if isinstance(v, dict) else v for v in fields.values()]


class Usage:
    """Tokens and dollars that generation cost, per run and per snapshot."""

    COLUMNS = ("count(*) AS requests, sum(prompt_tokens)::BIGINT AS prompt_tokens, "
               "sum(completion_tokens)::BIGINT AS completion_tokens, sum(cost) AS cost, "
               "count(*) FILTER (cost IS NOT NULL) AS priced")

    def __init__(self, store: Store):
        self.store = store

    def of_runs(self, run_ids: list[str]) -> dict[str, Any]:
        return _clean(_rows(self.store, f"SELECT {self.COLUMNS} FROM requests WHERE list_contains(?, run_id)",
                            [run_ids])[0])

    def of_slice(self, sl: Slice) -> dict[str, Any]:
        """What the generation runs behind the slice's items cost, all their requests included: the bill for
        the items that were filtered out is part of what the kept ones cost."""
        ids, params = sl.sql()
        with sl.checked():
            return _clean(_rows(self.store, f"SELECT {self.COLUMNS} FROM requests WHERE run_id IN "
                                f"(SELECT DISTINCT run_id FROM item_sources WHERE item_id IN ({ids}) "
                                "AND request_id IS NOT NULL)", params)[0])

    def per_teacher(self) -> list[dict[str, Any]]:
        return [_clean(r) for r in _rows(
            self.store, f"SELECT model AS teacher, {self.COLUMNS} FROM requests GROUP BY model ORDER BY model")]


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """Counts as ints (0 for none), the cost as a float or None when no request had a price."""
    out = {k: (int(v or 0) if k != "cost" and k != "teacher" else v) for k, v in row.items()}
    out["cost"] = float(row["cost"]) if row.get("priced") else None
    return out
