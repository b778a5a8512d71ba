"""Self-imitation rounds (`[loop] rounds`) of `skd run` on a tiny random model: each later round generates with
the previous round's student, items name their round and generator, dedup spans the rounds, a rerun skips
every round, and a kill in round 2 resumes round 2."""

import json
import os
import subprocess
import sys

import pytest

from store import Store
from tests.conftest import ROOT, kill_when, run_skd
from train.evaluate import stored_eval

PIPELINE = """
[corpus]
path = "{d}/c.duckdb"

[generate]
recipe = "atomic10x"
teacher = "{lm}"
batch_size = 1

[generate.recipe_config]
events_from = "seeds"
max_events = 3
relations = ["xWant"]

[generate.recipe_config.inference_sampling]
n = 2
max_tokens = 6
stop = ["\\n"]

[critic]
mode = "embedding"
labels = [{{ file = "examples/data/critic-labels.jsonl", format = "jsonl" }}]
min_score = 0.0001

[dedup]
threshold = 0.01   # everything of one (head, relation) is one cluster: a cluster must span the rounds

[snapshot]
name = "loop"
kinds = ["triple"]
split = {{ train = 1.0 }}

[student]
base = "{lm}"
out = "{d}/student"
max_steps = 2
batch_size = 2

[eval]
split = "train"
limit = 2
max_tokens = 4
teacher = false

[loop]
rounds = 3
"""
LATER = ["generate", "score", "embed", "dedup", "snapshot", "train", "eval"]


def write(d, lm):
    path = d / "pipeline.toml"
    path.write_text(PIPELINE.format(d=d, lm=lm))
    return path


def lineage(db):
    """(round, generator, student_id, teacher of the items) of every generation run, by round."""
    with Store(db, read_only=True) as s:
        return s.query("""
            SELECT json_extract(r.config, '$.round')::INT AS round, json_extract_string(r.config, '$.generator') AS gen,
                   json_extract_string(r.config, '$.student_id') AS student,
                   string_agg(DISTINCT src.teacher, ',') AS teacher, count(DISTINCT src.item_id) AS items
            FROM runs r JOIN item_sources src USING (run_id) WHERE r.stage = 'generate'
            GROUP BY ALL ORDER BY round""").rows()


@pytest.fixture(scope="module")
def looped(tmp_path_factory, tiny_lm):
    d = tmp_path_factory.mktemp("loop")
    p = run_skd("run", str(write(d, tiny_lm)), "--json", check=True, timeout=900)
    return d, json.loads(p.stdout)


def test_three_rounds_each_with_its_snapshot_student_and_row(looped, tiny_lm):
    d, sm = looped
    first = ["generate", "critic", "score", "embed", "dedup", "snapshot", "train", "eval"]
    assert sm["stages"] == first + [f"{s}@{r}" for r in (2, 3) for s in LATER]
    rows = sm["rounds"]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert [r["generator"] for r in rows] == ["teacher", "student", "student"]
    assert [r["snapshot"] for r in rows] == ["loop", "loop-r2", "loop-r3"]
    assert all(r["generated"] > 0 and r["eval n"] == 2 and 0 < r["distinct_2"] <= 1 for r in rows)
    # each later round's critic acceptance and ROUGE-L against round 1's, on the same inputs, with intervals
    assert rows[0]["eval critic vs round 1"] is None is rows[0]["eval ROUGE-L vs round 1"]
    for r in rows[1:]:
        for measure in ("critic", "ROUGE-L"):
            gain = r[f"eval {measure} vs round 1"]
            assert gain["n"] == 2 and gain["lo"] <= gain["diff"] <= gain["hi"]
            assert gain["diff"] == pytest.approx(r[f"eval {measure}"] - rows[0][f"eval {measure}"])
    cards = [json.loads((d / name / "student.json").read_text()) for name in ("student", "student-r2", "student-r3")]
    students = [e["model"] for e in sm["evals"] if e["model"].endswith("(student)")]  # each round's, in order
    assert students == [f"{c['student_id']} (student)" for c in cards] and len(sm["evals"]) == 3  # teacher = false
    assert sm["student"] == f"{d}/student-r3" and (d / "student-r2" / "student.json").exists()


def test_a_student_generates_the_next_round_and_items_name_round_and_generator(looped, tiny_lm):
    d, _ = looped
    rows = lineage(d / "c.duckdb")
    assert [(r[0], r[1]) for r in rows] == [(1, "teacher"), (2, "student"), (3, "student")]
    assert rows[0][3] == str(tiny_lm) and rows[1][3] == f"{d}/student" and rows[2][3] == f"{d}/student-r2"
    cards = [json.loads((d / name / "student.json").read_text()) for name in ("student", "student-r2")]
    assert [r[2] for r in rows[1:]] == [c["student_id"] for c in cards]
    with Store(d / "c.duckdb", read_only=True) as s:  # the student is asked in its own (comet) format
        prompts = s.query("SELECT DISTINCT q.prompt FROM requests q JOIN runs r USING (run_id) "
                          "WHERE json_extract(r.config, '$.round') = 2").to_series().to_list()
    assert prompts and all(p.endswith(" xWant [GEN]") for p in prompts)


def test_dedup_spans_the_rounds_and_each_snapshot_holds_the_corpus_so_far(looped):
    d, _ = looped
    with Store(d / "c.duckdb", read_only=True) as s:
        spans = s.scalar("""
            SELECT max(n) FROM (SELECT d.cluster_id, count(DISTINCT json_extract(r.config, '$.round')) AS n
            FROM dedup_clusters d JOIN item_sources src USING (item_id) JOIN runs r ON r.run_id = src.run_id
            GROUP BY 1)""")
        so_far = [s.scalar("SELECT count(DISTINCT src.item_id) FROM item_sources src JOIN runs r USING (run_id) "
                           "WHERE json_extract(r.config, '$.round') <= ?", [k]) for k in (1, 2, 3)]
        funnels = [s.snapshots.get(n)["funnel"] for n in ("loop", "loop-r2", "loop-r3")]
    assert spans >= 2  # one (head, relation) cluster holds items of several rounds: one representative kept
    assert [f["items"] for f in funnels] == so_far and so_far[0] < so_far[2]  # each cut from the corpus so far
    assert all(3 <= f["snapshot"] < n for f, n in zip(funnels[1:], so_far[1:], strict=True))  # deduplicated


def test_a_rerun_skips_every_round(looped, tiny_lm):
    d, _ = looped
    p = run_skd("run", str(write(d, tiny_lm)), check=True, timeout=600)
    assert p.stderr.count("done before, skipped") == 8 + 2 * len(LATER)


def test_a_student_retrained_into_its_folder_is_asked_again(looped, tiny_lm):
    d, _ = looped

    def round_3_requests():
        with Store(d / "c.duckdb", read_only=True) as s:
            return s.scalar("SELECT count(DISTINCT q.request_id) FROM requests q JOIN runs r USING (run_id) "
                            "WHERE json_extract(r.config, '$.round') = 3")
    before = round_3_requests()
    run_skd("run", str(write(d, tiny_lm)), "--from", "train@2", check=True, timeout=900)
    assert before == 3 and round_3_requests() == 2 * before  # keyed by the new student's id, not its folder


def test_more_rounds_rerun_nothing_before_and_bad_loops_fail_at_load(tmp_path, tiny_lm):
    import tomllib

    from skd.pipeline import Pipeline
    from skd.run import stage_keys

    cfg = tomllib.loads(PIPELINE.format(d=tmp_path, lm=tiny_lm))
    three = stage_keys(Pipeline.model_validate(cfg))
    four = stage_keys(Pipeline.model_validate(cfg | {"loop": {"rounds": 4}}))
    one = stage_keys(Pipeline.model_validate(cfg | {"loop": {"rounds": 1}}))
    assert {k: four[k] for k in three} == three and {k: three[k] for k in one} == one
    text = PIPELINE.format(d=tmp_path, lm=tiny_lm)
    (tmp_path / "p.toml").write_text(text[:text.index("[student]")] + text[text.index("[eval]"):])
    p = run_skd("run", str(tmp_path / "p.toml"))
    assert "loop.rounds > 1 needs the tables [student]" in p.stderr
    assert p.returncode == 2 and p.stderr.count("\n") == 1


def test_a_kill_in_round_2_resumes_round_2(tmp_path, tiny_lm):
    cfg, db = write(tmp_path, tiny_lm), tmp_path / "c.duckdb"
    # 8 events x 2 relations, one request a batch: round 2 is still generating when the kill comes
    cfg.write_text(cfg.read_text().replace("max_events = 3", "max_events = 8")
                   .replace('relations = ["xWant"]', 'relations = ["xWant", "xNeed"]'))
    proc = subprocess.Popen([sys.executable, "-m", "skd", "run", str(cfg), "--quiet"], cwd=ROOT, env=os.environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_when(proc, db, "SELECT count(*) FROM generations g JOIN runs r USING (run_id) "
              "WHERE json_extract(r.config, '$.round') = 2", 1)  # round 2's student has answered one request
    p = run_skd("run", str(cfg), "--json", check=True, timeout=900)
    with Store(db, read_only=True) as s:
        steps = s.query("SELECT json_extract_string(config, '$.stage') AS stage, json_extract(config, '$.round')::INT "
                        "AS round, status FROM runs WHERE stage = 'pipeline' ORDER BY started_at").rows()
        again = s.scalar("SELECT count(*) FROM (SELECT request_id, sample_index FROM generations "
                         "GROUP BY ALL HAVING count(*) > 1)")
    first = [(st, status) for st, r, status in steps if r == 1]
    assert len(first) == 8 and {status for _, status in first} == {"ok"}  # round 1 ran once: the rerun skipped it
    assert [status for st, r, status in steps if (st, r) == ("generate", 2)] == ["interrupted", "ok"]
    assert again == 0  # no request of round 2 answered twice: the rerun went on where the kill stopped it
    assert [r["round"] for r in json.loads(p.stdout)["rounds"]] == [1, 2, 3]


def test_every_evaluation_keeps_each_outputs_critic_score(looped):
    d, sm = looped
    with Store(d / "c.duckdb", read_only=True) as s:
        stored = [stored_eval(s, e["eval_id"]) for e in sm["evals"]]
    for r in stored:  # the acceptance is that of the scores kept beside the outputs, so models compare pair by pair
        scores, critic = [x["critic_score"] for x in r["samples"]], r["metrics"]["critic"]
        assert len(scores) == critic["n"] == 2 and critic["mean_score"] == pytest.approx(sum(scores) / 2)
        assert critic["acceptance"] == pytest.approx(sum(x >= critic["threshold"] for x in scores) / 2)
