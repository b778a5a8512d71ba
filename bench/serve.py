"""Web app benchmark: every page of `skd serve` on a corpus of N items (default 1M), measured against the running
server over HTTP (the first view, then the median and p95 of R more; counts, facets and snapshot diffs are cached
until the corpus file changes, so the first view is the uncached cost), beside the same page's main query run on
a raw DuckDB connection that stays open (the floor: what the page costs without opening the corpus, templating or
HTTP).

The corpus: N synthetic triples ingested by skd from parquet, a critic's score for every item, dedup clusters of
ten items each, two snapshots (half and all). Scores, clusters and snapshots are written with plain SQL (a trained
critic or a dedup of 1M items is not what this measures).

    python bench/serve.py [--rows 1000000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/store.py would shadow the store package: import from the project root instead of this folder
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import duckdb
import httpx
from rich.console import Console
from rich.table import Table

from bench.store import make_triples
from store import Store, ingest_file

GOAL_MS = 300


def build(db: Path, rows: int, tmp: Path) -> str:
    """The corpus; returns one item id (for the item page)."""
    parquet = tmp / "triples.parquet"
    make_triples(rows, parquet)
    with Store(db) as s:
        ingest_file(s, parquet, "parquet")
        s.con.execute("INSERT INTO critics (critic_id, name, base_model, mode, thresholds) VALUES "
                      "('critic-bench', 'bench', 'none', 'embedding', '{\"recall@0.8\": 0.4}')")
        s.con.execute("INSERT INTO scores SELECT item_id, 'critic-bench', (hash(item_id) % 1000) / 1000.0, now() "
                      "FROM items")
        s.con.execute("INSERT INTO dedup_clusters SELECT item_id, 'semantic', 0.9, 'global', "
                      "'c' || (row_number() OVER (ORDER BY item_id) // 10)::VARCHAR, "
                      "row_number() OVER (ORDER BY item_id) % 10 = 0, 'bench' FROM items")
        for name, frac in (("half", 2), ("all", 1)):
            s.con.execute("INSERT INTO snapshots (snapshot_id, name, content_hash, recipe, funnel, stats) VALUES "
                          "(?, ?, 'x', '{}', '{}', '{}')", [f"snap-{name}", name])
            s.con.execute(f"INSERT INTO snapshot_items SELECT 'snap-{name}', item_id, 'train' FROM items "
                          f"WHERE hash(item_id) % {frac} = 0")
        return s.scalar("SELECT item_id FROM items ORDER BY item_id LIMIT 1 OFFSET 1000")


def pages(item_id: str) -> dict[str, tuple[str, str]]:
    """page: (path, the page's main query on a raw connection)."""
    score = "FROM items i LEFT JOIN scores sc ON sc.item_id = i.item_id AND sc.critic_id = 'critic-bench'"
    return {
        "overview": ("/", "SELECT relation, count(*) FROM items GROUP BY 1"),
        "items, first page": ("/items", f"SELECT i.*, sc.score {score} ORDER BY i.created_at DESC LIMIT 50"),
        "items, by score": ("/items?sort=score-desc",
                            f"SELECT i.*, sc.score {score} ORDER BY sc.score DESC NULLS LAST LIMIT 50"),
        "items, relation + text": ("/items?relation=xWant&q=coffee",
                                   f"SELECT i.*, sc.score {score} WHERE relation = 'xWant' AND "
                                   "contains(lower(tail), 'coffee') LIMIT 50"),
        "items, score range, page 100": ("/items?min_score=0.2&max_score=0.4&page=100",
                                         f"SELECT i.*, sc.score {score} WHERE sc.score BETWEEN 0.2 AND 0.4 "
                                         "ORDER BY i.created_at DESC LIMIT 50 OFFSET 4950"),
        "items of a snapshot": ("/items?snapshot=snap-half",
                                f"SELECT i.*, sc.score {score} WHERE i.item_id IN (SELECT item_id FROM "
                                "snapshot_items WHERE snapshot_id = 'snap-half') LIMIT 50"),
        "item lineage": (f"/items/{item_id}", f"SELECT * FROM item_sources WHERE item_id = '{item_id}'"),
        "snapshot diff": ("/diff?a=half&b=all", "SELECT count(*) FROM snapshot_items x WHERE snapshot_id = 'snap-all' "
                                                 "AND item_id NOT IN (SELECT item_id FROM snapshot_items WHERE "
                                                 "snapshot_id = 'snap-half')"),
        "annotate, uncertain sample": ("/annotate?annotator=a&strategy=uncertain&critic=critic-bench",
                                       "SELECT item_id FROM scores ORDER BY abs(score - 0.4) LIMIT 50"),
        "annotate, stratified sample": ("/annotate?annotator=a&strategy=stratified&critic=critic-bench",
                                        "SELECT item_id, ntile(5) OVER (ORDER BY score) FROM scores"),
        "SQL box": ("/sql?q=SELECT+relation,+count(*)+FROM+items+GROUP+BY+1",
                    "SELECT relation, count(*) FROM items GROUP BY 1"),
    }


def timed(fn, repeat: int) -> list[float]:
    """Milliseconds of the first call, then of each of REPEAT more."""
    out = []
    repeat += 1
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--port", type=int, default=8799)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="skd-bench-serve-"))
    db = tmp / "c.duckdb"
    t0 = time.perf_counter()
    item_id = build(db, args.rows, tmp)
    with Store(db, read_only=True) as s:
        n = s.scalar("SELECT count(*) FROM items")
    print(f"built {n:,} items in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    proc = subprocess.Popen([sys.executable, "-m", "skd", "serve", "--db", str(db), "--port", str(args.port)],
                            cwd=ROOT, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(200):
            try:
                httpx.get(url + "/snapshots", timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        results = []
        with httpx.Client(base_url=url, timeout=60) as client:
            for name, (path, sql) in pages(item_id).items():
                def get(path=path):
                    r = client.get(path)
                    assert r.status_code == 200, (path, r.status_code, r.text[:300])
                served = timed(get, args.repeat)
                con = duckdb.connect(str(db), read_only=True)
                raw = timed(lambda sql=sql, con=con: con.execute(sql).fetchall(), args.repeat)
                con.close()
                results.append((name, served, raw))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    table = Table(title=f"skd serve on {n:,} items: ms per page over HTTP (median and p95 of {args.repeat}) vs the "
                        f"page's main query on an open raw DuckDB connection; goal < {GOAL_MS} ms",
                  title_justify="left")
    goal = f"first and p95 < {GOAL_MS} ms"
    for col in ("page", "first view", "skd serve p50", "p95", "raw DuckDB query p50", "ratio", goal):
        table.add_column(col, justify="left" if col == "page" else "right")
    for name, (first, *served), (_, *raw) in results:
        p50, p95 = statistics.median(served), statistics.quantiles(served, n=20)[-1]
        r50 = statistics.median(raw)
        table.add_row(name, f"{first:.0f}", f"{p50:.0f}", f"{p95:.0f}", f"{r50:.1f}", f"{p50 / r50:.1f}x",
                      "yes" if max(first, p95) < GOAL_MS else "NO")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
