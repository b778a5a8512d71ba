"""A local OpenAI batch endpoint (`/v1/files`, `/v1/batches`) on a real HTTP server, for tests and the bench.

Jobs take time (they stay in progress for `polls` status reads), can fail some lines (each failing request
fails once, the first time it is submitted), expire half done, fail validation, or lose the answer to a
create call after making the job (a network failure after the provider acted). `worker` turns an input
file into output lines: by default a deterministic answer per line; `vllm_worker` runs vLLM's batch runner,
so the whole life cycle is real with a real model behind it."""

from __future__ import annotations

import email.parser
import json
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def echo_answer(line: dict) -> dict:
    """A chat or completions response for one batch line: `n` choices and the usage it cost."""
    body, chat = line["body"], line["url"].endswith("/chat/completions")
    n = body.get("n", 1)
    prompt = json.dumps(body.get("messages")) if chat else body.get("prompt", "")
    words = ["eat", "rest", "sleep", "run", "read", "talk", "win", "help"]
    choices = []
    for i in range(n):
        text = f"to {words[(len(prompt) + i) % len(words)]} {i}"
        choices.append({"index": i, "finish_reason": "stop",
                        **({"message": {"role": "assistant", "content": text}} if chat else {"text": " " + text})})
    return {"id": "cmpl-x", "object": "chat.completion" if chat else "text_completion", "choices": choices,
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 3 * n,
                      "total_tokens": len(prompt.split()) + 3 * n}}


def echo_worker(lines: list[dict]) -> list[dict]:
    return [{"id": f"req-{i}", "custom_id": line["custom_id"], "error": None,
             "response": {"status_code": 200, "request_id": f"r{i}", "body": echo_answer(line)}}
            for i, line in enumerate(lines)]


def vllm_worker(python: str, model: str, served: str, env: dict | None = None,
                extra: tuple[str, ...] = ()) -> Callable[[list[dict]], list[dict]]:
    """vLLM's own batch runner over the job's input file (it implements the same JSONL format)."""
    def run(lines: list[dict]) -> list[dict]:
        with tempfile.TemporaryDirectory() as d:
            src, dst = Path(d) / "in.jsonl", Path(d) / "out.jsonl"
            src.write_text("".join(json.dumps(x) + "\n" for x in lines))
            subprocess.run([python, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(src), "-o", str(dst),
                            "--model", model, "--served-model-name", served, "--dtype", "bfloat16",
                            "--enforce-eager", "--max-model-len", "1024", *extra], check=True, capture_output=True,
                           timeout=900, env=env)
            return [json.loads(x) for x in dst.read_text().splitlines() if x.strip()]
    return run


class BatchServer:
    def __init__(self, polls: int = 2, fail_every: int = 0, expire_first: bool = False,
                 fail_validation: bool = False, drop_create: int = 0, no_batch_api: bool = False,
                 worker: Callable[[list[dict]], list[dict]] = echo_worker, refuse_first: bool = False,
                 blips: int = 0):
        self.polls, self.fail_every, self.expire_first = polls, fail_every, expire_first
        self.fail_validation, self.drop_create, self.no_batch_api = fail_validation, drop_create, no_batch_api
        self.worker = worker
        self.refuse_first, self.refused = refuse_first, set()  # the first job's first line is refused (400) for good
        self.blips = blips  # this many polls of a job are answered 404 first (a proxy restarting)
        self.page_size = 100  # the most jobs one list call returns
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.reads: Counter = Counter()
        self.failed_once: set[str] = set()
        self.answered: Counter = Counter()  # custom_id -> times a job answered it (each is paid for)
        self.hold = threading.Event()  # set: jobs stay in progress whatever `polls` says
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, status: int, data: dict | bytes) -> None:
                raw = data if isinstance(data, bytes) else json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                with server.lock:
                    status, data = server.get(self.path)
                self.reply(status, data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server.lock:
                    status, data = server.post(self.path, self.headers.get("Content-Type", ""), body)
                if data is None:  # the job exists, the answer is lost
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.reply(status, data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> BatchServer:
        self.thread.start()
        return self

    def __exit__(self, *a) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def created(self) -> int:
        return len(self.batches)

    def post(self, path: str, ctype: str, body: bytes):
        if self.no_batch_api:
            return 404, {"error": {"message": f"no route {path}"}}
        if path == "/v1/files":
            msg = email.parser.BytesParser().parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
            parts = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
                     for p in msg.get_payload()}
            if parts.get("purpose") != b"batch" or "file" not in parts:
                return 400, {"error": {"message": "purpose must be batch, with a file"}}
            fid = f"file-{len(self.files)}"
            self.files[fid] = parts["file"]
            return 200, {"id": fid, "object": "file", "purpose": "batch", "bytes": len(parts["file"])}
        if path == "/v1/batches":
            req = json.loads(body)
            if req.get("input_file_id") not in self.files:
                return 400, {"error": {"message": "unknown input_file_id"}}
            bid = f"batch-{len(self.batches)}"
            total = len(self.files[req["input_file_id"]].splitlines())
            self.batches[bid] = {"id": bid, "object": "batch", "endpoint": req["endpoint"], "status": "validating",
                                 "input_file_id": req["input_file_id"], "metadata": req.get("metadata"),
                                 "completion_window": req["completion_window"], "output_file_id": None,
                                 "error_file_id": None, "errors": None,
                                 "request_counts": {"total": total, "completed": 0, "failed": 0}}
            if self.drop_create > 0:
                self.drop_create -= 1
                return 200, None
            return 200, self.batches[bid]
        return 404, {"error": {"message": f"no route {path}"}}

    def get(self, path: str):
        if self.no_batch_api:
            return 404, {"error": {"message": f"no route {path}"}}
        parts = path.split("?")[0].strip("/").split("/")
        if parts[1:] == ["batches"]:  # newest first, in pages, as OpenAI lists them
            query = dict(q.split("=", 1) for q in path.partition("?")[2].split("&") if "=" in q)
            jobs = list(reversed(self.batches.values()))
            if "after" in query:
                jobs = jobs[[j["id"] for j in jobs].index(query["after"]) + 1:]
            size = min(int(query.get("limit", 20)), self.page_size)
            return 200, {"object": "list", "data": jobs[:size], "has_more": len(jobs) > size}
        if len(parts) == 3 and parts[1] == "batches" and parts[2] in self.batches:
            if self.blips > 0:
                self.blips -= 1
                return 404, {"error": {"message": "not found"}}
            return 200, self.advance(self.batches[parts[2]])
        if len(parts) == 4 and parts[1] == "files" and parts[3] == "content" and parts[2] in self.files:
            return 200, self.files[parts[2]]
        return 404, {"error": {"message": f"no route {path}"}}

    def advance(self, job: dict) -> dict:
        self.reads[job["id"]] += 1
        if job["status"] in ("completed", "failed", "expired"):
            return job
        if self.fail_validation:
            job |= {"status": "failed", "errors": {"data": [{"code": "invalid_request", "line": 1,
                                                              "message": "model not found for batch"}]}}
            return job
        if self.hold.is_set() or self.reads[job["id"]] < self.polls:
            job["status"] = "in_progress"
            return job
        self.run(job)
        return job

    def run(self, job: dict) -> None:
        lines = [json.loads(x) for x in self.files[job["input_file_id"]].splitlines() if x.strip()]
        expire = self.expire_first and job["id"] == "batch-0"
        keep, errors = [], []
        for i, line in enumerate(lines):
            cid = line["custom_id"]
            if expire and i >= len(lines) // 2:
                continue  # an expired job answers only what it finished
            if self.refuse_first and (not self.refused or cid in self.refused):
                self.refused.add(cid)
                errors.append({"id": f"err-{i}", "custom_id": cid, "response": {"status_code": 400, "body": {
                    "error": {"message": "maximum context length exceeded", "type": "invalid_request_error"}}},
                    "error": None})
                continue
            if self.fail_every and i % self.fail_every == 0 and cid not in self.failed_once:
                self.failed_once.add(cid)
                errors.append({"id": f"err-{i}", "custom_id": cid, "response": {"status_code": 500, "body": {
                    "error": {"message": "server overloaded", "type": "server_error"}}}, "error": None})
                continue
            keep.append(line)
        output = self.worker(keep) if keep else []
        for row in output:
            self.answered[row["custom_id"]] += 1
        for name, rows in (("output_file_id", output), ("error_file_id", errors)):
            if rows:
                fid = f"file-{len(self.files)}"
                self.files[fid] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                job[name] = fid
        job["status"] = "expired" if expire else "completed"
        job["request_counts"] = {"total": len(lines), "completed": len(output), "failed": len(errors)}
