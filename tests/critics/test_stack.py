"""A stacked critic (critics.stack) on the embedded MiniLM, real DuckDB, the real command line and a real generation
run: a logistic regression over members' logits and the teacher's own NLL, which scoring reads from the labels'
`extra` or from the generation an item came from, and which items without one do without (and are counted)."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from critics import CriticConfig, load_critic, train_critic
from critics.model import read_card, reads_teacher_nll, score_rows
from critics.stack import apply_stack, features
from critics.train import load_labels, split
from critics.verbalize import verbalize_rows
from generators import make_recipe, make_teacher, run_generation
from store import TEACHER_NLL, Store, import_labels, ingest_file
from tests.conftest import run_skd
from tests.critics.test_label_sources import BAD, GOOD, labels_file, triple


@pytest.fixture(scope="module")
def weak(tmp_path_factory):
    """Labels that the text tells only in part (a tail of the other kind a third of the time) and the NLL their
    importer recorded mostly tells: what the teacher's likelihood adds must show in the stack."""
    d = tmp_path_factory.mktemp("stack")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        for rel in ("xWant", "xAttr"):
            for k in range(4):
                lab = k % 2
                tails = GOOD if (rng.random() < 0.67) == bool(lab) else BAD
                nll = (0.8 if lab else 1.6) + rng.normal(0, 0.3)
                rows.append(triple(f"PersonX does thing {i}", tails[rng.integers(10)], lab, rel)
                            | {"nll": round(float(nll), 4)})
    db = d / "c.duckdb"
    with Store(db) as s:
        import_labels(s, labels_file(d / "labels.jsonl", rows), "jsonl", source="expert")
    for name, cfg in {"weak": {}, "loose": {"weight_decay": 0.0}}.items():
        train_critic(db, name, CriticConfig(mode="embedding", dev_fraction=0.3, **cfg), d / name)
    return db, d


def test_a_stack_with_the_teacher_nll_fits_on_dev_and_falls_back_without_it(weak):
    db, d = weak
    card = json.loads(run_skd("critic", "ensemble", "st", "weak", "--teacher-nll", "--json", db=db,
                              check=True).stdout)
    weights = card["stack"]["with"]["nll"]["weights"]
    assert weights[1] < 0 < weights[0]  # less likely: worse
    assert card["calibration"] is None and card["config"]["teacher_nll"] is True
    assert card["metrics"]["dev"]["auc"] > card["metrics"]["members_dev_auc"]["weak"] + 0.05
    assert card["metrics"]["dev_with_teacher_nll"] == card["metrics"]["dev_size"]
    with Store(db, read_only=True) as s:
        _, dev = split(load_labels(s, None, teacher_nll=True), 0.3, 0)
        path = s.critics.get("st")["path"]
    rows = dev.to_dicts()
    assert all(r[TEACHER_NLL] == json.loads(r["extra"])["nll"] for r in rows)  # read from the labels' extra
    critic, member = load_critic(path), load_critic(d / "weak")
    texts = verbalize_rows(rows)
    nll = np.asarray([r[TEACHER_NLL] for r in rows])
    expect = apply_stack(features([member.score(texts)], nll), card["stack"]["with"]["nll"])
    assert np.allclose(score_rows(critic, rows), expect, atol=1e-9)
    # without the NLL (unknown, or asked by text only) the members-only fit answers
    alone = apply_stack(features([member.score(texts)]), card["stack"]["members"])
    assert np.allclose(score_rows(critic, [r | {TEACHER_NLL: None} for r in rows]), alone, atol=1e-9)
    assert np.allclose(critic.score(texts), alone, atol=1e-9)


def test_a_stack_of_two_critics_needs_no_nll(weak):
    db, _ = weak
    card = json.loads(run_skd("critic", "ensemble", "st2", "weak", "loose", "--combine", "stack", "--json", db=db,
                              check=True).stdout)
    assert len(card["stack"]["members"]["weights"]) == 2 and card["stack"]["with"] == {}
    assert card["metrics"]["dev"]["auc"] >= max(card["metrics"]["members_dev_auc"].values()) - 0.02


def test_an_ensemble_over_a_teacher_nll_stack_passes_the_nll_down(weak):
    """A mean whose member is itself a --teacher-nll stack reads the NLL too (scoring fetches it for the member),
    and each member scores as it would alone."""
    db, _ = weak
    run_skd("critic", "ensemble", "inner", "weak", "--teacher-nll", db=db, check=True)
    card = json.loads(run_skd("critic", "ensemble", "outer", "inner", "loose", "--json", db=db, check=True).stdout)
    assert reads_teacher_nll(card) and not reads_teacher_nll(load_card(db, "loose"))
    # the inner stack gets the NLL on dev: it ranks dev as well as on its own, above the text critic alone
    inner = load_card(db, "inner")["metrics"]
    assert card["metrics"]["members_dev_auc"]["inner"] == pytest.approx(inner["dev"]["auc"])
    assert inner["dev"]["auc"] > inner["members_dev_auc"]["weak"] + 0.05
    with Store(db, read_only=True) as s:
        _, dev = split(load_labels(s, None, teacher_nll=True), 0.3, 0)
        paths = {n: s.critics.get(n)["path"] for n in ("outer", "inner", "loose")}
    rows = dev.to_dicts()
    each = [score_rows(load_critic(paths[n]), rows) for n in ("inner", "loose")]
    outer = score_rows(load_critic(paths["outer"]), rows)
    # a calibrated (monotone) mean of the two, NLL included: the same order as the plain mean
    assert spearmanr(outer, np.mean(each, axis=0)).statistic > 0.999
    blind = score_rows(load_critic(paths["outer"]), [r | {TEACHER_NLL: None} for r in rows])
    assert not np.allclose(outer, blind)  # without the NLL the inner stack falls back: other scores


def load_card(db, name):
    with Store(db, read_only=True) as s:
        return read_card(Path(s.critics.get(name)["path"]))


def test_a_stack_that_cannot_be_fitted_is_one_line(tmp_path):
    rows = [triple(f"PersonX does thing {i}", t, lab) for i in range(16) for t, lab in ((GOOD[i % 10], 1),
                                                                                        (BAD[i % 10], 0))]
    db = tmp_path / "c.duckdb"
    with Store(db) as s:  # no NLL anywhere: the stack cannot learn its weight
        import_labels(s, labels_file(tmp_path / "labels.jsonl", rows), "jsonl", source="expert")
    train_critic(db, "plain", CriticConfig(mode="embedding", dev_fraction=0.3), tmp_path / "plain")
    for args, says in ((["one", "plain"], "at least two different critics"),
                       (["twice", "plain", "plain", "--teacher-nll"], "at least two different critics"),
                       (["nonll", "plain", "--teacher-nll"], "only 0 dev labels carry the teacher's NLL")):
        p = run_skd("critic", "ensemble", *args, db=db)
        assert p.returncode != 0 and says in p.stderr and "Traceback" not in p.stderr, p.stderr
    with Store(db, read_only=True) as s:
        assert s.critics.names() == ["plain"]  # nothing half made is registered


def test_scoring_reads_the_nll_of_the_generation_an_item_came_from(weak, tiny_lm):
    db, d = weak
    infer = {"events_from": "seeds", "max_events": 4, "relations": ["xWant", "xAttr"],
             "inference_sampling": {"n": 3, "temperature": 1.0, "top_p": 0.9, "max_tokens": 6, "stop": ["\n"],
                                    "logprobs": True}}
    run_generation(db, make_recipe("atomic10x", infer), make_teacher("transformers", str(tiny_lm)), seed=1, limit=4)
    with Store(db) as s:
        ingest_file(s, labels_file(d / "items.jsonl", [triple("PersonX eats", t, None) for t in GOOD[:2]]), "jsonl")
        gen_nll = dict(s.con.execute(
            "SELECT s.item_id, min(-g.logprob / g.n_tokens) FROM item_sources s JOIN generations g "
            "USING (request_id, sample_index) WHERE g.logprob IS NOT NULL GROUP BY 1").fetchall())
        n_items = s.scalar("SELECT count(*) FROM items")
    assert gen_nll and len(gen_nll) == n_items - 2  # every generated item has its completion's NLL; imports none
    run_skd("critic", "ensemble", "stg", "weak", "--teacher-nll", db=db, check=True)
    p = run_skd("critic", "score", "stg", "--json", db=db, check=True)
    assert json.loads(p.stdout)["without_teacher_nll"] == 2
    assert "reads the teacher's NLL, which 2 items lack" in p.stderr
    with Store(db, read_only=True) as s:
        row = s.critics.get("stg")
        todo, _ = s.scores.missing("nobody", None, teacher_nll=True)
        stored = dict(s.con.execute("SELECT item_id, score FROM scores WHERE critic_id = ?",
                                    [row["critic_id"]]).fetchall())
    rows = todo.to_pylist()
    assert {r["item_id"]: r[TEACHER_NLL] for r in rows if r[TEACHER_NLL] is not None} == pytest.approx(gen_nll)
    expect = score_rows(load_critic(row["path"]), rows)
    assert np.allclose([stored[r["item_id"]] for r in rows], expect, atol=1e-6)
