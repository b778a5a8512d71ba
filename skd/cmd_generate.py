"""`skd generate`: run a recipe against a teacher, resumably."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from generators import RECIPES, GenerateSummary, make_recipe, run_generation
from generators.backends import option_names
from generators.config import GenerateConfig
from generators.recipes import read_toml
from store import SkdError, default_path

from .config_options import config_options
from .engines import engine_from, teacher_for
from .options import Actors, Db, EngineKind, Json, Quiet, RayAddress
from .output import err, out, print_json, run_with_progress

RecipeName = Enum("RecipeName", {r: r for r in RECIPES}, type=str)
SAMPLING_KEY = {"atomic10x": lambda cfg: "event_sampling" if cfg.get("stage") == "events" else "inference_sampling",
                "rationale": lambda cfg: "sampling", "template": lambda cfg: "sampling",
                "generics": lambda cfg: "sampling", "comparatives": lambda cfg: "sampling"}


def recipe_config(recipe: str, config: Path | None, n: int | None) -> dict[str, Any]:
    data = read_toml(config) if config else {}
    data = {k: v for k, v in data.items() if k != "teacher"}
    if n is not None:
        key = SAMPLING_KEY[recipe](data)
        defaults = RECIPES[recipe].Config.model_fields[key].default.model_dump()
        data[key] = {**defaults, **data.get(key, {}), "n": n}
    return data


def teacher_options(backend: str, config: Path | None, **flags: Any) -> dict[str, Any]:
    """Backend options from the config's [teacher] table, overridden by flags that were given."""
    opts = dict(read_toml(config).get("teacher", {})) if config else {}
    opts.pop("model", None)
    opts.pop("backend", None)
    allowed = set(option_names(backend))
    given = {k: v for k, v in flags.items() if v is not None}
    flag = next((k for k in sorted(given) if k not in allowed), None)
    if flag:  # a flag the backend does not take is an error, as it is in the [teacher] table: never dropped
        raise SkdError(f"--{flag.replace('_', '-')} does not apply to the {backend} backend")
    opts.update(given)
    bad = set(opts) - allowed
    if bad:
        raise SkdError(f"teacher option {sorted(bad)[0]!r} does not apply to the {backend} backend "
                       f"(options: {', '.join(sorted(allowed))})")
    return opts


def progress_view(quiet: bool):
    if quiet:
        return None, lambda stats, total: None
    progress = Progress(TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(), TextColumn("requests"),
                        TextColumn("{task.fields[rate]:.1f} completions/s"),
                        TextColumn("parsed {task.fields[parse]:.0%}"), TextColumn("{task.fields[tokens]:,.0f} tok/s"),
                        TextColumn("{task.fields[cost]}"), TimeElapsedColumn(), console=err)
    task = progress.add_task("generate", total=None, rate=0.0, parse=0.0, tokens=0.0, cost="")

    def update(stats: GenerateSummary, total: int) -> None:
        progress.update(task, total=total, completed=stats.generated, parse=stats.parse_rate,
                        rate=stats.completions / stats.seconds if stats.seconds else 0.0,
                        tokens=stats.tokens_per_second, cost=dollars(stats.cost))
    return progress, update


def dollars(cost: float | None) -> str:
    return "" if cost is None else f"${cost:,.4f}" if cost < 1 else f"${cost:,.2f}"


def summary_table(s: GenerateSummary) -> Table:
    t = Table(title=f"generate {s.run_id}", title_justify="left", show_header=False)
    t.add_column()
    t.add_column(justify="right")
    rows = [("requests", s.requests), ("already stored (skipped)", s.already_done), ("generated now", s.generated),
            ("completions", s.completions), ("parsed completions", f"{s.parsed:,} ({s.parse_rate:.0%})"),
            ("items", s.items), ("new distinct items", s.new_items), ("prompt tokens", s.prompt_tokens),
            ("completion tokens", s.tokens), ("cost", dollars(s.cost) or "no price"), ("seconds", f"{s.seconds:.1f}")]
    for k, v in rows:
        t.add_row(k, f"{v:,}" if isinstance(v, int) else v)
    for reason, count in sorted(s.failures.items(), key=lambda kv: -kv[1])[:10]:
        t.add_row(f"  failed: {reason}", f"{count:,}")
    return t


@config_options(GenerateConfig, "generate")
def generate(
    cfg: GenerateConfig,
    recipe: Annotated[RecipeName, typer.Argument(help="Recipe: " + ", ".join(RECIPES) + ".")],
    config: Annotated[Path | None, typer.Option(help="Recipe config (TOML); a \\[teacher] table sets backend "
                                                     "options.")] = None,
    n: Annotated[int | None, typer.Option(help="Samples per prompt (overrides the config).")] = None,
    base_url: Annotated[str | None, typer.Option(help="openai: endpoint, e.g. http://127.0.0.1:8000/v1.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="openai: requests in flight.")] = None,
    rpm: Annotated[float | None, typer.Option(help="openai: requests per minute at most (default: the "
                                                   "provider's rate-limit headers).")] = None,
    tpm: Annotated[float | None, typer.Option(help="openai: tokens per minute at most.")] = None,
    tensor_parallel_size: Annotated[int | None, typer.Option(help="vllm: GPUs per model.")] = None,
    max_model_len: Annotated[int | None, typer.Option(help="vllm: context length.")] = None,
    dtype: Annotated[str | None, typer.Option(help="Model dtype (auto, float32, bfloat16, float16).")] = None,
    engine: EngineKind = "local", ray_address: RayAddress = None, actors: Actors = 2,
    db: Db = None, json: Json = False, quiet: Quiet = False,
) -> None:
    """Overgenerate with a teacher: every completion is stored (parsed or not), every item with provenance."""
    r = make_recipe(recipe.value, recipe_config(recipe.value, config, n), source=str(config or "config"))
    opts = teacher_options(cfg.backend, config, base_url=base_url, concurrency=concurrency, rpm=rpm, tpm=tpm,
                           tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len, dtype=dtype)
    r.check_inputs()
    t, mapper = teacher_for(engine_from(engine, ray_address, actors), cfg.backend, cfg.teacher, opts)
    progress, update = progress_view(quiet or json)
    record = {"backend": cfg.backend, "teacher_options": opts, "batch_size": cfg.batch_size, "engine": engine}
    try:
        stats = run_with_progress(progress, lambda: run_generation(
            db or default_path(), r, t, seed=cfg.seed, limit=cfg.limit, batch_size=cfg.batch_size, config=record,
            on_batch=update, mapper=mapper))
    finally:
        t.close()
    if json:
        print_json(stats.as_dict())
    else:
        out.print(summary_table(stats))


def register(app: typer.Typer) -> None:
    app.command()(generate)
