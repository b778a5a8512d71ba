import json
import os
import shutil
import subprocess
import sys

import pytest

from corpus import dedup, embed_items
from store import MINILM, SkdError, Store, ingest_file
from tests.conftest import ROOT, atomic_corpus, kill_when, run_skd

ROWS = [
    ("PersonX misses the bus", "xReact", "frustrated"),
    ("PersonX misses the bus", "xReact", "feels frustrated"),
    ("PersonX misses the bus", "xReact", "very frustrated"),
    ("PersonX misses the bus", "xWant", "to call a taxi"),
    ("PersonX misses the bus", "xWant", "to take a taxi"),
    ("PersonX misses the bus", "xWant", "to go home and sleep"),
    ("PersonX plants a tree", "xIntent", "to help the environment"),
    ("PersonX plants a tree", "xIntent", "to make the garden pretty"),
    ("Person X plants a tree", "xIntent", "To help the environment!"),  # an exact duplicate after normalising
]


@pytest.fixture
def corpus_db(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps({"head": h, "relation": r, "tail": t}) for h, r, t in ROWS) + "\n")
    db = tmp_path / "c.duckdb"
    with Store(db) as s:
        ingest_file(s, path, "jsonl")
    embed_items(db)
    return db


def clusters(s, method, threshold, scope):
    rows = s.query("SELECT i.tail, d.cluster_id, d.is_representative FROM dedup_clusters d JOIN items i USING "
                   "(item_id) WHERE method = ? AND threshold = ? AND scope = ?", [method, threshold, scope])
    by = {}
    for tail, cid, _ in rows.iter_rows():
        by.setdefault(cid, set()).add(tail)
    return sorted(sorted(v) for v in by.values())


def test_exact_dedup_normalises_case_punctuation_articles_and_personx(corpus_db):
    with Store(corpus_db) as s:
        r = dedup(s, "exact", scope="global")
        assert (r.items, r.removed) == (9, 1)
        groups = [g for g in clusters(s, "exact", 1.0, "global") if len(g) > 1]
    assert groups == [["To help the environment!", "to help the environment"]]


def test_exact_dedup_keeps_letters_of_every_script_apart(tmp_path):
    """DuckDB's `\\w` is ASCII only: normalising with it emptied every Cyrillic or CJK text, so all of them were
    one exact duplicate; accents were cut off too ("café" = "cafè")."""
    rows = [("Он ест", "xWant", "спать"), ("Она бежит", "xWant", "пить"), ("彼は食べる", "xWant", "寝る"),
            ("x", "xWant", "café"), ("x", "xWant", "cafè"), ("x", "xWant", "Café!"), ("x", "xWant", "a the  cat"),
            ("x", "xWant", "cat")]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps({"head": h, "relation": r, "tail": t}) for h, r, t in rows) + "\n")
    with Store(tmp_path / "c.duckdb") as s:
        ingest_file(s, path, "jsonl")
        assert dedup(s, "exact", scope="global").removed == 2
        groups = [g for g in clusters(s, "exact", 1.0, "global") if len(g) > 1]
    assert groups == [["Café!", "café"], ["a the  cat", "cat"]]


def test_exact_dedup_tells_apart_one_question_over_other_choices(tmp_path):
    """The exact key left out the choices, which the item id has: the same question and answer over other
    choices were one duplicate, and a snapshot kept one of them."""
    q = {"kind": "qa", "question": "Where do you keep milk?", "answer": "fridge"}
    rows = [q | {"choices": ["fridge", "oven", "shelf"]}, q | {"choices": ["Fridge", "oven", "shelf!"]},
            q | {"choices": ["fridge", "garage", "car"]}]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with Store(tmp_path / "c.duckdb") as s:
        ingest_file(s, path, "jsonl")
        r = dedup(s, "exact", scope="global")
        sizes = sorted(n for (n,) in s.con.execute("SELECT count(*) FROM dedup_clusters GROUP BY cluster_id")
                       .fetchall())
    assert (r.items, r.removed, sizes) == (3, 1, [1, 2])  # case and punctuation of a choice still do not count


def test_incremental_dedup_searches_again_what_another_filter_or_model_clustered(corpus_db):
    """Stored clusters count as done only for a run with the same filter and model: a run over all items after
    runs over two halves compares across the halves, and another model searches everything again."""
    from store.models import MPNET

    halves = ("head = 'PersonX plants a tree'", "head = 'Person X plants a tree'")
    with Store(corpus_db) as s:
        for where in halves:
            assert dedup(s, "semantic", 0.9, "global", where=where).searched > 0
        r = dedup(s, "semantic", 0.9, "global")
        assert r.searched == 9  # every item: none was clustered by a run over all of them
        merged = [g for g in clusters(s, "semantic", 0.9, "global") if "To help the environment!" in g][0]
        assert "to help the environment" in merged  # a pair across the two halves
        assert dedup(s, "semantic", 0.9, "global").searched == 0  # the same run again: nothing new
    embed_items(corpus_db, model=MPNET)
    with Store(corpus_db) as s:
        assert dedup(s, "semantic", 0.9, "global", model=MPNET).searched == 9
        config = s.query("SELECT config FROM runs WHERE stage = 'dedup' ORDER BY started_at DESC LIMIT 1")
        assert json.loads(config["config"][0])["model"] == MPNET


def test_semantic_dedup_collapses_paraphrases_within_scope_and_keeps_best_scored(corpus_db):
    with Store(corpus_db) as s:
        s.con.execute("INSERT INTO critics (critic_id, name) VALUES ('c1', 'judge')")
        s.con.execute("INSERT INTO scores SELECT item_id, 'c1', CASE WHEN tail = 'feels frustrated' THEN 0.9 "
                      "ELSE 0.1 END, current_timestamp FROM items")
        dedup(s, "semantic", 0.8, "head-relation", critic="judge")
        groups = clusters(s, "semantic", 0.8, "head-relation")
        reps = s.query("SELECT i.tail FROM dedup_clusters d JOIN items i USING (item_id) "
                       "WHERE is_representative AND i.tail LIKE '%frustrated%'")["tail"].to_list()
    frustrated = next(g for g in groups if "frustrated" in g)
    assert {"frustrated", "feels frustrated"} <= set(frustrated)
    assert not any("to go home and sleep" in g and len(g) > 1 for g in groups)
    assert not any({"to call a taxi", "to help the environment"} <= set(g) for g in groups)  # other scope
    assert not any({"frustrated", "to call a taxi"} <= set(g) for g in groups)
    assert reps == ["feels frustrated"]  # the critic's best member represents the cluster


def test_incremental_dedup_equals_a_full_rerun(corpus_db, tmp_path):
    with Store(corpus_db) as s:
        first = dedup(s, "semantic", 0.8, "head")
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"head": "PersonX misses the bus", "relation": "xReact", "tail": "annoyed"}) + "\n"
                    + json.dumps({"head": "PersonX bakes bread", "relation": "xNeed", "tail": "to buy flour"}) + "\n")
    with Store(corpus_db) as s:
        ingest_file(s, more, "jsonl")
    assert embed_items(corpus_db).embedded == 2  # only the new items are embedded
    with Store(corpus_db) as s:
        inc = dedup(s, "semantic", 0.8, "head")
        incremental = clusters(s, "semantic", 0.8, "head")
        full = dedup(s, "semantic", 0.8, "head", incremental=False)
        assert clusters(s, "semantic", 0.8, "head") == incremental
    assert inc.searched == 2 and full.searched == 11 and first.items == 9


def test_the_ivf_path_streams_vectors_into_the_index_and_agrees_with_exact_search(corpus_db, monkeypatch):
    import sys

    with Store(corpus_db) as s:
        dedup(s, "semantic", 0.8, "head", incremental=False)
        exact = clusters(s, "semantic", 0.8, "head")
        monkeypatch.setattr(sys.modules["corpus.dedup"], "FLAT_MAX", 2)  # 9 items: IVF, every list probed
        r = dedup(s, "semantic", 0.8, "head", incremental=False)
        assert clusters(s, "semantic", 0.8, "head") == exact and r.items == 9


def test_dedup_needs_embeddings_and_valid_settings(tmp_path):
    db = tmp_path / "c.duckdb"
    with Store(db) as s:
        ingest_file(s, tmp_path.joinpath("x.jsonl").write_text('{"text": "a"}\n') and tmp_path / "x.jsonl", "jsonl")
        with pytest.raises(SkdError, match="no all-minilm-l6-v2 embedding; run `skd embed`"):
            dedup(s, "semantic")
        with pytest.raises(SkdError, match="method must be one of"):
            dedup(s, "fuzzy")
        with pytest.raises(SkdError, match="no critic named"):
            dedup(s, "exact", critic="nope")


@pytest.fixture(scope="module")
def atomic_db(tmp_path_factory):
    """The first 300 (head, relation) lines of ATOMIC-2020: crowd-written tails, some of them paraphrases."""
    return atomic_corpus(tmp_path_factory.mktemp("atomic"), 300)


def test_atomic2020_paraphrases_collapse_and_distinct_tails_do_not(atomic_db):
    embed_items(atomic_db)
    with Store(atomic_db) as s:
        r = dedup(s, "semantic", 0.85, "head-relation")
        groups = s.query("SELECT d.cluster_id, list(i.tail ORDER BY i.tail) AS tails FROM dedup_clusters d "
                         "JOIN items i USING (item_id) GROUP BY 1 HAVING count(*) > 1")["tails"].to_list()
    assert 0 < r.removed < 0.2 * r.items  # crowd tails are mostly distinct; some are rewordings
    merged = {tuple(g) for g in groups}
    assert {("Clothes", "clothing"), ("PersonX broke the phone.", "PersonX has a broken phone.")} <= merged
    # tails that say different things stay apart
    assert not any("recognize the person needs an ambulance" in g for g in merged)


def test_a_kill_during_embedding_resumes(atomic_db, tmp_path):
    db = tmp_path / "k.duckdb"
    shutil.copy(atomic_db, db)
    with Store(db) as s:
        s.con.execute("DELETE FROM embeddings")
        n = s.scalar("SELECT count(*) FROM items")
    proc = subprocess.Popen([sys.executable, "-m", "skd", "embed", "--chunk", "64", "--batch-size", "32", "--quiet"],
                            cwd=ROOT, env={**os.environ, "SKD_DB": str(db)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    kill_when(proc, db, "SELECT count(*) FROM embeddings", 128)
    with Store(db, read_only=True) as s:
        partial = s.scalar("SELECT count(*) FROM embeddings")
    p = run_skd("embed", "--json", db=db, check=True)
    done = json.loads(p.stdout)
    with Store(db, read_only=True) as s:
        total, distinct = s.con.execute("SELECT count(*), count(DISTINCT item_id) FROM embeddings").fetchall()[0]
    assert 0 < partial < n and total == distinct == n and done["embedded"] <= n - partial + 64


def test_ctrl_c_during_embedding_is_an_interrupted_run(atomic_db, tmp_path):
    import signal

    db = tmp_path / "c.duckdb"
    shutil.copy(atomic_db, db)
    with Store(db) as s:
        s.con.execute("DELETE FROM embeddings")
    proc = subprocess.Popen([sys.executable, "-m", "skd", "embed", "--chunk", "64", "--batch-size", "32", "--quiet"],
                            cwd=ROOT, env={**os.environ, "SKD_DB": str(db)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    kill_when(proc, db, "SELECT count(*) FROM embeddings", 128, signum=signal.SIGINT)
    with Store(db, read_only=True) as s:
        latest = s.scalar("SELECT status FROM runs WHERE stage = 'embed' ORDER BY started_at DESC LIMIT 1")
    assert latest == "interrupted"  # the fixture's own embed runs came before


def test_head_tail_scope_dedups_within_an_entity_pair(tmp_path):
    """Comparatives: the same statement for two pairs is two items; duplicates are sought within a pair."""
    rows = [("steel", "styrofoam", "Steel is stronger than styrofoam."),
            ("steel", "styrofoam", "steel is stronger than Styrofoam"),
            ("steel", "paper", "Steel is stronger than styrofoam.")]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"kind": "text", "head": h, "tail": t, "text": x, "relation": "comparative"})
                              for h, t, x in rows) + "\n")
    with Store(tmp_path / "c.duckdb") as s:
        ingest_file(s, path, "jsonl")
    embed_items(tmp_path / "c.duckdb")  # a text item is embedded by its text: all three alike
    with Store(tmp_path / "c.duckdb") as s:
        assert dedup(s, "semantic", 0.9, "head-tail").removed == 1
        assert dedup(s, "semantic", 0.9, "head").removed == 2


def test_no_scope_makes_items_of_two_kinds_duplicates(tmp_path):
    """A question's answer (qa) and its explanation (rationale) share the question, so under `head` a close enough
    pair was one duplicate, and the snapshot lost one kind of the two."""
    q = {"question": "Where do you keep milk cold?", "answer": "the fridge"}
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"kind": "qa", **q}) + "\n" + json.dumps(
        {"kind": "rationale", **q, "rationale": "Milk is kept cold in the fridge."}) + "\n")
    with Store(tmp_path / "c.duckdb") as s:
        ingest_file(s, path, "jsonl")
    embed_items(tmp_path / "c.duckdb")
    with Store(tmp_path / "c.duckdb") as s:
        cosine = s.scalar("SELECT list_cosine_similarity(min(vector), max(vector)) FROM embeddings")
        assert cosine > 0.5  # alike enough to merge at this threshold, had they been compared
        assert [dedup(s, "semantic", 0.5, scope).removed for scope in ("global", "head", "head-relation")] == [0] * 3


def test_partitioned_dedup_equals_one_index_full_and_incremental(atomic_db, tmp_path):
    """Real MiniLM vectors of ATOMIC-2020 tails, global scope (pairs cross heads and partitions): the partitioned
    search finds exactly the clusters of one index, in a full run and in an incremental one, and says so."""
    db = tmp_path / "p.duckdb"
    shutil.copy(atomic_db, db)
    embed_items(db)
    with Store(db) as s:
        one = dedup(s, "semantic", 0.8, "global", incremental=False)
        expected = clusters(s, "semantic", 0.8, "global")
        part = dedup(s, "semantic", 0.8, "global", incremental=False, partitions=12, max_visits=12)
        assert clusters(s, "semantic", 0.8, "global") == expected and part.removed == one.removed > 0
        assert part.partitions == 12 and part.audit["recall"] == 1.0 and part.audit["items"] == min(1000, one.items)
        recorded = json.loads(s.scalar("SELECT config FROM runs WHERE stage = 'dedup' ORDER BY started_at DESC"))
        assert (recorded["partitions"], recorded["max_visits"]) == (12, 12)
        keep = s.con.execute("SELECT item_id FROM items ORDER BY item_id LIMIT 600").fetchall()
        s.con.execute("DELETE FROM dedup_clusters WHERE item_id NOT IN (SELECT unnest(?::VARCHAR[]))",
                      [[k[0] for k in keep]])  # as if the other items arrived after the last dedup
        inc = dedup(s, "semantic", 0.8, "global", partitions=12, max_visits=12)
        assert inc.searched == inc.items - 600 and clusters(s, "semantic", 0.8, "global") == expected
    p = run_skd("dedup", "--method", "semantic", "--threshold", "0.8", "--scope", "global", "--full",
                "--partitions", "12", "--max-visits", "1", db=db, check=True)
    assert "searched in 12 partitions" in p.stdout and "recall" in p.stdout


def test_nothing_pending_loads_no_model_and_a_missing_model_is_one_line(corpus_db, tmp_path):
    db = tmp_path / "m.duckdb"
    shutil.copy(corpus_db, db)
    with Store(db) as s:  # every item already embedded under a model name that cannot be loaded
        s.con.execute("INSERT INTO embeddings (item_id, model, vector) "
                      "SELECT item_id, '/nonexistent/model', vector FROM embeddings")
    assert embed_items(db, model="/nonexistent/model").embedded == 0
    with Store(db) as s:
        s.con.execute("DELETE FROM embeddings WHERE model = '/nonexistent/model'")
    p = run_skd("embed", "--model", "/nonexistent/model", "--quiet", db=db)
    assert p.returncode == 2 and p.stderr.startswith("skd: error: model '/nonexistent/model'")
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_replaced_vectors_are_compared_again_not_seeded_from_old_clusters(corpus_db):
    """Incremental dedup seeds its union-find with the stored clusters of its setting; after `skd embed --replace`
    those were made from vectors that are gone, so none seeds it and every item is searched again."""
    with Store(corpus_db) as s:
        dedup(s, "semantic", 0.8, "global")
        assert len(s.dedup.clusters("semantic", 0.8, "global", model=MINILM, default_model=MINILM)) == 9
    assert embed_items(corpus_db, replace=True).replaced == 9
    with Store(corpus_db) as s:
        assert s.dedup.clusters("semantic", 0.8, "global", model=MINILM, default_model=MINILM) == []
        assert dedup(s, "semantic", 0.8, "global").items == 9
        assert len(s.dedup.clusters("semantic", 0.8, "global", model=MINILM, default_model=MINILM)) == 9
