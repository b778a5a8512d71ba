"""The shapes that flow through generation: sampling parameters, requests, completions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from store import SkdError


class Constraint(BaseModel):
    """Constrained decoding (vLLM's structured outputs; xgrammar on transformers): one of the four."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    json_schema: dict[str, Any] | None = Field(None, description="A JSON schema the output must follow.")
    regex: str | None = Field(None, description="A regular expression the output must match.")
    choice: list[str] | None = Field(None, description="The output is exactly one of these strings.")
    grammar: str | None = Field(None, description="An EBNF grammar (GBNF style, `root ::= ...`) the output follows.")

    @model_validator(mode="after")
    def _one(self) -> Constraint:
        if sum(x is not None for x in (self.json_schema, self.regex, self.choice, self.grammar)) != 1:
            raise ValueError("give exactly one of json_schema, regex, choice, grammar")
        return self


MAX_CLAUSES = 4  # include clauses may come in any order: the grammar spells out every order (4! = 24)


class Lexical(BaseModel):
    """NeuroLogic's lexical constraints: each `include` clause is one word or phrase in its alternative forms
    (any one form satisfies it) and must appear in the output as whole words; no `exclude` word may appear.
    Enforced while decoding (a grammar for `include`, banned tokens for `exclude`) on every backend, and
    checked on every completion, so an output that ran out of tokens first is a recorded failure."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    include: tuple[tuple[str, ...], ...] = Field((), description="Clauses; each a tuple of alternative forms.")
    exclude: tuple[str, ...] = Field((), description="Words the output must not contain.")
    boost: float = Field(0.0, ge=0.0, le=10.0, description="Logit bias on the first token of each required "
                                                           "word until it appears: a small teacher that the "
                                                           "grammar only keeps from stopping may never write it.")

    @model_validator(mode="after")
    def _check(self) -> Lexical:
        if not self.include and not self.exclude:
            raise ValueError("a lexical constraint needs include or exclude words")
        if len(self.include) > MAX_CLAUSES:
            raise ValueError(f"at most {MAX_CLAUSES} include clauses (every order is part of the grammar)")
        words = [w for clause in self.include for w in clause] + list(self.exclude)
        if any(not w.strip() or "\n" in w for w in words) or any(not clause for clause in self.include):
            raise ValueError("include and exclude words must be non-empty single-line strings")
        banned = {w.lower() for w in self.exclude}
        for clause in self.include:
            if all(w.lower() in banned for w in clause):
                raise ValueError(f"{clause[0]!r} is both required and excluded: no output can satisfy it")
        return self


class Sampling(BaseModel):
    """Call-time sampling parameters (OpenAI/vLLM semantics)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int = Field(1, ge=1, le=256, description="Samples per prompt.")
    temperature: float = Field(1.0, ge=0.0, le=5.0, description="0 means greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(64, ge=1, le=32768, description="New tokens per sample.")
    stop: tuple[str, ...] = Field((), description="Strings that end a sample (not included in it).")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, description="Per-request seed; derived from the run seed when unset.")
    logprobs: bool = Field(False, description="Record the cumulative log-probability of each sample.")
    constraint: Constraint | None = None
    lexical: Lexical | None = None

    @model_validator(mode="after")
    def _combinable(self) -> Sampling:
        if self.constraint is not None and self.lexical is not None and self.lexical.include:
            raise ValueError("include words cannot be combined with a json_schema/regex/choice constraint "
                             "(no engine intersects two grammars); put the words in the regex instead")
        return self

    def key(self) -> dict[str, Any]:
        key = self.model_dump(mode="json", exclude_defaults=False)
        if self.lexical is None:  # requests from before lexical constraints existed keep their ids
            del key["lexical"]
        return key


def stable_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:length]


def derive_seed(run_seed: int, *parts: Any) -> int:
    """A per-request seed that depends only on the run seed and the request's content, so results do not
    depend on batch size, order or which requests were already done."""
    return int(stable_hash([run_seed, *parts], 8), 16) & 0x7FFFFFFF


@dataclass(frozen=True)
class Request:
    """One prompt for the teacher. `meta` carries recipe data for parsing; it is not part of the key."""
    model: str
    sampling: Sampling
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None  # (role, content) pairs for chat
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a request has either a prompt or chat messages")

    @property
    def prompt_text(self) -> str:
        """The prompt as stored: the raw prompt, or the chat messages as JSON."""
        if self.prompt is not None:
            return self.prompt
        return json.dumps([{"role": r, "content": c} for r, c in self.messages], ensure_ascii=False)

    @property
    def prompt_hash(self) -> str:
        return stable_hash(self.prompt_text)

    @property
    def request_id(self) -> str:
        """Hash of model, prompt, sampling parameters and seed: the unit of resume."""
        return stable_hash({"model": self.model, "prompt": self.prompt_text, "sampling": self.sampling.key()})

    def chat(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages or ()]


@dataclass
class Completion:
    text: str
    index: int = 0
    finish_reason: str | None = None
    n_tokens: int | None = None
    logprob: float | None = None


class Response(list):
    """A request's completions (a list, as every backend returns) and what the request cost: the provider's
    token counts (`usage`, not shares of it) and, where the teacher has a price, the cost in dollars."""

    def __init__(self, completions=(), prompt_tokens: int | None = None, completion_tokens: int | None = None,
                 cost: float | None = None, cached_tokens: int | None = None):
        super().__init__(completions)
        self.prompt_tokens, self.completion_tokens, self.cost = prompt_tokens, completion_tokens, cost
        self.cached_tokens = cached_tokens  # of the prompt tokens, those the provider read from its cache


def usage_of(completions: list[Completion]) -> tuple[int | None, int | None, float | None]:
    """(prompt tokens, completion tokens, cost) of one request's completions, whatever backend made them."""
    generated = [c.n_tokens for c in completions if c.n_tokens is not None]
    fallback = sum(generated) if generated else None
    return (getattr(completions, "prompt_tokens", None),
            getattr(completions, "completion_tokens", None) or fallback, getattr(completions, "cost", None))


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Text up to the first stop string (backends that keep the stop string in their output)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


REFUSED = "refused"  # the finish reason of a request its endpoint refused (a prompt past the context, say)


def refused(why: str) -> Response:
    """A refused request's answer: one empty completion whose finish reason says why, recorded as a failed
    generation (`parse_completion`) whichever way the request went (live, batch job, Ray)."""
    return Response([Completion(text="", finish_reason=f"{REFUSED}: {why}"[:200])])


class PartialAnswers(SkdError):
    """A batch of which some requests were answered (and paid for) while one failed for good: the caller stores
    the answered ones (None marks the others, which stay pending for a rerun), then stops with the message."""

    def __init__(self, message: str, answered: list[list[Completion] | None]):
        super().__init__(message)
        self.answered = answered
