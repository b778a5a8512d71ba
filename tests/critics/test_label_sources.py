"""Critics from several label sources (weighted), human tuples with swapped negatives, grouped
cross-validation, coverage and calibration, on the embedded MiniLM and real label files."""

import json

import numpy as np
import polars as pl
import pytest
import torch

from critics import CriticConfig, crossval, load_critic, train_critic
from critics.crossval import cross_validate
from critics.score import score_items
from critics.train import deterministic, example_weights, load_labels, split, weighted_loss
from store import SkdError, Store, import_labels, ingest_file
from tests.conftest import run_skd, shared_file

GOOD = ["to eat food", "to drink water", "to sleep well", "to rest", "to go home", "to call a friend",
        "to feel better", "to say thanks", "to take a nap", "to find help"]
BAD = ["purple mountain singing", "the number seven", "a cold fridge door", "seventeen chairs", "blue cheese moon",
       "a broken pencil", "the tuesday of glass", "underwater piano", "seventh elbow", "a loud spoon"]


def labels_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def triple(head, tail, label, relation="xWant"):
    return {"kind": "triple", "head": head, "relation": relation, "tail": tail, "label": label}


@pytest.fixture
def two_sources(tmp_path):
    """Source `a` says good tails are good; source `b` (the same kind of items, other heads) says the opposite."""
    heads = [f"PersonX does thing {i}" for i in range(24)]
    a = [triple(h, t, 1) for h in heads[:12] for t in GOOD[:3]] + [triple(h, t, 0) for h in heads[:12] for t in BAD[:3]]
    b = [triple(h, t, 0) for h in heads[12:] for t in GOOD[3:6]] + [triple(h, t, 1) for h in heads[12:]
                                                                       for t in BAD[3:6]]
    db = tmp_path / "c.duckdb"
    with Store(db) as s:
        import_labels(s, labels_file(tmp_path / "a.jsonl", a), "jsonl", source="a")
        import_labels(s, labels_file(tmp_path / "b.jsonl", b), "jsonl", source="b")
    return db


def mean_good_minus_bad(path) -> float:
    critic = load_critic(path)
    good = critic.score([f"PersonX rests. as a result, PersonX wants {t}" for t in GOOD[:6]])
    bad = critic.score([f"PersonX rests. as a result, PersonX wants {t}" for t in BAD[:6]])
    return float(good.mean() - bad.mean())


def test_source_weights_decide_between_sources_that_disagree(two_sources, tmp_path):
    with Store(two_sources) as s:
        db = s.path
    cards = {}
    for name, weights in {"trust-a": {"a": 10.0}, "trust-b": {"b": 10.0}}.items():
        cfg = CriticConfig(mode="embedding", sources=["a", "b"], source_weights=weights, dev_fraction=0.3,
                           calibrate=False)  # dev mixes both sources: calibration would flatten what is measured
        cards[name] = train_critic(db, name, cfg, tmp_path / name)
        assert cards[name]["label_sources"] == ["a", "b"]
    a, b = mean_good_minus_bad(tmp_path / "trust-a"), mean_good_minus_bad(tmp_path / "trust-b")
    assert a > 0 > b and a - b > 0.2, (a, b)  # the heavier source wins where the two disagree


def test_a_batch_of_one_source_keeps_its_weight_in_the_fine_tune_loss():
    """The loss was the batch's weighted mean, so a batch that is all one source (length-grouped batches often
    are) weighed the same whatever the source's weight: --source-weights ckbp2=3 did nothing there."""
    logits = torch.tensor([[0.2, -0.1], [1.0, 0.3], [-0.5, 0.8], [0.0, 0.0]])
    target = torch.tensor([1.0, 0.0, 1.0, 2 / 3])  # a vote share trains too
    per_label = torch.nn.functional.cross_entropy(logits, torch.stack([1 - target, target], -1), reduction="none")
    one, three = (weighted_loss(logits, target, torch.full((4,), w)) for w in (1.0, 3.0))
    assert float(one) == pytest.approx(float(per_label.mean()))
    assert float(three) == pytest.approx(3 * float(one))  # the heavier source's batch pulls three times as hard
    mixed = weighted_loss(logits, target, torch.tensor([3.0, 1.0, 1.0, 1.0]))
    assert float(mixed) == pytest.approx(float(3 * per_label[0] + per_label[1:].sum()) / 4)
    assert float(weighted_loss(logits, target, torch.zeros(4))) == 0.0  # a weight-0 batch: nothing, not NaN


def test_classes_balance_by_what_they_weigh_once_sources_are_weighted():
    """Balanced by counts, a heavy source with another positive rate tipped the balance: ten experts' labels, 20%
    positive, weighing 3 beside ten crowd labels, 80% positive, left the negatives weighing 26 to the positives' 14
    after "balancing"; and a source weighing 0 counted toward a balance it takes no part in."""
    df = pl.DataFrame({"label": [1] * 2 + [0] * 8 + [1] * 8 + [0] * 2 + [0] * 6,
                       "source": ["expert"] * 10 + ["crowd"] * 10 + ["ignored"] * 6})
    cfg = CriticConfig(source_weights={"expert": 3.0, "ignored": 0.0})
    w, labels, source = example_weights(df, cfg), df["label"].to_numpy(), df["source"].to_numpy()
    assert w[labels == 1].sum() == pytest.approx(w[labels == 0].sum())  # the classes weigh the same
    assert w.mean() == pytest.approx(1.0) and not w[source == "ignored"].any()
    pos = w[(labels == 1) & (source == "expert")][0] / w[(labels == 1) & (source == "crowd")][0]
    assert pos == pytest.approx(3.0)  # within a class, the sources keep their ratio


def test_deterministic_gives_back_the_callers_setting():
    torch.use_deterministic_algorithms(True, warn_only=False)
    try:
        with deterministic(0):
            assert torch.is_deterministic_algorithms_warn_only_enabled()  # training warns, never raises
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()  # the caller's strict mode, as it was
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_source_weighing_zero_fine_tunes_and_can_be_the_dev_split(two_sources, tmp_path):
    """A batch of weight-0 labels only was 0 / 0 (NaN parameters, then a traceback at the dev AUC), and a weight-0
    source as --dev-source was refused as if nothing could train."""
    base = {"mode": "finetune", "sources": ["a", "b"], "max_steps": 12, "eval_steps": 6, "batch_size": 4,
            "calibrate": False}
    zero = train_critic(two_sources, "zero", CriticConfig(**base, source_weights={"b": 0.0}), tmp_path / "zero")
    assert np.isfinite(zero["metrics"]["dev"]["auc"])
    dev = train_critic(two_sources, "dev", CriticConfig(**base, source_weights={"a": 0.0}, dev_sources=["a"]),
                       tmp_path / "dev")
    assert dev["metrics"]["dev"]["n"] > 0 and np.isfinite(dev["metrics"]["dev"]["auc"])


def test_an_out_folder_holding_anything_but_a_critic_artifact_is_refused(two_sources, tmp_path):
    """Publishing replaces --out: `--out DB.d/critics` deleted every critic in it, `--out .` the corpus."""
    cfg = CriticConfig(mode="embedding", sources=["a", "b"], calibrate=False)
    train_critic(two_sources, "a", cfg, tmp_path / "critics" / "a")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    for out, message in ((tmp_path / "critics", "holds critic 'a'"), (tmp_path, "holds critic 'a'"),
                         (two_sources.parent, "holds"), (tmp_path / "notes", "is not a critic's folder")):
        with pytest.raises(SkdError, match=message):
            train_critic(two_sources, "b", cfg, out)
    assert (tmp_path / "critics" / "a" / "critic.json").is_file() and (tmp_path / "notes" / "todo.txt").is_file()
    (tmp_path / "empty").mkdir()
    train_critic(two_sources, "b", cfg, tmp_path / "empty")  # a new or empty folder is fine


def test_a_source_or_weight_named_wrongly_is_one_line(two_sources, tmp_path):
    """A typo in --source or --source-weights trained on the other sources alone, the card naming the typo."""
    for cfg, message in ((CriticConfig(mode="embedding", sources=["a", "bb"]), "from source 'bb'"),
                         (CriticConfig(mode="embedding", sources=["a", "b"], source_weights={"bb": 3.0}),
                          "--source-weights names 'bb'")):
        with pytest.raises(SkdError, match=message):
            train_critic(two_sources, "typo", cfg, tmp_path / "typo")


def test_a_critic_folder_replaced_by_another_corpus_is_refused_at_scoring(two_sources, tmp_path):
    import shutil

    other = tmp_path / "other.duckdb"
    shutil.copy(two_sources, other)
    cfg = CriticConfig(mode="embedding", sources=["a", "b"], calibrate=False)
    shared = tmp_path / "shared-critic"
    train_critic(two_sources, "c", cfg, shared)
    with Store(two_sources) as s:
        ingest_file(s, labels_file(tmp_path / "items.jsonl", [triple("PersonX eats", "to rest", 1)]), "jsonl")
    train_critic(other, "c", cfg, shared)  # the other corpus trains its own "c" into the same folder
    with pytest.raises(SkdError, match="holds critic 'c-.*', not 'c-.*' as registered"):
        score_items(two_sources, "c")


def test_dev_from_one_source_holds_only_its_labels_and_no_head_is_on_both_sides(tmp_path):
    """A head labelled by the crowd and by experts: with --dev-source expert, dev (early stopping, calibration,
    thresholds) holds expert labels only, and the crowd labels of dev heads train nothing."""
    heads = [f"PersonX does thing {i}" for i in range(30)]
    crowd = [triple(h, t, lab) for h in heads for t, lab in ((GOOD[0], 1), (BAD[0], 0))]
    expert = [triple(h, t, lab) for h in heads[::2] for t, lab in ((GOOD[1], 1), (BAD[1], 0))]
    db = tmp_path / "c.duckdb"
    with Store(db) as s:
        import_labels(s, labels_file(tmp_path / "crowd.jsonl", crowd), "jsonl", source="crowd")
        import_labels(s, labels_file(tmp_path / "expert.jsonl", expert), "jsonl", source="expert")
        df = load_labels(s, None)
    train, dev = split(df, 0.3, 0, ["expert"])
    assert set(dev["source"]) == {"expert"} and dev.height >= 4
    dev_heads = set(dev["head"])
    assert not dev_heads & set(train["head"])  # neither the expert nor the crowd labels of a dev head train
    assert train.height == df.height - 4 * len(dev_heads)  # each dev head's two crowd labels are left out too
    _, everyone = split(df, 0.3, 0)
    assert set(everyone["source"]) == {"crowd", "expert"}
    p = run_skd("critic", "train", "c", "--mode", "embedding", "--dev-fraction", "0.3", "--dev-source", "expert",
                "--json", db=db, check=True)
    card = json.loads(p.stdout)
    assert card["config"]["dev_sources"] == ["expert"] and card["metrics"]["dev_size"] == dev.height
    run_skd("critic", "train", "c2", "--mode", "embedding", "--dev-fraction", "0.3", "--dev-source", "expert",
            "--seed", "0", db=db, check=True)
    with Store(db) as s:  # experts now label heads the two critics trained on: some would move to dev
        more = expert + [triple(h, GOOD[2], 1) for h in heads[1::2]]
        import_labels(s, labels_file(tmp_path / "more.jsonl", more), "jsonl", source="expert", replace=True)
    p = run_skd("critic", "ensemble", "ens", "c", "c2", db=db)
    assert p.returncode != 0 and "changed since critic 'c' was trained: dev would hold heads it trained on" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = run_skd("critic", "train", "d", "--mode", "embedding", "--dev-source", "nobody", db=db)
    assert p.returncode != 0 and "too few labels from nobody" in p.stderr and "Traceback" not in p.stderr


def test_coverage_is_recorded_and_scoring_outside_it_warns(two_sources, tmp_path):
    card = train_critic(two_sources, "c", CriticConfig(mode="embedding", dev_fraction=0.3), tmp_path / "c")
    n = card["metrics"]["train_size"]  # what it learnt from, not the dev labels it was measured on
    assert n < 144 and card["coverage"] == {"kinds": {"triple": n}, "relations": {"xWant": n}}
    assert 0 <= card["metrics"]["dev"]["calibration_error"] <= card["metrics"]["dev_calibration_error_raw"] + 0.05
    items = tmp_path / "items.jsonl"
    labels_file(items, [triple("PersonX eats", "to sleep", None), triple("PersonX eats", "rain", None, "HinderedBy"),
                        triple("PersonX runs", "tired", None, "HinderedBy"), {"kind": "text", "text": "hello"}])
    with Store(two_sources) as s:
        ingest_file(s, items, "jsonl")
    p = run_skd("critic", "score", "c", db=two_sources, check=True)
    assert "trained on no labels of relation HinderedBy; 2 such items" in p.stderr
    assert "trained on no labels of kind text; 1 such items" in p.stderr
    assert score_items(two_sources, "c").uncovered == {}  # nothing left to score: nothing to warn about
    with pytest.raises(SkdError, match="holds critic 'c'; choose another --out"):  # would delete c's files
        train_critic(two_sources, "d", CriticConfig(mode="embedding", dev_fraction=0.3), tmp_path / "c")
    assert load_critic(tmp_path / "c") is not None and not list(tmp_path.glob(".c.*"))


def test_atomic2020_human_tuples_as_positives_with_swapped_negatives(tmp_path):
    src = shared_file("atomic2020/human_tuples.tsv").read_text().splitlines()[:300]
    path = tmp_path / "tuples.tsv"
    path.write_text("\n".join(src) + "\n")
    with Store(tmp_path / "c.duckdb") as s:
        r = import_labels(s, path, "atomic2020")
        df = s.labels.select(None, [r.source])
    pos, neg = df.filter(df["label"] == 1), df.filter(df["label"] == 0)
    assert pos.height > 200 and neg.height >= pos.height * 0.9  # about one each (repeats collapse)
    tails = {(h, rel): set() for h, rel in zip(pos["head"], pos["relation"], strict=True)}
    for h, rel, t in zip(pos["head"], pos["relation"], pos["tail"], strict=True):
        tails[(h, rel)].add(t)
    for h, rel, t in zip(neg["head"], neg["relation"], neg["tail"], strict=True):
        assert t.lower() not in {x.lower() for x in tails[(h, rel)]}  # a swapped tail is another head's
        assert any(t.lower() in {x.lower() for x in ts} for (h2, r2), ts in tails.items() if r2 == rel and h2 != h)
    assert "none" not in {t.lower() for t in pos["tail"]}


def test_one_file_of_human_tuples_split_by_head_between_a_critic_and_an_evaluation(tmp_path):
    """`--heads 1/2` and `2/2` (and an evaluation's reference_heads) split one file's heads with none in both:
    the critic's swaps come from its own half's tails, so no evaluation reference reaches training at all."""
    from train.eval_run import EvalConfig, eval_cases
    from train.evaluate import read_references

    src = shared_file("atomic2020/human_tuples.tsv").read_text().splitlines()[:400]
    path = tmp_path / "tuples.tsv"
    path.write_text("\n".join(src) + "\n")
    with Store(tmp_path / "c.duckdb") as s:
        whole = s.labels.select(None, [import_labels(s, path, "atomic2020").source])
        one, two = (import_labels(s, path, "atomic2020", heads=k) for k in ("1/2", " 2 / 2"))
        assert (one.source, two.source) == ("atomic2020:tuples.tsv[heads 1/2]", "atomic2020:tuples.tsv[heads 2/2]")
        assert import_labels(s, path, "atomic2020", heads="1/2").skipped  # the same file and part: nothing to do
        a, b = s.labels.select(None, [one.source]), s.labels.select(None, [two.source])
        with pytest.raises(SkdError, match="give K/N"):
            import_labels(s, path, "atomic2020", heads="3/2")
    heads = {k: set(df["head"].str.to_lowercase()) for k, df in (("a", a), ("b", b))}
    assert heads["a"] and heads["b"] and not heads["a"] & heads["b"]
    assert heads["a"] | heads["b"] == set(whole["head"].str.to_lowercase())
    pos = whole.filter(whole["label"] == 1)
    assert a["label"].sum() + b["label"].sum() == pos.height  # every human tail in one half
    half_tails = {t.lower() for t in a.filter(a["label"] == 1)["tail"]}
    assert {t.lower() for t in a.filter(a["label"] == 0)["tail"]} <= half_tails  # swaps from its own half
    refs = read_references(path, "2/2")
    assert {h.lower() for h, _ in refs} == {h.lower() for h in pos["head"]} - heads["a"]
    assert set(read_references(path)) == set(refs) | set(read_references(path, "1/2"))
    with Store(tmp_path / "c.duckdb", read_only=True) as s:  # the inputs an evaluation asks, and what it records
        cases, source = eval_cases(s, EvalConfig(references=path, reference_heads="2/2", limit=0))
    assert source == f"{path} (heads 2/2)" and {(c.item["head"], c.item["relation"]) for c in cases} == set(refs)
    with pytest.raises(ValueError, match="give K/N"):
        EvalConfig(references=path, reference_heads="two")
    with pytest.raises(ValueError, match="splits the heads of --references or --heads"):
        EvalConfig(snapshot="s", reference_heads="1/2")
    bad = run_skd("labels", "import", str(path), "--format", "atomic2020", "--heads", "0/2", db=tmp_path / "c.duckdb")
    assert bad.returncode == 2 and "give K/N" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_rationale_labels_and_a_question_set_split_by_question(tmp_path):
    """The same split for questions: a critic on half the rationale judgements' questions, an evaluation on the
    CommonsenseQA questions of the other half (after its offset), none shared; the part is recorded."""
    from train.eval_run import EvalConfig, eval_cases

    norm = lambda q: " ".join(q.lower().split())  # noqa: E731
    labels, csqa = shared_file("rationale_acceptability/commonsenseqa_train.csv"), shared_file("csqa/train.jsonl")
    with Store(tmp_path / "c.duckdb") as s:
        taught = {norm(q) for q in s.labels.select(None, [import_labels(s, labels, "rationale-acceptability",
                                                                         heads="1/2").source])["question"]}
        ask = dict(questions=csqa, questions_format="csqa", offset=100, limit=0)
        every, _ = eval_cases(s, EvalConfig(**ask))
        (two, source), (one, _) = (eval_cases(s, EvalConfig(**ask, reference_heads=k)) for k in ("2/2", "1/2"))
    asked = {k: {norm(c.item["question"]) for c in cases} for k, cases in (("1", one), ("2", two))}
    assert source.endswith("(csqa, from 100) (heads 2/2)") and len(one) + len(two) == len(every)
    assert taught & asked["1"] and not taught & asked["2"] and not asked["1"] & asked["2"]
    assert abs(len(two) - len(one)) < 0.1 * len(every)  # halves, near enough
    with pytest.raises(ValueError, match="or the --questions"):
        EvalConfig(snapshot="s", reference_heads="2/2")


def test_cross_validation_holds_out_whole_heads_and_reports_per_class(tmp_path):
    rows = []
    for i in range(40):
        cls = "adv" if i % 2 else "test_set"
        rows += [triple(f"PersonX acts {i}", GOOD[i % 10], 1) | {"class": cls},
                 triple(f"PersonX acts {i}", BAD[i % 10], 0) | {"class": cls}]
    db = tmp_path / "c.duckdb"
    with Store(db) as s:
        import_labels(s, labels_file(tmp_path / "expert.jsonl", rows), "jsonl", source="expert")
    folds_seen = []
    res = cross_validate(db, CriticConfig(mode="embedding", dev_fraction=0.25), "expert", folds=4, by="class",
                         on_fold=lambda k, s, kept: folds_seen.append(k))
    assert folds_seen == [0, 1, 2, 3] and res["n"] == 80 and len(res["scores"]) == 80
    # each fold trains on three quarters of the heads less a quarter for dev (about 45 labels), not on all 80
    assert 35 <= res["train_labels_per_fold"] <= 55, res["train_labels_per_fold"]
    assert set(res["by"]) == {"adv", "test_set"} and res["by"]["adv"]["n"] == 40
    assert res["overall"]["auc"] > 0.8  # good and bad tails are easy to tell apart, even for unseen heads
    assert np.all((np.asarray(res["scores"]) >= 0) & (np.asarray(res["scores"]) <= 1))
    # a critic that differs only in its seed is scored on the same folds (so the two can be ensembled), and
    # its own seed still changes what it learns (another dev split)
    other = cross_validate(db, CriticConfig(mode="embedding", dev_fraction=0.25, seed=1), "expert", folds=4, by=None)
    assert other["fold"] == res["fold"] and other["scores"] != res["scores"]
    moved = cross_validate(db, CriticConfig(mode="embedding", dev_fraction=0.25), "expert", folds=4, by=None,
                           fold_seed=1)
    assert moved["fold"] != res["fold"]


def kept_seconds(keep):
    return sum(json.loads(f.read_text())["seconds"] for f in keep.glob("fold-*.json"))


def test_cross_validation_resumes_from_the_folds_it_kept(tmp_path, monkeypatch):
    rows = [triple(f"PersonX acts {i}", t, y) for i in range(24) for t, y in ((GOOD[i % 10], 1), (BAD[i % 10], 0))]
    db, keep = tmp_path / "c.duckdb", tmp_path / "kept"
    with Store(db) as s:
        import_labels(s, labels_file(tmp_path / "expert.jsonl", rows), "jsonl", source="expert")
    cfg = CriticConfig(mode="embedding", dev_fraction=0.25)
    first = cross_validate(db, cfg, "expert", folds=3, by=None, keep=keep)
    assert sorted(p.name for p in keep.iterdir()) == ["fold-0.json", "fold-1.json", "fold-2.json"]
    assert first["seconds"] == pytest.approx(kept_seconds(keep))
    # a rerun reads a kept fold instead of training it: fold 1's record, altered, is what comes back; a record cut
    # short (fold 2) or with the wrong number of scores (fold 0) is trained again
    record = json.loads((keep / "fold-1.json").read_text())
    (keep / "fold-1.json").write_text(json.dumps(record | {"scores": [0.5] * len(record["scores"]), "seconds": 7}))
    (keep / "fold-2.json").write_text('{"scores": [0.9')
    zero = json.loads((keep / "fold-0.json").read_text())
    (keep / "fold-0.json").write_text(json.dumps(zero | {"scores": [0.5], "seconds": 11}))
    seen = []
    again = cross_validate(db, cfg, "expert", folds=3, by=None, keep=keep,
                           on_fold=lambda k, seconds, kept: seen.append((k, seconds, kept)))
    assert [(k, kept) for k, _, kept in seen] == [(0, False), (1, True), (2, False)] and seen[1][1] == 7
    fold, scores = np.asarray(again["fold"]), np.asarray(again["scores"])
    assert np.all(scores[fold == 1] == 0.5) and not np.any(scores[fold != 1] == 0.5)
    assert np.allclose(scores[fold == 0], np.asarray(first["scores"])[fold == 0])
    assert again["seconds"] == pytest.approx(kept_seconds(keep)) and json.loads(
        (keep / "fold-2.json").read_text())["seconds"] not in (7, 11)  # folds 0 and 2 trained and kept again
    # other labels (a source added, which this config trains on too), another config, or other folds train every
    # fold again rather than reuse the kept ones
    with Store(db) as s:
        import_labels(s, labels_file(tmp_path / "more.jsonl", [triple("PersonY naps", GOOD[0], 1)]), "jsonl",
                      source="more")
    more = cross_validate(db, cfg, "expert", folds=3, by=None, keep=keep)
    assert more["fold"] == again["fold"] and not np.any(np.asarray(more["scores"]) == 0.5)
    (keep / "fold-1.json").write_text(json.dumps(json.loads((keep / "fold-1.json").read_text())
                                                 | {"scores": [0.5] * len(record["scores"])}))
    other = cross_validate(db, cfg.model_copy(update={"seed": 1}), "expert", folds=3, by=None, keep=keep)
    assert not np.any(np.asarray(other["scores"]) == 0.5)
    moved = cross_validate(db, cfg, "expert", folds=3, by=None, keep=tmp_path / "kept2", fold_seed=1)
    shifted = cross_validate(db, cfg, "expert", folds=3, by=None, keep=keep, fold_seed=1)
    assert moved["fold"] == shifted["fold"] and not np.any(np.asarray(shifted["scores"]) == 0.5)
    # other training code (an edit to the critics package, another library version) trains every fold again too
    code = crossval.training_code()
    assert code["libraries"]["torch"].split("+")[0] == torch.__version__.split("+")[0]

    def rerun_with_fold_1_altered() -> np.ndarray:
        kept = json.loads((keep / "fold-1.json").read_text())
        (keep / "fold-1.json").write_text(json.dumps(kept | {"scores": [0.5] * len(kept["scores"])}))
        return np.asarray(cross_validate(db, cfg, "expert", folds=3, by=None, keep=keep, fold_seed=1)["scores"])
    assert np.any(rerun_with_fold_1_altered() == 0.5)  # the same code reads it
    monkeypatch.setattr(crossval, "training_code", lambda: code | {"source": "edited"})
    assert not np.any(rerun_with_fold_1_altered() == 0.5)


def test_crossval_command_reports_per_class_and_resumes(tmp_path):
    rows = [triple(f"PersonX acts {i}", t, y) | {"class": "adv" if i % 2 else "test_set"}
            for i in range(24) for t, y in ((GOOD[i % 10], 1), (BAD[i % 10], 0))]
    db, keep = tmp_path / "c.duckdb", tmp_path / "kept"
    with Store(db) as s:
        import_labels(s, labels_file(tmp_path / "expert.jsonl", rows), "jsonl", source="expert")
    args = ["critic", "crossval", "--eval-source", "expert", "--mode", "embedding", "--dev-fraction", "0.25",
            "--folds", "3", "--keep", str(keep)]
    shown = run_skd(*args, db=db, check=True, env={"HF_HUB_OFFLINE": "1"})
    table = shown.stdout
    assert "3 folds by head or question, 48 labels" in table and "adv" in table and "test_set" in table
    assert sorted(p.name for p in keep.iterdir()) == ["fold-0.json", "fold-1.json", "fold-2.json"]
    again = json.loads(run_skd(*args, "--json", db=db, check=True, env={"HF_HUB_OFFLINE": "1"}).stdout)
    assert again["overall"]["auc"] > 0.8 and set(again["by"]) == {"adv", "test_set"}
    # the kept folds are read, not trained again: their recorded times, and the same figures
    assert again["seconds"] == pytest.approx(kept_seconds(keep)) and f"{again['overall']['auc']:.3f}" in table
    missing = run_skd(*args[:3], "nobody", "--mode", "embedding", db=db)
    assert missing.returncode != 0  # one line of error (after the progress display's last frame)
    assert [x for x in missing.stderr.splitlines() if "error" in x] == [
        "skd: error: no labels from source 'nobody' (sources: expert)"]
