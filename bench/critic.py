"""Critic scoring throughput: `skd critic score` (select unscored items, verbalise, score, staging batches,
ingest) against a raw forward pass of the same model over the same texts, in the same run.

    python bench/critic.py [--items 20000] [--mode embedding|finetune]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import polars as pl
import torch
from rich.console import Console
from rich.table import Table

from critics import CriticConfig, load_critic, train_critic
from critics.score import score_items
from critics.verbalize import verbalize_rows
from store import Store, import_labels, ingest_file

VERBS = ["eats", "buys", "finds", "loses", "paints", "fixes", "sells", "writes", "reads", "drives"]
RELS = ["xWant", "xAttr", "xNeed", "xReact", "xEffect", "xIntent", "HinderedBy"]


def corpus(n: int, path: Path) -> None:
    pl.DataFrame({"head": [f"PersonX {VERBS[i % 10]} thing {i // 70}" for i in range(n)],
                  "relation": [RELS[i % 7] for i in range(n)],
                  "tail": [f"to feel {VERBS[(i * 7) % 10]} about it {i}" for i in range(n)]}).write_parquet(path)


def raw_forward(critic, texts: list[str], batch_size: int) -> None:
    """The model alone: the encoder plus the head (embedding), or the classifier (finetune)."""
    if hasattr(critic, "encoder"):
        x = torch.from_numpy(critic.encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True))
        torch.sigmoid(x @ critic.weight + critic.bias)
        return
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = critic.tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                                   max_length=critic.max_length, return_tensors="pt")
            critic.model(**enc)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--mode", choices=["embedding", "finetune"], default="embedding")
    ap.add_argument("--labels", default=str(Path(__file__).resolve().parents[2] / "shared/data/ckbp/ckbp2_dev.csv"))
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="skd-bench-critic-"))
    db = tmp / "c.duckdb"
    corpus(args.items, tmp / "items.parquet")
    with Store(db) as s:
        ingest_file(s, tmp / "items.parquet", "parquet", kind="triple")
        import_labels(s, args.labels, "ckbp")
        train_critic(s.path, "bench", CriticConfig(mode=args.mode, max_steps=10, eval_steps=10), tmp / "critic")
        texts = verbalize_rows(s.query("SELECT * FROM items ORDER BY item_id").to_dicts())
    critic = load_critic(tmp / "critic")
    raw_forward(critic, texts[:512], args.batch_size)  # warm up
    t = time.perf_counter()
    raw_forward(critic, texts, args.batch_size)
    raw = len(texts) / (time.perf_counter() - t)
    t = time.perf_counter()
    stats = score_items(db, "bench", batch_size=args.batch_size)
    ours = stats.scored / (time.perf_counter() - t)
    table = Table(title=f"critic scoring: {len(texts):,} triples, MiniLM {args.mode}, batch {args.batch_size}; "
                        f"{platform.machine()}, {torch.get_num_threads()} threads")
    for col in ("path", "items/s", "ratio", "goal"):
        table.add_column(col, justify="left" if col == "path" else "right")
    table.add_row("raw forward pass (same model, same texts)", f"{raw:,.0f}", "1.00", "")
    table.add_row("skd critic score (select, verbalise, score, store)", f"{ours:,.0f}", f"{ours / raw:.2f}",
                  ">= 0.9")
    Console().print(table)


if __name__ == "__main__":
    main()
