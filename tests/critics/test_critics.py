import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from transformers import AutoTokenizer

from critics import RECALL_GRID, CriticConfig, load_critic, train_critic
from critics.model import score_rows
from critics.train import load_labels, split
from critics.verbalize import verbalize_rows
from store import SkdError, Store, import_labels, ingest_file
from store.labels import read_judgements
from tests.conftest import ROOT, kill_when, run_skd, shared_file


@pytest.fixture(scope="module")
def ckbp_small(tmp_path_factory):
    """1,500 CKBP v1 crowd labels (real human judgements) as a small label file."""
    src = shared_file("ckbp/ckbp1_crowd.csv").read_text().splitlines()
    path = tmp_path_factory.mktemp("labels") / "ckbp_small.csv"
    path.write_text("\n".join(src[:1501]) + "\n")
    return path


@pytest.fixture(scope="module")
def embedding_critic(tmp_path_factory, ckbp_small):
    d = tmp_path_factory.mktemp("emb")
    db = d / "c.duckdb"
    with Store(db) as s:
        import_labels(s, ckbp_small, "ckbp")
        card = train_critic(s.path, "emb", CriticConfig(mode="embedding"), d / "emb")
    return db, d / "emb", card


def test_embedding_critic_artifact_thresholds_and_fresh_process(embedding_critic):
    db, path, card = embedding_critic
    assert {p.name for p in path.iterdir()} == {"critic.json", "encoder", "head.safetensors"}
    assert not [p for p in path.rglob("*") if p.suffix in (".bin", ".pkl", ".pt", ".pickle")]
    assert card["metrics"]["dev"]["auc"] > 0.6 and card["label_counts"]["1"] > 0
    with Store(db, read_only=True) as s:
        df = load_labels(s, None)
        train, dev = split(df, 0.15, 0)
    assert not set(train["head"].str.to_lowercase()) & set(dev["head"].str.to_lowercase())  # no head in both
    scores = load_critic(path).score(verbalize_rows(dev.to_dicts()))
    y = dev["label"].to_numpy()
    for target in (0.5, 0.8):  # thresholds meet their recall target on the data they were chosen on
        t = card["thresholds"][f"recall@{target:g}"]
        assert ((scores >= t) & (y == 1)).sum() / (y == 1).sum() >= target
    code = ("import sys, json; from critics import load_critic; "
            "print(json.dumps(load_critic(sys.argv[1]).score(json.loads(sys.argv[2])).tolist()))")
    texts = verbalize_rows(dev.head(20).to_dicts())
    proc = subprocess.run([sys.executable, "-c", code, str(path), json.dumps(texts)], capture_output=True,
                          text=True, check=True, cwd=ROOT)
    assert np.allclose(json.loads(proc.stdout), scores[:20], atol=1e-6)


def test_pair_features_tell_a_tail_that_fits_its_head_from_a_swapped_one(tmp_path):
    """Human ATOMIC-2020 tails against tail swaps (another head's tail, same relation), on heads no critic saw:
    one vector of the whole triple barely tells them apart; the head and tail embedded apart, with their product,
    do. Measured at 0.60 against 0.74 with these 300 lines."""
    lines = shared_file("atomic2020/human_tuples.tsv").read_text().splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(lines[:300]) + "\n")
    (tmp_path / "held.tsv").write_text("\n".join(lines[300:600]) + "\n")
    held, _ = read_judgements(tmp_path / "held.tsv", "atomic2020")
    held = [r | {"kind": "triple"} for r in held.to_pylist()]
    y = np.array([r["label"] for r in held])
    assert 0.4 < y.mean() < 0.6  # a swap for (nearly) every human tail
    with Store(tmp_path / "c.duckdb") as s:
        import_labels(s, tmp_path / "train.tsv", "atomic2020")
    auc = {}
    for pair in (False, True):
        name = f"pair-{pair}".lower()
        card = train_critic(tmp_path / "c.duckdb", name, CriticConfig(mode="embedding", pair=pair), tmp_path / name)
        critic = load_critic(tmp_path / name)
        assert card["config"]["pair"] is pair
        auc[pair] = roc_auc_score(y, score_rows(critic, held))
    assert auc[True] > 0.68 and auc[True] > auc[False] + 0.08, auc
    with pytest.raises(SkdError, match="score item rows"):  # its parts cannot be read back out of one text
        critic.score(verbalize_rows(held[:2]))
    with pytest.raises(ValueError, match="embedding mode"):
        CriticConfig(mode="finetune", pair=True)


def test_finetuned_critic_trains_and_reloads(tmp_path, ckbp_small):
    with Store(tmp_path / "c.duckdb") as s:
        import_labels(s, ckbp_small, "ckbp")
        steps = []
        card = train_critic(s.path, "ft", CriticConfig(mode="finetune", max_steps=24, eval_steps=12, batch_size=16,
                                                  lr=1e-4), tmp_path / "ft", on_step=lambda k, n: steps.append((k, n)))
        train, dev = split(load_labels(s, None), 0.15, 0)
    assert steps == [(k, 24) for k in range(1, 25)]  # the progress display follows every step
    # on the command line, --json prints the card alone: the Trainer's log lines go nowhere near stdout
    p = run_skd("critic", "train", "ft2", "--mode", "finetune", "--max-steps", "2", "--eval-steps", "2",
                "--batch-size", "16", "--json", db=tmp_path / "c.duckdb", check=True)
    assert json.loads(p.stdout)["name"] == "ft2"
    # No max_length given: the card records one that fits 99% of the training texts, and the critic uses it.
    tok = AutoTokenizer.from_pretrained(tmp_path / "ft" / "model")
    lengths = np.array([len(ids) for ids in tok(verbalize_rows(train.to_dicts()))["input_ids"]])
    fitted = card["config"]["max_length"]
    assert fitted % 8 == 0 and (lengths <= fitted).mean() >= 0.99 and fitted < lengths.max() + 8
    assert load_critic(tmp_path / "ft").max_length == fitted
    assert (tmp_path / "ft" / "model" / "model.safetensors").is_file()
    assert not [p for p in (tmp_path / "ft").rglob("*") if p.suffix in (".bin", ".pkl", ".pt")]
    a = load_critic(tmp_path / "ft").score(verbalize_rows(dev.head(16).to_dicts()))
    b = load_critic(tmp_path / "ft").score(verbalize_rows(dev.head(16).to_dicts()))
    assert np.allclose(a, b) and ((a >= 0) & (a <= 1)).all()
    dev_scores = load_critic(tmp_path / "ft").score(verbalize_rows(dev.to_dicts()))
    assert card["metrics"]["dev"]["auc"] == pytest.approx(roc_auc_score(dev["label"].to_numpy(), dev_scores),
                                                          abs=1e-3)  # the card's AUC is the saved critic's


def test_a_decoder_base_without_a_pad_token_fine_tunes_and_scores_in_batches(tmp_path, ckbp_small, tiny_lm):
    """A decoder classifies from its last token before the padding: with no pad token in its tokenizer (GPT-2,
    many Llamas) the critic pads with end-of-text and tells the model so, and a text scores the same alone as in
    a batch of longer ones."""
    import shutil

    base = tmp_path / "decoder"
    shutil.copytree(tiny_lm, base)
    tok = AutoTokenizer.from_pretrained(base)
    tok.pad_token = None
    tok.save_pretrained(base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(config | {"pad_token_id": None}))
    assert AutoTokenizer.from_pretrained(base).pad_token is None
    with Store(tmp_path / "c.duckdb") as s:
        import_labels(s, ckbp_small, "ckbp")
        train_critic(s.path, "dec", CriticConfig(mode="finetune", base=str(base), max_steps=4, eval_steps=2,
                                                 batch_size=8), tmp_path / "dec")
        texts = verbalize_rows(load_labels(s, None).head(12).to_dicts())
    critic = load_critic(tmp_path / "dec")
    assert critic.tokenizer.pad_token == critic.tokenizer.eos_token
    batched = critic.score(texts, batch_size=12)
    alone = np.array([critic.score([t])[0] for t in texts])
    assert len({len(critic.tokenizer(t)["input_ids"]) for t in texts}) > 1  # the batch really pads
    assert np.allclose(batched, alone, atol=2e-3)


def test_bad_label_sets_fail_with_one_line(tmp_path):
    one = tmp_path / "one.csv"
    one.write_text("head,relation,tail,label\nPersonX a,xAttr,b,1\nPersonX c,xAttr,d,1\n")
    db = tmp_path / "c.duckdb"
    with Store(db) as s:
        with pytest.raises(SkdError, match="no labels"):
            train_critic(s.path, "x", CriticConfig(mode="embedding"), tmp_path / "x")
        import_labels(s, one, "ckbp")
        with pytest.raises(SkdError, match="only one class"):
            train_critic(s.path, "x", CriticConfig(mode="embedding"), tmp_path / "x")
    proc = run_skd("critic", "train", "x", "--mode", "embedding", db=db)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "only one class" in proc.stderr
    proc = run_skd("critic", "score", "nope", db=db)
    assert proc.returncode == 2 and "no critic named 'nope'" in proc.stderr


def test_scoring_resumes_after_a_kill(embedding_critic, tmp_path):
    src_db, path, _ = embedding_critic
    db = tmp_path / "corpus.duckdb"
    with Store(src_db, read_only=True) as s:
        critic = s.query("SELECT * FROM critics").row(0, named=True)
    with Store(db) as s:
        ingest_file(s, shared_file("atomic2020/human_tuples.tsv"), "atomic2020")
        s.con.execute("INSERT INTO critics (critic_id, name, path, mode, metrics, thresholds) VALUES (?,?,?,?,?,?)",
                      [critic["critic_id"], "emb", critic["path"], "embedding", critic["metrics"],
                       critic["thresholds"]])
        n_items = s.scalar("SELECT count(*) FROM items")
    args = [sys.executable, "-m", "skd", "critic", "score", "emb", "--chunk", "500", "-q", "--db", str(db)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, db, "SELECT count(*) FROM scores", 1000)
    out = run_skd("critic", "score", "emb", "--json", "-q", db=db, check=True)
    summary = json.loads(out.stdout)
    assert summary["already_scored"] >= 1000 and summary["already_scored"] + summary["scored"] == n_items
    with Store(db, read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM scores") == n_items
        assert s.scalar("SELECT count(DISTINCT item_id) FROM scores") == n_items
    again = json.loads(run_skd("critic", "score", "emb", "--json", "-q", db=db, check=True).stdout)
    assert again["scored"] == 0


def test_a_critic_that_scores_nan_stores_nothing_and_says_so(embedding_critic, tmp_path):
    """NaN parameters (a diverged fine-tune) score NaN, and DuckDB sorts NaN above every number: a snapshot cut at
    any threshold kept every such item."""
    import shutil

    from safetensors.torch import load_file, save_file

    src_db, path, card = embedding_critic
    broken = tmp_path / "nan"
    shutil.copytree(path, broken)
    head = load_file(broken / "head.safetensors")
    save_file({k: v * float("nan") for k, v in head.items()}, broken / "head.safetensors")
    db = tmp_path / "corpus.duckdb"
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"head": f"PersonX eats {k}", "relation": "xWant", "tail": "to rest"}) + "\n"
                             for k in range(5)))
    with Store(db) as s:
        ingest_file(s, items, "jsonl")
        s.con.execute("INSERT INTO critics (critic_id, name, path, mode, metrics, thresholds) VALUES (?,?,?,?,?,?)",
                      [card["critic_id"], "nan", str(broken), "embedding", "{}", "{}"])
    p = run_skd("critic", "score", "nan", "-q", db=db)
    assert p.returncode != 0 and "gave 5 of 5 items no finite score" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    with Store(db, read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM scores") == 0


def test_eval_command_reports_against_held_out_labels(embedding_critic):
    db, _, _ = embedding_critic
    proc = run_skd("critic", "eval", "emb", "--labels", str(shared_file("ckbp/ckbp2_dev.csv")), "--format", "ckbp",
                   "--json", db=db, check=True)
    rep = json.loads(proc.stdout)
    assert rep["n"] > 900 and 0.5 < rep["auc"] < 1 and len(rep["kept_vs_acceptable"]) == 10
    assert set(rep["thresholds"]) == {f"recall@{r:g}" for r in RECALL_GRID}
    assert 0 <= rep["calibration_error"] <= 1  # reported on labels it was not calibrated on


def test_llm_judge_scores_by_probability_of_yes(tmp_path, ckbp_small, smollm2):
    small = tmp_path / "tiny.csv"
    small.write_text("\n".join(ckbp_small.read_text().splitlines()[:301]) + "\n")
    with Store(tmp_path / "c.duckdb") as s:
        import_labels(s, small, "ckbp")
        card = train_critic(s.path, "judge", CriticConfig(mode="llm-judge", dev_fraction=0.3), tmp_path / "judge")
    assert card["base_model"] == "smollm2-135m-instruct"
    assert set(card["thresholds"]) == {f"recall@{r:g}" for r in RECALL_GRID}
    judge = load_critic(tmp_path / "judge")
    texts = ["PersonX eats dinner. as a result, PersonX feels full",
             "PersonX eats dinner. as a result, PersonX feels purple triangle"]
    scores = [float(judge.score([t])[0]) for t in texts]  # one at a time: no padding
    # each score is P(yes) / (P(yes) + P(no)) of the next token, computed here from the model itself, through
    # the dev calibration the card records
    import torch
    from transformers import AutoModelForCausalLM

    from critics.calibration import apply

    lm = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    for text, score in zip(texts, scores, strict=True):
        ids = judge.tokenizer(judge.render(text), return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            p = torch.softmax(lm(**ids).logits[0, -1].float(), -1)
        yes, no = p[judge.yes].sum(), p[judge.no].sum()
        assert score == pytest.approx(float(apply(np.asarray([float(yes / (yes + no))]), card["calibration"])[0]),
                                      abs=1e-4)
    assert len(set(judge.yes) & set(judge.no)) == 0
