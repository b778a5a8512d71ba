"""Shared fixtures: real DuckDB files in temporary folders, the shared human data when present."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SKD_SHARED_DATA", ROOT.parent / "shared" / "data"))
EXAMPLES = ROOT / "examples" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def shared_file(rel: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED / rel
    if not path.is_file():
        pytest.skip(f"shared data {rel} is absent ({SHARED}); these tests need ../shared/data")
    return path


def atomic_corpus(d: Path, lines: int) -> Path:
    """A corpus of the first `lines` (head, relation) lines of the shared ATOMIC-2020 tuples, in d/c.duckdb."""
    from store import Store, ingest_file

    src = shared_file("atomic2020/human_tuples.tsv").read_text().splitlines()[:lines]
    (d / "atomic.tsv").write_text("\n".join(src) + "\n")
    with Store(d / "c.duckdb") as s:
        ingest_file(s, d / "atomic.tsv", "atomic2020")
    return d / "c.duckdb"


def ingested_state(path: Path, fmt: str, db: Path) -> dict:
    """What ingesting `path` into a new corpus stores, in comparable form."""
    from store import Store, ingest_file
    with Store(db) as s:
        r = ingest_file(s, path, fmt)
        return {
            "items": s.query("SELECT * EXCLUDE (created_at, extra) FROM items ORDER BY item_id").rows(),
            "extra": [e and json.loads(e) for e in s.query("SELECT extra FROM items ORDER BY item_id")["extra"]],
            "sources": s.query("SELECT item_id, row_number FROM item_sources ORDER BY row_number").rows(),
            "rejects": s.query("SELECT row_number, reason, raw FROM rejects ORDER BY row_number").rows(),
            "counts": (r.rows, r.accepted, r.new_items, r.rejected, r.per_kind)}


def both_ways(path: Path, fmt: str, d: Path) -> bool:
    """Ingest `path` read whole by pyarrow (where that applies) and by the line-level reader, assert both
    store the same; returns whether the pyarrow reader applied."""
    import store.ingest as ingest_mod
    fast_applies = ingest_mod.fast_staged(path, fmt) is not None
    fast = ingested_state(path, fmt, d / "fast.duckdb")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(ingest_mod, "fast_staged", lambda path, fmt: None)
        slow = ingested_state(path, fmt, d / "slow.duckdb")
    assert fast == slow
    return fast_applies


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "corpus.duckdb"


def run_skd(*args: str, db: Path | None = None, check: bool = False, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real `skd` command line in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    if db is not None:
        full_env["SKD_DB"] = str(db)
    proc = subprocess.run([sys.executable, "-m", "skd", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"skd {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def full_and_killed_runs(args: list[str], tmp_path: Path, shards: int) -> tuple[Path, Path, dict]:
    """The command run whole into full.duckdb, and into killed.duckdb killed after `shards` ingested staging
    shards, then rerun to the end: (full db, killed db, the rerun's --json summary)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    full, killed = tmp_path / "full.duckdb", tmp_path / "killed.duckdb"
    subprocess.run(args + ["--db", str(full)], check=True, cwd=ROOT, env=env, capture_output=True, timeout=600)
    proc = subprocess.Popen(args + ["--db", str(killed)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    kill_when(proc, killed, "SELECT count(*) FROM ingested_shards", shards)
    rerun = subprocess.run(args + ["--db", str(killed), "--json"], check=True, cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    return full, killed, json.loads(rerun.stdout)


def kill_when(proc: subprocess.Popen, db: Path, sql: str, minimum: int, timeout: float = 300,
              signum: int | None = None) -> None:
    """SIGKILL (or SIGNUM) `proc` once `sql` on `db` counts at least `minimum` (polled between its writes)."""
    import signal
    import time

    from store import Store
    deadline, count = time.monotonic() + timeout, 0
    while count < minimum and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            with Store(db, read_only=True) as s:
                count = s.scalar(sql)
        except Exception:  # locked by the writer, or not created yet: poll again
            continue
    assert proc.poll() is None, "the process finished before it could be killed"
    proc.send_signal(signum or signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The embedded teacher, converted once from its GGUF (about 25 s the first time on a machine)."""
    from store.models import smollm2_dir
    return smollm2_dir()


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, smollm2) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer and chat template: fast tests of batching and parsing."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-lm")
    tok = AutoTokenizer.from_pretrained(smollm2)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# Modules whose tests load real models (MiniLM, SmolLM2, a vLLM engine) or train them: `pytest -m "not slow"`
# is the quick subset (the store, the command line's errors, ingest properties).
MODEL_MODULES = {"test_dedup", "test_snapshot", "test_critics", "test_generate", "test_hf_backend", "test_vllm",
                 "test_pipeline", "test_train", "test_label_sources", "test_models", "test_loop", "test_mixture"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in MODEL_MODULES or {"smollm2", "tiny_lm"} & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
