"""What a teacher's tokens cost: a price table per model, in dollars per million tokens, with the discount a
provider's batch API gives (half, at OpenAI and Anthropic)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from store import SkdError


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    input: float = Field(ge=0, description="Dollars per million prompt tokens.")
    output: float = Field(ge=0, description="Dollars per million completion tokens.")
    cached_input: float | None = Field(None, ge=0, description="Dollars per million prompt tokens the provider "
                                                               "read from its cache (default: the input price).")
    batch_discount: float = Field(0.5, gt=0, le=1, description="Share of the price a batch job pays.")

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None, batch: bool = False,
             cached_tokens: int | None = None) -> float | None:
        """Dollars for the tokens (the cached part of the prompt at its own price: few-shot prompts share long
        prefixes); None when the provider said nothing of usage (unknown, not free)."""
        if prompt_tokens is None and completion_tokens is None:
            return None
        cached = min(cached_tokens or 0, prompt_tokens or 0)
        cached_price = self.input if self.cached_input is None else self.cached_input
        dollars = (((prompt_tokens or 0) - cached) * self.input + cached * cached_price
                   + (completion_tokens or 0) * self.output) / 1e6
        return dollars * (self.batch_discount if batch else 1.0)


def price_for(prices: dict[str, Any] | None, *models: str) -> Price | None:
    """The price of the first of `models` (the served name, then skd's name) that the table lists."""
    if prices is not None and not isinstance(prices, dict):
        raise SkdError(f"teacher prices: expected a table of models, e.g. [teacher.prices.\"gpt-4o-mini\"], "
                       f"got {type(prices).__name__}")
    for name in models:
        if prices and name in prices:
            try:
                return Price.model_validate(prices[name])
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(str(x) for x in err["loc"])
                raise SkdError(f"teacher prices.{name}{'.' + where if where else ''}: {err['msg']}") from None
    return None
