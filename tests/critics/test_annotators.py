"""Annotator agreement and the ceiling it puts on a critic: the beta-binomial fit, the held-out annotator, and
`skd labels agreement` on a real store (and on the crowd-judged rationales in ../shared where present)."""

import json

import numpy as np
import pytest

from critics.annotators import against_one_annotator, annotator_agreement, held_out_votes
from store import SkdError
from tests.conftest import run_skd, shared_file


def votes(a: float, b: float, items: int = 4000, n: int = 3, seed: int = 1):
    rng = np.random.default_rng(seed)
    p = rng.beta(a, b, items)
    return p, rng.binomial(n, p), np.full(items, n)


def test_the_fit_recovers_the_annotators_and_orders_the_ceiling():
    p, pos, total = votes(2.0, 1.0)
    r = annotator_agreement(pos, total)
    assert r["beta"] == pytest.approx([2.0, 1.0], rel=0.15) and r["fit_distance"] < 0.02
    # a critic that knew each item's p beats the other annotators at predicting one of them, and the ceiling
    # against the majority is higher still (a majority of three is less noisy than one vote)
    assert r["held_out_auc"] < against_one_annotator(p, pos, total) < r["ceiling_auc"] < 1
    assert 0.1 < r["fleiss_kappa"] < 0.6 and r["positive_share"] == pytest.approx(np.mean(pos >= 2))


def test_agreement_at_the_extremes():
    same = annotator_agreement(np.array([0, 3] * 30), np.array([3, 3] * 30))
    assert same["fleiss_kappa"] == 1 and same["held_out_auc"] == 1 and same["ceiling_auc"] > 0.999
    _, pos, total = votes(400.0, 400.0)  # every item a coin flip: annotators agree by chance only
    coin = annotator_agreement(pos, total)
    assert abs(coin["fleiss_kappa"]) < 0.05 and abs(coin["held_out_auc"] - 0.5) < 0.03
    assert coin["ceiling_auc"] < 0.6
    with pytest.raises(SkdError, match="at least 20"):
        annotator_agreement(np.array([1, 2]), np.array([3, 3]))
    # every vote positive: nothing is defined but the counts (None, never NaN, which JSON cannot carry)
    yes = annotator_agreement(np.full(30, 3), np.full(30, 3))
    assert yes["fleiss_kappa"] is None and yes["held_out_auc"] is None and yes["ceiling_auc"] is None
    # labels without votes (NaN) or with one are left out; impossible counts are an error
    mixed = annotator_agreement(np.r_[[0, 3] * 30, [1, np.nan]], np.r_[[3, 3] * 30, [1, np.nan]])
    assert mixed["items"] == 60 and mixed["fleiss_kappa"] == 1
    with pytest.raises(SkdError, match="out of range"):
        annotator_agreement(np.full(30, 4), np.full(30, 3))


def test_held_out_votes_take_each_annotator_in_turn():
    vote, others = held_out_votes(np.array([2, 0]), np.array([3, 2]))
    assert vote.tolist() == [1, 1, 0, 0, 0] and others.tolist() == [0.5, 0.5, 1.0, 0.0, 0.0]


def test_labels_agreement_command(tmp_path):
    _, pos, total = votes(1.5, 1.0, items=60)
    rows = [{"kind": "text", "text": f"claim {i}", "label": int(j < k)} for i, k in enumerate(pos) for j in range(3)]
    (tmp_path / "crowd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "expert.jsonl").write_text("".join(json.dumps({"kind": "text", "text": f"claim {i}", "label": 1}) + "\n"
                                                   for i in range(30)))
    db = tmp_path / "a.duckdb"
    for name in ("crowd", "expert"):
        run_skd("labels", "import", str(tmp_path / f"{name}.jsonl"), "--format", "jsonl", "--source", name, db=db,
                check=True)
    shown = run_skd("labels", "agreement", db=db, check=True, env={"COLUMNS": "200"})
    assert "crowd" in shown.stdout and "Fleiss" in shown.stdout
    assert "expert: 0 items with two or more votes, too few to measure" in shown.stderr
    both = json.loads(run_skd("labels", "agreement", "--json", db=db, check=True).stdout)
    assert both["expert"] == {"items": 0, "too_few": True} and both["crowd"]["items"] == 60
    got = json.loads(run_skd("labels", "agreement", "--source", "crowd", "--json", db=db, check=True).stdout)
    assert got["crowd"]["items"] == 60 and got["crowd"]["votes"] == 180
    assert got["crowd"]["positive_share"] == pytest.approx(np.mean(pos >= 2))
    for args, line in ((("--source", "nobody"), "no labels from source 'nobody' (sources: crowd, expert)"),
                       (("--source", "expert"), "no label source has 20 items with two or more votes")):
        bad = run_skd("labels", "agreement", *args, db=db)
        assert bad.returncode != 0 and line in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_the_crowd_judged_rationales_leave_room_above_their_annotators(tmp_path):
    """The CommonsenseQA explanations, three crowd votes each: a beta-binomial describes them, the other two
    annotators predict the third far below the ceiling a critic of the majority could reach."""
    path = shared_file("rationale_acceptability/commonsenseqa_train.csv")
    db = tmp_path / "r.duckdb"
    run_skd("labels", "import", str(path), "--format", "rationale-acceptability", "--source", "csqa", db=db,
            check=True)
    r = json.loads(run_skd("labels", "agreement", "--json", db=db, check=True).stdout)["csqa"]
    assert r["annotators_per_item"] == 3 and r["fit_distance"] < 0.03
    assert 0.6 < r["held_out_auc"] < 0.8 < r["ceiling_auc"]


def test_crossval_and_eval_set_a_critic_beside_its_annotators(tmp_path):
    """`skd critic crossval` and `skd critic eval` on labels with votes report the critic and the other annotators
    against one annotator's vote, and the ceiling; on labels without votes, nothing of the kind."""
    from tests.critics.test_label_sources import BAD, GOOD, triple

    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):  # three annotators per triple: good tails mostly accepted, bad ones mostly not
        for tail, p in ((GOOD[i % 10], 0.8), (BAD[i % 10], 0.2)):
            rows += [triple(f"PersonX acts {i}", tail, int(rng.random() < p)) for _ in range(3)]
    crowd, single = tmp_path / "crowd.jsonl", tmp_path / "single.jsonl"
    crowd.write_text("".join(json.dumps(r) + "\n" for r in rows))
    single.write_text("".join(json.dumps(r) + "\n" for r in rows[::3]))
    db, env = tmp_path / "c.duckdb", {"HF_HUB_OFFLINE": "1", "COLUMNS": "250"}
    run_skd("labels", "import", str(crowd), "--format", "jsonl", "--source", "crowd", db=db, check=True)
    args = ["critic", "crossval", "--eval-source", "crowd", "--mode", "embedding", "--dev-fraction", "0.25",
            "--folds", "3"]
    got = json.loads(run_skd(*args, "--json", db=db, check=True, env=env).stdout)
    cv = got["annotators"]
    assert cv["items"] == 48 and 0.5 < cv["critic_vs_one"] <= 1 and cv["annotators_vs_one"] < cv["ceiling_auc"]
    # each head and relation has a good and a bad tail: best of 2 over 24 prompts, the critic's pick above chance
    chosen = got["selection"]
    assert chosen["prompts"] == 24 and chosen["outputs_per_prompt"] == 2 and chosen["random"] < chosen["top"]
    shown = run_skd(*args, db=db, check=True, env=env).stdout
    assert "against one annotator's vote" in shown and "best of 2.0" in " ".join(shown.split())
    run_skd("critic", "train", "c", "--mode", "embedding", "--dev-fraction", "0.25", db=db, check=True, env=env)
    ev = json.loads(run_skd("critic", "eval", "c", "--labels", str(crowd), "--format", "jsonl", "--json", db=db,
                            check=True, env=env).stdout)
    assert ev["annotators"]["items"] == 48 and ev["annotators"]["annotators_vs_one"] == cv["annotators_vs_one"]
    assert ev["annotators"]["critic_vs_one"] > 0.6  # it saw these labels: a fair check it reads them, no more
    assert ev["selection"]["prompts"] == 24 and ev["selection"]["top"] > ev["selection"]["random"]
    none = json.loads(run_skd("critic", "eval", "c", "--labels", str(single), "--format", "jsonl", "--json", db=db,
                              check=True, env=env).stdout)
    assert none["annotators"] is None and none["auc"] is not None
