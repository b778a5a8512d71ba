"""Snapshots, statistics, export and push on a real corpus file, the real MiniLM embedder and a local Hub."""

import json
import re

import datasets
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from corpus import (
    SnapshotRecipe,
    corpus_stats,
    create_snapshot,
    dedup,
    diff_snapshots,
    embed_items,
    export_snapshot,
    snapshot_dataset,
    snapshot_frame,
)
from corpus.stats import distinct_n, vendi_score
from store import SkdError, Slice, Store, ingest_file
from tests.conftest import run_skd
from tests.corpus.hub_server import FakeHub

HEADS = ["PersonX misses the bus", "PersonX plants a tree", "PersonX bakes bread", "PersonX calls PersonY",
         "PersonX loses the keys", "PersonX wins the race", "PersonX paints the fence", "PersonX reads a book"]
TAILS = {"xReact": ["happy", "tired"], "xWant": ["to rest", "to tell a friend"]}


def rows() -> list[dict]:
    out = [{"head": h, "relation": r, "tail": f"{t} {k}" if k else t}
           for k, h in enumerate(HEADS) for r, ts in TAILS.items() for t in ts]
    out.append({"head": "Person X misses the bus", "relation": "xReact", "tail": "sleepy"})  # same head, spelt apart
    return out


@pytest.fixture
def corpus_db(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows()) + "\n")
    db = tmp_path / "c.duckdb"
    with Store(db) as s:
        ingest_file(s, path, "jsonl")
    embed_items(db)
    return db


def snap(s, name, **recipe):
    return create_snapshot(s, name, SnapshotRecipe(**recipe))


def judge_scores(s, score_sql):
    """A critic 'judge' (threshold 0.5 at recall 0.5) and its score of every item, by SQL over the item."""
    s.con.execute("INSERT INTO critics (critic_id, name, thresholds) VALUES ('c1', 'judge', '{\"recall@0.5\": 0.5}')")
    s.con.execute(f"INSERT INTO scores SELECT item_id, 'c1', {score_sql}, current_timestamp FROM items")


def test_same_corpus_and_options_give_the_same_hash(corpus_db):
    with Store(corpus_db) as s:
        a = snap(s, "a", limit=10, seed=3, split={"train": 0.5, "test": 0.5})
        b = snap(s, "b", limit=10, seed=3, split={"train": 0.5, "test": 0.5})
        c = snap(s, "c", limit=10, seed=4, split={"train": 0.5, "test": 0.5})
        assert a["content_hash"] == b["content_hash"] != c["content_hash"]
        assert a["funnel"]["snapshot"] == 10 and a["funnel"]["items"] == 33
        with pytest.raises(SkdError, match="immutable"):
            snap(s, "a")


def test_splits_never_share_a_head_even_spelt_differently(corpus_db):
    with Store(corpus_db) as s:
        snap(s, "s", split={"train": 0.5, "validation": 0.25, "test": 0.25})
        df = snapshot_frame(s, "s")
    heads = df.with_columns(pl.col("head").str.replace("Person X", "PersonX")).group_by("head").agg(
        pl.col("split").n_unique().alias("n"))
    assert heads["n"].max() == 1
    assert set(df["split"]) >= {"train", "test"}


def test_an_event_falls_in_the_split_of_the_triples_it_heads(corpus_db, tmp_path):
    """ATOMIC-10x stores each generated event as a text item without a head; it went by its id, so an event could
    be in test while its triples trained the student."""
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"kind": "text", "text": h.replace("PersonX", "Person X") + ".",
                                          "domain": "atomic10x"}) + "\n" for h in HEADS))
    with Store(corpus_db) as s:
        ingest_file(s, events, "jsonl")
        snap(s, "ev", split={"train": 0.5, "test": 0.5})
        df = snapshot_frame(s, "ev")
    split_of = {h: sp for h, sp in df.filter(pl.col("kind") == "triple").select("head", "split").rows()}
    for text, sp in df.filter(pl.col("kind") == "text").select("text", "split").rows():
        assert sp == split_of[text.rstrip(".").replace("Person X", "PersonX")], text
    assert set(df["split"]) == {"train", "test"}


def test_diff_is_exact(corpus_db):
    with Store(corpus_db) as s:
        snap(s, "react", relations=["xReact"])
        snap(s, "both", relations=["xReact", "xWant"])
        snap(s, "tired", where="tail NOT LIKE 'tired%'", relations=["xReact"])
        d = diff_snapshots(s, "react", "both")
        d2 = diff_snapshots(s, "react", "tired")
    assert (d["added"], d["removed"]) == (16, 0)
    assert (d2["added"], d2["removed"]) == (0, 8)
    assert d["stats"]["items"] == [17, 33]


def test_critic_threshold_dedup_and_balance(corpus_db):
    with Store(corpus_db) as s:
        judge_scores(s, "CASE WHEN tail LIKE 'to%' THEN 0.9 ELSE 0.2 END")
        kept = snap(s, "kept", critic="judge", threshold_at_recall=0.5)
        assert kept["funnel"]["passed_critic"] == 16 and kept["recipe"]["critic_threshold"] == 0.5
        assert set(snapshot_frame(s, "kept")["relation"]) == {"xWant"}
        assert snapshot_frame(s, "kept")["critic_score"].min() == pytest.approx(0.9)
        with pytest.raises(SkdError, match="no threshold at recall 0.8"):
            snap(s, "x", critic="judge", threshold_at_recall=0.8)
        with pytest.raises(SkdError, match="would be empty"):
            snap(s, "y", critic="judge", min_score=0.95)
        dedup(s, "exact", scope="global")
        bal = snap(s, "bal", balance="relation", dedup="exact")
        counts = snapshot_frame(s, "bal")["relation"].value_counts()
        assert counts["count"].to_list() == [16, 16] and bal["recipe"]["dedup_setting"] == [1.0, "global"]


def test_dedup_keeps_the_best_member_that_passed_and_items_it_never_saw(corpus_db, tmp_path):
    """Keeping only the dedup run's representatives lost the whole cluster when the representative failed the
    critic (its duplicate passed), and dropped every item added since the dedup run as if it were a duplicate."""
    twin = tmp_path / "twin.jsonl"
    twin.write_text(json.dumps({"head": HEADS[0], "relation": "xWant", "tail": "To rest!"}) + "\n")
    with Store(corpus_db) as s:
        ingest_file(s, twin, "jsonl")
        dedup(s, "exact", scope="global")  # no critic: the representative is the smaller item id
        pair = s.con.execute("SELECT d.item_id, d.is_representative FROM dedup_clusters d JOIN items i USING "
                             "(item_id) WHERE lower(i.tail) LIKE 'to rest%' AND i.head = ?", [HEADS[0]]).fetchall()
        rep = next(i for i, is_rep in pair if is_rep)
        judge_scores(s, f"CASE WHEN item_id = '{rep}' THEN 0.2 ELSE 0.9 END")  # the representative fails
        one = snap(s, "one", critic="judge", threshold_at_recall=0.5, dedup="exact")
        kept = set(snapshot_frame(s, "one")["item_id"])
        assert len(pair) == 2 and rep not in kept and {i for i, _ in pair} - {rep} <= kept  # its twin stands in
        assert one["funnel"]["snapshot"] == 33 and one["funnel"]["not_deduplicated"] == 0  # one of the two twins
        late = tmp_path / "late.jsonl"
        late.write_text(json.dumps({"head": "PersonX sings", "relation": "xWant", "tail": "to bow"}) + "\n")
        ingest_file(s, late, "jsonl")  # after the dedup run
        s.con.execute("INSERT INTO scores SELECT item_id, 'c1', 0.9, current_timestamp FROM items "
                      "WHERE tail = 'to bow'")
        two = snap(s, "two", critic="judge", threshold_at_recall=0.5, dedup="exact")
        assert "to bow" in set(snapshot_frame(s, "two")["tail"]) and two["funnel"]["not_deduplicated"] == 1
        export_snapshot(s, "two", tmp_path / "two", "hf")
    card = (tmp_path / "two" / "README.md").read_text()
    assert "Kept without deduplication: 1 item(s)" in card and "| not_deduplicated |" not in card


def test_a_relation_of_one_item_keeps_it_and_balance_groups_headless_kinds_apart(corpus_db, tmp_path):
    """The per-relation cut rounded a relation of one item to none (its share under a half), though the cut is
    there to keep every relation's best; `--balance relation` put every item without a relation in one group."""
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps(r) + "\n" for r in [
        {"head": HEADS[1], "relation": "xNeed", "tail": "a shovel"},
        *({"kind": "qa", "question": f"What is {k} plus {k}?", "answer": str(2 * k)} for k in range(3)),
        *({"kind": "text", "text": f"Fact number {k}."} for k in range(5))]))
    with Store(corpus_db) as s:
        ingest_file(s, extra, "jsonl")
        judge_scores(s, "CASE WHEN tail LIKE 'to%' THEN 0.9 ELSE 0.2 END")
        per = snapshot_frame(s, snap(s, "per", critic="judge", threshold_at_recall=0.5, per_relation=True)["name"])
        assert "a shovel" in set(per["tail"])
        bal = snapshot_frame(s, snap(s, "bal", balance="relation")["name"])
    counts = {k: n for k, n in bal.select(pl.coalesce("relation", "kind")).to_series().value_counts().rows()}
    assert counts == {"xReact": 1, "xWant": 1, "xNeed": 1, "qa": 1, "text": 1}  # the smallest group is one item


def test_per_relation_cut_keeps_the_same_share_of_every_relation(corpus_db):
    """A critic that scores one relation low (no labels of it) drops that relation under one threshold; the
    per-relation cut keeps the overall share of each relation instead, its best-scored items."""
    with Store(corpus_db) as s:
        judge_scores(s, "CASE WHEN tail LIKE 'to%' THEN 0.9 WHEN tail LIKE 'happy%' THEN 0.3 ELSE 0.2 END")
        one = snap(s, "one", critic="judge", threshold_at_recall=0.5)
        per = snap(s, "per", critic="judge", threshold_at_recall=0.5, per_relation=True)
        with pytest.raises(SkdError, match="need --critic"):
            snap(s, "none", per_relation=True)
        df = snapshot_frame(s, "per")
    assert one["funnel"]["critic_pass_rate"] == {"xReact": 0.0, "xWant": 1.0}
    # 16 of 33 items pass the threshold: the same share of each relation, rounded (8 of 16, 8 of 17)
    assert per["funnel"]["passed_critic"] == 16 and per["recipe"]["per_relation"] is True
    assert df["relation"].value_counts().sort("relation")["count"].to_list() == [8, 8]
    assert all(t.startswith("happy") for t in df.filter(pl.col("relation") == "xReact")["tail"])
    with Store(corpus_db) as s:
        export_snapshot(s, "per", corpus_db.parent / "per", "hf")
        export_snapshot(s, "one", corpus_db.parent / "one", "hf")
    # the card says what the cut kept: here xReact items scoring 0.3, below the 0.5 threshold
    assert "the same share of each" in (corpus_db.parent / "per" / "README.md").read_text()
    assert "kept items scoring at least 0.5" in (corpus_db.parent / "one" / "README.md").read_text()


def test_stats_match_hand_computed_values(corpus_db):
    with Store(corpus_db) as s:
        # two of the items come from a (pretend) generation run: novelty is measured on them
        s.con.execute("INSERT INTO items (item_id, kind, head, relation, tail) VALUES "
                      "('g1', 'triple', 'PersonX misses the bus', 'xReact', 'Happy!'), "
                      "('g2', 'triple', 'PersonX misses the bus', 'xReact', 'angry')")
        s.con.execute("INSERT INTO item_sources (item_id, request_id, teacher) VALUES ('g1', 'r', 't'), "
                      "('g2', 'r', 't')")
        dedup(s, "exact", scope="global")
        st = corpus_stats(s, Slice(where="relation = 'xReact'"))
    assert st["counts"]["n"] == 19 and st["counts"]["relation"] == {"xReact": 19}
    assert st["uniqueness"]["unique_heads"] == 8  # 'Person X misses' normalises to 'PersonX misses'
    assert st["uniqueness"]["unique_tails"] == 19 - 1  # 'Happy!' and 'happy' are one tail
    assert st["novelty"] == {"n": 2, "seeds": 33, "novel": 1, "rate": 0.5}  # 'angry' is new, 'Happy!' is not
    assert st["duplicates"] == [{"method": "exact", "threshold": 1.0, "scope": "global", "n": 19, "duplicates": 1,
                                 "rate": 1 / 19}]  # "Happy!" is "happy"
    tails = [r["tail"] for r in rows() if r["relation"] == "xReact"] + ["Happy!", "angry"]
    assert st["distinct_n"]["distinct_1"] == pytest.approx(distinct_n(tails)["distinct_1"])
    assert st["lengths"]["mean_words"] == pytest.approx(np.mean([len(t.split()) for t in tails]))
    assert st["embeddings"]["n"] == 17 and st["embeddings"]["pairwise_cosine"]["n"] == 17
    assert 1 < st["embeddings"]["vendi"]["score"] < 17


def test_distinct_n_and_vendi_on_known_inputs():
    assert distinct_n(["a b a", "a b"]) == {"distinct_1": 2 / 5, "distinct_2": 2 / 3, "distinct_3": 1.0}
    assert vendi_score(np.ones((5, 4)) / 2) == pytest.approx(1.0)
    assert vendi_score(np.eye(6)) == pytest.approx(6.0)


def test_export_round_trips_through_datasets_and_the_card_states_the_counts(corpus_db, tmp_path):
    with Store(corpus_db) as s:
        row = snap(s, "s", split={"train": 0.75, "test": 0.25})
        n = row["funnel"]["splits"]
        r = export_snapshot(s, "s", tmp_path / "hf", "hf")
        export_snapshot(s, "s", tmp_path / "pq", "parquet")
        export_snapshot(s, "s", tmp_path / "jl", "jsonl")
        with pytest.raises(SkdError, match="not empty"):
            export_snapshot(s, "s", tmp_path / "hf", "hf")
        ds = snapshot_dataset(s, "s")
    loaded = datasets.load_dataset(str(tmp_path / "hf"))
    assert {k: v.num_rows for k, v in loaded.items()} == n == {k: v.num_rows for k, v in ds.items()}
    assert {"head", "relation", "tail", "item_id", "kind"} <= set(loaded["train"].features)
    assert "question" not in loaded["train"].features  # columns that are null throughout are dropped
    card = (tmp_path / "hf" / "README.md").read_text()
    assert card.startswith("---\n") and f"| snapshot | {sum(n.values())} |" in card and row["content_hash"] in card
    assert f"train: {n['train']}" in card and "configs:" in card
    assert pq.read_table(tmp_path / "pq" / "test.parquet").num_rows == n["test"] == r["splits"]["test"]["rows"]
    assert len((tmp_path / "jl" / "train.jsonl").read_text().splitlines()) == n["train"]


def test_push_uploads_one_commit_to_a_local_hub(corpus_db):
    hub = FakeHub(fail_first=1)  # the first request fails with 503: retried
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_secret_token", "HF_HUB_OFFLINE": "0"}
    try:
        with Store(corpus_db) as s:
            row = snap(s, "s", split={"train": 0.75, "test": 0.25})
        p = run_skd("push", "s", "me/atomic-mini", "--private", "--revision", "v1", "--json", db=corpus_db, env=env)
    finally:
        hub.close()
    assert p.returncode == 0, p.stderr
    repo = hub.repos["me/atomic-mini"]
    assert repo["private"] and repo["type"] == "dataset" and "v1" in repo["branches"]
    [commit] = repo["commits"]
    assert commit["revision"] == "v1" and row["content_hash"][:12] in commit["summary"]
    assert set(commit["files"]) == {"README.md", "snapshot.json", "data/train-00000-of-00001.parquet",
                                    "data/test-00000-of-00001.parquet"}
    assert json.loads(commit["files"]["snapshot.json"])["content_hash"] == row["content_hash"]
    assert "Bearer hf_secret_token" in hub.auth and json.loads(p.stdout)["commit"] == f"{1:040x}"
    assert "hf_secret_token" not in p.stdout + p.stderr


def test_a_second_push_replaces_the_data_and_private_never_publishes(corpus_db):
    hub = FakeHub()
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_secret_token", "HF_HUB_OFFLINE": "0"}
    try:
        with Store(corpus_db) as s:
            snap(s, "two", split={"train": 0.75, "test": 0.25})
            snap(s, "one", relations=["xWant"], split={"train": 1.0})
        for name in ("two", "one"):
            run_skd("push", name, "me/pub", db=corpus_db, env=env, check=True)
        p = run_skd("push", "one", "me/pub", "--private", db=corpus_db, env=env)
    finally:
        hub.close()
    files = hub.repos["me/pub"]["files"]["main"]
    assert sorted(f for f in files if f.startswith("data/")) == ["data/train-00000-of-00001.parquet"]  # no stale test
    assert p.returncode == 2 and "me/pub exists and is public" in p.stderr and len(hub.repos["me/pub"]["commits"]) == 2


def test_push_errors_are_one_line(corpus_db):
    with Store(corpus_db) as s:
        snap(s, "s")
    home = str(corpus_db.parent / "hf-home")  # no stored login
    online = {"HF_HUB_OFFLINE": "0", "HF_HOME": home, "HF_TOKEN": "hf_x"}
    for args, env, message in (
            (["push", "nope", "me/x"], online, "no snapshot named 'nope'"),
            (["push", "s", "me/x"], {"HF_HUB_OFFLINE": "0", "HF_HOME": home}, "no Hugging Face token"),
            (["push", "s", "not a/valid/id"], online, "bad repo id"),
            (["push", "s", "me/x"], online | {"HF_ENDPOINT": "http://127.0.0.1:9"}, "failed after 3 tries")):
        p = run_skd(*args, db=corpus_db, env=env)
        assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and message in p.stderr, p.stderr
        assert "hf_x" not in p.stderr + p.stdout


def test_snapshot_commands(corpus_db, tmp_path):
    p = run_skd("snapshot", "create", "s", "--relations", "xWant", "--split", "train=0.5,test=0.5", "--json",
                db=corpus_db, check=True)
    row = json.loads(p.stdout)
    assert row["funnel"]["snapshot"] == 16 and row["stats"]["counts"]["n"] == 16
    assert "s" in run_skd("snapshot", "list", db=corpus_db, check=True).stdout
    assert row["content_hash"] in run_skd("snapshot", "show", "s", db=corpus_db, check=True).stdout
    run_skd("snapshot", "create", "t", db=corpus_db, check=True)
    assert "+17 added" in run_skd("snapshot", "diff", "s", "t", db=corpus_db, check=True).stdout
    p = run_skd("export", "s", "--out", str(tmp_path / "out"), db=corpus_db, check=True)
    assert (tmp_path / "out" / "README.md").exists()
    p = run_skd("stats", "--snapshot", "s", "--plots", str(tmp_path / "plots"), db=corpus_db, check=True)
    assert "n=16" in p.stdout and (tmp_path / "plots" / "lengths.png").stat().st_size > 1000
    p = run_skd("snapshot", "create", "u", "--split", "train=0.5", db=corpus_db)
    assert p.returncode == 2 and "split" in p.stderr


def test_a_snapshots_export_keeps_the_provenance_and_clusters_it_was_cut_with(tmp_path):
    """A later round writing an item again (another teacher) and a later dedup run rewriting the setting's
    clusters used to change what an old snapshot exported."""
    from store import ShardWriter, ingest_shards

    def shard(tails, teacher):
        n = len(tails)
        return {"items": pl.DataFrame({"kind": ["triple"] * n, "head": ["PersonX bakes"] * n,
                                       "relation": ["xWant"] * n, "tail": tails,
                                       "request_id": [f"{teacher}-{k}" for k in range(n)],
                                       "sample_index": [0] * n, "teacher": [teacher] * n}).to_arrow()}

    db = tmp_path / "c.duckdb"
    with Store(db) as s:
        w = ShardWriter(s.files_dir / "shards")
        w.write(shard(["to eat", "to share"], "teacher-1"))
        ingest_shards(s, w.directory)
        dedup(s, "exact", scope="global")
        create_snapshot(s, "r1", SnapshotRecipe(dedup="exact"))
        before = snapshot_frame(s, "r1").select("tail", "teacher", "cluster_size").sort("tail").rows()
        w.write(shard(["to eat", "To share!"], "student-1"))  # round 2: one item again, one duplicate
        ingest_shards(s, w.directory)
        dedup(s, "exact", scope="global")
        after = snapshot_frame(s, "r1").select("tail", "teacher", "cluster_size").sort("tail").rows()
    assert before == [("to eat", "teacher-1", 1), ("to share", "teacher-1", 1)]
    assert after == before


def test_a_failed_cut_leaves_no_snapshot_and_its_run_says_failed(corpus_db, monkeypatch):
    import corpus.snapshot as snapshot_mod

    def disk_full(*a, **kw):
        raise OSError("No space left on device")

    monkeypatch.setattr(snapshot_mod, "corpus_stats", disk_full)  # a fault inside the cut's transaction
    with Store(corpus_db) as s:
        with pytest.raises(OSError, match="No space"):
            create_snapshot(s, "cut", SnapshotRecipe())
        assert not s.snapshots.exists("cut") and s.scalar("SELECT count(*) FROM snapshot_items") == 0
        run = s.query("SELECT status, error FROM runs WHERE stage = 'snapshot'").row(0)
    assert run == ("failed", "OSError: No space left on device")


def test_per_prompt_keeps_the_best_scored_of_each_prompt(corpus_db, tmp_path):
    """Best of N: a teacher sampled several times a prompt (two tails a head and relation here, three rationales a
    question) gives a snapshot of each prompt's best-scored item; free text has no prompt and is kept."""
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps(r) + "\n" for r in [
        *({"kind": "rationale", "question": f"Why {q}?", "answer": "because", "rationale": f"Reason {q} {k}."}
          for q in ("rain", "snow") for k in range(3)),
        {"kind": "text", "text": "A fact with no prompt."}]))
    with Store(corpus_db) as s:
        ingest_file(s, extra, "jsonl")
        # the second tail of each pair, and a question's last reason, score highest
        judge_scores(s, "CASE WHEN tail LIKE 'tired%' OR tail LIKE 'to tell%' OR rationale LIKE '% 2.' THEN 0.9 "
                        "WHEN text IS NOT NULL THEN 0.1 ELSE 0.5 END")
        one = snap(s, "one", critic="judge", min_score=0.0, per_prompt=1, split={"train": 1.0})
        two = snap(s, "two", critic="judge", min_score=0.0, per_prompt=2, split={"train": 1.0})
        with pytest.raises(SkdError, match="need --critic"):
            snap(s, "none", per_prompt=1)
        df = snapshot_frame(s, "one")
    # 8 heads x 2 relations, the head spelt apart (one tail), 2 questions, 1 text
    assert one["funnel"]["representatives"] == 33 + 6 + 1 and one["funnel"]["best_per_prompt"] == 16 + 1 + 2 + 1
    assert two["funnel"]["best_per_prompt"] == 32 + 1 + 4 + 1 and one["recipe"]["per_prompt"] == 1
    triples = df.filter(pl.col("kind") == "triple").filter(pl.col("head") != "Person X misses the bus")
    assert all(t.startswith(("tired", "to tell")) for t in triples["tail"])
    assert sorted(df.filter(pl.col("kind") == "rationale")["rationale"]) == ["Reason rain 2.", "Reason snow 2."]
    with Store(corpus_db) as s:
        export_snapshot(s, "one", corpus_db.parent / "one", "hf")
    assert "at most 1 of each prompt's items, the best-scored" in (corpus_db.parent / "one" / "README.md").read_text()
    shown = run_skd("snapshot", "create", "cli", "--critic", "judge", "--min-score", "0", "--per-prompt", "1",
                    db=corpus_db, check=True).stdout
    assert re.search(r"funnel: best_per_prompt\W+20\b", shown)  # the funnel row and its count
    bad = run_skd("snapshot", "create", "bad", "--critic", "judge", "--per-prompt", "0", db=corpus_db)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("per_prompt: Input should be greater than 0")
