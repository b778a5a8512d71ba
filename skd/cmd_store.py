"""Commands over the store itself: init, info, ingest, labels import, query."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from store import FORMATS, KINDS, LABEL_FORMATS, SkdError, Store, import_labels, ingest_file

from .options import Db, Json, Quiet
from .output import dict_table, err, flatten_nested, frame_table, out, print_json, status

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
    file: Annotated[Path, typer.Argument(help="File of items to ingest.")],
    format: Annotated[Format | None, typer.Option("--format", "-f", help="Input format \\[default: from the suffix].",
                                                  show_default=False)] = None,
    kind: Annotated[Kind | None, typer.Option(help="Kind of rows that do not say \\[default: inferred].",
                                              show_default=False)] = None,
    strict: Annotated[bool, typer.Option(help="Reject the whole file on the first bad row.")] = False,
    db: Db = None, json: Json = False, quiet: Quiet = False,
) -> None:
    """Ingest items from JSONL, CSV, parquet or ATOMIC-2020 TSV; bad rows are reported, good rows kept."""
    fmt = format.value if format else SUFFIX_FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise SkdError(f"cannot tell the format of {file.name}; pass --format ({', '.join(FORMATS)})")
    with Store(db) as s, status(f"ingesting {file.name}", quiet or json):
        r = ingest_file(s, file, fmt, kind=kind.value if kind else None, strict=strict)
    if json:
        print_json({**r.__dict__, "already_present": r.already_present})
    elif r.skipped:
        out.print(f"{file} was already ingested (run {r.run_id}); nothing to do")
    else:
        out.print(f"ingested {r.rows:,} rows from {file}: {r.new_items:,} new items, "
                  f"{r.already_present:,} duplicates of stored or earlier rows, {r.rejected:,} rejected")
        if r.report:
            err.print(f"rejected rows and reasons: {r.report}")


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
