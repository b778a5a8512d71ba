"""OpenAI-compatible HTTP backend (a `vllm serve`, a hosted API): async requests under a concurrency
limit and optional requests/tokens-per-minute limits, retries with exponential backoff on 429, 5xx and
timeouts; each request's token usage and, with a price table, its cost. The API key comes from the
environment and is never printed: it is registered for redaction (a server may echo it in an error body),
and credentials in the base URL are kept out of every message."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import httpx

from store import SkdError
from store.redact import redact, register_secret, strip_credentials

from ..constraints import banned_words, grammar_of
from ..pricing import price_for
from ..rate_limit import RateLimiter
from ..types import Completion, PartialAnswers, Request, Response, refused

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
# what a request itself can cause (too long a prompt, a content filter, a value the model refuses): recorded as
# that request's failed generation when other requests get through; auth, a wrong URL or model stop the run
REQUEST_STATUS = {400, 413, 422}


class Refused(SkdError):
    """The endpoint refused one request (a REQUEST_STATUS answer)."""


class OpenAITeacher:
    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 16, max_retries: int = 6, timeout: float = 120.0, backoff: float = 0.5,
                 max_backoff: float = 30.0, served_model: str | None = None, rpm: float | None = None,
                 tpm: float | None = None, prices: dict[str, Any] | None = None):
        self.model = model
        self.served_model = served_model or model  # the name the server knows the model by
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self._key = os.environ.get(api_key_env)
        register_secret(self._key)
        self.shown_url = strip_credentials(self.base_url)  # what messages name
        self.concurrency, self.max_retries, self.timeout = concurrency, max_retries, timeout
        self.backoff, self.max_backoff = backoff, max_backoff
        self.attempts = 0  # requests sent, retries included (for reports and tests)
        self.limiter = RateLimiter(rpm, tpm)
        self.price = price_for(prices, self.served_model, model)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAITeacher(model={self.model!r}, base_url={self.shown_url!r})"

    def close(self) -> None:
        pass

    def check(self, s: Any) -> None:
        """Constraints travel as vLLM's extra parameters (`structured_outputs`, `bad_words`), which OpenAI's
        own API refuses: say so before the first request. Other servers may drop a field they do not know and
        answer unconstrained, so a grammar is first tried once on a probe."""
        if (grammar_of(s) is not None or banned_words(s)) and "api.openai.com" in self.base_url:
            raise SkdError("api.openai.com cannot enforce regex/JSON/lexical constraints (vLLM's extensions): "
                           "serve the teacher with vLLM, or drop constrain/include/exclude")
        if grammar_of(s) is not None and not getattr(self, "batch", False) and not getattr(self, "_probed", False):
            self._probed = True
            self.probe_constraints()

    def probe_constraints(self) -> None:
        """One request constrained to the answer "yes" to a prompt asking for "no": a server that answers
        anything else did not enforce it (an older vLLM, another server), and every constraint would be lost."""
        asks = (("/completions", {"prompt": "Answer no. Answer:"}),
                ("/chat/completions", {"messages": [{"role": "user", "content": "Answer no."}]}))
        said = []
        with httpx.Client(base_url=self.base_url, headers=self.headers(), timeout=self.timeout) as client:
            for path, ask in asks:  # a chat-only server refuses /completions, a base model refuses chat
                body = {"model": self.served_model, "max_tokens": 4, "temperature": 0,
                        "structured_outputs": {"choice": ["yes"]}} | ask
                try:
                    resp = client.post(path, json=body)
                except httpx.HTTPError:
                    return  # unreachable: the run's own requests retry and say so
                if resp.status_code != 200:
                    said.append(f"{path} {resp.status_code}")
                    continue
                choice = answer_json(resp, f"{self.shown_url}{path}")["choices"][:1]
                text = ((choice[0].get("message") or {}).get("content") if ask.get("messages") else
                        choice[0].get("text")) if choice else ""
                if (text or "").strip() != "yes":
                    raise SkdError(f"teacher endpoint {self.shown_url} ignores structured_outputs (a probe constrained "
                                   f"to 'yes' answered {redact((text or '')[:40])!r}): constraints would not be "
                                   "enforced; serve the teacher with vLLM, or drop constrain")
                return
        raise SkdError(f"teacher endpoint {self.shown_url} refused a constrained probe ({', '.join(said)}): it does "
                       "not take vLLM's structured_outputs; serve the teacher with vLLM, or drop constrain")

    def generate(self, requests: list[Request]) -> list[list[Completion]]:
        return asyncio.run(self._generate_all(requests))

    def headers(self) -> dict[str, str]:
        """The request headers: the key as a bearer token, when the environment gives one."""
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    async def _generate_all(self, requests: list[Request]) -> list[list[Completion]]:
        headers = self.headers()
        limit = asyncio.Semaphore(self.concurrency)
        self.limiter.new_loop()
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=self.timeout) as client:
            async def one(r: Request) -> list[Completion]:
                async with limit:
                    return await self._request(client, r)
            got = await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)
        return refusals_recorded(got)

    def body(self, r: Request) -> tuple[str, dict[str, Any]]:
        s = r.sampling
        body: dict[str, Any] = {"model": self.served_model, "n": s.n, "temperature": s.temperature, "top_p": s.top_p,
                                "max_tokens": s.max_tokens, "presence_penalty": s.presence_penalty,
                                "frequency_penalty": s.frequency_penalty}
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        c = grammar_of(s)
        if c is not None:  # vLLM's extra parameters; hosted APIs use response_format instead
            body["structured_outputs"] = {k: v for k, v in
                                          {"json": c.json_schema, "regex": c.regex, "choice": c.choice,
                                           "grammar": c.grammar}.items() if v}
        if banned_words(s):
            body["bad_words"] = banned_words(s)
        if r.prompt is not None:
            if s.logprobs:
                body["logprobs"] = 1
            return "/completions", body | {"prompt": r.prompt}
        if s.logprobs:
            body["logprobs"] = True
        return "/chat/completions", body | {"messages": r.chat()}

    async def _request(self, client: httpx.AsyncClient, r: Request) -> list[Completion]:
        path, body = self.body(r)
        estimate = estimated_tokens(r)
        for attempt in range(self.max_retries + 1):
            self.attempts += 1
            await self.limiter.acquire(estimate)
            try:
                resp = await client.post(path, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                problem = f"{type(e).__name__}"
            else:
                self.limiter.observe(resp.headers)
                if resp.status_code == 200:
                    out = self.parse(answer_json(resp, f"{self.shown_url}{path}"), chat=r.prompt is None)
                    self.limiter.settle(estimate, _total(out))
                    return self.priced(out)
                if resp.status_code not in RETRY_STATUS:
                    kind = Refused if resp.status_code in REQUEST_STATUS else SkdError
                    raise kind(f"teacher endpoint {self.shown_url}{path} answered {resp.status_code}: "
                               f"{redact(_message(resp))}")
                problem = f"HTTP {resp.status_code}"
                wait = _retry_after(resp)
                if wait is not None and attempt < self.max_retries:
                    if resp.status_code == 429:  # everyone waits, not only this request: no storm
                        self.limiter.pause(min(wait, self.max_backoff))
                    await asyncio.sleep(min(wait, self.max_backoff))
                    continue
            if attempt < self.max_retries:
                delay = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
                if problem == "HTTP 429":
                    self.limiter.pause(delay)
                await asyncio.sleep(delay)
        raise SkdError(f"teacher endpoint {self.shown_url}{path} failed after {self.max_retries + 1} attempts "
                       f"(last: {problem}); rerun to resume")

    def priced(self, out: Response, batch: bool = False) -> Response:
        if self.price is not None:
            out.cost = self.price.cost(out.prompt_tokens, out.completion_tokens, batch=batch,
                                       cached_tokens=getattr(out, "cached_tokens", None))
        return out

    @staticmethod
    def parse(data: dict[str, Any], chat: bool) -> Response:
        out = []
        for c in sorted(data.get("choices", []), key=lambda c: c.get("index", 0)):
            text = (c.get("message") or {}).get("content") if chat else c.get("text")
            logprob = None
            lp = c.get("logprobs")
            if lp:
                tokens = lp.get("content") if chat else None
                values = [t.get("logprob") for t in tokens] if tokens else lp.get("token_logprobs")
                logprob = float(sum(v for v in values or [] if v is not None)) if values else None
            out.append(Completion(text=text or "", index=c.get("index", 0), finish_reason=c.get("finish_reason"),
                                  logprob=logprob))
        usage = data.get("usage") or {}
        if out and usage.get("completion_tokens"):  # per sample only a share: the request's total is exact
            share = usage["completion_tokens"] / len(out)
            for c in out:
                c.n_tokens = round(share)
        details = usage.get("prompt_tokens_details") or {}
        return Response(out, prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                        cached_tokens=details.get("cached_tokens") if isinstance(details, dict) else None)


def refusals_recorded(got: list[Any]) -> list[list[Completion]]:
    """Every request's completions, a refused one's as one empty completion whose finish reason says why (a
    recorded failure; the others' completions, paid for, are stored). When every request was refused the cause
    is not in the requests (a parameter the endpoint does not take): the first refusal is raised, and nothing is
    recorded. Any other failure (retries spent, a timeout) stops the run, after the answered requests are stored
    (`PartialAnswers`): the failed one stays pending for a rerun, the others are not paid for again."""
    failed = [g for g in got if isinstance(g, BaseException)]
    fatal = next((g for g in failed if not isinstance(g, Refused)), None)
    if fatal is None and failed and len(failed) == len(got):
        raise failed[0]
    out = [refused(str(g).split(" answered ")[-1]) if isinstance(g, Refused)
           else None if isinstance(g, BaseException) else g for g in got]
    if fatal is not None:
        if not isinstance(fatal, SkdError) or not any(o is not None for o in out):
            raise fatal
        raise PartialAnswers(str(fatal), out)
    return out


def estimated_tokens(r: Request) -> int:
    """What a request may count against a tokens-per-minute limit before its usage is known: the prompt at
    about four characters a token, plus every sample's whole budget (providers count max_tokens up front)."""
    return len(r.prompt_text) // 4 + r.sampling.max_tokens * r.sampling.n


def _total(out: Response) -> int | None:
    if out.prompt_tokens is None and out.completion_tokens is None:
        return None
    return (out.prompt_tokens or 0) + (out.completion_tokens or 0)


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def answer_json(resp: httpx.Response, where: str) -> dict[str, Any]:
    """A 200's completion object; a page that is not one (a proxy's login page, a web UI at the base URL) is one
    line, not a traceback, and a JSON without choices is not taken as an answer of no completions."""
    try:
        data = resp.json()
    except ValueError:
        raise SkdError(f"teacher endpoint {where} answered 200 with no JSON ({redact(resp.text[:80])!r}); "
                       "is the base URL an OpenAI-compatible /v1?") from None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise SkdError(f"teacher endpoint {where} answered 200 without choices: {redact(str(data)[:120])}")
    return data


def _message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        err = data.get("error") if isinstance(data, dict) else data
        msg = err.get("message") if isinstance(err, dict) else err or (data.get("message") if isinstance(data, dict)
                                                                        else None)
    except ValueError:
        msg = resp.text
    return " ".join(str(msg or resp.reason_phrase).split())[:200]
