"""The web app's reads and the annotation writes on a real DuckDB file: every sort path of the items page against
a plain-Python answer, judgements (resent, replaced, skipped) and the labels and agreement they make."""

from __future__ import annotations

import json

import pytest

from store import SkdError, Store, ingest_file
from store import judgements as jm
from store.browse import Browse, ItemFilter


@pytest.fixture
def corpus(tmp_path):
    src = tmp_path / "items.jsonl"
    rels = ["xWant", "xAttr", "xNeed"]
    src.write_text("".join(json.dumps({"head": f"PersonX does thing {k}", "relation": rels[k % 3],
                                       "tail": f"tail {k}" + (" coffee" if k % 4 == 0 else "")}) + "\n"
                           for k in range(60)))
    db = tmp_path / "c.duckdb"
    with Store(db) as s:
        ingest_file(s, src, "jsonl")
        # a critic's scores for two thirds of the items (the rest unscored), written as `skd critic score` would
        s.con.execute("INSERT INTO critics (critic_id, name) VALUES ('c1', 'c')")
        s.con.execute("INSERT INTO scores SELECT item_id, 'c1', (hash(item_id) % 997) / 997.0, now() FROM items "
                      "WHERE hash(item_id) % 3 <> 0")
    return db


def expected(s: Store, f: ItemFilter) -> list[str]:
    rows = s.con.execute("SELECT i.item_id, i.relation, i.tail, i.created_at, sc.score FROM items i LEFT JOIN "
                         "scores sc ON sc.item_id = i.item_id AND sc.critic_id = 'c1'").fetchall()
    keep = [r for r in rows if (not f.relation or r[1] == f.relation) and (not f.q or f.q in r[2])
            and (f.min_score is None or (r[4] is not None and r[4] >= f.min_score))]
    if f.sort.startswith("score"):
        keep = [r for r in keep if r[4] is not None]
        keep.sort(key=lambda r: (-r[4] if f.sort == "score-desc" else r[4], r[0]))
    elif f.sort == "id":
        keep.sort(key=lambda r: r[0])
    else:
        keep.sort(key=lambda r: r[0])
        keep.sort(key=lambda r: r[3], reverse=True)
    return [r[0] for r in keep]


@pytest.mark.parametrize("sort", ["newest", "id", "score-desc", "score-asc"])
@pytest.mark.parametrize("filters", [{}, {"relation": "xWant"}, {"q": "coffee"}, {"min_score": 0.4}])
def test_every_sort_and_filter_pages_through_the_right_items(corpus, sort, filters):
    with Store(corpus, read_only=True) as s:
        f = ItemFilter(critic="c1", sort=sort, per_page=7, **filters)
        want = expected(s, f)
        got, total = [], None
        for page in range(1, 20):
            rows, total = Browse(s).items(f.model_copy(update={"page": page}))
            got += [r["item_id"] for r in rows]
        assert total == len(want) and got == want


def test_a_cluster_link_lists_the_cluster_of_its_setting_only(corpus):
    """A representative's id names its cluster under every dedup setting: the item page's link names the setting."""
    with Store(corpus) as s:
        a, b, c = (r[0] for r in s.con.execute("SELECT item_id FROM items ORDER BY item_id LIMIT 3").fetchall())
        s.con.execute("INSERT INTO dedup_clusters (item_id, method, threshold, scope, cluster_id, is_representative) "
                      "VALUES (?, 'semantic', 0.9, 'global', ?, true), (?, 'semantic', 0.9, 'global', ?, false), "
                      "(?, 'semantic', 0.8, 'global', ?, false)", [a, a, b, a, c, a])
        members = [r["item_id"] for r in Browse(s).items(ItemFilter(cluster=f"semantic:0.9:global:{a}", sort="id"))[0]]
        anywhere = [r["item_id"] for r in Browse(s).items(ItemFilter(cluster=a, sort="id"))[0]]
        with pytest.raises(ValueError):
            ItemFilter(page=10**20)  # past what an SQL offset holds: refused, not a 500
    assert members == sorted([a, b]) and anywhere == sorted([a, b, c])


def test_judgements_make_majority_labels_and_agreement(corpus):
    with Store(corpus) as s:
        ids = [r[0] for r in s.con.execute("SELECT item_id FROM items ORDER BY item_id LIMIT 4").fetchall()]
        j = lambda i, label, c: {"item_id": ids[i], "label": label, "client_id": c}  # noqa: E731
        assert jm.record(s, "ann", [j(0, 1, "a0"), j(1, 0, "a1"), j(2, 1, "a2"), j(3, None, "a3")]) == \
            {"saved": 4, "repeated": 0, "unknown": 0, "superseded": 0}
        assert jm.record(s, "bob", [j(0, 1, "b0"), j(1, 1, "b1"), j(2, 0, "b2")])["saved"] == 3
        assert jm.record(s, "ann", [j(0, 1, "a0")]) == {"saved": 0, "repeated": 1, "unknown": 0, "superseded": 0}
        # changed their mind in one batch: the last counts, the first is said to be superseded
        assert jm.record(s, "cy", [j(2, 1, "c2"), j(2, 0, "c2b")])["superseded"] == 1
        labels = dict(s.con.execute("SELECT item_id, (label, votes_pos, votes_total) FROM labels "
                                    "WHERE source = 'annotation'").fetchall())
        assert labels[ids[0]] == (1, 2, 2) and labels[ids[1]] == (0, 1, 2)  # a tie is not acceptable
        assert labels[ids[2]] == (0, 1, 3) and ids[3] not in labels  # skipped only: no label
        who = json.loads(s.scalar("SELECT extra FROM labels WHERE item_id = ?", [ids[2]]))["annotators"]
        assert who == {"ann": 1, "bob": 0, "cy": 0}
        pair = next(a for a in jm.agreement(s) if (a["a"], a["b"]) == ("ann", "bob"))
        assert pair["items"] == 3 and pair["agreement"] == pytest.approx(1 / 3)
        # ann accepts 2/3, bob 2/3: chance agreement 5/9, kappa (1/3 - 5/9) / (4/9) = -0.5
        assert pair["kappa"] == pytest.approx(-0.5)
        with pytest.raises(SkdError, match="label must be"):
            jm.record(s, "ann", [{"item_id": ids[0], "label": 5}])
        with pytest.raises(SkdError, match="annotator name"):
            jm.record(s, "<script>", [j(0, 1, "z")])
        assert s.scalar("SELECT count(*) FROM judgements") == 8  # the refused batches stored nothing


def test_samples_are_seeded_and_cover_the_score_range(corpus):
    with Store(corpus, read_only=True) as s:
        a = jm.sample_ids(s, "stratified", 10, 0, "c1")
        assert a == jm.sample_ids(s, "stratified", 10, 0, "c1") and a != jm.sample_ids(s, "stratified", 10, 1, "c1")
        scores = sorted(s.scalar("SELECT score FROM scores WHERE item_id = ?", [i]) for i in a)
        everything = sorted(r[0] for r in s.con.execute("SELECT score FROM scores").fetchall())
        assert scores[0] <= everything[len(everything) // 5] and scores[-1] >= everything[-len(everything) // 5]
        near = jm.sample_ids(s, "uncertain", 5, 0, "c1", center=0.5)
        gaps = sorted(abs(r[0] - 0.5) for r in s.con.execute("SELECT score FROM scores").fetchall())
        assert sorted(abs(s.scalar("SELECT score FROM scores WHERE item_id = ?", [i]) - 0.5) for i in near) == \
            gaps[:5]
        assert len(set(jm.sample_ids(s, "random", 20, 3))) == 20
        with pytest.raises(SkdError, match="needs a critic"):
            jm.sample_ids(s, "uncertain", 5)


def test_stratified_sample_is_full_when_scores_tie(corpus):
    """Most scores equal: the quantile cuts fall inside the tie and some bins come out nearly empty; the sample
    still has N distinct items, taken in turns from every bin that has some."""
    with Store(corpus) as s:
        s.con.execute("UPDATE scores SET score = 0.5 WHERE hash(item_id) % 5 <> 0")
        scored = s.scalar("SELECT count(*) FROM scores")
        a = jm.sample_ids(s, "stratified", 25, 0, "c1")
        assert len(a) == len(set(a)) == 25
        assert {s.scalar("SELECT score FROM scores WHERE item_id = ?", [i]) for i in a} - {0.5}  # not only the tie
        assert len(jm.sample_ids(s, "stratified", 10 * scored, 0, "c1")) == scored  # no more than there are
