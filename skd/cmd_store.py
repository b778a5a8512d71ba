"""Commands over the store itself: init, info, ingest, labels import, query."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from store import FORMATS, KINDS, LABEL_FORMATS, IngestResult, SkdError, Store, import_labels, ingest_file

from .options import Db, Json, Quiet
from .output import (
    dict_table,
    err,
    flatten_nested,
    frame_table,
    out,
    print_json,
    progress_bar,
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
            out.print(f"{file} was already ingested (run {r.run_id}); nothing to do")
            continue
        out.print(f"ingested {r.rows:,} rows from {file}: {r.new_items:,} new items, "
                  f"{r.already_present:,} duplicates of stored or earlier rows, {r.rejected:,} rejected")
        if r.report:
            err.print(f"rejected rows and reasons: {r.report}")
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
    db: Db = None, json: Json = False, quiet: Quiet = False,
) -> None:
    """Import judgements; duplicates of one item are resolved by majority vote (votes kept)."""
    with Store(db) as s, status(f"importing labels from {file.name}", quiet or json):
        r = import_labels(s, file, format.value, source=source)
    if json:
        print_json({k: v for k, v in r.__dict__.items() if k != "rejects"}
                   | {"rejects": [x.__dict__ for x in r.rejects[:100]]})
        return
    out.print(f"labels [bold]{r.source}[/]: {r.items:,} items from {r.judgements:,} judgements "
              f"({r.positive:,} acceptable, {r.conflicts:,} with disagreeing votes), {r.rejected:,} rows rejected")
    for x in r.rejects[:5]:
        err.print(f"  row {x.row_number}: {x.reason}")


def query(
    sql: Annotated[str, typer.Argument(help="A read-only SQL statement over the corpus tables.")],
    format: Annotated[QueryFormat, typer.Option("--format", "-f")] = QueryFormat.table,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file.")] = None,
    db: Db = None,
) -> None:
    """Query the corpus with SQL on a read-only connection."""
    with Store(db, read_only=True) as s:
        df = s.read_query(sql)
    fmt = format.value
    if fmt == "parquet" and out_file is None:
        raise SkdError("--format parquet needs --out FILE")
    if fmt == "table":
        if out_file:
            raise SkdError("--out needs --format csv, jsonl or parquet")
        out.print(frame_table(df))
    elif fmt == "parquet":
        df.write_parquet(out_file)
    elif fmt == "csv":
        text = flatten_nested(df).write_csv()
        out_file.write_text(text) if out_file else print(text, end="")
    else:
        text = df.write_ndjson()
        out_file.write_text(text) if out_file else print(text, end="")
    if out_file:
        err.print(f"wrote {df.height:,} rows to {out_file}")


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(info)
    app.command()(ingest)
    app.command()(query)
    labels_app.command("import")(labels_import)
    app.add_typer(labels_app, name="labels")
