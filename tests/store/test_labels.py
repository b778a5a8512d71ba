import csv
import json
from collections import defaultdict

import pytest

from store import SkdError, Store, import_labels
from tests.conftest import shared_file


def test_ckbp_majority_vote_with_counts(db_path, tmp_path):
    path = tmp_path / "ckbp.csv"
    path.write_text(
        "head,relation,tail,label,class,split\n"
        "PersonX eats,xWant,to sleep,1,a,trn\n"
        "PersonX eats,xWant,to sleep,1,a,trn\n"
        "personx  eats,xWant,To sleep,0,a,trn\n"  # same item, other spelling: one vote against
        "PersonX runs,xAttr,fast,1,a,trn\n"
        "PersonX runs,xAttr,fast,0,a,trn\n"  # a tie counts as not acceptable
        "PersonX sits,xAttr,tired,0,a,trn\n"
        "PersonX sits,xAttr,lazy,maybe,a,trn\n")  # bad label value: rejected, the rest kept
    with Store(db_path) as s:
        r = import_labels(s, path, "ckbp")
        rows = {t: (lab, p, n) for t, lab, p, n in s.con.execute(
            "SELECT tail, label, votes_pos, votes_total FROM labels").fetchall()}
    assert rows == {"to sleep": (1, 2, 3), "fast": (0, 1, 2), "tired": (0, 0, 1)}
    assert (r.items, r.conflicts, r.rejected) == (3, 2, 1)
    assert "label must be" in r.rejects[0].reason and r.rejects[0].row_number == 7


def test_reimport_replaces_the_source(db_path, tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"text": "Water boils at 100 C at sea level.", "label": true}\n')
    with Store(db_path) as s:
        import_labels(s, path, "jsonl")
        import_labels(s, path, "jsonl")
        assert s.scalar("SELECT count(*) FROM labels") == 1
        import_labels(s, path, "jsonl", source="other")
        assert s.scalar("SELECT count(*) FROM labels") == 2


def test_jsonl_labels_reject_bad_rows(db_path, tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"text": "a fact", "label": 1}\n{"text": "no label"}\nnot json\n'
                    '{"question": "Q?", "answer": "A", "label": "no", "annotator": "w1"}\n')
    with Store(db_path) as s:
        r = import_labels(s, path, "jsonl")
        assert (r.items, r.rejected) == (2, 2)
        assert json.loads(s.scalar("SELECT extra FROM labels WHERE kind = 'qa'")) == {"annotator": "w1"}
        with pytest.raises(SkdError, match="unknown labels format"):
            import_labels(s, path, "xml")


def test_real_ckbp_file_has_the_documented_conflicts(db_path):
    path = shared_file("ckbp/ckbp1_crowd.csv")
    with Store(db_path) as s:
        r = import_labels(s, path, "ckbp")
    assert r.judgements == 31731 and r.rejected == 0
    assert r.conflicts == 26  # the data README: 26 triples have conflicting labels


def test_rationale_acceptability_majority_per_explanation(db_path):
    path = shared_file("rationale_acceptability/commonsenseqa_train.csv")
    votes = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            ok = set(row["Answer.acceptable"].split("|"))
            for k in range(1, 6):
                key = (row["Input.question"], row[f"Input.explanation_{k}"])
                votes[key].append(str(k) in ok)
    with Store(db_path) as s:
        import_labels(s, path, "rationale-acceptability")
        got = {(q, e): (lab, p, n) for q, e, lab, p, n in s.con.execute(
            "SELECT question, rationale, label, votes_pos, votes_total FROM labels").fetchall()}
    checked = 0
    for (q, e), v in list(votes.items())[:300]:
        if (q.strip(), e.strip()) in got:
            assert got[(q.strip(), e.strip())] == (int(2 * sum(v) > len(v)), sum(v), len(v))
            checked += 1
    assert checked > 250


def test_a_label_of_a_question_with_choices_names_the_item_it_judges(db_path, tmp_path):
    """Choices are part of a question's item id: labels read without them named no item (no teacher NLL, and the
    item counted as its own sibling)."""
    from store import ingest_file

    q = {"kind": "rationale", "question": "Where are books sold?", "answer": "store", "rationale": "Stores sell.",
         "choices": ["store", "river", "sky"]}
    (tmp_path / "items.jsonl").write_text(json.dumps(q) + "\n")
    (tmp_path / "labels.jsonl").write_text(json.dumps(q | {"label": 1}) + "\n")
    with Store(db_path) as s:
        ingest_file(s, tmp_path / "items.jsonl", "jsonl")
        import_labels(s, tmp_path / "labels.jsonl", "jsonl", source="mine")
        item, label = (s.scalar(f"SELECT item_id FROM {t}") for t in ("items", "labels"))
        extra = s.scalar("SELECT extra FROM labels")
    assert label == item and "choices" not in (extra or "")
