"""An ensemble critic from two trained critics (the embedded MiniLM, real DuckDB, the real command line): its score
is the calibrated mean of the members', it scores the corpus like any critic, and members that split dev
differently are refused in one line."""

import json

import numpy as np
import pytest

from critics import CriticConfig, load_critic, train_critic
from critics.calibration import apply
from critics.train import load_labels, split
from critics.verbalize import verbalize_rows
from store import Store, import_labels, ingest_file
from tests.conftest import run_skd
from tests.critics.test_label_sources import BAD, GOOD, labels_file, triple


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    d = tmp_path_factory.mktemp("ens")
    rows = [triple(f"PersonX does thing {i}", t, lab, rel) for i in range(24)
            for rel in ("xWant", "xIntent") for t, lab in ((GOOD[i % 10], 1), (BAD[i % 10], 0), (BAD[(i + 3) % 10], 0))]
    db = d / "c.duckdb"
    with Store(db) as s:
        import_labels(s, labels_file(d / "labels.jsonl", rows), "jsonl", source="expert")
    for name, cfg in {"strong": {}, "weak": {"weight_decay": 3.0}, "other-seed": {"seed": 1}}.items():
        train_critic(db, name, CriticConfig(mode="embedding", dev_fraction=0.3, **cfg), d / name)
    return db, d


def test_an_ensemble_scores_the_calibrated_mean_of_its_members(members):
    db, d = members
    p = run_skd("critic", "ensemble", "ens", "strong", "weak", "--json", db=db, check=True)
    card = json.loads(p.stdout)
    assert card["mode"] == "ensemble" and [m["name"] for m in card["members"]] == ["strong", "weak"]
    assert set(card["metrics"]["members_dev_auc"]) == {"strong", "weak"} and "recall@0.8" in card["thresholds"]
    with Store(db, read_only=True) as s:
        train, dev = split(load_labels(s, None), 0.3, 0)
        row = s.critics.get("ens")
    learnt = dict(zip(*np.unique(train["relation"].to_numpy(), return_counts=True), strict=True))
    assert card["coverage"]["relations"] == learnt and sum(learnt.values()) < 144  # what the members learnt from
    assert card["metrics"]["dev_size"] == dev.height  # the dev split both members held out
    texts = verbalize_rows(dev.to_dicts())
    mean = np.mean([load_critic(d / m).score(texts) for m in ("strong", "weak")], axis=0)
    assert np.allclose(load_critic(row["path"]).score(texts), apply(mean, card["calibration"]), atol=1e-9)
    # it scores the corpus like any critic, with its own thresholds for a snapshot's cut
    items = labels_file(d / "items.jsonl", [triple("PersonX eats", t, None) for t in GOOD[:3] + BAD[:3]])
    with Store(db) as s:
        ingest_file(s, items, "jsonl")
    run_skd("critic", "score", "ens", db=db, check=True)
    with Store(db, read_only=True) as s:
        scores = s.con.execute("SELECT score FROM scores WHERE critic_id = ?", [card["critic_id"]]).fetchall()
    assert len(scores) == 6 and all(0 <= x <= 1 for (x,) in scores)


def test_members_that_split_dev_differently_are_refused(members):
    db, _ = members
    for args, says in ((["mixed", "strong", "other-seed"], "the members split dev differently (seed: 0, 1)"),
                       (["one", "strong"], "at least two different critics"),
                       (["none", "strong", "nobody"], "no critic named 'nobody'")):
        p = run_skd("critic", "ensemble", *args, db=db)
        assert p.returncode != 0 and says in p.stderr and "Traceback" not in p.stderr, p.stderr
    with Store(db, read_only=True) as s:
        assert not {"mixed", "one", "none"} & set(s.critics.names())  # nothing half made is registered


def test_an_ensemble_has_a_threshold_at_every_cut_its_members_have(members):
    db, d = members
    train_critic(db, "odd-cut", CriticConfig(mode="embedding", dev_fraction=0.3, recalls=[0.66], precisions=[0.7]),
                 d / "odd-cut")
    card = json.loads(run_skd("critic", "ensemble", "ens-cuts", "strong", "odd-cut", "--json", db=db,
                              check=True).stdout)
    assert {"recall@0.66", "recall@0.8"} <= set(card["thresholds"])  # the member's own cut and the default grid
    assert card["config"]["recalls"] == sorted(set(card["config"]["recalls"]))
