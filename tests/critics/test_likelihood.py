"""The likelihood critic (critics.likelihood): an LM's likelihood of an item's content given its context, batched
and padded exactly as one item at a time would be, trained (calibrated) and used like any critic from the command
line, and on the embedded SmolLM2 telling fluent knowledge from word salad."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from critics import load_critic
from critics.likelihood import context_and_content, load_likelihood
from critics.model import score_rows
from critics.verbalize import verbalize_rows
from skd.wiring import critic_scorer
from store import TEACHER_NLL, Store, import_labels
from tests.conftest import run_skd
from tests.critics.test_label_sources import BAD, GOOD, labels_file, triple

RATIONALES = [{"kind": "rationale", "question": f"Where would you put thing {i}?", "answer": "in a box",
               "rationale": "Boxes hold things." if i % 2 else "A box is where things of that size are usually kept."}
              for i in range(6)]


def one_at_a_time(path, item):
    """The mean NLL of the content's tokens, from one unpadded forward pass."""
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    context, content = context_and_content(item)
    ctx = [tok.bos_token_id] * (tok.bos_token_id is not None) + tok(context, add_special_tokens=False)["input_ids"]
    ids = ctx + tok(content, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
    return float(-np.mean([logp[t - 1, ids[t]].item() for t in range(len(ctx), len(ids))]))


def test_batched_scores_are_those_of_one_item_at_a_time(tiny_lm):
    critic = load_likelihood(str(tiny_lm), torch.float32)
    items = RATIONALES + [triple("PersonX eats", "to be full", None), triple("PersonX reads a book", "bored", None)]
    batched = score_rows(critic, items, batch_size=3)
    expect = np.exp(-np.asarray([one_at_a_time(tiny_lm, it) for it in items]))
    assert np.allclose(batched, expect, rtol=1e-4)
    assert np.allclose(score_rows(critic, items[::-1], batch_size=8), expect[::-1], rtol=1e-4)  # any order


def test_no_content_scores_worst_and_a_long_context_keeps_the_content(tiny_lm):
    critic = load_likelihood(str(tiny_lm), torch.float32)
    item = RATIONALES[0]
    long = item | {"question": "Where would you put it? " * 200}  # past max_length (256 tokens) on its own
    other = long | {"rationale": "Nobody knows where such things go, said at some length."}
    got = score_rows(critic, [long, other, {"kind": "text", "text": ""}])
    assert 0 < got[0] < 1 and got[0] != got[1]  # each explanation is still what is scored, after the question's end
    assert got[2] == 0.0  # nothing to judge: the worst score, not exp(0) = 1


def test_a_likelihood_critic_trains_scores_and_evaluates_from_the_command_line(tmp_path, tiny_lm):
    rows = [triple(f"PersonX does thing {i}", t, lab) for i in range(12) for t, lab in ((GOOD[i % 10], 1),
                                                                                        (BAD[i % 10], 0))]
    db = tmp_path / "c.duckdb"
    with Store(db) as s:
        import_labels(s, labels_file(tmp_path / "labels.jsonl", rows), "jsonl", source="expert")
    p = run_skd("critic", "train", "lik", "--mode", "likelihood", "--base", str(tiny_lm), "--dev-fraction", "0.3",
                "--json", db=db, check=True)
    card = json.loads(p.stdout)
    assert card["mode"] == "likelihood" and card["metrics"]["dev_size"] > 0
    assert not (tmp_path / "c.duckdb.d/critics/lik/model").exists()  # nothing trained, nothing saved but the card
    critic = load_critic(tmp_path / "c.duckdb.d/critics/lik")
    scores = score_rows(critic, rows)
    assert scores.shape == (len(rows),) and ((scores > 0) & (scores < 1)).all()
    ev = json.loads(run_skd("critic", "eval", "lik", "--labels", str(tmp_path / "labels.jsonl"), "-f", "jsonl",
                            "--json", db=db, check=True).stdout)
    assert ev["n"] == len(rows) and ev["auc"] is not None
    good = labels_file(tmp_path / "good.jsonl", [r for r in rows if r["label"] == 1])  # one class: no AUC, still cuts
    ev = json.loads(run_skd("critic", "eval", "lik", "--labels", str(good), "-f", "jsonl", "--json", db=db,
                            check=True).stdout)
    assert ev["n"] == 12 and ev["auc"] is None and ev["positive_rate"] == 1.0 and ev["thresholds"]
    with Store(db, read_only=True) as s:
        scorer, _ = critic_scorer(s.critics.get("lik"), None)  # how a student's outputs are judged
    got = scorer([r | {TEACHER_NLL: 9.0} for r in rows[:4]])  # the NLL a student's output would not have: unread
    assert np.allclose(got, scores[:4])  # the tail given head and relation, as its thresholds were chosen on
    assert not np.allclose(got, critic.score(verbalize_rows(rows[:4])))  # not the whole text without context


def test_smollm2_finds_knowledge_likelier_than_word_salad(smollm2):
    critic = load_likelihood(str(smollm2))
    fluent = [triple("PersonX drinks coffee", "to feel awake", None, "xIntent"),
              triple("PersonX loses their keys", "frustrated", None, "xReact"),
              triple("PersonX goes to the gym", "to get fit", None, "xIntent"),
              triple("a loaf of bread", "in the kitchen of a bakery", None, "AtLocation")]
    salad = [r | {"tail": " ".join(reversed(r["tail"].split())) + " the of"} for r in fluent]
    assert (score_rows(critic, fluent) > score_rows(critic, salad)).all()


@pytest.mark.parametrize("item, context, content", [
    (triple("PersonX eats", "to be full", None, "xIntent"), "PersonX eats. because PersonX wanted", " to be full"),
    ({"kind": "qa", "question": "2+2?", "answer": "4"}, "Question: 2+2?\nAnswer:", " 4"),
    ({"kind": "text", "text": "Water is wet."}, "", "Water is wet."),
])
def test_what_is_judged_against_what(item, context, content):
    assert context_and_content(item) == (context, content)
