"""The cut: which score a critic's accepted items reach. A critic stores its dev thresholds at a grid of
recalls; a cut names one of them (or a raw score). The default is written here once, and `skd snapshot`,
the pipeline and evaluation's acceptance all cut through `threshold_of`, so a threshold means one thing."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from store import SkdError

# Every critic chooses a dev threshold at each of these recalls (unless told otherwise), so changing a
# snapshot's cut retrains nothing.
RECALL_GRID = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
DEFAULT_RECALL = 0.8


class CriticCut(BaseModel):
    """Keep items the critic scores at or above its dev threshold for a recall, or above a raw score."""

    model_config = ConfigDict(extra="forbid")
    threshold_at_recall: float | None = Field(None, gt=0, le=1, description=(
        f"Keep items above the critic's dev threshold reaching this recall [default: {DEFAULT_RECALL}]."))
    min_score: float | None = Field(None, ge=0, le=1, description="... or above this critic score.")
    per_relation: bool = Field(False, description=(
        "Keep the same share of every relation (kind, for items without one): the share the cut keeps over all "
        "of them, the best-scored of each. A critic with no labels of a relation can score all of it low; "
        "this keeps that relation's best instead of dropping it."))
    per_prompt: int | None = Field(None, gt=0, description=(
        "Keep at most this many of each prompt's items (a head and relation, a question), the best-scored: best of "
        "N, for a teacher sampled several times a prompt, after the cut (so a prompt whose items all fall below "
        "it keeps none; `--min-score 0` keeps each prompt's best). `skd critic eval` reports how often the top pick "
        "is acceptable."))


def threshold_of(critic: dict[str, Any], recall: float | None = None, min_score: float | None = None) -> float:
    """The score threshold of a registered critic (a `store.critics.get` row) for this cut."""
    if min_score is not None:
        return float(min_score)
    recall = DEFAULT_RECALL if recall is None else recall
    thresholds = critic.get("thresholds") or {}
    key = f"recall@{recall:g}"
    if key not in thresholds:
        raise SkdError(f"critic {critic['name']!r} has no threshold at recall {recall:g}; it has "
                       f"{', '.join(thresholds) or 'none'} (or give --min-score)")
    return float(thresholds[key])
