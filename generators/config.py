"""How a generation run is configured: the one definition behind `skd generate`'s options and the pipeline's
[generate] table (the recipe's own config is the recipe's model)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from store.models import SMOLLM2


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teacher: str = Field(SMOLLM2, description="Teacher model: HF id, local path or the embedded SmolLM2.")
    backend: Literal["transformers", "vllm", "openai", "openai-batch"] = Field(
        "transformers", description="Teacher backend (openai-batch: the provider's batch API, at its batch price).")
    limit: int | None = Field(None, gt=0, description="Generate for at most this many requests.")
    seed: int = Field(0, description="Run seed; every request's seed derives from it.")
    batch_size: int = Field(32, ge=1, description="Requests per batch (and per staging shard).")
