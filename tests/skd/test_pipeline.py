"""`skd run` end to end on the real embedded models: every stage, a rerun that redoes nothing, a config
change that reruns only the stages after it, and a kill in a middle stage after which the rerun ends with
the same result as an uninterrupted run."""

import json
import os
import subprocess
import sys

import pytest

from store import SkdError, Store, ingest_file
from tests.conftest import ROOT, kill_when, run_skd

PIPELINE = """
[corpus]
path = "{d}/c.duckdb"
ingest = [{{ file = "examples/data/mini.jsonl", format = "jsonl" }}]

[generate]
recipe = "atomic10x"
limit = 3
batch_size = 3

[generate.recipe_config]
events_from = "seeds"
max_events = 3
relations = ["xWant"]

[generate.recipe_config.inference_sampling]
n = 2
max_tokens = 8
stop = ["\\n"]

[critic]
mode = "embedding"
labels = [{{ file = "{d}/absent.csv", format = "ckbp" }},
          {{ file = "examples/data/critic-labels.jsonl", format = "jsonl" }}]
min_score = {min_score}

[dedup]
threshold = 0.9

[snapshot]
name = "tiny"
kinds = ["triple"]
split = {{ train = 0.7, test = 0.3 }}

[export]
out = "{d}/export"

[student]
out = "{d}/student"
max_steps = 2
batch_size = 4
lora = [8, 16]

[eval]
split = "train"
limit = 2
max_tokens = 6
"""


def write(d, min_score=0.0001):
    path = d / "pipeline.toml"
    path.write_text(PIPELINE.format(d=d, min_score=min_score))
    return path


def stage_runs(db):
    with Store(db, read_only=True) as s:
        return s.query("SELECT json_extract_string(config, '$.stage') AS stage, status FROM runs "
                       "WHERE stage = 'pipeline' ORDER BY started_at").rows()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, smollm2):
    d = tmp_path_factory.mktemp("pipe")
    p = run_skd("run", str(write(d)), "--json", check=True, timeout=900)
    return d, json.loads(p.stdout)


def test_every_stage_runs_and_the_summary_has_the_funnel_stats_critic_and_evals(finished):
    d, sm = finished
    assert sm["stages"] == ["ingest", "generate", "critic", "score", "embed", "dedup", "snapshot", "export", "train",
                            "eval"]
    f = sm["funnel"]
    assert f["completions"] == 6 and f["items"] >= f["passed_critic"] >= f["representatives"] >= f["snapshot"] > 0
    assert sm["stats"]["counts"]["n"] == f["snapshot"] and sm["critic"]["labels"].endswith("critic-labels.jsonl")
    assert [e["model"].split(" ")[-1] for e in sm["evals"]] == ["(student)", "(teacher)"]
    assert (d / "export" / "README.md").exists() and (d / "student" / "student.json").exists()


def test_a_rerun_redoes_nothing_and_a_changed_stage_reruns_it_and_after(finished):
    d, sm = finished
    before = stage_runs(d / "c.duckdb")
    p = run_skd("run", str(write(d)), check=True, timeout=600)
    assert p.stderr.count("done before, skipped") == 10
    assert stage_runs(d / "c.duckdb") == before
    p = run_skd("run", str(write(d, min_score=0.0002)), "--json", check=True, timeout=900)
    again = json.loads(p.stdout)
    new = [stage for stage, _ in stage_runs(d / "c.duckdb")[len(before):]]
    assert new == ["snapshot", "export", "train", "eval"]  # the critic cut belongs to the snapshot
    assert again["snapshot"] == "tiny-" + again["snapshot"].split("-")[-1] != sm["snapshot"]


def test_only_and_from(finished):
    d, _ = finished
    n = len(stage_runs(d / "c.duckdb"))
    run_skd("run", str(write(d)), "--only", "dedup", check=True)
    p = run_skd("run", str(write(d)), "--from", "nope")
    assert p.returncode == 2 and "stage 'nope' is not in this pipeline" in p.stderr
    assert [s for s, _ in stage_runs(d / "c.duckdb")[n:]] == ["dedup"]


def scores(db):
    with Store(db, read_only=True) as s:
        return dict(s.con.execute("SELECT item_id, score FROM scores").fetchall())


def test_kills_in_a_middle_stage_and_in_eval_then_a_rerun_gives_the_same_result(finished, tmp_path):
    """Killed after the critic, then again just after the student's eval row is written: the rerun ends with
    the same snapshot, the same critic scores (a second clean critic, trained deterministically), and each
    model evaluated once."""
    d, reference = finished
    cfg, db = write(tmp_path), tmp_path / "c.duckdb"

    def start():
        return subprocess.Popen([sys.executable, "-m", "skd", "run", str(cfg), "--quiet"], cwd=ROOT, env=os.environ,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    kill_when(start(), db, "SELECT count(*) FROM runs WHERE stage = 'pipeline' AND status = 'ok' "
              "AND json_extract_string(config, '$.stage') = 'critic'", 1)  # killed in score or shortly after
    kill_when(start(), db, "SELECT count(*) FROM evals", 1)  # the student evaluated, the teacher not yet
    p = run_skd("run", str(cfg), "--json", check=True, timeout=900)
    sm = json.loads(p.stdout)
    assert sm["content_hash"] == reference["content_hash"] and sm["funnel"] == reference["funnel"]
    assert sm["snapshot"] == "tiny"
    with Store(db, read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM evals") == 2
        assert s.scalar("SELECT count(*) FROM runs WHERE status = 'running'") == 0  # the killed ones: interrupted
    assert scores(db) == scores(d / "c.duckdb") and scores(db)


def test_a_label_file_with_an_apostrophe_in_its_name(tmp_path):
    labels = tmp_path / "critic's labels.jsonl"
    labels.write_bytes((ROOT / "examples/data/critic-labels.jsonl").read_bytes())
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'[corpus]\npath = "{tmp_path}/c.duckdb"\n'
                   'ingest = [{ file = "examples/data/mini.jsonl", format = "jsonl" }]\n'
                   '[critic]\nmode = "embedding"\nmin_score = 0.0001\n'
                   f'labels = [{{ file = "{labels}", format = "jsonl" }}]\n'
                   '[snapshot]\nname = "s"\nkinds = ["triple"]\n')
    sm = json.loads(run_skd("run", str(cfg), "--json", check=True, timeout=600).stdout)
    assert sm["critic"]["labels"] == str(labels) and sm["funnel"]["snapshot"] > 0


@pytest.mark.parametrize("name", ["atomic-mini", "rationale-csqa", "gpu-vllm", "ray-gpu-cluster"])
def test_the_example_pipelines_are_valid(name):
    from skd.cmd_run import load_pipeline

    p = load_pipeline(ROOT / "examples" / f"{name}.toml")
    assert p.snapshot.name and p.student is not None and p.eval is not None


def test_every_recipe_can_be_a_pipelines(tmp_path):
    import tomllib

    from generators import RECIPES
    from skd.cmd_run import load_pipeline
    from skd.pipeline import Pipeline

    generics = tomllib.loads((ROOT / "examples" / "generics.toml").read_text())
    generics.pop("teacher")  # the command line's table; a pipeline has generate.teacher_options
    raw = {"generate": {"recipe": "generics", "recipe_config": generics}, "snapshot": {"name": "g"}}
    assert Pipeline.model_validate(raw).generate.recipe == "generics"  # the statement recipes were refused
    with pytest.raises(ValueError, match="student: the generics recipe writes statements"):
        Pipeline.model_validate(raw | {"student": {"out": str(tmp_path / "s")}})
    assert {"generics", "comparatives"} <= set(RECIPES)
    cfg = tmp_path / "p.toml"
    cfg.write_text('[generate]\nrecipe = "poems"\n[snapshot]\nname = "x"\n')
    with pytest.raises(SkdError, match="generate.recipe.*unknown recipe 'poems'"):
        load_pipeline(cfg)


def test_splits_and_evaluations_that_would_fail_late_are_refused_when_the_config_loads(tmp_path):
    from skd.pipeline import Pipeline

    student = {"out": str(tmp_path / "s")}
    cases = [({"snapshot": {"name": "s", "split": {"train": 0.9, "validation": 0.1}}, "student": student,
               "eval": {}}, "eval.split: the snapshot has no 'test' part"),
             ({"snapshot": {"name": "s", "split": {"all": 1.0}}, "student": student}, "has no 'train' part"),
             ({"snapshot": {"name": "s"}, "eval": {}}, "eval: nothing to evaluate")]
    for raw, message in cases:
        with pytest.raises(ValueError, match=message):
            Pipeline.model_validate(raw)
    assert Pipeline.model_validate({"snapshot": {"name": "s"}, "student": student, "eval": {}}).eval.split == "test"


def test_an_edited_input_file_or_a_label_file_that_appeared_reruns_its_stage(tmp_path):
    from skd.pipeline import Pipeline
    from skd.run import plan_name, stage_keys

    seeds, crowd, shipped = tmp_path / "seeds.jsonl", tmp_path / "crowd.csv", tmp_path / "shipped.jsonl"
    seeds.write_text('{"text": "a"}\n')
    shipped.write_text("{}\n")
    raw = {"corpus": {"ingest": [{"file": str(seeds)}]}, "snapshot": {"name": "s"},
           "critic": {"labels": [{"file": str(crowd), "format": "ckbp"}, {"file": str(shipped)}]}}
    before = stage_keys(Pipeline.model_validate(raw))
    seeds.write_text('{"text": "b"}\n')  # same path and format, other content
    edited = stage_keys(Pipeline.model_validate(raw))
    assert edited["ingest"] != before["ingest"]
    crowd.write_text("head,relation,tail,label\n")  # the first label file is there now: the critic trains on it
    appeared = stage_keys(Pipeline.model_validate(raw))
    assert appeared["critic"] != edited["critic"] and appeared["ingest"] == edited["ingest"]
    # a stage forced to run again (--from) takes a name nothing holds: reusing the old one redid nothing
    held = {"critic", "critic-abcdef"}
    prior = {"config": {"plan": {"critic": "critic"}}}
    assert plan_name(None, "abcdef12", "critic", held.__contains__, prior, "critic") == "critic"
    assert plan_name(None, "abcdef12", "critic", held.__contains__, prior, "critic", fresh=True) == "critic-abcdef-2"


def test_an_earlier_round_run_again_leaves_out_what_later_rounds_wrote(tmp_path):
    """After a config change reruns round 1, its dedup and snapshot saw every item, round 3's student's too."""
    from corpus import SnapshotRecipe, create_snapshot, dedup, snapshot_frame
    from skd.pipeline import Pipeline
    from skd.run import Runner

    db = tmp_path / "c.duckdb"
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"head": "PersonX eats", "relation": "xWant", "tail": "to rest"}\n')
    with Store(db) as s:
        ingest_file(s, seeds, "jsonl")
        run = s.start_run("generate", {"pipeline": True, "round": 3, "generator": "student"})
        s.con.execute("INSERT INTO items (item_id, kind, head, relation, tail) VALUES "
                      "('late', 'triple', 'PersonX eats', 'xWant', 'to nap')")
        s.con.execute("INSERT INTO item_sources (item_id, run_id, request_id, teacher) VALUES ('late', ?, 'r', 'st')",
                      [run])
    runner = Runner(Pipeline.model_validate({"corpus": {"path": str(db)}, "snapshot": {"name": "s"}}), say=print)
    for round_, kept in ((1, ["to rest"]), (3, ["to nap", "to rest"])):
        runner.round = round_
        with Store(db) as s:
            where = runner.round_where(s)
            dedup(s, "exact", scope="global", where=where)
            create_snapshot(s, f"r{round_}", SnapshotRecipe(where=where, split={"train": 1.0}, dedup="exact"))
            assert sorted(snapshot_frame(s, f"r{round_}")["tail"]) == kept


def test_an_endpoints_pacing_is_not_part_of_any_key():
    from skd.pipeline import Pipeline
    from skd.run import stage_keys

    def keys(**options):
        return stage_keys(Pipeline.model_validate({
            "generate": {"recipe": "atomic10x", "backend": "openai", "teacher": "m",
                         "teacher_options": {"base_url": "http://127.0.0.1:9/v1"} | options},
            "critic": {"labels": []}, "snapshot": {"name": "s"}}))

    assert keys(rpm=60, concurrency=4) == keys(rpm=600, timeout=30) == keys()  # a new rate limit reran everything
    assert keys(served_model="other")["generate"] != keys()["generate"]


def test_a_bad_pipeline_config_names_the_key(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text('[snapshot]\nname = "x"\n[dedup]\nthreshold = 2.0\n')
    p = run_skd("run", str(cfg))
    assert p.returncode == 2 and "dedup.threshold" in p.stderr and p.stderr.count("\n") == 1
    cfg.write_text('[snapshot]\nname = "x"\n[engine]\nkind = "spark"\n')
    p = run_skd("run", str(cfg))
    assert p.returncode == 2 and "engine.kind" in p.stderr and p.stderr.count("\n") == 1


def test_every_stage_has_its_function():
    from skd.pipeline import STAGES, Pipeline
    from skd.run import Runner

    runner = Runner(Pipeline.model_validate({"snapshot": {"name": "s"}}), say=lambda m: None)
    assert tuple(runner.stage_functions()) == STAGES


def test_the_per_relation_cut_belongs_to_the_snapshot(tmp_path):
    """[critic] per_relation = true reaches the snapshot's recipe and reruns the snapshot, not the critic; a
    pipeline without it keeps the snapshot config it had before the option existed (no rerun)."""
    import tomllib

    from skd.pipeline import Pipeline

    raw = tomllib.loads(write(tmp_path).read_text())
    one = Pipeline.model_validate(raw)
    raw["critic"]["per_relation"] = True
    per = Pipeline.model_validate(raw)
    assert per.snapshot_recipe("c").per_relation and not one.snapshot_recipe("c").per_relation
    assert one.stage_config("critic") == per.stage_config("critic")
    assert one.stage_config("score") == per.stage_config("score")
    assert one.stage_config("snapshot")["critic_cut"] == [None, 0.0001]
    assert per.stage_config("snapshot")["critic_cut"] == [None, 0.0001, "per relation"]
    raw["critic"]["per_prompt"] = 1  # best of N the same way: the snapshot's, not the critic's
    best = Pipeline.model_validate(raw)
    assert best.snapshot_recipe("c").per_prompt == 1 and one.snapshot_recipe("c").per_prompt is None
    assert best.stage_config("critic") == one.stage_config("critic")
    assert best.stage_config("snapshot")["critic_cut"] == [None, 0.0001, "per relation", "1 per prompt"]


def test_dev_sources_retrain_the_critic_only_when_set(tmp_path):
    """[critic] dev_sources is part of what the critic depends on; a pipeline without it keeps the critic config
    it had before the option existed, so its critic is not retrained."""
    import tomllib

    from skd.pipeline import Pipeline

    raw = tomllib.loads(write(tmp_path).read_text())
    plain = Pipeline.model_validate(raw)
    raw["critic"]["dev_sources"] = ["ckbp2"]
    expert = Pipeline.model_validate(raw)
    assert "dev_sources" not in plain.stage_config("critic")
    assert expert.stage_config("critic")["dev_sources"] == ["ckbp2"]
    assert expert.critic.training({}).dev_sources == ["ckbp2"]


def test_a_critic_also_trains_on_half_the_heads_of_human_tuples_with_their_weight(tmp_path):
    """[critic] also_labels: every present file beside the first present of `labels`, each with its head part
    and weight; an absent one is said and skipped. A pipeline without the options keeps its critic's key."""
    import tomllib

    from skd.pipeline import Pipeline
    from tests.conftest import shared_file

    tuples = tmp_path / "tuples.tsv"
    tuples.write_text("\n".join(shared_file("atomic2020/human_tuples.tsv").read_text().splitlines()[:200]) + "\n")
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'[corpus]\npath = "{tmp_path}/c.duckdb"\n'
                   'ingest = [{ file = "examples/data/mini.jsonl", format = "jsonl" }]\n'
                   '[critic]\nmode = "embedding"\npair = true\nmin_score = 0.0001\n'
                   'labels = [{ file = "examples/data/critic-labels.jsonl", format = "jsonl" }]\n'
                   f'also_labels = [{{ file = "{tuples}", format = "atomic2020", heads = "1/2", weight = 3 }},\n'
                   f'               {{ file = "{tmp_path}/absent.tsv", format = "atomic2020" }}]\n'
                   '[snapshot]\nname = "s"\nkinds = ["triple"]\n')
    p = run_skd("run", str(cfg), "--json", check=True, timeout=600)
    sm = json.loads(p.stdout)
    tuples_source = "atomic2020:tuples.tsv[heads 1/2]"
    assert sm["critic"]["label_sources"] == ["jsonl:critic-labels.jsonl", tuples_source]
    assert sm["critic"]["labels_absent"] == [f"{tmp_path}/absent.tsv"] and sm["funnel"]["snapshot"] > 0
    with Store(tmp_path / "c.duckdb", read_only=True) as s:
        card = s.critics.get("critic")
    assert card["config"]["source_weights"] == {tuples_source: 3.0} and card["config"]["pair"] is True
    assert set(card["config"]["sources"]) == {"jsonl:critic-labels.jsonl", tuples_source}
    with pytest.raises(ValueError, match="give K/N"):
        Pipeline.model_validate({"snapshot": {"name": "s"}, "critic": {"labels": [{"file": "x", "heads": "1/0"}]}})
    twins = [{"file": "a/x.tsv", "format": "atomic2020"}, {"file": "b/x.tsv", "format": "atomic2020"}]
    with pytest.raises(ValueError, match="both be the source 'atomic2020:x.tsv'"):  # one would replace the other
        Pipeline.model_validate({"snapshot": {"name": "s"}, "critic": {"labels": twins[:1], "also_labels": twins[1:]}})
    with pytest.raises(ValueError, match="give labels too"):
        Pipeline.model_validate({"snapshot": {"name": "s"}, "critic": {"also_labels": twins[:1]}})
    with pytest.raises(ValueError, match="with use .* it would be ignored"):
        Pipeline.model_validate({"snapshot": {"name": "s"}, "critic": {"use": "c", "also_labels": twins[:1]}})
    plain = Pipeline.model_validate(tomllib.loads(write(tmp_path).read_text())).stage_config("critic")
    assert not {"also_labels", "pair"} & set(plain) and plain["labels"][0] == {"file": f"{tmp_path}/absent.csv",
                                                                              "format": "ckbp"}


def test_absent_references_fall_back_to_the_heads_file_with_its_part_or_to_the_split(tmp_path):
    """[eval] references in ../shared/data that a checkout lacks: a heads file still asks its part of the heads
    (reference_heads kept), with no heads file the snapshot's split is asked and the part dropped (else the
    evaluation's config would be refused: a part of nothing)."""
    from skd.pipeline import EvalStage
    from skd.run import without_absent_references
    from train.eval_run import EvalConfig

    heads, here = tmp_path / "heads.txt", tmp_path / "tuples.tsv"
    heads.write_text("PersonX eats\n")
    here.write_text("PersonX eats\txWant\tto sleep\n")
    gone = tmp_path / "absent.tsv"

    def filled(**kw):
        e = EvalStage(reference_heads="2/2", **kw)
        fill, said = without_absent_references(e)
        return EvalConfig(**e.model_dump(include=set(EvalConfig.model_fields)) | fill), said

    cfg, said = filled(references=gone, heads=heads)
    assert (cfg.references, cfg.heads, cfg.reference_heads) == (None, heads, "2/2")
    assert said == f"eval.references {gone} is absent: evaluating on {heads} without its references"
    cfg, said = filled(references=gone, questions=heads)  # a question set: scored against its gold answers
    assert (cfg.references, cfg.reference_heads, said) == (None, "2/2", f"eval.references {gone} is absent: "
                                                                          f"evaluating on {heads}")
    cfg, said = filled(references=gone)
    assert (cfg.references, cfg.reference_heads) == (None, None) and said.endswith("the snapshot's test split")
    cfg, said = filled(references=here)
    assert (cfg.references, cfg.reference_heads, said) == (here, "2/2", None)


def test_ddk_in_a_pipeline_measures_against_the_generators_teacher(tmp_path):
    """From round 2 a student may have written most of the corpus: DDK's loss gap and the KD term are still
    measured against the generator's teacher, not whichever model wrote the most items."""
    import tomllib

    from skd.pipeline import Pipeline

    raw = tomllib.loads(write(tmp_path).read_text())
    assert Pipeline.model_validate(raw).student_training("s", tmp_path / "o").teacher is None  # plain SFT: none
    raw["student"] |= {"mixture": "ddk"}
    p = Pipeline.model_validate(raw)
    assert p.student_training("s", tmp_path / "o").teacher == p.generate.teacher
    raw["student"] |= {"teacher": "my-teacher"}
    assert Pipeline.model_validate(raw).student_training("s", tmp_path / "o").teacher == "my-teacher"
