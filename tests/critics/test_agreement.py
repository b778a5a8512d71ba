"""Sibling agreement (critics.agreement) on the embedded MiniLM, real DuckDB and the real command line: the store
finds an item's siblings (the other samples for its prompt), a stack weighs how closely an item agrees with them,
and items without siblings are scored without it (and counted)."""

import json

import numpy as np
import pytest

from corpus.embed import embed_items
from critics import CriticConfig, load_critic, train_critic
from critics.agreement import Encoder, agreement
from critics.ensemble import build_ensemble
from critics.model import encoder_prompt, precision, reads_siblings, score_rows
from critics.stack import apply_stack, features, reads, stack_scores
from critics.train import load_labels, split
from store import (
    MINILM,
    SIBLINGS,
    TEACHER_NLL,
    SkdError,
    Store,
    import_labels,
    ingest_file,
    model_prompt,
    resolve_model,
)
from tests.conftest import run_skd
from tests.critics.test_label_sources import labels_file, triple
from tests.critics.test_stack import load_card

# Each phrase is acceptable for some heads and not for others, so no text critic can tell; what tells is that a
# head's two acceptable tails say the same thing and its two unacceptable ones say unrelated things.
PAIRS = [("to eat food", "to eat some food"), ("to drink water", "to drink some water"),
         ("to sleep well", "to get a good sleep"), ("to go home", "to head back home"),
         ("to call a friend", "to phone a friend"), ("to take a nap", "to nap for a while"),
         ("to say thanks", "to thank them"), ("to find help", "to look for help"),
         ("to feel better", "to feel a bit better"), ("to get some rest", "to rest for a while")]


def rows_of_head(i: int) -> list[dict]:
    good, odd = PAIRS[i % 10], (PAIRS[(i + 3) % 10][0], PAIRS[(i + 6) % 10][1])
    nll = np.random.default_rng(i).normal(1.2, 0.3, 4)  # tells nothing
    return [triple(f"PersonX does thing {i}", t, lab) | {"nll": round(float(x), 4)}
            for (t, lab), x in zip([(good[0], 1), (good[1], 1), (odd[0], 0), (odd[1], 0)], nll, strict=True)]


@pytest.fixture(scope="module")
def agreeing(tmp_path_factory):
    d = tmp_path_factory.mktemp("agree")
    db = d / "c.duckdb"
    with Store(db) as s:
        import_labels(s, labels_file(d / "labels.jsonl", [r for i in range(40) for r in rows_of_head(i)]), "jsonl",
                      source="expert")
    train_critic(db, "text", CriticConfig(mode="embedding", dev_fraction=0.3), d / "text")
    return db, d


def test_the_store_finds_an_items_siblings_by_its_prompt(tmp_path):
    items = [triple("PersonX eats", "to be full", None), triple("personx EATS", "to rest", None),
             triple("PersonX eats", "hungry", None, "xAttr"), triple("PersonX runs", "to rest", None),
             {"kind": "rationale", "question": "Why eat?", "answer": "hunger", "rationale": "Food ends hunger."},
             {"kind": "rationale", "question": "Why eat?", "answer": "hunger", "rationale": "One eats when hungry."},
             {"kind": "text", "text": "free text"}]
    with Store(tmp_path / "c.duckdb") as s:
        ingest_file(s, labels_file(tmp_path / "items.jsonl", items), "jsonl")
        import_labels(s, labels_file(tmp_path / "labels.jsonl", [triple("PersonX eats", "to be full", 1),
                                                                  triple("PersonX naps", "to rest", 1),
                                                                  triple("PersonX naps", "to dream", 0)]), "jsonl")
        todo, _ = s.scores.missing("nobody", None, siblings=True)
        labelled = {r["tail"]: r[SIBLINGS] for r in s.labels.select(siblings=True).to_dicts()}
    got = {(r["head"], r["relation"], r.get("tail") or r.get("rationale") or r["text"]): r[SIBLINGS]
           for r in todo.to_pylist()}
    assert got["PersonX eats", "xWant", "to be full"] == ["to rest"]  # same head (any case) and relation
    assert got["personx EATS", "xWant", "to rest"] == ["to be full"]  # not itself
    # a label of an item sees the item's siblings (as scoring will); an imported one, the other labels of its prompt
    assert labelled == {"to be full": ["to rest"], "to rest": ["to dream"], "to dream": ["to rest"]}
    assert got["PersonX eats", "xAttr", "hungry"] is None  # another relation is another prompt
    assert got["PersonX runs", "xWant", "to rest"] is None  # another head too
    assert got[None, None, "Food ends hunger."] == ["One eats when hungry."]
    assert got[None, None, "free text"] is None


def test_agreement_is_the_closest_sibling_and_encodes_each_text_once():
    calls = []
    enc = Encoder("all-MiniLM-L6-v2")

    def encode(texts):
        calls.append(list(texts))
        return enc.encode(texts)
    rows = [{"kind": "triple", "tail": "to eat food", SIBLINGS: ["to eat some food", "a loud spoon"]},
            {"kind": "triple", "tail": "to eat some food", SIBLINGS: ["to eat food", "a loud spoon"]},
            {"kind": "triple", "tail": "a loud spoon", SIBLINGS: ["to eat food", "to eat some food"]},
            {"kind": "triple", "tail": "alone", SIBLINGS: None}]
    got = agreement(rows, encode)
    assert len(calls) == 1 and sorted(calls[0]) == sorted({"to eat food", "to eat some food", "a loud spoon"})
    assert got[0] == pytest.approx(got[1], abs=1e-4) and got[0] > got[2] + 0.3 and np.isnan(got[3])


def test_a_stack_with_agreement_ranks_what_no_text_critic_can(agreeing):
    db, _ = agreeing
    card = json.loads(run_skd("critic", "ensemble", "ag", "text", "--agreement", "--encoder", "all-MiniLM-L6-v2",
                              "--json", db=db, check=True).stdout)
    assert reads_siblings(card) and card["config"]["agreement"] and card["config"]["encoder"] == "all-MiniLM-L6-v2"
    assert card["stack"]["with"]["agreement"]["weights"][-1] > 0  # agreeing more: better
    text, stacked = card["metrics"]["members_dev_auc"]["text"], card["metrics"]["dev"]["auc"]
    assert text < 0.75 and stacked > max(0.85, text + 0.2), (text, stacked)
    assert card["metrics"]["dev_with_agreement"] == card["metrics"]["dev_size"]


def test_a_stack_records_the_precision_its_encoder_ran_at(agreeing, tmp_path):
    """The card took the first member's precision, and scoring ran the encoder at that one: a member trained
    where bfloat16 is (or is not) native gave a stack fitted on one precision's agreement and scored on another's."""
    db, _ = agreeing
    other = "float32" if precision() == "bfloat16" else "bfloat16"
    train_critic(db, "elsewhere", CriticConfig(mode="embedding", dev_fraction=0.3), tmp_path / "elsewhere")
    card_file = tmp_path / "elsewhere" / "critic.json"
    card_file.write_text(json.dumps(json.loads(card_file.read_text()) | {"precision": other}))  # trained there
    card = build_ensemble(db, "ag-here", ["elsewhere"], tmp_path / "ag-here", agreement=True, encoder=MINILM)
    assert card["precision"] == precision() != other


def test_each_item_gets_the_fit_of_the_signals_it_has(agreeing):
    db, d = agreeing
    run_skd("critic", "ensemble", "both", "text", "--teacher-nll", "--agreement", "--encoder", "all-MiniLM-L6-v2",
            db=db, check=True)
    fits = load_card(db, "both")["stack"]
    assert sorted(fits["with"]) == ["agreement", "nll", "nll+agreement"]
    with Store(db, read_only=True) as s:
        _, dev = split(load_labels(s, None, teacher_nll=True, siblings=True), 0.3, 0)
        critic = load_critic(s.critics.get("both")["path"])
    critic.score(["PersonX eats. as a result, PersonX wants to rest"])
    assert not critic.encoder.loaded  # bare texts have no siblings: the encoder's weights are never read
    rows, member = dev.to_dicts(), load_critic(d / "text")
    m = score_rows(member, rows)
    agree = Encoder("all-MiniLM-L6-v2").agreement(rows)
    nll = np.asarray([r[TEACHER_NLL] for r in rows])
    assert np.allclose(score_rows(critic, rows), apply_stack(features([m], nll, agree), fits["with"]["nll+agreement"]))
    no_nll = [r | {TEACHER_NLL: None} for r in rows]
    assert np.allclose(score_rows(critic, no_nll), apply_stack(features([m], agree), fits["with"]["agreement"]))
    alone = [r | {TEACHER_NLL: None, SIBLINGS: None} for r in rows]
    assert np.allclose(score_rows(critic, alone), apply_stack(features([m]), fits["members"]))


def test_scoring_fetches_siblings_and_counts_items_without(agreeing, tmp_path):
    db, _ = agreeing
    run_skd("critic", "ensemble", "ags", "text", "--agreement", "--encoder", "all-MiniLM-L6-v2", db=db, check=True)
    new = [triple("PersonX cooks", t, None) for t in ("to eat food", "to eat some food", "to say thanks")]
    with Store(db) as s:
        ingest_file(s, labels_file(tmp_path / "items.jsonl", new + [triple("PersonX sings", "to rest", None)]),
                    "jsonl")
    p = run_skd("critic", "score", "ags", "--json", db=db, check=True)
    assert json.loads(p.stdout)["without_siblings"] == 1
    assert "reads sibling agreement, and 1 items have no sibling" in p.stderr
    with Store(db, read_only=True) as s:
        row = s.critics.get("ags")
        stored = dict(s.con.execute("SELECT tail, score FROM scores JOIN items USING (item_id) WHERE critic_id = ?",
                                    [row["critic_id"]]).fetchall())
        todo, _ = s.scores.missing("nobody", None, siblings=True)
    rows = [r for r in todo.to_pylist() if r["head"] == "PersonX cooks"]
    assert np.allclose([stored[r["tail"]] for r in rows], score_rows(load_critic(row["path"]), rows), atol=1e-6)
    assert min(stored["to eat food"], stored["to eat some food"]) > stored["to say thanks"]  # the odd one out last


def test_agreement_that_cannot_be_fitted_is_one_line(tmp_path):
    rows = [triple(f"PersonX does thing {i}", t, lab) for i in range(16) for t, lab in (("to eat food", 1),)] + \
        [triple(f"PersonX does other {i}", "a loud spoon", 0) for i in range(16)]
    db = tmp_path / "c.duckdb"
    with Store(db) as s:  # one tail per head and relation: nobody has a sibling
        import_labels(s, labels_file(tmp_path / "labels.jsonl", rows), "jsonl", source="expert")
    train_critic(db, "plain", CriticConfig(mode="embedding", dev_fraction=0.3), tmp_path / "plain")
    for args, says in ((["lone", "plain", "--agreement", "--encoder", "all-MiniLM-L6-v2"],
                        "only 0 dev labels carry sibling agreement"),
                       (["nomodel", "plain", "--agreement", "--encoder", "./no/such/encoder"],
                        "neither an embedded default"),
                       (["nosource", "plain", "--support", "nosuch", "--encoder", "all-MiniLM-L6-v2"],
                        "label source 'nosuch' holds no positive labels")):
        p = run_skd("critic", "ensemble", *args, db=db)
        assert p.returncode != 0 and says in p.stderr and "Traceback" not in p.stderr, p.stderr
    with Store(db, read_only=True) as s:
        assert s.critics.names() == ["plain"]


def test_a_stack_saved_before_agreement_still_reads_its_nll_fit():
    """Cards written before agreement kept their one NLL fit as `with_nll`; they score as they did."""
    legacy = {"members": {"weights": [1.0], "bias": 0.0}, "with_nll": {"weights": [1.0, -2.0], "bias": 0.5}}
    member, nll = np.asarray([0.2, 0.7, 0.9]), np.asarray([1.0, np.nan, 0.3])
    got = stack_scores([member], {"nll": nll, "agreement": np.asarray([0.9, 0.9, 0.9])}, legacy)
    assert reads(legacy, "nll") and not reads(legacy, "agreement")
    assert got[1] == pytest.approx(apply_stack(features([member[1:2]]), legacy["members"])[0])
    assert got[[0, 2]] == pytest.approx(apply_stack(features([member[[0, 2]]], nll[[0, 2]]), legacy["with_nll"]))


def with_prompts(folder, prompts: dict[str, str]):
    """FOLDER's sentence-transformers config with PROMPTS per task (as EmbeddingGemma defines them)."""
    config = folder / "config_sentence_transformers.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"prompts": prompts}))
    return folder


def minilm_copy(folder):
    """MiniLM copied to FOLDER (no prompts yet), so a test can change its config."""
    import shutil

    return shutil.copytree(resolve_model(MINILM), folder)


def prompted_minilm(tmp_path):
    """MiniLM copied to a folder with an "STS" and a "Classification" prompt."""
    return with_prompts(minilm_copy(tmp_path / "prompted"), {"STS": "similar: ", "Classification": "classify: "})


def test_an_encoder_with_prompts_compares_under_its_similarity_prompt(tmp_path):
    """EmbeddingGemma defines prompts per task; agreement, support and dedup compare texts under its "STS" prompt,
    an embedding critic reads them under "Classification". MiniLM has none: its vectors are as before."""
    import torch
    from sentence_transformers import SentenceTransformer

    from corpus.embed import encode_texts
    from critics.model import EmbeddingCritic

    folder = prompted_minilm(tmp_path)
    plain = SentenceTransformer(resolve_model(MINILM), device="cpu")
    text = "A dog chases the ball across the park."

    def vec(t):
        return plain.encode([t], normalize_embeddings=True)[0]

    prompted = Encoder(str(folder), dtype=plain.dtype)
    assert np.allclose(prompted.encode([text])[0], vec("similar: " + text), atol=1e-5)
    assert not np.allclose(prompted.encode([text])[0], vec(text), atol=1e-3)
    assert np.allclose(encode_texts(prompted.encoder, [text])[0], vec("similar: " + text), atol=1e-5)
    critic = EmbeddingCritic(prompted.encoder, torch.zeros(1), torch.zeros(1),
                             prompt=encoder_prompt(prompted.encoder, "Classification"))
    assert np.allclose(critic.embed([text])[0], vec("classify: " + text), atol=1e-5)
    assert np.allclose(Encoder(MINILM, dtype=plain.dtype).encode([text])[0], vec(text), atol=1e-5)


def test_an_embedding_critic_scores_under_the_prompt_its_card_recorded(tmp_path):
    """The card records the prompt the head was trained under; the saved critic reads texts under it even when its
    encoder folder's prompts change afterwards. A card from before the record scores under the folder's own. An
    embed run records the prompt its vectors were made under."""
    folder = prompted_minilm(tmp_path)
    db = tmp_path / "c.duckdb"
    with Store(db) as s:
        import_labels(s, labels_file(tmp_path / "labels.jsonl", [r for i in range(12) for r in rows_of_head(i)]),
                      "jsonl")
        ingest_file(s, labels_file(tmp_path / "items.jsonl", rows_of_head(0)), "jsonl")
    embed_items(db, str(folder))
    with Store(db, read_only=True) as s:  # the embed run records the prompt its vectors were made under
        assert json.loads(s.scalar("SELECT config FROM runs WHERE stage = 'embed'"))["prompt"] == "similar: "
    assert model_prompt(MINILM, "STS") is None and model_prompt("./no/such", "STS") is None
    card = train_critic(db, "prompted", CriticConfig(mode="embedding", base=str(folder), dev_fraction=0.3),
                        tmp_path / "critic")
    assert card["encoder_prompt"] == "classify: "
    with_prompts(tmp_path / "critic" / "encoder", {"Classification": "other: "})
    text = "A dog chases the ball across the park."
    critic = load_critic(tmp_path / "critic")

    def under(prompt):
        return critic.encoder.encode([prompt + text], normalize_embeddings=True)[0]

    assert critic.prompt == "classify: " and np.allclose(critic.embed([text])[0], under("classify: "), atol=1e-6)
    assert not np.allclose(under("classify: "), under("other: "), atol=1e-3)
    old = tmp_path / "critic" / "critic.json"
    old.write_text(json.dumps({k: v for k, v in card.items() if k != "encoder_prompt"}))
    assert load_critic(tmp_path / "critic").prompt == "other: "


def test_a_stack_compares_under_the_prompt_its_card_recorded(agreeing, tmp_path):
    """A stack's fit read cosines made under its encoder's "STS" prompt; the card records it, and the saved stack
    compares siblings under it even when the encoder folder's prompts change (a card from before: the folder's)."""
    db, _ = agreeing
    folder = prompted_minilm(tmp_path)
    card = build_ensemble(db, "ag-prompted", ["text"], tmp_path / "stack", agreement=True, encoder=str(folder))
    assert card["encoder_prompt"] == "similar: "
    with_prompts(folder, {"STS": "other: "})
    stack, text = load_critic(tmp_path / "stack"), "A dog chases the ball across the park."

    def under(prompt):
        return stack.encoder.encoder.encode([prompt + text], normalize_embeddings=True)[0]

    assert stack.encoder.prompt == "similar: " and np.allclose(stack.encoder.encode([text])[0], under("similar: "),
                                                               atol=1e-6)
    assert not np.allclose(under("similar: "), under("other: "), atol=1e-3)
    (tmp_path / "stack" / "critic.json").write_text(json.dumps({k: v for k, v in card.items()
                                                                if k != "encoder_prompt"}))
    assert load_critic(tmp_path / "stack").encoder.prompt == "other: "
    import pickle  # an Encoder sent to another process still reads its folder's prompt when it was given none

    assert pickle.loads(pickle.dumps(Encoder(str(folder)))).prompt == "other: "


def test_embedding_under_a_changed_prompt_is_refused_until_replaced(tmp_path):
    """Vectors are stored by model name: once a model folder's "STS" prompt changes, new vectors would not compare
    with the stored ones. `skd embed` says so in one line and stores nothing; `--replace` embeds every item again."""
    folder, db = prompted_minilm(tmp_path), tmp_path / "c.duckdb"
    with Store(db) as s:
        ingest_file(s, labels_file(tmp_path / "items.jsonl", [r for i in range(3) for r in rows_of_head(i)]), "jsonl")
    first = embed_items(db, str(folder))
    with_prompts(folder, {"STS": "alike: "})
    with Store(db, read_only=True) as s:
        tails = dict(s.con.execute("SELECT item_id, tail FROM items").fetchall())
        before, ids = s.embeddings.load(str(folder), list(tails))
    p = run_skd("embed", "--model", str(folder), db=db)
    assert p.returncode != 0 and "made under the prompt 'similar: '" in p.stderr and "--replace" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    with Store(db, read_only=True) as s:
        kept, same_ids = s.embeddings.load(str(folder), ids)
        assert same_ids == ids and np.array_equal(kept, before)  # nothing lost, nothing added
    summary = json.loads(run_skd("embed", "--model", str(folder), "--replace", "--json", db=db, check=True).stdout)
    assert summary["replaced"] == first.embedded == summary["embedded"] == len(ids) > 0
    from sentence_transformers import SentenceTransformer

    plain = SentenceTransformer(str(folder), device="cpu")
    with Store(db, read_only=True) as s:
        now, _ = s.embeddings.load(str(folder), ids)

    def cosines(prompt):
        return np.sum(now * plain.encode([prompt + tails[i] for i in ids], normalize_embeddings=True), axis=1)

    assert cosines("alike: ").min() > 0.99 and (cosines("alike: ") > cosines("similar: ")).all()  # bfloat16 here
    assert embed_items(db, str(folder)).embedded == 0  # the same prompt again: nothing to do, no refusal
    bare = minilm_copy(tmp_path / "bare")  # no prompt at first, one later
    embed_items(db, str(bare))
    with pytest.raises(SkdError, match="made under no prompt, and the model now gives the prompt 'alike: '"):
        embed_items(db, str(with_prompts(bare, {"STS": "alike: "})))
    with pytest.raises(SkdError, match="it takes no --where"):
        embed_items(db, str(bare), where="true", replace=True)
    with pytest.raises(SkdError, match="neither an embedded default"):  # before anything is deleted
        embed_items(db, str(tmp_path / "gone"), replace=True)
    with Store(db, read_only=True) as s:
        assert s.embeddings.stored(str(bare)) == len(ids)
