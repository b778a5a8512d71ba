"""Embeddings, dedup (exact + semantic), diversity statistics, queries, snapshots, export and Hub push."""

from .dedup import METHODS, SCOPES, DedupResult, dedup
from .embed import EmbedSummary, embed_items, load_vectors

__all__ = ["METHODS", "SCOPES", "DedupResult", "EmbedSummary", "dedup", "embed_items", "load_vectors"]
