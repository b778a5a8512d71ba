"""Students: SFT on a snapshot with the real SmolLM2 (full and LoRA), resume after a kill, evaluation of a
student and a teacher on the same inputs, against real ATOMIC-2020 references."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from corpus import SnapshotRecipe, create_snapshot
from skd.wiring import check_answer, stop_of
from store import SkdError, Store
from tests.conftest import ROOT, atomic_corpus, run_skd, shared_file
from train import TrainConfig, fit
from train.formats import example, extract_answer
from train.textmetrics import corpus_bleu, degenerate, rouge_l


@pytest.fixture(scope="module")
def atomic_db(tmp_path_factory):
    """A corpus of 40 real ATOMIC-2020 (head, relation) lines and two snapshots: 8 training items (every step
    sees the same batch, so the loss must fall) and a train/test split for evaluation."""
    d = tmp_path_factory.mktemp("atomic")
    db = atomic_corpus(d, 40)
    with Store(db) as s:
        create_snapshot(s, "eight", SnapshotRecipe(limit=8, seed=0))
        create_snapshot(s, "split", SnapshotRecipe(split={"train": 0.7, "test": 0.3}))
    return db, d


def test_full_finetune_lowers_loss_and_the_student_is_evaluated_beside_its_teacher(atomic_db, smollm2):
    db, d = atomic_db
    p = run_skd("train", "--snapshot", "eight", "--out", str(d / "full"), "--max-steps", "5", "--lr", "1e-4",
                "--batch-size", "8", "--json", db=db, check=True)
    card = json.loads(p.stdout)
    assert card["summary"]["last_loss"] < card["summary"]["first_loss"]
    saved = json.loads((d / "full" / "student.json").read_text())
    assert saved["snapshot_hash"] and saved["config"]["max_steps"] == 5 and saved["format"] == "comet"
    # a fresh process loads the student and evaluates it; then the teacher on the same inputs
    for model in (card["student_id"], "smollm2-135m-instruct"):
        run_skd("eval", model, "--snapshot", "split", "--split", "test", "--limit", "3", "--max-tokens", "12",
                db=db, check=True)
    rows = json.loads(run_skd("compare", "--snapshot", "split", "--json", db=db, check=True).stdout)
    assert [r["model"].split(" ")[-1] for r in rows] == ["(student)", "(teacher)"]
    assert all(r["n"] == 3 and r["BLEU-2"] is not None and r["ROUGE-L"] is not None for r in rows)
    with Store(db, read_only=True) as s:
        linked = s.query("SELECT e.student_id, e.snapshot_id FROM evals e WHERE student_id IS NOT NULL").to_dicts()
        students = s.query("SELECT student_id, snapshot_id FROM students").to_dicts()
    assert linked[0]["student_id"] == card["student_id"] and students[0]["snapshot_id"] == card["snapshot_id"]


def test_lora_training_saves_the_adapter_and_a_merged_student(atomic_db, smollm2):
    db, d = atomic_db
    card = fit(db, TrainConfig(snapshot="eight", out=d / "lora", max_steps=4, lr=2e-3, batch_size=8, lora=(8, 16),
                               format="chat"))
    assert card["summary"]["last_loss"] < card["summary"]["first_loss"]
    assert (d / "lora" / "adapter" / "adapter_config.json").exists()
    code = ("import sys; from transformers import AutoModelForCausalLM as M; "
            "m = M.from_pretrained(sys.argv[1]); print(type(m).__name__, sum(p.numel() for p in m.parameters()))")
    out = subprocess.run([sys.executable, "-c", code, str(d / "lora")], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("LlamaForCausalLM 1345")  # merged: a plain 135M model, no peft needed


def test_a_chat_reply_ends_in_eos_under_a_template_that_renders_the_prompt_otherwise(tiny_lm):
    """A template whose generation prompt differs from the prompt inside the whole conversation fell back to the
    bare reply, with no end of turn to learn: the student never stopped."""
    from transformers import AutoTokenizer

    from train.formats import encode

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    row = {"prompt": [{"role": "user", "content": "PersonX eats. xWant?"}],
           "completion": [{"role": "assistant", "content": "to sleep"}]}
    ours = encode(row, tok, 256)
    assert ours["labels"][-2:] == tok("<|im_end|>\n", add_special_tokens=False)["input_ids"]  # SmolLM2's own end
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant (thinking off):{% endif %}")
    other = encode(row, tok, 256)
    reply = [t for t in other["labels"] if t != -100]
    assert reply == tok("to sleep", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_a_killed_training_run_resumes_from_its_last_checkpoint(atomic_db, tiny_lm):
    db, d = atomic_db
    args = [sys.executable, "-m", "skd", "train", "--snapshot", "split", "--out", str(d / "resume"), "--base",
            str(tiny_lm), "--max-steps", "40", "--save-steps", "4", "--batch-size", "2", "--lr", "1e-3", "--quiet",
            "--json"]
    proc = subprocess.Popen(args, cwd=ROOT, env={**__import__("os").environ, "SKD_DB": str(db)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (d / "resume" / "checkpoints" / "checkpoint-8").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.kill()
    proc.wait()
    card = json.loads(run_skd(*args[3:], db=db, check=True).stdout)
    assert card["summary"]["resumed_from"].startswith("checkpoint-") and card["summary"]["steps"] == 40
    other = [a if a != "split" else "eight" for a in args[3:]]  # another snapshot into the same --out
    card = json.loads(run_skd(*other, db=db, check=True).stdout)
    assert card["summary"]["resumed_from"] is None and card["snapshot"] == "eight"  # not step 40 of the other one


def test_a_shorter_epochs_run_into_the_same_out_trains_its_own_length(atomic_db, tiny_lm):
    """Only a shorter --max-steps pruned the checkpoints past its end: after --epochs 3, a rerun with --epochs 1
    resumed at epoch 3, trained 0 steps, and saved a three-epoch student whose card said one."""
    db, d = atomic_db
    cfg = {"snapshot": "eight", "out": d / "epochs", "base": str(tiny_lm), "batch_size": 2, "save_steps": 2,
           "lr": 1e-3, "bf16": False}
    three = fit(db, TrainConfig(**cfg, epochs=3))["summary"]
    per_epoch = -(-three["examples"] // 2)
    assert three["steps"] == 3 * per_epoch
    card = fit(db, TrainConfig(**cfg, epochs=1))
    assert card["summary"]["steps"] == per_epoch and card["config"]["epochs"] == 1


def test_a_students_seed_fixes_it_whatever_the_process_drew_before(atomic_db, tiny_lm):
    """The seed governs the adapters' random init, not only the data order: the same config gives the same
    student after other random draws in the process, and another seed gives another student."""
    import torch
    from safetensors.torch import load_file

    db, d = atomic_db

    def adapter(name: str, seed: int) -> dict:
        torch.rand(1000)  # other work in the process moves the global random state
        fit(db, TrainConfig(snapshot="eight", out=d / name, base=str(tiny_lm), max_steps=2, lr=1e-3, batch_size=4,
                            lora=(4, 8), seed=seed, bf16=False))
        return load_file(d / name / "adapter" / "adapter_model.safetensors")

    first, again, other = adapter("seed-a", 0), adapter("seed-b", 0), adapter("seed-c", 1)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_an_example_longer_than_max_length_is_left_out_not_cut(atomic_db, tiny_lm):
    """Cut from the right, a rationale lost its answer and its EOS and was trained on anyway."""
    from transformers import AutoTokenizer

    from corpus import snapshot_frame
    from train.formats import encode

    db, d = atomic_db
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    with Store(db, read_only=True) as s:
        items = [r for r in snapshot_frame(s, "eight").to_dicts() if r["split"] == "train"]
    lengths = [len(encode(example(it, "comet"), tok, 10_000)["input_ids"]) for it in items]
    limit = sorted(lengths)[len(lengths) // 2]  # about half fit
    card = fit(db, TrainConfig(snapshot="eight", out=d / "short", base=str(tiny_lm), max_steps=1, batch_size=2,
                               max_length=limit, bf16=False))
    assert card["summary"]["too_long"] == sum(n > limit for n in lengths) > 0
    assert card["summary"]["examples"] == sum(n <= limit for n in lengths)
    with pytest.raises(SkdError, match="every example is longer than --max-length 8"):
        fit(db, TrainConfig(snapshot="eight", out=d / "none", base=str(tiny_lm), max_steps=1, max_length=8,
                            bf16=False))


def test_a_teacher_is_evaluated_against_human_references(atomic_db, tiny_lm):
    db, d = atomic_db
    refs = shared_file("atomic2020/human_tuples.tsv")
    p = run_skd("eval", str(tiny_lm), "--references", str(refs), "--relations", "xWant", "--limit", "4",
                "--max-tokens", "8", "--json", db=db, check=True)
    r = json.loads(p.stdout)
    m, samples = r["metrics"], eval_samples(db, r["eval_id"])
    assert m["n"] == 4 and m["references"]["n"] == 4 and 0 <= m["references"]["embedding_similarity"] <= 1
    # the figures are those of the stored outputs against their human references
    outputs, refs = [x["output"] for x in samples], [x["references"] for x in samples]
    assert all(refs) and m["references"]["bleu2"] == pytest.approx(corpus_bleu(outputs, refs))
    assert m["references"]["rouge_l"] == pytest.approx(sum(map(rouge_l, outputs, refs)) / 4)
    assert m["degenerate_rate"] == pytest.approx(sum(map(degenerate, outputs)) / 4)


def test_an_evaluation_counts_the_inputs_a_student_trained_on_and_can_drop_them(atomic_db, tiny_lm):
    from corpus import snapshot_frame

    db, d = atomic_db
    fit(db, TrainConfig(snapshot="split", out=d / "seen", base=str(tiny_lm), max_steps=1, batch_size=2, bf16=False))
    with Store(db, read_only=True) as s:
        rows = snapshot_frame(s, "split").to_dicts()
    train = sorted({r["head"] for r in rows if r["split"] == "train"})[:2]
    test = sorted({r["head"] for r in rows if r["split"] == "test"} - set(train))[:1]
    heads = d / "heads.txt"
    heads.write_text("\n".join([train[0].upper(), train[1], *test]) + "\n")  # case does not hide a head
    args = ("eval", str(d / "seen"), "--heads", str(heads), "--relations", "xWant", "--max-tokens", "4")
    p = run_skd(*args, db=db, check=True)
    assert "2 of 3 inputs are heads or questions the student trained on" in " ".join(p.stdout.split())
    m = json.loads(run_skd(*args, "--unseen-only", "--json", db=db, check=True).stdout)["metrics"]
    assert m["n"] == 1 and m["seen_in_training"] == 0
    teacher = json.loads(run_skd("eval", str(tiny_lm), "--heads", str(heads), "--relations", "xWant",
                                 "--max-tokens", "4", "--json", db=db, check=True).stdout)["metrics"]
    assert teacher["n"] == 3 and teacher["seen_in_training"] is None  # a teacher's training data is unknown
    p = run_skd("eval", str(tiny_lm), "--heads", str(heads), "--unseen-only", db=db)
    assert p.returncode == 2 and "--unseen-only needs a student" in p.stderr


def test_a_teacher_is_evaluated_with_the_backend_options_it_generated_with(atomic_db, tiny_lm):
    """The pipeline's eval stage loads its teacher with [generate.teacher_options] (a 70B teacher's GPUs, an
    endpoint's URL); they used to be dropped."""
    from skd.wiring import evaluate
    from train.eval_run import EvalConfig

    db, _ = atomic_db
    cfg = EvalConfig(snapshot="split", limit=2, max_tokens=4, format="chat")
    with pytest.raises(SkdError, match="dtype 'float7' is not one of auto, float32"):
        evaluate(db, str(tiny_lm), cfg, {"dtype": "float7"})
    assert evaluate(db, str(tiny_lm), cfg, {"dtype": "float32", "batch_size": 1})["metrics"]["n"] == 2


def test_a_teacher_is_evaluated_with_the_few_shot_prompt_it_generated_with():
    """A pipeline whose recipe shows 2 examples per prompt evaluated its teacher with the default 5."""
    from generators import Sampling
    from skd.wiring import fewshot_requests
    from train.eval_run import EvalConfig

    item = [{"kind": "triple", "head": "PersonX eats", "relation": "xWant"}]
    two, _ = fewshot_requests("m", item, EvalConfig(), Sampling(), {"examples": 2, "stage": "both"})
    five, _ = fewshot_requests("m", item, EvalConfig(), Sampling())
    assert (two[0].prompt.count("Event:"), five[0].prompt.count("Event:")) == (3, 6)


def eval_samples(db, eval_id):
    return [json.loads(line) for line in (db.parent / (db.name + ".d") / "evals" / f"{eval_id}.jsonl")
            .read_text().splitlines()]


def test_training_errors_are_one_line(atomic_db, tmp_path):
    db, _ = atomic_db
    for args, message in ((["--snapshot", "nope"], "no snapshot named 'nope'"),
                          (["--snapshot", "eight", "--lora", "8"], "--lora '8'"),
                          (["--snapshot", "eight", "--format", "bad"], "'bad' is not one of 'comet'"),
                          (["--snapshot", "eight", "--base", str(tmp_path / "missing")], "neither an embedded"),
                          (["--snapshot", "eight", "--base", "all-mpnet-base-v2"], "cannot load base model")):
        p = run_skd("train", "--out", str(tmp_path / "o"), *args, db=db)
        assert p.returncode == 2 and message in p.stderr and p.stderr.strip().count("\n") == 0, p.stderr
    with Store(db) as s:
        s.con.execute("INSERT INTO items (item_id, kind, text) VALUES ('t1', 'text', 'just text')")
        create_snapshot(s, "texts", SnapshotRecipe(where="kind = 'text'"))
    with pytest.raises(SkdError, match="has no triples"):
        fit(db, TrainConfig(snapshot="texts", out=tmp_path / "o"))


def test_formats_and_text_metrics():
    t = {"kind": "triple", "head": "PersonX eats", "relation": "xWant", "tail": "to rest"}
    assert example(t, "comet") == {"prompt": "PersonX eats xWant [GEN]", "completion": " to rest"}
    assert example(t, "chat")["completion"] == [{"role": "assistant", "content": "to rest"}]
    q = {"kind": "rationale", "question": "2+2?", "answer": "4", "rationale": "Two and two make four."}
    assert example(q, "rationale")["completion"] == " Two and two make four. So the answer is 4."
    assert extract_answer("Two and two. So the answer is 4.", q) == "4"
    assert extract_answer("The answer is (B).", {"answer": "dog", "choices": ["cat", "dog"]}) == "dog"
    city = {"answer": "St. Louis", "choices": ["Chicago", "St. Louis"]}
    assert extract_answer("So the answer is St. Louis. It is on a river.", city) == "St. Louis"  # not "St"
    assert extract_answer("The answer is B. It is on a river.", city) == "St. Louis"
    assert extract_answer("So the answer is .5 cups.", {"answer": "0.5"}) == ".5"  # a half, not 5
    assert extract_answer("The answer is **B**.", city) == extract_answer("**Answer:** B", city) == "St. Louis"
    assert extract_answer("So the answer is 18. That is 3 more than 15.", {"answer": "18"}) == "18"
    assert extract_answer("To answer it, add.\nSo 2 + 3 = 5", {"answer": "5"}) == "5"  # "to answer" names none
    assert extract_answer("B\n\nExplanation: a river city.", city) == "St. Louis"  # no answer phrase: line 1
    qa = {"kind": "qa", "question": "2+2?", "answer": "4"}
    assert stop_of([t], "chat") == ("\n",) and stop_of([q], "chat") == () == stop_of([t], "rationale")  # reasoning
    assert stop_of([qa], "chat") == ()  # a question may be answered after reasoning, whatever the student learnt
    assert corpus_bleu(["to rest now"], [["to rest now", "sleep"]]) == pytest.approx(1.0)
    assert corpus_bleu(["xyz"], [["to rest"]]) == 0.0
    assert rouge_l("to go to bed", ["go to bed early", "eat"]) == pytest.approx(0.75)  # LCS: 3 of 4
    assert degenerate("") and degenerate("the the the the the the the") and not degenerate("to rest at home")


def test_a_snapshots_questions_are_one_case_each_checked_against_the_gold_the_way_their_dataset_is():
    from train.evaluate import group_triples

    def row(i, q, answer, domain, gold=None):
        return {"item_id": f"i{i}", "kind": "rationale", "question": q, "answer": answer, "choices": None,
                "domain": domain, "rationale": "r", "extra": json.dumps({"gold": gold} if gold else {})}

    rows = [row(1, "How many?", "17", "gsm8k", "18"), row(2, "How  many?", "18", "gsm8k", "18"),
            row(3, "Can a cat fly?", "yes", "strategyqa", "no"), row(4, "Is it red?", "yes", "jsonl"),
            row(5, "Is it red?", "no", "jsonl"), row(6, "Is it red?", "yes", "jsonl")]
    cases = group_triples(rows)
    assert [(c.item["question"], c.item["answer"], c.item["type"]) for c in cases] == [
        ("How many?", "18", "number"), ("Can a cat fly?", "no", "yesno"), ("Is it red?", "yes", "yesno")]
    assert check_answer("So the answer is 18.00.", cases[0].item)  # a number, not the string "18"
    assert check_answer("So the answer is No, it cannot.", cases[1].item)  # the dataset's gold, not the teacher's


def test_a_paired_difference_and_its_interval():
    from train.evaluate import paired_difference

    same = paired_difference([1, 0, 1, 1], [1, 0, 1, 1])
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "n": 4}
    better = paired_difference([1] * 50 + [0] * 50, [0] * 50 + [0] * 50)  # A accepts half the inputs B rejects
    assert better["diff"] == 0.5 and 0.35 < better["lo"] < 0.5 < better["hi"] < 0.65
    with pytest.raises(ValueError, match="same, non-empty inputs"):
        paired_difference([1, 0], [1])
    # a head's relations move together: resampled one by one they passed for independent draws, and the interval
    # was too narrow; resampled head by head it is as wide as ten draws allow
    a = np.repeat(np.random.default_rng(0).integers(0, 2, 10), 7)  # ten heads, seven relations each, alike
    heads = np.repeat(np.arange(10), 7)
    by_pair, by_head = paired_difference(a, np.zeros(70)), paired_difference(a, np.zeros(70), groups=heads)
    assert by_head["diff"] == by_pair["diff"] and by_head["groups"] == 10
    assert by_head["hi"] - by_head["lo"] > 2 * (by_pair["hi"] - by_pair["lo"])


def test_the_inputs_a_student_trained_on_are_those_of_its_own_split(atomic_db):
    """The card keeps the split under `config`; the lookup read a top-level key and always took "train"."""
    from corpus import snapshot_frame
    from train.evaluate import input_key, training_inputs

    db, _ = atomic_db
    with Store(db, read_only=True) as s:
        rows = snapshot_frame(s, "split").to_dicts()
        on_test = training_inputs(s, {"snapshot": "split", "config": {"split": "test"}})
    assert on_test == {input_key(r) for r in rows if r["split"] == "test"} != {input_key(r) for r in rows
                                                                             if r["split"] == "train"}


def test_exact_match_on_commonsenseqa_and_gsm8k(atomic_db, tiny_lm):
    db, _ = atomic_db
    for rel, fmt in (("csqa/train.jsonl", "csqa"), ("gsm8k/train.jsonl", "gsm8k")):
        p = run_skd("eval", str(tiny_lm), "--questions", str(shared_file(rel)), "--questions-format", fmt,
                    "--limit", "3", "--offset", "5", "--format", "rationale", "--max-tokens", "8", "--json", db=db,
                    check=True)
        r = json.loads(p.stdout)
        assert r["metrics"]["accuracy"]["n"] == 3 and "from 5" in r["config"]["inputs"]
        right = [check_answer(x["output"], x["input"]) for x in eval_samples(db, r["eval_id"])]
        assert r["metrics"]["accuracy"]["exact_match"] == pytest.approx(sum(map(bool, right)) / 3)


def test_compare_with_a_base_gives_each_measure_pair_by_pair_on_the_same_inputs(tmp_path):
    """`skd compare --base` puts beside each evaluation its difference from the base in critic acceptance and
    ROUGE-L on the same inputs, head by head; another critic's acceptance and other inputs are not compared."""
    from train.evaluate import differences, record_eval

    db = tmp_path / "c.duckdb"
    Store(db).close()
    inputs = [{"kind": "triple", "head": f"PersonX does thing {i // 2}", "relation": ("xWant", "xNeed")[i % 2]}
              for i in range(20)]
    refs = [[f"to rest after thing {i}", "to go home"] for i in range(20)]

    def stored(eval_id: str, outputs: list[str], score: float, critic: str = "judge", at: list | None = None) -> None:
        samples = [{"input": x, "references": r, "output": o, "critic_score": score}
                   for x, r, o in zip(at or inputs, refs, outputs, strict=True)]
        metrics = {"n": 20, "critic": {"n": 20, "threshold": 0.5, "acceptance": float(score >= 0.5)}}
        record_eval(db, eval_id, eval_id, metrics, {"critic": critic, "inputs": "refs.tsv"}, None, None, samples)
    stored("eval-teacher", ["nothing at all"] * 20, 0.2)
    stored("eval-student", [r[0] for r in refs], 0.9)  # every output is a reference, and accepted
    stored("eval-other-critic", [r[0] for r in refs], 0.9, critic="another")
    stored("eval-other-inputs", ["x"] * 20, 0.9, at=[x | {"relation": "xAttr"} for x in inputs])
    rows = {r["eval_id"]: r for r in json.loads(run_skd("compare", "--base", "eval-teacher", "--json", db=db,
                                                        check=True).stdout)}
    gain = rows["eval-student"]
    assert gain["critic vs base"] == {"diff": 1.0, "lo": 1.0, "hi": 1.0, "n": 20, "groups": 10}
    assert gain["ROUGE-L vs base"]["diff"] == pytest.approx(1.0) and gain["ROUGE-L vs base"]["groups"] == 10
    assert rows["eval-other-critic"]["critic vs base"] is None and rows["eval-other-critic"]["ROUGE-L vs base"]
    assert rows["eval-other-inputs"]["critic vs base"] is None is rows["eval-other-inputs"]["ROUGE-L vs base"]
    assert rows["eval-teacher"]["critic vs base"] is None
    table = run_skd("compare", "--base", "eval-teacher", db=db, check=True, env={"COLUMNS": "300"}).stdout
    assert "+1.000 [+1.000, +1.000]" in table
    p = run_skd("compare", "--base", "eval-nope", db=db)
    assert p.returncode != 0 and "no evaluation 'eval-nope'" in p.stderr and p.stderr.strip().count("\n") == 0
    # a question's reference is its gold answer: no ROUGE-L to compare; a triple without references is left out
    qa = [{"kind": "qa", "question": f"Q{i}?", "answer": "A"} for i in range(20)]
    stored("eval-qa-base", ["So the answer is B."] * 20, 0.2, at=qa)
    stored("eval-qa", ["So the answer is A."] * 20, 0.9, at=qa)
    refs[:10] = [[] for _ in range(10)]
    stored("eval-half-base", ["nothing at all"] * 20, 0.2, at=[x | {"relation": "xIntent"} for x in inputs])
    stored("eval-half", [r[0] if r else "y" for r in refs], 0.2, at=[x | {"relation": "xIntent"} for x in inputs])
    with Store(db, read_only=True) as s:
        assert set(differences(s, "eval-qa", "eval-qa-base")) == {"critic"}
        half = differences(s, "eval-half", "eval-half-base")
    assert half["ROUGE-L"]["n"] == 10 and half["ROUGE-L"]["diff"] == pytest.approx(1.0) and half["critic"]["diff"] == 0
