"""Commands over the store itself: init, info, ingest, labels import and agreement, query."""

from __future__ import annotations

import csv
import json as jsonlib
import sys
from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from store import FORMATS, KINDS, LABEL_FORMATS, SkdError, Store
from store.db import default_path
from store.user_sql import QueryResult, run_user_sql

if TYPE_CHECKING:
    from store import IngestResult

from .options import Db, Json, Quiet
from .output import (
    cell,
    dict_table,
    err,
    out,
    print_json,
    progress_bar,
    rows_table,
    run_with_progress,
    status,
)

Format = Enum("Format", {f: f for f in FORMATS}, type=str)
Kind = Enum("Kind", {k: k for k in KINDS}, type=str)
LabelFormat = Enum("LabelFormat", {f.replace("-", "_"): f for f in LABEL_FORMATS}, type=str)
QueryFormat = Enum("QueryFormat", {f: f for f in ("table", "jsonl", "csv", "parquet")}, type=str)
SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
                  ".tsv": "atomic2020"}

labels_app = typer.Typer(help="Human or LLM judgements used to train critics.", no_args_is_help=True)


def init(db: Db = None) -> None:
    """Create a corpus database (or migrate an existing one to this skd's schema)."""
    with Store(db) as s:
        out.print(f"corpus {s.path} ready (schema version {s.schema_version})")


def cost_table(cost: dict[str, Any]) -> Table:
    """Teacher tokens and dollars: per teacher, then what the generation behind each snapshot cost."""
    t = Table(title="generation cost", title_justify="left")
    for col in ("teacher / snapshot", "requests", "prompt tokens", "completion tokens", "cost"):
        t.add_column(col, justify="left" if col.startswith("teacher") else "right")
    rows = [(r["teacher"], r) for r in cost["per_teacher"]] + [(f"snapshot {n}", r) for n, r in
                                                                cost["per_snapshot"].items()]
    for name, r in rows:
        t.add_row(name, f"{r['requests']:,}", f"{r['prompt_tokens']:,}", f"{r['completion_tokens']:,}",
                  "no price" if r.get("cost") is None else f"${r['cost']:,.4f}")
    return t


def info(db: Db = None, json: Json = False) -> None:
    """Schema version and counts per table, per kind, per relation and per domain."""
    with Store(db, read_only=True) as s:
        data = s.info()
    if json:
        print_json(data)
        return
    out.print(f"[bold]{data['path']}[/] schema v{data['schema_version']} (skd {data['skd_version']})")
    out.print(dict_table("rows per table", data["tables"]))
    if data["items_per_kind"]:
        out.print(dict_table("items per kind", data["items_per_kind"]))
    if data["triples_per_relation"]:
        out.print(dict_table("triples per relation", data["triples_per_relation"]))
    if len(data["items_per_domain"]) > 1:
        out.print(dict_table("items per domain", data["items_per_domain"]))
    cost = data["generation_cost"]
    if cost["per_teacher"] or cost["per_snapshot"]:
        out.print(cost_table(cost))
    if data["runs_per_status"]:
        out.print(dict_table("runs per status (interrupted: its process ended before it finished)",
                             data["runs_per_status"]))


def ingest(
    files: Annotated[list[Path], typer.Argument(
        help="Files of items, or folders: every file in them with a suffix of the format, in path order.")],
    format: Annotated[Format | None, typer.Option("--format", "-f", help="Input format \\[default: from the suffix].",
                                                  show_default=False)] = None,
    kind: Annotated[Kind | None, typer.Option(help="Kind of rows that do not say \\[default: inferred].",
                                              show_default=False)] = None,
    strict: Annotated[bool, typer.Option(help="Reject a whole file on its first bad row, and stop there.")] = False,
    db: Db = None, json: Json = False, quiet: Quiet = False,
) -> None:
    """Ingest items from JSONL, CSV, parquet or ATOMIC-2020 TSV; bad rows are reported, good rows kept.
    Each file is its own transaction, and a file already ingested is skipped, so an interrupted run of
    many files is resumed by running it again."""
    inputs = input_files(files, format.value if format else None)
    with Store(db) as s:
        results = ingest_inputs(s, inputs, kind.value if kind else None, strict, quiet or json)
    if json:
        rows = [{"file": str(f), **r.__dict__, "already_present": r.already_present} for (f, _), r in results]
        print_json(rows[0] if len(files) == 1 and files[0].is_file() else rows)
        return
    for (file, _), r in results:
        if r.skipped:
            out.print(escape(f"{file} was already ingested (run {r.run_id}); nothing to do"))
            continue
        out.print(escape(f"ingested {r.rows:,} rows from {file}: {r.new_items:,} new items, "
                         f"{r.already_present:,} duplicates of stored or earlier rows, {r.rejected:,} rejected"))
        if r.report:
            err.print(escape(f"rejected rows and reasons: {r.report}"))
    if len(results) > 1:
        total = {k: sum(getattr(r, k) for _, r in results) for k in ("rows", "new_items", "rejected")}
        out.print(f"{len(results)} files: {total['rows']:,} rows, {total['new_items']:,} new items, "
                  f"{total['rejected']:,} rejected")


def input_files(paths: list[Path], fmt: str | None) -> list[tuple[Path, str]]:
    """(file, format) for each file named, and for each file inside each folder named whose suffix is one
    of `fmt`'s (any known suffix without `fmt`)."""
    suffixes = [x for x, f in SUFFIX_FORMATS.items() if fmt in (None, f)]
    inputs = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise SkdError(f"no {fmt or 'data'} files ({', '.join(suffixes)}) in {path}")
            inputs += [(p, fmt or SUFFIX_FORMATS[p.suffix.lower()]) for p in found]
            continue
        f = fmt or SUFFIX_FORMATS.get(path.suffix.lower())
        if f is None:
            raise SkdError(f"cannot tell the format of {path.name}; pass --format ({', '.join(FORMATS)})")
        if not path.exists():
            raise SkdError(f"no such file: {path}")
        inputs.append((path, f))
    return inputs


def ingest_inputs(s: Store, inputs: list[tuple[Path, str]], kind: str | None, strict: bool,
                  quiet: bool) -> list[tuple[tuple[Path, str], IngestResult]]:
    """Each input in turn, with a spinner for one file and a bar over files for several."""
    from store import ingest_file

    if len(inputs) == 1:
        with status(f"ingesting {inputs[0][0].name}", quiet):
            return [(inputs[0], ingest_file(s, *inputs[0], kind=kind, strict=strict))]
    progress, update = progress_bar("ingest", "files", quiet)

    def run() -> list[tuple[tuple[Path, str], IngestResult]]:
        results = []
        for n, item in enumerate(inputs):
            update(n, len(inputs))
            results.append((item, ingest_file(s, *item, kind=kind, strict=strict)))
        update(len(inputs), len(inputs))
        return results

    return run_with_progress(progress, run)


def labels_import(
    file: Annotated[Path, typer.Argument(help="Label file.")],
    format: Annotated[LabelFormat, typer.Option("--format", "-f", help="Label file format.")],
    source: Annotated[str | None, typer.Option(help="Name of this label source \\[default: FORMAT:FILENAME].",
                                               show_default=False)] = None,
    replace: Annotated[bool, typer.Option(help="Replace the labels this source already holds.")] = False,
    heads: Annotated[str | None, typer.Option(
        help="Only the judgements of part K/N of the heads (or questions), split by a hash of each: e.g. 1/2 for "
             "a critic and `skd eval --reference-heads 2/2` for the other half.", show_default=False)] = None,
    db: Db = None, json: Json = False, quiet: Quiet = False,
) -> None:
    """Import judgements; duplicates of one item are resolved by majority vote (votes kept). Importing the
    same file again changes nothing; a source that holds other judgements is replaced only with --replace."""
    from store import import_labels

    with Store(db) as s, status(f"importing labels from {file.name}", quiet or json):
        r = import_labels(s, file, format.value, source=source, replace=replace, heads=heads)
    if json:
        print_json({k: v for k, v in r.__dict__.items() if k != "rejects"}
                   | {"rejects": [x.__dict__ for x in r.rejects[:100]]})
        return
    if r.skipped:
        out.print(f"labels [bold]{escape(r.source)}[/]: {escape(str(file))} was imported before; {r.items:,} items, "
                  "nothing changed")
        return
    out.print(f"labels [bold]{escape(r.source)}[/]: {r.items:,} items from {r.judgements:,} judgements "
              f"({r.positive:,} acceptable, {r.conflicts:,} with disagreeing votes), {r.rejected:,} rows rejected"
              + (f"; replaced the {r.replaced:,} labels it held" if r.replaced else ""))
    for x in r.rejects[:5]:
        err.print(f"  row {x.row_number}: {x.reason}")


def labels_agreement(
    source: Annotated[list[str] | None, typer.Option(help="Only these label sources \\[default: every source "
                                                          "with votes].", show_default=False)] = None,
    db: Db = None, json: Json = False,
) -> None:
    """How far the annotators of each label source agree, and the ceiling that puts on a critic of its majority
    labels: Fleiss' kappa, how well the other annotators predict a held-out one, and the AUC and AP a critic that
    knew each item's chance of acceptance would reach (a beta-binomial fitted to the vote counts)."""
    from critics.annotators import MIN_ITEMS, annotator_agreement, vote_counts

    with Store(db, read_only=True) as s:
        known = [r[0] for r in s.con.execute("SELECT DISTINCT source FROM labels ORDER BY source").fetchall()]
        missing = [x for x in source or [] if x not in known]
        if missing:
            raise SkdError(f"no labels from source {missing[0]!r} (sources: {', '.join(known) or 'none'})")
        counts = {x: vote_counts(s, x) for x in source or known}
    res = {x: annotator_agreement(*c) for x, c in counts.items() if len(c[0]) >= MIN_ITEMS}
    if not res:
        raise SkdError(f"no label source has {MIN_ITEMS} items with two or more votes; agreement needs repeated "
                       "judgements of an item (one row per annotator in the imported file)")
    if json:  # a source with too few items with votes is named, not left out
        print_json(res | {x: {"items": len(c[0]), "too_few": True} for x, c in counts.items() if x not in res})
        return
    out.print(agreement_table(res))
    for x in sorted(set(counts) - set(res)):
        err.print(f"  {x}: {len(counts[x][0])} items with two or more votes, too few to measure")


def agreement_table(res: dict[str, dict[str, Any]]) -> Table:
    t = Table(title="annotator agreement, and the ceiling on a critic of the majority label", title_justify="left")
    for col in ("source", "items", "votes/item", "acceptable", "unanimous", "Fleiss' kappa",
                "others -> one: AUC", "ceiling AUC", "ceiling AP", "fit distance"):
        t.add_column(col, justify="left" if col == "source" else "right")
    for name, r in res.items():
        t.add_row(escape(name), f"{r['items']:,}", f"{r['annotators_per_item']:g}", f"{r['positive_share']:.0%}",
                  f"{r['unanimous_share']:.0%}", *map(cell, (r["fleiss_kappa"], r["held_out_auc"], r["ceiling_auc"],
                                                               r["ceiling_ap"], r["fit_distance"])))
    return t


def query(
    sql: Annotated[str, typer.Argument(help="A read-only SQL statement over the corpus tables.")],
    format: Annotated[QueryFormat, typer.Option("--format", "-f")] = QueryFormat.table,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file.")] = None,
    db: Db = None,
) -> None:
    """Query the corpus with SQL on a connection that cannot write."""
    fmt = format.value
    if fmt == "parquet" and out_file is None:
        raise SkdError("--format parquet needs --out FILE")
    if fmt == "table" and out_file:
        raise SkdError("--out needs --format csv, jsonl or parquet")
    if out_file is not None and out_file.is_dir():
        raise SkdError(f"--out {out_file} is a folder; name a file")
    if out_file is not None and not out_file.parent.is_dir():
        raise SkdError(f"--out {out_file}: no folder {out_file.parent}")
    result = run_user_sql(db or default_path(), sql, arrow=fmt == "parquet")
    if fmt == "table":
        out.print(rows_table(result.columns, result.types, result.rows))
        return
    try:
        write_result(result, fmt, out_file)
    except OSError as e:
        raise SkdError(f"cannot write {out_file}: {e.strerror}") from None
    if out_file:
        err.print(f"wrote {result.height:,} rows to {out_file}")


def write_result(result: QueryResult, fmt: str, out_file: Path | None) -> None:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(result.arrow, out_file)
        return
    with open(out_file, "w", newline="") if out_file else nullcontext(sys.stdout) as f:
        if fmt == "csv":
            w = csv.writer(f, lineterminator="\n")
            w.writerow(result.columns)
            w.writerows([flat_value(v) for v in row] for row in result.rows)
        else:
            f.writelines(jsonlib.dumps(dict(zip(result.columns, row, strict=True)), default=str) + "\n"
                         for row in result.rows)


def flat_value(v: Any) -> Any:
    """A CSV cell: nested values as JSON text, NULL as empty."""
    return jsonlib.dumps(v, default=str) if isinstance(v, list | dict) else "" if v is None else v


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(info)
    app.command()(ingest)
    app.command()(query)
    labels_app.command("import")(labels_import)
    labels_app.command("agreement")(labels_agreement)
    app.add_typer(labels_app, name="labels")
