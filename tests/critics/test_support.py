"""Support (critics.support) on the embedded MiniLM, real DuckDB and the real command line: how closely an item's
tail matches what people wrote for its relation in a label source of human-written knowledge, embedded once into
the stack's folder, never a positive's support of itself."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from critics import CriticConfig, load_critic, train_critic
from critics.agreement import Encoder
from critics.model import score_rows
from critics.stack import contrary_signals
from critics.support import FILE, Support
from critics.train import load_labels, split
from store import Store, import_labels, ingest_file
from tests.conftest import run_skd
from tests.critics.test_label_sources import labels_file, triple

# What people wrote: wants for xWant, traits for xAttr. The judged triples reuse near-paraphrases of both under
# both relations, so a tail is acceptable or not by its relation.
WANTS = ["to eat food", "to drink water", "to sleep well", "to go home", "to call a friend", "to take a nap"]
TRAITS = ["hungry", "kind", "brave", "tired", "lazy", "generous"]
WANTS_SAID = ["to eat some food", "to drink some water", "to get a good sleep", "to head back home",
              "to phone a friend", "to nap for a while"]
TRAITS_SAID = ["very hungry", "very kind", "quite brave", "so tired", "rather lazy", "very generous"]


def human_and_judged(d: Path, flipped: bool = False) -> Path:
    """A corpus in D: the human source, judged triples acceptable when their tail suits their relation (FLIPPED:
    when it suits the other one), and the critic `text` trained on the judged ones."""
    human = [triple(f"PersonX helps {i}", w, 1) for i, w in enumerate(WANTS)] + \
        [triple(f"PersonX helps {i}", t, 1, "xAttr") for i, t in enumerate(TRAITS)]
    want, attr = ("xAttr", "xWant") if flipped else ("xWant", "xAttr")
    judged = [triple(f"PersonX does thing {i}", t, int(good), rel)
              for i in range(30) for rel in ("xWant", "xAttr")
              for t, good in ((WANTS_SAID[i % 6], rel == want), (TRAITS_SAID[(i + 1) % 6], rel == attr))]
    db = d / "c.duckdb"
    with Store(db) as s:
        import_labels(s, labels_file(d / "human.jsonl", human), "jsonl", source="human")
        import_labels(s, labels_file(d / "judged.jsonl", judged), "jsonl", source="expert")
    train_critic(db, "text", CriticConfig(mode="embedding", dev_fraction=0.3, sources=["expert"]), d / "text")
    return db


@pytest.fixture(scope="module")
def supported(tmp_path_factory):
    d = tmp_path_factory.mktemp("support")
    return human_and_judged(d), d


def test_support_is_the_closest_human_tail_of_the_relation_never_itself():
    enc = Encoder("all-MiniLM-L6-v2")
    rows = [triple("PersonX helps", w, 1) | {"item_id": f"w{i}", "source": "human"} for i, w in enumerate(WANTS)]
    pool = Support.from_labels(rows + [triple("PersonX helps", "a loud spoon", 0) | {"item_id": "neg",
                                                                                       "source": "human"}],
                               "human", enc.encode)
    assert len(pool.item_ids) == len(WANTS)  # positives only
    got = pool([triple("PersonX eats", "to eat some food", None) | {"item_id": "a"},
                triple("PersonX eats", "a loud spoon", None) | {"item_id": "b"},
                triple("PersonX eats", "to eat some food", None, "xAttr") | {"item_id": "c"},
                rows[0]], enc.encode)
    assert got[0] > got[1] + 0.3 and np.isnan(got[2])  # no xAttr positives: no support
    assert got[3] < 0.99  # the positive "to eat food" is compared with the other positives, not itself


def test_a_stack_with_support_ranks_by_what_people_write_for_the_relation(supported, tmp_path):
    db, d = supported
    card = json.loads(run_skd("critic", "ensemble", "sup", "text", "--support", "human", "--encoder",
                              "all-MiniLM-L6-v2", "--json", db=db, check=True).stdout)
    text, stacked = card["metrics"]["members_dev_auc"]["text"], card["metrics"]["dev"]["auc"]
    # how much support adds is the bench's to measure (CKBP v2); here: it weighs in, on the side of support
    assert card["stack"]["with"]["support"]["weights"][-1] > 0 and stacked >= text - 0.02, (text, stacked)
    copy = tmp_path / "copy.duckdb"  # scoring reads the saved pool: the human labels can go
    shutil.copy(db, copy)
    with Store(copy) as s:
        assert (Path(s.critics.get("sup")["path"]) / FILE).is_file()
        s.con.execute("DELETE FROM labels WHERE source = 'human'")
        ingest_file(s, labels_file(tmp_path / "items.jsonl", [triple("PersonX cooks", "to eat some food", None),
                                                              triple("PersonX cooks", "very hungry", None)]), "jsonl")
    run_skd("critic", "score", "sup", db=copy, check=True)
    with Store(copy, read_only=True) as s:
        stored = dict(s.con.execute("SELECT tail, score FROM scores JOIN items USING (item_id) WHERE critic_id = ?",
                                    [card["critic_id"]]).fetchall())
        rows = s.scores.missing("nobody", None)[0].to_pylist()
    expect = score_rows(load_critic(card_path(db, "sup")), rows)
    assert np.allclose([stored[r["tail"]] for r in rows], expect, atol=1e-6)
    critic = load_critic(card_path(db, "sup"))
    support = dict(zip([r["tail"] for r in rows], critic.support(rows, critic.encoder.encode), strict=True))
    assert support["to eat some food"] > support["very hungry"] + 0.2  # from the saved pool: people write wants


def test_the_support_sources_own_labels_are_not_judged_by_it(supported, tmp_path):
    """Fitted on a dev split that holds the human labels too, the stack leaves their support out (a positive would
    be its own best support, a tail-swapped negative someone else's)."""
    db, d = supported
    train_critic(db, "both", CriticConfig(mode="embedding", dev_fraction=0.4), tmp_path / "both")
    card = json.loads(run_skd("critic", "ensemble", "sup2", "both", "--support", "human", "--encoder",
                              "all-MiniLM-L6-v2", "--json", db=db, check=True).stdout)
    with Store(db, read_only=True) as s:
        _, dev = split(load_labels(s, None), 0.4, 0)
    assert card["metrics"]["dev_with_support"] == int((dev["source"] != "human").sum()) < dev.height


def card_path(db, name):
    with Store(db, read_only=True) as s:
        return s.critics.get(name)["path"]


def test_support_weighed_against_its_meaning_warns(tmp_path):
    """Labels that reward a tail people wrote for the *other* relation: the stack weighs support negatively, and
    `skd critic ensemble` says so in one line (on CKBP v1's crowd labels it does, bench/distill.py)."""
    db = human_and_judged(tmp_path, flipped=True)
    p = run_skd("critic", "ensemble", "sup", "text", "--support", "human", "--encoder", "all-MiniLM-L6-v2", db=db,
                check=True)
    warned = [line for line in p.stderr.splitlines() if line.startswith("warning: support takes a weight of -")]
    assert len(warned) == 1, p.stderr
    assert contrary_signals({"members": {}, "with": {"support": {"weights": [1.0, 0.5]},
                                                     "nll": {"weights": [1.0, -0.5]}}}) == {}
