"""The OpenAI batch API as a teacher (`--backend openai-batch`): requests written as batch JSONL
(`custom_id` = skd's request key), uploaded to `/v1/files`, run as a job of `/v1/batches`, polled with backoff,
and answered from the job's output and error files, at the provider's batch price (half, at OpenAI).

This module speaks the protocol; `generators.batch` runs the jobs against the store, which records each job
before it is paid for so that a rerun resumes it. Any endpoint implementing the same API works."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import httpx

from store import SkdError
from store.redact import redact

from ..types import Completion, Request, Response, refused
from .openai_http import REQUEST_STATUS, RETRY_STATUS, OpenAITeacher, _message, _retry_after

TERMINAL = ("completed", "failed", "expired", "cancelled")


class Unanswered(SkdError):
    """Retries ran out without an answer (timeouts, 429, 5xx): the call may or may not have taken effect."""


class NotFound(SkdError):
    """The endpoint answered 404 for a job or file it should know (purged, expired, another account's)."""


class OpenAIBatchTeacher(OpenAITeacher):
    batch = True

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 max_retries: int = 6, timeout: float = 120.0, backoff: float = 0.5, max_backoff: float = 30.0,
                 served_model: str | None = None, prices: dict[str, Any] | None = None,
                 completion_window: str = "24h", poll_interval: float = 10.0, max_poll_interval: float = 300.0,
                 max_lines: int = 50_000, rounds: int = 2):
        super().__init__(model, base_url=base_url, api_key_env=api_key_env, max_retries=max_retries,
                         timeout=timeout, backoff=backoff, max_backoff=max_backoff, served_model=served_model,
                         prices=prices)
        for name, value in (("max_lines", max_lines), ("rounds", rounds), ("poll_interval", poll_interval),
                            ("max_poll_interval", max_poll_interval)):
            if not value > 0:
                raise SkdError(f"teacher option {name} must be above 0 (got {value!r})")
        self.completion_window, self.max_lines, self.rounds = completion_window, max_lines, rounds
        self.poll_interval, self.max_poll_interval = poll_interval, max_poll_interval
        self._client: httpx.Client | None = None

    def __repr__(self) -> str:
        return f"OpenAIBatchTeacher(model={self.model!r}, base_url={self.shown_url!r})"

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
            self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- the batch file ------------------------------------------------------------------------------------------

    def url(self, r: Request) -> str:
        """The endpoint a request's line names, as the batch API wants it ('/v1/chat/completions')."""
        return "/v1" + self.body(r)[0]

    def line(self, r: Request) -> str:
        path, body = self.body(r)
        return json.dumps({"custom_id": r.request_id, "method": "POST", "url": "/v1" + path, "body": body},
                          ensure_ascii=False)

    def answers(self, text: str, chat: bool) -> tuple[dict[str, Response], dict[str, str]]:
        """Completions per request key from an output or error file, and the lines that failed, with why."""
        done, failed = {}, {}
        for number, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                key = row["custom_id"]
            except (ValueError, KeyError, TypeError):
                raise SkdError(f"batch result line {number} is not a batch result: {raw[:80]!r}") from None
            resp = row.get("response") or {}
            body = resp.get("body")
            if resp.get("status_code") == 200 and not row.get("error") and not (
                    isinstance(body, dict) and isinstance(body.get("choices"), list)):
                failed[key] = "answered without choices"  # not an answer of no completions: asked again
            elif resp.get("status_code") == 200 and not row.get("error"):
                done[key] = self.priced(self.parse(body, chat=chat), batch=True)
            elif resp.get("status_code") in REQUEST_STATUS:  # the line itself is refused: every job would refuse it
                why = _line_error(row).removeprefix(f"HTTP {resp['status_code']} ")
                done[key] = refused(f"{resp['status_code']}: {why}")
            else:
                failed[key] = _line_error(row)
        return done, failed

    # -- the API -------------------------------------------------------------------------------------------------

    def upload(self, lines: list[str]) -> str:
        data = ("\n".join(lines) + "\n").encode()
        return _id(self.call("POST", "/files", files={"file": ("skd-batch.jsonl", data, "application/jsonl")},
                             data={"purpose": "batch"}), "POST /files")

    def create(self, input_file_id: str, url: str, batch_key: str) -> dict[str, Any]:
        """Create the job once: an unanswered create may still have made it (the provider acted, the answer was
        lost), so before trying again look for it instead of paying twice."""
        body = {"input_file_id": input_file_id, "endpoint": url, "completion_window": self.completion_window,
                "metadata": {"skd_batch_key": batch_key}}
        for attempt in range(self.max_retries + 1):
            try:
                job = self.call("POST", "/batches", retries=0, json=body)
                _id(job, "POST /batches")
                return job
            except Unanswered:
                found = self.find(input_file_id, batch_key)
                if found:
                    return found
                if attempt == self.max_retries:
                    raise
                time.sleep(min(self.max_backoff, self.backoff * 2 ** attempt))
        raise AssertionError("unreachable")

    def get(self, job_id: str) -> dict[str, Any]:
        return self.call("GET", f"/batches/{job_id}")

    def find(self, input_file_id: str, batch_key: str) -> dict[str, Any] | None:
        """The job made from this file (a kill after create, before the job id was recorded), if any: the
        endpoint's jobs are listed newest first, a page of 100 at a time, up to 2,000 (a job skd just made
        is among the newest)."""
        params: dict[str, Any] = {"limit": 100}
        for _ in range(20):
            page = self.call("GET", "/batches", params=params)
            for job in page.get("data") or []:
                key = (job.get("metadata") or {}).get("skd_batch_key")
                if job.get("input_file_id") == input_file_id or key == batch_key:
                    return job
            if not page.get("has_more") or not page.get("data"):
                return None
            params["after"] = page["data"][-1]["id"]
        return None

    def content(self, file_id: str) -> str:
        return self.call("GET", f"/files/{file_id}/content", raw=True)

    def call(self, method: str, path: str, raw: bool = False, retries: int | None = None, **kw: Any) -> Any:
        """One API call with retries on 429, 5xx and timeouts; anything else is one line naming the call."""
        problem = ""
        retries = self.max_retries if retries is None else retries
        for attempt in range(retries + 1):
            self.attempts += 1
            try:
                resp = self.client.request(method, path, **kw)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                problem = type(e).__name__
            else:
                if resp.status_code == 200:
                    return resp.text if raw else _json(resp, self.shown_url + path)
                if resp.status_code not in RETRY_STATUS:
                    hint = " (does this endpoint implement the OpenAI batch API?)" if resp.status_code in (
                        404, 405, 501) else ""
                    known = path.startswith(("/batches/", "/files/"))  # an id it gave us: gone, not unsupported
                    error = NotFound if resp.status_code == 404 and known else SkdError
                    raise error(f"batch endpoint {method} {self.shown_url}{path} answered {resp.status_code}: "
                                   f"{redact(_message(resp))}{hint}")
                problem = f"HTTP {resp.status_code}"
                wait = _retry_after(resp)
                if wait is not None and attempt < retries:
                    time.sleep(min(wait, self.max_backoff))
                    continue
            if attempt < retries:
                time.sleep(min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2))
        raise Unanswered(f"batch endpoint {method} {self.shown_url}{path} failed after {retries + 1} "
                         f"attempts (last: {problem}); rerun to resume")

    def generate(self, requests: list[Request]) -> list[list[Completion]]:
        """One job for these requests, waited for, without a store (the store's loop is generators.batch).
        A request whose line failed is an error: here there is nowhere to record it."""
        out: dict[str, Response] = {}
        for url in dict.fromkeys(self.url(r) for r in requests):
            part = [r for r in requests if self.url(r) == url]
            job = self.create(self.upload([self.line(r) for r in part]), url, f"adhoc-{time.time_ns()}")
            delay = self.poll_interval
            while job.get("status") not in TERMINAL:
                time.sleep(delay)
                delay = min(self.max_poll_interval, delay * 1.5)
                job = self.get(job["id"])
            done, failed = self.results(job, chat=part[0].prompt is None)
            if failed or len(done) < len(part):
                reason = next(iter(failed.values()), "no result")
                raise SkdError(f"batch job {job['id']}: {len(part) - len(done)} of {len(part)} requests failed "
                               f"(first: {reason})")
            out |= done
        return [out[r.request_id] for r in requests]

    def results(self, job: dict[str, Any], chat: bool) -> tuple[dict[str, Response], dict[str, str]]:
        done, failed = {}, {}
        for key in ("output_file_id", "error_file_id"):
            if job.get(key):
                try:
                    text = self.content(job[key])
                except NotFound:  # the file expired: its requests count as unanswered and go to a new job
                    continue
                d, f = self.answers(text, chat)
                done |= d
                failed |= f
        return done, failed


def job_error(job: dict[str, Any]) -> str | None:
    """Why a whole job failed (validation errors), if it did."""
    errors = (job.get("errors") or {}).get("data") or []
    if not errors:
        return None if job.get("status") != "failed" else "job failed"
    e = errors[0]
    return redact(" ".join(f"{e.get('code') or ''}: {e.get('message') or ''}".split()))[:200]


def _line_error(row: dict[str, Any]) -> str:
    err = row.get("error") or ((row.get("response") or {}).get("body") or {}).get("error") or {}
    status = (row.get("response") or {}).get("status_code")
    msg = err.get("message") if isinstance(err, dict) else str(err)
    code = err.get("code") if isinstance(err, dict) else None
    text = " ".join(str(x) for x in (f"HTTP {status}" if status else None, code, msg) if x)
    return redact(" ".join(text.split()))[:200] or "failed without a reason"


def _id(reply: Any, call: str) -> str:
    if not isinstance(reply, dict) or not isinstance(reply.get("id"), str):
        raise SkdError(f"batch endpoint {call} answered without an id: {str(reply)[:80]!r}")
    return reply["id"]


def _json(resp: httpx.Response, where: str) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise SkdError(f"batch endpoint {where} answered 200 with something that is not JSON: "
                       f"{resp.text[:80]!r}") from None
