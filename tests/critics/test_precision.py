"""A saved critic scores at the precision its dev thresholds were chosen at."""

import torch

from critics.model import card_dtype


def test_a_critic_scores_at_the_precision_its_card_records(monkeypatch):
    monkeypatch.setenv("SKD_PRECISION", "bfloat16")  # a machine with native bfloat16
    assert card_dtype({"precision": "bfloat16"}) == torch.bfloat16
    assert card_dtype({"precision": "float32"}) == torch.float32
    assert card_dtype({}) == torch.float32  # a card from before precision was recorded: float32, as then
    monkeypatch.setenv("SKD_PRECISION", "float32")  # a machine that would only emulate bfloat16
    assert card_dtype({"precision": "bfloat16"}) == torch.float32
