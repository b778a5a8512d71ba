"""Judgements people type while reading the corpus (`skd serve`'s annotation page): samples to judge, the
judgements themselves, the labels they make, and how far annotators agree.

Each judgement is one row of `judgements` (item, annotator, accept/reject, or NULL for a skip); an annotator's
latest judgement of an item replaces their earlier one. The items' labels under one source (default
`annotation`) are the majority vote of their annotators, with the votes kept, exactly as `skd labels import`
resolves several judgements of one item, so `skd critic train NAME --source annotation` trains on them.
"""

from __future__ import annotations

import time
from itertools import combinations
from typing import Any, Literal

import pyarrow as pa

from .catalog import _rows
from .db import Store
from .errors import SkdError
from .items import ID_FIELDS

SOURCE = "annotation"
STRATEGIES = ("random", "stratified", "uncertain")
Strategy = Literal["random", "stratified", "uncertain"]
BINS = 5  # score bins of the stratified sample


def sample_key(strategy: str, n: int, seed: int, critic_id: str | None) -> str:
    """A short name of a sample, recorded with each judgement made in it."""
    return f"{strategy}-{n}-{seed}" + (f"-{critic_id}" if critic_id and strategy != "random" else "")


def sample_ids(store: Store, strategy: Strategy, n: int, seed: int = 0, critic_id: str | None = None,
               center: float = 0.5) -> list[str]:
    """N item ids to judge, the same for the same arguments: `random`; `stratified` by the critic's score (equal
    numbers from each of five score bins, so low and high scores are both judged); `uncertain`: the items whose
    score is closest to CENTER (the critic's threshold), where a judgement teaches the critic most."""
    if strategy not in STRATEGIES:
        raise SkdError(f"unknown sample strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy != "random" and not critic_id:
        raise SkdError(f"a {strategy} sample needs a critic that has scored the corpus")
    shuffle = "hash(i.item_id || $seed)"
    params: dict[str, Any] = {"seed": str(seed), "n": n}
    if strategy != "random":
        params["critic"] = critic_id
    if strategy == "random":
        sql = f"SELECT item_id FROM items i ORDER BY {shuffle}, item_id LIMIT $n"
    elif strategy == "uncertain":
        sql = ("SELECT item_id FROM scores i WHERE critic_id = $critic "
               f"ORDER BY abs(score - $center), {shuffle}, item_id LIMIT $n")
        params["center"] = center
    else:
        return _stratified(store, n, params)
    return [r[0] for r in store.con.execute(sql, params).fetchall()]


def _stratified(store: Store, n: int, params: dict[str, Any]) -> list[str]:
    """Equal numbers from each score quintile, taken in turn (one of each bin, then the next of each): the bins
    from the score quantiles and a top-k per bin by the seeded hash, two aggregates instead of a window over
    every score. Heavily tied scores make bins of unequal size (a quantile cut falls inside a tie), so each bin
    offers up to N and the turns go on through the bins that still have items until N are taken."""
    cuts = " + ".join(f"(score >= e[{k}])::INT" for k in range(1, BINS))
    rows = store.con.execute(f"""
        WITH s AS (SELECT item_id, score, hash(item_id || $seed) AS h FROM scores WHERE critic_id = $critic
                   AND score IS NOT NULL),
             q AS (SELECT quantile_disc(score, {[k / BINS for k in range(1, BINS)]}) AS e FROM s)
        SELECT {cuts} AS bin, min_by(item_id, h, $n) FROM s, q GROUP BY bin ORDER BY bin""", params).fetchall()
    longest = max((len(ids) for _, ids in rows), default=0)
    turns = [ids[k] for k in range(longest) for _, ids in rows if k < len(ids)]
    return turns[:n]


def judged(store: Store, annotator: str, item_ids: list[str]) -> dict[str, int | None]:
    """The annotator's judgement of each of the items they judged (None: skipped)."""
    rows = store.con.execute("SELECT item_id, label FROM judgements WHERE annotator = ? AND "
                             "list_contains(?::VARCHAR[], item_id)", [annotator, item_ids]).fetchall()
    return {r[0]: r[1] for r in rows}


def check_annotator(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 64 or any(not (c.isalnum() or c in "-_.@ ") for c in name):
        raise SkdError("annotator name: 1 to 64 letters, digits, spaces or -_.@")
    return name


def record(store: Store, annotator: str, judgements: list[dict[str, Any]], source: str = SOURCE,
           sample: str = "") -> dict[str, int]:
    """Store judgements ({item_id, label: 1, 0 or None for skip, client_id}) in one short transaction and update
    the labels of the items they judge. A judgement whose client_id is stored already is not stored again; one of
    an item the corpus does not hold is refused (counted, nothing else is lost)."""
    annotator = check_annotator(annotator)
    now = int(time.time() * 1000)
    rows = []
    for pos, j in enumerate(judgements):
        label = j.get("label")
        if label not in (0, 1, None):
            raise SkdError(f"judgement of {str(j.get('item_id'))[:40]!r}: label must be 1, 0 or null (skip)")
        rows.append({"item_id": str(j["item_id"]), "label": label, "client_id": str(j.get("client_id") or ""),
                     "pos": pos, "typed_at": int(j.get("typed_at") or now)})
    if not rows:
        return {"saved": 0, "repeated": 0, "unknown": 0, "superseded": 0}
    table = pa.Table.from_pylist(rows, schema=pa.schema([("item_id", pa.string()), ("label", pa.int32()),
                                                          ("client_id", pa.string()), ("pos", pa.int32()),
                                                          ("typed_at", pa.int64())]))
    con = store.con
    con.register("_typed", table)
    try:
        with store.transaction():
            repeated = con.execute("SELECT count(*) FROM _typed WHERE client_id <> '' AND client_id IN "
                                   "(SELECT client_id FROM judgements)").fetchall()[0][0]
            # per item, the batch's last judgement, unless the annotator's stored one was typed later
            con.execute("CREATE OR REPLACE TEMP TABLE _new AS SELECT t.* FROM _typed t SEMI JOIN items USING (item_id) "
                        "WHERE (t.client_id = '' OR t.client_id NOT IN (SELECT client_id FROM judgements WHERE "
                        "client_id IS NOT NULL)) AND NOT EXISTS (SELECT 1 FROM judgements j WHERE j.item_id = "
                        "t.item_id AND j.annotator = $who AND j.typed_at > t.typed_at) "
                        "QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY typed_at DESC, pos DESC) = 1",
                        {"who": annotator})
            unknown = con.execute("SELECT count(*) FROM _typed ANTI JOIN items USING (item_id)").fetchall()[0][0]
            con.execute("DELETE FROM judgements WHERE annotator = ? AND item_id IN (SELECT item_id FROM _new)",
                        [annotator])
            con.execute("INSERT INTO judgements (item_id, annotator, label, client_id, sample, typed_at) "
                        "SELECT item_id, ?, label, nullif(client_id, ''), ?, typed_at FROM _new ORDER BY pos",
                        [annotator, sample])
            saved = con.execute("SELECT count(*) FROM _new").fetchall()[0][0]
            _relabel(store, source)
            con.execute("DROP TABLE _new")
    finally:
        con.unregister("_typed")
    # the rest were older than what the annotator had typed for the item (later in the batch, or stored)
    superseded = len(rows) - int(saved) - int(repeated) - int(unknown)
    return {"saved": int(saved), "repeated": int(repeated), "unknown": int(unknown), "superseded": superseded}


def check_annotation_source(store: Store, source: str) -> None:
    """Judgements typed in the web app make their labels from the typed votes alone: a source a label file was
    imported into would lose the file's votes for every item judged, so it is refused."""
    imported = store.scalar("SELECT count(*) FROM runs WHERE stage = 'labels' AND "
                            "json_extract_string(config, '$.source') = ?", [source])
    if imported:
        raise SkdError(f"labels source {source!r} holds labels imported from a file; judgements typed here would "
                       "replace their votes: choose another --source")


def _relabel(store: Store, source: str) -> None:
    """The labels of the items in `_new`: the majority of their annotators' accept/reject votes (a tie is not
    acceptable, as in `skd labels import`); an item only skipped has no label."""
    cols = ", ".join(("kind", *ID_FIELDS))
    store.con.execute("DELETE FROM labels WHERE source = ? AND item_id IN (SELECT item_id FROM _new)", [source])
    store.con.execute(f"""
        INSERT INTO labels (item_id, {cols}, label, source, votes_pos, votes_total, extra)
        SELECT i.item_id, {', '.join(f'i.{c}' for c in cols.split(', '))},
               CASE WHEN 2 * v.pos > v.total THEN 1 ELSE 0 END, ?, v.pos, v.total,
               json_object('annotators', v.who)
        FROM (SELECT item_id, sum(label)::INTEGER AS pos, count(*)::INTEGER AS total,
                     json_group_object(annotator, label) AS who
              FROM judgements WHERE label IS NOT NULL AND item_id IN (SELECT item_id FROM _new) GROUP BY item_id) v
        JOIN items i USING (item_id)""", [source])


def annotators(store: Store) -> list[dict[str, Any]]:
    """Each annotator's counts: judged, accepted, rejected, skipped, and when they last judged."""
    return _rows(store, "SELECT annotator, count(*) AS judged, count(*) FILTER (label = 1) AS accepted, "
                        "count(*) FILTER (label = 0) AS rejected, count(*) FILTER (label IS NULL) AS skipped, "
                        "max(created_at) AS last FROM judgements GROUP BY annotator ORDER BY annotator")


def agreement(store: Store) -> list[dict[str, Any]]:
    """For each pair of annotators who judged the same items (skips left out): how many, the share on which they
    agree, and Cohen's kappa (agreement beyond what their own accept rates give by chance)."""
    votes: dict[str, dict[str, int]] = {}
    for item_id, who, label in store.con.execute(
            "SELECT item_id, annotator, label FROM judgements WHERE label IS NOT NULL").fetchall():
        votes.setdefault(who, {})[item_id] = label
    out = []
    for a, b in combinations(sorted(votes), 2):
        shared = sorted(set(votes[a]) & set(votes[b]))
        if not shared:
            continue
        x, y = [votes[a][i] for i in shared], [votes[b][i] for i in shared]
        n = len(shared)
        observed = sum(p == q for p, q in zip(x, y, strict=True)) / n
        pa_, pb = sum(x) / n, sum(y) / n
        chance = pa_ * pb + (1 - pa_) * (1 - pb)
        kappa = (observed - chance) / (1 - chance) if chance < 1 else None
        out.append({"a": a, "b": b, "items": n, "agreement": observed, "kappa": kappa})
    return out
