"""DDK domain mixtures and white-box distillation: the re-weighting rule on hand-computed losses, the
sampler following the weights, the KL term, and training runs on a tiny model with a real teacher."""

import json
import math

import pytest

from corpus import SnapshotRecipe, create_snapshot
from store import Store
from tests.conftest import atomic_corpus, run_skd
from tests.skd.test_hardening import one_line_error
from train import TrainConfig, fit
from train.mixture import Mixture, ddk_update, initial_weights, sampler
from train.student_trainer import kd_term


def test_ddk_rule_on_hand_computed_losses():
    # r = softmax(PPL_S / PPL_T): gaps e^(2-1) = 2.718 and e^0 = 1
    assert initial_weights([2.0, 1.0], [1.0, 1.0]) == pytest.approx([1 / (1 + math.exp(-1.718282)),
                                                                      1 - 1 / (1 + math.exp(-1.718282))])
    # psi = r * exp(lS / lT) = [0.5 e^2, 0.5 e^1]; r = 0.5 * psi / sum(psi) + 0.5 / 2
    share = math.exp(2) / (math.exp(2) + math.exp(1))
    assert ddk_update([0.5, 0.5], [2.0, 1.0], [1.0, 1.0], alpha=0.5) == pytest.approx(
        [0.5 * share + 0.25, 0.5 * (1 - share) + 0.25])
    assert sum(ddk_update([0.2, 0.3, 0.5], [1.0, 3.0, 2.0], [1.5, 1.0, 2.0], alpha=0.7)) == pytest.approx(1.0)


def test_the_mixture_shifts_toward_the_domain_the_student_is_worse_at():
    m = Mixture(["easy", "hard"], "ddk")
    m.teacher_loss = [1.0, 1.0]
    m.observe(0, [1.0, 1.0])
    assert m.weights == pytest.approx([0.5, 0.5])
    m.observe(10, [1.0, 3.0])
    first = m.weights[1]
    assert first == pytest.approx(0.5 * math.exp(3) / (math.exp(1) + math.exp(3)) + 0.25)
    m.observe(20, [1.0, 3.0])
    assert first < m.weights[1] < 0.75  # it keeps moving while the gap lasts; alpha = 0.5 keeps a uniform share
    assert min(m.weights) > 0.25
    flat = Mixture(["easy", "hard"], "uniform")
    flat.observe(0, [1.0, 3.0])
    assert flat.weights == [0.5, 0.5]
    # the sampler draws domains by the weights in effect at each batch
    m.history = [{"step": 0, "weights": [0.8, 0.2]}]
    draws = list(sampler([0] * 50 + [1] * 50, m, seed=1))
    assert len(draws) == 100 and 0.65 < sum(1 for i in draws if i < 50) / 100 < 0.95


def test_a_resumed_mixture_draws_what_an_uninterrupted_one_draws():
    """The loader fetches one batch ahead: the update at step 2 comes after batch 2 was drawn. A run resumed from
    step 2's checkpoint (its history holds the update) must draw batch 2 with the weights before it too."""
    m = Mixture(["a", "b"], "uniform")
    m.history = [{"step": 0, "weights": [1.0, 0.0]}]
    it = iter(sampler([0] * 8 + [1] * 8, m, seed=1, batch_size=2))
    drawn = [next(it) for _ in range(6)]  # batches 0 and 1 trained on, batch 2 fetched, then step 2 ends
    m.history.append({"step": 2, "weights": [0.0, 1.0]})
    uninterrupted = drawn + list(it)
    resumed = list(sampler([0] * 8 + [1] * 8, m, seed=1, batch_size=2))
    assert resumed == uninterrupted
    assert all(i < 8 for i in uninterrupted[:6]) and all(i >= 8 for i in uninterrupted[6:])


def test_the_kl_term_on_hand_computed_distributions():
    import torch

    # one sequence of 3 tokens, vocabulary 2; labels at positions 1 and 2, so logits 0 and 1 are scored
    student = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [9.0, 9.0]]])
    teacher = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [0.0, 9.0]]])
    labels = torch.tensor([[-100, 1, 1]])
    t = 2.0

    def kl(p_logits, q_logits):  # KL(p || q) of two logit pairs at temperature t
        p = torch.softmax(torch.tensor(p_logits) / t, -1)
        q = torch.softmax(torch.tensor(q_logits) / t, -1)
        return float((p * (p / q).log()).sum())

    expected = (kl([2.0, 0.0], [0.0, 0.0]) + kl([1.0, 0.0], [1.0, 0.0])) / 2 * t * t
    assert float(kd_term(student, teacher, labels, t)) == pytest.approx(expected, rel=1e-5)
    assert float(kd_term(student, teacher, labels, t, num_items=4)) == pytest.approx(expected / 2, rel=1e-5)
    assert float(kd_term(student, student.clone(), labels, 1.0)) == pytest.approx(0.0, abs=1e-7)
    wider = torch.cat([teacher, torch.full((1, 3, 3), -50.0)], -1)  # padded embedding rows are ignored
    assert float(kd_term(student, wider, labels, t)) == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def relations_db(tmp_path_factory):
    d = tmp_path_factory.mktemp("mix")
    db = atomic_corpus(d, 60)
    with Store(db) as s:
        create_snapshot(s, "all", SnapshotRecipe(seed=0))
    return db, d


def test_ddk_training_records_its_mixture_and_a_resumed_run_continues_it(relations_db, tiny_lm):
    db, d = relations_db
    base = {"snapshot": "all", "base": str(tiny_lm), "teacher": str(tiny_lm), "mixture": "ddk", "batch_size": 4,
            "mixture_every": 4, "mixture_holdout": 4, "save_steps": 4, "lr": 1e-3, "kd_weight": 0.2}
    card = fit(db, TrainConfig(out=d / "ddk", max_steps=8, **base))
    first = card["summary"]["mixture"]
    assert card["summary"]["schedules"] == [8]
    assert [h["step"] for h in first["history"]] == [0, 4, 8] and first["teacher"] == str(tiny_lm)
    assert len(first["domains"]) >= 3
    assert all(sum(h["weights"]) == pytest.approx(1.0, abs=1e-4) for h in first["history"])
    assert first["history"][1]["weights"] != first["history"][0]["weights"]  # DDK moved them
    assert (d / "ddk" / "mixture.png").stat().st_size > 1000
    saved = json.loads((d / "ddk" / "checkpoints" / "checkpoint-8" / "mixture.json").read_text())
    assert saved["history"] == first["history"]
    card = fit(db, TrainConfig(out=d / "ddk", max_steps=16, **base))
    second = card["summary"]["mixture"]
    assert card["summary"]["resumed_from"] == "checkpoint-8"
    assert card["summary"]["schedules"] == [8, 16]  # 8 steps decayed over 8, then over 16: not a fresh 16-step run
    assert second["history"][:3] == first["history"] and [h["step"] for h in second["history"]][3:] == [12, 16]
    assert second["teacher_loss"] == first["teacher_loss"]


def test_the_same_model_as_teacher_adds_no_kl(relations_db, tiny_lm):
    """With the student's own base as teacher, the KL term is zero at the first step: the loss is plain SFT's."""
    db, d = relations_db
    base = {"snapshot": "all", "base": str(tiny_lm), "batch_size": 4, "max_steps": 1, "seed": 3}
    plain = fit(db, TrainConfig(out=d / "plain", **base))["summary"]["first_loss"]
    kd = fit(db, TrainConfig(out=d / "kd", teacher=str(tiny_lm), kd_weight=0.5, **base))["summary"]["first_loss"]
    assert kd == pytest.approx(plain, rel=1e-4)


def test_another_teacher_adds_its_kl_with_gradient_accumulation(relations_db, tiny_lm, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    other = tmp_path / "other"
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(other)
    db, d = relations_db
    base = {"snapshot": "all", "base": str(tiny_lm), "batch_size": 2, "grad_accum": 2, "max_steps": 1, "seed": 3}
    plain = fit(db, TrainConfig(out=d / "plain2", **base))["summary"]["first_loss"]
    summary = fit(db, TrainConfig(out=d / "kd2", teacher=str(other), kd_weight=0.5, **base))["summary"]
    assert summary["first_loss"] > plain + 0.01 and math.isfinite(summary["first_loss"])
    assert summary["teacher"] == str(other)  # the KL term's teacher is on the card, with no mixture too


def test_a_teacher_with_another_tokenizer_is_one_line(relations_db, tiny_lm):
    db, d = relations_db
    p = run_skd("train", "--snapshot", "all", "--out", str(d / "bad"), "--base", str(tiny_lm), "--mixture", "ddk",
                "--teacher", "all-minilm-l6-v2", "--max-steps", "1", db=db)
    one_line_error(p, "do not share a tokenizer")
