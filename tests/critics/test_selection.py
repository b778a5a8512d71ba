"""Best of N (critics.metrics.selection): the choice among each prompt's outputs, beside the ranking across prompts
that AUC measures, and the prompt key it groups by (store.sibling_key, the Python side of sibling_key_sql)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from critics.metrics import selection
from store import Store, ingest_file, sibling_key
from store.items import sibling_key_sql


def test_the_top_output_of_each_prompt_with_two_or_more():
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.3, 0.7, 0.4, 0.6])
    labels = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    prompts = ["a", "a", "b", "b", "c", None, "d", "d"]  # c has one output and the None one is free text: left out
    got = selection(scores, labels, prompts)
    assert got == {"prompts": 3, "outputs_per_prompt": 2.0, "top": 1 / 3, "random": 1 / 3, "oracle": 2 / 3}
    assert selection(scores[:2], labels[:2], ["a", None]) is None


def test_a_critic_can_rank_prompts_well_and_choose_within_them_badly():
    # each prompt's quality decides most labels (a good AUC across prompts), while within a prompt the score runs
    # against the label: the choice it would make is worse than a pick at random, which AUC alone does not show
    rng = np.random.default_rng(0)
    quality = np.repeat(rng.random(400), 5)
    labels = (rng.random(2000) < quality).astype(int)
    scores = quality - 0.05 * labels
    prompts = np.repeat(np.arange(400), 5).tolist()
    got = selection(scores, labels, prompts)
    assert roc_auc_score(labels, scores) > 0.7 and got["top"] < got["random"] < got["oracle"]
    # a signal within each prompt picks an acceptable output wherever there is one
    assert selection(quality + 0.05 * labels, labels, prompts)["top"] == got["oracle"]


def test_bad_input_is_refused_and_prompts_are_told_apart_by_value():
    assert selection([], [], []) is None
    with pytest.raises(ValueError, match="2 scores, 2 labels, 1 prompts"):
        selection([0.1, 0.2], [0, 1], ["a"])
    with pytest.raises(ValueError, match="NaN"):
        selection([0.1, float("nan")], [0, 1], ["a", "a"])
    # the string "None" is a prompt, None is none: one prompt of two outputs here, not three
    assert selection([0.9, 0.1, 0.2], [0, 1, 1], [None, "None", "None"])["prompts"] == 1
    assert selection([0.9, 0.1, 0.2, 0.3], [0, 1, 1, 0], [1, "1", "1", 1])["prompts"] == 2


def test_the_prompt_key_is_the_one_the_store_groups_siblings_by(tmp_path):
    rows = tmp_path / "items.jsonl"
    rows.write_text("\n".join([
        '{"kind": "triple", "head": "PersonX Eats", "relation": "xWant", "tail": "to rest"}',
        '{"kind": "triple", "head": "personx eats", "relation": "xWant", "tail": "to sleep"}',
        '{"kind": "triple", "head": "PersonX eats", "relation": "xNeed", "tail": "food"}',
        '{"kind": "rationale", "question": "Why Sleep?", "answer": "rest", "rationale": "Bodies need rest."}',
        '{"kind": "qa", "question": "Why sleep?", "answer": "rest"}',
        '{"kind": "text", "text": "free text has no prompt"}']) + "\n")
    with Store(tmp_path / "k.duckdb") as s:
        ingest_file(s, rows, "jsonl")
        cur = s.con.execute(f"SELECT kind, head, relation, question, {sibling_key_sql('i')} AS key FROM items i")
        cols = [d[0] for d in cur.description]
        read = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    keys = [(r["kind"], r.pop("key")) for r in read]
    assert [sibling_key(r) for r in read] == [None if k is None else f"{kind}\0{k}" for kind, k in keys]
    # the two spellings of one head and relation are one prompt; a question asked as a rationale and as a qa two
    assert len({sibling_key(r) for r in read} - {None}) == 4 and [sibling_key(r) for r in read].count(None) == 1
