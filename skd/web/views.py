"""What the pages show, gathered from the store and shaped for the templates (no HTML here: the templates
escape everything they print)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from store import Store
from store import judgements as jm
from store.browse import Browse, ItemFilter

SQL_ROWS = 1000  # rows of a query the SQL box shows


def fmt(v: Any) -> str:
    """Numbers as people read them in a table: thousands separated, ratios to three or four digits."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def content(row: dict[str, Any]) -> str:
    """An item as one line of text, whichever kind it is."""
    if row.get("head") is not None and row.get("tail") is not None:
        return f"{row['head']}  ·  {row.get('relation') or ''}  ·  {row['tail']}"
    if row.get("question") is not None:
        parts = [row["question"], f"→ {row.get('answer') or ''}"]
        return " ".join(parts + ([f"because {row['rationale']}"] if row.get("rationale") else []))
    return str(row.get("text") or row.get("head") or "")


def pretty(value: Any) -> str:
    """JSON text or a value, indented for a <pre>."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def query(f: ItemFilter, **changes: Any) -> str:
    """The items page's query string for F with CHANGES (page, sort, ...), leaving out empty fields."""
    fields = f.model_dump() | changes
    default = ItemFilter().model_dump()
    kept = {k: v for k, v in fields.items() if v not in ("", None) and (v != default.get(k) or k == "critic")}
    return urlencode(kept)


def snapshot_context(s: Store, name: str) -> dict[str, Any]:
    from corpus.export import store_critic
    from corpus.snapshot import headline
    from train.evaluate import compare

    row = s.snapshots.get(name)
    critic = store_critic(s, row)
    return {"row": row, "headline": headline(row["stats"]), "critic": critic,
            "evals": compare(s, snapshot=name)}


def diff_context(s: Store, d: dict[str, Any]) -> dict[str, Any]:
    """The diff with the sampled added and removed items as rows a person can read: both samples in one read,
    since finding a few ids costs a scan of the items table whatever their number."""
    found = {r["item_id"]: r for r in Browse(s).rows(d["added_ids"] + d["removed_ids"])}
    return d | {"added_rows": [found[i] for i in d["added_ids"] if i in found],
                "removed_rows": [found[i] for i in d["removed_ids"] if i in found]}


def critic_center(critic: dict[str, Any] | None) -> float:
    """Where a critic is least sure: its threshold at the default recall when it has one, else 0.5."""
    from critics.cut import DEFAULT_RECALL

    thresholds = json.loads(critic["thresholds"] or "{}") if critic else {}
    return float(thresholds.get(f"recall@{DEFAULT_RECALL:g}", 0.5))


def annotation_context(s: Store, b: Browse, annotator: str, ctx: dict[str, Any]) -> dict[str, Any]:
    """The sample to judge, what this annotator has judged of it, and the items still to judge."""
    critic = next((c for c in ctx["critics"] if c["critic_id"] == ctx["critic"]), None)
    critic_id = critic["critic_id"] if critic and ctx["strategy"] != "random" else None
    ids = jm.sample_ids(s, ctx["strategy"], ctx["n"], ctx["seed"], critic_id, critic_center(critic))
    done = jm.judged(s, annotator, ids)
    todo = [i for i in ids if i not in done]
    cards = b.rows(todo[:100], ctx["critic"])  # a page holds a hundred; the next page brings the rest
    return {"sample_key": jm.sample_key(ctx["strategy"], ctx["n"], ctx["seed"], critic_id), "size": len(ids),
            "done": len(done), "accepted": sum(v == 1 for v in done.values()),
            "rejected": sum(v == 0 for v in done.values()), "cards": cards}
