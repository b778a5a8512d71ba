"""Soft labels: a critic trained toward its annotators' vote share (`--soft-labels`) learns how sure they were,
where the majority labels alone cannot tell a 3-of-3 item from a 2-of-3 one. Real label files, the embedded
MiniLM."""

import json

import numpy as np
import pytest
import torch

from critics import CriticConfig, load_critic, train_critic
from critics.train import GroupOrder, load_labels, rank_loss, targets
from store import Store, import_labels
from tests.conftest import run_skd

SURE = ["to eat food", "to drink water", "to sleep well", "to rest", "to go home", "to call a friend"]
SPLIT = ["purple mountain singing", "the number seven", "a cold fridge door", "seventeen chairs",
         "blue cheese moon", "a broken pencil"]
NO = ["xqz vrt plm", "aaaa bbbb cccc", "zzz zzz zzz", "qwerty uiop", "lorem ipsum dolor", "asdf ghjk"]


@pytest.fixture
def voted(tmp_path):
    """Three annotators per triple: SURE tails accepted by all three, SPLIT tails by two (majority: acceptable,
    like SURE), NO tails by none. One row per annotator, as a crowd file has them."""
    rows = []
    for i in range(30):
        head = f"PersonX does thing {i}"
        for tails, yes in ((SURE, 3), (SPLIT, 2), (NO, 0)):
            for t in tails[i % 3::3]:
                rows += [{"kind": "triple", "head": head, "relation": "xWant", "tail": t, "label": int(k < yes)}
                         for k in range(3)]
    path = tmp_path / "votes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = tmp_path / "c.duckdb"
    with Store(db) as s:
        import_labels(s, path, "jsonl", source="crowd")
    return db


def test_targets_are_the_vote_share_only_when_asked(voted):
    with Store(voted) as s:
        df = load_labels(s, None)
    share = {t: p for t, p in zip(df["tail"], targets(df, True), strict=True)}
    assert {share[t] for t in SURE} == {1.0} and {share[t] for t in NO} == {0.0}
    assert {round(float(share[t]), 4) for t in SPLIT} == {0.6667}
    assert set(targets(df, CriticConfig().soft_labels).tolist()) == {0.0, 1.0}  # the majority labels by default
    assert set(df.filter(df["tail"].is_in(SPLIT))["label"]) == {1}


def sure_minus_split(path) -> float:
    """How much higher the critic puts unanimous tails than split ones, in log-odds (the head saturates in
    probability: both kinds score above 0.95 however it was trained)."""
    s = load_critic(path).score([f"PersonX rests. as a result, PersonX wants {t}" for t in (*SURE, *SPLIT)])
    logit = np.log(s) - np.log1p(-s)
    return float(logit[:len(SURE)].mean() - logit[len(SURE):].mean())


def test_soft_labels_rank_unanimous_above_split_votes(voted, tmp_path):
    gaps = {}
    for name, soft in (("hard", False), ("soft", True)):
        cfg = CriticConfig(mode="embedding", soft_labels=soft, dev_fraction=0.3, calibrate=False)
        card = train_critic(voted, name, cfg, tmp_path / name)
        assert card["config"]["soft_labels"] is soft  # the card records how it was trained
        gaps[name] = sure_minus_split(tmp_path / name)
    # both majority labels say "acceptable": only the vote share separates the two kinds of tail
    assert gaps["soft"] > 1.5 and gaps["soft"] > gaps["hard"] + 1.5, gaps


def test_soft_label_finetune_keeps_dev_on_majority_labels(voted, tmp_path):
    p = run_skd("critic", "train", "ft", "--mode", "finetune", "--soft-labels", "--max-steps", "4",
                "--eval-steps", "2", "--batch-size", "16", "--dev-fraction", "0.3", "--json", db=voted, check=True)
    card = json.loads(p.stdout)
    assert card["config"]["soft_labels"] is True
    dev = card["metrics"]["dev"]
    assert dev["auc"] is not None and 0 < dev["positive_rate"] < 1
    # dev holds majority labels: SURE and SPLIT are both acceptable, so two thirds of dev is positive
    assert abs(dev["positive_rate"] - 2 / 3) < 0.01
    assert np.isfinite(load_critic(tmp_path / "c.duckdb.d" / "critics" / "ft").score(["PersonX eats. to rest"])).all()


def test_rank_loss_orders_pairs_within_a_group_only():
    target = torch.tensor([1.0, 0.0, 2 / 3, 1 / 3])
    group = torch.tensor([0, 0, 1, 1])
    right, wrong = torch.tensor([3.0, -3.0, 3.0, -3.0]), torch.tensor([-3.0, 3.0, -3.0, 3.0])
    assert rank_loss(right, target, group) < 0.01 < 5 < rank_loss(wrong, target, group)
    # a pair across groups is never ranked: item 0 below item 3 costs nothing
    assert rank_loss(torch.tensor([-1.0, -9.0, 9.0, 1.0]), target, group) < 0.001
    assert rank_loss(right, torch.ones(4), group) == 0  # no pair differs: nothing to rank
    # a wide gap in votes weighs more than a narrow one: the 3-of-3 over 0-of-3 pair dominates
    only_wide_wrong = rank_loss(torch.tensor([-1.0, 1.0, 1.0, -1.0]), target, group)
    only_narrow_wrong = rank_loss(torch.tensor([1.0, -1.0, -1.0, 1.0]), target, group)
    assert only_wide_wrong > only_narrow_wrong


def test_group_order_keeps_groups_together_and_reshuffles_them():
    groups = [3, 1, 3, 2, 1, 3, 0, 2]
    order = GroupOrder(groups, seed=0)
    epochs = [list(order) for _ in range(6)]
    for seen in epochs:
        assert sorted(seen) == list(range(len(groups)))  # every label once
        runs = [groups[i] for i in seen]
        assert len([g for k, g in enumerate(runs) if k == 0 or g != runs[k - 1]]) == 4  # each group contiguous
    assert len({tuple(e) for e in epochs}) > 1  # a new order of groups each epoch


def test_rank_weight_finetune_trains_and_is_recorded(voted, tmp_path):
    p = run_skd("critic", "train", "ranked", "--mode", "finetune", "--soft-labels", "--rank-weight", "1",
                "--max-steps", "4", "--eval-steps", "2", "--batch-size", "16", "--dev-fraction", "0.3", "--json",
                db=voted, check=True)
    card = json.loads(p.stdout)
    assert card["config"]["rank_weight"] == 1.0 and card["metrics"]["dev"]["auc"] is not None


def test_rank_weight_outside_a_finetune_is_one_line(voted):
    p = run_skd("critic", "train", "ranked", "--mode", "embedding", "--rank-weight", "1", db=voted)
    assert p.returncode != 0 and "rank_weight ranks only while fine-tuning" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_freeze_embeddings_trains_all_but_the_token_embeddings(voted, tmp_path):
    """`--freeze-embeddings` (for EmbeddingGemma, whose 262k-token embeddings are two thirds of it): the saved
    critic has the base's token embeddings exactly, and trained layers; outside a fine-tune it is one line."""
    from safetensors.torch import load_file

    from store import MINILM, resolve_model

    p = run_skd("critic", "train", "frozen", "--mode", "finetune", "--freeze-embeddings", "--max-steps", "4",
                "--eval-steps", "2", "--batch-size", "16", "--dev-fraction", "0.3", "--lr", "1e-3", "--json",
                db=voted, check=True)
    assert json.loads(p.stdout)["config"]["freeze_embeddings"] is True
    base = load_file(f"{resolve_model(MINILM)}/model.safetensors")
    tuned = load_file(str(voted) + ".d/critics/frozen/model/model.safetensors")
    word = next(k for k in base if k.endswith("word_embeddings.weight"))
    assert torch.equal(tuned["bert." + word.removeprefix("bert.")].float(), base[word].float())
    layer = next(k for k in base if k.endswith("layer.0.attention.self.query.weight"))
    assert not torch.equal(tuned["bert." + layer.removeprefix("bert.")].float(), base[layer].float())
    p = run_skd("critic", "train", "frozen2", "--mode", "embedding", "--freeze-embeddings", db=voted)
    assert p.returncode != 0 and "freeze_embeddings is for fine-tuning" in p.stderr and "Traceback" not in p.stderr


def test_a_negative_or_all_zero_source_weight_is_refused(voted):
    with pytest.raises(ValueError, match="source weights must be at least 0"):
        CriticConfig(source_weights={"crowd": -1.0})  # training would maximise that source's loss
    for w in (float("inf"), float("nan")):  # every weight NaN once scaled to mean 1
        with pytest.raises(ValueError, match="at least 0 and finite"):
            CriticConfig(source_weights={"crowd": w})
    p = run_skd("critic", "train", "zero", "--mode", "embedding", "--source-weights", "crowd=0", db=voted)
    assert p.returncode != 0 and "every training label's source weighs 0 (crowd)" in p.stderr  # not a NaN loss
    assert not list(voted.parent.glob("c.duckdb.d/critics/.zero.*"))  # the failed training left nothing half built
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
