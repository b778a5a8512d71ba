"""Store benchmark: skd ingest of N synthetic triples from parquet vs a raw DuckDB INSERT ... SELECT FROM
read_parquet of the same file, in the same run; query latency on the ingested corpus; then the same rows
as JSONL and CSV: skd reading them whole with pyarrow, and line by line, vs DuckDB's JSON and CSV readers.

    python bench/store.py [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# bench/store.py would shadow the `store` package: import ours, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import duckdb
import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

import store.ingest as ingest_mod
from store import Store, ingest_file

RELATIONS = ["xAttr", "xReact", "xEffect", "xWant", "xIntent", "xNeed", "HinderedBy"]
VERBS = ["eats", "buys", "finds", "loses", "paints", "fixes", "sells", "writes", "reads", "drives"]
OBJECTS = ["a car", "the house", "a book", "dinner", "a letter", "the bike", "a song", "lunch", "a phone"]


def make_triples(n: int, path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n // 5 + 1, n)
    heads = [f"PersonX {VERBS[i % 10]} {OBJECTS[i % 9]} {i}" for i in ids]
    tails = [f"to feel {w} {j}" for w, j in zip(rng.choice(VERBS, n), rng.integers(0, 1000, n), strict=True)]
    pl.DataFrame({"kind": ["triple"] * n, "head": heads, "relation": rng.choice(RELATIONS, n).tolist(),
                  "tail": tails}).write_parquet(path)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


TRIPLE_COLUMNS = "kind VARCHAR, head VARCHAR, relation VARCHAR, tail VARCHAR"


def raw_insert(db: Path, columns: str, select: str, ordered: bool = True) -> None:
    """A plain DuckDB table filled by one INSERT ... SELECT: the baselines skd ingest is compared with."""
    con = duckdb.connect(str(db))
    con.execute(f"SET preserve_insertion_order = {ordered}")
    con.execute(f"CREATE TABLE items ({columns})")
    con.execute(f"INSERT INTO items {select}")
    con.close()


def raw_ingest(parquet: Path, db: Path, ordered: bool = True) -> None:
    raw_insert(db, TRIPLE_COLUMNS, f"SELECT * FROM read_parquet('{parquet}')", ordered)


def raw_ingest_with_id(parquet: Path, db: Path, ordered: bool = True) -> None:
    """Raw insert plus a content-hash id column: the floor any content-addressed store pays."""
    raw_insert(db, f"item_id VARCHAR, {TRIPLE_COLUMNS}", "SELECT substr(md5(concat_ws(chr(31), kind, head, "
               f"relation, tail)), 1, 16), * FROM read_parquet('{parquet}')", ordered)


def raw_text_ingest(path: Path, db: Path, fmt: str) -> None:
    """DuckDB's own JSON or CSV reader: the raw baseline for a text format."""
    reader = f"read_json('{path}', format = 'newline_delimited')" if fmt == "jsonl" else f"read_csv('{path}')"
    raw_insert(db, TRIPLE_COLUMNS, f"SELECT * FROM {reader}")


def interleaved_medians(variants: dict[str, Callable[[Path], None]], repeat: int, tmp: Path,
                        prefix: str) -> dict[str, float]:
    """Median seconds of each variant, each run into a fresh database; the variants take turns within
    each repeat, so all of them see the same machine state."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(repeat):
        for j, (name, fn) in enumerate(variants.items()):
            times[name].append(timed(lambda fn=fn, db=tmp / f"{prefix}{j}-{i}.duckdb": fn(db)))
    return {name: statistics.median(t) for name, t in times.items()}


def skd_ingest(path: Path, db: Path, fmt: str = "parquet") -> None:
    with Store(db) as s:
        ingest_file(s, path, fmt)


def line_reader_ingest(path: Path, db: Path, fmt: str) -> None:
    """skd ingest with the pyarrow reader turned off: what a file it cannot take costs."""
    fast, ingest_mod.fast_staged = ingest_mod.fast_staged, lambda path, fmt: None
    try:
        skd_ingest(path, db, fmt)
    finally:
        ingest_mod.fast_staged = fast


def text_formats_table(parquet: Path, tmp: Path, repeat: int) -> Table:
    """The same rows as JSONL and as CSV: skd read whole by pyarrow, and line by line, vs DuckDB's reader."""
    rows = pl.read_parquet(parquet)
    table = Table(title=f"the same rows as JSONL and CSV, median of {repeat} (line-level reader: 1 run)")
    for col, justify in (("format", "left"), ("operation", "left"), ("time", "right"), ("vs raw DuckDB", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for fmt in ("jsonl", "csv"):
        path = tmp / f"triples.{fmt}"
        rows.write_ndjson(path) if fmt == "jsonl" else rows.write_csv(path)
        variants = {"raw DuckDB reader, INSERT ... SELECT": lambda db, p=path, f=fmt: raw_text_ingest(p, db, f),
                    "skd ingest (pyarrow reader)": lambda db, p=path, f=fmt: skd_ingest(p, db, f)}
        medians = interleaved_medians(variants, repeat, tmp, fmt)
        medians["skd ingest (line-level reader)"] = timed(
            lambda p=path, f=fmt: line_reader_ingest(p, tmp / f"{f}-lines.duckdb", f))
        raw_t = medians["raw DuckDB reader, INSERT ... SELECT"]
        label = f"{fmt} ({path.stat().st_size / 1e6:.0f} MB)"
        for name, t in medians.items():
            table.add_row(label, name, f"{t:.2f} s", f"{t / raw_t:.2f}x")
            label = ""
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="skd-bench-"))
    parquet = tmp / "triples.parquet"
    make_triples(args.rows, parquet)
    # skd ingests with insertion order off (row order carries no meaning in a corpus); the raw rows show
    # what that setting alone buys.
    variants = {
        "raw INSERT ... SELECT FROM read_parquet": lambda db: raw_ingest(parquet, db),
        "raw, insertion order off": lambda db: raw_ingest(parquet, db, ordered=False),
        "raw + md5 content id column": lambda db: raw_ingest_with_id(parquet, db),
        "raw + md5 id, insertion order off": lambda db: raw_ingest_with_id(parquet, db, ordered=False),
        "skd ingest (validate, id, dedup, provenance)": lambda db: skd_ingest(parquet, db),
    }
    medians = interleaved_medians(variants, args.repeat, tmp, "v")
    raw_t = medians["raw INSERT ... SELECT FROM read_parquet"]
    queries = {  # name: (sql, goal); the issue sets its goal for a filtered count and a group-by
        "filtered count (relation = 'xWant' AND tail LIKE '%eats%')":
            ("SELECT count(*) FROM items WHERE relation = 'xWant' AND tail LIKE '%eats%'", "< 50 ms"),
        "group-by relation: count, mean tail length":
            ("SELECT relation, count(*), avg(length(tail)) FROM items GROUP BY relation", "< 50 ms"),
        "group-by relation, distinct heads (heavier)":
            ("SELECT relation, count(DISTINCT head) FROM items GROUP BY relation", ""),
    }
    with Store(tmp / f"v{len(variants) - 1}-0.duckdb", read_only=True) as s:
        n_items = s.scalar("SELECT count(*) FROM items")
        q_times = {}
        for name, (sql, _) in queries.items():
            s.query(sql)  # warm
            q_times[name] = statistics.median(timed(lambda sql=sql: s.query(sql)) for _ in range(5))
    table = Table(title=f"store: {args.rows:,} triples from parquet ({n_items:,} distinct items), median of "
                        f"{args.repeat}; {platform.processor() or platform.machine()}, duckdb {duckdb.__version__}")
    table.add_column("operation")
    table.add_column("time", justify="right")
    table.add_column("vs raw DuckDB", justify="right")
    table.add_column("goal")
    for name, t in medians.items():
        table.add_row(name, f"{t:.2f} s", f"{t / raw_t:.2f}x", "<= 1.5x" if name.startswith("skd") else "")
    for name, t in q_times.items():
        table.add_row(name, f"{t * 1000:.1f} ms", "", queries[name][1])
    Console().print(table)
    Console().print(text_formats_table(parquet, tmp, args.repeat))


if __name__ == "__main__":
    main()
