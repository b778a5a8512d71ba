"""Import human (or LLM) judgements into `labels`, one row per distinct item per source.

Duplicate judgements of the same item (several annotators, repeated rows) are resolved by majority
vote; the votes are kept (`votes_pos` of `votes_total`) so a critic can weight or filter by agreement.
A tie counts as not acceptable: a critic should learn to keep what annotators agreed was good.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from .db import Store
from .errors import SkdError
from .head_parts import in_part, normal_part
from .ingest import Reject, as_choices, as_text, file_key
from .items import ID_FIELDS, LABEL_FORMATS, clean_sql, infer_kind_sql, item_id_sql, reject_reason_sql
from .readers import iter_atomic2020, iter_csv, iter_jsonl

LABEL_WORDS = {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0}
SCHEMA = pa.schema(
    [("row_number", pa.int64()), ("kind", pa.string())]
    + [(f, pa.string()) for f in ID_FIELDS]
    + [("label", pa.int64()), ("extra", pa.string()), ("choices", pa.list_(pa.string()))]
)


@dataclass
class LabelResult:
    source: str
    rows: int
    judgements: int
    items: int
    positive: int
    conflicts: int
    rejected: int
    rejects: list[Reject]
    replaced: int = 0  # labels of the source that this import replaced
    skipped: bool = False  # the same file was imported into this source before: nothing changed


def as_label(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in LABEL_WORDS:
        return LABEL_WORDS[value.strip().lower()]
    raise ValueError(f"label must be 0/1, true/false or yes/no, got {str(value)[:40]!r}")


def _judgement(rec: dict[str, Any], kind: str | None, label: Any, extra: dict[str, Any]) -> dict[str, Any]:
    row = {"kind": kind, "label": as_label(label)}
    for f in ID_FIELDS:
        row[f] = as_text(rec.get(f), f)
    row["extra"] = json.dumps(extra, sort_keys=True, default=str) if extra else None
    return row


def ckbp_judgements(rec: dict[str, Any]) -> list[dict[str, Any]]:
    missing = [c for c in ("head", "relation", "tail", "label") if c not in rec]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)}")
    extra = {k: v for k, v in rec.items() if k not in ("head", "relation", "tail", "label")}
    return [_judgement(rec, "triple", rec["label"], extra)]


def acceptability_judgements(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The few_shot_explanations crowd file: one row per annotator, five explanations per question."""
    if "Input.question" not in rec or "Answer.acceptable" not in rec:
        raise ValueError("missing Input.question or Answer.acceptable")
    accepted = {a.strip() for a in rec["Answer.acceptable"].split("|") if a.strip()}
    out = []
    for k in range(1, 6):
        explanation = rec.get(f"Input.explanation_{k}")
        if not explanation:
            continue
        item = {"question": rec["Input.question"], "answer": rec.get("Input.gold_label"),
                "rationale": explanation}
        extra = {"choices": rec.get("Input.answer_choices"), "csqa_id": rec.get("Input.id"),
                 "nll": rec.get(f"Input.nll_{k}"), "sample": rec.get(f"Input.source_sample_{k}")}
        out.append(_judgement(item, "rationale", str(k) in accepted, extra))
    return out


def jsonl_judgements(rec: dict[str, Any]) -> list[dict[str, Any]]:
    if "label" not in rec:
        raise ValueError("missing field label")
    extra = {k: v for k, v in rec.items() if k not in (*ID_FIELDS, "kind", "label", "choices")}
    # the choices are part of a question's identity (its item id): a label of a generated CommonsenseQA rationale
    # must name the item it judges
    return [_judgement(rec, as_text(rec.get("kind"), "kind"), rec["label"], extra)
            | {"choices": as_choices(rec.get("choices"))}]


def atomic_judgements(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """ATOMIC-2020 human tuples: every tail (but 'none') is a human-written positive."""
    return [_judgement({"head": rec["head"], "relation": rec["relation"], "tail": t}, "triple", 1, {})
            for t in rec["tails"] if t and t.lower() != "none"]


def with_swapped_negatives(good: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Human positives alone teach a critic nothing: each gets a negative, its head and relation with the tail
    of another head under the same relation (seeded by the triple, so an import is reproducible)."""
    tails: dict[str, list[tuple[str, str]]] = {}
    own: dict[tuple[str, str], set[str]] = {}
    for j in good:
        tails.setdefault(j["relation"], []).append((j["head"], j["tail"]))
        own.setdefault((j["head"], j["relation"]), set()).add(j["tail"].lower())
    out = list(good)
    for j in good:
        pool, mine = tails[j["relation"]], own[(j["head"], j["relation"])]
        h = int(hashlib.sha256(f"{j['head']}\x1f{j['relation']}\x1f{j['tail']}".encode()).hexdigest()[:12], 16)
        for step in range(len(pool)):  # the first tail, from the seeded start, that this head does not have
            head, tail = pool[(h + step) % len(pool)]
            if head != j["head"] and tail.lower() not in mine:
                out.append(j | {"tail": tail, "label": 0, "extra": json.dumps({"negative": "tail of another head"})})
                break
    return out


READERS = {
    "atomic2020": (iter_atomic2020, atomic_judgements),
    "ckbp": (iter_csv, ckbp_judgements),
    "rationale-acceptability": (iter_csv, acceptability_judgements),
    "jsonl": (iter_jsonl, jsonl_judgements),
}


def read_judgements(path: Path, fmt: str, heads: str | None = None) -> tuple[pa.Table, list[Reject]]:
    """A label file's judgements and its rejected rows; with HEADS (`K/N`, store.head_parts), only those of the
    heads (or questions) in that part, an ATOMIC-2020 file's tail swaps drawn from those heads' tails alone."""
    if fmt not in READERS:
        raise SkdError(f"unknown labels format {fmt!r} (expected one of {', '.join(LABEL_FORMATS)})")
    rows, judge = READERS[fmt]
    good, rejects = [], []
    for n, rec, err, raw in rows(path):
        if rec is None:
            rejects.append(Reject(n, err or "unreadable row", raw))
            continue
        try:
            good += [{**j, "row_number": n} for j in judge(rec)]
        except (ValueError, RecursionError) as e:
            rejects.append(Reject(n, str(e), raw))
    if heads:
        good = [j for j in good if in_part(j, heads)]
    if fmt == "atomic2020":
        good = with_swapped_negatives(good)
    return pa.Table.from_pylist(good, schema=SCHEMA), rejects


def default_source(fmt: str, path: str | Path, heads: str | None = None) -> str:
    """The source a file's import makes unless named: FORMAT:FILENAME, and [heads K/N] for a part of its heads."""
    return f"{fmt}:{Path(path).name}" + (f"[heads {heads}]" if heads else "")


def import_labels(store: Store, path: str | Path, fmt: str, source: str | None = None,
                  replace: bool = False, heads: str | None = None) -> LabelResult:
    """Import a label file as one source (default FORMAT:FILENAME, and [heads K/N] with HEADS: only the judgements
    of that part of the heads, store.head_parts). The same bytes (and part) again change nothing.
    A source that already holds other judgements is replaced only with `replace=True`, and a file that
    yields no judgement is an error: an import never deletes judgements it did not read."""
    path = Path(path)
    if not path.is_file():
        raise SkdError(f"no such file: {path}")
    heads = normal_part(heads) if heads else None
    key = file_key(path, fmt, None).replace("file:", "labels:", 1) + (f":heads={heads}" if heads else "")
    source = source or default_source(fmt, path, heads)
    held = store.scalar("SELECT count(*) FROM labels WHERE source = ?", [source])
    if held and _source_key(store, source) == key:
        return _result(store, source, 0, [], skipped=True)
    table, rejects = read_judgements(path, fmt, heads)
    con = store.con
    con.register("_judged", table)
    cleaned = ", ".join(f"{clean_sql(c)} AS {c}" for c in ("kind", *ID_FIELDS))
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _labels AS
        SELECT *, {item_id_sql()} AS item_id, {reject_reason_sql()} AS reason FROM (
            SELECT row_number, {infer_kind_sql(None)} AS kind, {', '.join(ID_FIELDS)}, label, extra, choices
            FROM (SELECT row_number, {cleaned}, label, extra, choices FROM _judged))""")
    con.unregister("_judged")
    bad = con.execute("SELECT row_number, reason FROM _labels WHERE reason IS NOT NULL").fetchall()
    rejects += [Reject(int(n), r) for n, r in bad]
    try:
        good = table.num_rows - len(bad)  # judgements that passed validation (bad ones are in rejects)
        _check_replacement(store, path, source, held, replace, good, rejects)
        return _write_labels(store, path, fmt, source, key, good, rejects, held)
    finally:
        con.execute("DROP TABLE IF EXISTS _labels")


def _source_key(store: Store, source: str) -> str | None:
    """The file key of the import that last wrote `source`."""
    return store.scalar("SELECT json_extract_string(config, '$.key') FROM runs WHERE stage = 'labels' AND "
                        "status = 'ok' AND json_extract_string(config, '$.source') = ? ORDER BY started_at DESC "
                        "LIMIT 1", [source])


def _check_replacement(store: Store, path: Path, source: str, held: int, replace: bool, good: int,
                       rejects: list[Reject]) -> None:
    if good == 0:
        why = f"; first problem, row {rejects[0].row_number}: {rejects[0].reason}" if rejects else ""
        raise SkdError(f"{path}: no judgements read ({len(rejects):,} rows rejected{why}); nothing imported")
    if held and not replace:
        raise SkdError(f"labels source {source!r} already holds {held:,} labels from another file; pass --replace "
                       f"to replace them with {path.name}'s, or --source NAME to import it as a new source")


def _write_labels(store: Store, path: Path, fmt: str, source: str, key: str, rows: int, rejects: list[Reject],
                  held: int) -> LabelResult:
    con = store.con
    cols = ", ".join(("kind", *ID_FIELDS))
    run_id = store.start_run("labels", {"file": str(path.resolve()), "format": fmt, "source": source, "key": key})
    with store.transaction():
        con.execute("DELETE FROM labels WHERE source = ?", [source])
        con.execute(f"""
            INSERT INTO labels (item_id, {cols}, label, source, votes_pos, votes_total, extra)
            SELECT item_id, {', '.join(f'first.{c}' for c in cols.split(', '))},
                   CASE WHEN 2 * pos > total THEN 1 ELSE 0 END, ?, pos, total, first.extra
            FROM (SELECT item_id, arg_min(struct_pack({cols}, extra), row_number) AS first,
                         sum(label)::INTEGER AS pos, count(*)::INTEGER AS total
                  FROM _labels WHERE reason IS NULL GROUP BY item_id)""", [source])
        result = _result(store, source, rows + len(rejects), rejects, replaced=held)
        store.finish_run(run_id, "ok", {k: v for k, v in result.__dict__.items() if k != "rejects"})
    return result


def _result(store: Store, source: str, rows: int, rejects: list[Reject], replaced: int = 0,
            skipped: bool = False) -> LabelResult:
    stats = store.con.execute("""SELECT count(*), coalesce(sum(label), 0),
                                        count(*) FILTER (WHERE votes_pos > 0 AND votes_pos < votes_total),
                                        coalesce(sum(votes_total), 0)
                                 FROM labels WHERE source = ?""", [source]).fetchall()[0]
    return LabelResult(source, rows, int(stats[3]), int(stats[0]), int(stats[1]), int(stats[2]), len(rejects),
                       rejects, replaced=replaced, skipped=skipped)
