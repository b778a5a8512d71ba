"""The store's typed verbs: slices are parameters (never pasted SQL), a user's filter fails as one line, the
one item column list matches the table, vectors stream with DuckDB's buffer restored after."""

import numpy as np
import pytest

from store import EMBEDDED_COLUMNS, EXPORTED_COLUMNS, ITEM_COLUMNS, SCORED_COLUMNS, SkdError, Slice, Store


@pytest.fixture
def store(db_path):
    with Store(db_path) as s:
        s.con.execute("INSERT INTO items (item_id, kind, head, relation, tail, extra) VALUES "
                      "('a', 'triple', 'PersonX eats', 'xReact', 'full', NULL), "
                      "('b', 'triple', 'Person X eats', 'xWant', 'to sleep', NULL), "
                      "('c', 'text', NULL, NULL, NULL, '{\"role\": \"event\"}')")
        s.con.execute("UPDATE items SET text = 'PersonX eats' WHERE item_id = 'c'")
        s.con.execute("INSERT INTO embeddings (item_id, model, vector) VALUES ('a', 'm', [1, 0]), ('b', 'm', [0, 1])")
        yield s


def test_the_one_item_column_list_is_the_table_and_the_subsets_come_from_it(store):
    columns = [r[0] for r in store.con.execute("DESCRIBE items").fetchall()]
    assert columns == ["item_id", *ITEM_COLUMNS, "created_at"]
    assert set(SCORED_COLUMNS) <= set(columns) and EMBEDDED_COLUMNS == SCORED_COLUMNS
    assert EXPORTED_COLUMNS == ("item_id", *(c for c in ITEM_COLUMNS if c != "extra"))


def test_a_snapshot_slice_is_a_parameter_so_any_id_works(store):
    odd = "snap-'); DROP TABLE items; --"
    with store.snapshots.create(odd, "odd", ["a", "b"], ["train", "test"]) as draft:
        assert store.analytics.count(draft.members) == 2
        draft.describe("h", {}, {}, {})
    assert store.snapshots.get("odd")["snapshot_id"] == odd
    assert store.analytics.value_counts(Slice(snapshot_id=odd), "relation") == {"xReact": 1, "xWant": 1}
    assert store.scalar("SELECT count(*) FROM items") == 3


def test_a_snapshot_without_its_row_leaves_no_trace(store):
    with pytest.raises(RuntimeError), store.snapshots.create("s1", "s1", ["a"], ["train"]):
        pass
    assert not store.snapshots.exists("s1") and store.scalar("SELECT count(*) FROM snapshot_items") == 0


def test_a_bad_user_filter_is_one_line_naming_the_option(store):
    for call in (lambda: store.analytics.count(Slice(where="nope = 1")),
                 lambda: store.embeddings.missing("m", "nope = 1"),
                 lambda: store.dedup.items("nope = 1", "global", None),
                 lambda: store.embeddings.load("m", Slice(where="nope = 1"))):
        with pytest.raises(SkdError, match=r"^--where: .*nope") as e:
            call()
        assert "\n" not in str(e.value)
    with pytest.raises(SkdError, match="^--stats-where: "):
        store.analytics.count(Slice(where="nope = 1", option="--stats-where"))


def test_vectors_load_by_slice_or_ids_in_item_order_and_the_buffer_is_restored(store):
    limit = store.scalar("SELECT current_setting('memory_limit')")
    x, ids = store.embeddings.load("m", Slice())
    assert ids == ["a", "b"] and np.array_equal(x, np.eye(2, dtype=np.float32))
    x, ids = store.embeddings.load("m", np.asarray(["b"]))
    assert ids == ["b"] and x.tolist() == [[0.0, 1.0]]
    assert store.embeddings.count("m", Slice(where="relation = 'xWant'")) == 1
    assert store.embeddings.load("m", Slice(where="kind = 'text'"))[1] == []
    batches = store.embeddings.iter_vectors("m", Slice(), batch=1)
    next(batches)
    batches.close()  # stopped early: the setting comes back all the same
    assert store.scalar("SELECT current_setting('memory_limit')") == limit
    todo, total = store.embeddings.missing("m", "kind = 'triple' OR kind = 'text'")
    assert (todo["item_id"].to_pylist(), total, todo.column_names) == (["c"], 3, list(EMBEDDED_COLUMNS))


def test_a_nested_transaction_is_part_of_the_outer_one(store):
    with pytest.raises(KeyError), store.transaction():
        with store.transaction():
            store.con.execute("DELETE FROM items")
        raise KeyError("after the inner one")
    assert store.scalar("SELECT count(*) FROM items") == 3


def test_items_select_by_typed_filters(store):
    assert [r["item_id"] for r in store.items.select(item_ids=["b", "a"])] == ["a", "b"]
    assert store.items.select(kind="text", role="event", order="arrival", columns=("text",)) == [
        {"text": "PersonX eats"}]
    with pytest.raises(ValueError):
        store.items.select(columns=("text; DROP TABLE items",))


def test_normalised_heads_and_latest_dedup_setting(store):
    assert store.analytics.distinct_counts(Slice(where="kind = 'triple'")) == (2, 1, 2)  # Person X == PersonX
    assert store.dedup.latest_setting("exact") is None
    import pyarrow as pa

    store.dedup.write("exact", 1.0, "head", pa.table({"item_id": ["a", "b"], "cluster_id": ["a", "a"],
                                                      "is_representative": [True, False]}), "run-1")
    assert store.dedup.latest_setting("exact") == (1.0, "head")
    assert store.dedup.latest_setting("exact", scope="global") is None
    assert sorted(store.dedup.clusters("exact", 1.0, "head")) == [("a", "a"), ("b", "a")]
    assert store.analytics.duplicate_counts(Slice()) == [
        {"method": "exact", "threshold": 1.0, "scope": "head", "n": 2, "duplicates": 1}]


def test_a_comparatives_statistics_read_its_statement_not_its_second_entity(store):
    """A comparative is a text item whose tail is its second entity: its distinct contents and n-gram sample were
    the entities' names, so three different statements about one pair counted as one content."""
    for k, text in enumerate(["a lion is stronger than a cat", "a lion is larger than a cat", "a lion roars louder"]):
        store.con.execute("INSERT INTO items (item_id, kind, head, relation, tail, text) VALUES "
                          "(?, 'text', 'lion', 'comparative', 'cat', ?)", [f"cmp{k}", text])
    comparatives = Slice(where="relation = 'comparative'")
    assert store.analytics.distinct_counts(comparatives) == (3, 1, 3)
    assert sorted(store.analytics.contents(comparatives, 10, 0))[0] == "a lion is larger than a cat"
    assert store.analytics.distinct_counts(Slice(where="kind = 'triple'")) == (2, 1, 2)  # a triple's is its tail
