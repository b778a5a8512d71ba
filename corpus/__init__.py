"""Embeddings, dedup (exact + semantic), diversity statistics, queries, snapshots, export and Hub push."""
